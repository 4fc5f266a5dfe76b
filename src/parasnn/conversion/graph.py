"""Tracing a model with torch.fx and sorting its operations into what conversion needs.

A network converts to spikes when every operation between its input and output is one of

* an **activation site** — ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()`` (in-place
  variants included), or a quantizer module such as :class:`~parasnn.neurons.QCFS` —
  which becomes a spiking neuron;
* a **max-pool**, which becomes a rate max-pool (exact on rates, see
  :class:`parasnn.conversion.stages.RateMaxPool`);
* an operation that is **affine in the activations** (conv, linear, batch norm in eval,
  average pooling, dropout in eval, additions, concatenation, reshapes, scaling by a
  constant, …): averaging over time commutes with it, so the parallel network can run it
  once on time-averaged values and the serial network once per step.

Anything else (sigmoid, products of two activations, LayerNorm, …) is not a function of
spike *rates*; :func:`check_convertible` lists every such node in one error.
"""
from __future__ import annotations

import enum
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..neurons.base import ActivationQuantizer, SerialOp

__all__ = ["ConversionError", "NodeKind", "trace", "classify", "check_convertible", "data_dependent_nodes",
           "describe", "QUANTIZER_TYPES", "SYNAPTIC_TYPES", "module_path"]


class ConversionError(Exception):
    """A model (or part of one) that parasnn cannot convert; the message says what and why."""


class NodeKind(enum.Enum):
    RELU = "relu"  # becomes a neuron after thresholds are known
    QUANTIZER = "quantizer"  # QCFS-like module: becomes a neuron directly
    SERIAL_OP = "serial-op"  # already converted (neuron, rate max-pool)
    MAX_POOL = "max-pool"
    AFFINE = "affine"
    STATIC = "static"  # does not depend on the input (parameters, constants)
    UNSUPPORTED = "unsupported"


# Activation modules that quantize (the ANN side of a neuron): QCFS and every other
# subclass of ActivationQuantizer.
QUANTIZER_TYPES: tuple[type, ...] = (ActivationQuantizer,)

SYNAPTIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.Linear)

_AFFINE_MODULES = SYNAPTIC_TYPES + (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d,
                       F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_AFFINE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.pos,
    operator.getitem, getattr,
    torch.add, torch.sub, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape,
    torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split,
    torch.mean, torch.sum, torch.narrow,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.linear, F.conv1d, F.conv2d, F.conv3d,
    F.pad, F.batch_norm,
}
# Affine only while at most one operand carries activations (and it is not a divisor).
_SCALING_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_AFFINE_METHODS = {
    "view", "reshape", "flatten", "unflatten", "size", "dim", "contiguous", "permute", "transpose",
    "squeeze", "unsqueeze", "mean", "sum", "add", "add_", "sub", "sub_", "neg", "chunk", "split",
    "expand", "expand_as", "view_as", "reshape_as", "clone", "narrow", "t",
}
_SCALING_METHODS = {"mul", "mul_", "div", "div_"}


class _Tracer(fx.Tracer):
    """Keeps neurons, quantizers and user-named modules as single graph nodes."""

    def __init__(self, leaf_modules: tuple[type, ...] = ()):
        super().__init__()
        self._extra_leaves = tuple(leaf_modules) + QUANTIZER_TYPES + (SerialOp,)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._extra_leaves) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, *, leaf_modules: tuple[type, ...] = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (which is not modified) into a GraphModule."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected an nn.Module to convert, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):  # already traced: copy, so the caller's graph is untouched
        return fx.GraphModule(model, _copy_graph(model.graph), model.__class__.__name__)
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types; all mean "cannot trace this forward"
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}.forward: {type(error).__name__}: {error}\n"
            "Conversion needs a forward without Python control flow that depends on tensor values. "
            "Move such code into a submodule and pass its class in leaf_modules=(...) if it is "
            "affine in its input, or rewrite it."
        ) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    output = new.graph_copy(graph, {})
    new.output(output)
    return new


