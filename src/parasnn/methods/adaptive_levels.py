"""PASCAL's adaptive layerwise activation (AL, [PASCAL], docs/maths.md §5): pick the quantization
levels L of every QCFS layer from the shape of its output histogram, then fine-tune.

The procedure (:func:`train_adaptive`, ``parasnn train --levels auto``)
----------------------------------------------------------------------
1. **Probe**: train the QCFS network with one L for every layer (:data:`PROBE_LEVELS` = 4).
2. **Measure**: on the held-apart training slice (never the test set), histogram each QCFS
   layer's outputs into ``n`` = :data:`HISTOGRAM_BINS` = 5 equal bins over ``[0, θ]`` — with
   L = 4 every bin holds exactly one QCFS level ``0, θ/4, …, θ``, as in the authors' script.
3. **Score**: the layer-sensitivity metric of the histogram's bin counts ``h_1..h_n``::

       M  = A · (g² + 1) · K'        K' = K + 3n² / ((n − 2)(n − 3))

   ``A`` van der Eijk's agreement (:func:`agreement`), ``g`` the skewness and ``K`` the
   excess kurtosis of the ``n`` bin counts taken as a sample (:func:`skewness`,
   :func:`excess_kurtosis`).
4. **Cluster** the layers by M into ``k`` groups (:func:`cluster_1d`) and give the groups,
   from the lowest mean M to the highest, the levels of ``level_choices`` in increasing
   order (default :data:`DEFAULT_LEVEL_CHOICES` = (2, 4, 8), so ``k`` = 3): the more
   sensitive a layer, the more levels.
5. **Fine-tune** the probe network, warm-started, with the chosen per-layer L.

Decisions (the paper text we have fixes the formula, not these)
---------------------------------------------------------------
* **Estimators.** ``g`` and ``K`` are the bias-corrected sample estimators ``G1`` and ``G2``
  (``scipy.stats.skew(bias=False)``, ``scipy.stats.kurtosis(bias=False)``, pandas'
  ``skew``/``kurt``): the ``(n − 2)(n − 3)`` denominators of ``K'`` belong to ``G2``'s
  family. The constant ``3n²/((n−2)(n−3))`` is docs/maths.md's reading of the authors' script
  (``G2``'s own constant would be ``3(n−1)²/…``); we follow docs/maths.md. It also keeps
  ``K' > 0`` (``G2 ≥ −4`` for n = 5), so the sign of M is the sign of A.
* **Degenerate histograms.** Equal bin counts have no spread: ``g = K = 0`` then (and
  ``A = 0``, so ``M = 0``). ``n ≥ 4`` is required (``K'`` divides by ``n − 3``).
* **Direction.** "Sensitivity" is read literally: a larger M means a more sensitive layer
  and gets more levels. Large M means a histogram concentrated in one bin with a long tail
  (high agreement, skew and kurtosis), the heavy-tailed case that uniform quantization
  resolves worst; a polarised (bimodal, ``A < 0``) layer is close to binary and gets few.
* **Clustering.** Exact 1-D k-means: the partition of the sorted distinct M values (each
  weighted by how many layers share it) into ``k`` contiguous groups with the least
  within-group sum of squares, found by dynamic programming. It is deterministic without
  any seed (no random initialisation; ties go to the earliest split), layers with equal M
  always share a group, and its answer is the global optimum, which seeded Lloyd k-means
  only approximates. If there are fewer distinct values than ``k``, ``k`` shrinks to their
  number and the groups take evenly spaced entries of ``level_choices``.
* **Fine-tuning** uses the probe's recipe with ``finetune_epochs`` epochs and a peak
  learning rate of ``finetune_lr`` (default a tenth of the probe's).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..conversion.network import observe
from ..neurons.qcfs import QCFS
from ..runtime.checks import require_positive_int

__all__ = ["HISTOGRAM_BINS", "PROBE_LEVELS", "DEFAULT_LEVEL_CHOICES", "agreement", "skewness", "excess_kurtosis",
           "kurtosis_term", "sensitivity", "output_histograms", "cluster_1d", "assign_levels", "LayerSensitivity",
           "analyse", "train_adaptive"]

HISTOGRAM_BINS = 5
PROBE_LEVELS = 4
DEFAULT_LEVEL_CHOICES: tuple[int, ...] = (2, 4, 8)


# -- the statistics ---------------------------------------------------------------------------

def _frequencies(histogram: Sequence[float]) -> list[float]:
    values = [float(v) for v in (histogram.tolist() if isinstance(histogram, Tensor) else histogram)]
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"histogram counts must be finite and >= 0, got {values}")
    return values


def agreement(histogram: Sequence[float]) -> float:
    """Van der Eijk's agreement ``A ∈ [−1, 1]`` of a frequency distribution over ``K ≥ 3`` ordered
    categories (van der Eijk 2001, "Measuring agreement in ordered rating scales").

    The distribution is peeled into layers: repeatedly take the smallest non-zero frequency
    ``m``, the layer is the 0/1 pattern of the non-empty categories, weighted by
    ``m·S/N`` (``S`` non-empty categories, ``N`` total). A pattern's agreement is
    ``U·(1 − (S − 1)/(K − 1))`` with unimodality
    ``U = ((K − 2)·TU − (K − 1)·TDU) / ((K − 2)·(TU + TDU))`` over all ordered triples of
    categories: ``TU`` counts patterns 110 and 011, ``TDU`` counts 101 (``U = 1`` if neither
    occurs). ``A`` is the weighted sum. 1: all mass in one category; 0: uniform;
    −1: split between the two extremes.
    """
    remainder = _frequencies(histogram)
    categories, total = len(remainder), sum(remainder)
    if categories < 3:
        raise ValueError(f"agreement needs at least 3 categories, got {categories}")
    if total <= 0:
        raise ValueError("agreement of an empty histogram is undefined")
    result = 0.0
    while any(v > 0 for v in remainder):
        smallest = min(v for v in remainder if v > 0)
        pattern = [v > 0 for v in remainder]
        remainder = [v - smallest if v > 0 else 0.0 for v in remainder]
        filled = sum(pattern)
        unimodal = bimodal = 0
        for i in range(categories - 2):
            for j in range(i + 1, categories - 1):
                for k in range(j + 1, categories):
                    triple = (pattern[i], pattern[j], pattern[k])
                    if triple in ((True, True, False), (False, True, True)):
                        unimodal += 1
                    elif triple == (True, False, True):
                        bimodal += 1
        if unimodal == bimodal == 0:
            unimodality = 1.0
        else:
            unimodality = (((categories - 2) * unimodal - (categories - 1) * bimodal)
                           / ((categories - 2) * (unimodal + bimodal)))
        layer = unimodality * (1 - (filled - 1) / (categories - 1))
        result += layer * smallest * filled / total
    return result


def _central_moments(values: Sequence[float]) -> tuple[int, float, float, float]:
    data = _frequencies(values)
    count = len(data)
    mean = sum(data) / count
    m2 = sum((v - mean) ** 2 for v in data) / count
    m3 = sum((v - mean) ** 3 for v in data) / count
    m4 = sum((v - mean) ** 4 for v in data) / count
    return count, m2, m3, m4


def skewness(values: Sequence[float]) -> float:
    """Bias-corrected sample skewness ``G1 = g1·√(n(n−1))/(n−2)``, ``g1 = m3/m2^{3/2}``
    (= ``scipy.stats.skew(values, bias=False)``); 0 for values without spread."""
    count, m2, m3, _ = _central_moments(values)
    if count < 3:
        raise ValueError(f"skewness needs at least 3 values, got {count}")
    if m2 <= 0:
        return 0.0
    return m3 / m2 ** 1.5 * math.sqrt(count * (count - 1)) / (count - 2)


def excess_kurtosis(values: Sequence[float]) -> float:
    """Bias-corrected sample excess kurtosis ``G2 = ((n+1)·g2 + 6)·(n−1)/((n−2)(n−3))``,
    ``g2 = m4/m2² − 3`` (= ``scipy.stats.kurtosis(values, fisher=True, bias=False)``);
    0 for values without spread."""
    count, m2, _, m4 = _central_moments(values)
    if count < 4:
        raise ValueError(f"excess kurtosis needs at least 4 values, got {count}")
    if m2 <= 0:
        return 0.0
    g2 = m4 / m2 ** 2 - 3
    return ((count + 1) * g2 + 6) * (count - 1) / ((count - 2) * (count - 3))


def kurtosis_term(histogram: Sequence[float]) -> float:
    """``K' = K + 3n²/((n − 2)(n − 3))`` over the ``n`` bin counts (docs/maths.md §5)."""
    n = len(_frequencies(histogram))
    return excess_kurtosis(histogram) + 3 * n ** 2 / ((n - 2) * (n - 3))


