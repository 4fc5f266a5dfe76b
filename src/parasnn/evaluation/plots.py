"""Distribution plots of [STDC]'s Figures 1 and 4: ANN activations against the SNN's
time-averaged outputs ("firing rate × θ_post"), layer by layer, per configuration.

The data side (:func:`collect_outputs`, :func:`summarize`) needs only torch; drawing
(:func:`distribution_figure`) imports matplotlib lazily with the Agg backend (no display),
so the library works without it until a plot is asked for.

For one layer and one configuration the panel shows two histograms of the *non-zero*
values (blue: ANN activation, red: SNN output averaged over T; bar heights are shares of
all values, on a log scale) — zeros are reported as sparsity instead, since they would
dwarf everything else — and a box with
mean, standard deviation and sparsity of both, plus the mean absolute difference between
ANN and SNN on the same neurons for the same images.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..conversion.network import forward_hooks
from ..io.files import atomic_path

__all__ = ["collect_outputs", "summarize", "distribution_figure", "resolve_layers", "MAX_PLOTTED_VALUES"]

MAX_PLOTTED_VALUES = 200_000  # per histogram: plenty for a smooth shape, cheap to draw


def resolve_layers(names: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Pick layers among ``names`` (neuron paths in graph order).

    ``wanted`` holds paths or 1-based positions (``"2"`` = the 2nd activation layer, as the
    paper counts them); ``None`` or empty picks the 2nd, a middle and the last layer
    ([STDC] shows the 2nd, 8th and 16th of ResNet-18)."""
    names = list(names)
    if not names:
        raise ValueError("the network has no activation layers to plot")
    if not wanted:
        count = len(names)
        middle = (count + 1) // 2 + 1 if count > 3 else min(2, count)
        positions = sorted({min(2, count), middle, count})
        return [names[p - 1] for p in positions]
    chosen = []
    for item in wanted:
        item = str(item).strip()
        if item.isdigit():
            position = int(item)
            if not 1 <= position <= len(names):
                raise ValueError(f"layer position {position} is out of range: the network has {len(names)} "
                                 f"activation layers ({', '.join(names)})")
            chosen.append(names[position - 1])
        elif item in names:
            chosen.append(item)
        else:
            raise ValueError(f"no activation layer {item!r}; layers are {', '.join(names)} (or give positions 1..{len(names)})")
    return list(dict.fromkeys(chosen))


def collect_outputs(run: Callable[[Tensor], Tensor], root: nn.Module, layers: Sequence[str],
                    inputs: Sequence[Tensor], *, limit: int = MAX_PLOTTED_VALUES, seed: int = 0) -> dict[str, Tensor]:
    """Outputs of the modules at ``layers`` (paths in ``root``) while ``run`` processes each
    tensor of ``inputs``: ``{path: 1-D CPU tensor}`` of all output values (flattened), a
    seeded random subset of ``limit`` values when there are more. The same ``seed`` picks
    the same positions from equally shaped outputs, so ANN and SNN values stay paired."""
    chunks: dict[str, list[Tensor]] = {path: [] for path in layers}

    def recorder(path):
        def hook(module, args, output):
            chunks[path].append(output.detach().float().flatten().cpu())
        return hook

    with forward_hooks([(root.get_submodule(path), recorder(path)) for path in layers]):
        for x in inputs:
            run(x)
    values = {}
    for path, parts in chunks.items():
        flat = torch.cat(parts) if parts else torch.zeros(0)
        if flat.numel() > limit:
            keep = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:limit]
            flat = flat[keep]
        values[path] = flat
    return values


def summarize(values: Tensor, *, reference: Tensor | None = None) -> dict[str, float]:
    """Mean, standard deviation, sparsity (share of exact zeros), 99th percentile and maximum;
    with a paired ``reference`` also the mean absolute difference to it."""
    values = values.float()
    if values.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "sparsity": math.nan, "p99": math.nan, "max": math.nan}
    summary = {"mean": float(values.mean()), "std": float(values.std()) if values.numel() > 1 else 0.0,
               "sparsity": float((values == 0).float().mean()),
               "p99": float(torch.quantile(values[: 1_000_000], 0.99)), "max": float(values.max())}
    if reference is not None and reference.shape == values.shape:
        summary["mean_abs_difference"] = float((values - reference.float()).abs().mean())
    return summary


def _import_pyplot():
    try:
        import matplotlib
    except ImportError as error:  # an optional dependency: say how to get it
        raise RuntimeError("plots need matplotlib: pip install 'parasnn[plots]'") from error
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as pyplot
    return pyplot


def distribution_figure(ann: dict[str, Tensor], snn: dict[str, dict[str, Tensor]], *, path: str | Path,
                        title: str, bins: int = 60) -> Path:
    """Write a PNG grid: one row per configuration (``snn``'s keys, in order), one column per
    layer (``ann``'s keys). Each panel overlays the ANN activations (blue) and the SNN's
    time-averaged outputs (red) with their statistics. Returns ``path``."""
    pyplot = _import_pyplot()
    layers, configurations = list(ann), list(snn)
    figure, axes = pyplot.subplots(len(configurations), len(layers), squeeze=False,
                                   figsize=(4.2 * len(layers), 3.0 * len(configurations)))
    for column, layer in enumerate(layers):
        reference = ann[layer]
        upper = max([float(reference.max()) if reference.numel() else 1.0] +
                    [float(snn[c][layer].max()) for c in configurations if snn[c][layer].numel()])
        edges = torch.linspace(0.0, max(upper, 1e-6), bins + 1).tolist()
        for row, configuration in enumerate(configurations):
            axis = axes[row][column]
            values = snn[configuration][layer]
            for data, colour, label in ((reference, "tab:blue", "ANN"), (values, "tab:red", "SNN")):
                positive = data[data > 0]
                if positive.numel():
                    # Heights are shares of *all* values (zeros included), so the two histograms
                    # compare directly even though the SNN's values sit on T + 1 levels.
                    weights = torch.full_like(positive, 1.0 / max(data.numel(), 1))
                    axis.hist(positive.numpy(), bins=edges, weights=weights.numpy(), alpha=0.5, color=colour,
                              label=label)
            axis.set_yscale("log")
            ann_stats, snn_stats = summarize(reference), summarize(values, reference=reference)
            text = (f"ANN  μ={ann_stats['mean']:.3f} σ={ann_stats['std']:.3f} sparsity={100 * ann_stats['sparsity']:.1f}%\n"
                    f"SNN  μ={snn_stats['mean']:.3f} σ={snn_stats['std']:.3f} sparsity={100 * snn_stats['sparsity']:.1f}%")
            if "mean_abs_difference" in snn_stats:
                text += f"\nmean |ANN−SNN| = {snn_stats['mean_abs_difference']:.3f}"
            axis.text(0.98, 0.97, text, transform=axis.transAxes, ha="right", va="top", fontsize=7,
                      family="monospace", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
            axis.set_title(f"{configuration} — {layer}", fontsize=8)
            axis.tick_params(labelsize=7)
            if row == len(configurations) - 1:
                axis.set_xlabel("activation / time-averaged output (non-zero values)", fontsize=7)
            if column == 0:
                axis.set_ylabel("share of neurons (log)", fontsize=7)
            if row == 0 and column == 0:
                axis.legend(fontsize=7, loc="center right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as temporary:  # never a half-written PNG
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        pyplot.close(figure)
    return path
