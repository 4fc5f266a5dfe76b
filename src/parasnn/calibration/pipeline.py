"""Distribution-aware parallel calibration ([STDC], docs/maths.md §4): DA-QCFS error
calibration, stage 1 BatchNorm recalibration, stage 2 temporal bias correction — for QCFS
and ReLU backbones. This module runs the stages in order; each stage has its own module.

The pipeline ([STDC], Alg. 1–3)::

    ANN (QCFS or ReLU)
      │  ReLU sites: thresholds θ recorded on the training data (ThresholdStatistic: a
      │  percentile or the running max) → QCFS / clipped ReLU          (§4d, baseline.py)
      ▼
    parallel SNN (IFNeuron at every site)  = FS-PC baseline         convert_for_calibration
      │  Stage.DA    per-channel ψ_DA, φ_DA from layer-wise mean errors  da.py        (§4a, "†")
      │  Stage.BN    BN statistics + affine terms on the DA-QCFS ANN    batchnorm.py (§4b, Alg. 2)
      │  Stage.BIAS  per-channel Δb through the parallel rule           bias.py      (§4c, Alg. 3)
      ▼
    calibrated SpikingNetwork (one pass at T, memory independent of T)

Any subset of the three stages runs, always in the order da → bn → bias
(:data:`~.config.STAGE_ORDER`), each looked up in :data:`STAGES`. A stage is data in, data
out: it returns the terms it learned (:mod:`.terms`) and a report; :func:`~.terms.apply_terms`
makes the next network; the guard (:mod:`.guard`) may keep the previous one. Nothing passed
in is ever modified.

Which data does what (issue 14): the stages *learn* on the training data; the held-apart
slice only *judges* — stage bias's early stopping, the guard, and the reports. Pass both
(``calibrate(model, held_apart, training_data=train)``), or one set of batches that is then
split at random (``config.validation_fraction`` held out, seeded by ``config.seed``).

Symbols ↔ names
---------------
==============  ======================  ===============================================
paper           here                    shape / where
==============  ======================  ===============================================
T               ``time_steps``          the target latency; the calibrated network is tuned for it
θ (θ_pre)       ``IFNeuron.threshold``  scalar per layer (from QCFS, or recorded for ReLUs)
ψ_DA            ``IFNeuron.pre_shift``  ``(C,)`` after Stage.DA (scalar 0 otherwise)
θ_post = θ+φ_DA ``IFNeuron.amplitude``  ``(C,)`` after Stage.DA (scalar θ otherwise)
Δb              ``IFNeuron.temporal_bias``  ``(C,)`` ``nn.Parameter`` after Stage.BIAS
α               ``DAConfig.momentum``   0.99 (FS-PC reference code)
g_OA            :class:`OriginalActivation`     QCFS at its own L, or clamp(x, 0, θ) for ReLUs
==============  ======================  ===============================================

More than one process (``torchrun``): every statistic (threshold recording, DA errors,
BN batch statistics, validation losses) and every gradient is summed over processes with
:mod:`parasnn.runtime.distributed`; each process passes its own shard of the batches (a
distributed sampler), the global batch being the union of the shards.

For code written against parasnn ≤ 0.1 this module also re-exports the names that used to
live here (``from parasnn.calibration.pipeline import CalibrationConfig`` keeps working).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

from torch import nn

from ..conversion.network import SpikingNetwork, device_of
from ..runtime.schedule import warmup_cosine
from .baseline import OriginalActivation, batchnorms, convert_for_calibration
from .batches import any_batches, as_sequence, labelled, materialise, on_device, split_batches
from .batchnorm import fit_batchnorm
from .bias import correct_temporal_bias, fit_temporal_bias
from .config import (STAGE_ORDER, CalibrationConfig, CalibrationError, QuantizerGradient, Stage,
                     parse_stages)
from .da import calibrate_distribution, fit_distribution, layer_errors
from .batchnorm import recalibrate_batchnorm
from .guard import evaluate_loss, judge, keep_if_better
from .objective import Objective, TeacherLogits
from .report import CalibrationReport, StageReport, timed
from .terms import Terms, apply_terms

__all__ = [
    "StageContext", "StageRule", "STAGES", "run_stages", "calibrate", "calibrate_with_report",
    # re-exported from the stage modules (their home since the split of this module)
    "Stage", "STAGE_ORDER", "parse_stages", "QuantizerGradient", "CalibrationConfig", "CalibrationError",
    "OriginalActivation", "StageReport", "CalibrationReport", "convert_for_calibration", "calibrate_distribution",
    "recalibrate_batchnorm", "correct_temporal_bias", "layer_errors", "split_batches", "evaluate_loss",
    "warmup_cosine", "keep_if_better", "any_batches",
]


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage may use: the options, the original activations (for da), and the
    held-out batches (for stage bias's early stopping), and the ANN's cached logits when the
    objective is distillation (``None`` otherwise)."""

    config: CalibrationConfig
    originals: dict[str, OriginalActivation] | None
    validation: Sequence
    teacher: TeacherLogits | None = None