def sensitivity(histogram: Sequence[float]) -> float:
    """PASCAL's layer-sensitivity metric ``M = A · (g² + 1) · K'`` of a histogram's bin counts."""
    return agreement(histogram) * (skewness(histogram) ** 2 + 1) * kurtosis_term(histogram)


# -- measuring a network ----------------------------------------------------------------------

def _qcfs_layers(model: nn.Module) -> list[tuple[str, QCFS]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, QCFS)]


def output_histograms(model: nn.Module, batches: Iterable, *, bins: int = HISTOGRAM_BINS) -> dict[str, Tensor]:
    """Histogram of every QCFS layer's outputs over ``batches`` (tensors or ``(inputs, labels)``),
    model in eval mode: ``{module path: (bins,) float64 counts}``, ``bins`` equal bins over
    ``[0, θ]`` (the output range; ``θ`` itself falls in the last bin), in **forward order** (the
    order in which the input reaches the layers — the order of ``ActivationSpec.levels``).
    Layers the input never reaches are left out."""
    layers = _qcfs_layers(model)
    if not layers:
        raise ValueError("output_histograms: the model has no QCFS layers")
    counts: dict[str, Tensor] = {}  # filled in the order the hooks first fire

    def hook(name: str, module: QCFS):
        def record(_module, _args, output):
            top = float(module.effective_threshold())
            # L·(θ/L) can round above θ (L not a power of two) and histc drops values past max.
            values = output.detach().double().cpu().clamp(0.0, top)
            histogram = torch.histc(values, bins=bins, min=0.0, max=top)
            counts[name] = counts[name] + histogram if name in counts else histogram
        return record

    observe(model, batches, [(module, hook(name, module)) for name, module in layers])
    return counts


