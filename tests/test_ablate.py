"""The ablation grid ([STDC] Table 3 layout), the distribution plots and the two commands
(``parasnn calibrate`` / ``parasnn ablate``) end to end on scikit-learn's digits."""
import json

import pytest
import torch

from helpers import train_briefly
from hypothesis import given, settings
from hypothesis import strategies as st

from parasnn.evaluation.ablation import (VARIANTS, AblationReport, PlotRequest, discordant_counts, format_markdown, paired_difference,
                            run_ablation)
from parasnn.calibration.config import CalibrationConfig
from parasnn.io.checkpoint import load_snn, save_ann
from parasnn.cli import main
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
from parasnn.evaluation.plots import resolve_layers, summarize

pytest.importorskip("sklearn")
from parasnn.datasets.data import calibration_split, load_dataset, make_loader  # noqa: E402

SPEC = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                 activation=ActivationSpec(kind=ActivationKind.RELU))
HOLDOUT = 200


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small ReLU VGG trained on digits, saved as parasnn train would save it."""
    torch.manual_seed(0)
    splits = load_dataset("digits")
    rest, held = calibration_split(splits.train, size=HOLDOUT, seed=0)
    model = train_briefly(build_model(SPEC), rest)
    path = tmp_path_factory.mktemp("ann") / "model.pt"
    save_ann(path, model, SPEC, config={"dataset": "digits", "holdout": HOLDOUT, "seed": 0})
    return model, path, splits, held


def test_ablation_grid_has_paper_layout_and_plots(trained, tmp_path):
    pytest.importorskip("matplotlib")
    model, _, splits, held = trained
    calibration = list(make_loader(held, batch_size=32, shuffle=False))
    test = list(make_loader(torch.utils.data.TensorDataset(*(t[:128] for t in splits.test.tensors)),
                            batch_size=64, shuffle=False))
    config = CalibrationConfig(batch_size=32, validation_fraction=0.2, validation_interval=2, bias_epochs=1,
                               bn_epochs=1)
    model.train()  # the ablation evaluates a copy in eval mode; the caller's model keeps its mode
    report = run_ablation(model, calibration, test, time_steps=[2], config=config, dataset="digits",
                          plots=PlotRequest(directory=tmp_path, layers=("2", "classifier.2"), images=64))
    assert model.training
    model.eval()
    # An undone stage leaves exactly the network it started from.
    for cell in report.cells:
        if "da" in cell.reverted:
            assert cell.accuracy == report.cell(2, cell.variant, da=False).accuracy
        if "bn" in cell.reverted and cell.variant == "spatial":
            assert cell.accuracy == report.cell(2, "baseline", da=cell.da).accuracy
    assert len(report.cells) == 2 * len(VARIANTS)
    full_da = report.cell(2, "full", da=True)
    assert full_da.stages == ["da", "bn", "bias"] and report.cell(2, "baseline", da=False).stages == []
    for cell in report.cells:
        assert 0 <= cell.accuracy <= 1 and cell.delta_vs_ann == pytest.approx(cell.accuracy - report.ann_accuracy)
        assert cell.validation is not None
        # Paired counts: the difference of correct images is exactly the accuracy difference.
        assert set(cell.discordant) == {name for name, _ in VARIANTS} - {cell.variant}
        for other, (only_this, only_other) in cell.discordant.items():
            partner = report.cell(2, other, da=cell.da)
            assert only_this - only_other == round(report.samples * (cell.accuracy - partner.accuracy))
            assert partner.discordant[cell.variant] == [only_other, only_this]
    table = format_markdown(report)
    assert "| Baseline (FS-PC) | + Spatial (bn) | + Temporal (bias) | Full (bn+bias) |" in table
    assert table.count("\n| ") == 6  # two tables: header + two rows (T = 2 without and with †)
    delta, error = paired_difference(report.cell(2, "full", da=False).discordant["spatial"], report.samples)
    assert f"| 2 |  | {100 * delta:+.2f} ± {100 * error:.2f} |" in table
    assert f"{100 * report.ann_accuracy:.2f}" in table
    assert json.loads(json.dumps(report.to_dict()))["cells"][0]["accuracy"] == report.cells[0].accuracy
    reloaded = AblationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert reloaded == report and format_markdown(reloaded) == table
    # A report saved before paired counts were recorded renders without the paired table.
    for cell in reloaded.cells:
        cell.discordant = {}
    assert format_markdown(reloaded) == table.split("\n\nPaired differences")[0]
    assert [p.split("/")[-1] for p in report.plots] == ["distributions_T2.png", "distributions_T2_da.png"]
    for plot in report.plots:
        with open(plot, "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    statistics = report.plot_statistics["T=2 †full"]
    assert set(statistics) == {"features.5", "classifier.2"}
    assert 0 <= statistics["features.5"]["snn"]["sparsity"] <= 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_paired_difference_is_the_mean_and_standard_error_of_per_image_differences(rows):
    correct = {name: torch.tensor(column) for name, column in zip("abc", zip(*rows))}
    table = discordant_counts(correct)
    n = len(rows)
    for first in "abc":
        for second in set("abc") - {first}:
            differences = correct[first].double() - correct[second].double()  # (N,) in {-1, 0, 1}
            delta, error = paired_difference(table[first][second], n)
            assert delta == pytest.approx(float(differences.mean()), abs=1e-12)
            # standard error of the mean difference: population standard deviation / √N
            assert error == pytest.approx(float(differences.std(unbiased=False)) / n ** 0.5, abs=1e-12)
            assert table[second][first] == table[first][second][::-1]


def test_layer_choice_and_summaries():
    names = [f"l{i}" for i in range(1, 8)]
    assert resolve_layers(names, None) == ["l2", "l5", "l7"]
    assert resolve_layers(names, ["3", "l1", "3"]) == ["l3", "l1"]
    assert resolve_layers(["a"], None) == ["a"]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(names, ["9"])
    with pytest.raises(ValueError, match="no activation layer 'x'"):
        resolve_layers(names, ["x"])
    stats = summarize(torch.tensor([0.0, 0.0, 1.0, 3.0]), reference=torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert stats["sparsity"] == 0.5 and stats["mean"] == 1.0 and stats["mean_abs_difference"] == 0.75


def test_calibrate_command_writes_a_reloadable_snn_that_evaluate_reads(trained, tmp_path, capsys):
    model, path, splits, _ = trained
    out = tmp_path / "snn.pt"
    assert main(["calibrate", str(path), "--stages", "bias,da", "--time-steps", "2", "--out", str(out),
                 "--calibration-size", "128", "--batch-size", "32", "--bias-epochs", "1", "--bn-epochs", "1",
                 "--device", "cpu"]) == 0
    resolved = json.loads((tmp_path / "snn.config.json").read_text())
    assert resolved["calibration"]["stages"] == ["da", "bias"] and resolved["calibration"]["time_steps"] == 2
    # where the time went, printed and recorded: the conversion, each stage, each held-out pass
    assert set(resolved["report"]["seconds"]) == {"convert", "held-out fs-pc", "da", "held-out da", "bias",
                                                  "held-out bias"}
    assert "time (wall): convert " in capsys.readouterr().out
    network, spec, checkpoint = load_snn(out)
    assert spec == SPEC and checkpoint["from_relu"]
    assert all(n.temporal_bias.dim() == 1 and n.pre_shift.dim() == 1 for _, n in network.neurons())
    assert main(["evaluate", str(path), "--snn", str(out), "--time-steps", "2", "--forms", "parallel",
                 "--no-activity", "--limit", "64"]) == 0
    assert "SNN parallel | 2" in capsys.readouterr().out


def test_ablate_command_writes_markdown_and_json(trained, tmp_path):
    _, path, _, _ = trained
    assert main(["ablate", str(path), "--time-steps", "2", "--out", str(tmp_path), "--calibration-size", "96",
                 "--batch-size", "32", "--limit", "64", "--no-dagger", "--bias-epochs", "1", "--bn-epochs", "1",
                 "--device", "cpu"]) == 0
    table = (tmp_path / "ablation.md").read_text()
    assert "Baseline (FS-PC)" in table and "| 2 |" in table
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert len(report["cells"]) == len(VARIANTS) and report["ann"]["samples"] == 64
    assert (tmp_path / "ablation.config.json").exists() and not list(tmp_path.glob("*.png"))


def test_commands_reject_bad_input(trained, tmp_path, capsys):
    _, path, _, _ = trained
    with pytest.raises(SystemExit):
        main(["calibrate", str(path), "--time-steps", "0", "--out", str(tmp_path / "x.pt")])
    assert "argument --time-steps/-T: expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", str(path), "--stages", "da,warp", "--time-steps", "2", "--out", str(tmp_path / "x.pt")])
    assert "unknown calibration stage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as status:  # refused by the parser, before any work
        main(["calibrate", str(path), "--time-steps", "2", "--out", str(tmp_path / "x.pt"), "--calibration-size", "0"])
    assert status.value.code == 2 and "calibration-size" in capsys.readouterr().err
