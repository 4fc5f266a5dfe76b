"""Integrate-and-fire neurons as pure functions: serial (step by step) and parallel
(all T steps in one shot). docs/maths.md §2–3; [FS-PC] and [STDC] §3–4.

Symbols and argument names
--------------------------
==================  ============  ==========================================================
argument            paper         meaning
==================  ============  ==========================================================
``threshold``       θ (θ_pre)     firing threshold; also the soft-reset amount
``shift``           ψ = v⁰        initial membrane potential (θ/2 for lossless QCFS mapping)
``time_steps``      T             simulation window
``cumulative_current``  U = Σ_t I_t   total input current over the window
``temporal_bias``   Δb_c          [STDC] eq. 17: learnable per-channel bias added to the
                                  potential before the threshold at every step
``step``            t ∈ 1..T      one-based time index, as in the papers
==================  ============  ==========================================================

Shapes: time is the first axis. A spike train is ``(T, *S)``; counts, potentials and
cumulative currents are ``(*S)``. Parameters (``threshold``, ``shift``, ``temporal_bias``)
broadcast against ``S`` (scalars, or per-channel tensors already viewed as
``(C, 1, 1)`` for ``(B, C, H, W)`` inputs, see :func:`parasnn.neurons.base.per_channel`).

The parallel rule
-----------------
A neuron fires at step ``t`` iff ([STDC] eq. 8, with eq. 17's bias)::

    (U + ψ) / (T − t + 1) + Δb  ≥  θ

The left side grows with ``t`` (for ``U + ψ ≥ 0``), so once the neuron fires it fires at
every later step: the spikes occupy the last ``k`` slots and ``k`` has the closed form::

    k = clip(floor((U + ψ) / (θ − Δb)), 0, T)          (θ − Δb > 0)

Three implementations of this one rule are given and tested against each other:
:func:`spike_count` (closed form, O(1)), :func:`spike_count_by_search` (binary search for
the first firing step, O(log T), [FS-PC], usable for any rule monotone in ``t``) and
:func:`spike_train_by_matrix` (the paper's ``Λ_PC·I + b ≥ θ``, O(T²), the readable
reference). In exact arithmetic they agree; in floating point the closed form divides once
where the others divide by ``T − t + 1``, so they agree bit for bit whenever those
quotients are exact or stay away from the threshold by more than a rounding error — the
tests draw inputs on dyadic grids to pin exact agreement.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .surrogate import floor_ste
from ..runtime.checks import require_positive_int

__all__ = [
    "check_time_steps",
    "if_count_surrogate",
    "reduce_to_shape",
    "surrogate_constants",
    "effective_threshold",
    "spike_count",
    "spike_train",
    "fires",
    "first_spike_step",
    "spike_count_by_search",
    "parallel_conversion_matrix",
    "parallel_bias",
    "spike_train_by_matrix",
    "if_step",
    "simulate_if",
    "parallel_if_count",
    "MIN_THRESHOLD_FRACTION",
    "ParameterCache",
]

# The temporal bias may lower the effective threshold θ − Δb but never to zero or below:
# the rule would stop being monotone in t (spikes would move to the *first* steps).
# Decision (the paper is silent): clamp θ − Δb at this fraction of θ.
MIN_THRESHOLD_FRACTION = 1e-3


def check_time_steps(time_steps: int) -> int:
    """``time_steps`` if it is a valid T (an integer >= 1), else a ValueError naming it."""
    return require_positive_int(time_steps, "time_steps")


_check_time_steps = check_time_steps  # the name before it was shared; kept for old imports


class ParameterCache:
    """Constants a layer derives from its parameters for inference (views, quotients),
    computed once and reused until a parameter is replaced (a new tensor object, e.g. by
    ``load_state_dict`` resizing or ``.to(device)``) or modified in place (its version
    counter moves, e.g. ``copy_`` or an optimiser step), or ``key`` (time steps, input
    rank, …) changes.

    Why: at batch 1 the handful of tiny tensor ops that derive these constants cost as
    much as the neuron's own elementwise work; caching them keeps the parallel network's
    per-layer overhead at that of the ANN's activation.
    """

    __slots__ = ("_tensors", "_versions", "_key", "_value")

    def __init__(self):
        self._tensors: tuple = ()
        self._versions: tuple | None = None
        self._key = None
        self._value = None

    def get(self, tensors: tuple[Tensor, ...], key, compute: Callable[[], object]):
        """The cached value for ``(tensors, key)``, calling ``compute()`` when stale."""
        cached = self._tensors
        if key == self._key and len(cached) == len(tensors):
            # A plain loop: this runs once per layer per forward pass, so it must stay cheap.
            for tensor, old, version in zip(tensors, cached, self._versions):
                if tensor is not old or tensor._version != version:
                    break
            else:
                return self._value
        with torch.no_grad():
            value = compute()
        try:
            versions = tuple(t._version for t in tensors)
        except RuntimeError:  # inference tensors have no version counter: never cache them
            return value
        # Holding the tensors keeps their ids from being reused by new tensors.
        self._tensors, self._versions, self._key, self._value = tensors, versions, key, value
        return value


def effective_threshold(threshold: Tensor | float, temporal_bias: Tensor | float | None):
    """The firing threshold ``θ − Δb``, kept at least ``MIN_THRESHOLD_FRACTION·θ``."""
    if temporal_bias is None:
        return threshold
    threshold = torch.as_tensor(threshold)
    return torch.maximum(threshold - temporal_bias, threshold * MIN_THRESHOLD_FRACTION)


_effective_threshold = effective_threshold  # the name before it was shared; kept for old imports


def spike_count(
    cumulative_current: Tensor,
    *,
    threshold: Tensor | float,
    shift: Tensor | float,
    time_steps: int,
) -> Tensor:
    """Closed-form spike count of a parallel IF neuron: ``k = clip(floor((U + ψ)/θ), 0, T)``.

    With ``U = L·x`` and ``time_steps = L`` this *is* the QCFS level of docs/maths.md §1; the
    QCFS activation calls this function, so the lossless T = L mapping holds bit for bit.
    ``floor`` carries a straight-through gradient (used when training QCFS networks).
    Returns a float tensor of integer values in ``0..T``, shape of ``cumulative_current``.
    """
    _check_time_steps(time_steps)
    return torch.clamp(floor_ste((cumulative_current + shift) / threshold), 0, time_steps)


def spike_train(count: Tensor, *, time_steps: int) -> Tensor:
    """Materialise the train ``(T, *S)`` of a parallel neuron from its counts ``(*S)``:
    the ``k`` spikes occupy the last ``k`` steps, ``s_t = [t ≥ T − k + 1]``."""
    _check_time_steps(time_steps)
    steps = torch.arange(1, time_steps + 1, device=count.device, dtype=count.dtype)
    steps = steps.view(time_steps, *([1] * count.dim()))  # (T, 1, ..., 1)
    return (steps >= (time_steps + 1) - count.unsqueeze(0)).to(count.dtype)


def fires(
    cumulative_current: Tensor,
    step: Tensor | int,
    *,
    threshold: Tensor | float,
    shift: Tensor | float,
    time_steps: int,
    temporal_bias: Tensor | float = 0.0,
) -> Tensor:
    """The parallel firing rule at one-based ``step`` t, written as in [STDC] eq. 8/17:
    ``(U + ψ)/(T − t + 1) + Δb ≥ θ``. ``step`` may be a tensor broadcasting with ``U``."""
    return (cumulative_current + shift) / (time_steps - step + 1) + temporal_bias >= threshold


def first_spike_step(rule: Callable[[Tensor], Tensor], *, time_steps: int, shape, device=None) -> Tensor:
    """Binary search ([FS-PC]) for the first step ``t ∈ 1..T`` at which ``rule(t)`` holds.

    ``rule`` maps a long tensor of steps (shape ``shape``) to a bool tensor of the same
    shape and must be monotone in ``t`` (false … false true … true) for every element.
    Returns ``T + 1`` where the rule never holds. ``⌈log2(T+1)⌉`` evaluations of ``rule``.
    """
    _check_time_steps(time_steps)
    low = torch.ones(shape, dtype=torch.long, device=device)  # first candidate
    high = torch.full(shape, time_steps + 1, dtype=torch.long, device=device)  # "never"
    # Invariant: the first firing step lies in [low, high]; high = T + 1 means "never".
    # A fixed number of rounds (not "until converged") keeps the loop free of host syncs.
    for _ in range(max(1, (time_steps).bit_length())):
        middle = (low + high) // 2  # < high wherever low < high, so middle <= T there
        holds = rule(middle.clamp(max=time_steps))
        active = low < high
        high = torch.where(active & holds, middle, high)
        low = torch.where(active & ~holds, middle + 1, low)
    return low


def spike_count_by_search(
    cumulative_current: Tensor,
    *,
    threshold: Tensor | float,
    shift: Tensor | float,
    time_steps: int,
    temporal_bias: Tensor | float = 0.0,
) -> Tensor:
    """Spike count ``T − t_first + 1`` from :func:`first_spike_step` on :func:`fires`."""

    def rule(step: Tensor) -> Tensor:
        return fires(cumulative_current, step.to(cumulative_current.dtype), threshold=threshold,
                     shift=shift, time_steps=time_steps, temporal_bias=temporal_bias)

    first = first_spike_step(rule, time_steps=time_steps, shape=cumulative_current.shape,
                             device=cumulative_current.device)
    return (time_steps + 1 - first).to(cumulative_current.dtype)


def parallel_conversion_matrix(time_steps: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``Λ_PC`` of [STDC] eq. 6, shape ``(T, T)``: row ``t`` is ``1/(T − t + 1)`` everywhere,
    so ``(Λ_PC · I)_t = U / (T − t + 1)`` for a current sequence ``I`` of shape ``(T, *S)``."""
    _check_time_steps(time_steps)
    rows = 1.0 / torch.arange(time_steps, 0, -1, dtype=dtype, device=device)  # 1/T ... 1/1
    return rows.view(time_steps, 1).expand(time_steps, time_steps).clone()