def cluster_1d(values: Sequence[float], *, clusters: int) -> list[int]:
    """Exact 1-D k-means (module docstring): a group index per value, ``0`` for the group with the
    lowest mean, ``k_eff − 1`` for the highest, ``k_eff = min(clusters, distinct values)``."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("cluster_1d: no values")
    if any(not math.isfinite(v) for v in data):
        raise ValueError(f"cluster_1d: values must be finite, got {data}")
    require_positive_int(clusters, "cluster_1d: clusters")
    distinct = sorted(set(data))
    weights = [data.count(v) for v in distinct]
    groups = min(clusters, len(distinct))
    size = len(distinct)
    # Prefix sums of weights, weighted values and weighted squares: O(1) cost of any run i..j.
    w, s, q = [0.0], [0.0], [0.0]
    for value, weight in zip(distinct, weights):
        w.append(w[-1] + weight)
        s.append(s[-1] + weight * value)
        q.append(q[-1] + weight * value * value)

    def cost(i: int, j: int) -> float:  # within-group sum of squares of distinct[i:j]
        total = w[j] - w[i]
        return max(0.0, (q[j] - q[i]) - (s[j] - s[i]) ** 2 / total)

    inf = float("inf")
    best = [[inf] * (size + 1) for _ in range(groups + 1)]  # best[g][j]: first j values in g groups
    split = [[0] * (size + 1) for _ in range(groups + 1)]
    best[0][0] = 0.0
    for g in range(1, groups + 1):
        for j in range(g, size + 1):
            for i in range(g - 1, j):  # last group is distinct[i:j]; strict < keeps the earliest split
                candidate = best[g - 1][i] + cost(i, j)
                if candidate < best[g][j]:
                    best[g][j], split[g][j] = candidate, i
    label_of: dict[float, int] = {}
    j = size
    for g in range(groups, 0, -1):
        i = split[g][j]
        for value in distinct[i:j]:
            label_of[value] = g - 1
        j = i
    return [label_of[v] for v in data]


def assign_levels(metrics: Sequence[float], *, level_choices: Sequence[int] = DEFAULT_LEVEL_CHOICES
                  ) -> tuple[list[int], list[int]]:
    """``(group per layer, L per layer)``: :func:`cluster_1d` into ``len(level_choices)`` groups,
    the groups in increasing mean M taking ``sorted(level_choices)`` in increasing order."""
    choices = sorted(int(c) for c in level_choices)
    if not choices or choices[0] < 1:
        raise ValueError(f"level_choices must be integers >= 1, got {list(level_choices)}")
    labels = cluster_1d(metrics, clusters=len(choices))
    groups = max(labels) + 1
    if groups == len(choices):
        picks = choices
    elif groups == 1:
        picks = [choices[(len(choices) - 1) // 2]]
    else:  # fewer distinct metrics than choices: evenly spaced choices, lowest and highest kept
        picks = [choices[round(g * (len(choices) - 1) / (groups - 1))] for g in range(groups)]
    return labels, [picks[label] for label in labels]


@dataclasses.dataclass
class LayerSensitivity:
    """One QCFS layer: its histogram, the metric's parts, its group and chosen L."""

    name: str
    histogram: list[float]
    agreement: float
    skewness: float
    kurtosis_term: float
    metric: float
    group: int
    levels: int


