"""Stage da, the paper's "†": DA-QCFS error calibration ([STDC] Alg. 1 stage II,
docs/maths.md §4a).

Why the parallel SNN *is* the DA-QCFS ANN: an :class:`~parasnn.neurons.IFNeuron` run at
``T`` on the time-averaged current ``z`` returns
``((θ + φ_DA)/T)·clip(floor((T·(z + ψ_DA) + θ/2)/θ), 0, T)``, the ``a_DA`` of docs/maths.md
§4a with ``L = T`` ([STDC] eq. 4). So the stage acts directly on the converted network
evaluated at the target ``T``.

Data in, data out: :func:`fit_distribution` returns the learned :class:`~.terms.DATerms`
(ψ_DA and θ + φ_DA per neuron) and a report. The running estimates live in the
:class:`DASite` objects of the pass; the neurons (of the stage's own copy of the network)
are called with them as explicit arguments (``torch.func.functional_call``), so no neuron
buffer is assigned by the stage.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..conversion.network import SpikingNetwork, device_of
from ..neurons.if_neuron import IFNeuron
from ..runtime import distributed
from ..runtime.progress import progress
from .baseline import OriginalActivation, Swapped, if_neurons
from .batches import inputs_of, materialise, measuring_sample
from .config import CalibrationConfig, CalibrationError, Stage
from .guard import keep_if_better
from .report import StageReport
from .terms import DATerms, apply_terms

__all__ = ["DASite", "fit_distribution", "calibrate_distribution", "layer_errors"]


def _channel_sums(x: Tensor) -> Tensor:
    """Per-channel sums over batch and positions, with the element count appended: ``(C + 1,)``."""
    dims = [0] + list(range(2, x.dim()))
    sums = x.sum(dim=dims) if x.dim() > 1 else x.sum().reshape(1)
    return torch.cat([sums.double(), torch.tensor([x.numel() / max(1, sums.numel())], dtype=torch.float64,
                                                     device=x.device)])


def _channel_mean(x: Tensor) -> Tensor:
    """``μ(·)`` of Alg. 1: per-channel mean over batch and positions, over all processes, ``(C,)``."""
    totals = distributed.all_reduce_sum(_channel_sums(x))
    return (totals[:-1] / totals[-1]).to(x.dtype)


class DASite(nn.Module):
    """One activation site during DA calibration.

    It receives the current of both models stacked on the batch axis — rows ``[:B]`` from the
    DA model (the SNN at T), rows ``[B:]`` from the original-activation model — and returns
    both outputs stacked the same way, so a single pass of the converted graph runs the two
    models side by side, layer by layer, as the FS-PC reference implementation does.

    State (its own, passed to the neuron explicitly): ``pre_shift`` ψ_DA and ``amplitude``
    θ + φ_DA, starting from the given values. With ``update`` it moves them after each batch
    (Alg. 1, lines 10–13); either way it records the mean errors it saw.
    """

    def __init__(self, neuron: IFNeuron, original: OriginalActivation, *, momentum: float, debias: bool,
                 update: bool, pre_shift: Tensor, amplitude: Tensor):
        super().__init__()
        self.neuron, self.original = neuron, original
        self.momentum, self.debias, self.update = momentum, debias, update
        self.pre_shift, self.amplitude = pre_shift.detach().clone(), amplitude.detach().clone()
        self.pre_average: Tensor | None = None  # raw running averages (before bias correction)
        self.post_average: Tensor | None = None
        self.updates = 0
        self.base_amplitude = self.amplitude.clone()  # θ: θ_post = θ + φ_DA
        self.errors: list[tuple[float, float]] = []  # (mean |e_pre|, mean |e_post|) over channels, per batch
        self.error_sums: list[Tensor] = []  # Σ over batches of the per-channel (e_pre, e_post), (2, C)

    def _estimate(self, average: Tensor) -> Tensor:
        if self.debias:
            return average / (1.0 - self.momentum ** self.updates)
        return average

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        half = current.shape[0] // 2
        z_da, z_original = current[:half], current[half:]
        # e_pre = μ(W r_OA − W r_DA): the DA model's pre-activation lags the original's by this much.
        e_pre = _channel_mean(z_original - z_da)
        # What remains of it once the neuron adds ψ_DA (measured before this batch's update).
        residual_pre = e_pre - self.pre_shift
        if self.update:
            if self.pre_average is None:
                self.pre_average = torch.zeros_like(e_pre)
                self.post_average = torch.zeros_like(e_pre)
            self.updates += 1
            self.pre_average = self.momentum * self.pre_average + (1 - self.momentum) * e_pre
            self.pre_shift = self._estimate(self.pre_average)  # ψ_DA, (C,)
        a_da = functional_call(self.neuron, {"pre_shift": self.pre_shift, "amplitude": self.amplitude}, (z_da,),
                               {"time_steps": time_steps})
        a_original = self.original(z_original)
        e_post = _channel_mean(a_original - a_da)
        if self.update:
            # As in Alg. 1 (and the reference code) e_post is measured with the current φ_DA, so
            # the fixed point φ = e_post(φ) shrinks the error to e₀/(1 + mean rate) rather than to
            # 0 — a damped correction; ψ_DA, whose error does not depend on it, converges fully.
            self.post_average = self.momentum * self.post_average + (1 - self.momentum) * e_post
            self.amplitude = self.base_amplitude + self._estimate(self.post_average)  # θ + φ_DA
        self.errors.append((float(residual_pre.abs().mean()), float(e_post.abs().mean())))
        pair = torch.stack([residual_pre.expand_as(e_post), e_post]).detach()
        self.error_sums = [pair if not self.error_sums else self.error_sums[0] + pair]
        return torch.cat([a_da, a_original])


def _dual_pass(working: SpikingNetwork, sites: dict[str, DASite], batches: Sequence, *, time_steps: int,
               description: str) -> None:
    """Run ``batches`` through ``working`` (a stage's own copy) with the sites in place of its neurons."""
    device = device_of(working)
    with Swapped(working.graph_module, sites), torch.no_grad():
        for batch in progress(batches, description=description):
            x = inputs_of(batch).to(device)
            working.graph_module(time_steps, torch.cat([x, x]))


def layer_errors(network: SpikingNetwork, originals: dict[str, OriginalActivation], batches: Iterable, *,
                 time_steps: int) -> dict[str, tuple[float, float]]:
    """Layer-wise mean errors between the original-activation model and ``network`` at
    ``time_steps``, without changing anything: ``{path: (mean |e_pre|, mean |e_post|)}``.

    ``e_pre = μ(z_orig − (z_DA + ψ_DA))``: the pre-activation error that remains once the
    neuron adds its pre-shift; ``e_post = μ(a_orig − a_DA)``: the output error. Per channel
    each is averaged over all ``batches`` (the systematic error DA calibration targets;
    per-batch sampling noise averages out), then its absolute value over channels."""
    batches = materialise(batches, where="layer_errors")
    working = copy.deepcopy(network)  # the sites call its neurons; network itself is never touched
    neurons = if_neurons(working, where="layer_errors")
    sites = {path: DASite(neuron, originals[path], momentum=0.0, debias=False, update=False,
                          pre_shift=neuron.pre_shift, amplitude=neuron.amplitude)
             for path, neuron in neurons.items()}
    _dual_pass(working, sites, batches, time_steps=time_steps, description="layer errors")
    errors = {}
    for path, site in sites.items():
        mean = site.error_sums[0] / len(site.errors)  # (2, C): batches of equal weight
        errors[path] = (float(mean[0].abs().mean()), float(mean[1].abs().mean()))
    return errors


def fit_distribution(network: SpikingNetwork, batches: Iterable, *, originals: dict[str, OriginalActivation],
                     config: CalibrationConfig) -> tuple[DATerms, StageReport]:
    """Stage DA as data: the per-channel ψ_DA (``pre_shift``) and θ + φ_DA (``amplitude``) of
    every neuron, fitted at ``config.time_steps`` on ``batches``, and the report.

    Starts from ψ_DA = φ_DA = 0 (Alg. 1 stage I). For every batch, layer by layer in graph
    order, the original-activation model and the DA model run side by side and
    ``ψ_DA ← α·ψ_DA + (1−α)·e_pre``, ``φ_DA ← α·φ_DA + (1−α)·e_post`` (per channel, ``(C,)``).
    ``network`` is not modified.

    What to expect: ψ_DA removes the mean pre-activation error (tested), φ_DA only damps the
    output error (the rule's fixed point, see :class:`DASite`), and φ acts on firing neurons
    only. Matching the *mean* pre-activation is not always what accuracy needs: at small T,
    with most neurons silent, the mean is set by the silent majority (measured: see
    docs/decisions.md), which is why the guard may undo this stage.
    """
    batches = materialise(batches, where="stage da")
    working = copy.deepcopy(network)  # the sites call its neurons; network itself is never touched
    neurons = if_neurons(working, where="stage da")
    missing = [path for path in neurons if path not in originals]
    if missing:
        raise CalibrationError(f"stage da: no original activation for neuron layers {missing[:5]}")
    sites = {path: DASite(neuron, originals[path], momentum=config.da.momentum, debias=config.da.debias,
                          update=True, pre_shift=torch.zeros_like(neuron.pre_shift),  # stage I: ψ_DA = 0
                          amplitude=neuron.threshold)  # φ_DA = 0, θ_post = θ
             for path, neuron in neurons.items()}
    # The running averages forget all but the last ~1/(1 − α) batches: a random
    # config.statistics_size images of the training batches suffice.
    measured = measuring_sample(batches, images=config.statistics_size, batch_size=config.batch_size, seed=config.seed)
    for epoch in range(config.da.epochs):
        _dual_pass(working, sites, measured, time_steps=config.time_steps,
                   description=f"stage da T={config.time_steps} {epoch + 1}/{config.da.epochs}")
    terms = DATerms(pre_shift={path: site.pre_shift.detach().clone() for path, site in sites.items()},
                    amplitude={path: site.amplitude.detach().clone() for path, site in sites.items()})
    details = {"layers": {path: {"first_error": list(site.errors[0]), "last_error": list(site.errors[-1]),
                                 "mean_abs_pre_shift": float(terms.pre_shift[path].abs().mean()),
                                 "mean_post_offset": float((terms.amplitude[path] - neurons[path].threshold).mean())}
                          for path, site in sites.items()}}
    return terms, StageReport(Stage.DA.value, steps=len(measured) * config.da.epochs, details=details)


def calibrate_distribution(network: SpikingNetwork, batches: Iterable, *, validation: Sequence = (),
                           originals: dict[str, OriginalActivation], config: CalibrationConfig
                           ) -> tuple[SpikingNetwork, StageReport]:
    """Stage DA on a network: :func:`fit_distribution`, :func:`~.terms.apply_terms`, then the
    guard (:func:`~.guard.keep_if_better` on ``validation``). Returns a new network."""
    terms, report = fit_distribution(network, batches, originals=originals, config=config)
    return keep_if_better(network, apply_terms(network, terms), report, list(validation), config=config)
