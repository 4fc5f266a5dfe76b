"""Calibration under more than one process: 2 CPU processes with gloo must produce what one
process produces on the same data — thresholds, DA terms, BN statistics and affine terms,
temporal biases and the test accuracy.

Tolerance: parameters agree to ``atol=1e-5, rtol=1e-4``, the accuracy exactly. The two runs
do the same arithmetic in a different order — each process sums its half of a batch and the
halves are added across processes (in float64) — so values differ in the last bits
(~1e-7 relative per operation), and a few hundred AdamW steps carry that forward without
amplifying it much. Exact equality is not to be expected; a count on a rounding boundary
could in principle flip, which would show up as a larger difference and fail the test.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("sklearn")

from helpers import train_briefly
from parasnn.runtime import distributed  # noqa: E402
from parasnn.calibration.config import CalibrationConfig  # noqa: E402
from parasnn.calibration.guard import evaluate_loss  # noqa: E402
from parasnn.calibration.pipeline import calibrate_with_report  # noqa: E402
from parasnn.datasets.data import calibration_split, load_dataset, make_loader  # noqa: E402
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model  # noqa: E402

SPEC = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                 activation=ActivationSpec(kind=ActivationKind.RELU))
GLOBAL_BATCH = 64
CONFIG = CalibrationConfig(time_steps=2, batch_size=GLOBAL_BATCH, percentile=100.0, validation_fraction=0.25,
                           bias_epochs=2, validation_interval=2, bias_learning_rate=5e-3, bn_learning_rate=5e-3)


def _data(world: int, rank: int):
    """Calibration and test batches of this process: the global batch i is the union over
    processes of their batch i (a distributed sampler without shuffling)."""
    splits = load_dataset("digits")
    _, held = calibration_split(splits.train, size=256, seed=0)
    # An even number of test images: a distributed sampler pads an odd count with a repeat.
    test = torch.utils.data.TensorDataset(*(t[:358] for t in splits.test.tensors))

    def batches(dataset, size):
        if world == 1:
            return list(make_loader(dataset, batch_size=size, shuffle=False))
        return list(make_loader(dataset, batch_size=size // world, shuffle=False, distributed=True,
                                num_replicas=world, rank=rank))

    return batches(held, GLOBAL_BATCH), batches(test, 120)


def _run(model, world: int, rank: int):
    calibration, test = _data(world, rank)
    network, report = calibrate_with_report(model, calibration, config=CONFIG)
    result = evaluate_loss(network, test, time_steps=CONFIG.time_steps)
    return network, report, result


def _worker(rank: int, world: int, address: str, directory: str, state: dict):
    torch.set_num_threads(1)
    os.environ["PARASNN_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        model = build_model(SPEC)
        model.load_state_dict(state)
        network, report, result = _run(model.eval(), world, rank)
        if distributed.is_main_process():  # results written once
            torch.save({"state": network.state_dict(), "result": result, "report": report.to_dict()},
                       os.path.join(directory, "distributed.pt"))
        # Every rank waits for rank 0's write before tearing gloo down: a rank that destroys its
        # group while a peer still talks to it aborts in gloo's C++ ("terminate called ...").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained_state():
    torch.manual_seed(0)
    splits = load_dataset("digits")
    rest, _ = calibration_split(splits.train, size=256, seed=0)
    model = train_briefly(build_model(SPEC), rest)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_two_gloo_processes_calibrate_like_one(tmp_path, trained_state):
    mp.spawn(_worker, args=(2, f"tcp://127.0.0.1:{_free_port()}", str(tmp_path), trained_state), nprocs=2,
             join=True)
    shared = torch.load(tmp_path / "distributed.pt", weights_only=True)
    model = build_model(SPEC)
    model.load_state_dict(trained_state)
    network, report, result = _run(model.eval(), 1, 0)
    single = network.state_dict()
    assert set(single) == set(shared["state"])
    worst = 0.0
    for key, value in single.items():
        assert torch.allclose(value.double(), shared["state"][key].double(), atol=1e-5, rtol=1e-4), key
        worst = max(worst, float((value.double() - shared["state"][key].double()).abs().max()))
    print(f"largest difference between the 1- and 2-process parameters: {worst:.3g}")
    # Something was calibrated: per-channel DA terms and biases, moved BN statistics.
    assert any(k.endswith("temporal_bias") and v.dim() == 1 and bool(v.abs().sum() > 0) for k, v in single.items())
    assert any(k.endswith("pre_shift") and v.dim() == 1 for k, v in single.items())
    assert shared["result"]["samples"] == result["samples"] == 358
    assert shared["result"]["accuracy"] == result["accuracy"]
    assert shared["result"]["loss"] == pytest.approx(result["loss"], rel=1e-4)
    assert [s["steps"] for s in shared["report"]["stages"]] == [s.steps for s in report.stages]


def _torchrun(arguments: list[str], *, cwd) -> None:
    """``torchrun --standalone --nproc-per-node 2 -m parasnn.cli ARGUMENTS`` (gloo on CPU)."""
    # This process's import path (absolute): a relative PYTHONPATH=src would name another
    # directory in the subprocesses' cwd, and they would import another copy of parasnn.
    environment = dict(os.environ, PARASNN_PROGRESS="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONPATH=os.pathsep.join(sys.path))
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                "-m", "parasnn.cli", *arguments], cwd=cwd, env=environment, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


@pytest.mark.slow
def test_the_commands_run_unchanged_under_torchrun(tmp_path):
    """``parasnn calibrate`` and ``parasnn evaluate`` under torchrun (2 processes) give what
    they give in one process: the same calibrated parameters (tolerance of the test above,
    same reason) and the same evaluation counts — accuracies and spike counts are sums of
    integers over shards, so they must be equal up to the float64 division."""
    from parasnn.cli import main
    from parasnn.training.train import TrainConfig, train
    train(TrainConfig(dataset="digits", model="vgg-small", width=4, activation="relu", epochs=2, batch_size=64,
                      holdout=256, seed=0), out_dir=tmp_path / "ann", device=torch.device("cpu"))
    checkpoint = str(tmp_path / "ann" / "model.pt")
    # Percentile 100 (the maximum): a lower percentile is read per batch, and a shard's
    # percentile is not the global batch's (see distributed.threshold_reducer).
    calibrate = ["calibrate", checkpoint, "--time-steps", "2", "--batch-size", "64", "--bias-epochs", "2",
                 "--validation-interval", "2", "--percentile", "100", "--threshold-scope", "channel", "--device", "cpu"]
    assert main([*calibrate, "--out", str(tmp_path / "single.pt")]) == 0
    _torchrun([*calibrate, "--out", str(tmp_path / "shared.pt")], cwd=tmp_path)
    single = torch.load(tmp_path / "single.pt", weights_only=True)["state_dict"]
    shared = torch.load(tmp_path / "shared.pt", weights_only=True)["state_dict"]
    assert set(single) == set(shared)
    for key, value in single.items():
        assert torch.allclose(value.double(), shared[key].double(), atol=1e-5, rtol=1e-4), key
    assert any(k.endswith("temporal_bias") and bool(v.abs().sum() > 0) for k, v in single.items())
    # Per-channel thresholds (reduced over processes channel by channel): one θ per channel.
    assert all(v.dim() == 1 and v.numel() > 1 for k, v in single.items() if k.endswith(".threshold"))

    evaluate = ["evaluate", checkpoint, "--snn", str(tmp_path / "single.pt"), "--time-steps", "1,2",
                "--device", "cpu"]
    assert main([*evaluate, "--json", str(tmp_path / "single.json")]) == 0
    _torchrun([*evaluate, "--json", str(tmp_path / "shared.json")], cwd=tmp_path)
    one = json.loads((tmp_path / "single.json").read_text())
    two = json.loads((tmp_path / "shared.json").read_text())
    assert two["config"]["processes"] == 2 and one["config"]["processes"] == 1
    assert two["ann"]["samples"] == one["ann"]["samples"] == len(load_dataset("digits").test)
    assert two["ann"]["accuracy"] == one["ann"]["accuracy"]
    for a, b in zip(one["snn"], two["snn"], strict=True):
        assert (a["time_steps"], a["form"], a["accuracy"], a["samples"]) == \
            (b["time_steps"], b["form"], b["accuracy"], b["samples"])
        assert a["activity"]["total_sops"] == pytest.approx(b["activity"]["total_sops"], rel=1e-12)
