"""Stage bias, stage 2 of [STDC]: per-channel temporal bias correction (§4.3, Alg. 3,
docs/maths.md §4c).

Data in, data out: :func:`fit_temporal_bias` returns the learned
:class:`~.terms.BiasTerms` (Δb per neuron) and a report; it trains a private working copy.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork, device_of, observe
from ..runtime import distributed
from ..runtime.progress import progress
from .baseline import folded_working_copy, if_neurons
from .batches import any_batches, as_sequence, batch_order, inputs_of, labelled, materialise
from .config import CalibrationConfig, Stage
from .guard import evaluate_loss
from .objective import TeacherLogits, calibration_loss, require_teacher
from .optim import stage_optimizer
from .report import StageReport, timed
from .terms import BiasTerms, apply_terms

__all__ = ["fit_temporal_bias", "correct_temporal_bias"]


class _AtTimeSteps(nn.Module):
    """``network`` called as a plain module on inputs, at a fixed T (for :func:`observe`)."""

    def __init__(self, network: SpikingNetwork, time_steps: int):
        super().__init__()
        self.network, self.time_steps = network, time_steps

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x, time_steps=self.time_steps)


def _neuron_channels(network: SpikingNetwork, batch, *, time_steps: int) -> dict[str, int]:
    """Channel count C of every neuron's input (axis 1; 1 for a ``(B,)`` input)."""
    channels: dict[str, int] = {}

    def recorder(path):
        def hook(module, args, output):
            channels[path] = args[0].shape[1] if args[0].dim() > 1 else 1
        return hook

    runner = _AtTimeSteps(network, time_steps).train(network.training)  # observe restores this mode
    observe(runner, [inputs_of(batch)[:1]],
            [(neuron, recorder(path)) for path, neuron in network.neurons()])
    return channels


def fit_temporal_bias(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                      validation: Iterable | None = None, teacher: TeacherLogits | None = None
                      ) -> tuple[BiasTerms, StageReport]:
    """Stage 2 as data: one Δb per channel in every neuron (``temporal_bias``, ``(C,)``),
    trained at ``config.time_steps`` through the parallel rule
    ``s_t = H((U + ψ)/(T − t + 1) + Δb − θ)`` with the triangle surrogate, on
    ``config.objective`` of the time-averaged logits (the labels' cross-entropy, or the
    distillation loss to ``teacher``'s logits; :mod:`.objective`). Everything else is frozen, BN included (eval
    mode, folded into the convolutions of the working copy: :func:`~.baseline.folded_working_copy`);
    ``network`` is not modified.

    AdamW (no weight decay), linear warm-up + cosine, gradient-norm clipping at
    ``config.bias.clip_norm``; every ``config.bias.interval(steps)`` steps (about 20
    validations per stage unless ``validation_interval`` is given) the loss on ``validation``
    is measured and training stops after ``patience`` validations without improvement. The
    biases with the best validation loss are returned (Δb = 0 counts: if training never
    beats the network as it came, the biases it came with are returned). Without
    validation batches it trains for ``config.bias.epochs`` and returns the last biases.

    The held-out losses that choose the biases are those of the folded working copy (the
    biases it came with included); the report carries no ``validation``, so the pipeline
    measures the network the biases go into itself.

    Memory: the neuron's backward pass loops over the T steps on tensors of its own shape,
    so training stores what the ANN's backward would, whatever T.
    """
    batches = materialise(batches, where="stage bias")
    require_teacher(config.objective, teacher, where="stage bias")
    validation = as_sequence(validation)  # a streamed folder's batches stay on disk
    working = folded_working_copy(network)  # BN frozen (folded) with its running statistics; dropout off
    neurons = if_neurons(working, where="stage bias")
    options, T = config.bias, config.time_steps
    device = device_of(working)
    channels = _neuron_channels(working, batches[0], time_steps=T)
    for parameter in working.parameters():
        parameter.requires_grad_(False)
    biases: dict[str, nn.Parameter] = {}
    for path, neuron in neurons.items():
        current = neuron.temporal_bias.detach()
        value = current.expand(channels[path]).clone() if current.dim() == 0 else current.clone()
        neuron.temporal_bias = nn.Parameter(value.to(device), requires_grad=True)  # Δb, (C,)
        biases[path] = neuron.temporal_bias
    parameters = list(biases.values())

    def snapshot() -> dict[str, Tensor]:
        return {path: b.detach().clone() for path, b in biases.items()}

    has_validation = any_batches(validation)
    history: list[dict[str, float]] = []
    best_state, best, since_best = snapshot(), None, 0
    seconds: dict[str, dict[str, float]] = {}  # of the early-stopping passes, for the report
    if has_validation:
        with timed(seconds, "held-out"):
            best = evaluate_loss(working, validation, time_steps=T)
        history.append({"step": 0, "loss": best["loss"], "accuracy": best["accuracy"]})
    total = options.epochs * len(batches)
    interval = options.interval(total)
    optimizer, schedule = stage_optimizer(parameters, learning_rate=options.learning_rate,
                                          final_learning_rate=options.final_learning_rate, total_steps=total,
                                          warmup_fraction=config.warmup_fraction)
    steps, stopped, losses = 0, False, []
    for epoch in range(options.epochs):
        order = batch_order(len(batches), seed=config.seed + 1, epoch=epoch)
        for index in progress(order, description=f"stage bias T={T} {epoch + 1}/{options.epochs}"):
            inputs, labels = labelled(batches[index], where="stage bias")
            inputs = inputs.to(device)
            logits = working(inputs, time_steps=T)  # time-averaged logits, one pass
            loss = calibration_loss(logits, labels.to(device), teacher and teacher(index, inputs),
                                    objective=config.objective, temperature=config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(parameters)
            torch.nn.utils.clip_grad_norm_(parameters, options.clip_norm)
            optimizer.step()
            schedule.step()
            steps += 1
            losses.append(float(loss.detach()))
            if has_validation and (steps % interval == 0 or steps == total):
                with timed(seconds, "held-out"):
                    current = evaluate_loss(working, validation, time_steps=T)
                history.append({"step": steps, "loss": current["loss"], "accuracy": current["accuracy"]})
                if current["loss"] < best["loss"]:
                    best_state, best, since_best = snapshot(), current, 0
                else:
                    since_best += 1
                    if since_best >= options.patience:
                        stopped = True
                        break
        if stopped:
            break
    learned = best_state if has_validation else snapshot()
    details = {"objective": config.objective.value, "stopped_early": stopped, "validation_interval": interval,
               "best_validation_loss": best["loss"] if has_validation else None,
               "validations": history, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None,
               "mean_abs_bias": float(torch.cat([b.flatten() for b in learned.values()]).abs().mean()),
               "parameters": int(sum(b.numel() for b in learned.values())), "seconds": seconds}
    return BiasTerms(learned), StageReport(Stage.BIAS.value, steps=steps, details=details)


def correct_temporal_bias(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                          validation: Iterable | None = None, teacher: TeacherLogits | None = None
                          ) -> tuple[SpikingNetwork, StageReport]:
    """Stage 2 on a network: :func:`fit_temporal_bias` then :func:`~.terms.apply_terms`.
    Returns a new network (Δb frozen, ``requires_grad=False``). Stage bias needs no guard:
    it already keeps its best held-out biases."""
    terms, report = fit_temporal_bias(network, batches, config=config, validation=validation, teacher=teacher)
    return apply_terms(network, terms), report
