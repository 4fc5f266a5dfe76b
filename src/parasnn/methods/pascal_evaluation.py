"""Evaluating PASCAL's serial SNN (:mod:`parasnn.methods.pascal`) against its QCFS ANN over a
data set: accuracy, effective latency, spikes per layer (emitted and internal), level
mismatches, energy; and the Markdown table of it."""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable

import torch

from ..conversion.network import SpikingNetwork, device_of
from ..datasets.batches import inputs_and_labels
from ..evaluation.energy import ActivityMeter, ActivityReport, LayerActivity
from ..runtime.progress import progress
from .pascal import Accumulation, Correction, LayerSchedule, compare_with_ann, pascal_simulation

__all__ = ["PascalLayerReport", "PascalEvaluation", "evaluate_pascal", "evaluate_method", "format_pascal"]


@dataclasses.dataclass
class PascalLayerReport:
    """One layer over a whole evaluation: its schedule and spikes per sample."""

    schedule: LayerSchedule
    neurons: int  # per sample
    emitted: float  # emitted spikes per sample (all positive)
    positive: float  # internal positive spikes per sample
    negative: float  # internal negative spikes per sample
    level_mismatches: int  # neurons (over all samples) whose count differs from the QCFS level

    @property
    def firing_rate(self) -> float:
        """Emitted spikes per neuron per emission step (``T_l = L``)."""
        return self.emitted / max(self.neurons, 1) / self.schedule.levels

    def to_dict(self) -> dict:
        return {**self.schedule.to_dict(), "neurons": self.neurons, "emitted_spikes": self.emitted,
                "internal_positive_spikes": self.positive, "internal_negative_spikes": self.negative,
                "firing_rate": self.firing_rate, "level_mismatches": self.level_mismatches}


@dataclasses.dataclass
class PascalEvaluation:
    """ANN vs PASCAL serial SNN on a data set (see :func:`evaluate_pascal`)."""

    samples: int
    ann_accuracy: float
    snn_accuracy: float
    effective_latency: int
    accumulation: str
    correction: str
    equal_outputs: int
    equal_predictions: int
    max_abs_difference: float
    layers: list[PascalLayerReport]
    activity: ActivityReport | None
    ann_seconds: float
    snn_seconds: float

    def to_dict(self) -> dict:
        return {"method": "pascal", "samples": self.samples, "ann_accuracy": self.ann_accuracy,
                "snn_accuracy": self.snn_accuracy, "effective_latency": self.effective_latency,
                "accumulation": self.accumulation, "correction": self.correction,
                "equal_outputs": self.equal_outputs, "equal_predictions": self.equal_predictions,
                "max_abs_difference": self.max_abs_difference, "layers": [layer.to_dict() for layer in self.layers],
                "activity": self.activity.to_dict() if self.activity else None,
                "ann_seconds": self.ann_seconds, "snn_seconds": self.snn_seconds}