@dataclasses.dataclass(frozen=True)
class StageRule:
    """How the pipeline runs one stage: ``fit(network, batches, context) -> (terms, report)``;
    ``guarded``: the result is kept only if it does not raise the held-out loss."""

    fit: Callable[[SpikingNetwork, Sequence, StageContext], tuple[Terms, StageReport]]
    guarded: bool


STAGES: dict[Stage, StageRule] = {
    Stage.DA: StageRule(lambda network, batches, context: fit_distribution(
        network, batches, originals=context.originals, config=context.config), guarded=True),
    Stage.BN: StageRule(lambda network, batches, context: fit_batchnorm(
        network, batches, config=context.config, teacher=context.teacher), guarded=True),
    # Stage bias selects its biases on the held-out batches itself (Δb = 0 included).
    Stage.BIAS: StageRule(lambda network, batches, context: fit_temporal_bias(
        network, batches, config=context.config, validation=context.validation, teacher=context.teacher),
        guarded=False),
}


def run_stages(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
               originals: dict[str, OriginalActivation] | None = None, validation: Iterable | None = None,
               from_relu: bool = False, teacher: nn.Module | None = None) -> tuple[SpikingNetwork, CalibrationReport]:
    """Apply ``config.stages`` to a converted network, in the order da → bn → bias.

    ``batches`` train the stages, ``validation`` (optional) is held out: stage 2 stops early
    on it, the guard judges on it and the report gives its loss / accuracy before and after
    each stage. ``originals`` (from :func:`convert_for_calibration`) is needed for Stage.DA;
    ``teacher`` (the ANN) for ``config.objective = Objective.DISTILLATION``.
    Returns a new network; ``network`` is not modified.
    """
    batches = materialise(batches, where="calibration")
    validation = as_sequence(validation)  # a streamed folder's batches stay on disk
    report = CalibrationReport(config=config, from_relu=from_relu)
    if Stage.DA in config.stages and originals is None:
        raise CalibrationError("stage da needs the original activation of every site (convert_for_calibration)")
    if Stage.BN in config.stages and not batchnorms(network):
        # Checked before any work is done, so a long run does not fail at its second stage.
        raise CalibrationError("stage bn recalibrates BatchNorm layers, but the network has none; "
                               "drop 'bn' from the stages")
    if batches and any(stage in config.stages for stage in (Stage.BN, Stage.BIAS)):
        labelled(batches[0], where="stages bn and bias")  # labels are needed: fail before any work
    if config.objective is Objective.DISTILLATION and teacher is None and \
            any(stage in config.stages for stage in (Stage.BN, Stage.BIAS)):
        raise CalibrationError("objective 'distillation' learns from the ANN's logits: pass run_stages(..., "
                               "teacher=ann), or use objective 'labels'")
    has_validation = any_batches(validation)
    context = StageContext(config=config, originals=originals, validation=validation,
                           teacher=TeacherLogits(teacher) if teacher is not None else None)

    def measure(candidate: SpikingNetwork) -> dict[str, float] | None:
        return evaluate_loss(candidate, validation, time_steps=config.time_steps) if has_validation else None

    # `current` is the held-out result of `network`. Each network is measured once: the guard
    # and the report share the result (a held-out pass costs ~20 training steps).
    with timed(report.seconds, "held-out fs-pc"):
        current = measure(network)
    if current is not None:
        report.validation["fs-pc"] = current
    for stage in config.stages:
        rule = STAGES[stage]
        with timed(report.seconds, stage.value):
            terms, stage_report = rule.fit(network, batches, context)
            candidate = apply_terms(network, terms)
        with timed(report.seconds, f"held-out {stage.value}"):
            result = measure(candidate)
        if rule.guarded and config.revert_if_worse and result is not None:
            candidate, stage_report = judge(network, candidate, stage_report, loss_before=current["loss"],
                                            loss_after=result["loss"])
            if stage_report.details["reverted"]:
                result = current  # candidate is now a copy of network
        network, current = candidate, result
        report.stages.append(stage_report)
        if current is not None:
            report.validation[stage.value] = current
    return network, report


