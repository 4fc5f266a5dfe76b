"""Every user-facing failure of the command line is one line on stderr naming the file, option
or module and the fix, exit status 2, no traceback (``--debug`` shows it); outputs are
checked before the work and never destroy an input."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from parasnn.cli import main
from parasnn.io.checkpoint import save_ann
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model

pytest.importorskip("sklearn")


def _spec(**changes):
    values = dict(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                  activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.5))
    values.update(changes)
    return ModelSpec(**values)


def _save(path, spec=None, config=None):
    spec = spec or _spec()
    torch.manual_seed(0)
    save_ann(path, build_model(spec), spec, config=config or {"dataset": "digits", "holdout": 200, "seed": 0})
    return path


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ann") / "M.pt")


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize("command", [
    ["evaluate", "{M}", "--json", "{M}"],
    ["convert", "{M}", "--out", "{M}"],
    ["calibrate", "{M}", "--time-steps", "2", "--out", "{M}"],
    ["pmsm", "{M}", "--levels", "2", "--out", "{M}"],
    ["bench", "{M}", "--out", "{dir}"],
])
def test_an_output_onto_the_input_is_refused_and_the_input_kept(ann, command, capsys):
    before = ann.read_bytes()
    if command[0] == "bench":  # speed.json there is the checkpoint, under another name
        link = ann.parent / "speed.json"
        link.unlink(missing_ok=True)
        link.symlink_to(ann)
    arguments = [part.format(M=ann, dir=ann.parent) for part in command]
    assert main(arguments) == 2
    error = _error(capsys)
    assert "same file as the input checkpoint" in error
    assert ann.read_bytes() == before
    (ann.parent / "speed.json").unlink(missing_ok=True)


@pytest.mark.parametrize("command, message", [
    (["evaluate", "{M}", "--json", "/proc/x.json"], "cannot create files"),
    (["evaluate", "{M}", "--json", "{M}/x.json"], "is a file, not a directory"),
    (["evaluate", "{M}", "--json", "{tmp}"], "is a directory"),
    (["convert", "{M}", "--out", "/dev/null"], "character device"),
    (["train", "--dataset", "digits", "--out", "{M}"], "is a file, not a directory"),
    (["ablate", "{M}", "--out", "/proc/run"], "cannot create files"),
])
def test_unwritable_outputs_are_found_before_the_work(ann, tmp_path, command, message, capsys):
    arguments = [part.format(M=ann, tmp=tmp_path) for part in command]
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""  # no table: the evaluation never ran
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device


@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "-9990"], ["--forms", ","], ["--forms", "fast"],
                                    ["--batch-size", "0"], ["--time-steps", str(2**64)], ["--time-steps", "4,0"]])
def test_meaningless_options_are_refused_by_the_parser(ann, option, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["evaluate", str(ann), *option])
    assert exit_status.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_damaged_checkpoints_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, change in [("kind.pt", {"kind": 5}), ("config.pt", {"config": None}),
                         ("huge.pt", {"model": {**_spec().to_dict(), "input_shape": [3, 10**6, 10**6]}})]:
        _save(tmp_path / name)
        data = torch.load(tmp_path / name, weights_only=True)
        data.update(change)
        torch.save(data, tmp_path / name)
    for name in ("empty.pt", "kind.pt", "config.pt", "huge.pt"):
        for command in (["evaluate", str(tmp_path / name)], ["convert", str(tmp_path / name), "--out",
                                                              str(tmp_path / "out.pt")]):
            assert main(command) == 2
            assert name in _error(capsys)
    assert not (tmp_path / "out.pt").exists()


def _image_folder(root, classes: int, size: int = 8):
    from PIL import Image
    generator = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(classes):
            (root / split / f"c{label}").mkdir(parents=True)
            for index in range(6):
                pixels = generator.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / f"c{label}" / f"{index}.png")
    return root


def test_a_model_that_does_not_fit_the_data_is_an_error_not_an_accuracy(tmp_path, capsys):
    folder = _image_folder(tmp_path / "three", classes=3)
    two = _save(tmp_path / "two.pt", _spec(num_classes=2), config={"dataset": "image-folder", "data_dir": str(folder),
                                                                      "holdout": 4})
    for command in (["evaluate", str(two)], ["calibrate", str(two), "-T", "2", "--out", str(tmp_path / "s.pt")]):
        assert main(command) == 2
        assert "predicts 2 classes but the data set image-folder" in _error(capsys)
    relu = _save(tmp_path / "relu.pt", _spec(activation=ActivationSpec(kind=ActivationKind.RELU), num_classes=2),
                 config={"dataset": "image-folder", "data_dir": str(folder), "holdout": 4})
    assert main(["convert", str(relu), "--out", str(tmp_path / "s.pt")]) == 2
    assert "predicts 2 classes" in _error(capsys)
    big = _save(tmp_path / "big.pt", _spec(input_shape=(1, 16, 16)))  # digits are 8 x 8
    assert main(["evaluate", str(big)]) == 2
    assert "takes inputs of shape (1, 16, 16)" in _error(capsys)
    assert not (tmp_path / "s.pt").exists()


def test_evaluate_refuses_an_snn_of_another_ann(ann, tmp_path, capsys):
    other = _save(tmp_path / "other.pt", _spec(width=4, activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4,
                                                                                   threshold=2.0)))
    assert main(["convert", str(ann), "--out", str(tmp_path / "snn.pt")]) == 0
    quick = ["--time-steps", "1", "--forms", "parallel", "--no-activity", "--limit", "8"]
    assert main(["evaluate", str(ann), "--snn", str(tmp_path / "snn.pt"), *quick]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(other), "--snn", str(tmp_path / "snn.pt"), *quick]) == 2
    error = _error(capsys)
    assert "was converted from another ANN than" in error and "parasnn convert" in error


def test_debug_shows_the_traceback_and_without_it_one_line(tmp_path):
    from parasnn.io.checkpoint import CheckpointError
    with pytest.raises(CheckpointError):
        main(["--debug", "evaluate", str(tmp_path / "missing.pt")])
    with pytest.raises(CheckpointError):
        main(["evaluate", str(tmp_path / "missing.pt"), "--debug"])
    completed = subprocess.run([sys.executable, "-m", "parasnn.cli", "evaluate", str(tmp_path / "missing.pt")],
                               capture_output=True, text=True)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().count("\n") == 0 and "missing.pt does not exist" in completed.stderr


def test_an_internal_error_is_one_line_with_exit_status_1(ann, monkeypatch, capsys):
    import parasnn.io.checkpoint as checkpoint

    def broken(path):
        raise KeyError("a bug")
    monkeypatch.setattr(checkpoint, "load_ann", broken)
    assert main(["convert", str(ann), "--out", str(ann.parent / "x.pt")]) == 1
    error = _error(capsys)
    assert "internal error (KeyError" in error and "--debug" in error


def test_calibration_that_changed_nothing_says_so():
    from parasnn.calibration.pipeline import CalibrationConfig, CalibrationReport, StageReport
    from parasnn.cli.calibrate import calibration_notes
    report = CalibrationReport(config=CalibrationConfig(), from_relu=False, stages=[
        StageReport("da", details={"reverted": True}), StageReport("bn", details={"reverted": True})])
    notes = calibration_notes(report)
    assert len(notes) == 1 and "da, bn" in notes[0] and "no stage changed the network" in notes[0]
    report.stages.append(StageReport("bias", details={"mean_abs_bias": 0.0}))
    notes = calibration_notes(report)
    assert "no stage changed" not in notes[0] and "stage bias learned nothing" in notes[1]
    report.stages = [StageReport("da", details={"reverted": False}), StageReport("bias", details={"mean_abs_bias": 0.01})]
    assert calibration_notes(report) == []
