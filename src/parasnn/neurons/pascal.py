"""PASCAL's inhibitory-spike IF neuron ([PASCAL], docs/maths.md §5) as pure functions, and the thin
:class:`PascalNeuron` layer that holds its parameters.

A PASCAL layer ``l`` works in three phases and waits for *all* of its input before it emits:

1. **integration** — for the ``T_in`` steps of its input window it adds the incoming
   current to its membrane and may fire after every step;
2. **correction** — ``C = max(T_in, T_l) − 1`` more steps with no input (docs/maths.md §5), in
   which it keeps firing by the same rule;
3. **emission** — it sends its net spike count ``q`` as ``q`` positive spikes in the first
   ``q`` of its own ``T_l = L_l`` output steps (each spike worth the quantum ``λ = θ/L``).

Firing rule (both phases 1 and 2), with ``v`` the soft-reset membrane potential and ``n``
the net count so far: a **positive** spike (``n += 1``, ``v −= θ/L``) when ``v ≥ θ/L`` and
``n < L``; a **negative (inhibitory)** spike (``n −= 1``, ``v += θ/L``, the threshold added
back) when ``v < 0`` and ``n > 0``. At most one spike per step.

Result: the net count converges to ``clip(floor((L·z + ψ)/θ), 0, L)`` — the QCFS level of
the layer's pre-activation ``z`` — so a network of PASCAL layers reproduces the QCFS ANN.

Symbols and argument names
--------------------------
==================  ==========  ===========================================================
argument            paper       meaning
==================  ==========  ===========================================================
``threshold``       θ           the QCFS threshold of the layer (per layer, or per channel)
``levels``          L = T_l     quantization levels of the layer = its emission window
``shift``           ψ = θ/2     QCFS shift; the initial membrane charge
``charge``          u           ``ψ + L·Σ_t I_t`` — the membrane on QCFS's pre-floor scale
``count``           n           net spike count so far (positive minus negative spikes)
``input_steps``     T_{l−1}     length of the layer's input window (T_in)
``output_steps``    T_l         length of its emission window (= L)
==================  ==========  ===========================================================

Decisions (the paper text we have gives the mechanism, not these details)
------------------------------------------------------------------------
* **Scale of the membrane.** docs/maths.md writes the rule on the pre-activation scale
  (threshold ``θ/L``, initial potential ``θ/(2L)``). We keep the membrane multiplied by
  ``L`` — the *charge* ``u = ψ + L·Σ I`` with threshold ``θ`` — because QCFS evaluates
  ``(L·z + ψ)/θ``: the neuron then computes the same floating-point expression as QCFS.
  Multiplying a potential and its threshold by the same ``L`` changes no spike.
* **Evaluating the soft reset.** The soft-reset potential after ``n`` net spikes is
  ``v = u − n·θ``, and ``v ≥ θ ⟺ u/θ ≥ n + 1``, ``v < 0 ⟺ u/θ < n``. :func:`pascal_step`
  evaluates the right-hand forms (the "ladder"): in exact arithmetic they are the soft-reset
  tests; in floating point they never accumulate the rounding of repeated ``v ± θ``, so the
  converged count is ``floor(fl(u/θ))`` clipped — QCFS's level bit for bit whenever ``u``
  is. :func:`soft_reset_step` is the textbook form, kept as the reference; the tests
  show both give the same spikes where the arithmetic is exact (dyadic grids).
* **Clipping.** Positive spikes stop at ``n = L`` and negative ones at ``n = 0``: the
  count stays in QCFS's range ``0..L`` at every step.
* **Firing during integration.** The neuron fires during the input window too (not only
  in the correction phase). That is what makes ``max(T_in, T_l) − 1`` correction steps
  enough: the last input step already moves the count one step towards its target.
  With the clipping above even ``T_l − 1`` suffice (:func:`sufficient_correction_steps`,
  proof in its docstring); the default schedule keeps the paper's count.
* **Emission order.** The ``q`` output spikes occupy the *first* ``q`` of the ``T_l``
  emission steps (only the total matters to the next layer, which waits for all of them).
* **What leaves the neuron.** Only the emission spikes are sent to the next layer and cost
  synaptic operations. The ± spikes of phases 1–2 only update the neuron's own counter;
  they are reported separately (internal events).

Shapes: time is the first axis; per-neuron tensors are ``(*S)`` (e.g. ``(B, C, H, W)``),
trains and charge sequences ``(T, *S)``. ``threshold`` and ``shift`` broadcast against ``S``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import SpikingNeuron, load_resizable, per_channel
from .integrate_fire import check_time_steps
from .qcfs import level_value, qcfs, qcfs_level, require_qcfs

__all__ = ["correction_steps", "sufficient_correction_steps", "membrane_charge", "pascal_step", "soft_reset_step",
           "AccumulationResult", "accumulate", "emission_train", "emitted_count", "PascalNeuron",
           "PipelinedOnlyError"]


def correction_steps(*, input_steps: int, output_steps: int) -> int:
    """The paper's number of correction steps, ``C = max(T_{l−1}, T_l) − 1`` (docs/maths.md §5)."""
    check_time_steps(input_steps)
    check_time_steps(output_steps)
    return max(input_steps, output_steps) - 1


