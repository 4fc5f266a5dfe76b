"""Options of the calibration pipeline: one dataclass per stage, composed in
:class:`CalibrationConfig` (saved with a calibrated checkpoint as ``config.to_dict()``).

================  =====================  ==========================================
stage             options                paper
================  =====================  ==========================================
da (the "†")      :class:`DAConfig`      [STDC] Alg. 1, docs/maths.md §4a
bn (stage 1)      :class:`BatchNormConfig`  [STDC] §4.2, Alg. 2, docs/maths.md §4b
bias (stage 2)    :class:`BiasConfig`    [STDC] §4.3, Alg. 3, docs/maths.md §4c
================  =====================  ==========================================

Deprecated flat spelling: up to parasnn 0.1 the stage options were flat fields prefixed
``da_``/``bn_``/``bias_`` (``CalibrationConfig(bn_epochs=1, momentum=0.9)``). Those keywords
(:data:`FLAT_NAMES`) are still accepted by the constructor and :meth:`CalibrationConfig.replace`,
and readable as attributes, with a :class:`DeprecationWarning`; saved configurations in the
flat form (``*.config.json``, ``ablation.json``, checkpoints) are converted silently by
:meth:`CalibrationConfig.from_dict`. Measured reasons for the defaults: see docs/decisions.md.
"""
from __future__ import annotations

import dataclasses
import enum
import warnings
from typing import Any, Iterable, Mapping

from ..conversion.stages import BatchNormMode, ConversionConfig, ThresholdScope, ThresholdStatistic
from ..runtime.checks import require_positive_int
from .objective import Objective

__all__ = ["Stage", "STAGE_ORDER", "parse_stages", "QuantizerGradient", "Objective", "CalibrationError", "DAConfig",
           "BatchNormConfig", "BiasConfig", "CalibrationConfig", "FLAT_NAMES", "VALIDATIONS_PER_STAGE"]


class CalibrationError(ValueError):
    """Calibration cannot run as asked (bad options, unusable data or model); the message says why."""


class Stage(str, enum.Enum):
    """The calibration stages, named as on the command line (``--stages da,bn,bias``)."""

    DA = "da"  # DA-QCFS error calibration, the paper's "†" (docs/maths.md §4a)
    BN = "bn"  # stage 1, spatial recalibration of BatchNorm (§4b)
    BIAS = "bias"  # stage 2, temporal bias correction (§4c)


STAGE_ORDER: tuple[Stage, ...] = (Stage.DA, Stage.BN, Stage.BIAS)


