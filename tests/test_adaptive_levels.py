"""PASCAL's adaptive layerwise activation: the metric on known histograms, the clustering, the
histograms of a model, and ``parasnn train --levels auto`` end to end on digits."""
import itertools
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from parasnn.methods.adaptive_levels import (DEFAULT_LEVEL_CHOICES, agreement, assign_levels, cluster_1d,
                                     excess_kurtosis, kurtosis_term, output_histograms, sensitivity, skewness)
from parasnn.neurons.qcfs import QCFS

scipy_stats = pytest.importorskip("scipy.stats")

histograms = st.lists(st.integers(min_value=0, max_value=1000), min_size=5, max_size=5).filter(lambda h: sum(h) > 0)


# -- the metric -------------------------------------------------------------------------------------

@pytest.mark.parametrize("histogram, expected", [
    ([0, 0, 1000, 0, 0], 1.0),  # all mass in one category: full agreement
    ([200, 200, 200, 200, 200], 0.0),  # uniform
    ([500, 0, 0, 0, 500], -1.0),  # split between the extremes: full polarisation
    # Peeled by hand: layers 11111 (m=5), 11110 (10), 11100 (15), 11000 (20), 10000 (850) with
    # agreements 0, 1/4, 1/2, 3/4, 1 and weights 25, 40, 45, 40, 850 per mille.
    ([900, 50, 30, 15, 5], (0.25 * 40 + 0.5 * 45 + 0.75 * 40 + 850) / 1000),
    # Layers 101 (m=1, a gap: TDU = 1, U = (1·0 − 2·1)/(1·1) = −2, A = −2·(1 − 1/2) = −1, weight 2/3)
    # and 100 (m=1, A = 1, weight 1/3).
    ([2, 0, 1], (-1 * 2 + 1 * 1) / 3),
    # 11 1: layer 111 (m=1, A = 0), then 110 (m=1: U = 1, A = 1/2, weight 2/5).
    ([2, 2, 1], 0.5 * 2 / 5),
])
def test_agreement_on_hand_computed_histograms(histogram, expected):
    assert agreement(histogram) == pytest.approx(expected, abs=1e-12)


@given(histograms)
def test_agreement_is_symmetric_scale_free_and_bounded(histogram):
    value = agreement(histogram)
    assert -1 - 1e-12 <= value <= 1 + 1e-12
    assert agreement(histogram[::-1]) == pytest.approx(value, abs=1e-12)
    assert agreement([3 * v for v in histogram]) == pytest.approx(value, abs=1e-12)