def sufficient_correction_steps(*, output_steps: int) -> int:
    """``T_l − 1``: enough correction steps for the clipped rule of :func:`pascal_step`.

    Proof sketch. Let ``q`` be the target level and ``n`` the count after the last input
    step. If ``q > n``, that step fired a positive spike (otherwise ``u/θ ≥ n + 1`` with
    ``n < L`` would have made it fire), so ``n ≥ 1`` and ``q − n ≤ L − 1``. If ``q < n``,
    it fired a negative spike, so ``n`` is one below the largest count reached, which is at
    most ``L``: ``n − q ≤ L − 1``. With the input over, the charge is constant and every
    correction step moves ``n`` one step towards ``q``.
    """
    check_time_steps(output_steps)
    return output_steps - 1


def membrane_charge(current: Tensor, *, levels: int, shift: Tensor | float) -> Tensor:
    """``u = L·z + ψ`` for an accumulated input current ``z`` — written exactly as QCFS writes
    its pre-floor numerator (``levels * x`` then ``+ shift``), so equal ``z`` give equal ``u``."""
    return levels * current + shift


def pascal_step(charge: Tensor, count: Tensor, *, threshold: Tensor | float, levels: int) -> tuple[Tensor, Tensor]:
    """One PASCAL step on the charge ``u`` after this step's input; returns ``(count, spike)``.

    ``spike`` is ``+1`` (``u/θ ≥ n + 1`` and ``n < L``: the soft-reset potential reached θ),
    ``−1`` (``u/θ < n`` and ``n > 0``: the potential fell below 0 — inhibitory spike, the
    threshold is added back) or ``0``; floats of the shape of ``charge``. The two tests
    exclude each other. See the module docstring for why the ladder form is used.
    """
    ratio = charge / threshold  # the very expression QCFS floors
    up = (ratio >= count + 1) & (count < levels)
    down = (ratio < count) & (count > 0)
    spike = up.to(charge.dtype) - down.to(charge.dtype)
    return count + spike, spike


