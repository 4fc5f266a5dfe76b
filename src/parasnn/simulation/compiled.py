"""A converted network with fused spiking activations (:mod:`parasnn.neurons.fused`).

    fast = fuse(network)          # same weights, same outputs (bit for bit), fewer passes
    fast(x, time_steps=8)

:func:`fuse` returns a new network; the original is left as it is (it stays the reference).
The two share every parameter and buffer, so a calibration step applied to one is seen by
the other. Only the parallel inference forward changes: gradients, calibration, the
serial simulation and spike trains run the neurons' own (inherited) maths.

Where the graph shows that a neuron is the only reader of a freshly computed current (a
convolution's, a BatchNorm's, a residual sum's), its fused kernel writes the output into
that current, as an in-place ReLU does; no other tensor is ever written. A forward hook
that *keeps* such a layer's output for later (rather than reading it in the hook) must be
registered on the unfused network: the fused one may have overwritten it by then.

The fused network also skips most of the Python work per layer (the neuron module's call,
its constants lookup, the kernel dispatch): for each input signature (``time_steps``, the
inputs' shapes, strides, dtypes and device) it generates, once, a graph that calls the
kernels directly with the neurons' constants precomputed (:class:`CompiledPlan`) — same
kernels, same arguments, so the same bits. A plan is used only where it is valid: no
autograd (``torch.no_grad`` / ``torch.inference_mode``), no hook on a neuron, on the graph or
registered globally, none of the neurons' parameters, buffers or levels changed since
it was made (checked on every call: identity and version counter of every tensor), and no
layer it calls or attribute it reads replaced in its owner; otherwise the network runs its
modules as before (and makes a new plan).

The fused operators are built once per machine (first use: about 1–2 min of C++
compilation, then loaded from PyTorch's on-disk extension cache in about a second); where
they cannot be built, :func:`fuse` warns once and the network runs unfused.
"""
from __future__ import annotations

import collections
import copy
import operator
import re

import torch
from torch import Tensor, fx, nn

from ..conversion.network import SpikingNetwork, all_finite, check_input, check_time_steps
from ..neurons.fused import FUSED_TYPES, FusedIFNeuron, FusedPolarityNeuron, cpu_kernels, cuda_kernels, fused_neuron, \
    kernels_for

__all__ = ["fuse", "fused_layer_count", "FRESH_OUTPUT_MODULES", "input_is_dead", "FusedNetwork", "CompiledPlan",
           "build_plan", "MAX_PLANS", "plain_attributes"]

# Layers whose output is a new tensor (never a view of, or the same object as, their input
# or a parameter): a neuron that is the only reader of such an output may overwrite it.
FRESH_OUTPUT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm,
                        nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                        nn.AdaptiveAvgPool3d)
FRESH_OUTPUT_FUNCTIONS = (operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul)


