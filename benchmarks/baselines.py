"""The baselines parasnn is measured against, built from the same QCFS network.

* :func:`folded_network` — the FS-PC reference implementation's way of running a parallel
  SNN (Hao et al., ICML 2025, ``ParaInfNeuron`` in the authors' ``modules.py``): the input
  is repeated T times along the batch axis, ``(T·B, ...)``, every layer processes all T
  copies, and each parallel neuron views its input as ``(T, B·N)``, averages the current
  over the T copies and materialises its spike train ``(T, ...)`` in one shot::

      s_t = [ (T/t)·mean_τ(I_τ) + ψ/t ≥ θ ],  t = 1..T     (TxT and bias buffers, shape (T, 1))

  output ``s_t·θ``; the logits of the T copies are averaged. Cost and memory grow with T.
* :func:`spikingjelly_network` — SpikingJelly 2.0.0's ``ann2snn.Converter`` with its
  ``RateCodingRecipe``, multi-step IF mode (the optional ``bench`` extra). See its docstring for what its
  converter gets wrong on QCFS networks and the configuration used here.

Shapes: inputs ``(B, C, H, W)``; every ``run_*`` returns time-averaged logits ``(B, classes)``.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn

from parasnn.bench.measure import relu_twin
from parasnn.conversion.network import device_of
from parasnn.neurons import QCFS

__all__ = ["FoldedParallelNeuron", "folded_network", "run_folded", "require_spikingjelly", "spikingjelly_network",
           "run_spikingjelly", "quantizer_thresholds"]


# --------------------------------------------------------------------------- FS-PC, time folded into the batch


class FoldedParallelNeuron(nn.Module):
    """FS-PC's parallel IF neuron on a time-folded batch (the reference ``ParaInfNeuron``).

    Input ``(T·B, ...)`` (T copies of the batch, copy-major); output the same shape, each
    element the spike ``0`` or ``θ`` of its step. ``threshold`` θ is a scalar (as in the
    reference); ``shift`` ψ the initial membrane potential (θ/2).
    """

    def __init__(self, *, threshold: float, shift: float, time_steps: int):
        super().__init__()
        self.time_steps = time_steps
        self.threshold = float(threshold)
        steps = torch.arange(1, time_steps + 1, dtype=torch.float32).unsqueeze(-1)  # (T, 1)
        self.register_buffer("weight", time_steps / steps)  # the reference's TxT: T/t
        self.register_buffer("bias", shift / steps)  # ψ/t

    def forward(self, x: Tensor) -> Tensor:
        steps = self.time_steps
        flat = x.view(steps, -1)  # (T, B·N): the reference's x.view(T, -1)
        spikes = (self.weight * flat.mean(dim=0) + self.bias >= self.threshold).float() * self.threshold
        return spikes.view(x.shape)


def quantizer_thresholds(model: nn.Module) -> dict[str, float]:
    """θ of every QCFS module, by module path."""
    values = {}
    for name, module in model.named_modules():
        if isinstance(module, QCFS):
            theta = module.effective_threshold().detach()
            if theta.dim() != 0:
                raise ValueError(f"{name}: the baselines take scalar thresholds, got shape {tuple(theta.shape)}")
            values[name] = float(theta)
    if not values:
        raise ValueError("the baselines are built from a QCFS network; this model has no QCFS activation")
    return values


def folded_network(model: nn.Module, *, time_steps: int) -> nn.Module:
    """A copy of the QCFS ``model`` whose QCFS modules are :class:`FoldedParallelNeuron`
    (θ from QCFS, ψ = θ/2): the network the FS-PC reference code evaluates."""
    thresholds = quantizer_thresholds(model)
    folded = copy.deepcopy(model).eval()
    for path, theta in thresholds.items():
        parent_path, _, leaf = path.rpartition(".")
        parent = folded.get_submodule(parent_path) if parent_path else folded
        setattr(parent, leaf, FoldedParallelNeuron(threshold=theta, shift=0.5 * theta, time_steps=time_steps))
    return folded


def run_folded(network: nn.Module, x: Tensor, *, time_steps: int) -> Tensor:
    """T copies of ``x`` ``(B, ...)`` through the folded network; logits averaged over the copies."""
    batch = x.shape[0]
    repeated = x.unsqueeze(0).repeat(time_steps, *([1] * x.dim())).flatten(0, 1)  # (T·B, ...), as the reference
    return network(repeated).view(time_steps, batch, -1).mean(dim=0)


# --------------------------------------------------------------------------- SpikingJelly

SPIKINGJELLY_VERSION = "2.0.0"


def require_spikingjelly():
    """Import SpikingJelly 2.0.0 lazily; a clear error names the extra that provides it."""
    hint = ("the SpikingJelly baseline needs spikingjelly==2.0.0: install the bench extra, "
            "pip install -c constraints.txt -e '.[bench]' (or pip install spikingjelly==2.0.0)")
    try:
        import spikingjelly
        from spikingjelly.activation_based import ann2snn, functional, neuron
    except ImportError as error:
        raise ImportError(f"{hint} ({error})") from error
    version = getattr(spikingjelly, "__version__", None)
    if version is None:
        from importlib.metadata import version as installed_version
        version = installed_version("spikingjelly")
    if version != SPIKINGJELLY_VERSION:
        raise ImportError(f"{hint}; found spikingjelly {version}")
    return ann2snn, functional, neuron


def _relu_order(model: nn.Module) -> list[str]:
    """Paths of the ReLU modules in graph order — the order SpikingJelly converts them in."""
    graph = fx.symbolic_trace(model).graph
    return [node.target for node in graph.nodes
            if node.op == "call_module" and type(model.get_submodule(node.target)) is nn.ReLU]


def spikingjelly_network(model: nn.Module, calibration: Iterable, *, mode: str = "max",
                         qcfs_thresholds: bool = True, half_threshold_start: bool = True) -> nn.Module:
    """SpikingJelly 2.0.0's rate-coding converter applied to ``model``, in multi-step IF mode.

    SpikingJelly 2.0.0 converts with ``ann2snn.Converter(RateCodingRecipe(dataloader, ...))``
    (``converter.convert(ann)``). What it does, and why a QCFS network needs the corrections
    below (read in ``ann2snn/recipes/rate_coding.py``; checked by ``tests/test_bench.py``
    against parasnn's serial simulation, and by the ``sj-*`` rows of
    ``benchmarks/accuracy_table.py``):

    1. It only converts modules whose type *is* ``nn.ReLU``: a QCFS network would come back
       untouched. So the QCFS network is handed over as its ReLU twin (same weights).
    2. Each ReLU becomes ``VoltageScaler(v_th/s) → neuron → VoltageScaler(s)`` with ``s`` the
       running (momentum 0.1) mean of per-batch maxima (``mode="max"``) or percentiles of the
       ReLU output on ``calibration`` — not the QCFS θ the network was trained with. With
       ``qcfs_thresholds`` both scalers are set from θ of the corresponding QCFS layer.
    3. Its layer-wise neurons start from ``v = 0``: every neuron rounds *down* instead of to
       the nearest level (its ``half_threshold`` option exists only for channel-wise
       thresholds). With ``half_threshold_start`` the neurons (built by the recipe's
       ``neuron_factory`` hook) start from ``v = v_th/2`` (θ/2 after the scaling).
    4. New in 2.0.0: the recipe adapts the graph to the multi-step mode itself (stateless
       layers swapped for their ``layer.*`` multi-step twins), so 0.0.0.0.14's manual
       ``SeqToANNContainer`` wrapping is gone; the nodes still need ``step_mode="m"``.

    Backend: ``neuron.IFNode`` in multi-step mode runs SpikingJelly's registered
    ``if_multi_step`` operator, whose CPU implementation is its PyTorch reference (a loop
    over T); the Triton/CUDA kernels apply to CUDA tensors only. It also folds each
    conv → BN pair into the conv (``fuse_flag``), one layer fewer than parasnn's networks.

    Args:
        model: a QCFS network (handed to SpikingJelly as its ReLU twin) or a ReLU network
            (then ``qcfs_thresholds`` must be False).
        qcfs_thresholds: correction 2 (scales = QCFS θ); half_threshold_start: correction 3.
        calibration: ``(inputs, labels)`` batches for SpikingJelly's voltage hooks.
        mode: SpikingJelly's normalisation mode ("max", "99.9%", or a float in (0, 1]).
    Returns:
        an ``fx.GraphModule`` in eval mode; run it with :func:`run_spikingjelly`.
    """
    ann2snn, functional, neuron = require_spikingjelly()
    has_qcfs = any(isinstance(m, QCFS) for m in model.modules())
    thresholds = quantizer_thresholds(model) if qcfs_thresholds else None
    relu = relu_twin(model) if has_qcfs else copy.deepcopy(model).eval()
    order = _relu_order(relu)
    device = device_of(relu)

    def make_neuron(scale: float) -> nn.Module:
        node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")
        if half_threshold_start:
            node.set_reset_value("v", 0.5)  # v_th/2 (= θ/2 once scaled)
        return node

    recipe = ann2snn.RateCodingRecipe(dataloader=list(calibration), mode=mode, neuron_factory=make_neuron)
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
        snn = ann2snn.Converter(recipe, device=device).convert(relu)
    snn.eval()
    nodes = [node for node in snn.graph.nodes
             if node.op == "call_module" and isinstance(snn.get_submodule(node.target), neuron.BaseNode)]
    if len(nodes) != len(order):
        raise RuntimeError(f"SpikingJelly converted {len(nodes)} of the {len(order)} ReLUs")
    if thresholds is not None:
        for path, node in zip(order, nodes):  # both in graph order
            scaler_in = snn.get_submodule(node.args[0].target)
            (user,) = node.users
            scaler_out = snn.get_submodule(user.target)
            theta = thresholds[path]
            scaler_in.scale = torch.tensor(1.0 / theta, device=device)
            scaler_out.scale = torch.tensor(theta, device=device)
    functional.set_step_mode(snn, "m")
    functional.reset_net(snn)
    return snn


def run_spikingjelly(network: nn.Module, x: Tensor, *, time_steps: int) -> Tensor:
    """Reset the network, feed ``x`` ``(B, ...)`` at every one of T steps ``(T, B, ...)``,
    and return the logits averaged over the steps."""
    from spikingjelly.activation_based import functional  # imported by spikingjelly_network already
    functional.reset_net(network)
    sequence = x.unsqueeze(0).expand(time_steps, *x.shape)  # (T, B, ...), the same input at every step
    return network(sequence).mean(dim=0)
