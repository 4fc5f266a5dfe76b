"""The parallel integrate-and-fire neuron (FS-PC) as a layer, with the calibration terms of
the main paper (MATH.md §3–4). Maths in :mod:`parasnn.neurons.integrate_fire`.

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

Serial form: soft-reset IF with input ``I_t + ψ_DA``, initial potential ψ, threshold and
reset ``θ − Δb``, spikes of size ``θ_post``. For a constant input current it emits
exactly the parallel count (the temporal bias is a uniform lowering of the firing ladder,
so its serial counterpart is the lowered threshold); for currents that vary in time the
two differ — that is the serial conversion error this library reports.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SpikingNeuron, load_resizable, per_channel
from .integrate_fire import (_check_time_steps, _effective_threshold, if_step, parallel_if_count,
                             spike_train)
from .qcfs import QCFS, level_value

__all__ = ["IFNeuron"]


class IFNeuron(SpikingNeuron):
    """Parallel IF neuron layer. Build it from an activation with :meth:`from_qcfs`."""

    _resizable = ("threshold", "shift", "amplitude", "pre_shift", "temporal_bias")

    def __init__(self, *, threshold: Tensor | float, shift: Tensor | float | None = None,
                 amplitude: Tensor | float | None = None, surrogate_width: float = 1.0):
        super().__init__()
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
        """The neuron that reproduces a QCFS activation exactly at ``T = L``."""
        if not isinstance(activation, QCFS):
            raise TypeError(
                f"IFNeuron.from_qcfs converts QCFS activations, got {type(activation).__name__}; "
                "ReLU networks are quantized first (parasnn.convert(..., calibration_data=...))")
        threshold = activation.effective_threshold().detach()
        return cls(threshold=threshold, shift=threshold * 0.5)

    # -- parallel ---------------------------------------------------------------------
    def _cumulative(self, current: Tensor, time_steps: int) -> Tensor:
        # Adding a zero pre-shift is exact, so an uncalibrated neuron stays bit-equal to QCFS.
        return time_steps * (current + per_channel(self.pre_shift, current))

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        _check_time_steps(time_steps)
        return parallel_if_count(
            self._cumulative(current, time_steps),
            threshold=per_channel(self.threshold, current),
            shift=per_channel(self.shift, current),
            time_steps=time_steps,
            temporal_bias=per_channel(self.temporal_bias, current),
            surrogate_width=self.surrogate_width,
        )

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        count = self.spike_count(current, time_steps=time_steps)
        return level_value(count, amplitude=per_channel(self.amplitude, current), time_steps=time_steps)

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        return spike_train(self.spike_count(current, time_steps=time_steps), time_steps=time_steps)

    # -- serial -----------------------------------------------------------------------
    def _firing_threshold(self, like: Tensor) -> Tensor:
        return _effective_threshold(per_channel(self.threshold, like), per_channel(self.temporal_bias, like))

    def initial_state(self, current: Tensor, *, time_steps: int) -> Tensor:
        return torch.zeros_like(current) + per_channel(self.shift, current)

    def step(self, state: Tensor, current: Tensor, *, time_steps: int) -> tuple[Tensor, Tensor]:
        current = current + per_channel(self.pre_shift, current)
        potential, spikes = if_step(state, current, threshold=self._firing_threshold(current))
        return potential, spikes * per_channel(self.amplitude, current)

    # -- checkpoints ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_resizable(self, state_dict, prefix, self._resizable)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shape = "per-channel" if self.threshold.dim() else f"threshold={float(self.threshold):.4g}"
        calibrated = self.pre_shift.dim() or self.temporal_bias.dim()
        return shape + (", calibrated" if calibrated else "")
