"""What stages bn and bias minimise: the labels' cross-entropy ([STDC]) or the ANN's outputs
(distillation, beyond the paper; docs/maths.md §4e, docs/decisions.md).

[STDC] trains both stages on the cross-entropy of the SNN's time-averaged logits against the
labels. The calibrated SNN, however, is meant to *be* its ANN at a short T: the ANN's whole
output distribution is a richer target than one label per image, and it also tells the
stages which images the ANN itself gets wrong (the SNN need not learn those). With
``Objective.DISTILLATION`` the stages minimise

    τ² · KL( softmax(z_ANN / τ) ‖ softmax(z_SNN / τ) )      (mean over the batch)

with τ = ``temperature``. Nothing about the network or its inference cost changes; only the
gradient that trains the BN affine terms and the temporal biases does. The held-out
judgement (stage bias's early stopping, the guard) stays the labels' cross-entropy in both
cases: it measures what a user cares about.

Pure functions, plus :class:`TeacherLogits`, a cache of the ANN's logits per batch (the
stages visit each batch once per epoch; the ANN's answer does not change).
"""
from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Objective", "calibration_loss", "distillation_loss", "require_teacher", "TeacherLogits"]


class Objective(str, enum.Enum):
    """The training objective of stages bn and bias (``--objective``)."""

    LABELS = "labels"  # cross-entropy against the labels ([STDC] Alg. 2–3)
    DISTILLATION = "distillation"  # KL divergence to the ANN's logits at temperature τ


def distillation_loss(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """``τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ))``, averaged over the batch.

    student, teacher: logits ``(B, K)``. The τ² keeps the gradient's scale independent of τ
    (Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv:1503.02531)."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature ** 2


def calibration_loss(logits: Tensor, labels: Tensor, teacher: Tensor | None, *, objective: Objective,
                     temperature: float) -> Tensor:
    """The loss a training stage minimises for one batch: logits ``(B, K)``, labels ``(B,)``,
    the ANN's logits ``(B, K)`` (needed for ``Objective.DISTILLATION`` only)."""
    if objective is Objective.LABELS:
        return F.cross_entropy(logits, labels)
    require_teacher(objective, teacher, where="calibration_loss")
    return distillation_loss(logits, teacher, temperature=temperature)


def require_teacher(objective: Objective, teacher, *, where: str) -> None:
    """Fail before any work when the distillation objective has no ANN to learn from."""
    if objective is Objective.DISTILLATION and teacher is None:
        raise ValueError(f"{where}: objective 'distillation' learns from the ANN's logits, but no teacher was "
                         "given; pass teacher=TeacherLogits(ann) (calibrate() and run_stages(teacher=ann) do this), "
                         "or use objective 'labels'")


class TeacherLogits:
    """The ANN's logits for batch ``index``, computed once (no gradient, eval mode) and
    cached: a stage that runs E epochs over N batches runs the ANN N times, not E·N. Holds
    N·B·K floats (Fashion-MNIST, all 55 000 training images: 2.2 MB)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.cache: dict[int, Tensor] = {}

    def __call__(self, index: int, inputs: Tensor) -> Tensor:
        if index not in self.cache:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                self.cache[index] = self.model(inputs).detach()
            self.model.train(was_training)
        return self.cache[index]
