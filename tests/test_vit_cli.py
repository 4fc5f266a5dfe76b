"""vit-tiny through the user's path: trained by the train API, its checkpoint converted and
evaluated by the command line (GELU, softmax and layer norm as fitted multi-basis neurons),
the SNN checkpoint saved and loaded bit-exactly; wrong requests are one-line errors."""
import json

import pytest
import torch

from parasnn.cli import main
from parasnn.conversion.stages import ConversionConfig, convert
from parasnn.io.checkpoint import load_ann, load_snn, save_snn
from parasnn.neurons.function_neuron import FunctionNeuron
from parasnn.simulation.forms import parallel_simulation
from parasnn.training.train import TrainConfig, train
from parasnn.zoo.models import ActivationKind

pytest.importorskip("sklearn")  # the digits data set


@pytest.fixture(autouse=True)
def fit_cache(tmp_path_factory, monkeypatch):
    """One fit cache for this module's tests (fits are reused, as users' are)."""
    monkeypatch.setenv("PARASNN_CACHE", str(tmp_path_factory.getbasetemp() / "parasnn-cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """vit-tiny (width 8) after one AdamW step on digits (8×8 images: four 4×4 patches)."""
    out = tmp_path_factory.mktemp("runs") / "vit"
    config = TrainConfig(model="vit-tiny", dataset="digits", activation=ActivationKind.GELU, width=8, epochs=1,
                         max_batches=1, batch_size=32, optimizer="adamw", learning_rate=1e-3, holdout=100)
    metrics = train(config, out_dir=out, device=torch.device("cpu"))
    assert len(metrics["history"]) == 1 and metrics["holdout_images"] == 100
    return out, config


def test_checkpoint_round_trips_its_spec_and_weights(trained):
    out, config = trained
    model, spec, checkpoint = load_ann(out / "model.pt")
    assert spec == config.model_spec((1, 8, 8), 10) and spec.activation.kind is ActivationKind.GELU
    assert all(torch.equal(value, checkpoint["state_dict"][name]) for name, value in model.state_dict().items())


def test_cli_converts_and_evaluates_the_checkpoint(trained, tmp_path, capsys):
    out, _ = trained
    snn, report = tmp_path / "snn.pt", tmp_path / "report.json"
    assert main(["convert", str(out / "model.pt"), "--out", str(snn), "--function-time-steps", "2",
                 "--calibration-size", "64"]) == 0
    network, _, _ = load_snn(snn)
    functions = [module for module in network.modules() if isinstance(module, FunctionNeuron)]
    # 4 GELU, 4 softmax (exp, reciprocal), 9 layer norms (rsqrt)
    assert sorted(f.function.value for f in functions).count("gelu") == 4 and len(functions) == 4 + 8 + 9
    assert all(sorted(map(int, f.neurons)) == [2] for f in functions)
    assert main(["evaluate", str(out / "model.pt"), "--snn", str(snn), "-T", "2", "--forms", "parallel,serial",
                 "--limit", "24", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["ann"]["samples"] == 24 and 0 <= result["ann"]["accuracy"] <= 1
    assert [(row["form"], row["time_steps"]) for row in result["snn"]] == [("parallel", 2), ("serial", 2)]
    assert all(row["activity"]["neurons"] for row in result["snn"])  # spikes counted
    # The shortest path: convert on the fly, for the T asked for (the same calibration images: cached fits).
    assert main(["evaluate", str(out / "model.pt"), "-T", "2", "--forms", "parallel", "--limit", "8",
                 "--calibration-size", "64"]) == 0
    assert "SNN parallel | 2 |" in capsys.readouterr().out


def test_snn_checkpoint_with_fitted_functions_loads_bit_exactly(trained, tmp_path):
    out, _ = trained
    model, spec, _ = load_ann(out / "model.pt")
    torch.manual_seed(0)
    images = torch.rand(6, 1, 8, 8) * 16
    network = convert(model, calibration_data=[images], config=ConversionConfig(function_time_steps=(2,)))
    save_snn(tmp_path / "snn.pt", network, spec, from_relu=False)
    loaded, loaded_spec, _ = load_snn(tmp_path / "snn.pt")
    assert loaded_spec == spec
    expected = parallel_simulation(network, images, time_steps=2).output
    assert torch.equal(parallel_simulation(loaded, images, time_steps=2).output, expected)


def test_wrong_requests_are_one_line_errors(trained, tmp_path, capsys):
    out, _ = trained
    assert main(["train", "--model", "vit-tiny", "--dataset", "digits", "--activation", "qcfs",
                 "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "vit-tiny trains with gelu activations only, not qcfs" in error and error.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert main(["calibrate", str(out / "model.pt"), "-T", "4", "--out", str(tmp_path / "c.pt")]) == 2
    assert "no ReLU or QCFS sites" in capsys.readouterr().err
    snn = tmp_path / "snn.pt"
    assert main(["convert", str(out / "model.pt"), "--out", str(snn), "--function-time-steps", "2",
                 "--calibration-size", "64"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pt"), "--snn", str(snn), "-T", "2,8", "--limit", "4"]) == 2
    error = capsys.readouterr().err
    assert "fitted for T in [2], not T = 8" in error and error.count("\n") == 1


def test_bench_times_the_gelu_checkpoint(trained, tmp_path):
    out, _ = trained
    assert main(["bench", str(out / "model.pt"), "--time-steps", "2", "--batch-sizes", "2", "--rounds", "1",
                 "--min-block-seconds", "0", "--threads", "1", "--no-plots", "--no-serial", "--no-trains",
                 "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert {m["engine"] for m in result["measurements"]} == {"ann", "parallel"}  # no ReLU twin of a GELU network
