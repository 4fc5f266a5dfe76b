"""PMSM end to end ([PMSM], docs/maths.md §6): full-precision signed-clip ANN → signed quantized ANN
→ signed multi-spike SNN that equals it at T = 1.

::

    model, spec, checkpoint = load_ann("runs/signed/model.pt")       # ActivationKind.SIGNED, full precision
    quantized, report = quantize_network(model, calibration_batches, train_set=train, config=PMSMConfig(levels=4))
    network = convert(quantized, neuron=neuron_factory(Method.PMSM))  # T = 1: equal to `quantized`

Stages (maths in :mod:`parasnn.neurons.pmsm`):

1. **record** — run calibration batches (the training slice ``parasnn train`` held apart,
   never the test set) through the full-precision network and keep a seeded random sample
   of every signed activation's *input* (its pre-activation, ``(N,)`` per layer).
2. **initialise** — per layer, the step θ and the level split L⁺/L⁻ from the sample:
   :func:`~parasnn.neurons.pmsm_initialisation.entropy_initialisation` (default; the level entropy is
   maximised inside the full-precision range), or for comparison the plain
   :func:`~parasnn.neurons.pmsm_initialisation.percentile_initialisation` of the pre-activations, or
   ``range`` (θ = r/L: keep the range the full-precision network learnt). Each activation
   is switched to its quantized form.
3. **fine-tune** — a short quantization-aware pass over the training split (SGD with
   Nesterov momentum, cosine decay, the training run's augmentation; the straight-through
   estimator of the quantizer carries gradients to the weights and to each scale r).

The result is an ordinary ANN of the same :class:`~parasnn.zoo.models.ModelSpec` (activation kind
``signed``); the quantized form, θ and the level split live in its state dict, so
:func:`parasnn.io.checkpoint.save_ann` / ``load_ann`` round-trip it and ``parasnn convert
--method pmsm`` converts it.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import math
import time
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..datasets.data import augment, make_loader
from ..evaluation.accuracy import ann_accuracy
from ..conversion.network import observe
from ..runtime.checks import require_positive_int
from ..neurons.pmsm import PolarityQuantizer
from ..neurons.pmsm_initialisation import (LevelChoice, entropy_initialisation, level_entropy,
                                           percentile_initialisation)

__all__ = ["Initialisation", "PMSMConfig", "LayerReport", "PMSMReport", "signed_sites", "record_preactivations",
           "initialise_quantizers", "fine_tune", "quantize_network", "format_layers", "ComparisonRow",
           "compare_initialisations", "format_comparison"]


class Initialisation(str, enum.Enum):
    """How θ and the level split are chosen per layer (see the module docstring)."""

    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    RANGE = "range"


@dataclasses.dataclass(frozen=True)
class PMSMConfig:
    """Options of :func:`quantize_network`.

    Attributes:
        levels: L; every layer gets a budget of ``2L`` non-zero levels (``L⁺ + L⁻ = 2L``), at
            most ``max(L⁺, L⁻)`` spikes per neuron and step.
        initialisation: :class:`Initialisation`.
        percentile: for ``percentile``: the percentile of ``|x|`` taken as ``Lθ``.
        samples_per_layer: size of the pre-activation sample kept per layer.
        fine_tune_epochs: passes over the training split (0: no fine-tuning).
        max_batches: stop each fine-tuning epoch after this many batches (``None``: all).
        learning_rate: peak SGD learning rate of the fine-tune (cosine decay to 0).
        batch_size, weight_decay, momentum, augment: as in :class:`parasnn.training.train.TrainConfig`.
        seed: sampling and fine-tuning order.
    """

    levels: int = 4
    initialisation: Initialisation = Initialisation.ENTROPY
    percentile: float = 99.9
    samples_per_layer: int = 1 << 18
    fine_tune_epochs: int = 1
    max_batches: int | None = None
    learning_rate: float = 0.005
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "initialisation", Initialisation(self.initialisation))
        require_positive_int(self.levels, "PMSMConfig: levels")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"PMSMConfig: percentile must be in (0, 100], got {self.percentile}")
        if self.samples_per_layer < 1 or self.fine_tune_epochs < 0 or self.batch_size < 1:
            raise ValueError("PMSMConfig: samples_per_layer and batch_size must be >= 1, fine_tune_epochs >= 0")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"PMSMConfig: max_batches must be None or >= 1, got {self.max_batches}")
        if not self.learning_rate > 0:
            raise ValueError(f"PMSMConfig: learning_rate must be > 0, got {self.learning_rate}")

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), initialisation=self.initialisation.value)


@dataclasses.dataclass
class LayerReport:
    """One activation site: the full-precision range, the chosen quantizer, and the level
    entropy (bits) of that quantizer and of a QCFS quantizer with the same step
    (``L⁻ = 0``, the negative half sent to level 0) on the same sample."""

    name: str
    full_precision_range: tuple[float, float]  # (−negative, +positive)
    threshold: float
    negative_levels: int
    positive_levels: int
    entropy_bits: float
    qcfs_entropy_bits: float
    saturated: float  # fraction of pre-activations outside the full-precision range
    fine_tuned_threshold: float | None = None  # θ after fine-tuning


@dataclasses.dataclass
class PMSMReport:
    config: PMSMConfig
    layers: list[LayerReport]
    history: list[dict]  # fine-tuning, one entry per epoch
    seconds: float

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "layers": [dataclasses.asdict(layer) for layer in self.layers],
                "history": self.history, "seconds": self.seconds}


def signed_sites(model: nn.Module) -> list[tuple[str, PolarityQuantizer]]:
    """``(path, activation)`` for every :class:`PolarityQuantizer` of ``model``, in module order.

    Raises ``ValueError`` if there is none (the network was not trained with signed activations)."""
    sites = [(name, module) for name, module in model.named_modules() if isinstance(module, PolarityQuantizer)]
    if not sites:
        raise ValueError("the network has no signed activations: PMSM quantizes networks trained with "
                         "ActivationKind.SIGNED (parasnn train --activation signed)")
    return sites


def record_preactivations(model: nn.Module, batches: Iterable, *, samples_per_layer: int = 1 << 18,
                          seed: int = 0) -> dict[str, Tensor]:
    """Run ``batches`` (tensors or ``(inputs, labels)``) through ``model`` in eval mode and
    return, per signed activation path, a random sample of its inputs ``(≤ samples_per_layer,)``
    (float32, on the CPU). Each batch contributes a seeded uniform draw, so a layer's sample
    is spread over all calibration images."""
    sites = signed_sites(model)
    batches = list(batches)
    if not batches:
        raise ValueError("record_preactivations: the calibration data is empty")
    per_batch = max(1, math.ceil(samples_per_layer / len(batches)))
    generator = torch.Generator().manual_seed(seed)
    samples: dict[str, list[Tensor]] = {name: [] for name, _ in sites}

    def hook(name):
        def record(module, args, output):
            values = args[0].detach().flatten().float().cpu()
            if values.numel() > per_batch:
                values = values[torch.randint(0, values.numel(), (per_batch,), generator=generator)]
            samples[name].append(values)
        return record

    observe(model, batches, [(module, hook(name)) for name, module in sites])
    return {name: torch.cat(values)[:samples_per_layer] for name, values in samples.items()}


def _choose(sample: Tensor, activation: PolarityQuantizer, config: PMSMConfig) -> LevelChoice:
    threshold = float(activation.threshold().detach())
    positive_range = activation.positive_levels * threshold
    negative_range = activation.negative_levels * threshold
    if config.initialisation is Initialisation.ENTROPY:
        return entropy_initialisation(sample, levels=config.levels, positive_range=positive_range,
                                      negative_range=negative_range)
    if config.initialisation is Initialisation.PERCENTILE:
        return percentile_initialisation(sample, levels=config.levels, percentile=config.percentile)
    # RANGE: keep the range the full-precision network learnt, split symmetrically.
    step = max(positive_range, negative_range) / config.levels
    entropy = float(level_entropy(sample.clamp(-negative_range, positive_range), threshold=step,
                                  negative_levels=config.levels, positive_levels=config.levels))
    return LevelChoice(step, config.levels, config.levels, entropy)


def initialise_quantizers(model: nn.Module, samples: dict[str, Tensor], *, config: PMSMConfig) -> list[LayerReport]:
    """Set every signed activation of ``model`` (in place) to its quantized form with the θ and
    level split chosen from its pre-activation sample; returns one :class:`LayerReport` per layer."""
    reports = []
    for name, activation in signed_sites(model):
        if name not in samples:
            raise ValueError(f"no pre-activation sample for activation {name!r}")
        sample = samples[name]
        threshold = float(activation.threshold().detach())
        fp_range = (activation.negative_levels * threshold, activation.positive_levels * threshold)
        choice = _choose(sample, activation, config)
        activation.positive_levels, activation.negative_levels = choice.positive_levels, choice.negative_levels
        activation.quantized = True
        with torch.no_grad():  # θ = 2r/(L⁺ + L⁻), so r = θ·(L⁺ + L⁻)/2
            activation.scale.fill_(choice.threshold * (choice.positive_levels + choice.negative_levels) / 2)
        # The best QCFS-like quantizer with the same level budget (all 2L levels positive, the
        # negative half sent to level 0, as ReLU + QCFS would): what discarding the sign costs.
        qcfs = entropy_initialisation(sample, levels=config.levels, positive_range=fp_range[1],
                                      negative_range=fp_range[0], negative_levels=0).entropy if fp_range[1] > 0 else 0.0
        saturated = float(((sample < -fp_range[0]) | (sample > fp_range[1])).float().mean())
        reports.append(LayerReport(name, fp_range, choice.threshold, choice.negative_levels, choice.positive_levels,
                                   choice.entropy, qcfs, saturated))
    return reports


def fine_tune(model: nn.Module, train_set, *, config: PMSMConfig, validation: Iterable | None = None) -> list[dict]:
    """Quantization-aware fine-tuning of ``model`` (in place) on ``train_set`` (a dataset of
    ``(images, labels)``) for ``config.fine_tune_epochs``; one history entry per epoch (with
    validation accuracy when ``validation`` batches are given). Model left in eval mode.
    Seeds torch's global generator with ``config.seed`` (dropout), like :func:`parasnn.training.train.train`."""
    from ..training.train import Optimizer, TrainConfig, build_optimizer, cosine_schedule, train_epoch
    history: list[dict] = []
    if config.fine_tune_epochs == 0:
        return history
    settings = TrainConfig(optimizer=Optimizer.SGD, learning_rate=config.learning_rate,
                           weight_decay=config.weight_decay, momentum=config.momentum)
    optimizer = build_optimizer(model, settings)
    steps = len(train_set) // config.batch_size  # drop_last
    if steps == 0:
        raise ValueError(f"PMSM fine-tune: the training set holds {len(train_set)} examples, fewer than one batch "
                         f"(batch_size={config.batch_size}); lower the batch size or set fine_tune_epochs=0")
    steps = min(steps, config.max_batches) if config.max_batches else steps
    # A short warm-up: the first steps see gradients through freshly set quantizers.
    schedule = cosine_schedule(optimizer, total_steps=config.fine_tune_epochs * steps,
                               warmup_steps=min(steps, 50))
    generator = torch.Generator().manual_seed(config.seed)
    # Dropout draws from the global generator: seed it (as parasnn.training.train does), so a fine-tune
    # gives the same network whatever ran before it in the process.
    torch.manual_seed(config.seed)
    augmentation = (lambda images: augment(images, generator=generator)) if config.augment else None
    for epoch in range(config.fine_tune_epochs):
        loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True,
                             seed=config.seed * 1009 + epoch, drop_last=True)
        record = {"epoch": epoch + 1, **train_epoch(model, loader, optimizer=optimizer, schedule=schedule, steps=steps,
                                                    augmentation=augmentation, description=f"fine-tune {epoch + 1}")}
        if validation is not None:
            record["validation_accuracy"] = ann_accuracy(model, validation, description="validation")[0]
        history.append(record)
    model.eval()
    return history