@given(histograms)
def test_skewness_and_kurtosis_are_scipys_bias_corrected_estimators(histogram):
    if len(set(histogram)) == 1:  # no spread: defined as 0 here, NaN in scipy
        assert skewness(histogram) == excess_kurtosis(histogram) == 0.0
        return
    assert skewness(histogram) == pytest.approx(float(scipy_stats.skew(histogram, bias=False)), rel=1e-9, abs=1e-9)
    assert excess_kurtosis(histogram) == pytest.approx(
        float(scipy_stats.kurtosis(histogram, fisher=True, bias=False)), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("histogram", [[900, 50, 30, 15, 5], [10, 20, 30, 20, 10], [500, 0, 0, 0, 500],
                                       [3, 1, 4, 1, 5], [0, 0, 1000, 0, 0]])
def test_sensitivity_metric_on_known_histograms(histogram):
    n = len(histogram)
    g = float(scipy_stats.skew(histogram, bias=False))
    k = float(scipy_stats.kurtosis(histogram, fisher=True, bias=False))
    k_prime = k + 3 * n ** 2 / ((n - 2) * (n - 3))  # + 12.5 for n = 5
    assert kurtosis_term(histogram) == pytest.approx(k_prime, rel=1e-9)
    assert sensitivity(histogram) == pytest.approx(agreement(histogram) * (g ** 2 + 1) * k_prime, rel=1e-9)


def test_sensitivity_worked_example_and_degenerate_cases():
    # [900, 50, 30, 15, 5]: A = 0.9125, G1 = 2.2256454979, G2 = 4.9623227924 (scipy, bias=False).
    assert sensitivity([900, 50, 30, 15, 5]) == pytest.approx(0.9125 * (2.2256454979 ** 2 + 1) * (4.9623227924 + 12.5),
                                                              rel=1e-8)
    assert sensitivity([7, 7, 7, 7, 7]) == 0.0
    with pytest.raises(ValueError):
        sensitivity([0, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        kurtosis_term([1, 2, 3])  # n − 3 = 0
    with pytest.raises(ValueError):
        agreement([1, -1, 3])


# -- clustering ---------------------------------------------------------------------------------------

def _sum_of_squares(values, labels):
    total = 0.0
    for label in set(labels):
        group = [v for v, l in zip(values, labels) if l == label]
        mean = sum(group) / len(group)
        total += sum((v - mean) ** 2 for v in group)
    return total


metric_lists = st.lists(st.integers(min_value=-50, max_value=200).map(lambda n: n / 4), min_size=1, max_size=9)


@given(metric_lists, st.integers(min_value=1, max_value=4), st.randoms(use_true_random=False))
def test_clustering_is_deterministic_optimal_and_ordered(values, clusters, random):
    labels = cluster_1d(values, clusters=clusters)
    assert labels == cluster_1d(list(values), clusters=clusters)  # same answer every time, no seed involved
    order = list(range(len(values)))
    random.shuffle(order)
    shuffled = cluster_1d([values[i] for i in order], clusters=clusters)
    assert shuffled == [labels[i] for i in order]  # the layers' order does not matter
    groups = max(labels) + 1
    assert groups == min(clusters, len(set(values))) and set(labels) == set(range(groups))
    for a, b in itertools.combinations(range(len(values)), 2):  # equal metrics share a group; groups ordered
        if values[a] == values[b]:
            assert labels[a] == labels[b]
        elif values[a] < values[b]:
            assert labels[a] <= labels[b]
    # Global optimum: no contiguous split of the sorted distinct values into `groups` groups does better.
    distinct = sorted(set(values))
    best = math.inf
    for cuts in itertools.combinations(range(1, len(distinct)), groups - 1):
        bounds = [0, *cuts, len(distinct)]
        label_of = {v: g for g in range(groups) for v in distinct[bounds[g]:bounds[g + 1]]}
        best = min(best, _sum_of_squares(values, [label_of[v] for v in values]))
    assert _sum_of_squares(values, labels) <= best + 1e-9


def test_levels_go_up_with_sensitivity():
    metrics = [100.0, 0.1, -0.2, 50.0, 101.0, 49.5, 0.0]
    groups, levels = assign_levels(metrics)
    assert DEFAULT_LEVEL_CHOICES == (2, 4, 8)
    assert levels == [8, 2, 2, 4, 8, 4, 2] and groups == [2, 0, 0, 1, 2, 1, 0]
    assert assign_levels([5.0, 5.0, 5.0])[1] == [4, 4, 4]  # one group: the middle choice
    assert assign_levels([1.0, 9.0])[1] == [2, 8]  # two groups of three choices: the extremes
    assert assign_levels([1.0, 2.0, 10.0], level_choices=(16, 1))[1] == [1, 1, 16]
    assert assign_levels([1.0, 2.0, 3.0], level_choices=(16, 1))[1] == [1, 16, 16]  # a tie: the earliest split


# -- a model's histograms -----------------------------------------------------------------------------

def test_output_histograms_count_every_output_in_forward_order():
    torch.manual_seed(0)
    second, first = QCFS(levels=4, threshold=1.0), QCFS(levels=4, threshold=2.0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late, self.fc, self.early = second, nn.Linear(3, 3), first  # registered out of order

        def forward(self, x):
            return self.late(self.fc(self.early(x)))

    batches = [torch.randn(10, 3) * 2 for _ in range(3)]
    histograms = output_histograms(Net(), batches)
    assert list(histograms) == ["early", "late"]
    assert [float(h.sum()) for h in histograms.values()] == [90.0, 90.0]
    with torch.no_grad():  # with L = 4 and 5 bins, bin i holds exactly the outputs at level i
        levels = torch.cat([(first(b) / (2.0 / 4)).round() for b in batches]).flatten()
    assert histograms["early"].tolist() == [float((levels == i).sum()) for i in range(5)]


# -- end to end ---------------------------------------------------------------------------------------

def test_train_levels_auto_end_to_end_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from parasnn.io.checkpoint import load_ann
    from parasnn.cli import main
    out = tmp_path / "al"
    arguments = ["train", "--dataset", "digits", "--model", "vgg-small", "--width", "4", "--levels", "auto",
                 "--threshold", "2", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "64",
                 "--holdout", "200", "--out", str(out)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    analysis = json.loads((out / "adaptive_levels.json").read_text())
    levels = analysis["levels"]
    assert len(levels) == 7 and set(levels) <= {2, 4, 8}
    assert f"levels per layer {','.join(map(str, levels))}" in printed and "| M |" in printed
    assert (out / "probe" / "model.pt").exists() and (out / "model.pt").exists()
    model, spec, checkpoint = load_ann(out / "model.pt")
    assert spec.activation.levels == tuple(levels)  # the checkpoint records L per layer
    assert [m.levels for m in model.modules() if isinstance(m, QCFS)] == levels
    assert checkpoint["config"]["adaptive_levels"]["levels"] == levels
    assert [layer["levels"] for layer in analysis["layers"]] == levels
    assert all(sum(layer["histogram"]) > 0 for layer in analysis["layers"])
    # The mixed-L network converts to PASCAL and its serial SNN equals it exactly.
    report = tmp_path / "pascal.json"
    assert main(["evaluate", str(out / "model.pt"), "--method", "pascal", "--limit", "100", "--no-activity",
                 "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["snn_accuracy"] == data["ann_accuracy"] and data["equal_outputs"] == 100


def test_output_histograms_keep_the_top_level_when_it_rounds_above_theta():
    # QCFS's top output L·(θ/L) rounds above θ for some L and θ; histc would drop those values.
    from parasnn.neurons.qcfs import level_value
    levels, threshold = next((L, t / 64) for L in (3, 5, 6, 7) for t in range(1, 640)
                             if float(level_value(torch.tensor(float(L)), amplitude=torch.tensor(t / 64),
                                                  time_steps=L)) > t / 64)
    layer = QCFS(levels=levels, threshold=threshold)
    batches = [torch.full((50, 3), 100.0)]  # every output saturates at the top level
    (histogram,) = output_histograms(nn.Sequential(layer), batches).values()
    assert float(histogram.sum()) == 150.0 and float(histogram[-1]) == 150.0
