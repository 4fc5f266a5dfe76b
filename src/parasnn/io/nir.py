"""NIR export and import (the Neuromorphic Intermediate Representation, ``pip install nir``).
One module for the mapping in both directions (the import lives in :mod:`.nir_import`), so
each layer's encoding is written once; hence a little over 400 lines.

A converted network becomes a ``nir.NIRGraph`` describing its **serial** form: at every step
the input current enters, each layer runs once, each neuron integrates and fires. What maps
to NIR primitives (docs/nir.md has the full table and what other tools reproduce):

=======================================  =========================================================
parasnn                                  NIR
=======================================  =========================================================
Conv1d / Conv2d, Linear                  Conv1d / Conv2d, Affine (Linear without bias)
BatchNorm (eval)                         depthwise 1×1 Conv (per-channel scale and shift)
AvgPool2d, AdaptiveAvgPool2d             AvgPool2d (adaptive: when the sizes divide)
flatten / view to one axis, dropout      Flatten, nothing
x + y, x·c, x/c (c a number)             two edges into one node (NIR sums inputs), Scale
IFNeuron                                 IF, then Scale (the spike amplitude)
RateMaxPool                              refused (NIR has no max-pool) or SumPool2d, tagged
=======================================  =========================================================

Our IF neuron has a subtractive reset, starts at ``v₀ = ψ`` (θ/2) and fires at ``v ≥ θ``;
NIR's IF resets to ``v_reset``, starts at 0 and fires at ``v > v_threshold``. The export
writes the closest NIR IF — ``v_threshold = θ − ψ``, ``v_reset = −ψ`` (the same first spike;
a hard reset drops the overshoot a subtractive reset keeps) — and records the exact neuron,
and every other detail NIR cannot carry, as parasnn metadata on the graph. :func:`from_nir`
reads that metadata, so export → ``nir.read`` → :func:`from_nir` computes the same bits.
"""
from __future__ import annotations

import enum
import json
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork, device_of
from ..conversion.stages import RateMaxPool
from ..neurons.base import per_channel
from ..neurons.if_neuron import IFNeuron
from ..neurons.integrate_fire import MIN_THRESHOLD_FRACTION
from .files import atomic_path

__all__ = ["NIRError", "AmplitudeEncoding", "MaxPoolEncoding", "to_nir", "write_nir", "from_nir", "read_nir",
           "METADATA_KEY", "IF_TENSORS"]

IF_TENSORS = ("threshold", "shift", "amplitude", "pre_shift", "temporal_bias")
METADATA_KEY = "parasnn"  # graph metadata: JSON per node; arrays under "parasnn.<node>.<name>"


class NIRError(ValueError):
    """A network that NIR cannot express, or a NIR graph parasnn cannot read; says which node and why."""


class AmplitudeEncoding(str, enum.Enum):
    """How the spike amplitude θ_post (a spike's value) is written for other tools.

    ``SCALE``: a Scale node after each IF (exact NIR semantics; some importers, e.g.
    snnTorch 1.0, have no Scale). ``FOLD``: multiplied into the weights of the next conv or
    affine layer (through pooling and flatten) — needs one amplitude per layer.
    """

    SCALE = "scale"
    FOLD = "fold"


class MaxPoolEncoding(str, enum.Enum):
    """NIR has no max-pooling. ``REFUSE`` raises; ``SUM_POOL`` writes a SumPool2d tagged as a
    rate max-pool (parasnn reads it back exactly; other tools run a sum-pool instead)."""

    REFUSE = "refuse"
    SUM_POOL = "sum-pool"


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _pair(value) -> np.ndarray:
    return np.array(value if isinstance(value, (tuple, list)) else (value, value))


def _conv(cls, spatial, **fields):
    """A NIR Conv1d (integers) or Conv2d (pairs) from PyTorch's tuples."""
    import nir
    one = cls is nir.Conv1d
    shape = lambda v: int(v[0]) if one else np.array(v)  # noqa: E731
    fields = {k: (shape(v) if k in ("stride", "padding", "dilation") else v) for k, v in fields.items()}
    return cls(input_shape=shape(spatial), **fields)


class _Shapes(fx.Interpreter):
    """Runs the parallel form once and records every tensor's shape without the batch axis."""

    def __init__(self, gm):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, node):
        result = super().run_node(node)
        if isinstance(result, Tensor):
            self.shapes[node] = tuple(result.shape[1:])
        return result


