"""The parallel integrate-and-fire neuron (FS-PC) as a layer, with the calibration terms of
the main paper (docs/maths.md §3–4). Maths in :mod:`parasnn.neurons.integrate_fire`.

Parameters (buffers unless noted; each a scalar or per-channel ``(C,)`` tensor):

===================  ===========  ==========================================================
name                 paper        role
===================  ===========  ==========================================================
``threshold``        θ, θ_pre     firing threshold and soft-reset amount
``shift``            ψ            initial membrane potential, θ/2 (mid-bin rounding)
``amplitude``        θ_post       value carried by one spike: θ + φ_DA (DA calibration)
``pre_shift``        ψ_DA         added to the input current at every step (DA calibration);
                                  in the parallel rule it is the bias term ψ_DA·T/(T−t+1)
``temporal_bias``    Δb_c         stage-2 temporal correction (an ``nn.Parameter``)
===================  ===========  ==========================================================

Parallel form (one pass): with ``z`` the time-averaged input current,
``U = T·(z + ψ_DA)``, ``k = clip(floor((U + ψ)/(θ − Δb)), 0, T)``, output ``k·θ_post/T``.

Levels beyond L (docs/maths.md §3a): a neuron built from a trained QCFS layer keeps that
layer's ``levels`` L. Run at ``T > L`` it emits at most L spikes, each worth ``θ_post·T/L``, so
its parallel output is the same L-level function at every ``T ≥ L`` (the QCFS ANN's, before
calibration); ``levels=None`` (a ReLU network's stand-in quantizers) gives T levels at every T.

Serial form: soft-reset IF with input ``I_t + ψ_DA``, initial potential ψ, threshold and
reset ``θ − Δb``, spikes of size ``θ_post``. At ``T > L`` the input is scaled by ``L/T``,
the neuron may fire only at L of the T steps, and a spike is worth ``θ_post·T/L``. For a
constant input current it emits exactly the parallel count (the temporal bias is a uniform lowering of the firing ladder,
so its serial counterpart is the lowered threshold); for currents that vary in time the
two differ — that is the serial conversion error this library reports.

Inference (no autograd graph needed, e.g. under ``torch.no_grad()``) takes an in-place path:
one fresh buffer, the same floating-point operations in the same order (so the same bits
as the differentiable path), the derived constants cached until a parameter changes, and
the ``+ ψ_DA`` pass skipped while ``pre_shift`` is zero. It keeps the parallel network's
per-neuron cost at that of the QCFS activation it replaces.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SpikingNeuron, load_resizable, per_channel
from .integrate_fire import (ParameterCache, check_time_steps, effective_threshold, if_step, parallel_if_count,
                             spike_train)
from .qcfs import check_levels, level_value, require_qcfs

__all__ = ["IFNeuron"]


class IFNeuron(SpikingNeuron):
    """Parallel IF neuron layer. Build it from an activation with :meth:`from_qcfs`."""

    _resizable = ("threshold", "shift", "amplitude", "pre_shift", "temporal_bias")

    def __init__(self, *, threshold: Tensor | float, shift: Tensor | float | None = None,
                 amplitude: Tensor | float | None = None, surrogate_width: float = 1.0,
                 levels: int | None = None):
        """``levels``: the L of the trained QCFS layer this neuron replaces; at ``T > L`` the
        neuron keeps those L levels (docs/maths.md §3a). ``None``: T levels at every T."""
        super().__init__()
        self.levels = None if levels is None else check_levels(levels, where="IFNeuron")
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if not bool((threshold > 0).all()):
            raise ValueError(f"IFNeuron: threshold must be > 0, got {threshold}")
        self.register_buffer("threshold", threshold)
        self.register_buffer("shift", threshold * 0.5 if shift is None
                             else torch.as_tensor(shift, dtype=torch.float32).detach().clone())
        self.register_buffer("amplitude", threshold.clone() if amplitude is None
                             else torch.as_tensor(amplitude, dtype=torch.float32).detach().clone())
        self.register_buffer("pre_shift", torch.zeros(()))
        self.temporal_bias = nn.Parameter(torch.zeros(()))
        self.surrogate_width = surrogate_width

    @classmethod
    def from_qcfs(cls, activation: nn.Module) -> "IFNeuron":
        """The neuron that reproduces a QCFS activation exactly at every ``T ≥ L`` (it keeps
        the layer's L levels, docs/maths.md §3a), unless the QCFS only stands in for a ReLU
        (``QCFS.stand_in``): that neuron has T levels at every T."""
        activation = require_qcfs(activation, converter="IFNeuron.from_qcfs")
        threshold = activation.effective_threshold().detach()
        return cls(threshold=threshold, shift=threshold * 0.5,
                   levels=None if activation.stand_in else activation.levels)

    def levels_at(self, time_steps: int) -> int:
        """The number of levels (most spikes) at ``T = time_steps``: ``min(T, L)`` for a neuron
        that keeps its QCFS layer's L, else T. The parallel count is computed at this many
        steps, so at every ``T ≥ L`` it is the QCFS level itself (docs/maths.md §3a)."""
        check_time_steps(time_steps)
        levels = self.levels
        return time_steps if levels is None or time_steps <= levels else levels

    # -- parallel ---------------------------------------------------------------------
    def _cumulative(self, current: Tensor, time_steps: int) -> Tensor:
        # Adding a zero pre-shift is exact, so an uncalibrated neuron stays bit-equal to QCFS.
        return time_steps * (current + per_channel(self.pre_shift, current))

    def _count(self, current: Tensor, time_steps: int) -> Tensor:
        """The differentiable count (surrogate gradients for U, ψ, θ and Δb)."""
        return parallel_if_count(
            self._cumulative(current, time_steps),
            threshold=per_channel(self.threshold, current),
            shift=per_channel(self.shift, current),
            time_steps=time_steps,
            temporal_bias=per_channel(self.temporal_bias, current),
            surrogate_width=self.surrogate_width,
        )

    def _parameters_tuple(self) -> tuple[Tensor, ...]:
        # Straight from the registries (cheaper than five nn.Module.__getattr__ calls).
        try:
            buffers = self._buffers
            return (buffers["threshold"], buffers["shift"], buffers["amplitude"], buffers["pre_shift"],
                    self._parameters["temporal_bias"])
        except KeyError:  # re-registered under another kind: the slow, general lookup
            return tuple(getattr(self, name) for name in self._resizable)

    def counting_steps(self, time_steps):
        """The steps the parallel count is taken over at ``T = time_steps``: ``min(T, L)`` for a
        neuron that keeps its QCFS layer's L, else T (:meth:`levels_at` without its check, for
        the hot path; a non-integer, e.g. a torch.fx proxy, is passed through)."""
        levels = self.levels
        return time_steps if levels is None or not isinstance(time_steps, int) or time_steps <= levels else levels

    def inference_constants(self, current: Tensor, time_steps: int):
        """The derived constants of the inference path (cached; shared with the fused kernel of
        :mod:`parasnn.neurons.fused`):
        ``(pre_shift or None, shift, θ − Δb, θ_post/T')`` viewed for ``current``, for a count
        over ``T' =`` :meth:`counting_steps` ``(T)`` steps (a kernel is called with ``T'``), or
        ``None`` where the in-place path does not apply (a graph is needed, or dtypes differ
        and the out-of-place type promotion must be kept)."""
        return self._constants_at(current, self.counting_steps(time_steps))

    def _constants_at(self, current: Tensor, time_steps: int):
        """:meth:`inference_constants` for a count over ``time_steps`` steps (already the
        neuron's :meth:`levels_at`)."""
        if not isinstance(current, Tensor):  # e.g. a torch.fx proxy
            return None
        tensors = self._parameters_tuple()
        if torch.is_grad_enabled() and (current.requires_grad or any(t.requires_grad for t in tensors)):
            return None
        # type(time_steps): True == 1 in Python, but True is not a valid number of steps.
        key = (time_steps, type(time_steps), current.dim(), current.shape[1] if current.dim() > 1 else None,
               current.dtype, current.device)

        def compute():
            check_time_steps(time_steps)
            if any(t.dtype != current.dtype for t in tensors):
                return None
            # The same tensors, in the same order of operations, as _count and level_value,
            # so both paths give the same bits.
            threshold, shift, amplitude, pre_shift, temporal_bias = (per_channel(t, current) for t in tensors)
            skip = not bool((pre_shift != 0).any())  # adding zero is exact: skip the pass
            return (None if skip else pre_shift, shift, effective_threshold(threshold, temporal_bias),
                    amplitude / time_steps)

        cache = self.__dict__.get("_parameter_cache")
        if cache is None:
            cache = self.__dict__["_parameter_cache"] = ParameterCache()
        return cache.get(tensors, key, compute)

    @staticmethod
    def count_in_place(current: Tensor, time_steps: int, constants) -> Tensor:
        """``clip(floor((T·(z + ψ_DA) + ψ)/(θ − Δb)), 0, T)`` in one fresh buffer (no autograd)."""
        pre_shift, shift, threshold, _ = constants
        charge = current * time_steps if pre_shift is None else (current + pre_shift).mul_(time_steps)
        return charge.add_(shift).div_(threshold).floor_().clamp_(0, time_steps)

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        steps = self.levels_at(time_steps)  # checks time_steps; the count is at most this
        constants = self._constants_at(current, steps)
        if constants is not None:
            return self.count_in_place(current, steps, constants)
        return self._count(current, steps)

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        # At T > L the count and the output are those at L steps (docs/maths.md §3a): the same
        # spikes, each worth θ_post·T/L, spread over T steps, have the same time average.
        steps = self.counting_steps(time_steps)
        constants = self._constants_at(current, steps)  # checks time_steps when not cached
        if constants is not None:  # inference: one buffer, updated in place
            return self.count_in_place(current, steps, constants).mul_(constants[3])
        check_time_steps(steps)
        count = self._count(current, steps)
        return level_value(count, amplitude=per_channel(self.amplitude, current), time_steps=steps)

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        return spike_train(self.spike_count(current, time_steps=time_steps), time_steps=time_steps)

    # -- serial -----------------------------------------------------------------------
    def _firing_threshold(self, like: Tensor) -> Tensor:
        return effective_threshold(per_channel(self.threshold, like), per_channel(self.temporal_bias, like))

    def initial_state(self, current: Tensor, *, time_steps: int):
        """The membrane potential ``v_0 = ψ``; a neuron that keeps L < T levels also counts the
        steps taken: ``(potential, steps)``."""
        potential = torch.zeros_like(current) + per_channel(self.shift, current)
        if self.levels_at(time_steps) < time_steps:
            return potential, 0
        return potential

    def step(self, state, current: Tensor, *, time_steps: int) -> tuple[object, Tensor]:
        current = current + per_channel(self.pre_shift, current)
        amplitude = per_channel(self.amplitude, current)
        levels = self.levels_at(time_steps)
        if levels == time_steps:
            potential, spikes = if_step(state, current, threshold=self._firing_threshold(current))
            return potential, spikes * amplitude
        # Keeping L < T levels (docs/maths.md §3a): the neuron integrates the input scaled by L/T
        # every step but may fire only at the L steps t_j = ⌈j·T/L⌉, one spike worth θ_post·T/L
        # each. For T = k·L it is the T = L neuron fed the sum of each k steps' input, so its
        # serial network is the T = L serial network, its spikes k steps apart.
        potential, taken = state
        step = taken + 1
        potential = potential + current * (levels / time_steps)
        if (step * levels) // time_steps == (taken * levels) // time_steps:  # not a firing step
            return (potential, step), torch.zeros_like(potential)
        potential, spikes = if_step(potential, torch.zeros((), dtype=potential.dtype, device=potential.device),
                                    threshold=self._firing_threshold(current))
        return (potential, step), spikes * (amplitude * (time_steps / levels))

    # -- checkpoints ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_resizable(self, state_dict, prefix, self._resizable)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shape = "per-channel" if self.threshold.dim() else f"threshold={float(self.threshold):.4g}"
        calibrated = self.pre_shift.dim() or self.temporal_bias.dim()
        return shape + (", calibrated" if calibrated else "")
