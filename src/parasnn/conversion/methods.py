"""Conversion methods: which neuron replaces each quantized activation, and how a network
of them is evaluated.

Each method registers a :class:`MethodSpec`: a neuron factory ``activation module ->
SpikingNeuron`` that :func:`parasnn.conversion.stages.convert` applies at every activation
site, and the evaluation that fits its neurons (the generic parallel/serial evaluation of
:mod:`parasnn.evaluation.accuracy`, or PASCAL's layer-pipelined serial simulation). The
command line looks the method up here; it has no case of its own for any method.
Checkpoints record the method by name so a saved network can be rebuilt.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any, Callable

from torch import nn

from ..neurons.base import SpikingNeuron
from ..neurons.if_neuron import IFNeuron
from ..neurons.pascal import PascalNeuron
from ..neurons.pmsm import PolarityMultiSpikeNeuron

__all__ = ["Method", "MethodSpec", "register_method", "method_spec", "neuron_factory", "default_method"]


class Method(str, enum.Enum):
    """``fs-pc``: parallel IF neurons ([FS-PC]; [STDC]'s calibration adds to them).
    ``pascal``: PASCAL's inhibitory-spike neurons ([PASCAL]), run serially by :mod:`parasnn.methods.pascal`.
    ``pmsm``: signed multi-spike neurons for signed-quantizer networks ([PMSM], :mod:`parasnn.methods.pmsm`),
    equal to the quantized ANN at T = 1."""

    FS_PC = "fs-pc"
    PASCAL = "pascal"
    PMSM = "pmsm"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a method registers.

    Attributes:
        method: its name.
        neuron: builds the neuron that replaces one quantized activation module.
        evaluator: ``"module:function"`` (imported on use) of
            ``(ann, network, batches, *, time_steps, forms, activity, options) -> report``;
            the report has ``to_dict()`` and ``samples``.
        formatter: ``"module:function"`` of ``(report, *, title) -> str`` (Markdown).
        single_process: its evaluation cannot be sharded across torchrun processes.
    """

    method: Method
    neuron: Callable[[nn.Module], SpikingNeuron]
    evaluator: str = "parasnn.evaluation.accuracy:evaluate_method"
    formatter: str = "parasnn.evaluation.accuracy:format_table"
    single_process: bool = False

    def evaluate(self, ann, network, batches, **options) -> Any:
        return _resolve(self.evaluator)(ann, network, batches, **options)

    def format(self, report, *, title: str) -> str:
        return _resolve(self.formatter)(report, title=title)


def _resolve(reference: str) -> Callable:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


_METHODS: dict[Method, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register (or replace) the specification of ``spec.method``."""
    _METHODS[Method(spec.method)] = spec
    return spec


def method_spec(method: Method | str) -> MethodSpec:
    """The registered specification of ``method``."""
    try:
        return _METHODS[Method(method)]
    except ValueError:
        raise ValueError(f"unknown method {method!r}; choose one of {[m.value for m in Method]}") from None


def neuron_factory(method: Method | str) -> Callable[[nn.Module], SpikingNeuron]:
    return method_spec(method).neuron


register_method(MethodSpec(Method.FS_PC, IFNeuron.from_qcfs))
register_method(MethodSpec(Method.PMSM, PolarityMultiSpikeNeuron.from_quantizer))
register_method(MethodSpec(Method.PASCAL, PascalNeuron.from_qcfs,
                           evaluator="parasnn.methods.pascal_evaluation:evaluate_method",
                           formatter="parasnn.methods.pascal_evaluation:format_pascal", single_process=True))


def default_method(activation_kind) -> Method:
    """The method that converts a network of this activation kind without loss at its own L:
    signed quantizers → PMSM, everything else (QCFS, ReLU via QCFS) → FS-PC."""
    return Method.PMSM if getattr(activation_kind, "value", activation_kind) == "signed" else Method.FS_PC
