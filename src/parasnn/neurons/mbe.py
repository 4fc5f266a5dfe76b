"""The multi-basis exponential-decay (MBE) neuron of "Training-Free ANN-to-SNN Conversion for
High-Performance Spiking Transformer" (arXiv 2508.07710), docs/maths.md §7: pure functions and
a thin layer. The fitting of its parameters to a scalar function is in
:mod:`parasnn.neurons.mbe_fit`.

Symbols and argument names
--------------------------
=====================  ==========  =========================================================
name                   paper       meaning (shape)
=====================  ==========  =========================================================
``bases``              N           number of basis components
``time_steps``         T           steps ``t = 1..T``
``input_scale``        —           signed gain of basis n's input map ``(N,)``
``input_shift``        —           shift of basis n's input map ``(N,)``
``threshold``          V_th,n(t)   firing threshold at step t ``(N, T)``
``reset``              r_n(t)      amount subtracted by a spike at step t ``(N, T)``
``intensity``          d_n(t)      value a spike at step t adds to the basis output ``(N, T)``
``weight``             w_n         weight of basis n in the neuron's output ``(N,)``
``output_bias``        —           constant added to the output ``()``
=====================  ==========  =========================================================

The neuron
----------
Basis n starts from the mapped input and runs T steps (``H`` the Heaviside step, ``H(0) = 1``)::

    u_n(0) = a_n·x + b_n                     membrane starts from the input (no current later)
    s_n(t) = H(u_n − V_n(t))
    u_n    ← u_n − s_n(t)·r_n(t)
    o_n    ← o_n + s_n(t)·d_n(t)             o_n(0) = 0
    f̂(x)  = c + Σ_n w_n·o_n(T)

The paper's schedules decay exponentially, ``V_n(t) = α_n·exp(−t·Δt/τ_n)`` (and likewise the
reset and the intensity); :func:`exponential_decay` builds such a table. The neuron itself
takes the tables, so it runs whatever the fit chose. Two additions to the paper's literal
reading, both ours:

* **signed input map** ``a_n·x + b_n``. A basis only fires on a membrane above its
  threshold, so with ``a_n > 0`` it is blind to inputs below ``−b_n/a_n``. GELU's negative
  lobe (MiniLM's GELU inputs are 78 % negative) needs bases that see negative inputs; a
  negative ``a_n`` mirrors a basis, the shift places its window. A positive-only reading
  leaves an MSE of ~1e-2 on those inputs.
* **output bias** ``c``: the function's value where no basis fires (e.g. GELU's 0 far to the
  left is free, but sigmoid's 0.5 or 2^m's 1 is not); one constant per neuron, no spikes.

Parallel and serial forms
-------------------------
The input is given once (it is the initial membrane), so the T steps depend on nothing
but ``x``: the *parallel* form :func:`mbe_forward` runs them as T elementwise updates of
``(N, *S)`` tensors and keeps no ``(T, ...)`` tensor (memory independent of T). The
*serial* form passes the state ``(membrane, output)`` explicitly through
:func:`mbe_step`. Both perform the same floating-point operations in the same order, so
spikes, membranes, basis outputs and the read-out are **bit-equal** (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .base import SpikingNeuron
from .integrate_fire import ParameterCache
from .mbe_functions import ScalarFunction, as_scalar_function, reduce_input, restore_output

__all__ = ["MBEParameters", "MBEState", "MBEStepState", "exponential_decay", "mbe_forward", "mbe_initial_state", "mbe_step",
           "mbe_readout", "mbe_step_value", "mbe_spike_train", "mbe_spike_count", "check_time_steps",
           "MBENeuron"]


def check_count(value, name: str) -> int:
    """``value`` as an integer >= 1, or a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def exponential_decay(amplitude: Tensor, time_constant: Tensor, *, time_steps: int,
                      step_size: float = 1.0) -> Tensor:
    """The paper's schedule ``α_n·exp(−t·Δt/τ_n)`` for ``t = 1..T``: amplitude α ``(N,)``,
    time constant τ ``(N,)`` (> 0), ``step_size`` Δt → table ``(N, T)`` (α's dtype)."""
    check_count(time_steps, "time_steps")
    amplitude = torch.as_tensor(amplitude)
    time_constant = torch.as_tensor(time_constant, dtype=amplitude.dtype, device=amplitude.device)
    if not bool((time_constant > 0).all()):
        raise ValueError(f"exponential_decay: time_constant must be > 0, got {time_constant}")
    steps = torch.arange(1, time_steps + 1, dtype=amplitude.dtype, device=amplitude.device)
    return amplitude.unsqueeze(-1) * torch.exp(-steps * step_size / time_constant.unsqueeze(-1))