class _Exporter:
    def __init__(self, network: SpikingNetwork, input_shape, amplitudes, max_pool):
        self.gm = network.graph_module
        self.amplitudes, self.max_pool = AmplitudeEncoding(amplitudes), MaxPoolEncoding(max_pool)
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[fx.Node, list[str]] = {}
        self.meta: dict[str, dict] = {}  # JSON-able per NIR node
        self.arrays: dict[str, np.ndarray] = {}
        self.shapes_of: dict[str, list[int]] = {}
        self.pending: dict[str, float] = {}  # NIR node -> amplitude still to fold (FOLD)
        self.problems: list[str] = []
        dtype = next((t.dtype for t in self.gm.parameters()), torch.float32)
        shapes = _Shapes(self.gm)
        with torch.no_grad():
            shapes.run(1, torch.zeros(1, *input_shape, dtype=dtype, device=device_of(self.gm)))
        self.shapes = shapes.shapes
        self.source = network.source

    # -- helpers ---------------------------------------------------------------------
    def add(self, name: str, node, inputs: list[str], meta: dict | None = None, arrays: dict | None = None):
        self.nodes[name] = node
        self.edges += [(source, name) for source in inputs]
        if meta:
            self.meta[name] = meta
        for key, value in (arrays or {}).items():
            self.store(f"{METADATA_KEY}.{name}.{key}", _array(value))

    def store(self, key: str, value: np.ndarray) -> None:
        # HDF5 cannot compress 0-dim data sets: store at least 1-d, keep the real shape in the JSON.
        self.shapes_of[key] = list(value.shape)
        self.arrays[key] = np.atleast_1d(value)

    def input_of(self, node: fx.Node) -> fx.Node:
        return node.args[0]

    def fold(self, name: str, sources: list[str], weight: Tensor) -> Tensor:
        """The NIR-visible weight: times the amplitude of the neuron(s) feeding it (FOLD)."""
        amplitudes = {self.pending[s] for s in sources if s in self.pending}
        if not amplitudes:
            return weight
        if len(amplitudes) > 1 or len(sources) != 1:
            raise NIRError(f"node '{name}': cannot fold spike amplitudes {sorted(amplitudes)} of a sum into its "
                           "weights; export with amplitudes='scale'")
        return weight * amplitudes.pop()

    # -- one fx node -------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        import nir
        if node.op == "placeholder":
            if node is next(iter(self.gm.graph.nodes)):
                return  # time_steps
            if any(n.op == "placeholder" and n.name in self.nodes for n in self.gm.graph.nodes):
                raise NIRError("NIR export supports networks with one input")
            self.add(node.name, nir.Input(input_type=np.array(self.shapes[node])), [])
            self.sources[node] = [node.name]
            return
        if node.op == "output":
            value = node.args[0]
            if not isinstance(value, fx.Node):
                raise NIRError("NIR export supports networks with one output tensor")
            self.refuse_pending(value, "output")
            self.add("output", nir.Output(output_type=np.array(self.shapes[value])), self.sources.get(value, []))
            return
        if node not in self.shapes:  # sizes and other Python values (view arguments)
            return
        if node.op == "call_module":
            self.visit_module(node, self.gm.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            self.visit_function(node)
        else:
            self.problems.append(f"node '{node.name}' ({node.op} {node.target})")

    def refuse_pending(self, value: fx.Node, where: str) -> None:
        if any(s in self.pending for s in self.sources.get(value, [])):
            raise NIRError(f"{where}: a neuron's amplitude cannot be folded into it; export with amplitudes='scale'")

    def passthrough(self, node: fx.Node, value: fx.Node) -> None:
        self.sources[node] = self.sources[value]

    def visit_module(self, node: fx.Node, module: nn.Module) -> None:
        import nir
        value = self.input_of(node)
        sources, name = self.sources.get(value, []), node.name
        in_shape = self.shapes[value]
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                self.problems.append(f"'{node.target}' (padding {module.padding!r}, mode {module.padding_mode})")
                return
            conv = nir.Conv2d if isinstance(module, nn.Conv2d) else nir.Conv1d
            bias = module.bias.detach() if module.bias is not None else torch.zeros(module.out_channels)
            weight = self.fold(name, sources, module.weight.detach())
            arrays = {"weight": module.weight, "bias": bias} if weight is not module.weight.detach() else {}
            self.add(name, _conv(conv, in_shape[1:], weight=_array(weight), stride=module.stride,
                                 padding=module.padding, dilation=module.dilation, groups=module.groups,
                                 bias=_array(bias)),
                     sources, {"module": "conv", "bias": module.bias is not None}, arrays)
        elif isinstance(module, nn.Linear):
            weight = self.fold(name, sources, module.weight.detach())
            arrays = {"weight": module.weight} if weight is not module.weight.detach() else {}
            if module.bias is None:
                self.add(name, nir.Linear(weight=_array(weight)), sources, {"module": "linear"}, arrays)
            else:
                self.add(name, nir.Affine(weight=_array(weight), bias=_array(module.bias)), sources,
                         {"module": "linear"}, {**arrays, "bias": module.bias} if arrays else {})
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not module.training:
            self.batchnorm(node, module, sources, in_shape)
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            self.avg_pool(node, module, sources, in_shape)
        elif isinstance(module, nn.Flatten):
            self.flatten(node, sources, in_shape, module.start_dim, module.end_dim)
        elif isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)) and not module.training:
            self.passthrough(node, value)
        elif isinstance(module, IFNeuron):
            self.neuron(node, module, sources)
        elif isinstance(module, RateMaxPool) and isinstance(module.pool, nn.MaxPool2d):
            if self.max_pool is MaxPoolEncoding.REFUSE:
                self.problems.append(f"'{node.target}' (max-pooling: NIR has none; pass max_pool='sum-pool' "
                                     "(--max-pool sum-pool) to write a tagged SumPool2d)")
                return
            pool = module.pool
            self.refuse_pending(value, f"'{node.target}'")
            self.add(name, nir.SumPool2d(kernel_size=_pair(pool.kernel_size), stride=_pair(pool.stride),
                                         padding=_pair(pool.padding)), sources,
                     {"module": "rate_max_pool", "dilation": pool.dilation, "ceil_mode": pool.ceil_mode})
        else:
            self.problems.append(f"'{node.target}' ({type(module).__name__})")
            return
        self.sources.setdefault(node, [name])

    def batchnorm(self, node, module, sources, in_shape) -> None:
        import nir
        self.refuse_pending(self.input_of(node), f"'{node.target}'")
        scale = (module.weight.detach() if module.affine else 1.0) / torch.sqrt(module.running_var + module.eps)
        shift = (module.bias.detach() if module.affine else 0.0) - module.running_mean * scale
        arrays = {"running_mean": module.running_mean, "running_var": module.running_var}
        if module.affine:
            arrays.update(weight=module.weight, bias=module.bias)
        meta = {"module": "batchnorm", "eps": module.eps, "affine": module.affine}
        channels = module.num_features
        if len(in_shape) == 1:  # (C,): a diagonal affine map
            node_ = nir.Affine(weight=_array(torch.diag(scale)), bias=_array(shift))
        else:
            conv = nir.Conv2d if len(in_shape) == 3 else nir.Conv1d
            kernel = (1,) * (len(in_shape) - 1)
            # A dense 1×1 conv with a diagonal weight, not a depthwise one: nir 1.0.8's type
            # inference ignores groups and would reject the file on reading.
            weight = torch.diag(scale).view(channels, channels, *kernel)
            node_ = _conv(conv, in_shape[1:], weight=_array(weight), stride=(1,) * len(kernel),
                          padding=(0,) * len(kernel), dilation=(1,) * len(kernel), groups=1, bias=_array(shift))
        self.add(node.name, node_, sources, meta, arrays)

    def avg_pool(self, node, module, sources, in_shape) -> None:
        import nir
        if isinstance(module, nn.AdaptiveAvgPool2d):
            out = _pair(module.output_size)
            size = np.array(in_shape[1:])
            if None in tuple(out) or np.any(size % out):
                self.problems.append(f"'{node.target}' (adaptive pooling from {tuple(size)} to {tuple(out)}: "
                                     "sizes do not divide)")
                return
            kernel = stride = size // out
            padding = np.zeros(2, int)
            meta = {"module": "adaptive_avg_pool", "output_size": [int(v) for v in out]}
        else:
            if module.ceil_mode or not module.count_include_pad or module.divisor_override:
                self.problems.append(f"'{node.target}' (AvgPool2d with ceil_mode, count_include_pad=False or "
                                     "divisor_override)")
                return
            kernel, stride, padding = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
            meta = {"module": "avg_pool"}
        # Averaging commutes with a per-layer amplitude: carry it to the next layer.
        amplitude = {self.pending[s] for s in sources if s in self.pending}
        self.add(node.name, nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding), sources, meta)
        if amplitude:
            self.pending[node.name] = amplitude.pop()

    def flatten(self, node, sources, in_shape, start, end) -> None:
        import nir
        rank = len(in_shape) + 1  # with the batch axis
        if (start % rank, end % rank) != (1, rank - 1):
            self.problems.append(f"node '{node.name}' (flatten of other axes than all but the batch)")
            return
        self.add(node.name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), sources)
        amplitude = {self.pending[s] for s in sources if s in self.pending}
        if amplitude:
            self.pending[node.name] = amplitude.pop()
        self.sources[node] = [node.name]

    def neuron(self, node, module: IFNeuron, sources) -> None:
        import nir
        self.refuse_pending(self.input_of(node), f"'{node.target}'")
        like = torch.zeros(1, *self.shapes[node], dtype=module.threshold.dtype, device=module.threshold.device)
        full = lambda t: (per_channel(t, like) + like)[0]  # noqa: E731  (C, ...) → the layer's shape
        firing = torch.maximum(module.threshold - module.temporal_bias.detach(),
                               module.threshold * MIN_THRESHOLD_FRACTION)
        arrays = {name: getattr(module, name) for name in IF_TENSORS}
        meta = {"module": "if_neuron", "surrogate_width": module.surrogate_width}
        self.add(node.name, nir.IF(r=_array(torch.ones_like(like[0])), v_threshold=_array(full(firing - module.shift)),
                                   v_reset=_array(full(-module.shift))), sources, meta, arrays)
        self.fold_pre_shift(node, module, sources)
        amplitude = module.amplitude.detach()
        if self.amplitudes is AmplitudeEncoding.SCALE:
            scale = f"{node.name}_amplitude"
            self.add(scale, nir.Scale(scale=_array(full(amplitude))), [node.name], {"module": "amplitude"})
            self.sources[node] = [scale]
        elif amplitude.dim() and not bool((amplitude == amplitude.flatten()[0]).all()):
            raise NIRError(f"'{node.target}': per-channel spike amplitudes cannot be folded; export with "
                           "amplitudes='scale'")
        else:
            self.pending[node.name] = float(amplitude.flatten()[0])
            self.sources[node] = [node.name]

    def fold_pre_shift(self, node, module: IFNeuron, sources) -> None:
        """ψ_DA is a constant current: other tools see it in the bias of the layer before."""
        if not bool((module.pre_shift != 0).any()):
            return
        before = self.nodes.get(sources[0]) if len(sources) == 1 else None
        users = [n for n in self.gm.graph.nodes if n.name == sources[0]]
        if before is None or not hasattr(before, "bias") or (users and len(users[0].users) != 1):
            raise NIRError(f"'{node.target}': its calibrated input offset ψ_DA has no layer bias to go into")
        key = f"{METADATA_KEY}.{sources[0]}.bias"
        if key not in self.arrays:
            self.store(key, np.array(before.bias, copy=True))  # the exact bias, for parasnn
        channel_shift = module.pre_shift.detach().cpu()  # the NIR arrays live on the CPU
        bias = torch.as_tensor(before.bias) + (channel_shift if channel_shift.dim() else channel_shift.expand(
            before.bias.shape))
        before.bias = _array(bias.to(torch.as_tensor(before.bias).dtype))

    def visit_function(self, node: fx.Node) -> None:
        import nir
        target, args = node.target, node.args
        name = node.name
        tensors = [a for a in args if isinstance(a, fx.Node) and a in self.shapes]
        if target in (operator.add, operator.iadd, torch.add, "add", "add_") and len(tensors) == 2 \
                and len(args) == 2 and not node.kwargs:
            for value in tensors:
                self.refuse_pending(value, f"node '{name}'")
            self.sources[node] = self.sources.get(args[0], []) + self.sources.get(args[1], [])
        elif target in (operator.mul, operator.imul, torch.mul, "mul", operator.truediv, torch.div, "div") \
                and len(tensors) == 1 and len(args) == 2 and isinstance(args[1 if args[0] is tensors[0] else 0],
                                                                         (int, float)):
            constant = float(args[1 if args[0] is tensors[0] else 0])
            divide = target in (operator.truediv, torch.div, "div")
            if divide and args[1] is tensors[0]:
                self.problems.append(f"node '{name}' (a number divided by activations)")
                return
            self.refuse_pending(tensors[0], f"node '{name}'")
            like = np.ones(self.shapes[node], dtype=np.float32)
            self.add(name, nir.Scale(scale=like * ((1.0 / constant) if divide else constant)),
                     self.sources.get(tensors[0], []), {"module": "scale", "op": "div" if divide else "mul",
                                                "value": constant, "left": args[0] is not tensors[0]})
            self.sources[node] = [name]
        elif target in (torch.flatten, "flatten") and len(tensors) == 1:
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            self.flatten(node, self.sources.get(tensors[0], []), self.shapes[tensors[0]], start, -1)
        elif target in ("view", "reshape", torch.reshape) and len(tensors) >= 1 and \
                len(self.shapes[node]) == 1 and self.shapes[node][0] == int(np.prod(self.shapes[tensors[0]])):
            self.flatten(node, self.sources.get(tensors[0], []), self.shapes[tensors[0]], 1, -1)
        elif target in ("contiguous", "clone") or getattr(target, "__name__", "") in ("dropout",):
            self.passthrough(node, tensors[0])
        else:
            label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            self.problems.append(f"node '{name}' ({label})")

    def graph(self):
        import nir
        if self.problems:
            raise NIRError(f"cannot export {len(self.problems)} operation(s) of {self.source} to NIR:\n" +
                           "\n".join(f"  - {p}" for p in self.problems) +
                           "\nNIR covers conv, linear, batch norm (eval), average pooling, flatten, sums, "
                           "scaling by numbers and IF neurons (see docs/nir.md).")
        metadata = {METADATA_KEY: json.dumps({"format": 1, "source": self.source, "nodes": self.meta,
                                                "shapes": self.shapes_of}),
                    **self.arrays}
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata, type_check=False)