def module_path(node: fx.Node) -> str:
    """The module a node was traced inside, e.g. ``layer1.0`` (``""`` at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    # Keys are module paths, innermost last; a module called twice appears as "path@1".
    return str(next(reversed(stack))).split("@")[0] if stack else ""


def data_dependent_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a graph input (placeholder)."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _is_scaling_affine(node: fx.Node, dependent: set[fx.Node]) -> bool:
    operands = list(node.args) + list(node.kwargs.values())
    carrying = [arg for arg in operands if isinstance(arg, fx.Node) and arg in dependent]
    if len(carrying) != 1:
        return False
    is_division = node.target in (operator.truediv, operator.itruediv, torch.div) or node.target in ("div", "div_")
    return not (is_division and len(node.args) > 1 and node.args[1] in dependent)


def classify(gm: fx.GraphModule, node: fx.Node, dependent: set[fx.Node]) -> NodeKind:
    """What conversion does with ``node`` (see the module docstring)."""
    if node.op in ("placeholder", "output"):
        return NodeKind.AFFINE
    if node not in dependent:
        return NodeKind.STATIC
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, SerialOp):
            return NodeKind.SERIAL_OP
        if isinstance(module, QUANTIZER_TYPES):
            return NodeKind.QUANTIZER
        if isinstance(module, nn.ReLU):
            return NodeKind.RELU
        if isinstance(module, _MAX_POOL_MODULES):
            return NodeKind.UNSUPPORTED if getattr(module, "return_indices", False) else NodeKind.MAX_POOL
        if isinstance(module, _AFFINE_MODULES):
            return NodeKind.AFFINE
        return NodeKind.UNSUPPORTED
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return NodeKind.RELU
        if node.target in _MAX_POOL_FUNCTIONS:
            return NodeKind.UNSUPPORTED if node.kwargs.get("return_indices") else NodeKind.MAX_POOL
        if node.target in _AFFINE_FUNCTIONS:
            return NodeKind.AFFINE
        if node.target in _SCALING_FUNCTIONS and _is_scaling_affine(node, dependent):
            return NodeKind.AFFINE
        return NodeKind.UNSUPPORTED
    if node.op == "call_method":
        if node.target in _RELU_METHODS:
            return NodeKind.RELU
        if node.target in _AFFINE_METHODS:
            return NodeKind.AFFINE
        if node.target in _SCALING_METHODS and _is_scaling_affine(node, dependent):
            return NodeKind.AFFINE
        return NodeKind.UNSUPPORTED
    return NodeKind.STATIC  # get_attr


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """Human-readable ``name (kind target)`` for error messages and reports."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return f"'{node.target}' ({type(module).__module__}.{type(module).__name__})"
    if node.op == "call_function":
        target = getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", str(node.target))
        module = getattr(node.target, "__module__", None) or ""
        where = module_path(node)
        return f"node '{node.name}' (function {module + '.' if module else ''}{target}" + \
            (f" inside '{where}')" if where else ")")
    if node.op == "call_method":
        where = module_path(node)
        return f"node '{node.name}' (method Tensor.{node.target}" + (f" inside '{where}')" if where else ")")
    return f"node '{node.name}' ({node.op} {node.target})"


def check_convertible(gm: fx.GraphModule, *, model_name: str | None = None) -> dict[fx.Node, NodeKind]:
    """Classify every node; raise one :class:`ConversionError` listing all unsupported ones."""
    dependent = data_dependent_nodes(gm.graph)
    kinds = {node: classify(gm, node, dependent) for node in gm.graph.nodes}
    bad = [node for node, kind in kinds.items() if kind is NodeKind.UNSUPPORTED]
    if bad:
        lines = "\n".join(f"  - {describe(gm, node)}" for node in bad)
        raise ConversionError(
            f"cannot convert {len(bad)} operation{'s' if len(bad) > 1 else ''} of "
            f"{model_name or 'the model'} to spikes:\n{lines}\n"
            "A spiking network can reproduce ReLU/QCFS activations, max-pooling and operations that "
            "are affine in the activations (conv, linear, batch norm, average pooling, dropout, "
            "additions, concatenation, reshapes, scaling by constants). Replace the operations above "
            "with supported ones (e.g. nn.ReLU instead of other nonlinearities)."
        )
    return kinds
