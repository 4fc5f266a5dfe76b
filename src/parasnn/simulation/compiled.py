"""A converted network with fused spiking activations (:mod:`parasnn.neurons.fused`).

    fast = fuse(network)          # same weights, same outputs (bit for bit), fewer passes
    fast(x, time_steps=8)

:func:`fuse` returns a new network; the original is left as it is (it stays the reference).
The two share every parameter and buffer, so a calibration step applied to one is seen by
the other. Only the parallel inference forward changes: gradients, calibration, the
serial simulation and spike trains run the neurons' own (inherited) maths.

The fused operators are built once per machine (first use: about 1–2 min of C++
compilation, then loaded from PyTorch's on-disk extension cache in about a second); where
they cannot be built, :func:`fuse` warns once and the network runs unfused.
"""
from __future__ import annotations

import copy

from torch import nn

from ..conversion.network import SpikingNetwork
from ..neurons.fused import FUSED_TYPES, cpu_kernels, fused_neuron

__all__ = ["fuse", "fused_layer_count"]


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
    for path, neuron in list(fused.neurons()):
        if type(neuron) not in FUSED_TYPES:
            continue
        parent_path, _, leaf = path.rpartition(".")
        parent = graph_module.get_submodule(parent_path) if parent_path else graph_module
        setattr(parent, leaf, fused_neuron(neuron))
        replaced += 1
    if replaced:
        cpu_kernels()  # build or load now; warns once (and the neurons run unfused) on failure
    return fused


def fused_layer_count(network: SpikingNetwork) -> int:
    """How many neuron layers of ``network`` have a fused forward."""
    return sum(1 for _, neuron in network.neurons() if type(neuron) in FUSED_TYPES.values())
