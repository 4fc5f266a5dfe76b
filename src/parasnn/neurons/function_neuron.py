"""A scalar function (GELU, SiLU, exp, reciprocal, …) in a spiking network: fitted MBE
neurons, one fit per number of steps T (docs/maths.md §7, docs/mbe.md).

**Parallel form.** The layer receives the time-averaged current ``z`` ``(B, ...)`` and
returns ``f̂_T(z)``: the MBE neuron fitted for T encodes ``z`` (or its mantissa, for exp,
reciprocal and rsqrt) in T steps and decodes it — :func:`function_value`, through the fused
kernel of :mod:`parasnn.neurons.fused_mbe` (bit-equal to the reference
:func:`~parasnn.neurons.mbe.mbe_forward`).

**Serial form (a decision: docs/decisions.md, "serial form of fitted functions").** An MBE
neuron encodes a value it knows, but in a network the current arrives step by step. The
layer therefore keeps the running input sum ``U_t`` and, at step t, encodes the running
mean ``m_t = U_t/t`` and emits the change of its expected total,

    out_t = t·f̂(m_t) − (t−1)·f̂(m_{t−1}),

so ``Σ_t out_t = T·f̂(U_T/T)``: the time average equals the parallel output (up to the
rounding of the running sums), for any input train, and every step is causal. Its spikes
at step t are those of encoding ``m_t`` (:func:`function_spike_count`), so the serial form
pays T encodings where the parallel form pays one: the energy report shows it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import SpikingNeuron
from .fused_mbe import fused_function_spike_count, fused_function_value
from .mbe import MBENeuron, MBEParameters, mbe_spike_train
from .mbe_functions import ScalarFunction, reduce_input

__all__ = ["function_value", "function_spike_count", "FunctionState", "function_initial_state", "function_step",
           "FunctionNeuron"]


def function_value(x: Tensor, *, function: ScalarFunction, parameters: MBEParameters, time_steps: int) -> Tensor:
    """``f̂(x)``: the MBE neuron's output on ``x`` (or on its mantissa, then recomposed)."""
    return fused_function_value(x, function=function, parameters=parameters, time_steps=time_steps)


def function_spike_count(x: Tensor, *, function: ScalarFunction, parameters: MBEParameters,
                         time_steps: int) -> Tensor:
    """Spikes of all bases over the T steps of encoding ``x``, shape of ``x``."""
    return fused_function_spike_count(x, function=function, parameters=parameters, time_steps=time_steps)


class FunctionState(NamedTuple):
    input_sum: Tensor  # U_t, the input current summed over the steps so far
    expected: Tensor  # t·f̂(m_t): what the outputs so far sum to
    steps: int  # t
    spikes: Tensor  # spikes of the encoding at step t


def function_initial_state(current: Tensor) -> FunctionState:
    zeros = torch.zeros_like(current)
    return FunctionState(zeros, zeros, 0, zeros)


def function_step(state: FunctionState, current: Tensor, *, function: ScalarFunction, parameters: MBEParameters,
                  time_steps: int) -> tuple[FunctionState, Tensor]:
    """One serial step (module docstring): ``(state, current at t) → (state, out_t)``."""
    steps = state.steps + 1
    input_sum = state.input_sum + current
    mean = input_sum / steps
    expected = steps * function_value(mean, function=function, parameters=parameters, time_steps=time_steps)
    spikes = function_spike_count(mean, function=function, parameters=parameters, time_steps=time_steps)
    return FunctionState(input_sum, expected, steps, spikes), expected - state.expected


class FunctionNeuron(SpikingNeuron):
    """The layer that replaces one call site of a scalar function: an MBE neuron per T it was
    fitted for (``neurons``, keyed by ``str(T)``); other T are refused with the list."""

    def __init__(self, function: ScalarFunction | str, neurons: dict[int, MBENeuron]):
        super().__init__()
        if not neurons:
            raise ValueError("FunctionNeuron: no fitted neuron given")
        self.function = ScalarFunction(function)
        self.neurons = nn.ModuleDict({str(steps): neuron for steps, neuron in sorted(neurons.items())})

    def fitted(self, time_steps: int) -> MBEParameters:
        key = str(time_steps)
        if key not in self.neurons:
            raise ValueError(f"this {self.function.value} layer was fitted for T in "
                             f"{[int(k) for k in self.neurons]}, not T = {time_steps}; convert with "
                             f"ConversionConfig(function_time_steps=(..., {time_steps}))")
        return self.neurons[key].parameters_

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        return function_value(current, function=self.function, parameters=self.fitted(time_steps),
                              time_steps=time_steps)

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        return function_spike_count(current, function=self.function, parameters=self.fitted(time_steps),
                                    time_steps=time_steps)

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        """``(T, B, ...)``: spikes of all bases at each step of encoding ``current``."""
        neuron_input, _ = reduce_input(self.function, current)
        return mbe_spike_train(neuron_input, parameters=self.fitted(time_steps), time_steps=time_steps).sum(1)

    def initial_state(self, current: Tensor, *, time_steps: int) -> FunctionState:
        self.fitted(time_steps)
        return function_initial_state(current)

    def step(self, state: FunctionState, current: Tensor, *, time_steps: int):
        return function_step(state, current, function=self.function, parameters=self.fitted(time_steps),
                             time_steps=time_steps)

    def step_spikes(self, state: FunctionState, output: Tensor) -> Tensor:
        return state.spikes

    def extra_repr(self) -> str:
        return f"{self.function.value}, time_steps={[int(k) for k in self.neurons]}"
