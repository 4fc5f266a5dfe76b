"""ANN → SNN conversion as a fixed sequence of graph stages.

::

    trace            torch.fx graph of a deep copy of the model (the argument is never touched)
    expand           softmax, layer norm, attention, … replaced by their primitive operations
    check            every operation classified; one error lists all that cannot convert
    isolate          every activation call site gets its own module (a ReLU module called twice
                     becomes two neurons with their own thresholds)
    quantize ReLUs   ReLU → QCFS, thresholds recorded on calibration data   (ReLU models only)
    fit              scalar functions (GELU, SiLU, exp, …) → multi-basis neurons fitted on the
                     inputs recorded at each site
    fold BN          optional: conv/linear → BatchNorm pairs folded into one layer
    spike            QCFS → neuron (IF by default), max-pool → rate max-pool,
                     a ``time_steps`` input threaded to every neuron

The result is a :class:`~parasnn.conversion.network.SpikingNetwork`; run it with
:func:`parasnn.simulation.forms.parallel_forward` (one pass) or :func:`parasnn.simulation.forms.serial_forward`
(``T`` steps).
"""
from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Callable, Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..neurons.base import SpikingNeuron
from ..neurons.if_neuron import IFNeuron
from ..neurons.qcfs import QCFS
from .builtin_rules import RELU6_FUNCTIONS
from .editing import call_site_name, fresh_name, replace_with_module, set_submodule
from .expand import expand_operations
from .fitting import FitScope, fit_sites
from .graph import ConversionError, carrying_nodes, check_convertible, classify, describe, trace
from .network import SpikingNetwork, all_finite, observe
from .pooling import RateMaxPool
from .rules import Role
from ..runtime.order_statistics import percentile_value

__all__ = ["BatchNormMode", "ThresholdStatistic", "ConversionConfig", "convert", "quantize_relus",
           "isolate_activations", "fold_batchnorm", "RateMaxPool", "ConversionError",
           "activation_sites", "record_activation_thresholds"]

NeuronFactory = Callable[[nn.Module], SpikingNeuron]

_RELUS = (nn.ReLU, nn.ReLU6)  # activation sites whose thresholds are recorded on data


class BatchNormMode(str, enum.Enum):
    """What conversion does with BatchNorm layers.

    ``KEEP`` leaves them as frozen affine layers: the SNN evaluates exactly the ANN's
    floating-point operations, so at ``T = L`` its logits are bit-equal to a QCFS ANN's.
    ``FOLD`` merges each BN into the conv/linear before it (one layer less per block, as
    hardware would run it); the arithmetic then differs in the last bits, so a level on
    a rounding boundary can flip.
    """

    KEEP = "keep"
    FOLD = "fold"


class ThresholdScope(str, enum.Enum):
    """Over what a ReLU's threshold is read: the whole layer (FS-PC, [STDC]: one θ per site)
    or each channel (beyond the papers: one θ per channel of the site, axis 1; docs/decisions.md,
    "Per-channel thresholds")."""

    LAYER = "layer"
    CHANNEL = "channel"


