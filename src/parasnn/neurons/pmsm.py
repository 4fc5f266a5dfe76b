"""PMSM — polarity multi-spike mapping ([PMSM], docs/maths.md §6): a signed quantized activation
on the ANN side, a signed multi-spike neuron on the SNN side, and the information-entropy
initialisation of the quantizer. Maths as pure functions; the modules only hold parameters.
The quantizer's entropy-based initialisation is in :mod:`parasnn.neurons.pmsm_initialisation`.

Symbols and argument names
--------------------------
=======================  ========  ===========================================================
argument                 symbol    meaning
=======================  ========  ===========================================================
``threshold``            θ         spike threshold = size of one spike = quantization step
``scale``                r         the quantizer's learnable half-width, ``θ = 2r/(L⁺ + L⁻)``
``positive_levels``      L⁺        most positive spikes per step (levels above 0)
``negative_levels``      L⁻        most negative spikes per step (levels below 0)
``time_steps``           T         simulation window
``charge``               U         integrated input current (``T·z`` for a time average z)
``quantized``            —         the activation rounds (PMSM network) or not (the
                                   full-precision network it is quantized from)
=======================  ========  ===========================================================

Shapes: every function works elementwise on any shape ``S`` (``(B, C, H, W)`` or
``(B, F)``); parameters are Python numbers or 0-dim tensors (one θ, L⁺, L⁻ per layer).
Time, where it appears, is the first axis: a spike train is ``(T, *S)``.

The signed quantizer (ANN side)
-------------------------------
::

    n(x) = clip(floor(x/θ + 1/2), −L⁻, L⁺)          integer level, round half up
    a(x) = θ · n(x)                                   value in {−L⁻θ, …, 0, …, L⁺θ}

It keeps the negative half of a pre-activation that QCFS (``clip(·, 0, L)``) discards: a
layer has ``L⁺ + L⁻ + 1`` levels instead of ``L + 1``. The step θ is shared by both
polarities (one uniform grid), so the neuron below is a single integrator; how the level
budget splits between the polarities (L⁺ vs L⁻) is chosen per layer by the entropy rule
(:func:`parasnn.neurons.pmsm_initialisation.entropy_initialisation`). Training uses the straight-through estimator for floor:
``∂a/∂x = 1`` inside ``[−L⁻θ, L⁺θ]``, 0 outside, and ``∂a/∂θ = n − x/θ`` inside, ``n``
outside (the LSQ step gradient).

Its **full-precision** form (``quantized=False``) is the same activation without rounding,
the signed clip ``clip(x, −L⁻θ, L⁺θ)`` (``[−r, r]`` for the symmetric split it is trained
with) — a Hardtanh whose range r is learnt per layer.
Decision (the paper's text we have does not say what the full-precision network is): the
PMSM network starts from a network trained with this signed clip after every BatchNorm.
A ReLU network would make the signed quantizer pointless (its negative half carries
nothing the next layer was trained to read); the signed clip is the function whose
quantization *is* the signed quantizer (its ``θ → 0`` limit at a fixed range), so
quantization, not a change of nonlinearity, is the only thing fine-tuning must absorb
(measurements: docs/decisions.md).

The signed multi-spike neuron (SNN side)
----------------------------------------
Serial form, per step (state: membrane potential ``v``, ``v₀ = 0``)::

    v ← v + I_t
    n_t = clip(floor(v/θ + 1/2), −L⁻, L⁺)            signed multi-spike: |n_t| spikes of sign n_t
    v ← v − n_t·θ                                     soft reset by what was emitted
    output at step t: n_t·θ

* **T = 1 is lossless**: ``v = I`` and the neuron emits ``n(I)`` spikes: exactly the signed
  quantizer, the same floating-point expression, so a converted network at T = 1 equals its
  quantized ANN bit for bit (the residual ``v − n·θ`` is simply kept).
* **T > 1 refines from the residual**: each later step re-quantizes the carried residual
  plus the new current (first-order sigma-delta). For a constant current ``I`` the residual
  stays in ``[−θ/2, θ/2)`` whenever ``−L⁻θ ≤ I ≤ L⁺θ``, so the per-step clip never binds
  there and the cumulative count after t steps is ``C_t = clip(floor(t·I/θ + 1/2), −tL⁻, tL⁺)``
  (also outside the range: the neuron saturates at L⁺ or L⁻ spikes every step).

Parallel form (one pass, time-averaged current ``z``; ``U = T·z``)::

    N = clip(floor(U/θ + 1/2), −T·L⁻, T·L⁺)          signed spike count over the window
    output = N · θ/T                                  time-averaged output

i.e. the input quantized on a grid ``T`` times finer over the same range ``[−L⁻θ, L⁺θ]``.
For a constant current it is *exactly* the serial neuron's count, and its train
``n_t = C_t − C_{t−1}`` (all spikes of one sign) is what :func:`polarity_spike_train` returns.
At T = 1 it is the signed quantizer. The grid at T contains the grid at 1, so for every
input the distance of the T-step output to the full-precision signed clip is at most that of
the T = 1 output: **refinement never makes a layer's error worse** (and is at most θ/(2T)
inside the range). In a network, layers after the first receive currents that vary from
step to step; the serial network then differs from the parallel one (as for IF neurons)
except at T = 1, where both equal the quantized ANN.

Spike counting: a multi-spike of ``n`` carries ``|n|`` spikes (energy counts each one), a
negative spike counts as one spike. The parallel ``spike_count`` is the signed net count N;
for a constant current all spikes share its sign, so ``|N|`` is the number of spikes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ActivationQuantizer, SpikingNeuron
from .integrate_fire import check_time_steps
from .qcfs import level_value
from .surrogate import floor_ste

__all__ = ["polarity_level", "polarity_quantize", "signed_clip", "parallel_polarity_count", "polarity_spike_train",
           "multi_spike_step", "simulate_multi_spike", "PolarityQuantizer", "PolarityMultiSpikeNeuron", "MIN_SCALE",
           "check_levels"]

# r (hence θ) must stay > 0 while it is learnt; the same floor as QCFS's threshold.
MIN_SCALE = 1e-3


def check_levels(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def polarity_level(charge: Tensor, *, threshold: Tensor | float, negative_levels: int | float,
                   positive_levels: int | float) -> Tensor:
    """Integer level ``clip(floor(U/θ + 1/2), −L⁻, L⁺)`` (a float tensor, shape of ``charge``).

    The one expression behind the quantizer (``U = x``), the serial step (``U = v``) and the
    parallel count (``U = T·z`` with bounds ``T·L±``): sharing it is what makes T = 1 exact.
    ``floor`` carries a straight-through gradient.
    """
    return torch.clamp(floor_ste(charge / threshold + 0.5), -negative_levels, positive_levels)


def polarity_quantize(x: Tensor, *, threshold: Tensor | float, negative_levels: int,
                      positive_levels: int) -> Tensor:
    """Signed quantizer ``a(x) = n(x)·θ``, computed as the parallel neuron's output at T = 1
    (:func:`~parasnn.neurons.qcfs.level_value` with ``T = 1``), so both sides evaluate the
    same floating-point expression."""
    level = polarity_level(x, threshold=threshold, negative_levels=negative_levels, positive_levels=positive_levels)
    return level_value(level, amplitude=threshold, time_steps=1)


def parallel_polarity_count(charge: Tensor, *, threshold: Tensor | float, negative_levels: int,
                            positive_levels: int, time_steps: int) -> Tensor:
    """Signed spike count of the parallel neuron over ``T`` steps from the charge ``U = T·z``:
    ``N = clip(floor(U/θ + 1/2), −T·L⁻, T·L⁺)``, shape of ``charge``. At ``T = 1`` (``U = z``)
    this is :func:`polarity_level`, i.e. the quantizer's level."""
    check_time_steps(time_steps)
    return polarity_level(charge, threshold=threshold, negative_levels=time_steps * negative_levels,
                          positive_levels=time_steps * positive_levels)