@dataclass(frozen=True, eq=False)
class MBEParameters:
    """All parameters of one MBE neuron (see the module docstring for the symbols).

    ``input_scale``, ``input_shift``, ``weight``: ``(N,)``; ``threshold``, ``reset``,
    ``intensity``: ``(N, T)``; ``output_bias``: ``()``. One dtype and device throughout.
    """

    input_scale: Tensor
    input_shift: Tensor
    threshold: Tensor
    reset: Tensor
    intensity: Tensor
    weight: Tensor
    output_bias: Tensor

    FIELDS = ("input_scale", "input_shift", "threshold", "reset", "intensity", "weight", "output_bias")

    def __post_init__(self):
        for name in self.FIELDS:
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"MBEParameters.{name} must be a tensor, got {type(getattr(self, name)).__name__}")
        if self.threshold.dim() != 2 or self.threshold.shape[0] < 1 or self.threshold.shape[1] < 1:
            raise ValueError(f"MBEParameters.threshold must be (bases, time_steps) with both >= 1, "
                             f"got shape {tuple(self.threshold.shape)}")
        bases, time_steps = self.threshold.shape
        expected = {"input_scale": (bases,), "input_shift": (bases,), "weight": (bases,), "output_bias": (),
                    "reset": (bases, time_steps), "intensity": (bases, time_steps)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"MBEParameters.{name} must have shape {shape} (bases={bases}, "
                                 f"time_steps={time_steps}), got {tuple(tensor.shape)}")
        kinds = {(getattr(self, name).dtype, getattr(self, name).device) for name in self.FIELDS}
        if len(kinds) != 1:
            raise ValueError(f"MBEParameters: all tensors must share one dtype and device, "
                             f"got {sorted(map(str, kinds))}")
        if not all(bool(torch.isfinite(getattr(self, name)).all()) for name in self.FIELDS):
            raise ValueError("MBEParameters: every parameter must be finite (no NaN or inf)")

    @property
    def bases(self) -> int:
        return self.threshold.shape[0]

    @property
    def time_steps(self) -> int:
        return self.threshold.shape[1]

    def to(self, *args, **kwargs) -> "MBEParameters":
        """A copy with every tensor moved/cast like ``Tensor.to``."""
        return MBEParameters(**{name: getattr(self, name).to(*args, **kwargs) for name in self.FIELDS})

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def equal(self, other: "MBEParameters") -> bool:
        """Bit-equal tensors (same dtype and values)."""
        return all(getattr(self, name).dtype == getattr(other, name).dtype
                   and torch.equal(getattr(self, name), getattr(other, name)) for name in self.FIELDS)


class MBEState(NamedTuple):
    """Serial state after some steps: ``membrane`` u and basis outputs o, both ``(N, *S)``."""

    membrane: Tensor
    output: Tensor


def _per_basis(vector: Tensor, like: Tensor) -> Tensor:
    """View ``(N,)`` as ``(N, 1, ..., 1)`` to broadcast against ``(N, *S)``."""
    return vector.view(-1, *([1] * (like.dim() - 1)))


