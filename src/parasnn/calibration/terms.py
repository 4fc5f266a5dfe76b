"""What a calibration stage learns, as data, and the one visible step that applies it.

Each stage returns its terms — tensors keyed by the path of the module they belong to —
and :func:`apply_terms` makes a new network with them; the network passed in is never
modified. So a caller can inspect, save, compare or combine what each stage learned, and
the ablation can branch from any intermediate result.

=================  ======================================  ========================
terms              per module path                          paper (docs/maths.md)
=================  ======================================  ========================
:class:`DATerms`   neuron ``pre_shift`` ψ_DA, ``amplitude``  §4a, stage da
                   θ + φ_DA, each ``(C,)``
:class:`BatchNormTerms`  BN ``weight`` γ, ``bias`` β,         §4b, stage bn
                   ``running_mean``, ``running_var``, ``(C,)``
:class:`BiasTerms` neuron ``temporal_bias`` Δb, ``(C,)``     §4c, stage bias
=================  ======================================  ========================
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

from torch import Tensor, nn

from ..conversion.network import SpikingNetwork

__all__ = ["DATerms", "BatchNormTerms", "BiasTerms", "Terms", "apply_terms"]


@dataclasses.dataclass(frozen=True)
class DATerms:
    """Stage da: ``pre_shift`` ψ_DA and ``amplitude`` θ + φ_DA per neuron path, each ``(C,)``."""

    pre_shift: Mapping[str, Tensor]
    amplitude: Mapping[str, Tensor]

    def assignments(self) -> dict[str, dict[str, Tensor]]:
        return {path: {"pre_shift": self.pre_shift[path], "amplitude": self.amplitude[path]}
                for path in self.pre_shift}


@dataclasses.dataclass(frozen=True)
class BatchNormTerms:
    """Stage bn: per BatchNorm path ``{"weight", "bias", "running_mean", "running_var",
    "num_batches_tracked"}`` (the affine terms and the statistics)."""

    layers: Mapping[str, Mapping[str, Tensor]]

    def assignments(self) -> dict[str, dict[str, Tensor]]:
        return {path: dict(values) for path, values in self.layers.items()}


@dataclasses.dataclass(frozen=True)
class BiasTerms:
    """Stage bias: ``temporal_bias`` Δb per neuron path, ``(C,)``."""

    temporal_bias: Mapping[str, Tensor]

    def assignments(self) -> dict[str, dict[str, Tensor]]:
        return {path: {"temporal_bias": value} for path, value in self.temporal_bias.items()}


Terms = DATerms | BatchNormTerms | BiasTerms


def apply_terms(network: SpikingNetwork, terms: Terms) -> SpikingNetwork:
    """A copy of ``network`` with ``terms`` written into its modules; ``network`` itself is not
    modified. The copy is an inference network: eval mode, no parameter requires gradients.
    Parameters stay parameters, buffers stay buffers; values move to the device of the
    tensor they replace."""
    result = copy.deepcopy(network).eval()
    for parameter in result.parameters():
        parameter.requires_grad_(False)
    for path, values in terms.assignments().items():
        module = result.graph_module.get_submodule(path)
        for name, value in values.items():
            current = getattr(module, name)
            value = value.detach().clone().to(current.device if isinstance(current, Tensor) else value.device)
            if isinstance(current, nn.Parameter):
                setattr(module, name, nn.Parameter(value, requires_grad=False))
            else:
                setattr(module, name, value)
    return result