def polarity_spike_train(current: Tensor, *, threshold: Tensor | float, negative_levels: int, positive_levels: int,
                         time_steps: int) -> Tensor:
    """The parallel neuron's train ``(T, *S)`` for a time-averaged current ``z`` of shape ``S``:
    signed multi-spikes ``n_t = C_t − C_{t−1}`` with ``C_t = clip(floor(t·z/θ + 1/2), −t·L⁻, t·L⁺)``
    — what the serial neuron emits for the constant current ``z``. ``Σ_t n_t`` is the
    parallel count (``C_T`` is evaluated as ``T·z`` exactly like it)."""
    check_time_steps(time_steps)
    cumulative = [torch.zeros_like(current)]
    for step in range(1, time_steps + 1):
        cumulative.append(polarity_level(step * current, threshold=threshold, negative_levels=step * negative_levels,
                                         positive_levels=step * positive_levels))
    cumulative = torch.stack(cumulative)  # (T + 1, *S)
    return cumulative[1:] - cumulative[:-1]


def multi_spike_step(potential: Tensor, current: Tensor, *, threshold: Tensor | float, negative_levels: int,
                     positive_levels: int) -> tuple[Tensor, Tensor]:
    """One serial step: ``v ← v + I``; ``n = clip(floor(v/θ + 1/2), −L⁻, L⁺)``; ``v ← v − n·θ``.
    Returns ``(new_potential, n)``; ``n`` is the signed number of spikes (a float tensor)."""
    potential = potential + current
    level = polarity_level(potential, threshold=threshold, negative_levels=negative_levels,
                           positive_levels=positive_levels)
    return potential - level * threshold, level


