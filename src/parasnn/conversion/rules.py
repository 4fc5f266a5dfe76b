"""The conversion rule registry: what each graph operation becomes in a spiking network.

Conversion looks every traced operation up here instead of branching on kinds, so a new
neuron kind or spiking operation plugs in by registering rules in its own module
(docs/architecture.md has a worked example). A :class:`Rule` says

* which nodes it **claims** (``matches``),
* what **role** the node plays (:class:`Role`): run as is because it is affine in the
  activations, become the chosen method's neuron, be replaced by a spiking operation the
  rule **builds**, or disappear at inference,
* for a spiking operation, how many of its arguments carry activations (``inputs``): the
  built module receives them, in order, in both forms (``forward(*inputs, time_steps=T)``
  and ``step(state, *inputs, time_steps=T)``).

How the serial simulator steps a spiking operation is the built module's own business
(:class:`~parasnn.neurons.base.SerialOp`), and what it costs in energy is the module
class's registered cost (:func:`register_cost`), so the simulator and the energy estimate
need no edits either.

Rules are tried newest first, so a later registration can refine an earlier one; the
first whose ``matches`` returns true wins.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Iterable

import torch.fx as fx
from torch import Tensor, nn

__all__ = ["Role", "Rule", "register", "unregister", "rules", "match", "module_rule", "function_rule",
           "method_rule", "OperationCost", "register_cost", "operation_cost", "has_cost"]


class Role(enum.Enum):
    """What conversion does with a node."""

    AFFINE = "affine"  # commutes with averaging over time: runs unchanged in both forms
    ACTIVATION = "activation"  # a ReLU: thresholds are recorded, then it is quantized (QCFS)
    QUANTIZER = "quantizer"  # a quantized activation module: the method's neuron replaces it
    SPIKING = "spiking"  # replaced by the SerialOp that the rule builds
    FITTED = "fitted"  # a scalar function: a neuron fitted to it on recorded inputs replaces it
    EXPANDED = "expanded"  # replaced by a traced decomposition into operations other rules claim
    CONVERTED = "converted"  # already a SerialOp (a converted network traced again)
    STATIC = "static"  # does not depend on the inputs (parameters, constants, shapes)
    IGNORED = "ignored"  # does nothing at inference (shape checks, identity in eval): removed


Claim = Callable[[fx.GraphModule, fx.Node, "set[fx.Node]"], bool]
Build = Callable[[fx.GraphModule, fx.Node], nn.Module]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One conversion rule (see the module docstring).

    Attributes:
        name: shown in errors and reports, e.g. ``"max-pool"``.
        role: what conversion does with a claimed node.
        matches: ``(graph module, node, input-dependent nodes) -> bool``.
        build: for ``Role.SPIKING``: ``(graph module, node) -> SerialOp`` that replaces it;
            for ``Role.EXPANDED``: ``(graph module, node) -> nn.Module`` computing the same
            value from simpler operations, traced and inlined in its place (its forward
            takes the node's ``inputs`` arguments).
        fit: for ``Role.FITTED``: ``(graph module, node, samples, options) -> SerialOp``,
            where ``samples`` holds input values recorded on calibration data (``None``
            without data) and ``options`` is the conversion config.
        fit_group: for ``Role.FITTED``: ``(graph module, node) -> key``; with
            ``FitScope.NETWORK`` the sites of one key share one fit on their pooled inputs.
        skeleton: for ``Role.FITTED``: ``(graph module, node, options) -> SerialOp``, the
            layer ``fit`` would build with placeholder parameters of the right shapes: what a
            saved network's state dict is loaded into, without data or refitting.
        inputs: for ``Role.SPIKING``: the indices of ``node.args`` that carry activations
            and are passed to the built module, in order (``(0,)``: the first argument;
            ``(0, 1)``: a product of two activations).
        replacement: for ``Role.IGNORED``: index of the argument that replaces the node's
            value (``None``: the node has no users and is erased, like ``torch._assert``).
    """

    name: str
    role: Role
    matches: Claim
    build: Build | None = None
    inputs: tuple[int, ...] = (0,)
    replacement: int | None = 0
    fit: Callable | None = None
    fit_group: Callable | None = None
    skeleton: Callable | None = None

    def __post_init__(self):
        if self.role in (Role.SPIKING, Role.EXPANDED) and self.build is None:
            raise ValueError(f"rule {self.name!r}: a {self.role.value} rule needs build=")
        if self.role is Role.FITTED and self.fit is None:
            raise ValueError(f"rule {self.name!r}: a fitted rule needs fit=")


_RULES: list[Rule] = []


def register(rule: Rule) -> Rule:
    """Add ``rule``; it takes precedence over every rule registered before it."""
    if any(existing.name == rule.name for existing in _RULES):
        raise ValueError(f"a conversion rule named {rule.name!r} is already registered; unregister it first")
    _RULES.append(rule)
    return rule