def soft_reset_step(potential: Tensor, count: Tensor, current: Tensor, *, threshold: Tensor | float,
                    levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """The textbook form of the same neuron on the charge scale: ``v ← v + L·I_t`` is done by
    the caller (pass it in ``current``); then a positive spike and ``v −= θ`` when ``v ≥ θ``
    and ``n < L``, a negative spike and ``v += θ`` when ``v < 0`` and ``n > 0``.
    Returns ``(potential, count, spike)``. Start from ``v = ψ``, ``n = 0``."""
    potential = potential + current
    up = (potential >= threshold) & (count < levels)
    down = (potential < 0) & (count > 0)
    spike = up.to(potential.dtype) - down.to(potential.dtype)
    return potential - spike * threshold, count + spike, spike


class AccumulationResult(NamedTuple):
    """What :func:`accumulate` returns; per-neuron tensors ``(*S)`` unless noted."""

    count: Tensor  # net count q after integration and correction (the emitted spike count)
    positive: Tensor  # positive spikes fired during integration + correction
    negative: Tensor  # negative (inhibitory) spikes fired during integration + correction
    spikes: Tensor | None  # (T_in + C, *S) signed spikes per step, when asked for


def accumulate(charges: Tensor, *, threshold: Tensor | float, levels: int, correction: int,
               keep_spikes: bool = False) -> AccumulationResult:
    """Phases 1–2 of a PASCAL layer: :func:`pascal_step` over the charges ``u_t`` of the input
    window ``(T_in, *S)``, then ``correction`` more steps at the final charge (no input).

    ``charges[t]`` is the charge after the input of step t (cumulative: ``ψ + L·Σ_{τ≤t} I_τ``).
    """
    if charges.dim() < 1 or charges.shape[0] < 1:
        raise ValueError(f"accumulate: charges must be (T_in, ...) with T_in >= 1, got {tuple(charges.shape)}")
    if correction < 0:
        raise ValueError(f"accumulate: correction must be >= 0, got {correction}")
    count = torch.zeros_like(charges[0])
    positive, negative = torch.zeros_like(count), torch.zeros_like(count)
    history = []
    steps = list(charges) + [charges[-1]] * correction  # correction: the charge no longer changes
    for charge in steps:
        count, spike = pascal_step(charge, count, threshold=threshold, levels=levels)
        positive += spike.clamp(min=0)
        negative -= spike.clamp(max=0)
        if keep_spikes:
            history.append(spike)
    return AccumulationResult(count, positive, negative, torch.stack(history) if keep_spikes else None)


def emission_train(count: Tensor, *, time_steps: int) -> Tensor:
    """Phase 3: ``q`` spikes in the first ``q`` of ``T_l`` steps, ``(T_l, *S)`` of 0/1 floats."""
    check_time_steps(time_steps)
    steps = torch.arange(1, time_steps + 1, device=count.device, dtype=count.dtype)
    return (steps.view(time_steps, *([1] * count.dim())) <= count.unsqueeze(0)).to(count.dtype)


def emitted_count(count: Tensor, *, step: int) -> Tensor:
    """Spikes sent by the end of emission step ``step`` (1-based): ``min(step, q)``."""
    return count.clamp(max=step)


class PipelinedOnlyError(ValueError):
    """A PASCAL layer was asked to run in the step-synchronous serial simulator."""


class PascalNeuron(SpikingNeuron):
    """A PASCAL layer (parameters θ, ψ = θ/2 as buffers; ``levels`` L kept as extra state).

    ``time_steps``: a PASCAL layer's timing is its own — it integrates its input window,
    corrects, and emits over ``T_l = L`` steps — so the argument the converted graph threads
    to every neuron does not change any value here. The parallel :meth:`forward` is QCFS at
    the layer's own L (bit for bit, for any ``time_steps``); :meth:`spike_count` is the
    emitted (net) count ``q``; :meth:`spike_train` is the emission train ``(L, B, ...)``.

    The serial form is the layer-pipelined simulation of :mod:`parasnn.methods.pascal`, which calls
    :meth:`charge`, :meth:`accumulate` and :meth:`emitted_value`. :meth:`initial_state` /
    :meth:`step` raise :class:`PipelinedOnlyError`: the step-synchronous simulator of
    :mod:`parasnn.simulation.forms` runs every layer at every step on a constant input, which a layer
    that waits for its whole input cannot follow.
    """

    _resizable = ("threshold", "shift")

    def __init__(self, *, threshold: Tensor | float, levels: int):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"PascalNeuron: levels must be an integer >= 1, got {levels!r}")
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if not bool((threshold > 0).all()):
            raise ValueError(f"PascalNeuron: threshold must be > 0, got {threshold}")
        self.levels = levels
        self.register_buffer("threshold", threshold)
        self.register_buffer("shift", threshold * 0.5)  # ψ = θ/2, computed as QCFS computes it

    @classmethod
    def from_qcfs(cls, activation: nn.Module) -> "PascalNeuron":
        """The PASCAL layer equivalent to a QCFS activation (same θ, same L)."""
        require_qcfs(activation, converter="PascalNeuron.from_qcfs")
        return cls(threshold=activation.effective_threshold().detach(), levels=activation.levels)

    # -- parallel ---------------------------------------------------------------------
    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        check_time_steps(time_steps)
        return qcfs(current, threshold=per_channel(self.threshold, current), levels=self.levels,
                    shift=per_channel(self.shift, current))

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        check_time_steps(time_steps)
        return qcfs_level(current, threshold=per_channel(self.threshold, current), levels=self.levels,
                          shift=per_channel(self.shift, current))

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        return emission_train(self.spike_count(current, time_steps=time_steps), time_steps=self.levels)

    # -- pieces of the pipelined serial form ----------------------------------------------
    def charge(self, current: Tensor) -> Tensor:
        """``u = L·z + ψ`` for the accumulated input current ``z`` (shape ``(B, ...)``)."""
        return membrane_charge(current, levels=self.levels, shift=per_channel(self.shift, current))

    def accumulate(self, charges: Tensor, *, correction: int, keep_spikes: bool = False) -> AccumulationResult:
        """Integration over ``charges`` ``(T_in, B, ...)`` then ``correction`` steps."""
        return accumulate(charges, threshold=per_channel(self.threshold, charges[0]), levels=self.levels,
                          correction=correction, keep_spikes=keep_spikes)

    def emitted_value(self, count: Tensor) -> Tensor:
        """Value carried by ``count`` emitted spikes, ``count·(θ/L)`` — QCFS's own expression."""
        return level_value(count, amplitude=per_channel(self.threshold, count), time_steps=self.levels)

    def initial_state(self, current: Tensor, *, time_steps: int):
        raise PipelinedOnlyError(
            "PASCAL layers wait for their whole input before they emit, so they do not run in the "
            "step-synchronous serial simulation; use parasnn.methods.pascal.pascal_simulation (or "
            "`parasnn evaluate --method pascal`). The parallel form (network(x, time_steps=T)) works.")

    def step(self, state, current: Tensor, *, time_steps: int):
        self.initial_state(current, time_steps=time_steps)  # raises

    # -- checkpoints ------------------------------------------------------------------
    def get_extra_state(self):
        return {"levels": self.levels}

    def set_extra_state(self, state):
        self.levels = int(state["levels"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_resizable(self, state_dict, prefix, self._resizable)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        theta = "per-channel" if self.threshold.dim() else f"threshold={float(self.threshold):.4g}"
        return f"levels={self.levels}, {theta}"
