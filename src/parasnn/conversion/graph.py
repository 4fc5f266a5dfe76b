"""Tracing a model with torch.fx and sorting its operations by the rule that claims them.

A network converts to spikes when a rule of :mod:`parasnn.conversion.rules` claims every
operation between its input and output (the built-in ones are listed in
:mod:`parasnn.conversion.builtin_rules`: activation sites, max-pools, and operations that
are affine in the activations). :func:`check_convertible` lists every unclaimed node in one
error, grouped by type.

Values computed from shapes only (``x.size(0)``, ``x.dim() == 3``, ``torch._assert`` on
them) do not depend on the activations: they are static and run unchanged.
"""
from __future__ import annotations

import collections

import torch.fx as fx
from torch import nn

from ..neurons.base import ActivationQuantizer, SerialOp
from .editing import module_path
from .rules import Role, Rule, match

__all__ = ["ConversionError", "NodeKind", "trace", "classify", "check_convertible", "data_dependent_nodes",
           "describe", "QUANTIZER_TYPES", "SYNAPTIC_TYPES", "module_path", "shape_valued_nodes", "operation_type", "function_name", "carrying_nodes"]


class ConversionError(Exception):
    """A model (or part of one) that parasnn cannot convert; the message says what and why."""


NodeKind = Role  # deprecated name of :class:`parasnn.conversion.rules.Role`

# Activation modules that quantize (the ANN side of a neuron): QCFS and every other
# subclass of ActivationQuantizer.
QUANTIZER_TYPES: tuple[type, ...] = (ActivationQuantizer,)


def __getattr__(name: str):
    if name == "SYNAPTIC_TYPES":  # kept here for old imports; defined with the built-in rules
        from .builtin_rules import SYNAPTIC_TYPES
        return SYNAPTIC_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Tracer(fx.Tracer):
    """Keeps neurons, quantizers and user-named modules as single graph nodes."""

    def __init__(self, leaf_modules: tuple[type, ...] = ()):
        super().__init__()
        self._extra_leaves = tuple(leaf_modules) + QUANTIZER_TYPES + (SerialOp,)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._extra_leaves) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, *, leaf_modules: tuple[type, ...] = (), concrete_args: dict | None = None
          ) -> fx.GraphModule:
    """Symbolically trace ``model`` (which is not modified) into a GraphModule;
    ``concrete_args`` fixes arguments to constants while tracing (torch.fx's option)."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected an nn.Module to convert, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):  # already traced: copy, so the caller's graph is untouched
        return fx.GraphModule(model, _copy_graph(model.graph), model.__class__.__name__)
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
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


_SHAPE_METHODS = {"size", "dim", "numel", "nelement"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}


def shape_valued_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is computed from tensor shapes (or dtypes) only, never from values."""
    shapes: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            shapes.add(node)
        elif node.op == "call_function" and node.target is getattr and len(node.args) > 1 and \
                node.args[1] in _SHAPE_ATTRIBUTES:
            shapes.add(node)
        elif node.op in ("call_function", "call_method") and node.all_input_nodes and \
                all(arg in shapes for arg in node.all_input_nodes):
            shapes.add(node)
    return shapes


def data_dependent_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the values of a graph input (placeholder)."""
    shapes = shape_valued_nodes(graph)
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or (node not in shapes and any(arg in dependent for arg in node.all_input_nodes)):
            dependent.add(node)
    return dependent


# Roles whose nodes start time-varying (spike-coded) values, even on analog inputs.
_SOURCE_ROLES = frozenset({Role.ACTIVATION, Role.QUANTIZER, Role.CONVERTED, Role.FITTED, Role.EXPANDED})


def carrying_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value varies over the time steps: activation sites (and operations that
    expand into them) and everything downstream of one. Before the first site a value is
    analog and constant over time (the input layer, an attention mask, position
    embeddings): both forms compute it exactly as the ANN does, whatever the operation, so
    it needs no rule. Rules see this set as ``dependent``: a node's operands are judged by
    what precedes it (graph order), the node itself counts as dependent while it is tried."""
    dependent = data_dependent_nodes(gm.graph)
    carrying: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node not in dependent or node.op in ("placeholder", "output"):
            continue
        if any(arg in carrying for arg in node.all_input_nodes):
            carrying.add(node)
            continue
        carrying.add(node)  # tried as a candidate site
        rule = match(gm, node, carrying)
        if rule is None or rule.role not in _SOURCE_ROLES:
            carrying.discard(node)
    return carrying


_PASS_THROUGH = Rule("graph boundary", Role.AFFINE, lambda gm, node, dependent: True)
_STATIC = Rule("static", Role.STATIC, lambda gm, node, dependent: True)


def classify(gm: fx.GraphModule, node: fx.Node, dependent: set[fx.Node]) -> Rule | None:
    """The rule that claims ``node`` (``None``: nothing does). Inputs and outputs pass
    through; nodes outside ``dependent`` (pass :func:`carrying_nodes`) are static."""
    if node.op in ("placeholder", "output"):
        return _PASS_THROUGH
    if node not in dependent or node.op == "get_attr":
        return _STATIC
    return match(gm, node, dependent)


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


def operation_type(gm: fx.GraphModule, node: fx.Node) -> str:
    """What kind of operation ``node`` is, for grouping: a module class, a function or a method."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return f"module {type(module).__module__}.{type(module).__name__}"
    if node.op == "call_function":
        return f"function {function_name(node.target)}"
    return f"method Tensor.{node.target}"


def function_name(function) -> str:
    """``torch.cumsum``, ``torch.nn.functional.gelu``, ``operator.mul``: the name a user wrote."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", str(function))
    if name.startswith("_VariableFunctionsClass."):  # torch's C functions
        name = name.split(".", 1)[1]
    module = getattr(function, "__module__", None) or "torch"
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    return f"{module}.{name}"


def check_convertible(gm: fx.GraphModule, *, model_name: str | None = None) -> dict[fx.Node, Rule]:
    """The rule of every node; raise one :class:`ConversionError` listing all unclaimed
    ones, grouped by operation type with counts."""
    dependent = carrying_nodes(gm)
    claimed = {node: classify(gm, node, dependent) for node in gm.graph.nodes}
    bad = [node for node, rule in claimed.items() if rule is None]
    if bad:
        groups: dict[str, list[fx.Node]] = collections.defaultdict(list)
        for node in bad:
            groups[operation_type(gm, node)].append(node)
        lines = []
        for kind, nodes in sorted(groups.items(), key=lambda item: -len(item[1])):
            shown = "\n".join(f"      {describe(gm, node)}" for node in nodes[:5])
            more = f"\n      … and {len(nodes) - 5} more" if len(nodes) > 5 else ""
            lines.append(f"  - {len(nodes)} × {kind}:\n{shown}{more}")
        raise ConversionError(
            f"cannot convert {len(bad)} operation{'s' if len(bad) > 1 else ''} of "
            f"{model_name or 'the model'} to spikes ({len(groups)} type{'s' if len(groups) > 1 else ''}):\n"
            + "\n".join(lines) + "\n"
            "No conversion rule claims them. Rules exist for ReLU/QCFS activations, max-pooling, operations "
            "affine in the activations (conv, linear, batch norm, average pooling, dropout, additions, "
            "concatenation, reshapes, scaling by constants) and those registered by neuron kinds "
            "(parasnn.conversion.rules.rules()). Replace the operations above with supported ones, mark a "
            "submodule that is affine in its input as a leaf (leaf_modules=...), or register a rule "
            "(docs/architecture.md shows how)."
        )
    return claimed