def evaluate_pascal(ann: torch.nn.Module, network: SpikingNetwork, batches: Iterable, *,
                    accumulation: Accumulation | str = Accumulation.INPUTS,
                    correction: Correction | str = Correction.PAPER, activity: bool = True) -> PascalEvaluation:
    """Accuracy of the QCFS ANN and of its PASCAL serial SNN on ``(inputs, labels)`` batches,
    with T_eff, per-layer schedule and spikes, level mismatches against the ANN and, when
    ``activity``, firing rates and the SOP energy estimate of :mod:`parasnn.evaluation.energy` (each layer's
    rate over its own ``T_l``; SOPs from the emitted spikes)."""
    was_training = ann.training
    ann.eval()
    device = device_of(network)
    meter = None
    totals: dict[str, list] = {}  # name -> [neurons, emitted, positive, negative, mismatches]
    correct_ann = correct_snn = samples = equal_outputs = equal_predictions = 0
    max_difference, ann_seconds, snn_seconds = 0.0, 0.0, 0.0
    timing: list[LayerSchedule] = []
    latency = 0
    for batch in progress(batches, description="PASCAL serial"):
        inputs, labels = (tensor.to(device) for tensor in inputs_and_labels(batch, where="evaluate_pascal"))
        start = time.perf_counter()
        with torch.no_grad():
            ann_output = ann(inputs)
        ann_seconds += time.perf_counter() - start
        start = time.perf_counter()
        result = pascal_simulation(network, inputs, accumulation=accumulation, correction=correction)
        snn_seconds += time.perf_counter() - start
        comparison = compare_with_ann(network, result, ann_output, inputs)
        timing, latency = result.schedule, result.effective_latency
        correct_ann += int((ann_output.argmax(1) == labels).sum())
        correct_snn += int((result.output.argmax(1) == labels).sum())
        samples += labels.numel()
        equal_outputs += comparison["equal_outputs"]
        equal_predictions += comparison["equal_predictions"]
        max_difference = max(max_difference, comparison["max_abs_difference"])
        for name, count in result.spike_counts.items():
            entry = totals.setdefault(name, [count[0].numel(), 0.0, 0.0, 0.0, 0])
            entry[1] += float(count.abs().sum())  # every emitted spike counts (a negative one as one spike)
            entry[2] += float(result.positive[name].sum())
            entry[3] += float(result.negative[name].sum())
            entry[4] += comparison["level_mismatches"][name]
        if activity:
            meter = meter or ActivityMeter(network, time_steps=latency)
            meter.add(inputs, result.spike_counts)
    layers = [PascalLayerReport(entry, totals[entry.name][0], totals[entry.name][1] / max(samples, 1),
                                totals[entry.name][2] / max(samples, 1), totals[entry.name][3] / max(samples, 1),
                                totals[entry.name][4]) for entry in timing]
    report = None
    if meter is not None and meter.macs is not None:
        report = meter.report()
        levels = {entry.name: entry.levels for entry in timing}
        # Each layer's firing rate over its own emission window T_l, not over T_eff.
        report.layers = [LayerActivity(a.name, a.neurons, a.spikes, a.silent, levels[a.name]) for a in report.layers]
    ann.train(was_training)
    if samples == 0:
        raise ValueError("evaluate_pascal: no test batches; pass (inputs, labels) batches")
    return PascalEvaluation(samples, correct_ann / max(samples, 1), correct_snn / max(samples, 1), latency,
                            Accumulation(accumulation).value, Correction(correction).value, equal_outputs,
                            equal_predictions, max_difference, layers, report, ann_seconds, snn_seconds)


def evaluate_method(ann: torch.nn.Module, network: SpikingNetwork, batches: Iterable, *, time_steps=None,
                    forms=None, activity: bool = True, options: dict | None = None) -> PascalEvaluation:
    """:func:`evaluate_pascal` with the signature every method's evaluation shares
    (:class:`parasnn.conversion.methods.MethodSpec`). PASCAL's T is set by its layers' L, so
    ``time_steps`` and ``forms`` do not apply; ``options``: ``accumulation``."""
    return evaluate_pascal(ann, network, batches, accumulation=(options or {}).get("accumulation", "inputs"),
                           activity=activity)


def format_pascal(evaluation: PascalEvaluation, *, title: str | None = None) -> str:
    """Markdown: ANN vs PASCAL accuracy and T_eff, then one row per layer."""
    e = evaluation
    lines = [f"### {title}", ""] if title else []
    energy = "–"
    if e.activity is not None:
        energy = f"{e.activity.snn_energy_pj / max(e.activity.ann_energy_pj, 1e-12):.3f}"
    lines += ["| network | T_eff | accuracy (%) | Δ vs ANN | equal logits | equal predictions | time (s) | "
              "energy / ANN |",
              "|---|---:|---:|---:|---:|---:|---:|---:|",
              f"| QCFS ANN | – | {100 * e.ann_accuracy:.2f} | – | – | – | {e.ann_seconds:.2f} | 1.000 |",
              f"| PASCAL serial ({e.accumulation}) | {e.effective_latency} | {100 * e.snn_accuracy:.2f} | "
              f"{100 * (e.snn_accuracy - e.ann_accuracy):+.2f} | {e.equal_outputs}/{e.samples} | "
              f"{e.equal_predictions}/{e.samples} | {e.snn_seconds:.2f} | {energy} |", "",
              "| layer | L | input window | T_in | correction | emission window | latency | emitted/neuron | "
              "firing rate | internal +/− per neuron | level mismatches |",
              "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for layer in e.layers:
        s = layer.schedule
        per_neuron = max(layer.neurons, 1)
        lines.append(f"| {s.name} | {s.levels} | {s.input_start}–{s.input_end} | {s.input_steps} | {s.correction} | "
                     f"{s.emit_start}–{s.emit_end} | {s.latency} | {layer.emitted / per_neuron:.3f} | "
                     f"{layer.firing_rate:.3f} | {layer.positive / per_neuron:.3f}/{layer.negative / per_neuron:.3f} | "
                     f"{layer.level_mismatches} |")
    lines += ["", f"T_eff = {e.effective_latency} steps from input presentation to the last emitted spike "
                  f"(correction schedule: {e.correction}). SOPs count every emitted spike; the internal ± spikes "
                  "of the integration/correction phases touch no synapse and are listed apart."]
    return "\n".join(lines)