def calibrate_with_report(model: nn.Module, calibration_data: Iterable, *,
                          config: CalibrationConfig = CalibrationConfig(), leaf_modules: tuple[type, ...] = (),
                          training_data: Iterable | None = None) -> tuple[SpikingNetwork, CalibrationReport]:
    """:func:`calibrate`, also returning the :class:`CalibrationReport`."""
    device = device_of(model)
    batches = on_device(materialise(calibration_data, where="calibrate"), device)
    if training_data is None:
        training, validation = split_batches(batches, validation_fraction=config.validation_fraction,
                                             seed=config.seed)
    else:
        training = on_device(materialise(training_data, where="calibrate (training data)"), device)
        validation = batches
    seconds: dict[str, dict[str, float]] = {}
    with timed(seconds, "convert"):
        network, originals = convert_for_calibration(model, training, config=config, leaf_modules=leaf_modules)
    from_relu = any(original.levels is None for original in originals.values())
    network, report = run_stages(network, training, config=config, originals=originals, validation=validation,
                                 from_relu=from_relu,
                                 teacher=model if config.objective is Objective.DISTILLATION else None)
    report.seconds = {**seconds, **report.seconds}  # the conversion first
    return network, report


def calibrate(model: nn.Module, calibration_data: Iterable, *, config: CalibrationConfig = CalibrationConfig(),
              leaf_modules: tuple[type, ...] = (), training_data: Iterable | None = None) -> SpikingNetwork:
    """Convert ``model`` (QCFS or ReLU ANN) into a parallel SNN calibrated for ``config.time_steps``.

    Args:
        model: the trained ANN; not modified.
        calibration_data: batches of ``(inputs, labels)`` — a held-apart slice of the training
            set, never the test set. With ``training_data`` it only judges (stage bias's
            early stopping, the guard, the report). Without, ``validation_fraction`` of its
            batches, drawn at random (``config.seed``), are held out that way and the rest
            train. Inputs alone suffice when the stages are a subset of {da}. Under
            torchrun: this process's shard (see :mod:`parasnn.runtime.distributed`).
        training_data: batches the thresholds and the stages learn on — the training set as
            [STDC] uses it (all of it, or a random sample: ``config.training_size``).
        config: :class:`CalibrationConfig` (stages, T, per-stage options, …).

    Returns:
        a new :class:`SpikingNetwork`; ``network(x, time_steps=config.time_steps)`` runs it.

    Raises:
        CalibrationError: empty data, T < 1, stage bn without BatchNorm layers, …
        ConversionError: the model cannot be converted (see :mod:`parasnn.conversion.graph`).
    """
    return calibrate_with_report(model, calibration_data, config=config, leaf_modules=leaf_modules,
                                 training_data=training_data)[0]