def parse_stages(text: str | Iterable[str | Stage]) -> tuple[Stage, ...]:
    """``"da,bn,bias"`` (any subset, any order, ``""``/``"none"`` for none) → stages in
    :data:`STAGE_ORDER`."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(getattr(p, "value", p)) for p in text]
    parts = [p for p in parts if p and p != "none"]
    try:
        chosen = {Stage(p) for p in parts}
    except ValueError:
        bad = [p for p in parts if p not in {s.value for s in Stage}]
        raise CalibrationError(f"unknown calibration stage(s) {bad}; choose from da, bn, bias "
                               "(comma-separated, e.g. da,bn,bias; 'none' for the plain FS-PC conversion)") from None
    return tuple(stage for stage in STAGE_ORDER if stage in chosen)


class QuantizerGradient(str, enum.Enum):
    """Which gradient flows through the quantizer (the neuron) in stage 1.

    ``SURROGATE`` (default): the IF neuron's triangle surrogate of ``Σ_t H(v_t − θ)`` (the
    gradient of stage 2). ``STRAIGHT_THROUGH``: the DA-QCFS ANN's own estimator ([STDC]
    Alg. 2 runs on the DA-QCFS ANN, trained like QCFS): ``∂count/∂U = 1/θ`` wherever
    ``0 < (U+ψ)/θ < T``, zero outside (``floor`` passes gradients, ``clip`` blocks them).
    """

    STRAIGHT_THROUGH = "ste"
    SURROGATE = "surrogate"


def _positive(owner: str, name: str, value) -> None:
    try:
        require_positive_int(value, f"{owner}: {name}")
    except ValueError as error:
        raise CalibrationError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class DAConfig:
    """Stage da (docs/maths.md §4a).

    momentum: α of ``ψ_DA ← α·ψ_DA + (1−α)·e_pre`` (and φ_DA).
    epochs: passes over the training batches.
    debias: divide the running averages by ``1 − α^n`` (Adam's bias correction): an average
        started at 0 reaches only ``1 − α^n`` of the error after n batches, so small
        calibration sets would leave the errors mostly uncorrected.
    """

    momentum: float = 0.99
    epochs: int = 1
    debias: bool = True

    def __post_init__(self):
        _positive("DAConfig", "epochs", self.epochs)
        if not 0 <= self.momentum < 1:
            raise CalibrationError(f"CalibrationConfig: momentum α must be in [0, 1), got {self.momentum!r}")


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """Stage bn (docs/maths.md §4b).

    learning_rate, final_learning_rate: AdamW peak rate, cosine-decayed to the final one.
    epochs: passes of affine fine-tuning over the training batches (paper §4.2: "a few
        epochs"; Alg. 2: one; default one, over the whole training set — docs/decisions.md).
    gradient: :class:`QuantizerGradient` through the neurons (default: the IF neuron's
        triangle surrogate, [STDC] App. C).
    """

    learning_rate: float = 5e-3
    final_learning_rate: float = 5e-4
    epochs: int = 1
    gradient: QuantizerGradient = QuantizerGradient.SURROGATE

    def __post_init__(self):
        try:
            object.__setattr__(self, "gradient", QuantizerGradient(self.gradient))
        except ValueError:
            raise CalibrationError(f"CalibrationConfig: bn_gradient must be 'ste' or 'surrogate', "
                                   f"got {self.gradient!r}") from None
        _positive("BatchNormConfig", "epochs", self.epochs)
        for name in ("learning_rate", "final_learning_rate"):
            if not getattr(self, name) > 0:
                raise CalibrationError(f"BatchNormConfig: {name} must be > 0, got {getattr(self, name)!r}")


# Validations of stage bias when its interval is not given. Patience (5) covers half of them,
# the proportion at which it was tuned (patience 10, 189 steps validated every 10); ten, not
# twenty, because each validation is a pass over the held-out images and twenty of them were a
# fifth of the calibration's time (docs/decisions.md, "Stage 2 patience").
VALIDATIONS_PER_STAGE = 10


@dataclasses.dataclass(frozen=True)
class BiasConfig:
    """Stage bias (docs/maths.md §4c).

    learning_rate, final_learning_rate: AdamW peak and final rate.
    epochs: passes over the training batches (paper: one, the default; early stopping may
        end sooner).
    clip_norm: gradient-norm clipping of the biases.
    patience: validations without improvement before stopping.
    validation_interval: steps between validations; ``None`` (default): the stage's steps
        divided by :data:`VALIDATIONS_PER_STAGE`, so a stage validates about 10 times
        however much data it learns on (docs/decisions.md, "Stage 2 patience").
    """

    learning_rate: float = 2e-2
    final_learning_rate: float = 2e-3
    epochs: int = 1
    clip_norm: float = 1.0
    patience: int = 5
    validation_interval: int | None = None

    def __post_init__(self):
        for name in ("epochs", "patience"):
            _positive("BiasConfig", name, getattr(self, name))
        if self.validation_interval is not None:
            _positive("BiasConfig", "validation_interval", self.validation_interval)
        for name in ("learning_rate", "final_learning_rate", "clip_norm"):
            if not getattr(self, name) > 0:
                raise CalibrationError(f"BiasConfig: {name} must be > 0, got {getattr(self, name)!r}")

    def interval(self, total_steps: int) -> int:
        """Steps between validations in a stage of ``total_steps`` steps."""
        if self.validation_interval is not None:
            return self.validation_interval
        return max(1, -(-total_steps // VALIDATIONS_PER_STAGE))  # ceiling division


# old flat field of CalibrationConfig -> (stage field, field of that stage's config)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "momentum": ("da", "momentum"), "da_epochs": ("da", "epochs"), "da_debias": ("da", "debias"),
    "bn_learning_rate": ("bn", "learning_rate"), "bn_final_learning_rate": ("bn", "final_learning_rate"),
    "bn_epochs": ("bn", "epochs"), "bn_gradient": ("bn", "gradient"),
    "bias_learning_rate": ("bias", "learning_rate"), "bias_final_learning_rate": ("bias", "final_learning_rate"),
    "bias_epochs": ("bias", "epochs"), "clip_norm": ("bias", "clip_norm"), "patience": ("bias", "patience"),
    "validation_interval": ("bias", "validation_interval"),
}
_STAGE_TYPES = {"da": DAConfig, "bn": BatchNormConfig, "bias": BiasConfig}


def _nest(flat: Mapping[str, Any], stages: Mapping[str, Any]) -> dict[str, Any]:
    """Stage configs with the flat entries of ``flat`` folded in (``stages`` may hold configs or dicts)."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        stage, field = FLAT_NAMES[name]
        nested.setdefault(stage, {})[field] = value
    result = {}
    for stage, kind in _STAGE_TYPES.items():
        base = stages.get(stage)
        if isinstance(base, Mapping):
            base = _from_mapping(kind, base)
        base = base if base is not None else kind()
        result[stage] = dataclasses.replace(base, **nested[stage]) if stage in nested else base
    return result


def _from_mapping(kind: type, data: Mapping[str, Any]):
    unknown = set(data) - {field.name for field in dataclasses.fields(kind)}
    if unknown:
        raise CalibrationError(f"{kind.__name__}: unknown entries {sorted(unknown)}")
    return kind(**data)


@dataclasses.dataclass(frozen=True, init=False)
class CalibrationConfig:
    """Every option of the calibration pipeline (saved with a calibrated checkpoint).

    General:
        stages: which of da, bn, bias to run (always in that order).
        time_steps: the target T; the calibrated network is tuned for this T.
        batch_size: global batch size (split evenly over processes under torchrun).
        seed: orders the batches of the training stages and draws the held-out batches.
        validation_fraction: share of the calibration batches held out from every stage when
            no separate training data is given (:func:`parasnn.calibration.pipeline.calibrate`);
            stage 2 stops early on their loss, reports show their accuracy after each stage.
        training_size: images of the training set the stages learn on when they learn on the
            training set (``None``: all of it; a number: a seeded random sample, for speed).
        statistics_size: images the passes that only measure read — the ReLU thresholds,
            stage da's running averages, stage bn's statistics — as a seeded random sample of
            the training batches (``None``: all of them). They converge long before the
            training set ends (da's average has a memory of ~1/(1−α) = 100 batches); the
            stages that learn see every batch (docs/decisions.md).
    Objective of stages bn and bias (:mod:`.objective`, docs/maths.md §4e):
        objective: ``Objective.LABELS`` (the labels' cross-entropy, [STDC]) or
            ``Objective.DISTILLATION`` (KL divergence to the ANN's logits; beyond the paper).
        temperature: τ of the distillation objective (ignored for the labels).
    ReLU backbones (docs/maths.md §4d):
        percentile: activation percentile recorded as θ (100: the maximum).
        threshold_scope: ``ThresholdScope.LAYER`` (one θ per site, [STDC]) or ``CHANNEL``
            (one θ per channel; beyond the paper, docs/decisions.md).
        levels: L of the QCFS proxy kept in the checkpoint (does not affect the SNN at T).
    Stages: ``da`` (:class:`DAConfig`), ``bn`` (:class:`BatchNormConfig`), ``bias``
        (:class:`BiasConfig`). Both training stages: ``warmup_fraction`` of the steps warm up
        linearly; no weight decay.
    Guard:
        revert_if_worse: a stage da or bn whose result has a higher loss on the held-out
            batches than its input is undone (its report says ``reverted``); stage bias
            already keeps its best held-out biases, Δb = 0 included.

    Why each default is what it is (measured): see docs/decisions.md.
    """

    stages: tuple[Stage, ...] = STAGE_ORDER
    time_steps: int = 4
    batch_size: int = 64
    seed: int = 0
    validation_fraction: float = 0.2
    training_size: int | None = None
    statistics_size: int | None = 16384
    percentile: float = 99.9
    threshold_scope: ThresholdScope = ThresholdScope.LAYER
    levels: int = 8
    warmup_fraction: float = 0.1
    revert_if_worse: bool = True
    objective: Objective = Objective.LABELS
    temperature: float = 1.0
    da: DAConfig = DAConfig()
    bn: BatchNormConfig = BatchNormConfig()
    bias: BiasConfig = BiasConfig()

    def __init__(self, *, stages: str | Iterable[str | Stage] = STAGE_ORDER, time_steps: int = 4,
                 batch_size: int = 64, seed: int = 0, validation_fraction: float = 0.2,
                 training_size: int | None = None, statistics_size: int | None = 16384,
                 percentile: float = 99.9, threshold_scope: ThresholdScope | str = ThresholdScope.LAYER,
                 levels: int = 8, warmup_fraction: float = 0.1, revert_if_worse: bool = True,
                 objective: Objective | str = Objective.LABELS, temperature: float = 1.0, da: DAConfig | None = None,
                 bn: BatchNormConfig | None = None, bias: BiasConfig | None = None, **flat: Any):
        unknown = sorted(set(flat) - set(FLAT_NAMES))
        if unknown:
            raise TypeError(f"CalibrationConfig() got unexpected keyword arguments {unknown}")
        if flat:
            warnings.warn(f"CalibrationConfig({', '.join(sorted(flat))}=…) is the deprecated flat spelling; "
                          "pass da=DAConfig(…), bn=BatchNormConfig(…), bias=BiasConfig(…)",
                          DeprecationWarning, stacklevel=2)
        stage_configs = _nest(flat, {"da": da, "bn": bn, "bias": bias})
        values = dict(stages=stages, time_steps=time_steps, batch_size=batch_size, seed=seed,
                      validation_fraction=validation_fraction, training_size=training_size,
                      statistics_size=statistics_size, percentile=percentile, threshold_scope=threshold_scope,
                      levels=levels, warmup_fraction=warmup_fraction, revert_if_worse=revert_if_worse,
                      objective=objective, temperature=temperature, **stage_configs)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __post_init__(self):
        object.__setattr__(self, "stages", parse_stages(self.stages))
        if isinstance(self.time_steps, bool) or not isinstance(self.time_steps, int) or self.time_steps < 1:
            raise CalibrationError(f"CalibrationConfig: time_steps T must be an integer >= 1, got {self.time_steps!r}")
        for name in ("batch_size", "levels"):
            _positive("CalibrationConfig", name, getattr(self, name))
        for name in ("training_size", "statistics_size"):
            if getattr(self, name) is not None:
                _positive("CalibrationConfig", name, getattr(self, name))
        if not 0 <= self.validation_fraction < 1:
            raise CalibrationError(f"CalibrationConfig: validation_fraction must be in [0, 1), "
                                   f"got {self.validation_fraction!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise CalibrationError(f"CalibrationConfig: warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        try:  # validates the percentile and the scope
            statistic = ThresholdStatistic(self.percentile, self.threshold_scope)
        except ValueError as error:
            raise CalibrationError(f"CalibrationConfig: {error}") from None
        object.__setattr__(self, "threshold_scope", statistic.scope)
        try:
            object.__setattr__(self, "objective", Objective(self.objective))
        except ValueError:
            raise CalibrationError(f"CalibrationConfig: objective must be one of "
                                   f"{[o.value for o in Objective]}, got {self.objective!r}") from None
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0 or self.temperature == float("inf"):
            raise CalibrationError(f"CalibrationConfig: temperature must be a finite number > 0, "
                                   f"got {self.temperature!r}")

    def __getattr__(self, name: str):
        # Only reached for names that are not fields: the deprecated flat spelling.
        if name in FLAT_NAMES:
            stage, field = FLAT_NAMES[name]
            warnings.warn(f"CalibrationConfig.{name} is deprecated; read config.{stage}.{field}",
                          DeprecationWarning, stacklevel=2)
            return getattr(object.__getattribute__(self, stage), field)
        raise AttributeError(f"'CalibrationConfig' object has no attribute {name!r}")

    def replace(self, **changes) -> "CalibrationConfig":
        """A copy with ``changes`` (field names, or the deprecated flat names)."""
        return dataclasses.replace(self, **changes) if not set(changes) & set(FLAT_NAMES) else \
            CalibrationConfig(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})

    def conversion(self) -> ConversionConfig:
        """The conversion options: BN kept as layers (stage 1 needs them), θ per ``percentile``."""
        return ConversionConfig(levels=self.levels,
                                threshold=ThresholdStatistic(self.percentile, self.threshold_scope),
                                batchnorm=BatchNormMode.KEEP)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stages"] = [stage.value for stage in self.stages]
        data["bn"]["gradient"] = self.bn.gradient.value
        data["objective"] = self.objective.value
        data["threshold_scope"] = self.threshold_scope.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CalibrationConfig":
        """The config of :meth:`to_dict`, or of the flat form saved by parasnn ≤ 0.1."""
        known = {field.name for field in dataclasses.fields(cls)} | set(FLAT_NAMES)
        unknown = set(data) - known
        if unknown:
            raise CalibrationError(f"{cls.__name__}: unknown entries {sorted(unknown)}")
        general = {k: v for k, v in data.items() if k not in FLAT_NAMES and k not in _STAGE_TYPES}
        flat = {k: v for k, v in data.items() if k in FLAT_NAMES}
        stages = _nest(flat, {k: data[k] for k in _STAGE_TYPES if k in data})
        return cls(**general, **stages)
