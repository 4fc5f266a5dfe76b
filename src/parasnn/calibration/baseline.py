"""The FS-PC baseline every stage starts from, and what the stages need to know about it:
the original activation ``g_OA`` of each site, its IF neurons and BatchNorm layers, and a
way to run it with some modules swapped for others."""
from __future__ import annotations

import copy
import dataclasses
from typing import Iterable

import torch
from torch import Tensor, nn

from ..conversion.graph import check_convertible, trace
from ..conversion.network import SpikingNetwork
from ..conversion.editing import set_submodule
from ..conversion.stages import convert, fold_batchnorm, isolate_activations, quantize_relus
from ..neurons.base import per_channel
from ..neurons.if_neuron import IFNeuron
from ..neurons.qcfs import QCFS, qcfs
from ..runtime import distributed
from ..simulation.compiled import FusedNetwork, fuse
from .batches import materialise, measuring_sample
from .config import CalibrationConfig, CalibrationError

__all__ = ["OriginalActivation", "convert_for_calibration", "if_neurons", "batchnorms", "Swapped", "working_copy",
           "folded_working_copy", "fast_view"]


@dataclasses.dataclass(frozen=True)
class OriginalActivation:
    """``g_OA`` of [STDC] Alg. 1 for one site: the activation the DA model should match.

    ``levels`` is the L of a QCFS backbone (``QCFS`` at its own L); ``None`` marks a ReLU
    backbone's site, whose original activation is the clipped ReLU ``clamp(x, 0, θ)``.
    """

    threshold: float | Tensor  # a (C,) tensor for a ReLU site with per-channel θ (ThresholdScope.CHANNEL)
    levels: int | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.levels is None:  # min(x, θ) is exact: the same values as clamp(x, 0, θ) for a scalar θ
            return torch.minimum(x.clamp(min=0.0), per_channel(torch.as_tensor(self.threshold).to(x), x))
        theta = torch.tensor(self.threshold, dtype=x.dtype, device=x.device)
        return qcfs(x, threshold=theta, levels=self.levels, shift=theta * 0.5)


class Swapped:
    """Context manager: temporarily put ``replacements[path]`` at ``path`` in ``root``.

    torch.fx's ``call_module`` nodes look modules up by path at run time, so a converted
    network runs the replacements without recompiling; the originals return on exit. Used on
    the stages' own working copies only, never on a network passed in.
    """

    def __init__(self, root: nn.Module, replacements: dict[str, nn.Module]):
        self.root, self.replacements = root, replacements
        self.originals = {path: root.get_submodule(path) for path in replacements}

    def __enter__(self):
        for path, module in self.replacements.items():
            set_submodule(self.root, path, module)
        return self

    def __exit__(self, *exc):
        for path, module in self.originals.items():
            set_submodule(self.root, path, module)
        return False


def if_neurons(network: SpikingNetwork, *, where: str) -> dict[str, IFNeuron]:
    """``{path: neuron}`` of a network whose neurons are all parallel IF neurons, else a
    :class:`CalibrationError` naming ``where``."""
    neurons = dict(network.neurons())
    others = [path for path, n in neurons.items() if not isinstance(n, IFNeuron)]
    if others:
        raise CalibrationError(f"{where} calibrates parallel IF neurons (method fs-pc); layers {others[:5]} are "
                               f"{type(neurons[others[0]]).__name__}")
    if not neurons:
        raise CalibrationError(f"{where}: the network has no neuron layers")
    return neurons


def fast_view(network: SpikingNetwork) -> SpikingNetwork:
    """``network`` with fused neurons (:func:`parasnn.simulation.compiled.fuse`: the same
    parameter and buffer tensors, the same outputs and gradients bit for bit, fewer passes
    over each activation), for a stage to run. On CPU only: the CUDA kernels have not yet run
    on a GPU (docs/speed.md), so a network elsewhere is returned as it is, as is one already
    fused."""
    if isinstance(network, FusedNetwork) or any(t.device.type != "cpu" for t in network.parameters()):
        return network
    return fuse(network)


def working_copy(network: SpikingNetwork) -> SpikingNetwork:
    """A stage's private copy of ``network`` to train (nothing shared with it), fused where
    :func:`fast_view` fuses."""
    return fast_view(copy.deepcopy(network))


def folded_working_copy(network: SpikingNetwork) -> SpikingNetwork:
    """:func:`working_copy` in eval mode with every ``conv/linear → BatchNorm`` pair folded into
    the convolution, for a stage that trains neither (stage bias).

    The same function up to rounding, in fewer passes: on the ResNet-20 a stage-bias step
    costs 27 % less and a held-out pass 10 % less. Rounding is not nothing to a neuron that
    counts — a current on a threshold may land on the other side — so what the stage learns
    on this copy is judged on it too, and the network the stage returns is measured again,
    unfolded. Neuron paths are unchanged, so terms learned here apply to ``network``."""
    copied = copy.deepcopy(network).eval()
    fold_batchnorm(copied.graph_module)
    return fast_view(copied)


def batchnorms(network: SpikingNetwork) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """``{path: layer}`` of every BatchNorm layer of the converted graph."""
    return {path: module for path, module in network.graph_module.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def convert_for_calibration(model: nn.Module, calibration_data: Iterable | None, *,
                            config: CalibrationConfig = CalibrationConfig(),
                            leaf_modules: tuple[type, ...] = ()
                            ) -> tuple[SpikingNetwork, dict[str, OriginalActivation]]:
    """The FS-PC baseline of ``model`` and the original activation ``g_OA`` of each site.

    ReLU sites get θ from ``calibration_data`` (``config.percentile``, on a random
    ``config.statistics_size`` images of it; reduced over processes
    under torchrun) and a clipped ReLU as original activation; QCFS sites keep their θ and
    their own L. ``model`` is not modified. Returns ``(network, {neuron path: g_OA})``.
    """
    if isinstance(model, SpikingNetwork):
        raise CalibrationError("calibration starts from the ANN (QCFS or ReLU), not from a converted SpikingNetwork")
    ann = isolate_activations(trace(copy.deepcopy(model).eval(), leaf_modules=leaf_modules))
    check_convertible(ann, model_name=type(model).__name__)
    relu_sites = {path for path, module in ann.named_modules() if isinstance(module, nn.ReLU)}
    conversion = config.conversion()
    if relu_sites:
        data = measuring_sample(materialise(calibration_data, where="recording ReLU thresholds"),
                                images=config.statistics_size, batch_size=config.batch_size, seed=config.seed)
        reducer = distributed.threshold_reducer(conversion.threshold) if distributed.is_distributed() else None
        quantized = quantize_relus(model, data, levels=conversion.levels, statistic=conversion.threshold,
                                   leaf_modules=leaf_modules, reduce=reducer)
    else:
        quantized = ann
    originals = {path: OriginalActivation(threshold=_site_threshold(module), levels=None if path in relu_sites
                                          else module.levels)
                 for path, module in quantized.named_modules() if isinstance(module, QCFS)}
    network = convert(quantized, config=conversion, leaf_modules=leaf_modules)
    network.source = type(model).__name__
    missing = [path for path, _ in network.neurons() if path not in originals]
    if missing:  # other quantizer types have no original activation the DA stage could match
        raise CalibrationError(f"calibration supports ReLU and QCFS activation sites; {missing[:5]} are neither")
    return network, originals


def _site_threshold(module: QCFS) -> float | Tensor:
    """θ of a quantizer site as :class:`OriginalActivation` takes it: a float, or ``(C,)``."""
    threshold = module.effective_threshold().detach()
    return float(threshold) if threshold.dim() == 0 else threshold.clone()
