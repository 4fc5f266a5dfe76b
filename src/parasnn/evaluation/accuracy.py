"""Accuracy of an ANN and of its spiking network at several T, in parallel and serial form,
with firing rates, synaptic operations and energy (docs/maths.md §8), timed.

Under torchrun each process evaluates its shard of the data (a distributed sampler) and the
counts are summed across processes, so every process holds the same report.
"""
from __future__ import annotations

import dataclasses
import enum
import time
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..datasets.batches import inputs_and_labels
from ..runtime.distributed import all_reduce_sum
from .energy import ActivityMeter, ActivityReport
from ..conversion.network import SpikingNetwork, device_of, synchronize
from ..runtime.progress import progress
from ..simulation.forms import SimulationResult, parallel_simulation, serial_simulation

__all__ = ["Form", "SIMULATIONS", "SNNResult", "EvaluationReport", "ann_accuracy", "snn_accuracy", "evaluate", "evaluate_method",
           "format_table"]


class Form(str, enum.Enum):
    """How the spiking network is run: one parallel pass, or T serial steps."""

    PARALLEL = "parallel"
    SERIAL = "serial"


SIMULATIONS: dict[Form, Callable[..., SimulationResult]] = {
    Form.PARALLEL: parallel_simulation,
    Form.SERIAL: serial_simulation,
}


@dataclasses.dataclass
class SNNResult:
    form: Form
    time_steps: int
    accuracy: float
    seconds: float
    samples: int
    activity: ActivityReport | None = None

    def to_dict(self) -> dict:
        return {"form": self.form.value, "time_steps": self.time_steps, "accuracy": self.accuracy,
                "seconds": self.seconds, "samples": self.samples,
                "activity": self.activity.to_dict() if self.activity else None}


@dataclasses.dataclass
class EvaluationReport:
    ann_accuracy: float
    ann_seconds: float
    samples: int
    results: list[SNNResult]

    def to_dict(self) -> dict:
        return {"ann": {"accuracy": self.ann_accuracy, "seconds": self.ann_seconds, "samples": self.samples},
                "snn": [r.to_dict() for r in self.results]}


def _split(batch) -> tuple[Tensor, Tensor]:
    return inputs_and_labels(batch, where="evaluation")


def ann_accuracy(model: nn.Module, batches: Iterable, *, description: str = "ANN") -> tuple[float, float, int]:
    """``(accuracy, seconds, samples)`` of ``model`` in eval mode (summed over processes)."""
    device = device_of(model)
    model.eval()
    correct = total = 0
    seconds = 0.0
    with torch.no_grad():
        for batch in progress(batches, description=description):
            inputs, labels = (t.to(device) for t in _split(batch))
            start = time.perf_counter()
            logits = model(inputs)
            synchronize(device)
            seconds += time.perf_counter() - start
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += labels.numel()
    counts = all_reduce_sum(torch.tensor([correct, total], dtype=torch.float64))
    return float(counts[0] / counts[1].clamp(min=1)), seconds, int(counts[1])


def snn_accuracy(network: SpikingNetwork, batches: Iterable, *, time_steps: int, form: Form,
                 activity: bool = True) -> SNNResult:
    """Accuracy of ``network`` run in ``form`` at ``time_steps``; firing rates and costs
    from the same runs when ``activity``. ``seconds`` counts the network runs only."""
    simulation = SIMULATIONS[Form(form)]
    device = device_of(network)
    meter = ActivityMeter(network, time_steps=time_steps) if activity else None
    correct = total = 0
    seconds = 0.0
    for batch in progress(batches, description=f"SNN {Form(form).value} T={time_steps}"):
        inputs, labels = (t.to(device) for t in _split(batch))
        start = time.perf_counter()
        result = simulation(network, inputs, time_steps=time_steps)
        synchronize(device)
        seconds += time.perf_counter() - start
        correct += int((result.output.argmax(dim=1) == labels).sum())
        total += labels.numel()
        if meter is not None:
            meter.add(inputs, result.spike_counts)
    counts = all_reduce_sum(torch.tensor([correct, total], dtype=torch.float64))
    report = None
    if meter is not None and meter.macs is not None:
        _reduce_meter(meter)
        report = meter.report()
    return SNNResult(Form(form), time_steps, float(counts[0] / counts[1].clamp(min=1)), seconds, int(counts[1]),
                     report)


def _reduce_meter(meter: ActivityMeter) -> None:
    """Sum spike statistics over processes (identity in one process)."""
    paths = sorted(meter.totals)
    if not paths:
        return
    values = torch.tensor([meter.totals[p][1:] for p in paths], dtype=torch.float64)  # spikes, silent, samples
    values = all_reduce_sum(values)
    for path, (spikes, silent, samples) in zip(paths, values.tolist()):
        meter.totals[path][1:] = [spikes, silent, int(samples)]


def evaluate(ann: nn.Module | None, network: SpikingNetwork, batches: Iterable, *, time_steps: Sequence[int],
             forms: Sequence[Form] = (Form.PARALLEL, Form.SERIAL), activity: bool = True) -> EvaluationReport:
    """ANN accuracy (if ``ann`` given) and SNN accuracy for every ``T`` × form.

    ``batches`` must be re-iterable (a DataLoader or a list)."""
    if not time_steps:
        raise ValueError("evaluate: time_steps must list at least one T")
    ann_result = ann_accuracy(ann, batches) if ann is not None else (float("nan"), 0.0, 0)
    results = [snn_accuracy(network, batches, time_steps=t, form=form, activity=activity)
               for t in time_steps for form in forms]
    samples = ann_result[2] or (results[0].samples if results else 0)
    return EvaluationReport(ann_result[0], ann_result[1], samples, results)


def evaluate_method(ann: nn.Module | None, network: SpikingNetwork, batches: Iterable, *, time_steps: Sequence[int],
                    forms: Sequence[Form] = (Form.PARALLEL, Form.SERIAL), activity: bool = True,
                    options: dict | None = None) -> EvaluationReport:
    """:func:`evaluate` with the signature every method's evaluation shares
    (:class:`parasnn.conversion.methods.MethodSpec`); no method-specific ``options``."""
    return evaluate(ann, network, batches, time_steps=time_steps, forms=forms, activity=activity)


def format_table(report: EvaluationReport, *, title: str | None = None) -> str:
    """Markdown table: ANN row, then one row per T with parallel/serial accuracy, loss
    against the ANN, time, mean firing rate and energy ratio."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| network | T | accuracy (%) | Δ vs ANN | time (s) | firing rate | energy / ANN |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    ann = report.ann_accuracy
    if ann == ann:  # not NaN
        lines.append(f"| ANN | – | {100 * ann:.2f} | – | {report.ann_seconds:.2f} | – | 1.000 |")
    for result in report.results:
        delta = f"{100 * (result.accuracy - ann):+.2f}" if ann == ann else "–"
        rate = energy = "–"
        if result.activity is not None:
            layers = result.activity.layers
            neurons = sum(layer.neurons for layer in layers)
            rate = f"{sum(layer.spikes for layer in layers) / max(neurons, 1) / result.time_steps:.3f}"
            energy = f"{result.activity.snn_energy_pj / max(result.activity.ann_energy_pj, 1e-12):.3f}"
        lines.append(f"| SNN {result.form.value} | {result.time_steps} | {100 * result.accuracy:.2f} | {delta} | "
                     f"{result.seconds:.2f} | {rate} | {energy} |")
    return "\n".join(lines)
