"""Run directories of ``parasnn train``: one writer (lock), the configuration checked before
anything is written, and a resume after ``kill -9`` that is bit-identical to a run that was
never interrupted. Real subprocesses and real SIGKILL, on scikit-learn's digits."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from parasnn.cli import main

pytest.importorskip("sklearn")

# A tiny network with dropout and augmentation, so that every random-number stream matters.
ARGUMENTS = ["train", "--dataset", "digits", "--model", "vgg-small", "--width", "4", "--levels", "4",
             "--threshold", "2", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--holdout", "200",
             "--max-batches", "16"]
ENVIRONMENT = dict(os.environ, PARASNN_PROGRESS="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join(sys.path))


def _command(out) -> list[str]:
    return [sys.executable, "-m", "parasnn.cli", *ARGUMENTS, "--device", "cpu", "--out", str(out)]


def _tensors(value, prefix=""):
    """Every tensor inside a (nested) checkpoint, by path."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{index}")


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    uninterrupted = subprocess.Popen(_command(whole), env=ENVIRONMENT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen(_command(resumed), env=ENVIRONMENT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (resumed / "last.pt").exists():  # written atomically: complete once it is there
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before epoch 1's last.pt"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        process.kill()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-2000:]
    interrupted = torch.load(resumed / "last.pt", weights_only=True)
    assert interrupted["epoch"] == 0 and not (resumed / "model.pt").exists()  # killed during epoch 2

    completed = subprocess.run(_command(resumed), env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "epoch 1:" not in completed.stdout and "epoch 2:" in completed.stdout  # resumed, not restarted
    for name in ("model.pt", "last.pt"):
        a, b = dict(_tensors(torch.load(whole / name, weights_only=True))), \
            dict(_tensors(torch.load(resumed / name, weights_only=True)))
        assert a.keys() == b.keys() and len(a) > 20
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert different == [], f"{name}: {len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _hold_lock(directory):
    holder = textwrap.dedent(f"""
        import time
        from parasnn.training.runs import run_lock
        with run_lock({str(directory)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, env=ENVIRONMENT)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    from parasnn.training.runs import RunError, run_lock
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        assert main([*ARGUMENTS, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in error and error.count("\n") == 1
        assert not (out / "config.json").exists()
        with pytest.raises(RunError, match=str(holder.pid)):
            with run_lock(out):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with run_lock(out):  # the kernel released the dead process's flock
        assert (out / ".lock").read_text().strip() == str(os.getpid())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main([*ARGUMENTS, "--epochs", "1", "--max-batches", "3", "--out", str(out)]) == 0
    return out



def test_another_configuration_is_refused_before_anything_is_written(finished_run, capsys):
    before = {name: (finished_run / name).read_bytes() for name in ("config.json", "last.pt", "model.pt")}
    capsys.readouterr()
    assert main([*ARGUMENTS, "--epochs", "1", "--max-batches", "3", "--lr", "0.2", "--out", str(finished_run)]) == 2
    error = capsys.readouterr().err
    assert "different configuration" in error and "learning_rate: 0.05 -> 0.2" in error and "--no-resume" in error
    assert {name: (finished_run / name).read_bytes() for name in before} == before


def test_more_epochs_on_an_existing_run_are_refused_with_the_way_out(finished_run, capsys):
    before = (finished_run / "config.json").read_bytes()
    capsys.readouterr()
    assert main([*ARGUMENTS, "--epochs", "3", "--max-batches", "3", "--out", str(finished_run)]) == 2
    error = capsys.readouterr().err
    assert "run of 1 epochs, 1 done" in error and "--epochs 1 to resume" in error and "new --out" in error
    assert (finished_run / "config.json").read_bytes() == before
    # The same command as the finished run is a resume with nothing left to train.
    assert main([*ARGUMENTS, "--epochs", "1", "--max-batches", "3", "--out", str(finished_run)]) == 0
    assert "epoch 1:" not in capsys.readouterr().out


@pytest.mark.parametrize("content", ["tensor", "empty", "list"])
def test_a_damaged_last_pt_is_a_one_line_error(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    if content == "tensor":
        torch.save(torch.zeros(3), out / "last.pt")
    elif content == "list":
        torch.save([1, 2], out / "last.pt")
    else:
        (out / "last.pt").write_bytes(b"")
    assert main([*ARGUMENTS, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "last.pt" in error and error.count("\n") == 1 and "Traceback" not in error
    assert not (out / "config.json").exists()


def test_no_resume_starts_over_and_the_run_files_are_replaced(finished_run, tmp_path, capsys):
    out = tmp_path / "again"
    assert main([*ARGUMENTS, "--epochs", "1", "--max-batches", "2", "--out", str(out)]) == 0
    assert main([*ARGUMENTS, "--epochs", "1", "--max-batches", "3", "--out", str(out), "--no-resume"]) == 0
    assert "epoch 1:" in capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["config"]["max_batches"] == 3
