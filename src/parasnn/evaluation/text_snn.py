"""A pretrained sentence encoder as a spiking network, scored on real text (training-free,
docs/maths.md §7): the table ``parasnn text`` prints.

For each T the converted all-MiniLM-L6-v2 (every GELU, softmax, layer norm and attention
product spiking) encodes the same sentences as the ANN, and is scored by

* the cosine of each SNN sentence embedding to the ANN's (mean and minimum),
* a logistic probe trained on the ANN's embeddings of Rotten Tomatoes snippets and
  evaluated on the SNN's embeddings of other snippets,
* the Pearson correlation of the SNN's cosine similarities of the 50 Lee documents with the
  1,225 human judgements,
* spikes per token, energy per sentence (docs/maths.md §8) and encoding time, parallel form.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork
from ..conversion.stages import ConversionConfig, convert
from ..simulation.forms import parallel_simulation
from .energy import ActivityMeter
from .text import encode_texts, score_text_encoder

__all__ = ["TextRow", "TextReport", "snn_encoder", "evaluate_text_snn", "format_text_table"]


@dataclasses.dataclass
class TextRow:
    """One row of the table: the ANN (``time_steps`` 0) or the SNN at T."""

    time_steps: int
    cosine_mean: float
    cosine_min: float
    probe_accuracy: float
    lee_pearson: float
    spikes_per_token: float
    energy_uj: float  # per sentence
    seconds: float  # encoding the scored sentences (test split and Lee documents), parallel form


@dataclasses.dataclass
class TextReport:
    rows: list[TextRow]
    sentences: int
    bases: int
    calibration_sentences: int
    conversion_seconds: float

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self)}


def snn_encoder(network: SpikingNetwork, tokenize, *, time_steps: int, meter: ActivityMeter | None = None):
    """``encode(texts) -> (n, d)`` running the parallel SNN; ``meter`` collects spike counts."""
    def encode(texts: Sequence[str]) -> Tensor:
        inputs = tokenize(texts)
        result = parallel_simulation(network, *inputs, time_steps=time_steps)
        if meter is not None:
            meter.add(inputs, result.spike_counts)
        return result.output
    return encode


def evaluate_text_snn(model: nn.Module, tokenize, *, train: Sequence[tuple[str, int]],
                      test: Sequence[tuple[str, int]], lee_documents: Sequence[str], lee_judgements,
                      calibration: Sequence[str], time_steps: Sequence[int], bases: int = 4,
                      batch_size: int = 32) -> TextReport:
    """Convert ``model`` (inputs ``(input_ids, attention_mask)``) with multi-basis neurons fitted
    for every T in ``time_steps`` on the inputs seen on ``calibration`` sentences, then score
    the ANN and the SNN at each T (module docstring). ``tokenize(texts) -> (ids, mask)``."""
    model = model.eval()

    def ann(texts):
        with torch.no_grad():
            return model(*tokenize(texts))

    batches = [(tokenize(calibration[i:i + batch_size]),) for i in range(0, len(calibration), batch_size)]
    start = time.perf_counter()
    network = convert(model, calibration_data=batches,
                      config=ConversionConfig(bases=bases, function_time_steps=tuple(time_steps)))
    conversion_seconds = time.perf_counter() - start
    texts = [text for text, _ in test] + list(lee_documents)
    tokens = sum(int(tokenize(texts[i:i + batch_size])[1].sum()) for i in range(0, len(texts), batch_size))
    rows = []
    # Every row's time is that of encoding the same scored sentences (test split and Lee
    # documents), so the column compares like with like.
    start = time.perf_counter()
    encode_texts(ann, texts, batch_size=batch_size)
    ann_seconds = time.perf_counter() - start
    scores = score_text_encoder(ann, reference=ann, train=train, test=test, lee_documents=lee_documents,
                                lee_judgements=lee_judgements, batch_size=batch_size)
    rows.append(TextRow(0, scores.cosine_mean, scores.cosine_min, scores.probe_accuracy, scores.lee_pearson,
                        0.0, float("nan"), ann_seconds))
    for steps in time_steps:
        meter = ActivityMeter(network, time_steps=steps)
        encode = snn_encoder(network, tokenize, time_steps=steps, meter=meter)
        start = time.perf_counter()
        encode_texts(encode, texts, batch_size=batch_size)  # timed, and the meter sees every sentence once
        seconds = time.perf_counter() - start
        report = meter.report()
        spikes = sum(layer.spikes for layer in report.layers) * report.samples  # per-sample means × samples
        if rows[0].energy_uj != rows[0].energy_uj:  # the ANN's energy, from the same operation counts
            rows[0].energy_uj = report.ann_energy_pj * 1e-6
        scores = score_text_encoder(encode, reference=ann, train=train, test=test, lee_documents=lee_documents,
                                    lee_judgements=lee_judgements, batch_size=batch_size)
        rows.append(TextRow(steps, scores.cosine_mean, scores.cosine_min, scores.probe_accuracy,
                            scores.lee_pearson, spikes / max(tokens, 1), report.snn_energy_pj * 1e-6, seconds))
    return TextReport(rows, len(texts), bases, len(calibration), conversion_seconds)


def format_text_table(report: TextReport, *, title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| | cosine to ANN (mean / min) | probe accuracy | Lee Pearson | spikes per token | "
              "energy per sentence (µJ) | time (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in report.rows:
        name = "ANN" if row.time_steps == 0 else f"SNN T = {row.time_steps}"
        cosine = "1 / 1" if row.time_steps == 0 else f"{row.cosine_mean:.4f} / {row.cosine_min:.4f}"
        spikes = "–" if row.time_steps == 0 else f"{row.spikes_per_token:,.0f}"
        lines.append(f"| {name} | {cosine} | {row.probe_accuracy:.3f} | {row.lee_pearson:.3f} | {spikes} | "
                     f"{row.energy_uj:.1f} | {row.seconds:.1f} |")
    lines += ["", f"{report.sentences} sentences scored (time: encoding them, ANN and parallel SNN in the same run); "
              f"multi-basis neurons with N = {report.bases} bases fitted "
              f"on the inputs of {report.calibration_sentences} calibration sentences "
              f"(conversion {report.conversion_seconds:.0f} s). Energy per sentence: layers fed by spikes pay "
              "0.9 pJ per synaptic operation, analog-input layers, products and the bases' weighted sums "
              "4.6 pJ per multiply-accumulate."]
    return "\n".join(lines)
