"""Conversion methods: which neuron replaces each quantized activation.

Each method names a neuron factory ``activation module -> SpikingNeuron`` that
:func:`parasnn.convert.convert` applies at every activation site. Checkpoints record the
method by name so a saved network can be rebuilt.
"""
from __future__ import annotations

import enum
from typing import Callable

from torch import nn

from .neurons.base import SpikingNeuron
from .neurons.if_neuron import IFNeuron

__all__ = ["Method", "neuron_factory"]


class Method(str, enum.Enum):
    """``fs-pc``: parallel IF neurons (paper 000/003; the main paper's calibration adds to them)."""

    FS_PC = "fs-pc"


_FACTORIES: dict[Method, Callable[[nn.Module], SpikingNeuron]] = {
    Method.FS_PC: IFNeuron.from_qcfs,
}


def neuron_factory(method: Method | str) -> Callable[[nn.Module], SpikingNeuron]:
    try:
        return _FACTORIES[Method(method)]
    except ValueError:
        raise ValueError(f"unknown method {method!r}; choose one of {[m.value for m in Method]}") from None