def simulate_multi_spike(currents: Tensor, *, threshold: Tensor | float, negative_levels: int,
                         positive_levels: int) -> Tensor:
    """Run :func:`multi_spike_step` over currents ``(T, *S)`` from ``v₀ = 0``; signed spikes ``(T, *S)``."""
    potential = torch.zeros_like(currents[0])
    trains = []
    for current in currents:
        potential, level = multi_spike_step(potential, current, threshold=threshold,
                                            negative_levels=negative_levels, positive_levels=positive_levels)
        trains.append(level)
    return torch.stack(trains)


def signed_clip(x: Tensor, *, threshold: Tensor, negative_levels: int, positive_levels: int) -> Tensor:
    """Full-precision signed clip ``clip(x, −L⁻θ, L⁺θ)``, differentiable in ``x`` and ``θ``."""
    return torch.minimum(torch.maximum(x, -negative_levels * threshold), positive_levels * threshold)


class PolarityQuantizer(ActivationQuantizer):
    """PMSM's signed activation, full precision or quantized (see the module docstring).

    The learnable parameter is the **scale** r, half the width of the range: the step is
    ``θ = 2r/(L⁺ + L⁻)`` and the range ``[−L⁻θ, L⁺θ]`` (``[−r, r]`` when ``L⁺ = L⁻``). Learning
    r rather than θ keeps its gradient (a sum over every element of the layer) from moving a
    small step by a large fraction of itself in one update (LSQ scales that gradient for the
    same reason); moving the level split L⁺/L⁻ keeps the width 2r.

    Args:
        levels: L⁺, the levels above zero (and L⁻ too unless ``negative_levels`` is given).
        scale: initial r (the full-precision signed clip's half-range).
        negative_levels: L⁻ (default: ``levels``).
        quantized: round to the grid (the PMSM network) or not (``False``: the signed clip of
            the full-precision network, the form :class:`~parasnn.zoo.models.ActivationKind`
            ``SIGNED`` builds for training).

    ``positive_levels``, ``negative_levels`` and ``quantized`` are kept in the state dict
    (extra state), so a checkpoint restores the form and the level split on its own.
    """

    def __init__(self, *, levels: int = 4, scale: float = 1.0, negative_levels: int | None = None,
                 quantized: bool = True):
        super().__init__()
        self.positive_levels = check_levels(levels, "PolarityQuantizer: levels")
        self.negative_levels = check_levels(levels if negative_levels is None else negative_levels,
                                             "PolarityQuantizer: negative_levels")
        if self.positive_levels + self.negative_levels < 1:
            raise ValueError("PolarityQuantizer: at least one level is needed (levels + negative_levels >= 1)")
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
            raise ValueError(f"PolarityQuantizer: scale must be a finite number > 0, got {scale!r}")
        self.quantized = bool(quantized)
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def threshold(self) -> Tensor:
        """The step θ = 2r/(L⁺ + L⁻) (r clamped at :data:`MIN_SCALE`): the spike threshold and
        spike size of the neuron that replaces this activation."""
        return self.scale.clamp(min=MIN_SCALE) * (2.0 / (self.positive_levels + self.negative_levels))

    def forward(self, x: Tensor) -> Tensor:
        threshold = self.threshold()
        if self.quantized:
            return polarity_quantize(x, threshold=threshold, negative_levels=self.negative_levels,
                                     positive_levels=self.positive_levels)
        return signed_clip(x, threshold=threshold, negative_levels=self.negative_levels,
                           positive_levels=self.positive_levels)

    def get_extra_state(self):
        return {"positive_levels": self.positive_levels, "negative_levels": self.negative_levels,
                "quantized": self.quantized}

    def set_extra_state(self, state):
        self.positive_levels = int(state["positive_levels"])
        self.negative_levels = int(state["negative_levels"])
        self.quantized = bool(state["quantized"])

    def extra_repr(self) -> str:
        form = "quantized" if self.quantized else "full precision"
        return (f"{form}, levels=(-{self.negative_levels}, +{self.positive_levels}), "
                f"scale={float(self.scale.detach()):.4g}")