def quantize_network(model: nn.Module, calibration: Iterable, *, config: PMSMConfig = PMSMConfig(),
                     train_set=None, validation: Iterable | None = None) -> tuple[nn.Module, PMSMReport]:
    """The PMSM network of a full-precision signed-clip ANN: a quantized copy (``model`` is not
    modified) and a :class:`PMSMReport`.

    Args:
        model: trained network whose activations are :class:`PolarityQuantizer` (any form).
        calibration: batches for the pre-activation statistics (held-apart training data).
        config: :class:`PMSMConfig`.
        train_set: dataset of ``(images, labels)`` for the fine-tune; required when
            ``config.fine_tune_epochs > 0``.
        validation: optional batches to report accuracy after each fine-tuning epoch.
    """
    if config.fine_tune_epochs > 0 and train_set is None:
        raise ValueError("quantize_network: fine-tuning needs train_set (or set fine_tune_epochs=0)")
    start = time.time()
    quantized = copy.deepcopy(model).eval()
    samples = record_preactivations(quantized, calibration, samples_per_layer=config.samples_per_layer,
                                    seed=config.seed)
    layers = initialise_quantizers(quantized, samples, config=config)
    history = fine_tune(quantized, train_set, config=config, validation=validation) if train_set is not None \
        else []
    for layer, (_, activation) in zip(layers, signed_sites(quantized)):
        layer.fine_tuned_threshold = float(activation.threshold().detach())
    return quantized.eval(), PMSMReport(config, layers, history, time.time() - start)


