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

The fused operators are built once per machine (first use: about 1–2 min of C++
compilation, then loaded from PyTorch's on-disk extension cache in about a second); where
they cannot be built, :func:`fuse` warns once and the network runs unfused.
"""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from ..conversion.network import SpikingNetwork
from ..neurons.fused import FUSED_TYPES, cpu_kernels, cuda_kernels, fused_neuron

__all__ = ["fuse", "fused_layer_count", "FRESH_OUTPUT_MODULES", "input_is_dead"]

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