def unregister(name: str) -> Rule:
    """Remove and return the rule called ``name``."""
    for index, rule in enumerate(_RULES):
        if rule.name == name:
            return _RULES.pop(index)
    raise KeyError(f"no conversion rule named {name!r}")


def rules() -> tuple[Rule, ...]:
    """The registered rules, in the order they are tried (newest first)."""
    _load_builtin()
    return tuple(reversed(_RULES))


def match(gm: fx.GraphModule, node: fx.Node, dependent: set[fx.Node]) -> Rule | None:
    """The rule that claims ``node`` (``None``: no rule does, the node cannot convert)."""
    for rule in rules():
        if rule.matches(gm, node, dependent):
            return rule
    return None


# -- helpers that build the common kinds of claims ---------------------------------------

def module_rule(name: str, types: tuple[type, ...], role: Role, *, build: Build | None = None,
                when: Callable[[nn.Module], bool] | None = None, inputs: tuple[int, ...] = (0,),
                fit: Callable | None = None, fit_group: Callable | None = None,
                skeleton: Callable | None = None) -> Rule:
    """A rule claiming ``call_module`` nodes of the given module ``types`` (and ``when``)."""
    def matches(gm, node, dependent):
        if node.op != "call_module" or node not in dependent:
            return False
        module = gm.get_submodule(node.target)
        return isinstance(module, types) and (when is None or when(module))
    return Rule(name, role, matches, build=build, inputs=inputs, fit=fit, fit_group=fit_group, skeleton=skeleton)


def function_rule(name: str, functions: Iterable[Callable], role: Role, *, build: Build | None = None,
                  when: Callable[[fx.Node, set[fx.Node]], bool] | None = None, inputs: tuple[int, ...] = (0,),
                  replacement: int | None = 0, dependent_only: bool = True, fit: Callable | None = None,
                  fit_group: Callable | None = None, skeleton: Callable | None = None) -> Rule:
    """A rule claiming ``call_function`` nodes whose target is one of ``functions``."""
    targets = frozenset(functions)

    def matches(gm, node, dependent):
        return (node.op == "call_function" and node.target in targets and (node in dependent or not dependent_only)
                and (when is None or when(node, dependent)))
    return Rule(name, role, matches, build=build, inputs=inputs, replacement=replacement, fit=fit,
                fit_group=fit_group, skeleton=skeleton)


def method_rule(name: str, methods: Iterable[str], role: Role, *, build: Build | None = None,
                when: Callable[[fx.Node, set[fx.Node]], bool] | None = None, inputs: tuple[int, ...] = (0,),
                fit: Callable | None = None, fit_group: Callable | None = None,
                skeleton: Callable | None = None) -> Rule:
    """A rule claiming ``call_method`` nodes (``x.name(...)``) with one of the ``methods`` names."""
    names = frozenset(methods)

    def matches(gm, node, dependent):
        return node.op == "call_method" and node.target in names and node in dependent and \
            (when is None or when(node, dependent))
    return Rule(name, role, matches, build=build, inputs=inputs, fit=fit, fit_group=fit_group, skeleton=skeleton)


# -- energy: what each layer costs ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OperationCost:
    """Operations of one layer for one sample.

    ``synaptic``: multiply-accumulates of the ANN layer; the SNN pays them as one accumulate
    per incoming spike (or as MACs when its input is analog), docs/maths.md §8.
    ``elementwise``: operations that stay multiply-accumulates in the SNN whatever the
    spikes (e.g. the weighted sum of a multi-basis neuron's bases, a product's decoding);
    ``ann_elementwise``: the part of those the ANN pays as well.
    """

    synaptic: int = 0
    elementwise: int = 0
    ann_elementwise: int = 0  # of ``elementwise``, what the ANN pays too (a product's MACs)


Cost = Callable[[nn.Module, tuple[Tensor, ...], Tensor], OperationCost]
_COSTS: list[tuple[tuple[type, ...], Cost]] = []


def register_cost(types: tuple[type, ...], cost: Cost) -> None:
    """Declare what a layer of one of ``types`` costs: ``cost(module, inputs, output)``
    with batched tensors; return the operations of ONE sample."""
    _COSTS.append((tuple(types), cost))


def _cost_function(module: nn.Module) -> Cost | None:
    _load_builtin()
    for types, cost in reversed(_COSTS):
        if isinstance(module, types):
            return cost
    return None


def has_cost(module: nn.Module) -> bool:
    """Whether a cost is registered for ``module``'s class."""
    return _cost_function(module) is not None


def operation_cost(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> OperationCost:
    """The registered cost of one sample through ``module`` (zero when none is registered)."""
    cost = _cost_function(module)
    return cost(module, inputs, output) if cost is not None else OperationCost()


_loaded = False


def _load_builtin() -> None:
    """Register the rules of the neuron kinds that ship with parasnn, once, on first use
    (importing them here would make a cycle: their modules import this one)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import builtin_rules, transformer_rules  # noqa: F401  (register on import)