def analyse(model: nn.Module, batches: Iterable, *, level_choices: Sequence[int] = DEFAULT_LEVEL_CHOICES,
            bins: int = HISTOGRAM_BINS) -> list[LayerSensitivity]:
    """Steps 2–4 of the procedure on a trained QCFS ``model``: one entry per QCFS layer."""
    histograms = output_histograms(model, batches, bins=bins)
    names = list(histograms)
    metrics = [sensitivity(histograms[name]) for name in names]
    groups, levels = assign_levels(metrics, level_choices=level_choices)
    return [LayerSensitivity(name, histograms[name].tolist(), agreement(histograms[name]),
                             skewness(histograms[name]), kurtosis_term(histograms[name]), metric, group, level)
            for name, metric, group, level in zip(names, metrics, groups, levels)]


def format_analysis(layers: Sequence[LayerSensitivity]) -> str:
    """The chosen L per layer, with the metric's parts, as a markdown table."""
    lines = ["| site | layer | histogram | A | g | K' | M | group | L |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for index, layer in enumerate(layers):
        histogram = ", ".join(f"{int(v)}" for v in layer.histogram)
        lines.append(f"| {index} | {layer.name} | {histogram} | {layer.agreement:.3f} | {layer.skewness:.3f} | "
                     f"{layer.kurtosis_term:.3f} | {layer.metric:.3f} | {layer.group} | {layer.levels} |")
    return "\n".join(lines)


# -- the two-phase training ---------------------------------------------------------------------

def _warm_start(state_dict: dict[str, Any], layers: Sequence[LayerSensitivity]) -> dict[str, Any]:
    """The probe's weights with every QCFS layer's recorded L replaced by the chosen one (QCFS keeps
    L in its extra state, which would otherwise restore the probe's L on loading)."""
    state = dict(state_dict)
    for layer in layers:
        state[f"{layer.name}._extra_state" if layer.name else "_extra_state"] = {"levels": int(layer.levels)}
    return state


def _histogram_batches(config, *, size: int = 2048, batch_size: int = 256) -> list:
    """The held-apart slice of the training set that :func:`parasnn.training.train.train` validates on
    (or, without one, a seeded training slice): the data the histograms are measured on."""
    from ..datasets.load import checkpoint_dataset
    from ..datasets.splits import held_apart_sample, make_loader
    train_config = {"dataset": config.dataset, "data_dir": config.data_dir, "holdout": config.holdout,
                    "seed": config.seed}
    held = held_apart_sample(checkpoint_dataset(train_config).train, config=train_config, size=size, seed=config.seed)
    return list(make_loader(held, batch_size=batch_size, shuffle=False))


def train_adaptive(config, *, out_dir: str | Path, level_choices: Sequence[int] = DEFAULT_LEVEL_CHOICES,
                   finetune_epochs: int | None = None, finetune_lr: float | None = None, resume: bool = True,
                   device: torch.device | None = None) -> dict[str, Any]:
    """The whole AL procedure (module docstring) for a :class:`~parasnn.training.train.TrainConfig`.

    Writes the probe run to ``out_dir/probe`` and the fine-tuned run to ``out_dir`` (its
    ``model.pt`` records the per-layer L in ``model.activation.levels`` and the analysis under
    ``config["adaptive_levels"]``), plus ``out_dir/adaptive_levels.json``. ``config.levels`` is
    ignored (the probe uses :data:`PROBE_LEVELS`). Returns the final metrics with the analysis.
    """
    from ..io.checkpoint import load_ann, read_checkpoint
    from ..io.files import save_torch, write_json
    from ..training.train import train
    out_dir = Path(out_dir)
    probe_config = dataclasses.replace(config, levels=PROBE_LEVELS)
    probe_metrics = train(probe_config, out_dir=out_dir / "probe", resume=resume, device=device)
    probe, _, probe_checkpoint = load_ann(out_dir / "probe" / "model.pt")
    layers = analyse(probe, _histogram_batches(config), level_choices=level_choices)
    if len(layers) != len(_qcfs_layers(probe)):
        raise ValueError(f"{len(_qcfs_layers(probe)) - len(layers)} QCFS layers of {config.model} never saw the input")
    levels = tuple(layer.levels for layer in layers)  # forward order = ActivationSpec.levels order
    analysis = {"probe_levels": PROBE_LEVELS, "histogram_bins": HISTOGRAM_BINS, "level_choices": sorted(level_choices),
                "levels": list(levels), "probe_test_accuracy": probe_metrics["test_accuracy"],
                "layers": [dataclasses.asdict(layer) for layer in layers]}
    print("adaptive layerwise activation: chosen L per layer (probe L = 4, more sensitive -> more levels)")
    print(format_analysis(layers), flush=True)
    finetune_config = dataclasses.replace(
        config, levels=levels, epochs=finetune_epochs or config.epochs,
        learning_rate=finetune_lr if finetune_lr is not None else config.learning_rate / 10)
    metrics = train(finetune_config, out_dir=out_dir, resume=resume, device=device,
                    initial_state=_warm_start(probe_checkpoint["state_dict"], layers))
    checkpoint = read_checkpoint(out_dir / "model.pt", kind="ann")
    checkpoint["config"] = {**checkpoint.get("config", {}), "adaptive_levels": analysis}
    save_torch(out_dir / "model.pt", checkpoint)
    write_json(out_dir / "adaptive_levels.json", analysis)
    return {**metrics, "adaptive_levels": analysis}


_MOVED_TO_CLI = {"add_train_arguments", "command_train"}


def __getattr__(name: str):
    # Deprecated: the command-line code moved to parasnn.cli.levels (domain modules hold no argparse).
    if name in _MOVED_TO_CLI:
        import importlib
        import warnings
        warnings.warn(f"parasnn.methods.{__name__.rsplit('.', 1)[-1]}.{name} moved to parasnn.cli.levels.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("parasnn.cli.levels"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
