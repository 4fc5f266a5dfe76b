"""QCFS — the quantization-clip-floor-shift activation of the ANN side (docs/maths.md §1).

::

    q(x) = clip(floor((L·x + ψ)/θ), 0, L)         integer level in {0..L}
    a(x) = q(x) · (θ/L)

``levels`` is the paper's L (T̃), ``threshold`` θ (learnable, per layer), ``shift`` ψ
(θ/2: mid-bin rounding). ``q`` is computed by :func:`~parasnn.neurons.integrate_fire.spike_count`
with ``U = L·x`` and ``T = L`` — the parallel IF neuron's own count — and ``a`` by
:func:`level_value`, the same function the IF neuron uses for its output. That is why a
converted QCFS network at ``T = L`` reproduces the ANN bit for bit: both sides evaluate
the same floating-point expressions.

Inference (no autograd graph needed) evaluates the same operations in place on one buffer,
so it gives the same bits as the differentiable path at a fraction of the memory traffic.

Training uses the straight-through estimator for ``floor`` (so ``∂a/∂x = 1`` inside the
clipping range, 0 outside) and learns θ; θ is clamped at :data:`MIN_THRESHOLD` so it
stays > 0.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ActivationQuantizer, per_channel
from .integrate_fire import ParameterCache, spike_count

__all__ = ["qcfs", "qcfs_level", "level_value", "QCFS", "MIN_THRESHOLD", "require_qcfs", "check_levels"]

MIN_THRESHOLD = 1e-3


def check_levels(levels, *, where: str = "QCFS") -> int:
    """``levels`` (L) if it is an integer >= 1 (a bool, float, 0 or negative L would give NaN
    or meaningless outputs), else a ValueError naming ``where``."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"{where}: levels must be an integer >= 1, got {levels!r}")
    return levels


def level_value(count: Tensor, *, amplitude: Tensor | float, time_steps: int) -> Tensor:
    """Time-averaged output of ``count`` spikes of size ``amplitude`` over ``time_steps``
    steps: ``count · (amplitude / T)``. Shared by QCFS (``T = L``) and the IF neuron."""
    return count * (amplitude / time_steps)


def qcfs_level(x: Tensor, *, threshold: Tensor | float, levels: int, shift: Tensor | float) -> Tensor:
    """Integer QCFS level ``clip(floor((L·x + ψ)/θ), 0, L)`` (float tensor)."""
    return spike_count(levels * x, threshold=threshold, shift=shift, time_steps=levels)


def qcfs(x: Tensor, *, threshold: Tensor | float, levels: int, shift: Tensor | float) -> Tensor:
    """QCFS activation ``(θ/L)·q(x)``; shapes follow ``x``, parameters broadcast."""
    return level_value(qcfs_level(x, threshold=threshold, levels=levels, shift=shift),
                       amplitude=threshold, time_steps=levels)


class QCFS(ActivationQuantizer):
    """QCFS activation with a learnable per-layer threshold.

    Args:
        levels: quantization levels L (per layer; PASCAL's adaptive layerwise activation
            gives different layers different L).
        threshold: initial θ (paper: 8, or a high percentile of ReLU activations).

    ``levels`` is kept in the state dict (extra state), so a checkpoint restores per-layer
    L on its own.

    ``stand_in`` (default False): this QCFS only stands in for a ReLU of an off-the-shelf
    network (:func:`parasnn.conversion.stages.quantize_relus` sets it), so its L shapes a proxy
    and is not the network's own; its spiking neuron then has T levels at every T, where the
    neuron of a trained QCFS layer keeps L levels at T > L (docs/maths.md §3a). Conversion
    sets it again whenever it rebuilds a stand-in, so it is not part of the state dict.
    """

    stand_in = False

    def __init__(self, *, levels: int = 8, threshold: float | Tensor = 8.0):
        super().__init__()
        check_levels(levels)
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if threshold.dim() > 1 or not bool((threshold > 0).all()):
            raise ValueError(f"QCFS: threshold must be > 0, a scalar or one value per channel (C,), got {threshold!r}")
        self.levels = levels
        # Scalar for a trained QCFS layer; (C,) for a ReLU's stand-in with per-channel θ
        # (conversion's ThresholdScope.CHANNEL), broadcast over the channel axis 1.
        self.threshold = nn.Parameter(threshold)

    def effective_threshold(self) -> Tensor:
        """θ as used in the forward pass (clamped at :data:`MIN_THRESHOLD`)."""
        return self.threshold.clamp(min=MIN_THRESHOLD)

    def shift(self) -> Tensor:
        """ψ = θ/2."""
        return self.effective_threshold() * 0.5

    def forward(self, x: Tensor) -> Tensor:
        stored = self._parameters.get("threshold")  # the tensor itself, also under torch.fx tracing
        if stored is None:  # re-registered as a buffer (frozen): the general lookup
            stored = self.threshold
        if (isinstance(x, Tensor) and x.dtype == stored.dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or stored.requires_grad))):
            # Inference: qcfs()'s operations, in its order, on one buffer updated in place.
            shift, threshold, scale = self._inference_constants()
            if stored.dim():  # one θ per channel: broadcast over axis 1
                shift, threshold, scale = (per_channel(value, x) for value in (shift, threshold, scale))
            return (x * self.levels).add_(shift).div_(threshold).floor_().clamp_(0, self.levels).mul_(scale)
        threshold = self.effective_threshold()
        if stored.dim():
            threshold = per_channel(threshold, x)
        return qcfs(x, threshold=threshold, levels=self.levels, shift=threshold * 0.5)

    def _inference_constants(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ψ, θ, θ/L)`` as :meth:`forward`'s differentiable path computes them, cached until
        θ or L changes."""
        def compute():
            threshold = self.effective_threshold()
            return threshold * 0.5, threshold, threshold / self.levels

        cache = self.__dict__.get("_parameter_cache")
        if cache is None:
            cache = self.__dict__["_parameter_cache"] = ParameterCache()
        return cache.get((self.threshold,), self.levels, compute)

    def get_extra_state(self):
        return {"levels": self.levels}

    def set_extra_state(self, state):
        # A saved state is checked like the constructor's argument: L = 0 or -3 from a damaged
        # checkpoint would otherwise give NaN logits without a word.
        if not isinstance(state, dict) or "levels" not in state:
            raise ValueError(f"QCFS: extra state must be a dict with 'levels', got {state!r}")
        levels = state["levels"]
        if isinstance(levels, torch.Tensor) and levels.numel() == 1 and not levels.is_floating_point():
            levels = int(levels)
        self.levels = check_levels(levels, where="QCFS (saved state)")

    def extra_repr(self) -> str:
        if self.threshold.dim() == 0:
            return f"levels={self.levels}, threshold={float(self.threshold):.4g}"
        return f"levels={self.levels}, threshold=per channel {tuple(self.threshold.shape)}"


def require_qcfs(activation: nn.Module, *, converter: str) -> QCFS:
    """``activation`` if it is a :class:`QCFS` module, else a TypeError naming ``converter``
    (e.g. ``"IFNeuron.from_qcfs"``) and what to do with a ReLU network."""
    if not isinstance(activation, QCFS):
        raise TypeError(f"{converter} converts QCFS activations, got {type(activation).__name__}; "
                        "ReLU networks are quantized first (parasnn.conversion.stages(..., calibration_data=...))")
    return activation