def _check_input(x: Tensor, parameters: MBEParameters) -> None:
    if not isinstance(parameters, MBEParameters):
        raise TypeError(f"parameters must be MBEParameters, got {type(parameters).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"MBE neuron input must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")


def mbe_initial_state(x: Tensor, *, parameters: MBEParameters) -> MBEState:
    """State before step 1 for an input ``x`` of shape ``S``: ``u = a_n·x + b_n`` and ``o = 0``,
    both ``(N, *S)`` in the promoted dtype of ``x`` and the parameters."""
    _check_input(x, parameters)
    x = x.unsqueeze(0)  # (1, *S)
    membrane = x * _per_basis(parameters.input_scale, x) + _per_basis(parameters.input_shift, x)
    return MBEState(membrane, torch.zeros_like(membrane))


def _update(membrane: Tensor, output: Tensor, parameters: MBEParameters, index: int):
    """The one update both forms run: spikes, soft reset, accumulated intensity (column ``index``)."""
    spikes = (membrane >= _per_basis(parameters.threshold[:, index], membrane)).to(membrane.dtype)
    membrane = membrane - spikes * _per_basis(parameters.reset[:, index], membrane)
    output = output + spikes * _per_basis(parameters.intensity[:, index], membrane)
    return membrane, output, spikes


def _check_step(step, time_steps: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= time_steps:
        raise ValueError(f"step must be an integer in 1..{time_steps} (the fitted time_steps), got {step!r}")
    return step


def mbe_step(state: MBEState, *, parameters: MBEParameters, step: int) -> tuple[MBEState, Tensor]:
    """Serial step ``t`` (one-based): returns ``(new state, spikes s_n(t))``, spikes ``(N, *S)`` 0/1."""
    _check_step(step, parameters.time_steps)
    membrane, output, spikes = _update(state.membrane, state.output, parameters, step - 1)
    return MBEState(membrane, output), spikes


def mbe_readout(state: MBEState, *, parameters: MBEParameters) -> Tensor:
    """Neuron output from a state: ``c + Σ_n w_n·o_n``, shape ``S``. After step T this is f̂(x).

    The sum runs in the order n = 1..N, one rounding per term (``o_1·w_1 + o_2·w_2 + …``):
    an order fixed here, not left to a reduction kernel, so that the fused kernel
    (:mod:`parasnn.neurons.fused_mbe`) can reproduce it bit for bit."""
    output, weight = state.output, parameters.weight
    total = output[0] * weight[0]
    for index in range(1, output.shape[0]):
        total = total + output[index] * weight[index]
    return total + parameters.output_bias


def mbe_step_value(spikes: Tensor, *, parameters: MBEParameters, step: int) -> Tensor:
    """What step t adds to the read-out: ``Σ_n w_n·d_n(t)·s_n(t)``, shape ``S`` (spikes ``(N, *S)``)."""
    _check_step(step, parameters.time_steps)
    value = parameters.weight * parameters.intensity[:, step - 1]  # (N,)
    return (spikes * _per_basis(value, spikes)).sum(0)


def mbe_forward(x: Tensor, *, parameters: MBEParameters, time_steps: int) -> Tensor:
    """Parallel form: ``f̂(x)`` of shape ``S`` for an input ``x`` of shape ``S``.

    T elementwise updates of ``(N, *S)`` membranes and outputs; no tensor with a time axis.
    ``time_steps`` must equal the T the parameters were made for (their tables have T columns).
    """
    check_time_steps(time_steps, parameters)
    membrane, output = mbe_initial_state(x, parameters=parameters)
    for index in range(time_steps):
        membrane, output, _ = _update(membrane, output, parameters, index)
    return mbe_readout(MBEState(membrane, output), parameters=parameters)


def mbe_spike_count(x: Tensor, *, parameters: MBEParameters, time_steps: int) -> Tensor:
    """Spikes per neuron over the window, summed over bases and steps; shape ``S``."""
    check_time_steps(time_steps, parameters)
    membrane, output = mbe_initial_state(x, parameters=parameters)
    count = torch.zeros_like(membrane)
    for index in range(time_steps):
        membrane, output, spikes = _update(membrane, output, parameters, index)
        count = count + spikes
    return count.sum(0)


def mbe_spike_train(x: Tensor, *, parameters: MBEParameters, time_steps: int) -> Tensor:
    """The spikes of every basis at every step, materialised: ``(T, N, *S)``."""
    check_time_steps(time_steps, parameters)
    membrane, output = mbe_initial_state(x, parameters=parameters)
    trains = []
    for index in range(time_steps):
        membrane, output, spikes = _update(membrane, output, parameters, index)
        trains.append(spikes)
    return torch.stack(trains)


def check_time_steps(time_steps, parameters: MBEParameters) -> int:
    """``time_steps`` if it is the T ``parameters`` were fitted for, else a one-line ValueError."""
    check_count(time_steps, "time_steps")
    if time_steps != parameters.time_steps:
        raise ValueError(f"MBE neuron was fitted for time_steps={parameters.time_steps}, got time_steps={time_steps}; "
                         f"refit it with fit_mbe(..., time_steps={time_steps})")
    return time_steps


class MBEStepState(NamedTuple):
    """:class:`MBENeuron`'s serial state: the neuron's state, the steps taken, and for a
    decomposed function the exponent and the input (for signs and zeros), else ``None``."""

    neuron: MBEState
    steps_taken: int
    exponent: Tensor | None
    input: Tensor | None


class MBENeuron(SpikingNeuron):
    """An MBE neuron layer: the parameters as buffers, the maths in the functions above.

    The same scalar function for every element of the input. ``function`` (a
    :class:`~parasnn.neurons.mbe_functions.ScalarFunction`, optional) names it; for exp,
    reciprocal and rsqrt the layer also applies the IEEE-754 decomposition around the
    neuron, so it computes the whole function (the neuron itself sees the mantissa).
    ``time_steps`` is fixed by the fit: any other value is refused with an error.

    Serial contract: the neuron encodes its input once, so ``initial_state(current)`` takes
    the input value x (the time-averaged current) and ``step`` ignores its ``current``.
    ``step`` returns ``T·Σ_n w_n·d_n(t)·s_n(t) + c`` (times ``2^E`` for a decomposed
    function), whose mean over the T steps is the parallel output (the project's
    convention: a layer's parallel output is the time average of its serial outputs) up to
    rounding; ``readout(state)`` after step T equals ``forward`` bit for bit.
    """

    def __init__(self, parameters: MBEParameters, *, function: ScalarFunction | str | None = None):
        super().__init__()
        if not isinstance(parameters, MBEParameters):
            raise TypeError(f"MBENeuron: parameters must be MBEParameters, got {type(parameters).__name__}")
        for name, tensor in parameters.as_dict().items():
            self.register_buffer(name, tensor.detach().clone())
        self.function = None if function is None else as_scalar_function(function)

    @property
    def parameters_(self) -> MBEParameters:
        """The buffers as :class:`MBEParameters` (follows ``.to(device)``, ``load_state_dict``).
        Validated once per change of the buffers, not on every call (the checks sync the device)."""
        tensors = tuple(self._buffers[name] for name in MBEParameters.FIELDS)
        cache = self.__dict__.get("_parameter_cache")
        if cache is None:
            cache = self.__dict__["_parameter_cache"] = ParameterCache()
        return cache.get(tensors, None, lambda: MBEParameters(*tensors))

    @property
    def time_steps(self) -> int:
        return self.threshold.shape[1]

    @property
    def bases(self) -> int:
        return self.threshold.shape[0]

    def _reduce(self, current: Tensor) -> tuple[Tensor, Tensor | None]:
        return (current, None) if self.function is None else reduce_input(self.function, current)

    def _restore(self, value: Tensor, exponent: Tensor | None, current: Tensor) -> Tensor:
        return value if exponent is None else restore_output(self.function, value, exponent, current)

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        from . import fused_mbe  # (imported here: fused_mbe imports this module)
        if self.function is None:
            return fused_mbe.fused_mbe_forward(current, parameters=self.parameters_, time_steps=time_steps)
        return fused_mbe.fused_function_value(current, function=self.function, parameters=self.parameters_,
                                              time_steps=time_steps)

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        from . import fused_mbe
        if self.function is None:
            return fused_mbe.fused_mbe_spike_count(current, parameters=self.parameters_, time_steps=time_steps)
        return fused_mbe.fused_function_spike_count(current, function=self.function, parameters=self.parameters_,
                                                    time_steps=time_steps)

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        """``(T, N, *S)``: the basis axis follows time (a neuron has N spike outputs)."""
        return mbe_spike_train(self._reduce(current)[0], parameters=self.parameters_, time_steps=time_steps)

    def initial_state(self, current: Tensor, *, time_steps: int) -> MBEStepState:
        parameters = self.parameters_
        check_time_steps(time_steps, parameters)
        neuron_input, exponent = self._reduce(current)
        return MBEStepState(mbe_initial_state(neuron_input, parameters=parameters), 0, exponent,
                            None if exponent is None else current)

    def step(self, state: MBEStepState, current: Tensor, *, time_steps: int) -> tuple[MBEStepState, Tensor]:
        parameters = self.parameters_
        check_time_steps(time_steps, parameters)
        step = state.steps_taken + 1
        inner, spikes = mbe_step(state.neuron, parameters=parameters, step=step)
        value = mbe_step_value(spikes, parameters=parameters, step=step) * time_steps + parameters.output_bias
        return state._replace(neuron=inner, steps_taken=step), self._restore(value, state.exponent, state.input)

    def readout(self, state: MBEStepState) -> Tensor:
        """The output from a serial state (after step T: bit-equal to ``forward``)."""
        value = mbe_readout(state.neuron, parameters=self.parameters_)
        return self._restore(value, state.exponent, state.input)

    def spikes_in(self, output: Tensor) -> Tensor:
        raise NotImplementedError(
            "MBENeuron.spikes_in: a step's output value does not tell how many bases fired; "
            "count spikes with MBENeuron.spike_count or the spikes returned by mbe_step")

    def extra_repr(self) -> str:
        name = f"{self.function.value}, " if self.function is not None else ""
        return f"{name}bases={self.bases}, time_steps={self.time_steps}"