def input_is_dead(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the neuron at ``node`` is the only reader of its current and that current is a
    fresh tensor (made by a layer of :data:`FRESH_OUTPUT_MODULES` or an out-of-place
    arithmetic function, never the network's input, a view or a constant)."""
    currents = [arg for arg in node.args if isinstance(arg, fx.Node)] + \
               [arg for key, arg in node.kwargs.items() if isinstance(arg, fx.Node) and key != "time_steps"]
    if len(currents) != 1:
        return False
    producer = currents[0]
    if len(producer.users) != 1:
        return False
    if producer.op == "call_module":
        return isinstance(graph_module.get_submodule(producer.target), FRESH_OUTPUT_MODULES)
    return producer.op == "call_function" and producer.target in FRESH_OUTPUT_FUNCTIONS


def _shared_copy(module: nn.Module) -> nn.Module:
    """A deep copy that shares every parameter and buffer with ``module`` (no extra weights)."""
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def fuse(network: SpikingNetwork) -> SpikingNetwork:
    """A copy of ``network`` whose neurons of a fused type (IF, PMSM) use one-kernel parallel
    forwards; other neuron types are kept as they are. Builds the kernels now (so the first
    forward is not the slow one) and warns once if they cannot be built."""
    if not isinstance(network, SpikingNetwork):
        raise TypeError(f"fuse: expected a SpikingNetwork from parasnn.conversion.convert, "
                        f"got {type(network).__name__}")
    fused = _shared_copy(network)
    fused.__class__ = FusedNetwork  # the same state; a forward that uses compiled plans
    fused.__dict__["_plans"] = collections.OrderedDict()
    graph_module = fused.graph_module
    replaced = 0
    nodes = {node.target: node for node in graph_module.graph.nodes if node.op == "call_module"}
    for path, neuron in list(fused.neurons()):
        if type(neuron) not in FUSED_TYPES:
            continue
        fast = fused_neuron(neuron)
        # A layer called at several places in the graph gets no in-place writes.
        calls = [node for node in graph_module.graph.nodes if node.op == "call_module" and node.target == path]
        if len(calls) == 1 and input_is_dead(graph_module, nodes[path]):
            fast.overwrite_input = True
        parent_path, _, leaf = path.rpartition(".")
        parent = graph_module.get_submodule(parent_path) if parent_path else graph_module
        setattr(parent, leaf, fast)
        replaced += 1
    if replaced:  # build or load now, for the network's device; warns once (and runs unfused) on failure
        tensors = list(fused.parameters()) + list(fused.buffers())
        on_cuda = bool(tensors) and tensors[0].device.type == "cuda"
        cuda_kernels() if on_cuda else cpu_kernels()
    return fused


def fused_layer_count(network: SpikingNetwork) -> int:
    """How many neuron layers of ``network`` have a fused forward."""
    return sum(1 for _, neuron in network.neurons() if type(neuron) in FUSED_TYPES.values())


# --------------------------------------------------------------------------- compiled plans

MAX_PLANS = 8
"""Input signatures whose plan a :class:`FusedNetwork` keeps (least recently used dropped):
an evaluation has a full and a last, smaller batch per T."""


def _global_hooks() -> bool:
    module = torch.nn.modules.module
    return any(getattr(module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))


_VERSION = operator.attrgetter("_version")
_HOOKS = operator.attrgetter("_forward_hooks")
_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")


class CompiledPlan:
    """A fused network's graph specialised to one input signature: each fused neuron's call
    replaced by a direct call of its kernel with the neuron's constants for that ``time_steps``
    (the arguments its own forward would pass). ``plan(time_steps, *inputs)`` runs it;
    :meth:`valid` says whether it still describes the network.

    ``neurons``: ``(parent, leaf name, neuron)`` of every neuron; ``layers``: ``(registry,
    name, object)`` of every other layer the plan calls and attribute it reads (the
    registry is the owner's ``_modules``, ``_parameters``, ``_buffers`` or ``__dict__``);
    ``guards``: ``(registry, name, tensor, version)`` of every tensor a constant came from;
    ``levels``: ``(neuron, names of its level attributes, their values when planned)``."""

    def __init__(self, graph_module: fx.GraphModule, *, neurons: list[tuple[nn.Module, str, nn.Module]],
                 guards: list[tuple[dict, str, Tensor, int]], levels: list[tuple[nn.Module, tuple[str, ...], tuple]],
                 root: fx.GraphModule, reference: Tensor | None,
                 layers: list[tuple[dict, str, object]] = ()):
        self.graph_module = graph_module
        self.neurons = neurons
        self.guards = guards
        self.levels = levels
        self.root = root
        self.reference = reference
        self.reference_signature = None if reference is None else (reference.dtype, reference.device)
        # valid() runs before every call: its checks are kept as parallel lists that map()
        # walks in C, not Python loops (DenseNet-121 at batch 1: 0.11–0.19 ms a call with
        # its 246 layers checked too, where loops over the neurons alone took 0.14–0.25 ms).
        owned = [(parent._modules, leaf, neuron) for parent, leaf, neuron in neurons] + list(layers)
        self._module_registries = [registry for registry, _, _ in owned]
        self._module_leaves = [leaf for _, leaf, _ in owned]
        self._called = [value for _, _, value in owned]
        self._neuron_modules = [neuron for _, _, neuron in neurons]
        self._registries = [registry for registry, _, _, _ in guards]
        self._names = [name for _, name, _, _ in guards]
        self._tensors = [tensor for _, _, tensor, _ in guards]
        self._versions = [version for _, _, _, version in guards]
        by_name: dict[str, tuple[list, list]] = {}
        for neuron, names, values in levels:
            for name, value in zip(names, values):
                by_name.setdefault(name, ([], []))
                by_name[name][0].append(neuron)
                by_name[name][1].append(value)
        self._levels = [(operator.attrgetter(name), owners, values) for name, (owners, values) in by_name.items()]

    def valid(self) -> bool:
        """True while the network is as it was: no hooks anywhere a plan would skip them,
        the same neuron and layer objects in their parents, the neurons' tensors unchanged
        (identity and version) and their kept levels the same."""
        root = self.root
        if root._forward_hooks or root._forward_pre_hooks or _global_hooks():
            return False
        neurons = self._neuron_modules
        if any(map(_HOOKS, neurons)) or any(map(_PRE_HOOKS, neurons)):
            return False
        if not all(map(operator.is_, map(dict.get, self._module_registries, self._module_leaves), self._called)):
            return False
        if not all(map(operator.is_, map(dict.get, self._registries, self._names), self._tensors)):
            return False
        if list(map(_VERSION, self._tensors)) != self._versions:
            return False
        for getter, owners, values in self._levels:
            if list(map(getter, owners)) != values:
                return False
        reference = self.reference
        return reference is None or (reference.dtype, reference.device) == self.reference_signature

    def __call__(self, time_steps: int, *inputs: Tensor) -> Tensor:
        # The generated forward itself: the plan's module is private (no hooks can be on it),
        # so nn.Module.__call__ and fx's call wrapper would only add their Python per call.
        return self.graph_module.forward(time_steps, *inputs)


def _probe_currents(network: SpikingNetwork, inputs: tuple[Tensor, ...], time_steps: int):
    """The network's output and, per neuron node, the current it received (shape, dtype,
    device, contiguity) — one ordinary forward with pre-hooks that only look."""
    seen: dict[str, tuple] = {}
    handles = []
    for path, neuron in network.neurons():
        def look(module, args, kwargs, path=path):
            current = args[0] if args else None
            if isinstance(current, Tensor):
                seen.setdefault(path, []).append((tuple(current.shape), current.dtype, current.device,
                                                  current.is_contiguous()))
        handles.append(neuron.register_forward_pre_hook(look, with_kwargs=True))
    try:
        output = SpikingNetwork.forward(network, *inputs, time_steps=time_steps)
    finally:
        for handle in handles:
            handle.remove()
    return output, seen


def build_plan(network: SpikingNetwork, inputs: tuple[Tensor, ...], time_steps: int):
    """``(output, plan or None)``: runs ``network`` once on ``inputs`` (the ordinary forward,
    whose output is returned) and specialises its graph to this signature. No plan where
    it would not be exact or not apply: no kernels here, a current the kernels do not take
    (dtype, device, non-contiguous), a neuron called at several places, or tensors without
    version counters (inference tensors)."""
    output, seen = _probe_currents(network, inputs, time_steps)
    graph_module = network.graph_module
    old = graph_module.graph
    graph = fx.Graph()
    values: dict = {}
    result = graph.graph_copy(old, values)
    graph.output(result)
    attributes: dict = {}
    neurons, guards, levels = [], [], []
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        if type(module) not in (FusedIFNeuron, FusedPolarityNeuron):
            continue
        calls = seen.get(node.target, [])
        if len(calls) != 1 or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return output, None
        shape, dtype, device, contiguous = calls[0]
        current = torch.empty(shape, dtype=dtype, device=device)
        kernels = kernels_for(current) if contiguous and dtype in (torch.float32, torch.float64) else None
        if kernels is None:
            return output, None
        try:
            for registry in (module._parameters, module._buffers):
                guards.extend((registry, name, tensor, tensor._version) for name, tensor in registry.items()
                              if tensor is not None)
        except RuntimeError:  # inference tensors have no version counter
            return output, None
        with torch.no_grad():
            if isinstance(module, FusedIFNeuron):
                constants = module.inference_constants(current, time_steps)
                if constants is None:
                    return output, None
                kernel, arguments = kernels[0], list(constants)
                steps = module.counting_steps(time_steps)  # min(T, L) for a neuron keeping L levels
                levels.append((module, ("levels",), (module.levels,)))
            else:
                threshold = module.threshold
                if threshold.dtype != dtype or threshold.device != device:
                    return output, None
                # θ/T as the module computes it (a tensor division): the same bits.
                kernel, arguments = kernels[1], [threshold, threshold / time_steps,
                                                 -time_steps * module.negative_levels,
                                                 time_steps * module.positive_levels]
                levels.append((module, ("negative_levels", "positive_levels"),
                               (module.negative_levels, module.positive_levels)))
                steps = time_steps
        index = len(neurons)
        parent_path, _, leaf = node.target.rpartition(".")
        neurons.append((graph_module.get_submodule(parent_path) if parent_path else graph_module, leaf, module))
        with graph.inserting_before(node):
            args = [node.args[0]]
            for position, value in enumerate(arguments):
                if isinstance(value, Tensor):
                    name = f"_plan_constant_{index}_{position}"
                    attributes[name] = value
                    value = graph.get_attr(name)
                args.append(value)
            args += [steps, bool(module.overwrite_input)]
            call = graph.call_function(kernel, tuple(args))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    # The plan's module holds the graph's layers (the same objects: hooks on them still run)
    # and the constants, each under a flat name as a plain instance attribute, so that the
    # generated code's ``self.name`` is one instance-dict hit. The network's own graph reads
    # ``self.features.denseblock1.denselayer1.norm1``: nn.Module.__getattr__ at every level
    # (0.7–1.9 µs each on a loaded machine): 2 175 such reads a call of DenseNet-121 against
    # 1 197 in torchvision's own forward, ≈ 6 % of the plan's time at batch 1 (docs/speed.md).
    named: dict[str, str] = {}  # the graph's target -> the plan's attribute
    layers = []
    for node in graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        if node.target not in named:
            if node.target in attributes:  # a plan constant: flat already
                named[node.target] = node.target
            else:
                name = f"_plan_{len(named)}_" + re.sub(r"\W", "_", node.target)
                parent_path, _, leaf = node.target.rpartition(".")
                parent = graph_module.get_submodule(parent_path) if parent_path else graph_module
                value = getattr(parent, leaf)
                registry = next((r for r in (parent._modules, parent._parameters, parent._buffers) if leaf in r),
                                parent.__dict__)
                layers.append((registry, leaf, value))  # valid() checks that it is still there
                attributes[name] = value
                named[node.target] = name
        node.target = named[node.target]
    graph.lint()
    specialised = fx.GraphModule(attributes, graph)
    plain_attributes(specialised, set(named.values()))
    reference = next((t for t in network.parameters() if t.is_floating_point()), None)
    return output, CompiledPlan(specialised, neurons=neurons, guards=guards, levels=levels, root=graph_module,
                                reference=reference, layers=layers)


def plain_attributes(module: nn.Module, names) -> None:
    """Move ``module``'s submodules, parameters and buffers called ``names`` out of its
    registries into its instance dictionary: reading them no longer goes through
    ``nn.Module.__getattr__``, and they are no longer part of ``module``'s state (state
    dict, ``.to()``, ``.modules()``) — for a plan's module, whose layers and tensors belong
    to the network it was made from."""
    for name in names:
        value = getattr(module, name)
        for registry in (module._modules, module._buffers, module._parameters):
            registry.pop(name, None)
        module._non_persistent_buffers_set.discard(name)
        object.__setattr__(module, name, value)


class FusedNetwork(SpikingNetwork):
    """What :func:`fuse` returns: a :class:`SpikingNetwork` whose forward, without autograd,
    runs a :class:`CompiledPlan` for the input signature (made on the first call with that
    signature, by an ordinary forward) while the plan is valid, and the modules otherwise.
    The same outputs bit for bit either way."""

    def __getstate__(self):
        # Plans hold compiled operators (not picklable) and are cheap to rebuild: copies and
        # saved networks start without them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_plans", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__["_plans"] = collections.OrderedDict()

    def forward(self, *inputs: Tensor, time_steps: int) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(*inputs, time_steps=time_steps)
        plans = self.__dict__.setdefault("_plans", collections.OrderedDict())
        try:
            key = (time_steps, type(time_steps)) + tuple(
                (tuple(x.shape), x.stride(), x.dtype, x.device) for x in inputs)
        except (AttributeError, TypeError):  # not tensors: the ordinary forward explains
            return super().forward(*inputs, time_steps=time_steps)
        plan = plans.get(key, _MISSING)
        if plan is None:  # this signature has no plan (module docstring): the modules
            return super().forward(*inputs, time_steps=time_steps)
        if plan is not _MISSING and plan.valid():
            # The signature was checked when the plan was made; the values were not.
            for x in inputs:
                if x.is_floating_point() and not torch.compiler.is_compiling() and not all_finite(x):
                    check_input(inputs, where=f"SpikingNetwork({self.source})", network=self)  # raises
            plans.move_to_end(key)
            return plan(time_steps, *inputs)
        if self._hooked():  # a plan would be invalid at once: no point in making one
            return super().forward(*inputs, time_steps=time_steps)
        check_time_steps(time_steps, where=f"SpikingNetwork({self.source})")
        output, plan = build_plan(self, inputs, time_steps)
        plans[key] = plan  # None too: the reasons (no kernels, the graph, the currents) do not pass
        plans.move_to_end(key)
        while len(plans) > MAX_PLANS:
            plans.popitem(last=False)
        return output

    def _hooked(self) -> bool:
        graph_module = self.graph_module
        if graph_module._forward_hooks or graph_module._forward_pre_hooks or _global_hooks():
            return True
        return any(neuron._forward_hooks or neuron._forward_pre_hooks for _, neuron in self.neurons())


_MISSING = object()