@dataclasses.dataclass(frozen=True)
class ThresholdStatistic:
    """How a ReLU's threshold θ is read off its activations on calibration data.

    ``percentile`` of the activations of the layer (``scope`` LAYER: batch, channels,
    positions; CHANNEL: batch and positions, per channel), computed per batch and averaged
    over batches; ``100`` records the maximum over all batches instead. 99.9 follows the
    robust normalisation common in conversion work (Rueckauer et al. 2017).
    """

    percentile: float = 99.9
    scope: ThresholdScope = ThresholdScope.LAYER

    def __post_init__(self):
        if not 0 < self.percentile <= 100:
            raise ValueError(f"ThresholdStatistic: percentile must be in (0, 100], got {self.percentile}")
        try:
            object.__setattr__(self, "scope", ThresholdScope(self.scope))
        except ValueError:
            raise ValueError(f"ThresholdStatistic: scope must be one of {[s.value for s in ThresholdScope]}, "
                             f"got {self.scope!r}") from None


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Options of :func:`convert`. ``levels`` is the L of the QCFS layers that replace ReLUs
    (it only shapes the QCFS proxy network; the spiking network's T is chosen at run time).
    ``bases`` (the paper's N) and ``function_time_steps`` (the T's fitted) shape the
    multi-basis neurons of scalar functions (GELU, SiLU, exp, …); such a network runs at
    those T only, because an MBE neuron is fitted for one T. ``keep_levels`` (default True):
    the neuron of a trained QCFS layer keeps its L levels at ``T > L``, so the SNN at every
    ``T ≥ L`` is the QCFS ANN (docs/maths.md §3a); False gives every neuron T levels (parasnn
    before this option; what checkpoints that do not record it were converted with)."""

    levels: int = 8
    threshold: ThresholdStatistic = ThresholdStatistic()
    batchnorm: BatchNormMode = BatchNormMode.KEEP
    bases: int = 4
    function_time_steps: tuple[int, ...] = (2, 4, 8, 16)
    fit_scope: FitScope = FitScope.NETWORK
    keep_levels: bool = True

    def __post_init__(self):
        steps = tuple(self.function_time_steps)
        if not steps or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in steps):
            raise ValueError(f"ConversionConfig: function_time_steps must be integers >= 1, got {steps}")
        object.__setattr__(self, "function_time_steps", steps)
        object.__setattr__(self, "fit_scope", FitScope(self.fit_scope))
        if isinstance(self.bases, bool) or not isinstance(self.bases, int) or self.bases < 1:
            raise ValueError(f"ConversionConfig: bases must be an integer >= 1, got {self.bases!r}")

    def to_dict(self) -> dict:
        return {"levels": self.levels, "percentile": self.threshold.percentile,
                "threshold_scope": self.threshold.scope.value, "batchnorm": self.batchnorm.value,
                "bases": self.bases, "function_time_steps": list(self.function_time_steps),
                "fit_scope": self.fit_scope.value, "keep_levels": self.keep_levels}

    @classmethod
    def from_dict(cls, data: dict) -> "ConversionConfig":
        defaults = cls()
        threshold = ThresholdStatistic(float(data["percentile"]), data.get("threshold_scope", ThresholdScope.LAYER))
        return cls(levels=int(data["levels"]), threshold=threshold,
                   batchnorm=BatchNormMode(data["batchnorm"]), bases=int(data.get("bases", defaults.bases)),
                   function_time_steps=tuple(int(t) for t in data.get("function_time_steps",
                                                                       defaults.function_time_steps)),
                   fit_scope=FitScope(data.get("fit_scope", defaults.fit_scope)),
                   keep_levels=bool(data.get("keep_levels", False)))  # older checkpoints: T levels


# -- stages ---------------------------------------------------------------------------

def activation_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """Activation call sites (ReLU or quantizer), in graph order."""
    dependent = carrying_nodes(gm)
    return [n for n in gm.graph.nodes
            if getattr(classify(gm, n, dependent), "role", None) in (Role.ACTIVATION, Role.QUANTIZER)]


def isolate_activations(gm: fx.GraphModule) -> fx.GraphModule:
    """Give every activation call site its own module (in place on ``gm``, a private copy).

    ``F.relu``/``torch.relu``/``x.relu()`` become ``nn.ReLU`` modules named after the module
    they were called in (``layer1.0.relu_2``); a module called at several sites is copied
    so each site can get its own threshold and, later, its own neuron.
    """
    seen: set[str] = set()
    for node in activation_sites(gm):
        if node.op == "call_module" and node.target not in seen:
            seen.add(node.target)
            module = gm.get_submodule(node.target)
            if isinstance(module, _RELUS) and module.inplace:
                set_submodule(gm, node.target, type(module)())  # in-place would clobber a shared input
            continue
        if node.op == "call_module":
            module = copy.deepcopy(gm.get_submodule(node.target))
            if isinstance(module, _RELUS):
                module = type(module)()
            name = fresh_name(gm, node.target)
        else:
            module = nn.ReLU6() if node.target in RELU6_FUNCTIONS else nn.ReLU()
            name = call_site_name(gm, node)
        replace_with_module(gm, node, name, module, (node.args[0],))
    gm.graph.lint()
    gm.recompile()
    return gm


def record_activation_thresholds(gm: nn.Module, sites: Iterable[str], batches: Iterable,
                                 statistic: ThresholdStatistic, *, reduce: Callable[[dict], dict] | None = None
                                 ) -> dict[str, float | Tensor]:
    """Run ``batches`` (tensors, or ``(inputs, labels)`` pairs) through ``gm`` in eval mode and
    return θ per activation module path, per ``statistic``: a float (scope LAYER) or a
    ``(C,)`` tensor (scope CHANNEL, C = the activation's axis 1). ``reduce`` (optional)
    combines the per-process partial results ``{path: (sum_or_max, batches)}`` across processes."""
    sites = list(sites)
    partial: dict[str, list] = {site: [0.0, 0] for site in sites}
    use_max = statistic.percentile >= 100
    by_channel = statistic.scope is ThresholdScope.CHANNEL

    def make_hook(site):
        def hook(module, inputs, output):
            values = output.detach().float()
            if not all_finite(values):  # a NaN θ would poison every later layer
                raise ConversionError(f"recording thresholds: activation {site} sees NaN or infinite values; the "
                                      "calibration data (or the weights before this layer) hold NaN/inf — clean it")
            if by_channel:
                if values.dim() < 2:
                    raise ConversionError(f"recording per-channel thresholds: activation {site} has output shape "
                                          f"{tuple(values.shape)}, no channel axis; use the layer scope")
                values = values.transpose(0, 1).reshape(values.shape[1], -1)  # (C, B·positions)
            else:
                values = values.reshape(1, -1)  # (1, all activations)
            if use_max:
                statistic_now = values.amax(dim=1)
                partial[site][0] = statistic_now if partial[site][1] == 0 else \
                    torch.maximum(partial[site][0], statistic_now)
            else:
                partial[site][0] = partial[site][0] + percentile_value(values, statistic.percentile, dim=1).double()
            partial[site][1] += 1
        return hook

    observe(gm, batches, [(gm.get_submodule(site), make_hook(site)) for site in sites],
            description="recording activation ranges")
    if reduce is not None:
        partial = reduce(partial)
    empty = [site for site, (_, count) in partial.items() if count == 0]
    if empty:
        raise ConversionError(
            "calibration data is empty: no batch reached activation(s) " + ", ".join(empty[:5]) +
            ". Pass a non-empty iterable of input batches as calibration_data.")
    thresholds = {}
    for site, (value, count) in partial.items():
        theta = torch.as_tensor(value if use_max else value / count, dtype=torch.float64)
        # A ReLU that never fires on the calibration data still needs a positive θ.
        theta = theta.clamp(min=1e-3)
        thresholds[site] = theta.float() if by_channel else float(theta.reshape(()))
    return thresholds


def quantize_relus(model: nn.Module, calibration_data: Iterable, *, levels: int = 8,
                   statistic: ThresholdStatistic = ThresholdStatistic(), leaf_modules: tuple[type, ...] = (),
                   reduce: Callable[[dict], dict] | None = None) -> fx.GraphModule:
    """A copy of ``model`` with every ReLU site replaced by QCFS(levels, θ), θ recorded on
    ``calibration_data`` (the "clipped ReLU / QCFS" step of docs/maths.md §4d). Quantizer sites
    already present are kept."""
    gm = _prepare(model, leaf_modules)
    relu_sites = [n.target for n in activation_sites(gm) if isinstance(gm.get_submodule(n.target), _RELUS)]
    if relu_sites:
        thresholds = record_activation_thresholds(gm, relu_sites, calibration_data, statistic, reduce=reduce)
        for site in relu_sites:
            if isinstance(gm.get_submodule(site), nn.ReLU6):  # QCFS clips at θ: θ ≤ 6 keeps ReLU6's ceiling
                theta = thresholds[site]
                thresholds[site] = theta.clamp(max=6.0) if torch.is_tensor(theta) else min(theta, 6.0)
            stand_in = QCFS(levels=levels, threshold=thresholds[site])
            stand_in.stand_in = True  # its L only shapes the proxy: the SNN has T levels at every T
            set_submodule(gm, site, stand_in)
    gm.recompile()
    return gm


def _prepare(model: nn.Module, leaf_modules) -> fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert: expected a torch.nn.Module, got {type(model).__name__}; wrap the function "
                              "in an nn.Module whose forward calls it")
    model = copy.deepcopy(model).eval()
    gm = expand_operations(trace(model, leaf_modules=leaf_modules))
    check_convertible(gm, model_name=type(model).__name__)
    return isolate_activations(gm)


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every ``conv/linear → BatchNorm`` pair (BN the conv's only user) into the conv (in place)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        layer = gm.get_submodule(source.target)
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        set_submodule(gm, source.target, _folded(layer, gm.get_submodule(node.target)))
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _folded(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    folded = copy.deepcopy(layer)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        folded.weight.copy_(layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1))))
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return folded


def _spike(gm: fx.GraphModule, neuron: NeuronFactory) -> fx.GraphModule:
    """Replace every node by what its rule makes of it: quantizer sites by the method's
    neurons, spiking operations by the layer their rule builds, ignored ones by their
    input; thread a ``time_steps`` input to every layer that takes it."""
    first = next(iter(gm.graph.nodes))
    with gm.graph.inserting_before(first):
        time_steps = gm.graph.placeholder("time_steps")  # first, so model defaults stay valid
    dependent = carrying_nodes(gm)
    # Decide for every node before changing any: a replaced node is a new node, which a
    # later node's rule would no longer recognise as carrying.
    decisions = [(node, classify(gm, node, dependent)) for node in gm.graph.nodes]
    for node, rule in decisions:
        role = rule.role if rule is not None else None
        if role is Role.QUANTIZER:
            try:
                spiking = neuron(gm.get_submodule(node.target))
            except (TypeError, ValueError) as error:
                raise ConversionError(f"{describe(gm, node)}: {error}") from error
            set_submodule(gm, node.target, spiking)
        elif role is Role.SPIKING:
            try:
                spiking = rule.build(gm, node)
            except (TypeError, ValueError) as error:
                raise ConversionError(f"{describe(gm, node)} ({rule.name}): {error}") from error
            if node.op == "call_module":
                set_submodule(gm, node.target, spiking)
                node.args, node.kwargs = tuple(node.args[i] for i in rule.inputs), {}
            else:
                name = call_site_name(gm, node)
                node = replace_with_module(gm, node, name, spiking, tuple(node.args[i] for i in rule.inputs))
        elif role is Role.IGNORED:
            if rule.replacement is not None:
                node.replace_all_uses_with(node.args[rule.replacement])
            gm.graph.erase_node(node)
            continue
        elif role is Role.ACTIVATION:
            raise ConversionError(
                f"{describe(gm, node)} is a ReLU without a threshold. Pass calibration_data= to convert() so "
                "thresholds can be recorded, or train the network with QCFS activations.")
        if role in (Role.QUANTIZER, Role.SPIKING, Role.CONVERTED):
            module = gm.get_submodule(node.target)
            if getattr(module, "takes_time_steps", False):
                node.kwargs = {**node.kwargs, "time_steps": time_steps}
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def convert(model: nn.Module, *, calibration_data: Iterable | None = None,
            config: ConversionConfig = ConversionConfig(), neuron: NeuronFactory = IFNeuron.from_qcfs,
            leaf_modules: tuple[type, ...] = (), reduce: Callable[[dict], dict] | None = None,
            placeholder_fits: bool = False) -> SpikingNetwork:
    """Convert ``model`` into a spiking network. ``model`` is not modified.

    Args:
        model: any ``nn.Module`` whose forward torch.fx can trace, with ReLU and/or QCFS
            activations (see :mod:`parasnn.conversion.graph` for what else may appear).
        calibration_data: batches (tensors or ``(inputs, labels)``) used to record ReLU
            thresholds; required when the model has ReLUs, unused otherwise.
        config: see :class:`ConversionConfig`.
        neuron: builds the neuron that replaces one quantizer module (default: the parallel
            IF neuron, :meth:`IFNeuron.from_qcfs`).
        leaf_modules: module classes torch.fx must not trace into.
        reduce: combines threshold statistics across processes (see
            :mod:`parasnn.runtime.distributed`); ``None`` in a single process.
        placeholder_fits: fitted functions (GELU, exp, …) get neurons with placeholder
            parameters instead of fits: the structure a saved state dict is loaded into.

    Raises:
        ConversionError: listing every operation that cannot be converted, or naming the
            ReLUs that need calibration data.
    """
    if calibration_data is not None:
        if iter(calibration_data) is calibration_data:  # a one-shot iterator: two stages read it
            calibration_data = list(calibration_data)
        gm = quantize_relus(model, calibration_data, levels=config.levels, statistic=config.threshold,
                            leaf_modules=leaf_modules, reduce=reduce)
    else:
        gm = _prepare(model, leaf_modules)
    gm = fit_sites(gm, calibration_data, config, placeholders=placeholder_fits)
    if config.batchnorm is BatchNormMode.FOLD:
        gm = fold_batchnorm(gm)
    gm = _spike(gm, neuron)
    if not config.keep_levels:
        for module in gm.modules():
            if isinstance(module, IFNeuron):
                module.levels = None
    return SpikingNetwork(gm, source=type(model).__name__, config=config)