class PolarityMultiSpikeNeuron(SpikingNeuron):
    """The signed multi-spike neuron of PMSM (module docstring): one threshold θ (a 0-dim
    buffer; spike size too) and at most L⁺ positive / L⁻ negative spikes per step (extra
    state, so a checkpoint restores them). Build it with :meth:`from_quantizer`.

    Parallel: time-averaged current ``z`` ``(B, ...)`` → ``N·θ/T`` ``(B, ...)``.
    Serial: state is the membrane potential ``(B, ...)``, ``v₀ = 0``; output ``n_t·θ``.
    """

    def __init__(self, *, threshold: Tensor | float, positive_levels: int, negative_levels: int):
        super().__init__()
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if threshold.dim() != 0 or not bool(threshold > 0):
            raise ValueError(f"PolarityMultiSpikeNeuron: threshold must be one number > 0, got {threshold}")
        self.register_buffer("threshold", threshold)
        self.positive_levels = check_levels(positive_levels, "PolarityMultiSpikeNeuron: positive_levels")
        self.negative_levels = check_levels(negative_levels, "PolarityMultiSpikeNeuron: negative_levels")

    @classmethod
    def from_quantizer(cls, activation) -> "PolarityMultiSpikeNeuron":
        """The neuron that reproduces a :class:`PolarityQuantizer` exactly at T = 1.

        A full-precision quantizer (``quantized=False``) converts too: the neuron realises its
        quantized form at the same θ and levels (the training-free baseline; ``parasnn pmsm``
        initialises and fine-tunes them first)."""
        if not isinstance(activation, PolarityQuantizer):
            raise TypeError(f"the PMSM neuron converts PolarityQuantizer activations (ActivationKind.SIGNED, "
                            f"quantized by parasnn pmsm), got {type(activation).__name__}")
        return cls(threshold=activation.threshold().detach(), positive_levels=activation.positive_levels,
                   negative_levels=activation.negative_levels)

    def _levels(self) -> dict:
        return {"negative_levels": self.negative_levels, "positive_levels": self.positive_levels}

    # -- parallel ---------------------------------------------------------------------
    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        return parallel_polarity_count(time_steps * current, threshold=self.threshold, time_steps=time_steps,
                                       **self._levels())

    @staticmethod
    def parallel_output(current: Tensor, *, time_steps: int, threshold: Tensor, negative_levels: int,
                        positive_levels: int) -> Tensor:
        """``N·θ/T`` with ``N = clip(floor(T·z/θ + 1/2), −T·L⁻, T·L⁺)``: the parallel forward's
        maths (the reference of the fused kernel in :mod:`parasnn.neurons.fused`)."""
        count = parallel_polarity_count(time_steps * current, threshold=threshold, time_steps=time_steps,
                                        negative_levels=negative_levels, positive_levels=positive_levels)
        return level_value(count, amplitude=threshold, time_steps=time_steps)

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        return self.parallel_output(current, time_steps=time_steps, threshold=self.threshold, **self._levels())

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        return polarity_spike_train(current, threshold=self.threshold, time_steps=time_steps, **self._levels())

    # -- serial -----------------------------------------------------------------------
    def initial_state(self, current: Tensor, *, time_steps: int) -> Tensor:
        return torch.zeros_like(current)

    def step(self, state: Tensor, current: Tensor, *, time_steps: int) -> tuple[Tensor, Tensor]:
        potential, level = multi_spike_step(state, current, threshold=self.threshold, **self._levels())
        # n·(θ/1): the quantizer's and the T = 1 parallel output's own expression.
        return potential, level_value(level, amplitude=self.threshold, time_steps=1)

    def spikes_in(self, output: Tensor) -> Tensor:
        """A multi-spike of ``n`` counts as ``|n|`` spikes."""
        return torch.round(output.abs() / self.threshold)

    # -- checkpoints ------------------------------------------------------------------
    def get_extra_state(self):
        return self._levels()

    def set_extra_state(self, state):
        self.negative_levels = int(state["negative_levels"])
        self.positive_levels = int(state["positive_levels"])

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}, levels=(-{self.negative_levels}, +{self.positive_levels})"