def to_nir(network: SpikingNetwork, input_shape: tuple[int, ...], *,
           amplitudes: AmplitudeEncoding | str = AmplitudeEncoding.SCALE,
           max_pool: MaxPoolEncoding | str = MaxPoolEncoding.REFUSE):
    """``network`` as a ``nir.NIRGraph`` for inputs of shape ``input_shape`` (no batch axis,
    e.g. ``(1, 28, 28)``). Raises :class:`NIRError` listing every operation NIR cannot express."""
    import nir  # noqa: F401  (a clear ImportError when the package is absent)
    if not isinstance(network, SpikingNetwork):
        raise TypeError(f"to_nir: expected a SpikingNetwork, got {type(network).__name__}")
    exporter = _Exporter(network, tuple(input_shape), amplitudes, max_pool)
    for node in exporter.gm.graph.nodes:
        exporter.visit(node)
    return exporter.graph()


def write_nir(network: SpikingNetwork, path: str | Path, input_shape: tuple[int, ...], **options) -> Path:
    """:func:`to_nir`, written to ``path`` (HDF5, atomically)."""
    import nir
    graph = to_nir(network, input_shape, **options)
    with atomic_path(path) as temporary:
        nir.write(temporary, graph)
    return Path(path)


def from_nir(graph) -> SpikingNetwork:
    """A parasnn network from a ``nir.NIRGraph``: exact for graphs written by :func:`to_nir`
    (their metadata restores every neuron and layer); for graphs from other tools IF neurons
    are read as subtractive-reset IF with θ = v_threshold − v_reset and ψ = −v_reset (see
    docs/nir.md). Implemented in :mod:`parasnn.io.nir_import`."""
    from .nir_import import network_from_graph
    return network_from_graph(graph)


def read_nir(path: str | Path) -> SpikingNetwork:
    """``nir.read(path)`` then :func:`from_nir`."""
    import nir
    try:
        graph = nir.read(str(path), type_check=False)  # nir's inference rejects grouped convs
    except (OSError, KeyError) as error:
        raise NIRError(f"{path}: not a readable NIR file ({error})") from None
    return from_nir(graph)