def format_layers(report: PMSMReport) -> str:
    """Markdown table of the per-layer choices and the information they keep."""
    lines = ["| layer | full-precision range | θ (init) | θ (fine-tuned) | levels (−L⁻, +L⁺) | "
             "H signed (bits) | H QCFS (bits) | outside range |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for layer in report.layers:
        negative, positive = layer.full_precision_range
        final = layer.fine_tuned_threshold if layer.fine_tuned_threshold is not None else layer.threshold
        lines.append(f"| {layer.name} | [−{negative:.3g}, {positive:.3g}] | {layer.threshold:.4g} | {final:.4g} | "
                     f"(−{layer.negative_levels}, +{layer.positive_levels}) | "
                     f"{layer.entropy_bits:.2f} | {layer.qcfs_entropy_bits:.2f} | {100 * layer.saturated:.1f}% |")
    return "\n".join(lines)


@dataclasses.dataclass
class ComparisonRow:
    """One initialisation at one L: accuracy of the quantized ANN right after initialisation,
    of its PMSM SNN at T = 1 (parallel form) then, and of the ANN after the fine-tune."""

    levels: int
    initialisation: Initialisation
    initialised_accuracy: float
    snn_t1_accuracy: float
    fine_tuned_accuracy: float
    mean_entropy_bits: float  # over layers, of the initialised quantizers

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), initialisation=self.initialisation.value)