def parallel_bias(shift: Tensor | float, *, time_steps: int, dtype=torch.float32, device=None) -> Tensor:
    """The bias vector ``b`` of [STDC] eq. 7, ``b_t = ψ/(T − t + 1)``; shape ``(T, *ψ.shape)``."""
    _check_time_steps(time_steps)
    shift = torch.as_tensor(shift, dtype=dtype, device=device)
    denominators = torch.arange(time_steps, 0, -1, dtype=dtype, device=device)
    return shift.unsqueeze(0) / denominators.view(time_steps, *([1] * shift.dim()))


def spike_train_by_matrix(
    currents: Tensor,
    *,
    threshold: Tensor | float,
    shift: Tensor | float,
    temporal_bias: Tensor | float = 0.0,
) -> Tensor:
    """The paper's matrix form: ``s = H(Λ_PC · I + b + Δb − θ)``, currents ``(T, *S)`` → spikes
    ``(T, *S)``. The readable O(T²) reference for :func:`spike_count` and :func:`spike_train`.

    The product is written as ``Σ_j Λ[t, j]·I_j`` would be, but evaluated as
    ``(Σ_j I_j) / (T − t + 1)`` — the same number, without the rounding of ``T`` separate
    multiplications by ``1/(T − t + 1)``.
    """
    time_steps = currents.shape[0]
    total = currents.sum(dim=0, keepdim=True)  # (1, *S): Λ's rows are constant
    denominators = torch.arange(time_steps, 0, -1, dtype=currents.dtype, device=currents.device)
    denominators = denominators.view(time_steps, *([1] * (currents.dim() - 1)))  # (T, 1, ...)
    potential = (total + shift) / denominators + temporal_bias  # (T, *S)
    return (potential >= threshold).to(currents.dtype)


