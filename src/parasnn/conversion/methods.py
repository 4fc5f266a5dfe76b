"""Conversion methods: which neuron replaces each quantized activation.

Each method names a neuron factory ``activation module -> SpikingNeuron`` that
:func:`parasnn.conversion.stages.convert` applies at every activation site. Checkpoints record the
method by name so a saved network can be rebuilt.
"""
from __future__ import annotations

import enum
from typing import Callable

from torch import nn

from ..neurons.base import SpikingNeuron
from ..neurons.if_neuron import IFNeuron
from ..neurons.pascal import PascalNeuron
from ..neurons.pmsm import PolarityMultiSpikeNeuron

__all__ = ["Method", "neuron_factory", "default_method"]


class Method(str, enum.Enum):
    """``fs-pc``: parallel IF neurons (paper 000/003; the main paper's calibration adds to them).
    ``pascal``: PASCAL's inhibitory-spike neurons (paper 002), run serially by :mod:`parasnn.methods.pascal`.
    ``pmsm``: signed multi-spike neurons for signed-quantizer networks (paper 001, :mod:`parasnn.methods.pmsm`),
    equal to the quantized ANN at T = 1."""

    FS_PC = "fs-pc"
    PASCAL = "pascal"
    PMSM = "pmsm"


_FACTORIES: dict[Method, Callable[[nn.Module], SpikingNeuron]] = {
    Method.FS_PC: IFNeuron.from_qcfs,
    Method.PMSM: PolarityMultiSpikeNeuron.from_quantizer,
    Method.PASCAL: PascalNeuron.from_qcfs,
}


def neuron_factory(method: Method | str) -> Callable[[nn.Module], SpikingNeuron]:
    try:
        return _FACTORIES[Method(method)]
    except ValueError:
        raise ValueError(f"unknown method {method!r}; choose one of {[m.value for m in Method]}") from None


def default_method(activation_kind) -> Method:
    """The method that converts a network of this activation kind without loss at its own L:
    signed quantizers → PMSM, everything else (QCFS, ReLU via QCFS) → FS-PC."""
    return Method.PMSM if getattr(activation_kind, "value", activation_kind) == "signed" else Method.FS_PC
