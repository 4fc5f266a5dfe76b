"""The ablation of [STDC] (its Table 3, with the "†" rows of Table 1): for each T, the
FS-PC baseline, + spatial recalibration (stage 1, ``bn``), + temporal correction (stage 2,
``bias``) and the full method (``bn`` + ``bias``) — each without and with DA-QCFS error
calibration (``da``, the "†") — evaluated on the test set against the ANN.

The calibrations share work: per T and per † variant, stage 1 runs once and feeds both
"spatial" and "full"; stage 2 runs from the baseline ("temporal") and from stage 1
("full"). The thresholds of a ReLU backbone are recorded once for all T.

Optionally (``plots``) the distributions of ANN activations and SNN time-averaged outputs
of chosen layers are drawn per configuration ([STDC] Figures 1 and 4), see
:mod:`parasnn.evaluation.plots`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import distributed
from ..calibration.baseline import convert_for_calibration
from ..calibration.batches import any_batches, materialise, on_device, split_batches
from ..calibration.batchnorm import recalibrate_batchnorm
from ..calibration.bias import correct_temporal_bias
from ..calibration.config import CalibrationConfig, Stage
from ..calibration.da import calibrate_distribution
from ..calibration.guard import evaluate_loss
from ..calibration.objective import Objective, TeacherLogits
from ..conversion.stages import isolate_activations
from ..conversion.graph import trace
from ..conversion.network import SpikingNetwork, device_of
from ..runtime.progress import progress

__all__ = ["VARIANTS", "COMPARISONS", "AblationCell", "AblationReport", "PlotRequest", "run_ablation", "format_markdown",
           "discordant_counts", "paired_difference"]

# (name, stages without da) in the column order of [STDC] Table 3.
VARIANTS: tuple[tuple[str, tuple[Stage, ...]], ...] = (
    ("baseline", ()),
    ("spatial", (Stage.BN,)),
    ("temporal", (Stage.BIAS,)),
    ("full", (Stage.BN, Stage.BIAS)),
)
# (better, worse): the order the method promises, full ≥ each single stage ≥ baseline.
COMPARISONS: tuple[tuple[str, str], ...] = (("full", "spatial"), ("full", "temporal"), ("spatial", "baseline"),
                                            ("temporal", "baseline"))
_COLUMN_TITLES = {"baseline": "Baseline (FS-PC)", "spatial": "+ Spatial (bn)", "temporal": "+ Temporal (bias)",
                  "full": "Full (bn+bias)"}


@dataclasses.dataclass
class AblationCell:
    """One configuration at one T: test accuracy, its loss against the ANN, test cross-entropy."""

    time_steps: int
    da: bool
    variant: str
    stages: list[str]
    accuracy: float
    delta_vs_ann: float  # accuracy − ANN accuracy (negative: a loss)
    gain_vs_baseline: float  # accuracy − the same row's baseline
    test_loss: float
    validation: dict[str, float] | None
    seconds: float  # calibration time of the stages this configuration adds
    reverted: list[str] = dataclasses.field(default_factory=list)  # stages undone by the guard
    # Paired comparison on the same test images, per other variant of the same (T, †):
    # [images only this configuration classifies right, images only the other one does].
    discordant: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AblationReport:
    model: str
    dataset: str
    from_relu: bool
    ann_accuracy: float
    ann_loss: float
    samples: int
    config: CalibrationConfig
    cells: list[AblationCell] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)
    plot_statistics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def cell(self, time_steps: int, variant: str, *, da: bool) -> AblationCell:
        for cell in self.cells:
            if cell.time_steps == time_steps and cell.variant == variant and cell.da == da:
                return cell
        raise KeyError((time_steps, variant, da))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "from_relu": self.from_relu,
                "ann": {"accuracy": self.ann_accuracy, "loss": self.ann_loss, "samples": self.samples},
                "config": self.config.to_dict(), "cells": [c.to_dict() for c in self.cells],
                "plots": self.plots, "plot_statistics": self.plot_statistics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AblationReport":
        """The report of :meth:`to_dict` (e.g. ``ablation.json``), to re-render its tables."""
        ann = data["ann"]
        return cls(model=data["model"], dataset=data["dataset"], from_relu=data["from_relu"],
                   ann_accuracy=ann["accuracy"], ann_loss=ann["loss"], samples=ann["samples"],
                   config=CalibrationConfig.from_dict(data["config"]),
                   cells=[AblationCell(**cell) for cell in data["cells"]], plots=list(data.get("plots", [])),
                   plot_statistics=dict(data.get("plot_statistics", {})))


@dataclasses.dataclass(frozen=True)
class PlotRequest:
    """What to draw: ``layers`` (paths or 1-based positions; ``None``: 2nd, middle, last),
    into ``directory``, from the first ``images`` test images."""

    directory: Path
    layers: tuple[str, ...] | None = None
    images: int = 256


def _accuracy_and_loss(forward, batches: Sequence, *, description: str) -> tuple[float, float, int, Tensor]:
    """Accuracy, mean cross-entropy and image count over all processes, and this process's
    per-image correctness ``(N_local,)`` (bool) for paired comparisons."""
    totals = torch.zeros(3, dtype=torch.float64)
    correct = []
    with torch.no_grad():
        for inputs, labels in progress(batches, description=description):
            logits = forward(inputs)
            correct.append((logits.argmax(1) == labels.to(logits.device)).cpu())
            totals += torch.tensor([float(correct[-1].sum()),
                                    float(F.cross_entropy(logits, labels.to(logits.device), reduction="sum")),
                                    float(labels.numel())], dtype=torch.float64)
    totals = distributed.all_reduce_sum(totals)
    samples = max(float(totals[2]), 1.0)
    correct = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    return float(totals[0]) / samples, float(totals[1]) / samples, int(totals[2]), correct


def discordant_counts(correct: dict[str, Tensor]) -> dict[str, dict[str, list[int]]]:
    """For every ordered pair of configurations evaluated on the same images: how many images
    only the first classifies right, and how many only the second (McNemar's table), summed
    over processes. ``correct`` maps a name to its per-image correctness ``(N,)``."""
    names = list(correct)
    pairs = [(a, b) for a in names for b in names if a < b]
    counts = torch.tensor([[float((correct[a] & ~correct[b]).sum()), float((~correct[a] & correct[b]).sum())]
                           for a, b in pairs], dtype=torch.float64).view(len(pairs), 2)  # (pairs, 2)
    counts = distributed.all_reduce_sum(counts)
    table: dict[str, dict[str, list[int]]] = {name: {} for name in names}
    for (a, b), (only_a, only_b) in zip(pairs, counts.tolist()):
        table[a][b] = [int(only_a), int(only_b)]
        table[b][a] = [int(only_b), int(only_a)]
    return table


def paired_difference(discordant: Sequence[int], samples: int) -> tuple[float, float]:
    """Accuracy difference of two classifiers on the same ``samples`` images and its standard
    error, from the discordant counts ``(only first right, only second right)``:
    ``Δ = (n₁₀ − n₀₁)/N``, ``SE = √(n₁₀ + n₀₁ − N·Δ²)/N`` (McNemar). Images both classify
    alike carry no information about the difference, which is why the paired error is far
    smaller than the binomial error of either accuracy."""
    only_first, only_second = discordant
    n = max(int(samples), 1)
    delta = (only_first - only_second) / n
    return delta, math.sqrt(max(only_first + only_second - n * delta * delta, 0.0)) / n


def _ann_sites(model: nn.Module):
    """The ANN as a graph whose activation sites carry the neuron paths of the conversion."""
    return isolate_activations(trace(copy.deepcopy(model).eval()))


def run_ablation(model: nn.Module, calibration_data: Iterable, test_data: Iterable, *, time_steps: Sequence[int],
                 config: CalibrationConfig = CalibrationConfig(), dagger: Sequence[bool] = (False, True),
                 plots: PlotRequest | None = None, model_name: str | None = None, dataset: str = "",
                 training_data: Iterable | None = None) -> AblationReport:
    """Run the ablation grid (``time_steps`` × ``dagger`` × :data:`VARIANTS`) for ``model``.

    ``calibration_data``: labelled batches of the held-apart training slice; ``training_data``:
    labelled batches the thresholds and stages learn on (the training set), the held-apart
    batches then serving early stopping and the guard only. Without ``training_data`` a
    seeded random ``config.validation_fraction`` of the held-apart batches is held out and the
    rest train (as :func:`parasnn.calibration.pipeline.calibrate` does); ``test_data``:
    labelled test batches. ``config.stages`` and ``config.time_steps`` are ignored (the grid
    sets them). Under torchrun each process passes its shards; every process returns the
    same report and the caller writes it once. Plots are drawn by rank 0 only.
    """
    if not time_steps:
        raise ValueError("run_ablation: time_steps must list at least one T")
    batches = materialise(calibration_data, where="ablation")
    test = materialise(test_data, where="ablation test data", equal_shards=False)  # reduced once, at the end
    device = device_of(model)
    batches, test = on_device(batches, device), on_device(test, device)
    if training_data is None:
        training, validation = split_batches(batches, validation_fraction=config.validation_fraction,
                                             seed=config.seed)
    else:
        training, validation = on_device(materialise(training_data, where="ablation training data"), device), batches
    has_validation = any_batches(validation)
    base, originals = convert_for_calibration(model, training, config=config.replace(time_steps=time_steps[0]))
    from_relu = any(o.levels is None for o in originals.values())
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    teacher = TeacherLogits(model) if config.objective is Objective.DISTILLATION else None
    ann_accuracy, ann_loss, samples, _ = _accuracy_and_loss(lambda x: model(x.to(device)), test, description="ANN")
    report = AblationReport(model=model_name or type(model).__name__, dataset=dataset, from_relu=from_relu,
                            ann_accuracy=ann_accuracy, ann_loss=ann_loss, samples=samples, config=config)
    plot_inputs, ann_values, layers = None, None, None
    if plots is not None:
        from .plots import collect_outputs, resolve_layers
        layers = resolve_layers([path for path, _ in base.neurons()], plots.layers)
        plot_inputs = _first_images(test, plots.images)
        ann_graph = _ann_sites(model)
        ann_values = collect_outputs(lambda x: ann_graph(x.to(device)), ann_graph, layers, plot_inputs)

    for T in time_steps:
        step_config = config.replace(time_steps=T)
        for with_da in dagger:
            start_time = time.perf_counter()
            start, reports = base, {}
            if with_da:
                start, reports["da"] = calibrate_distribution(base, training, originals=originals, config=step_config,
                                                              validation=validation)
            da_seconds = time.perf_counter() - start_time
            networks: dict[str, SpikingNetwork] = {"baseline": start}
            seconds: dict[str, float] = {"baseline": da_seconds}
            stamp = time.perf_counter()
            networks["spatial"], reports["bn"] = recalibrate_batchnorm(start, training, config=step_config,
                                                                       validation=validation, teacher=teacher)
            reverted = {stage for stage, stage_report in reports.items() if stage_report.details.get("reverted")}
            seconds["spatial"] = da_seconds + time.perf_counter() - stamp
            stamp = time.perf_counter()
            networks["temporal"], _ = correct_temporal_bias(start, training, config=step_config, validation=validation,
                                                     teacher=teacher)
            seconds["temporal"] = da_seconds + time.perf_counter() - stamp
            stamp = time.perf_counter()
            networks["full"], _ = correct_temporal_bias(networks["spatial"], training, config=step_config,
                                                        validation=validation, teacher=teacher)
            seconds["full"] = seconds["spatial"] + time.perf_counter() - stamp
            baseline_accuracy, correct, cells = None, {}, []
            for name, stages in VARIANTS:
                network = networks[name]
                accuracy, loss, _, correct[name] = _accuracy_and_loss(
                    lambda x: network(x.to(device), time_steps=T), test,
                    description=f"SNN T={T} {'†' if with_da else ''}{name}")
                if baseline_accuracy is None:
                    baseline_accuracy = accuracy
                held = evaluate_loss(network, validation, time_steps=T) if has_validation else None
                cells.append(AblationCell(
                    time_steps=T, da=with_da, variant=name,
                    stages=[s.value for s in ((Stage.DA,) if with_da else ()) + stages], accuracy=accuracy,
                    delta_vs_ann=accuracy - ann_accuracy, gain_vs_baseline=accuracy - baseline_accuracy,
                    test_loss=loss, validation=held, seconds=seconds[name],
                    reverted=[s for s in ("da", "bn") if s in reverted and (s == "da" or Stage.BN in stages)]))
            table = discordant_counts(correct)  # one collective for all pairs
            for cell, (name, _) in zip(cells, VARIANTS):
                cell.discordant = table[name]
            report.cells.extend(cells)
            if plots is not None and distributed.is_main_process():
                report.plots.append(str(_plot(plots, networks, ann_values, plot_inputs, layers, T=T, da=with_da,
                                              report=report, device=device)))
    return report


def _first_images(batches: Sequence, count: int) -> list[Tensor]:
    chosen, total = [], 0
    for inputs, _ in batches:
        if total >= count:
            break
        chosen.append(inputs[: count - total])
        total += chosen[-1].shape[0]
    return chosen


def _plot(request: PlotRequest, networks: dict[str, SpikingNetwork], ann_values: dict[str, Tensor],
          inputs: list[Tensor], layers: list[str], *, T: int, da: bool, report: AblationReport, device) -> Path:
    from .plots import collect_outputs, distribution_figure, summarize
    snn_values = {}
    for name, _ in VARIANTS:
        network = networks[name]
        key = f"{'†' if da else ''}{name}"
        # an undone stage is marked in the figure, so a variant equal to the baseline reads as what it is
        reverted = report.cell(T, name, da=da).reverted
        label = key + (f" (↺{','.join(reverted)} undone)" if reverted else "")
        snn_values[label] = collect_outputs(lambda x: network(x.to(device), time_steps=T), network.graph_module,
                                            layers, inputs)
        report.plot_statistics[f"T={T} {key}"] = {
            layer: {"ann": summarize(ann_values[layer]), "snn": summarize(snn_values[label][layer],
                                                                         reference=ann_values[layer])}
            for layer in layers}
    suffix = "_da" if da else ""
    title = (f"{report.model} on {report.dataset or 'test data'}: ANN activations (blue) vs SNN time-averaged "
             f"outputs (red), T = {T}{' with DA (†)' if da else ''}")
    return distribution_figure(ann_values, snn_values, path=request.directory / f"distributions_T{T}{suffix}.png",
                               title=title)


def _cell_text(cell: AblationCell) -> str:
    undone = f" ↺{','.join(cell.reverted)}" if cell.reverted else ""
    return f"{100 * cell.accuracy:.2f} ({100 * cell.delta_vs_ann:+.2f}){undone}"


def format_markdown(report: AblationReport) -> str:
    """[STDC] Table 3 layout: one row per (T, †), columns baseline / + spatial /
    + temporal / full; each cell ``accuracy (loss against the ANN)`` in %."""
    backbone = "ReLU" if report.from_relu else "QCFS"
    lines = [f"### Ablation: {report.model} ({backbone} backbone) on {report.dataset or 'the test set'} "
             f"({report.samples} test images)", "",
             f"ANN accuracy {100 * report.ann_accuracy:.2f} %. Cells: SNN accuracy % (difference to the ANN, points); "
             "† = with DA-QCFS error calibration (stage da); ↺da, ↺bn: that stage raised the held-out loss "
             "and was undone (CalibrationConfig.revert_if_worse).", "",
             "| ANN acc. (%) | T | † | " + " | ".join(_COLUMN_TITLES[name] for name, _ in VARIANTS) + " |",
             "|---:|---:|:-:|" + "---:|" * len(VARIANTS)]
    keys = sorted({(c.time_steps, c.da) for c in report.cells})
    for T, da in keys:
        cells = [report.cell(T, name, da=da) for name, _ in VARIANTS]
        lines.append(f"| {100 * report.ann_accuracy:.2f} | {T} | {'†' if da else ''} | "
                     + " | ".join(_cell_text(c) for c in cells) + " |")
    if not all(cell.discordant for cell in report.cells):  # a report saved before paired counts existed
        return "\n".join(lines)
    lines += ["", "Paired differences on the same test images (points ± McNemar standard error; only the "
              "images two configurations classify differently count):", "",
              "| T | † | " + " | ".join(f"{a} − {b}" for a, b in COMPARISONS) + " |",
              "|---:|:-:|" + "---:|" * len(COMPARISONS)]
    for T, da in keys:
        cells = []
        for better, worse in COMPARISONS:
            delta, error = paired_difference(report.cell(T, better, da=da).discordant[worse], report.samples)
            cells.append(f"{100 * delta:+.2f} ± {100 * error:.2f}")
        lines.append(f"| {T} | {'†' if da else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