def if_step(potential: Tensor, current: Tensor, *, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """One step of the serial IF neuron with soft reset (docs/maths.md §2)::

        v ← v + I_t ;  s_t = [v ≥ θ] ;  v ← v − s_t·θ

    Returns ``(new_potential, spikes)``; spikes are 0/1 floats. No state is kept anywhere
    else: the caller passes the potential in and gets it back.
    """
    potential = potential + current
    spikes = (potential >= threshold).to(potential.dtype)
    return potential - spikes * threshold, spikes


def simulate_if(currents: Tensor, *, threshold: Tensor | float, shift: Tensor | float) -> Tensor:
    """Run :func:`if_step` over currents ``(T, *S)`` from ``v_0 = ψ``; returns spikes ``(T, *S)``."""
    potential = torch.zeros_like(currents[0]) + shift
    trains = []
    for current in currents:
        potential, spikes = if_step(potential, current, threshold=threshold)
        trains.append(spikes)
    return torch.stack(trains)


def if_count_surrogate(grad: Tensor, cumulative: Tensor, *, shift: Tensor, threshold: Tensor,
                       temporal_bias: Tensor, time_steps: int, width: float,
                       bias_gradient: bool = True) -> tuple[Tensor, Tensor | None]:
    """The triangle-surrogate gradient of the parallel IF count ``Σ_t H(v_t − θ)``, with
    ``v_t = (U + ψ)/r_t + Δb`` and ``r_t = T − t + 1``, as two elementwise factors of the
    incoming ``grad``:

    * ``d_charge = grad · Σ_t σ'_t / r_t`` — the gradient for ``U`` and ``ψ``;
    * ``d_bias = grad · Σ_t σ'_t`` — for ``Δb`` (and, negated, for ``θ``); ``None`` unless
      ``bias_gradient``;

    with ``σ'_t = triangle(x_t, width)/θ`` of the distance to the threshold relative to it,
    ``x_t = (v_t − θ)/θ``. Evaluated with reciprocals, ``x_t = ((U + ψ)·θ⁻¹)·r_t⁻¹ + (Δb −
    θ)·θ⁻¹`` and ``σ'_t = max(w − |x_t|, 0)·(θ⁻¹/w²)``: the same function as the division
    form, rounded differently in the last bits, and without a division in the loop (the
    fused kernel, which must give these bits, is several times faster so).

    Shapes: ``grad`` and ``cumulative`` (U) ``(B, C, …)``; ``shift`` (ψ), ``threshold`` (θ),
    ``temporal_bias`` (Δb) broadcast against them (0-dim or per channel). The reference: a
    loop over the T steps on tensors of the neuron's own shape.
    :class:`parasnn.neurons.fused.FusedIFNeuron` runs the same arithmetic, inside the
    neuron's whole backward pass, as one CPU kernel (bit-equal).
    """
    inverse, offset, peak = surrogate_constants(threshold, temporal_bias, width=width)
    scaled = (cumulative + shift) * inverse  # (U + ψ)/θ
    d_charge = torch.zeros_like(scaled)  # Σ_t σ'_t / r_t
    d_bias = torch.zeros_like(scaled) if bias_gradient else None  # Σ_t σ'_t
    for remaining in range(1, time_steps + 1):  # r_t = T − t + 1
        reciprocal = 1.0 / remaining
        slope = torch.clamp(width - (scaled * reciprocal + offset).abs(), min=0.0) * peak
        d_charge += slope * reciprocal
        if bias_gradient:
            d_bias += slope
    return grad * d_charge, (grad * d_bias if bias_gradient else None)


def surrogate_constants(threshold: Tensor, temporal_bias: Tensor, *, width: float) -> tuple[Tensor, Tensor, Tensor]:
    """The per-channel constants of :func:`if_count_surrogate`: ``(θ⁻¹, (Δb − θ)·θ⁻¹,
    θ⁻¹/w²)``, each shaped as ``threshold`` and ``temporal_bias`` broadcast together."""
    if width <= 0:
        raise ValueError(f"surrogate width must be > 0, got {width}")
    inverse = 1.0 / threshold
    return inverse, (temporal_bias - threshold) * inverse, inverse / (width * width)


class _ParallelIFCount(torch.autograd.Function):
    """Closed-form count forward; triangle-surrogate backward of ``Σ_t H(v_t − θ)``
    (:func:`if_count_surrogate`).

    ``v_t = (U + ψ)/(T − t + 1) + Δb``. The backward pass stores only ``U`` — never a
    ``(T, ...)`` copy — so the memory of training through a parallel neuron stays that of
    one activation. The surrogate acts on ``(v_t − θ)/θ``: the band is relative to the
    threshold, so layers with different θ see the same sharpness (decision; [STDC] does not
    say).
    """

    @staticmethod
    def forward(ctx, cumulative, shift, threshold, temporal_bias, time_steps, width):
        effective = _effective_threshold(threshold, temporal_bias)
        count = torch.clamp(torch.floor((cumulative + shift) / effective), 0, time_steps)
        ctx.save_for_backward(cumulative, shift, threshold, temporal_bias)
        ctx.time_steps, ctx.width = time_steps, width
        return count

    @staticmethod
    def backward(ctx, grad):
        cumulative, shift, threshold, temporal_bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_charge, d_bias = if_count_surrogate(grad, cumulative, shift=shift, threshold=threshold,
                                              temporal_bias=temporal_bias, time_steps=ctx.time_steps,
                                              width=ctx.width, bias_gradient=needs[2] or needs[3])
        return (
            reduce_to_shape(d_charge, cumulative) if needs[0] else None,
            reduce_to_shape(d_charge, shift) if needs[1] else None,
            reduce_to_shape(-d_bias, threshold) if needs[2] else None,
            reduce_to_shape(d_bias, temporal_bias) if needs[3] else None,
            None,
            None,
        )


def reduce_to_shape(gradient: Tensor, like: Tensor) -> Tensor:
    """Reduce a broadcast gradient back to the shape of ``like``."""
    if gradient.shape == like.shape:
        return gradient
    extra = gradient.dim() - like.dim()
    gradient = gradient.sum(dim=tuple(range(extra))) if extra > 0 else gradient
    dims = tuple(i for i, n in enumerate(like.shape) if n == 1 and gradient.shape[i] != 1)
    return gradient.sum(dim=dims, keepdim=True) if dims else gradient


def parallel_if_count(
    cumulative_current: Tensor,
    *,
    threshold: Tensor,
    shift: Tensor,
    time_steps: int,
    temporal_bias: Tensor | None = None,
    surrogate_width: float = 1.0,
) -> Tensor:
    """Spike count of the parallel IF neuron with the temporal bias of [STDC] §4.3,
    ``clip(floor((U + ψ)/(θ − Δb)), 0, T)``, differentiable through the triangle surrogate
    of ``Σ_t H((U + ψ)/(T − t + 1) + Δb − θ)`` with respect to ``U``, ``ψ``, ``θ`` and ``Δb``.

    Without a temporal bias the value is exactly :func:`spike_count`'s.
    """
    _check_time_steps(time_steps)
    dtype, device = cumulative_current.dtype, cumulative_current.device
    threshold = torch.as_tensor(threshold, dtype=dtype, device=device)
    shift = torch.as_tensor(shift, dtype=dtype, device=device)
    bias = torch.zeros((), dtype=dtype, device=device) if temporal_bias is None else temporal_bias
    return _ParallelIFCount.apply(cumulative_current, shift, threshold, bias, time_steps, surrogate_width)
