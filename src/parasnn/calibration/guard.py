"""The guard: calibration must not make a network worse on data it did not train on.

Decision (the paper runs every stage unconditionally; see docs/decisions.md): a stage whose
result has a higher loss on the held-out batches than its input is undone.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

from ..conversion.network import SpikingNetwork, device_of
from ..runtime import distributed
from .baseline import fast_view
from .batches import any_batches, labelled
from .config import CalibrationConfig
from .report import StageReport

__all__ = ["evaluate_loss", "judge", "keep_if_better"]


def evaluate_loss(network: SpikingNetwork, batches: Sequence, *, time_steps: int) -> dict[str, float]:
    """Mean cross-entropy and accuracy of the parallel network at ``time_steps`` on labelled
    ``batches`` (summed over processes): ``{"loss", "accuracy", "samples"}``. The network's
    train/eval mode is restored afterwards."""
    device = device_of(network)
    was_training = network.training
    network.eval()
    fast = fast_view(network)  # the same logits, bit for bit, in fewer passes
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            inputs, labels = labelled(batch, where="validation")
            inputs, labels = inputs.to(device), labels.to(device)
            logits = fast(inputs, time_steps=time_steps)
            totals += torch.tensor([float(F.cross_entropy(logits, labels, reduction="sum")),
                                    float((logits.argmax(1) == labels).sum()), float(labels.numel())],
                                   dtype=torch.float64)
    network.train(was_training)
    totals = distributed.all_reduce_sum(totals)
    samples = float(totals[2])
    if samples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "samples": 0.0}
    return {"loss": float(totals[0]) / samples, "accuracy": float(totals[1]) / samples, "samples": samples}


def judge(before: SpikingNetwork, after: SpikingNetwork, report: StageReport, *, loss_before: float,
          loss_after: float) -> tuple[SpikingNetwork, StageReport]:
    """The guard's verdict on two held-out losses already measured: ``after``, or a copy of
    ``before`` when ``loss_after`` is higher; the losses and the verdict go into
    ``report.details``."""
    reverted = loss_after > loss_before
    report.details.update(validation_loss_before=loss_before, validation_loss_after=loss_after, reverted=reverted)
    return (copy.deepcopy(before).eval() if reverted else after), report


def keep_if_better(before: SpikingNetwork, after: SpikingNetwork, report: StageReport, validation: Sequence, *,
                   config: CalibrationConfig) -> tuple[SpikingNetwork, StageReport]:
    """The guard of ``config.revert_if_worse``: ``after`` unless its loss on the held-out
    ``validation`` batches (summed over processes) is higher than ``before``'s (:func:`judge`).
    Without held-out batches ``after`` stands."""
    if not (config.revert_if_worse and any_batches(validation)):
        return after, report
    return judge(before, after, report,
                 loss_before=evaluate_loss(before, validation, time_steps=config.time_steps)["loss"],
                 loss_after=evaluate_loss(after, validation, time_steps=config.time_steps)["loss"])
