"""The command line end to end on scikit-learn's digits with a tiny network."""
import json
import subprocess
import sys

import pytest

from parasnn.cli import main

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    status = main(["train", "--dataset", "digits", "--model", "vgg-small", "--width", "8", "--levels", "4",
                   "--threshold", "2", "--epochs", "8", "--batch-size", "32", "--lr", "0.1", "--holdout", "200",
                   "--out", str(out)])
    assert status == 0
    return out


def test_train_writes_checkpoint_config_and_metrics(trained):
    for name in ("model.pt", "last.pt", "config.json", "metrics.json"):
        assert (trained / name).exists(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["holdout_images"] == 200 and len(metrics["history"]) == 8
    assert metrics["test_accuracy"] > 0.5  # digits are easy; a broken loop stays at ~0.1


def test_train_resumes_instead_of_starting_over(trained, capsys):
    assert main(["train", "--dataset", "digits", "--model", "vgg-small", "--width", "8", "--levels", "4",
                 "--threshold", "2", "--epochs", "8", "--batch-size", "32", "--lr", "0.1", "--holdout", "200",
                 "--out", str(trained)]) == 0
    assert "epoch 1:" not in capsys.readouterr().out  # all epochs were done already
    # A different configuration in the same directory is refused, not silently mixed.
    assert main(["train", "--dataset", "digits", "--model", "vgg-small", "--width", "8", "--epochs", "4",
                 "--out", str(trained)]) == 2


def test_evaluate_t_equal_l_parallel_matches_ann_exactly(trained, tmp_path):
    report_path = tmp_path / "report.json"
    assert main(["evaluate", str(trained / "model.pt"), "--time-steps", "2,4", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert (tmp_path / "report.config.json").exists()
    by_key = {(r["form"], r["time_steps"]): r for r in report["snn"]}
    assert set(by_key) == {("parallel", 2), ("serial", 2), ("parallel", 4), ("serial", 4)}
    assert by_key[("parallel", 4)]["accuracy"] == report["ann"]["accuracy"]  # T = L: lossless
    activity = by_key[("parallel", 4)]["activity"]
    assert activity["neurons"] and activity["synapses"][0]["analog_input"]
    assert all(0 <= layer["firing_rate"] <= 1 for layer in activity["neurons"])


def test_convert_then_evaluate_saved_snn(trained, tmp_path):
    snn = tmp_path / "snn.pt"
    assert main(["convert", str(trained / "model.pt"), "--out", str(snn)]) == 0
    assert snn.exists() and (tmp_path / "snn.config.json").exists()
    assert main(["evaluate", str(trained / "model.pt"), "--snn", str(snn), "--time-steps", "4",
                 "--forms", "parallel", "--no-activity"]) == 0


def test_relu_network_trains_converts_and_evaluates(tmp_path):
    out = tmp_path / "relu"
    assert main(["train", "--dataset", "digits", "--model", "vgg-small", "--width", "8", "--activation", "relu",
                 "--epochs", "2", "--batch-size", "64", "--lr", "0.1", "--holdout", "200", "--out", str(out)]) == 0
    assert main(["convert", str(out / "model.pt"), "--out", str(tmp_path / "snn.pt"), "--calibration-size", "100"]) == 0
    assert main(["evaluate", str(out / "model.pt"), "--snn", str(tmp_path / "snn.pt"), "--time-steps", "8",
                 "--forms", "parallel,serial"]) == 0


def test_user_errors_are_reported_not_raised(trained, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained / "model.pt"), "--time-steps", "0"])


def test_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "parasnn.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


def test_demo_shows_exact_calibrated_serial_and_pascal_rows(tmp_path):
    """The demo's claims hold on its own numbers: the parallel SNN at T = L and PASCAL's serial
    SNN score exactly the ANN's accuracy (they reproduce its logits); every row is reported."""
    report_path = tmp_path / "demo.json"
    assert main(["demo", "--json", str(report_path)]) == 0
    rows = json.loads(report_path.read_text())["rows"]
    by_name = {(row["network"], row["setting"]): row for row in rows}
    ann = by_name[("ANN", "QCFS, L = 4")]["accuracy"]
    assert by_name[("SNN parallel", "T = L = 4")]["accuracy"] == ann
    assert "bit for bit" in by_name[("SNN parallel", "T = L = 4")]["meaning"]
    assert [row["accuracy"] for row in rows if row["network"] == "PASCAL serial"] == [ann]
    assert {row["setting"] for row in rows if row["network"] == "SNN calibrated"} == {"T = 1", "T = 2"}
    assert any(row["network"] == "SNN serial" for row in rows)
    assert by_name[("SNN parallel", "T = 8")]["accuracy"] == ann  # L levels kept at T = 2L (maths §3a)


def test_small_data_sets_train_with_the_default_holdout(tmp_path):
    """digits has 1438 training images: the default holds a tenth apart instead of 5000."""
    from parasnn.datasets.data import load_dataset
    out = tmp_path / "run"
    assert main(["train", "--model", "vgg-small", "--dataset", "digits", "--epochs", "1", "--width", "4",
                 "--max-batches", "2", "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["train"]["holdout"] == len(load_dataset("digits").train) // 10


def test_qcfs_training_reads_its_thresholds_off_the_data_unless_a_threshold_is_given(tmp_path):
    """docs/decisions.md (Training): the 99th percentile by default; --threshold keeps [QCFS]'s
    fixed start; other activations have no percentile. What was used is in config.json."""
    recorded = {}
    for name, extra in (("default", []), ("fixed", ["--threshold", "8"]), ("relu", ["--activation", "relu"]),
                        ("given", ["--threshold-percentile", "90"])):
        out = tmp_path / name
        assert main(["train", "--model", "vgg-small", "--dataset", "digits", "--epochs", "1", "--width", "4",
                     "--max-batches", "1", "--out", str(out), *extra]) == 0
        recorded[name] = json.loads((out / "config.json").read_text())["train"]
    assert recorded["default"]["threshold_percentile"] == 99.0
    assert "threshold_percentile" not in recorded["fixed"] and recorded["fixed"]["threshold"] == 8.0
    assert "threshold_percentile" not in recorded["relu"]
    assert recorded["given"]["threshold_percentile"] == 90.0
    # A run recorded with a fixed θ (as before the default) resumes by the plain command.
    assert main(["train", "--model", "vgg-small", "--dataset", "digits", "--epochs", "1", "--width", "4",
                 "--max-batches", "1", "--out", str(tmp_path / "fixed")]) == 0
    assert "threshold_percentile" not in json.loads((tmp_path / "fixed" / "config.json").read_text())["train"]
    from parasnn.io.checkpoint import load_ann
    thresholds = {}
    for name in ("default", "fixed"):  # after one step of training, still near where they started
        model, _, _ = load_ann(tmp_path / name / "model.pt")
        thresholds[name] = [float(m.threshold.detach()) for m in model.modules()
                            if hasattr(m, "levels") and hasattr(m, "threshold")]
    assert thresholds["fixed"] and all(abs(t - 8.0) < 0.5 for t in thresholds["fixed"])
    assert all(t < 6.0 for t in thresholds["default"])  # BN outputs are ~N(0, 1): their 99th percentile


def test_evaluate_keeps_the_anns_levels_beyond_t_equal_l_unless_asked_for_t_levels(tmp_path):
    """docs/maths.md §3a: by default the SNN of a QCFS network at T = 2L is the ANN; --t-levels
    gives every neuron T levels (recorded in the report's arguments)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "vgg-small", "--dataset", "digits", "--epochs", "1", "--width", "4",
                 "--threshold-percentile", "99", "--max-batches", "4", "--out", str(run)]) == 0
    reports = {}
    for name, extra in (("keep", []), ("finer", ["--t-levels"])):
        path = tmp_path / f"{name}.json"
        assert main(["evaluate", str(run / "model.pt"), "-T", "8", "--forms", "parallel", "--no-activity",
                     "--json", str(path), *extra]) == 0
        reports[name] = json.loads(path.read_text())
    assert reports["keep"]["snn"][0]["accuracy"] == reports["keep"]["ann"]["accuracy"]
    assert reports["finer"]["config"]["arguments"]["t_levels"] is True
