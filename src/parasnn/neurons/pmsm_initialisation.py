"""PMSM's quantizer initialisation ([PMSM], docs/maths.md §6): the step θ and the split of the
level budget between the polarities that keep the most information about a layer's
pre-activations (our design, compared with a plain percentile rule; docs/decisions.md).
The quantizer and the neuron themselves are in :mod:`parasnn.neurons.pmsm`."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..runtime.order_statistics import percentile_value

__all__ = ["level_probabilities", "level_entropy", "LevelChoice", "entropy_initialisation",
           "percentile_initialisation"]


def level_probabilities(values: Tensor, *, threshold: Tensor | float, negative_levels: int,
                        positive_levels: int) -> Tensor:
    """Empirical distribution of the levels ``n(x)`` over a sample ``values`` (any shape).

    ``threshold`` is one θ or a 1-D tensor of G candidates; returns ``(L⁻ + L⁺ + 1,)`` or
    ``(G, L⁻ + L⁺ + 1)`` probabilities, levels ``−L⁻ … L⁺`` in order. Computed from the
    sorted sample and the level boundaries ``(k − 1/2)·θ`` (``n ≥ k ⇔ x ≥ (k − 1/2)·θ``), so
    a whole grid of θ costs one sort and a few binary searches per candidate.
    """
    ordered = values.detach().flatten().to(torch.float64).sort().values
    if ordered.numel() == 0:
        raise ValueError("level_probabilities: the sample is empty")
    theta = torch.as_tensor(threshold, dtype=torch.float64, device=ordered.device)
    single = theta.dim() == 0
    theta = theta.reshape(-1, 1)  # (G, 1)
    steps = torch.arange(-negative_levels + 1, positive_levels + 1, dtype=torch.float64, device=ordered.device)
    boundaries = (steps - 0.5) * theta  # (G, K): level k begins at (k − 1/2)θ
    below = torch.searchsorted(ordered, boundaries.contiguous(), right=False).to(torch.float64)  # #{x < b}
    total = float(ordered.numel())
    edges = torch.cat([torch.zeros_like(below[:, :1]), below, torch.full_like(below[:, :1], total)], dim=1)
    probabilities = (edges[:, 1:] - edges[:, :-1]) / total  # (G, L⁻ + L⁺ + 1)
    return probabilities[0] if single else probabilities


def level_entropy(values: Tensor, *, threshold: Tensor | float, negative_levels: int, positive_levels: int) -> Tensor:
    """Shannon entropy in bits of the quantized levels ``H(n(X)) = −Σ_k p_k log₂ p_k`` (one
    value, or one per candidate θ). Because ``n`` is a function of ``X`` this is also the
    mutual information ``I(X; n(X))``: the information about the pre-activation that
    survives quantization."""
    p = level_probabilities(values, threshold=threshold, negative_levels=negative_levels,
                            positive_levels=positive_levels)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(dim=-1)


class LevelChoice(NamedTuple):
    """A quantizer setting: step θ, levels L⁻ and L⁺, and the entropy (bits) it keeps."""

    threshold: float
    negative_levels: int
    positive_levels: int
    entropy: float


def entropy_initialisation(values: Tensor, *, levels: int, positive_range: float, negative_range: float,
                           candidates: int = 256, negative_levels: int | None = None) -> LevelChoice:
    """PMSM's threshold/level initialisation: the quantizer that keeps the most information.

    Rule (our design; the paper's text gives only the idea): over the pre-activations ``x``
    of one layer (a sample, any shape), choose the step θ and the split of a budget of
    ``2L`` non-zero levels between the polarities (``L⁺ + L⁻ = 2L``) that maximise the
    entropy ``H(n(x))`` of the quantized levels — equivalently the mutual information
    between the pre-activation and its quantization, i.e. minimise the information lost —
    subject to the range staying inside the full-precision activation's range
    (``L⁺θ ≤ positive_range``, ``L⁻θ ≤ negative_range``): the quantizer must not produce values
    the full-precision network never produced. Levels are scored on the full-precision
    output ``clip(x, −negative_range, positive_range)``, which under that constraint
    quantizes exactly as ``x`` does.

    Entropy is at most ``log₂(L⁺ + L⁻ + 1)``, reached when every level is equally likely. It
    penalises both failure modes of a range: too wide, and most values fall in a few
    levels near 0 (the step is too coarse for the bulk); too narrow, and the clipped tails
    pile into the end levels. It is blind to the sign the way QCFS is not: a QCFS
    quantizer (``L⁻ = 0``) sends every negative value to level 0 and so keeps at most
    ``log₂(L + 1)`` bits of a layer whose negative half carries half the mass.

    Measured (vgg-small on Fashion-MNIST, ``parasnn pmsm --compare``): right after
    initialisation, at L = 1 the rule gives 89.6 % test accuracy against 85.5 % for keeping
    the trained range (θ = r/L) and 29.3 % for the 99.9th percentile of the pre-activations;
    at L = 4 it is 0.15 points below the trained range (it narrows one wide layer) and 31
    points above the percentile. The full-precision range binds in most layers: there the
    entropy maximum is the trained range itself.

    Search: for each split, ``candidates`` values of θ evenly spaced in ``(0, θ_max]``
    (``θ_max``: the constraint's bound, or ``2·max|x|`` past which everything is level 0),
    then as many again between the best point's neighbours; the best (split, θ) wins, ties
    going to the larger θ and then to the more even split. Cost: one sort of the sample.

    Args:
        values: pre-activations of the layer (``(N,)`` or any shape; flattened).
        levels: L, half the level budget (``L⁺ + L⁻ = 2L``).
        positive_range, negative_range: the full-precision range ``[−negative_range, positive_range]``
            (one of them may be 0: that polarity then gets no levels).
        candidates: θ grid size per split.
        negative_levels: search only the split with this L⁻ (``0`` gives the best QCFS-like
            quantizer, for comparison); ``None`` searches all splits.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"entropy_initialisation: levels must be an integer >= 1, got {levels!r}")
    if not (positive_range >= 0 and negative_range >= 0 and positive_range + negative_range > 0):
        raise ValueError(f"entropy_initialisation: ranges must be >= 0 and not both 0, got "
                         f"+{positive_range}, -{negative_range}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"entropy_initialisation: candidates must be an integer >= 1, got {candidates!r}")
    sample = values.detach().flatten().to(torch.float64)
    if sample.numel() == 0 or not bool(torch.isfinite(sample).all()):
        raise ValueError("entropy_initialisation: the sample must be non-empty and finite")
    clipped = sample.clamp(-negative_range, positive_range)
    # Beyond θ = 2·max|x| every value is in level 0: no need to search there.
    useful = 2.0 * max(float(clipped.abs().max()), 1e-12)
    best: LevelChoice | None = None
    best_key = None
    budget = 2 * levels
    if negative_levels is not None and not (isinstance(negative_levels, int) and 0 <= negative_levels <= budget):
        raise ValueError(f"entropy_initialisation: negative_levels must be an integer in 0..{budget}, "
                         f"got {negative_levels!r}")
    for positive in range(budget + 1):
        negative = budget - positive
        if negative_levels is not None and negative != negative_levels:
            continue
        if (positive and positive_range == 0) or (negative and negative_range == 0):
            continue  # a polarity the full-precision activation never produces gets no levels
        bound = min(positive_range / positive if positive else math.inf,
                    negative_range / negative if negative else math.inf, useful)
        grid = bound * torch.arange(1, candidates + 1, dtype=torch.float64) / candidates  # (G,)
        theta, entropy = _best_on_grid(clipped, grid, negative, positive)
        # Refine between the neighbours of the best grid point (the entropy is piecewise
        # constant in θ, so a finer local grid finds the plateau's edge more precisely).
        spacing = bound / candidates
        fine = torch.linspace(max(theta - spacing, spacing / candidates), min(theta + spacing, bound), candidates,
                              dtype=torch.float64)
        fine_theta, fine_entropy = _best_on_grid(clipped, fine, negative, positive)
        if fine_entropy > entropy + 1e-12:
            theta, entropy = fine_theta, fine_entropy
        # Entropies within float noise count as equal; then larger θ, then the more even split.
        key = (round(entropy, 9), theta, -abs(positive - negative))
        if best_key is None or key > best_key:
            best_key = key
            best = LevelChoice(theta, negative, positive, entropy)
    if best is None:
        raise ValueError(f"entropy_initialisation: no split with L⁻ = {negative_levels} fits the range "
                         f"[-{negative_range}, {positive_range}]")
    return best


def _best_on_grid(sample: Tensor, grid: Tensor, negative: int, positive: int) -> tuple[float, float]:
    """The θ of ``grid`` (increasing) with the highest level entropy; ties go to the larger θ."""
    entropies = level_entropy(sample, threshold=grid, negative_levels=negative, positive_levels=positive)
    index = grid.numel() - 1 - int(torch.argmax(torch.flip(entropies, [0])))
    return float(grid[index]), float(entropies[index])


def percentile_initialisation(values: Tensor, *, levels: int, percentile: float = 99.9) -> LevelChoice:
    """The plain baseline: symmetric levels ``L⁺ = L⁻ = L`` and ``Lθ`` = the ``percentile`` of
    ``|x|`` over the sample (the percentile rule of :class:`parasnn.conversion.stages.ThresholdStatistic`,
    applied to both polarities). ``entropy`` reports what that choice keeps, in bits."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"percentile_initialisation: levels must be an integer >= 1, got {levels!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile_initialisation: percentile must be in (0, 100], got {percentile}")
    magnitudes = values.detach().flatten().to(torch.float64).abs()
    if magnitudes.numel() == 0 or not bool(torch.isfinite(magnitudes).all()):
        raise ValueError("percentile_initialisation: the sample must be non-empty and finite")
    threshold = max(float(percentile_value(magnitudes, percentile)), 1e-6) / levels
    entropy = float(level_entropy(values, threshold=threshold, negative_levels=levels, positive_levels=levels))
    return LevelChoice(threshold, levels, levels, entropy)
