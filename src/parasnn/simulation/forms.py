"""Running a converted network: parallel (one pass) and serial (T steps), with the same
signature so they can be compared; spike trains on demand.

``parallel_forward(network, x, *, time_steps)`` and ``serial_forward(network, x, *, time_steps)``
both return the time-averaged output ``(B, ...)``. The input ``x`` is analog and held
constant for the T steps (the first synaptic layer integrates it as a constant current).

The serial simulation passes state explicitly: :func:`serial_step` maps
``(states, x) → (states, output at t)`` where ``states`` is a dict from layer path to that
layer's state (``{}`` before the first step; each layer creates its initial state from the
shape of its first input). Nothing is stored in the modules, so there is no ``reset``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor

from ..conversion.network import SpikingNetwork, check_input, check_time_steps, explain_shape_errors, forward_hooks
from ..neurons.base import SerialOp, SpikingNeuron

__all__ = ["parallel_forward", "serial_forward", "parallel_simulation", "serial_simulation", "SimulationResult",
           "serial_outputs", "serial_step", "spike_trains", "spike_counts"]

States = dict[str, Any]


def parallel_forward(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> Tensor:
    """Time-averaged output of the parallel network, one pass: ``(B, ...)``."""
    return network(*inputs, time_steps=time_steps)


class _StepInterpreter(fx.Interpreter):
    """Runs the graph once (one time step), routing serial layers through ``step``."""

    def __init__(self, graph_module: fx.GraphModule, states: States, time_steps: int):
        super().__init__(graph_module)
        self.states, self.new_states, self.time_steps = states, {}, time_steps
        self.spikes: dict[str, Tensor] = {}  # spikes per neuron emitted at this step

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if not isinstance(module, SerialOp):
            return super().call_module(target, args, kwargs)
        state = self.states.get(target)
        if state is None:
            state = module.initial_state(*args, time_steps=self.time_steps)
        state, output = module.step(state, *args, time_steps=self.time_steps)
        self.new_states[target] = state
        spikes = module.step_spikes(state, output)
        if spikes is not None:
            self.spikes[target] = spikes
        return output


def _run_step(network: SpikingNetwork, states: States, inputs: tuple[Tensor, ...], time_steps: int):
    interpreter = _StepInterpreter(network.graph_module, states, time_steps)
    with explain_shape_errors(inputs, where=f"serial simulation of {network.source}"):
        output = interpreter.run(time_steps, *inputs)
    return interpreter.new_states, output, interpreter.spikes


def serial_step(network: SpikingNetwork, states: States, *inputs: Tensor, time_steps: int
                ) -> tuple[States, Tensor]:
    """One step of the serial network: ``(states, x) → (new states, output at this step)``.
    The input is checked as the parallel form checks it (:func:`parasnn.conversion.network.check_input`)."""
    check_time_steps(time_steps, where=f"serial step of {network.source}")
    check_input(inputs, where=f"serial step of {network.source}", network=network)
    states, output, _ = _run_step(network, states, inputs, time_steps)
    return states, output


class SimulationResult(NamedTuple):
    """What :func:`parallel_simulation` and :func:`serial_simulation` return."""

    output: Tensor  # (B, ...) network output averaged over the T steps
    spike_counts: dict[str, Tensor]  # per neuron layer: spikes per neuron over the T steps, (B, ...)


def serial_simulation(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> SimulationResult:
    """Run the serial network for ``time_steps`` steps; time-averaged output and spike counts."""
    check_time_steps(time_steps, where=f"serial simulation of {network.source}")
    check_input(inputs, where=f"serial simulation of {network.source}", network=network)
    states: States = {}
    total, counts = None, {}
    with torch.no_grad():
        for _ in range(time_steps):
            states, output, step_spikes = _run_step(network, states, inputs, time_steps)
            total = output if total is None else total + output
            for path, spikes in step_spikes.items():
                counts[path] = counts[path] + spikes if path in counts else spikes
    return SimulationResult(total / time_steps, counts)


def parallel_simulation(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> SimulationResult:
    """Run the parallel network once; time-averaged output and spike counts."""
    counts: dict[str, Tensor] = {}

    def recorder(path):
        def hook(module: SpikingNeuron, args, kwargs, output):
            counts[path] = module.spike_count(args[0], time_steps=kwargs["time_steps"]).detach()
        return hook

    with forward_hooks([(neuron, recorder(path)) for path, neuron in network.neurons()], with_kwargs=True):
        output = network(*inputs, time_steps=time_steps)
    return SimulationResult(output, counts)


def serial_outputs(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> Tensor:
    """Outputs of the serial network at every step, ``(T, B, ...)``."""
    check_time_steps(time_steps, where=f"serial simulation of {network.source}")
    check_input(inputs, where=f"serial simulation of {network.source}", network=network)
    states: States = {}
    outputs = []
    with torch.no_grad():
        for _ in range(time_steps):
            states, output, _ = _run_step(network, states, inputs, time_steps)
            outputs.append(output)
    return torch.stack(outputs)


def serial_forward(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> Tensor:
    """Time-averaged output of the serial network, ``(B, ...)``."""
    return serial_simulation(network, *inputs, time_steps=time_steps).output


def spike_counts(network: SpikingNetwork, *inputs: Tensor, time_steps: int) -> dict[str, Tensor]:
    """Spike count of every neuron in the parallel network: ``{path: (B, ...)}``."""
    return parallel_simulation(network, *inputs, time_steps=time_steps).spike_counts


def spike_trains(network: SpikingNetwork, *inputs: Tensor, time_steps: int,
                 layers: list[str] | None = None) -> dict[str, Tensor]:
    """Spike trains ``(T, B, ...)`` of the parallel network for ``layers`` (default: all neurons).

    The trains are materialised only here; the network itself never builds them.
    """
    wanted = dict(network.neurons())
    unknown = [name for name in (layers or []) if name not in wanted]
    if unknown:
        raise KeyError(f"no neuron layer named {unknown}; layers are {list(wanted)}")
    names = set(layers) if layers is not None else set(wanted)
    trains: dict[str, Tensor] = {}

    def recorder(path):
        def hook(module: SpikingNeuron, args, kwargs, output):
            trains[path] = module.spike_train(args[0], time_steps=kwargs["time_steps"]).detach()
        return hook

    with forward_hooks([(wanted[name], recorder(name)) for name in names], with_kwargs=True):
        network(*inputs, time_steps=time_steps)
    return trains