def compare_initialisations(model: nn.Module, calibration: Iterable, *, train_set, test_batches: Sequence,
                            levels: Sequence[int], initialisations: Sequence[Initialisation | str],
                            config: PMSMConfig = PMSMConfig()) -> list[ComparisonRow]:
    """The initialisation table: for every L and initialisation, quantize ``model`` (from the same
    calibration sample), measure, fine-tune with the same ``config`` (same seed, data order and
    length for every row), measure again. ``test_batches`` are ``(inputs, labels)`` batches."""
    from ..conversion.stages import convert
    from ..evaluation.accuracy import Form, snn_accuracy
    from ..conversion.methods import Method, neuron_factory
    calibration = list(calibration)
    rows = []
    for level in levels:
        for initialisation in initialisations:
            settings = dataclasses.replace(config, levels=level, initialisation=Initialisation(initialisation))
            quantized, report = quantize_network(model, calibration, config=dataclasses.replace(
                settings, fine_tune_epochs=0))
            initialised = ann_accuracy(quantized, test_batches, description="quantized ANN")[0]
            network = convert(quantized, neuron=neuron_factory(Method.PMSM))
            spiking = snn_accuracy(network, test_batches, time_steps=1, form=Form.PARALLEL, activity=False).accuracy
            fine_tune(quantized, train_set, config=settings)
            tuned = ann_accuracy(quantized, test_batches, description="fine-tuned ANN")[0]
            entropy = sum(layer.entropy_bits for layer in report.layers) / len(report.layers)
            rows.append(ComparisonRow(level, settings.initialisation, initialised, spiking, tuned, entropy))
    return rows


def format_comparison(rows: Sequence[ComparisonRow], *, full_precision_accuracy: float | None = None,
                      fine_tune: str = "") -> str:
    """Markdown table of :func:`compare_initialisations` (accuracies in %)."""
    lines = [f"| L | initialisation | mean H (bits) | quantized ANN, initialised | PMSM SNN T=1, initialised | "
             f"quantized ANN, fine-tuned{(' (' + fine_tune + ')') if fine_tune else ''} |",
             "|---:|---|---:|---:|---:|---:|"]
    if full_precision_accuracy is not None:
        lines.append(f"| – | full precision | – | {100 * full_precision_accuracy:.2f} | – | – |")
    for row in rows:
        lines.append(f"| {row.levels} | {row.initialisation.value} | {row.mean_entropy_bits:.2f} | "
                     f"{100 * row.initialised_accuracy:.2f} | {100 * row.snn_t1_accuracy:.2f} | "
                     f"{100 * row.fine_tuned_accuracy:.2f} |")
    return "\n".join(lines)
