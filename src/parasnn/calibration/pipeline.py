"""Distribution-aware parallel calibration (paper 003, MATH.md §4): DA-QCFS error calibration,
stage 1 BatchNorm recalibration, stage 2 temporal bias correction — for QCFS and ReLU backbones.

The pipeline (paper 003, Alg. 1–3)::

    ANN (QCFS or ReLU)
      │  ReLU sites: thresholds θ recorded on calibration data (ThresholdStatistic: a
      │  percentile or the running max) → QCFS / clipped ReLU          (§4d, "recorder")
      ▼
    parallel SNN (IFNeuron at every site)  = FS-PC baseline         convert_for_calibration
      │  Stage.DA    per-channel ψ_DA, φ_DA from layer-wise mean errors  calibrate_distribution  (§4a, "†")
      │  Stage.BN    BN statistics + affine terms on the DA-QCFS ANN    recalibrate_batchnorm   (§4b, Alg. 2)
      │  Stage.BIAS  per-channel Δb through the parallel rule           correct_temporal_bias   (§4c, Alg. 3)
      ▼
    calibrated SpikingNetwork (one pass at T, memory independent of T)

Any subset of the three stages runs, always in the order da → bn → bias
(:data:`STAGE_ORDER`). :func:`calibrate` runs the whole pipeline and returns a new
network; the stage functions take a network and return a new one, so callers (the
ablation, :mod:`parasnn.evaluation.ablation`) can branch from any intermediate result. Nothing passed
in is ever modified.

Why the parallel SNN *is* the DA-QCFS ANN: an :class:`~parasnn.neurons.IFNeuron` run at
``T`` on the time-averaged current ``z`` returns
``((θ + φ_DA)/T)·clip(floor((T·(z + ψ_DA) + θ/2)/θ), 0, T)``, which is MATH.md §4a's
``a_DA`` with ``L = T`` (paper 003 eq. 4). So stages DA and BN act directly on the
converted network evaluated at the target ``T``; no separate DA-QCFS model is kept.

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
α               ``CalibrationConfig.momentum``  0.99 (FS-PC reference code)
g_OA            :class:`OriginalActivation`     QCFS at its own L, or clamp(x, 0, θ) for ReLUs
==============  ======================  ===============================================

More than one process (``torchrun``): every statistic (threshold recording, DA errors,
BN batch statistics, validation losses) and every gradient is summed over processes with
:mod:`parasnn.runtime.distributed`; each process passes its own shard of the calibration batches
(a distributed sampler), the global batch being the union of the shards. In one process
those reductions are the identity.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import distributed
from ..cli.arguments import dataclass_from_dict
from ..conversion.stages import (BatchNormMode, ConversionConfig, ThresholdStatistic, convert, isolate_activations,
                      quantize_relus, set_submodule)
from ..conversion.graph import check_convertible, trace
from ..conversion.network import SpikingNetwork, device_of
from ..neurons.base import per_channel
from ..neurons.if_neuron import IFNeuron
from ..neurons.integrate_fire import _effective_threshold
from ..neurons.qcfs import QCFS, level_value, qcfs
from ..neurons.surrogate import floor_ste
from ..runtime.progress import progress

__all__ = [
    "Stage", "STAGE_ORDER", "parse_stages", "QuantizerGradient", "CalibrationConfig", "CalibrationError",
    "OriginalActivation", "StageReport", "CalibrationReport", "convert_for_calibration", "calibrate_distribution",
    "recalibrate_batchnorm", "correct_temporal_bias", "run_stages", "calibrate", "calibrate_with_report",
    "layer_errors", "split_batches", "evaluate_loss", "warmup_cosine", "keep_if_better", "any_batches",
]


class CalibrationError(ValueError):
    """Calibration cannot run as asked (bad options, unusable data or model); the message says why."""


class Stage(str, enum.Enum):
    """The calibration stages, named as on the command line (``--stages da,bn,bias``)."""

    DA = "da"  # DA-QCFS error calibration, the paper's "†" (MATH.md §4a)
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
    gradient of stage 2). ``STRAIGHT_THROUGH``: the DA-QCFS ANN's own estimator (paper 003
    Alg. 2 runs on the DA-QCFS ANN, trained like QCFS): ``∂count/∂U = 1/θ`` wherever
    ``0 < (U+ψ)/θ < T``, zero outside (``floor`` passes gradients, ``clip`` blocks them).
    """

    STRAIGHT_THROUGH = "ste"
    SURROGATE = "surrogate"


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Every option of the calibration pipeline (saved with a calibrated checkpoint).

    General:
        stages: which of da, bn, bias to run (always in that order).
        time_steps: the target T; the calibrated network is tuned for this T.
        batch_size: global batch size (split evenly over processes under torchrun).
        seed: orders the batches of the training stages.
        validation_fraction: share of the calibration batches held out from every stage;
            stage 2 stops early on their loss, reports show their accuracy after each stage.
            Default 0.2 (1 000 of 5 000 images): with 500, stage 2's choice of biases followed
            the noise of the validation loss (Fashion-MNIST, T = 4: test accuracy of the full
            method −0.15 to +0.02 points against stage 1 alone over two seeds, against +0.09
            to +0.49 over three seeds with 1 000).
    ReLU backbones (§4d):
        percentile: activation percentile recorded as θ (100: the maximum).
        levels: L of the QCFS proxy kept in the checkpoint (does not affect the SNN at T).
    DA (§4a):
        momentum: α of ``ψ_DA ← α·ψ_DA + (1−α)·e_pre`` (and φ_DA).
        da_epochs: passes over the calibration batches.
        da_debias: divide the running averages by ``1 − α^n`` (Adam's bias correction).
            With α = 0.99 an average started at 0 reaches only ``1 − 0.99^n`` of the error
            after n batches — 33 % after the 40 batches of a 5 000-image calibration set —
            so without the correction the small calibration sets used here would leave the
            errors mostly uncorrected. The reference code runs one ImageNet epoch (10⁴
            batches), where both agree.
    Stage 1 (§4b):
        bn_learning_rate, bn_final_learning_rate: AdamW peak rate, cosine-decayed to the final
            one. Default 5e-3 → 5e-4 (paper, CIFAR: 1e-3 → 1e-4 over a whole training set;
            with ~70 steps per epoch of a 5 000-image slice the larger rate is needed —
            measured on Fashion-MNIST, ReLU VGG at T = 4: 90.0 % at 1e-3 × 1 epoch, 92.8 % at
            5e-3 × 3 epochs).
        bn_epochs: passes of affine fine-tuning (paper §4.2: "a few epochs"; Alg. 2: one).
        bn_gradient: :class:`QuantizerGradient` through the neurons. Default: the IF neuron's
            triangle surrogate (paper 003 App. C: "spiking nonlinearity is treated as a
            Heaviside step with a smooth surrogate derivative during fine-tuning"). Measured on
            Fashion-MNIST, stage 1 alone, three seeds (ReLU VGG): 86.24 % against 83.48 % with
            the straight-through estimator at T = 2, 92.59 against 92.47 at T = 4, 93.61
            against 93.42 at T = 8; QCFS L = 4 VGG at T = 2: 87.39 against 84.96. The
            STE passes a gradient of 1 over the whole clipping range and so cannot see where
            the few levels of a small T lie; the surrogate can.
    Stage 2 (§4c):
        bias_learning_rate, bias_final_learning_rate: AdamW peak and final rate. Default 2e-2 →
            2e-3, ten times the paper's CIFAR rate: the paper takes one epoch of a training set
            (hundreds to thousands of steps), a 5 000-image calibration slice gives ~70 steps
            per epoch, and Adam moves a parameter by about one learning rate per step
            (measured on Fashion-MNIST: 2e-2 beats 2e-3; see the ablation notes).
        bias_epochs: passes over the training batches (paper: one; default three, early
            stopping may end sooner).
        clip_norm: gradient-norm clipping of the biases.
        patience: validations without improvement before stopping. Default 10 (100 steps):
            with 5, stage 2 stopped during the high learning rates of the schedule, where
            the held-out loss is noisy (Fashion-MNIST, ReLU VGG, T = 2, seed 1: 82.32 %
            after 130 of 189 steps against 86.62 % when run to the end; the kept biases are
            the best on held-out data either way).
        validation_interval: steps between validations.
    Both training stages: warmup_fraction of the steps warm up linearly; no weight decay.
    Guard:
        revert_if_worse: a stage da or bn whose result has a higher loss on the held-out
            batches than its input is undone (its report says ``reverted``); stage bias
            already keeps its best held-out biases, Δb = 0 included. Decision (the paper runs
            every stage unconditionally): calibration must not make a network worse on data
            it did not train on. Measured on Fashion-MNIST: stage bn on a QCFS L = 4 network
            at T = L (where FS-PC is already exact) lost 0.6 points without the guard; da at
            T = 2 lost 16–25 points (see :func:`calibrate_distribution`).
    """

    stages: tuple[Stage, ...] = STAGE_ORDER
    time_steps: int = 4
    batch_size: int = 64
    seed: int = 0
    validation_fraction: float = 0.2
    percentile: float = 99.9
    levels: int = 8
    momentum: float = 0.99
    da_epochs: int = 1
    da_debias: bool = True
    bn_learning_rate: float = 5e-3
    bn_final_learning_rate: float = 5e-4
    bn_epochs: int = 3
    bn_gradient: QuantizerGradient = QuantizerGradient.SURROGATE
    bias_learning_rate: float = 2e-2
    bias_final_learning_rate: float = 2e-3
    bias_epochs: int = 3
    clip_norm: float = 1.0
    patience: int = 10
    validation_interval: int = 10
    warmup_fraction: float = 0.1
    revert_if_worse: bool = True

    def __post_init__(self):
        object.__setattr__(self, "stages", parse_stages(self.stages))
        try:
            object.__setattr__(self, "bn_gradient", QuantizerGradient(self.bn_gradient))
        except ValueError:
            raise CalibrationError(f"CalibrationConfig: bn_gradient must be 'ste' or 'surrogate', "
                                   f"got {self.bn_gradient!r}") from None
        if isinstance(self.time_steps, bool) or not isinstance(self.time_steps, int) or self.time_steps < 1:
            raise CalibrationError(f"CalibrationConfig: time_steps T must be an integer >= 1, got {self.time_steps!r}")
        for name in ("batch_size", "levels", "da_epochs", "bn_epochs", "bias_epochs", "patience",
                     "validation_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CalibrationError(f"CalibrationConfig: {name} must be an integer >= 1, got {value!r}")
        for name in ("bn_learning_rate", "bn_final_learning_rate", "bias_learning_rate",
                     "bias_final_learning_rate", "clip_norm"):
            if not getattr(self, name) > 0:
                raise CalibrationError(f"CalibrationConfig: {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise CalibrationError(f"CalibrationConfig: momentum α must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.validation_fraction < 1:
            raise CalibrationError(f"CalibrationConfig: validation_fraction must be in [0, 1), "
                                   f"got {self.validation_fraction!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise CalibrationError(f"CalibrationConfig: warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        ThresholdStatistic(self.percentile)  # validates the percentile

    def replace(self, **changes) -> "CalibrationConfig":
        return dataclasses.replace(self, **changes)

    def conversion(self) -> ConversionConfig:
        """The conversion options: BN kept as layers (stage 1 needs them), θ per ``percentile``."""
        return ConversionConfig(levels=self.levels, threshold=ThresholdStatistic(self.percentile),
                                batchnorm=BatchNormMode.KEEP)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stages"] = [stage.value for stage in self.stages]
        data["bn_gradient"] = self.bn_gradient.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalibrationConfig":
        return dataclass_from_dict(cls, data, error=CalibrationError)


# -- the original activation of a site ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OriginalActivation:
    """``g_OA`` of paper 003 Alg. 1 for one site: the activation the DA model should match.

    ``levels`` is the L of a QCFS backbone (``QCFS`` at its own L); ``None`` marks a ReLU
    backbone's site, whose original activation is the clipped ReLU ``clamp(x, 0, θ)``.
    """

    threshold: float
    levels: int | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.levels is None:
            return x.clamp(min=0.0, max=self.threshold)
        theta = torch.tensor(self.threshold, dtype=x.dtype, device=x.device)
        return qcfs(x, threshold=theta, levels=self.levels, shift=theta * 0.5)


# -- reports --------------------------------------------------------------------------------

@dataclasses.dataclass
class StageReport:
    """What one stage did: ``stage``, steps taken, and numbers worth printing."""

    stage: str
    steps: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.steps, **self.details}


@dataclasses.dataclass
class CalibrationReport:
    """Reports of the stages that ran and the held-out loss / accuracy after each."""

    config: CalibrationConfig
    from_relu: bool
    stages: list[StageReport] = dataclasses.field(default_factory=list)
    validation: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "from_relu": self.from_relu,
                "stages": [s.to_dict() for s in self.stages], "validation": self.validation}


# -- data helpers -----------------------------------------------------------------------

def _materialise(batches: Iterable, *, where: str, equal_shards: bool = True) -> list:
    """A re-iterable list of the batches; refuses empty data with a clear message, and (with
    ``equal_shards``, for data that is trained on batch by batch) shards of unequal length."""
    if batches is None:
        raise CalibrationError(f"{where}: calibration data is required (batches of inputs, or (inputs, labels))")
    items = list(batches)
    # Under torchrun every process must hold the same number of batches: each batch is one
    # collective step, and a process with fewer would leave the others waiting for ever.
    most, fewest = (int(v) for v in distributed.all_reduce_max(torch.tensor([float(len(items)), -float(len(items))])))
    fewest = -fewest
    if most == 0:
        raise CalibrationError(f"{where}: the data is empty: pass at least one batch "
                               "(for calibration, the held-apart training slice: parasnn calibrate --calibration-size N)")
    if equal_shards and most != fewest:
        raise CalibrationError(f"{where}: the processes hold {fewest} to {most} batches; shard the data so that "
                               "every process gets the same number (a DistributedSampler does)")
    return items


def any_batches(batches: Sequence) -> bool:
    """Whether any process holds a batch (the same answer on every process under torchrun)."""
    return int(distributed.all_reduce_sum(torch.tensor([float(len(batches))]))[0]) > 0


def _on_device(batches: Sequence, device: torch.device) -> list:
    """The batches with their tensors moved to ``device`` (threshold recording runs the model
    on the batches as they are)."""
    def move(item):
        if isinstance(item, Tensor):
            return item.to(device)
        if isinstance(item, (tuple, list)):
            return type(item)(move(part) for part in item)
        return item
    return [move(batch) for batch in batches]


def _inputs(batch) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _labelled(batch, *, where: str) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise CalibrationError(f"{where} trains on (inputs, labels) batches; the calibration data has no labels")
    return batch[0], batch[1]


def split_batches(batches: Sequence, *, validation_fraction: float) -> tuple[list, list]:
    """``(training, validation)``: the last ``round(fraction·n)`` batches (at least one when
    the fraction is positive and n ≥ 2) are held out. Splitting by batch index keeps the
    split identical on every process under torchrun (all shards have the same length)."""
    batches = list(batches)
    held = 0
    if validation_fraction > 0 and len(batches) >= 2:
        held = min(len(batches) - 1, max(1, round(validation_fraction * len(batches))))
    return batches[: len(batches) - held], batches[len(batches) - held:]


def _batch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    """A seeded order of batch indices, the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine decay from 1 to
    ``final_fraction`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * done))


def _optimizer(parameters: list[nn.Parameter], *, learning_rate: float, final_learning_rate: float,
               total_steps: int, warmup_fraction: float):
    # No weight decay: it would pull BN scales / biases toward 0 for no reason (paper: omitted).
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0
    final = min(1.0, final_learning_rate / learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps=total_steps, warmup_steps=warmup,
                                              final_fraction=final))
    return optimizer, schedule


def evaluate_loss(network: SpikingNetwork, batches: Sequence, *, time_steps: int) -> dict[str, float]:
    """Mean cross-entropy and accuracy of the parallel network at ``time_steps`` on labelled
    ``batches`` (summed over processes): ``{"loss", "accuracy", "samples"}``."""
    device = device_of(network)
    was_training = network.training
    network.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            inputs, labels = _labelled(batch, where="validation")
            inputs, labels = inputs.to(device), labels.to(device)
            logits = network(inputs, time_steps=time_steps)
            totals += torch.tensor([float(F.cross_entropy(logits, labels, reduction="sum")),
                                    float((logits.argmax(1) == labels).sum()), float(labels.numel())],
                                   dtype=torch.float64)
    network.train(was_training)
    totals = distributed.all_reduce_sum(totals)
    samples = float(totals[2])
    if samples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "samples": 0.0}
    return {"loss": float(totals[0]) / samples, "accuracy": float(totals[1]) / samples, "samples": samples}


def keep_if_better(before: SpikingNetwork, after: SpikingNetwork, report: StageReport, validation: Sequence, *,
                   config: CalibrationConfig) -> tuple[SpikingNetwork, StageReport]:
    """The guard of ``config.revert_if_worse``: ``after`` unless its loss on the held-out
    ``validation`` batches (summed over processes) is higher than ``before``'s; the losses and
    the verdict go into ``report.details``. Without held-out batches ``after`` stands."""
    has_validation = any_batches(validation)
    if not (config.revert_if_worse and has_validation):
        return after, report
    loss_before = evaluate_loss(before, validation, time_steps=config.time_steps)["loss"]
    loss_after = evaluate_loss(after, validation, time_steps=config.time_steps)["loss"]
    reverted = loss_after > loss_before
    report.details.update(validation_loss_before=loss_before, validation_loss_after=loss_after, reverted=reverted)
    return (copy.deepcopy(before).eval() if reverted else after), report


# -- module swapping -----------------------------------------------------------------------

class _Swapped:
    """Context manager: temporarily put ``replacements[path]`` at ``path`` in ``root``.

    torch.fx's ``call_module`` nodes look modules up by path at run time, so a converted
    network runs the replacements without recompiling; the originals return on exit.
    """

    def __init__(self, root: nn.Module, replacements: dict[str, nn.Module]):
        self.root, self.replacements = root, replacements
        self.originals = {path: root.get_submodule(path) for path in replacements}

    def __enter__(self):
        for path, module in self.replacements.items():
            set_submodule(self.root, path, module)
        return self

    def __exit__(self, *exc):
        for path, module in self.originals.items():
            set_submodule(self.root, path, module)
        return False


def _if_neurons(network: SpikingNetwork, *, where: str) -> dict[str, IFNeuron]:
    neurons = dict(network.neurons())
    others = [path for path, n in neurons.items() if not isinstance(n, IFNeuron)]
    if others:
        raise CalibrationError(f"{where} calibrates parallel IF neurons (method fs-pc); layers {others[:5]} are "
                               f"{type(neurons[others[0]]).__name__}")
    if not neurons:
        raise CalibrationError(f"{where}: the network has no neuron layers")
    return neurons


# -- building the FS-PC baseline ------------------------------------------------------------

def convert_for_calibration(model: nn.Module, calibration_data: Iterable | None, *,
                            config: CalibrationConfig = CalibrationConfig(),
                            leaf_modules: tuple[type, ...] = ()
                            ) -> tuple[SpikingNetwork, dict[str, OriginalActivation]]:
    """The FS-PC baseline of ``model`` and the original activation ``g_OA`` of each site.

    ReLU sites get θ from ``calibration_data`` (``config.percentile``; reduced over processes
    under torchrun) and a clipped ReLU as original activation; QCFS sites keep their θ and
    their own L. ``model`` is not modified. Returns ``(network, {neuron path: g_OA})``.
    """
    if isinstance(model, SpikingNetwork):
        raise CalibrationError("calibration starts from the ANN (QCFS or ReLU), not from a converted SpikingNetwork")
    ann = isolate_activations(trace(copy.deepcopy(model).eval(), leaf_modules=leaf_modules))
    check_convertible(ann, model_name=type(model).__name__)
    relu_sites = {path for path, module in ann.named_modules() if isinstance(module, nn.ReLU)}
    conversion = config.conversion()
    if relu_sites:
        data = _materialise(calibration_data, where="recording ReLU thresholds")
        reducer = distributed.threshold_reducer(conversion.threshold) if distributed.is_distributed() else None
        quantized = quantize_relus(model, data, levels=conversion.levels, statistic=conversion.threshold,
                                   leaf_modules=leaf_modules, reduce=reducer)
    else:
        quantized = ann
    originals = {path: OriginalActivation(threshold=float(module.effective_threshold().detach()),
                                          levels=None if path in relu_sites else module.levels)
                 for path, module in quantized.named_modules() if isinstance(module, QCFS)}
    network = convert(quantized, config=conversion, leaf_modules=leaf_modules)
    network.source = type(model).__name__
    missing = [path for path, _ in network.neurons() if path not in originals]
    if missing:  # other quantizer types have no original activation the DA stage could match
        raise CalibrationError(f"calibration supports ReLU and QCFS activation sites; {missing[:5]} are neither")
    return network, originals


# -- Stage DA: DA-QCFS error calibration (MATH.md §4a, paper 003 Alg. 1 stage II) -----------

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


class _DASite(nn.Module):
    """One activation site during DA calibration.

    It receives the current of both models stacked on the batch axis — rows ``[:B]`` from the
    DA model (the SNN at T), rows ``[B:]`` from the original-activation model — and returns
    both outputs stacked the same way, so a single pass of the converted graph runs the two
    models side by side, layer by layer, as the FS-PC reference implementation does. With
    ``update`` it moves ψ_DA and φ_DA of its neuron (Alg. 1, lines 10–13); either way it
    records the mean errors it saw.
    """

    def __init__(self, neuron: IFNeuron, original: OriginalActivation, *, momentum: float, debias: bool,
                 update: bool):
        super().__init__()
        self.neuron, self.original = neuron, original
        self.momentum, self.debias, self.update = momentum, debias, update
        self.pre_average: Tensor | None = None  # raw running averages (before bias correction)
        self.post_average: Tensor | None = None
        self.updates = 0
        self.base_amplitude = neuron.amplitude.detach().clone()  # θ: θ_post = θ + φ_DA
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
        residual_pre = e_pre - self.neuron.pre_shift.detach()
        if self.update:
            if self.pre_average is None:
                self.pre_average = torch.zeros_like(e_pre)
                self.post_average = torch.zeros_like(e_pre)
            self.updates += 1
            self.pre_average = self.momentum * self.pre_average + (1 - self.momentum) * e_pre
            self.neuron.pre_shift = self._estimate(self.pre_average)  # ψ_DA, (C,)
        a_da = self.neuron(z_da, time_steps=time_steps)
        a_original = self.original(z_original)
        e_post = _channel_mean(a_original - a_da)
        if self.update:
            # As in Alg. 1 (and the reference code) e_post is measured with the current φ_DA, so
            # the fixed point φ = e_post(φ) shrinks the error to e₀/(1 + mean rate) rather than to
            # 0 — a damped correction; ψ_DA, whose error does not depend on it, converges fully.
            self.post_average = self.momentum * self.post_average + (1 - self.momentum) * e_post
            self.neuron.amplitude = self.base_amplitude + self._estimate(self.post_average)  # θ + φ_DA
        self.errors.append((float(residual_pre.abs().mean()), float(e_post.abs().mean())))
        pair = torch.stack([residual_pre.expand_as(e_post), e_post]).detach()
        self.error_sums = [pair if not self.error_sums else self.error_sums[0] + pair]
        return torch.cat([a_da, a_original])


def _dual_pass(network: SpikingNetwork, sites: dict[str, _DASite], batches: Sequence, *, time_steps: int,
               description: str) -> None:
    device = device_of(network)
    with _Swapped(network.graph_module, sites), torch.no_grad():
        for batch in progress(batches, description=description):
            x = _inputs(batch).to(device)
            network.graph_module(time_steps, torch.cat([x, x]))


def layer_errors(network: SpikingNetwork, originals: dict[str, OriginalActivation], batches: Iterable, *,
                 time_steps: int) -> dict[str, tuple[float, float]]:
    """Layer-wise mean errors between the original-activation model and ``network`` at
    ``time_steps``, without changing anything: ``{path: (mean |e_pre|, mean |e_post|)}``.

    ``e_pre = μ(z_orig − (z_DA + ψ_DA))``: the pre-activation error that remains once the
    neuron adds its pre-shift; ``e_post = μ(a_orig − a_DA)``: the output error. Per channel
    each is averaged over all ``batches`` (the systematic error DA calibration targets;
    per-batch sampling noise averages out), then its absolute value over channels."""
    batches = _materialise(batches, where="layer_errors")
    neurons = _if_neurons(network, where="layer_errors")
    sites = {path: _DASite(neuron, originals[path], momentum=0.0, debias=False, update=False)
             for path, neuron in neurons.items()}
    _dual_pass(network, sites, batches, time_steps=time_steps, description="layer errors")
    errors = {}
    for path, site in sites.items():
        mean = site.error_sums[0] / len(site.errors)  # (2, C): batches of equal weight
        errors[path] = (float(mean[0].abs().mean()), float(mean[1].abs().mean()))
    return errors


def calibrate_distribution(network: SpikingNetwork, batches: Iterable, *, validation: Sequence = (),
                           originals: dict[str, OriginalActivation], config: CalibrationConfig
                           ) -> tuple[SpikingNetwork, StageReport]:
    """Stage DA (the "†"): a copy of ``network`` with per-channel ψ_DA (``pre_shift``) and
    θ + φ_DA (``amplitude``) fitted at ``config.time_steps``.

    Starts from ψ_DA = φ_DA = 0 (Alg. 1 stage I). For every batch, layer by layer in graph
    order, the original-activation model and the DA model run side by side and
    ``ψ_DA ← α·ψ_DA + (1−α)·e_pre``, ``φ_DA ← α·φ_DA + (1−α)·e_post`` (per channel, ``(C,)``).

    What to expect: ψ_DA removes the mean pre-activation error (tested), φ_DA only damps the
    output error (the rule's fixed point, see :class:`_DASite`), and φ acts on firing neurons
    only, so in sparse layers it changes little. Matching the *mean* pre-activation is not
    always what accuracy needs. Measured on Fashion-MNIST (VGG-small): at T = 4 and 8 it
    helped a ReLU backbone (FS-PC 57.5 → 87.0 %, 92.8 → 93.2 %), but at T = 2 it hurt
    (ReLU 55 → 31 %; QCFS L = 4: 78.5 → 61 %): with most neurons silent, the mean
    pre-activation is set by the silent majority, ψ_DA came out negative and silenced the
    firing tail further. Stages bn and bias recover most of it.
    """
    batches = _materialise(batches, where="stage da")
    original, network = network, copy.deepcopy(network)
    neurons = _if_neurons(network, where="stage da")
    missing = [path for path in neurons if path not in originals]
    if missing:
        raise CalibrationError(f"stage da: no original activation for neuron layers {missing[:5]}")
    for neuron in neurons.values():  # stage I: ψ_DA = φ_DA = 0, θ_post = θ
        neuron.pre_shift = torch.zeros_like(neuron.pre_shift)
        neuron.amplitude = neuron.threshold.detach().clone()
    sites = {path: _DASite(neuron, originals[path], momentum=config.momentum, debias=config.da_debias, update=True)
             for path, neuron in neurons.items()}
    for epoch in range(config.da_epochs):
        _dual_pass(network, sites, batches, time_steps=config.time_steps,
                   description=f"stage da T={config.time_steps} {epoch + 1}/{config.da_epochs}")
    for path, neuron in neurons.items():  # keep plain tensors (not views of the sites' averages)
        neuron.pre_shift = neuron.pre_shift.detach().clone()
        neuron.amplitude = neuron.amplitude.detach().clone()
    details = {"layers": {path: {"first_error": list(site.errors[0]), "last_error": list(site.errors[-1]),
                                 "mean_abs_pre_shift": float(neurons[path].pre_shift.abs().mean()),
                                 "mean_post_offset": float((neurons[path].amplitude - neurons[path].threshold).mean())}
                          for path, site in sites.items()}}
    report = StageReport(Stage.DA.value, steps=len(batches) * config.da_epochs, details=details)
    return keep_if_better(original, network.eval(), report, list(validation), config=config)


# -- Stage 1: BatchNorm recalibration (MATH.md §4b, paper 003 §4.2, Alg. 2) ------------------

class _SynchronisedBatchNorm(nn.Module):
    """A BatchNorm layer whose train-mode statistics are those of the *global* batch.

    Shares the wrapped layer's parameters and buffers. Mean and variance per channel are
    summed over processes with a differentiable all-reduce (``torch.nn.SyncBatchNorm`` runs
    on GPUs only), so under torchrun each process normalises exactly as one process would
    on the union of the shards, gradients included; in one process it is plain batch norm.
    ``cumulative`` averages the running statistics over all batches seen (``momentum=None``,
    Eq. 10 of paper 003) instead of the layer's exponential average.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, *, cumulative: bool):
        super().__init__()
        self.bn, self.cumulative = bn, cumulative

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        count = distributed.all_reduce_sum(torch.tensor([float(x.numel() // x.shape[1])]))[0].item()
        mean = distributed.all_reduce_sum_differentiable(x.sum(dim=dims)) / count
        centred = x - mean.view(shape)
        variance = distributed.all_reduce_sum_differentiable((centred * centred).sum(dim=dims)) / count
        with torch.no_grad():
            bn.num_batches_tracked += 1
            factor = 1.0 / float(bn.num_batches_tracked) if self.cumulative or bn.momentum is None else bn.momentum
            unbiased = variance.detach() * (count / max(count - 1.0, 1.0))
            bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = centred * torch.rsqrt(variance + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y


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
        threshold = _effective_threshold(per_channel(n.threshold, current), per_channel(n.temporal_bias, current))
        charge = time_steps * (current + per_channel(n.pre_shift, current)) + per_channel(n.shift, current)
        count = floor_ste(torch.clamp(charge / threshold, 0, time_steps))
        return level_value(count, amplitude=per_channel(n.amplitude, current), time_steps=time_steps)


def _batchnorms(network: SpikingNetwork) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {path: module for path, module in network.graph_module.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def _statistics_pass(network: SpikingNetwork, norms: dict[str, nn.Module], batches: Sequence, *,
                     time_steps: int, description: str) -> None:
    """Re-estimate every BN's running statistics as the average over ``batches`` (Eq. 10)."""
    device = device_of(network)
    for bn in norms.values():
        bn.reset_running_stats()
        bn.train()
    wrappers = {path: _SynchronisedBatchNorm(bn, cumulative=True) for path, bn in norms.items()}
    with _Swapped(network.graph_module, wrappers), torch.no_grad():
        for batch in progress(batches, description=description):
            network.graph_module(time_steps, _inputs(batch).to(device))
    for bn in norms.values():
        bn.eval()


def recalibrate_batchnorm(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                          validation: Sequence = ()) -> tuple[SpikingNetwork, StageReport]:
    """Stage 1: a copy of ``network`` whose BatchNorm statistics and affine terms are re-fitted
    on the DA-QCFS ANN at ``config.time_steps`` (the parallel network itself, see the module
    docstring). Everything else is frozen.

    1. statistics pass: running mean / variance = the average over the calibration batches
       of the batch statistics (Eq. 10), layers in train mode, no gradients;
    2. affine fine-tuning: γ, β only, cross-entropy, AdamW without weight decay, linear
       warm-up + cosine, ``bn_epochs`` passes, batch statistics in the forward pass;
    3. a final statistics pass, so the running statistics describe the network with its
       final γ, β (the fine-tuning changed the inputs of every later BN);
    4. every BN back to eval.

    Gradient through the neurons (``config.bn_gradient``): by default the IF neuron's own
    triangle surrogate, the gradient of stage 2 (decision, measured: see
    :class:`CalibrationConfig`); ``QuantizerGradient.STRAIGHT_THROUGH`` uses the
    straight-through estimator of the DA-QCFS ANN instead (``∂a/∂z = θ_post/θ`` on the
    clipping range, see :class:`_StraightThroughNeuron`). The forward values are the same
    either way.
    Under torchrun the statistics are those of the global batch and gradients are averaged.
    """
    batches = _materialise(batches, where="stage bn")
    original, network = network, copy.deepcopy(network)
    norms = _batchnorms(network)
    if not norms:
        raise CalibrationError("stage bn recalibrates BatchNorm layers, but the network has none "
                               "(was BN folded into the convolutions, or does the model have no BN?); "
                               "drop 'bn' from the stages")
    neurons = _if_neurons(network, where="stage bn")
    T = config.time_steps
    device = device_of(network)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    affine = [p for bn in norms.values() if bn.affine for p in (bn.weight, bn.bias)]
    for parameter in affine:
        parameter.requires_grad_(True)
    network.eval()
    _statistics_pass(network, norms, batches, time_steps=T, description=f"stage bn statistics T={T}")
    replacements: dict[str, nn.Module] = {path: _SynchronisedBatchNorm(bn, cumulative=False)
                                          for path, bn in norms.items()}
    if config.bn_gradient is QuantizerGradient.STRAIGHT_THROUGH:
        replacements.update({path: _StraightThroughNeuron(neuron) for path, neuron in neurons.items()})
    losses: list[float] = []
    steps = 0
    if affine:
        total = config.bn_epochs * len(batches)
        optimizer, schedule = _optimizer(affine, learning_rate=config.bn_learning_rate,
                                         final_learning_rate=config.bn_final_learning_rate, total_steps=total,
                                         warmup_fraction=config.warmup_fraction)
        for bn in norms.values():
            bn.train()
        with _Swapped(network.graph_module, replacements):
            for epoch in range(config.bn_epochs):
                order = _batch_order(len(batches), seed=config.seed, epoch=epoch)
                for index in progress(order, description=f"stage bn T={T} {epoch + 1}/{config.bn_epochs}"):
                    inputs, labels = _labelled(batches[index], where="stage bn")
                    logits = network.graph_module(T, inputs.to(device))
                    loss = F.cross_entropy(logits, labels.to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    distributed.average_gradients(affine)
                    optimizer.step()
                    schedule.step()
                    losses.append(float(loss.detach()))
                    steps += 1
        for bn in norms.values():
            bn.eval()
        _statistics_pass(network, norms, batches, time_steps=T, description=f"stage bn final statistics T={T}")
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    details = {"layers": len(norms), "gradient": config.bn_gradient.value,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    return keep_if_better(original, network.eval(), StageReport(Stage.BN.value, steps=steps, details=details),
                          list(validation), config=config)


# -- Stage 2: temporal bias correction (MATH.md §4c, paper 003 §4.3, Alg. 3) -----------------

def _neuron_channels(network: SpikingNetwork, batch, *, time_steps: int) -> dict[str, int]:
    """Channel count C of every neuron's input (axis 1; 1 for a ``(B,)`` input)."""
    channels: dict[str, int] = {}

    def recorder(path):
        def hook(module, args, kwargs, output):
            channels[path] = args[0].shape[1] if args[0].dim() > 1 else 1
        return hook

    handles = [neuron.register_forward_hook(recorder(path), with_kwargs=True) for path, neuron in network.neurons()]
    try:
        with torch.no_grad():
            network(_inputs(batch)[:1].to(device_of(network)), time_steps=time_steps)
    finally:
        for handle in handles:
            handle.remove()
    return channels


def correct_temporal_bias(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
                          validation: Iterable | None = None) -> tuple[SpikingNetwork, StageReport]:
    """Stage 2: a copy of ``network`` with one learnable Δb per channel in every neuron
    (``temporal_bias``, ``(C,)``), trained at ``config.time_steps`` through the parallel rule
    ``s_t = H((U + ψ)/(T − t + 1) + Δb − θ)`` with the triangle surrogate, on the cross-entropy
    of the time-averaged logits (the parallel network's output). Everything else is frozen,
    BN included (eval mode).

    AdamW (no weight decay), linear warm-up + cosine, gradient-norm clipping at
    ``clip_norm``; every ``validation_interval`` steps the loss on ``validation`` is measured
    and training stops after ``patience`` validations without improvement. The biases with
    the best validation loss are kept (Δb = 0 counts: if training never beats the network as
    it came, it comes back unchanged). Without validation batches it trains for
    ``bias_epochs`` and keeps the last biases.

    Memory: the neuron's backward pass loops over the T steps on tensors of its own shape
    (:class:`parasnn.neurons.integrate_fire._ParallelIFCount`), so training stores what the
    ANN's backward would, whatever T. Inference is unchanged: one pass, Δb added to the bias.
    """
    batches = _materialise(batches, where="stage bias")
    validation = list(validation) if validation is not None else []
    network = copy.deepcopy(network).eval()  # BN frozen with its running statistics; dropout off
    neurons = _if_neurons(network, where="stage bias")
    T = config.time_steps
    device = device_of(network)
    channels = _neuron_channels(network, batches[0], time_steps=T)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    biases: list[nn.Parameter] = []
    for path, neuron in neurons.items():
        current = neuron.temporal_bias.detach()
        value = current.expand(channels[path]).clone() if current.dim() == 0 else current.clone()
        neuron.temporal_bias = nn.Parameter(value.to(device), requires_grad=True)  # Δb, (C,)
        biases.append(neuron.temporal_bias)
    network.eval()  # BN frozen with its running statistics; dropout off

    def snapshot() -> list[Tensor]:
        return [b.detach().clone() for b in biases]

    has_validation = any_batches(validation)
    history: list[dict[str, float]] = []
    best_state, best_loss, since_best = snapshot(), float("inf"), 0
    if has_validation:
        best_loss = evaluate_loss(network, validation, time_steps=T)["loss"]
        history.append({"step": 0, "loss": best_loss})
    total = config.bias_epochs * len(batches)
    optimizer, schedule = _optimizer(biases, learning_rate=config.bias_learning_rate,
                                     final_learning_rate=config.bias_final_learning_rate, total_steps=total,
                                     warmup_fraction=config.warmup_fraction)
    steps, stopped, losses = 0, False, []
    for epoch in range(config.bias_epochs):
        order = _batch_order(len(batches), seed=config.seed + 1, epoch=epoch)
        for index in progress(order, description=f"stage bias T={T} {epoch + 1}/{config.bias_epochs}"):
            inputs, labels = _labelled(batches[index], where="stage bias")
            logits = network(inputs.to(device), time_steps=T)  # time-averaged logits, one pass
            loss = F.cross_entropy(logits, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(biases)
            torch.nn.utils.clip_grad_norm_(biases, config.clip_norm)
            optimizer.step()
            schedule.step()
            steps += 1
            losses.append(float(loss.detach()))
            if has_validation and (steps % config.validation_interval == 0 or steps == total):
                current = evaluate_loss(network, validation, time_steps=T)["loss"]
                history.append({"step": steps, "loss": current})
                if current < best_loss:
                    best_state, best_loss, since_best = snapshot(), current, 0
                else:
                    since_best += 1
                    if since_best >= config.patience:
                        stopped = True
                        break
        if stopped:
            break
    if has_validation:
        with torch.no_grad():
            for bias, value in zip(biases, best_state):
                bias.copy_(value)
    for bias in biases:
        bias.requires_grad_(False)
    details = {"stopped_early": stopped, "best_validation_loss": best_loss if has_validation else None,
               "validations": history, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None,
               "mean_abs_bias": float(torch.cat([b.detach().flatten() for b in biases]).abs().mean()),
               "parameters": int(sum(b.numel() for b in biases))}
    return network.eval(), StageReport(Stage.BIAS.value, steps=steps, details=details)


# -- the pipeline ------------------------------------------------------------------------------

def run_stages(network: SpikingNetwork, batches: Iterable, *, config: CalibrationConfig,
               originals: dict[str, OriginalActivation] | None = None, validation: Iterable | None = None,
               from_relu: bool = False) -> tuple[SpikingNetwork, CalibrationReport]:
    """Apply ``config.stages`` to a converted network, in the order da → bn → bias.

    ``batches`` train the stages, ``validation`` (optional) is held out: stage 2 stops early
    on it and the report gives its loss / accuracy before and after each stage.
    ``originals`` (from :func:`convert_for_calibration`) is needed for Stage.DA.
    """
    batches = _materialise(batches, where="calibration")
    validation = list(validation) if validation is not None else []
    report = CalibrationReport(config=config, from_relu=from_relu)
    if Stage.DA in config.stages and originals is None:
        raise CalibrationError("stage da needs the original activation of every site (convert_for_calibration)")
    if Stage.BN in config.stages and not _batchnorms(network):
        # Checked before any work is done, so a long run does not fail at its second stage.
        raise CalibrationError("stage bn recalibrates BatchNorm layers, but the network has none; "
                               "drop 'bn' from the stages")
    if batches and any(stage in config.stages for stage in (Stage.BN, Stage.BIAS)):
        _labelled(batches[0], where="stages bn and bias")  # labels are needed: fail before any work
    has_validation = any_batches(validation)

    def validate(name: str) -> None:
        if has_validation:
            report.validation[name] = evaluate_loss(network, validation, time_steps=config.time_steps)

    validate("fs-pc")
    for stage in config.stages:
        if stage is Stage.DA:
            network, stage_report = calibrate_distribution(network, batches, originals=originals, config=config,
                                                           validation=validation)
        elif stage is Stage.BN:
            network, stage_report = recalibrate_batchnorm(network, batches, config=config, validation=validation)
        else:
            network, stage_report = correct_temporal_bias(network, batches, config=config, validation=validation)
        report.stages.append(stage_report)
        validate(stage.value)
    return network, report


def calibrate_with_report(model: nn.Module, calibration_data: Iterable, *,
                          config: CalibrationConfig = CalibrationConfig(), leaf_modules: tuple[type, ...] = ()
                          ) -> tuple[SpikingNetwork, CalibrationReport]:
    """:func:`calibrate`, also returning the :class:`CalibrationReport`."""
    batches = _on_device(_materialise(calibration_data, where="calibrate"), device_of(model))
    training, validation = split_batches(batches, validation_fraction=config.validation_fraction)
    network, originals = convert_for_calibration(model, training, config=config, leaf_modules=leaf_modules)
    from_relu = any(original.levels is None for original in originals.values())
    return run_stages(network, training, config=config, originals=originals, validation=validation,
                      from_relu=from_relu)


def calibrate(model: nn.Module, calibration_data: Iterable, *, config: CalibrationConfig = CalibrationConfig(),
              leaf_modules: tuple[type, ...] = ()) -> SpikingNetwork:
    """Convert ``model`` (QCFS or ReLU ANN) into a parallel SNN calibrated for ``config.time_steps``.

    Args:
        model: the trained ANN; not modified.
        calibration_data: batches of ``(inputs, labels)`` — a held-apart slice of the training
            set, never the test set. The last ``validation_fraction`` of the batches are held
            out (stage 2's early stopping). Inputs alone suffice when the stages are a subset
            of {da}. Under torchrun: this process's shard (see :mod:`parasnn.runtime.distributed`).
        config: :class:`CalibrationConfig` (stages, T, α, learning rates, …).

    Returns:
        a new :class:`SpikingNetwork`; ``network(x, time_steps=config.time_steps)`` runs it.

    Raises:
        CalibrationError: empty data, T < 1, stage bn without BatchNorm layers, …
        ConversionError: the model cannot be converted (see :mod:`parasnn.conversion.graph`).
    """
    return calibrate_with_report(model, calibration_data, config=config, leaf_modules=leaf_modules)[0]
