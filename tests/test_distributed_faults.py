"""Faults under torchrun: a worker killed with SIGKILL in the middle of ``parasnn calibrate``
makes the whole job exit with an error, promptly, leaving no output and no temporary file."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parasnn.io.checkpoint import save_ann
from parasnn.runtime.distributed import TIMEOUT_VARIABLE, collective_timeout
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model

pytest.importorskip("sklearn")


def test_the_collective_timeout_is_configurable(monkeypatch):
    monkeypatch.setenv(TIMEOUT_VARIABLE, "12.5")
    assert collective_timeout().total_seconds() == 12.5
    for bad in ("0", "-3", "soon", "inf"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        with pytest.raises(ValueError, match=TIMEOUT_VARIABLE):
            collective_timeout()
    monkeypatch.delenv(TIMEOUT_VARIABLE)
    assert collective_timeout().total_seconds() == 300


def _workers(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes (its children with RANK in the environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            environment = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environment:
            found[int(environment["RANK"])] = int(entry.name)
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_calibration_stops_the_job_without_partial_output(tmp_path):
    spec = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                     activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.5))
    torch.manual_seed(0)
    save_ann(tmp_path / "M.pt", build_model(spec), spec, config={"dataset": "digits", "holdout": 400, "seed": 0})
    # Many small batches and epochs of stage bn (collectives at every step); progress lines on
    # stderr say when calibration is under way.
    environment = dict(os.environ, PARASNN_PROGRESS="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONPATH=os.pathsep.join(sys.path), **{TIMEOUT_VARIABLE: "60"})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "parasnn.cli", "calibrate", str(tmp_path / "M.pt"), "-T", "2", "--stages", "bn",
               "--batch-size", "4", "--bn-epochs", "50", "--device", "cpu", "--out", str(tmp_path / "S.pt")]
    job = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    lines = []
    try:
        for line in job.stdout:
            lines.append(line)
            if "stage bn" in line:  # a worker reports progress: calibration is running
                break
        else:
            pytest.fail("the job ended before calibrating:\n" + "".join(lines[-30:]))
        workers = _workers(job.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        rest, _ = job.communicate(timeout=120)
        seconds = time.monotonic() - killed
    finally:
        job.kill()
    assert job.returncode != 0, "".join(lines) + rest
    # torchrun names the root cause; rank 0 stopped too (SIGTERM from torchrun runs its clean-up: 143).
    assert "SIGKILL" in rest and "rank      : 0" in rest, rest[-3000:]
    assert seconds < 90, f"the job needed {seconds:.0f} s to stop after the worker died"
    assert not Path(f"/proc/{workers[0]}").exists() or "zombie" in Path(f"/proc/{workers[0]}/status").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.pt"]  # no S.pt, no config, no temporary file
