"""Stage bn, stage 1 of [STDC]: spatial recalibration of BatchNorm (§4.2, Alg. 2,
docs/maths.md §4b), on the DA-QCFS ANN at the target T — the parallel network itself.

Data in, data out: :func:`fit_batchnorm` returns the learned
:class:`~.terms.BatchNormTerms` (γ, β and the running statistics of every BN layer) and a
report; it trains a private working copy, never the network passed in.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork, device_of
from ..neurons.base import per_channel
from ..neurons.if_neuron import IFNeuron
from ..neurons.integrate_fire import effective_threshold
from ..neurons.qcfs import level_value
from ..neurons.surrogate import floor_ste
from ..runtime import distributed
from ..runtime.progress import progress
from .baseline import Swapped, batchnorms, if_neurons, working_copy
from .batches import batch_order, inputs_of, labelled, materialise, measuring_sample
from .config import CalibrationConfig, CalibrationError, QuantizerGradient, Stage
from .guard import keep_if_better
from .objective import TeacherLogits, calibration_loss, require_teacher
from .optim import stage_optimizer
from .report import StageReport, timed
from .terms import BatchNormTerms, apply_terms

__all__ = ["fit_batchnorm", "recalibrate_batchnorm", "BN_TERMS"]

BN_TERMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class _TrainModeBatchNorm(nn.Module):
    """A BatchNorm layer ``bn`` (its parameters and buffers shared) that normalises with the
    statistics of the batch in train mode and with its running ones in eval mode.
    ``cumulative`` averages the running statistics over all batches seen (``momentum=None``,
    Eq. 10 of [STDC]) instead of the layer's exponential average. Subclasses say how the
    batch's statistics are taken (:meth:`normalise`)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, *, cumulative: bool):
        super().__init__()
        self.bn, self.cumulative = bn, cumulative

    def forward(self, x: Tensor) -> Tensor:
        return self.normalise(x) if self.bn.training else self.bn(x)

    def normalise(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class _SynchronisedBatchNorm(_TrainModeBatchNorm):
    """Train-mode statistics of the *global* batch, for more than one process
    (:func:`_train_mode_batchnorm` picks it under torchrun).

    Mean and variance per channel are summed over processes with a differentiable all-reduce
    (``torch.nn.SyncBatchNorm`` runs on GPUs only), so each process normalises exactly as one
    process would on the union of the shards, gradients included.
    """

    def normalise(self, x: Tensor) -> Tensor:
        bn = self.bn
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        count = distributed.all_reduce_sum(torch.tensor([float(x.numel() // x.shape[1])]))[0].item()
        mean = distributed.all_reduce_sum_differentiable(x.sum(dim=dims)) / count
        centred = x - mean.view(shape)
        variance = distributed.all_reduce_sum_differentiable((centred * centred).sum(dim=dims)) / count
        with torch.no_grad():
            factor = _running_factor(bn, cumulative=self.cumulative)
            unbiased = variance.detach() * (count / max(count - 1.0, 1.0))
            bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = centred * torch.rsqrt(variance + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y


class _LocalBatchNorm(_TrainModeBatchNorm):
    """The same for one process: PyTorch's own batch norm (one fused kernel forward and
    backward, where :class:`_SynchronisedBatchNorm` takes about ten operations; on the
    ResNet-20 a stage-bn step costs 11 % less), with the same running-statistics rule.
    The two agree to rounding (tested)."""

    def normalise(self, x: Tensor) -> Tensor:
        bn = self.bn
        with torch.no_grad():
            factor = _running_factor(bn, cumulative=self.cumulative)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=True, momentum=factor,
                            eps=bn.eps)


def _running_factor(bn: nn.modules.batchnorm._BatchNorm, *, cumulative: bool) -> float:
    """Counts one more batch and returns the weight of its statistics in the running ones:
    ``1/n`` (the average over the n batches seen, Eq. 10) when ``cumulative`` or the layer
    has no momentum, the layer's momentum otherwise."""
    bn.num_batches_tracked += 1
    return 1.0 / float(bn.num_batches_tracked) if cumulative or bn.momentum is None else bn.momentum


def _train_mode_batchnorm(bn: nn.modules.batchnorm._BatchNorm, *, cumulative: bool) -> nn.Module:
    """``bn`` normalising with the statistics of the global batch: synchronised over
    processes under torchrun, PyTorch's batch norm in one process."""
    kind = _SynchronisedBatchNorm if distributed.is_distributed() else _LocalBatchNorm
    return kind(bn, cumulative=cumulative)


class _StraightThroughNeuron(nn.Module):
    """The DA-QCFS activation of one IF neuron with a straight-through gradient.

    Forward: the neuron's parallel output ``clip(floor(y), 0, T)·θ_post/T`` with
    ``y = (T(z + ψ_DA) + ψ)/(θ − Δb)``, evaluated as ``floor(clip(y, 0, T))`` — the same
    integers, since the bounds are integers. Backward: ``floor`` passes the gradient
    unchanged and the clip blocks it outside ``0 < y < T``, so ``∂a/∂z = θ_post/(θ − Δb)``
    over the whole clipping range. (Clipping *after* the floor, as ``spike_count`` and the
    reference QCFS code do, would also block the lowest and highest level — at T = 2 all but
    one level, at T = 1 everything.)
    """

    def __init__(self, neuron: IFNeuron):
        super().__init__()
        self.neuron = neuron

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        n = self.neuron
        time_steps = n.levels_at(time_steps)  # a neuron keeping L < T levels counts at L steps
        threshold = effective_threshold(per_channel(n.threshold, current), per_channel(n.temporal_bias, current))
        charge = time_steps * (current + per_channel(n.pre_shift, current)) + per_channel(n.shift, current)
        count = floor_ste(torch.clamp(charge / threshold, 0, time_steps))
        return level_value(count, amplitude=per_channel(n.amplitude, current), time_steps=time_steps)


def _statistics_pass(network: SpikingNetwork, norms: dict[str, nn.Module], batches: Sequence, *,
                     time_steps: int, description: str) -> None:
    """Re-estimate every BN's running statistics (of the working copy ``network``) as the
    average over ``batches`` (Eq. 10)."""
    device = device_of(network)
    for bn in norms.values():
        bn.reset_running_stats()
        bn.train()
    wrappers = {path: _train_mode_batchnorm(bn, cumulative=True) for path, bn in norms.items()}
    with Swapped(network.graph_module, wrappers), torch.no_grad():
        for batch in progress(batches, description=description):
            network.graph_module(time_steps, inputs_of(batch).to(device))
    for bn in norms.values():
        bn.eval()


def fit_batchnorm(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                  teacher: TeacherLogits | None = None) -> tuple[BatchNormTerms, StageReport]:
    """Stage 1 as data: BatchNorm statistics and affine terms re-fitted on the DA-QCFS ANN at
    ``config.time_steps`` (the parallel network itself). Everything else is frozen;
    ``network`` is not modified.

    1. affine fine-tuning: γ, β only, on ``config.objective`` (the labels' cross-entropy, or
       the distillation loss to ``teacher``'s logits), AdamW without weight decay, linear
       warm-up + cosine, ``config.bn.epochs`` passes, batch statistics in the forward pass;
    2. a statistics pass: running mean / variance = the average over a sample of the
       training batches of the batch statistics (Eq. 10), layers in train mode, no
       gradients — after the fine-tuning, so that they describe the network with its final
       γ, β (the fine-tuning changed the inputs of every later BN).

    Alg. 2 also re-estimates the statistics *before* the fine-tuning. That pass is skipped:
    the fine-tuning normalises with batch statistics and step 2 starts from reset running
    statistics, so nothing it computed would survive (tested: the terms do not depend on the
    running statistics the network came with). A BN layer without γ, β gets step 2 only.

    Gradient through the neurons (``config.bn.gradient``): by default the IF neuron's own
    triangle surrogate, the gradient of stage 2 (decision, measured: see docs/decisions.md);
    ``QuantizerGradient.STRAIGHT_THROUGH`` uses the straight-through estimator of the
    DA-QCFS ANN instead (see :class:`_StraightThroughNeuron`). The forward values are the
    same either way. Under torchrun the statistics are those of the global batch and
    gradients are averaged.
    """
    batches = materialise(batches, where="stage bn")
    require_teacher(config.objective, teacher, where="stage bn")
    working = working_copy(network)
    norms = batchnorms(working)
    if not norms:
        raise CalibrationError("stage bn recalibrates BatchNorm layers, but the network has none "
                               "(was BN folded into the convolutions, or does the model have no BN?); "
                               "drop 'bn' from the stages")
    neurons = if_neurons(working, where="stage bn")
    options, T = config.bn, config.time_steps
    device = device_of(working)
    for parameter in working.parameters():
        parameter.requires_grad_(False)
    affine = [p for bn in norms.values() if bn.affine for p in (bn.weight, bn.bias)]
    for parameter in affine:
        parameter.requires_grad_(True)
    working.eval()
    # Statistics on a random config.statistics_size images (Eq. 10 averages batch statistics,
    # which settle long before a training set ends); γ and β learn on every batch.
    measured = measuring_sample(batches, images=config.statistics_size, batch_size=config.batch_size, seed=config.seed)
    replacements: dict[str, nn.Module] = {path: _train_mode_batchnorm(bn, cumulative=False)
                                          for path, bn in norms.items()}
    if options.gradient is QuantizerGradient.STRAIGHT_THROUGH:
        replacements.update({path: _StraightThroughNeuron(neuron) for path, neuron in neurons.items()})
    losses: list[float] = []
    steps = 0
    if affine:
        optimizer, schedule = stage_optimizer(affine, learning_rate=options.learning_rate,
                                              final_learning_rate=options.final_learning_rate,
                                              total_steps=options.epochs * len(batches),
                                              warmup_fraction=config.warmup_fraction)
        for bn in norms.values():
            bn.train()
        with Swapped(working.graph_module, replacements):
            for epoch in range(options.epochs):
                order = batch_order(len(batches), seed=config.seed, epoch=epoch)
                for index in progress(order, description=f"stage bn T={T} {epoch + 1}/{options.epochs}"):
                    inputs, labels = labelled(batches[index], where="stage bn")
                    inputs = inputs.to(device)
                    logits = working.graph_module(T, inputs)
                    loss = calibration_loss(logits, labels.to(device), teacher and teacher(index, inputs),
                                            objective=config.objective, temperature=config.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    distributed.average_gradients(affine)
                    optimizer.step()
                    schedule.step()
                    losses.append(float(loss.detach()))
                    steps += 1
        for bn in norms.values():
            bn.eval()
    seconds: dict[str, dict[str, float]] = {}
    with timed(seconds, "statistics"):
        _statistics_pass(working, norms, measured, time_steps=T, description=f"stage bn statistics T={T}")
    terms = BatchNormTerms({path: {name: getattr(bn, name).detach().clone() for name in BN_TERMS
                                   if getattr(bn, name, None) is not None}
                            for path, bn in norms.items()})
    details = {"layers": len(norms), "gradient": options.gradient.value, "objective": config.objective.value,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "seconds": seconds}
    return terms, StageReport(Stage.BN.value, steps=steps, details=details)


def recalibrate_batchnorm(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                          validation: Sequence = (), teacher: TeacherLogits | None = None
                          ) -> tuple[SpikingNetwork, StageReport]:
    """Stage 1 on a network: :func:`fit_batchnorm`, :func:`~.terms.apply_terms`, then the guard
    (:func:`~.guard.keep_if_better` on ``validation``). Returns a new network, every BN in eval
    mode and nothing trainable."""
    terms, report = fit_batchnorm(network, batches, config=config, teacher=teacher)
    return keep_if_better(network, apply_terms(network, terms), report, list(validation), config=config)
