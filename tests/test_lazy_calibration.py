"""Calibration on lazy batches (:class:`parasnn.datasets.lazy.LazyBatches`) is calibration on
the same batches held in a list: the same items, the same seeded order and held-out draw, the
same calibrated network bit for bit — and the lazy sequence keeps no batch it loaded."""
from __future__ import annotations

import gc
import os
import socket
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from parasnn.calibration.batches import (as_sequence, batch_order, held_out_indices, materialise,
                                         measuring_sample, on_device, split_batches)
from parasnn.calibration.config import BatchNormConfig, BiasConfig, CalibrationConfig, CalibrationError
from parasnn.calibration.pipeline import calibrate, calibrate_with_report
from parasnn.datasets import lazy as lazy_module
from parasnn.datasets.lazy import LazyBatches
from parasnn.datasets.splits import batch_sequence, make_loader, sample_subset
from parasnn.datasets.streaming import stream_image_folder

from helpers import without_clock

Image = pytest.importorskip("PIL.Image")

CLASSES, PER_CLASS, SIDE = 3, 16, 8


def _write_folder(root: Path, *, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """root/{train,test}/c<k>/<i>.png: grey random images, stored class by class."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                # Class-dependent brightness: something for the network to separate.
                pixels = np.clip(rng.normal(60 + 60 * c, 40, (SIDE, SIDE)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The training split of a generated folder, streamed, as a seeded random sample (what
    ``parasnn calibrate`` learns on: :func:`training_sample` returns it in random order)."""
    root = _write_folder(tmp_path_factory.mktemp("folder"))
    train = stream_image_folder(root, workers=0).train
    return sample_subset(train, None, seed=3)


def _listed(dataset, batch_size):
    return list(make_loader(dataset, batch_size=batch_size, shuffle=False, workers=0))


def _equal_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class _Net(nn.Module):
    """Conv–BN–ReLU twice, pooled, linear: ReLU sites (thresholds recorded on the data) and
    BatchNorm layers (stage bn)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.head(self.features(x))


def _model():
    torch.manual_seed(0)
    model = _Net()
    with torch.no_grad():  # BatchNorm statistics off the identity, so that stage bn has work
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


CONFIG = CalibrationConfig(stages=("da", "bn", "bias"), time_steps=2, batch_size=8, percentile=99.0,
                           validation_fraction=0.25, seed=5, bn=BatchNormConfig(epochs=2),
                           bias=BiasConfig(epochs=2, validation_interval=2))
ONE_EPOCH = CONFIG.replace(bn=BatchNormConfig(epochs=1), bias=BiasConfig(epochs=1, validation_interval=2))


def _state(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items() if torch.is_tensor(v)}


def _same_state(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- the sequence ------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_items_equal_the_loaders_batches(stream, workers):
    lazy = LazyBatches(stream, 5, workers=workers)
    listed = _listed(stream, 5)
    assert len(lazy) == len(listed) == 10  # 48 images: nine of 5 and one of 3
    for index in (0, 4, 9, -1, -10, np.int64(2), torch.tensor(7)):
        assert _equal_batches(lazy[index], listed[int(index)])
    assert all(_equal_batches(a, b) for a, b in zip(lazy, listed, strict=True))  # iterated: workers prefetch
    assert lazy[0][1].dtype == torch.int64 and isinstance(lazy[0], list)  # the loader's collate
    view = lazy[7:2:-2]
    assert isinstance(view, LazyBatches) and len(view) == 3
    assert all(_equal_batches(a, listed[i]) for a, i in zip(view, (7, 5, 3), strict=True))
    assert _equal_batches(view.select([2, 0])[0], listed[3])  # a view of a view names the partition's batches
    for bad in (10, -11):
        with pytest.raises(IndexError, match="batch"):
            lazy[bad]
    with pytest.raises(ValueError, match="batch_size"):
        LazyBatches(stream, 0)
    with pytest.raises(IndexError, match="outside"):
        LazyBatches(stream, 5, chosen=[10])


def test_batch_sequence_is_lazy_for_a_stream_and_a_list_in_memory(stream):
    from torch.utils.data import TensorDataset
    lazy = batch_sequence(stream, batch_size=8)
    assert isinstance(lazy, LazyBatches)
    images, labels = zip(*(stream[i] for i in range(len(stream))))
    tensors = TensorDataset(torch.stack(images), torch.tensor(labels))
    listed = batch_sequence(tensors, batch_size=8)
    assert isinstance(listed, list) and all(_equal_batches(a, b) for a, b in zip(lazy, listed, strict=True))
    for rank in (0, 1):  # a process's shard: the same batches lazily as listed
        shard = batch_sequence(stream, batch_size=4, num_replicas=2, rank=rank)
        expected = batch_sequence(tensors, batch_size=4, num_replicas=2, rank=rank)
        assert isinstance(shard, LazyBatches) and isinstance(expected, list)
        assert all(_equal_batches(a, b) for a, b in zip(shard, expected, strict=True))


def test_materialise_on_device_and_split_keep_lazy_data_lazy_and_pick_the_same_batches(stream):
    lazy = LazyBatches(stream, 4, workers=0)
    listed = _listed(stream, 4)
    assert materialise(lazy, where="test") is lazy and as_sequence(lazy) is lazy
    kept = materialise(listed, where="test")
    assert isinstance(kept, list) and kept is not listed and all(a is b for a, b in zip(kept, listed))
    moved = on_device(lazy, torch.device("cpu"))
    assert isinstance(moved, LazyBatches) and moved.device == torch.device("cpu")
    assert all(_equal_batches(a, b) for a, b in zip(moved, listed, strict=True))
    for fraction, seed in ((0.25, 0), (0.25, 7), (0.5, 1), (0.0, 0)):
        lazy_parts = split_batches(moved, validation_fraction=fraction, seed=seed)
        list_parts = split_batches(listed, validation_fraction=fraction, seed=seed)
        assert all(isinstance(part, LazyBatches) for part in lazy_parts)
        assert all(isinstance(part, list) for part in list_parts)
        for lazy_part, list_part in zip(lazy_parts, list_parts):
            assert all(_equal_batches(a, b) for a, b in zip(lazy_part, list_part, strict=True))
        held = held_out_indices(len(listed), validation_fraction=fraction, seed=seed)
        assert all(_equal_batches(list_parts[1][k], listed[i]) for k, i in enumerate(held))
    # A stage's seeded order reaches the same batches through either sequence.
    order = batch_order(len(lazy), seed=5, epoch=1)
    assert sorted(order) == list(range(len(lazy))) and order != sorted(order)
    assert all(_equal_batches(lazy[i], listed[i]) for i in order)
    with pytest.raises(CalibrationError, match="empty"):
        materialise(LazyBatches(stream, 4, chosen=[]), where="test")


def test_measuring_sample_draws_the_same_random_batches_from_lazy_and_listed_data(stream):
    lazy = LazyBatches(stream, 4, workers=0)
    listed = _listed(stream, 4)
    assert measuring_sample(lazy, images=None, batch_size=4) is lazy
    assert measuring_sample(listed, images=len(listed) * 4, batch_size=4) == listed
    for images, seed in ((9, 0), (16, 3), (4, 1)):
        lazy_part = measuring_sample(lazy, images=images, batch_size=4, seed=seed)
        list_part = measuring_sample(listed, images=images, batch_size=4, seed=seed)
        assert isinstance(lazy_part, LazyBatches) and len(lazy_part) == len(list_part) == -(-images // 4)
        assert all(_equal_batches(a, b) for a, b in zip(lazy_part, list_part, strict=True))
    # a random draw, not the first batches: on this class-sorted folder a prefix is one class
    chosen = [next(i for i, b in enumerate(listed) if _equal_batches(b, c))
              for c in measuring_sample(listed, images=12, batch_size=4, seed=0)]
    assert chosen == sorted(chosen) and chosen != list(range(3))


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_batches_keep_no_batch_they_loaded(stream, workers):
    lazy = LazyBatches(stream, 4, workers=workers)
    seen: list[weakref.ref] = []
    for batch in lazy:  # at most the batch in hand is alive: nothing is cached
        seen.append(weakref.ref(batch[0]))
        assert sum(ref() is not None for ref in seen[:-1]) == 0
    del batch
    gc.collect()
    assert len(seen) == len(lazy) and all(ref() is None for ref in seen)
    first = weakref.ref(lazy[3][0])
    assert first() is None  # indexing keeps nothing either
    assert set(vars(lazy)) == {"dataset", "batch_size", "workers", "device", "_chosen"}  # no cache


# -- calibration -----------------------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["training-data", "split-held-apart"])
def test_calibrating_on_lazy_batches_gives_the_listed_batches_network_bit_for_bit(stream, split):
    """A class-sorted streamed folder: stages da, bn and bias (and the ReLU thresholds) on lazy
    batches and on the same batches listed give the same network."""
    held = LazyBatches(stream.take(range(0, 16)), 8, workers=0)
    training = LazyBatches(stream.take(range(16, len(stream))), 8, workers=0)
    model = _model()
    if split:  # one set of batches: a seeded random quarter held out
        lazy_net, lazy_report = calibrate_with_report(model, training, config=CONFIG)
        list_net, list_report = calibrate_with_report(model, list(training), config=CONFIG)
    else:
        lazy_net, lazy_report = calibrate_with_report(model, held, config=CONFIG, training_data=training)
        list_net, list_report = calibrate_with_report(model, list(held), config=CONFIG, training_data=list(training))
    assert _same_state(_state(lazy_net), _state(list_net))
    assert without_clock(lazy_report.to_dict()) == without_clock(list_report.to_dict())
    assert [s.steps for s in lazy_report.stages] == [s.steps for s in list_report.stages]
    assert len(lazy_report.stages) == 3 and all(s.steps > 0 for s in lazy_report.stages)


def test_calibration_holds_about_one_lazy_batch_whatever_the_number_of_batches(stream, monkeypatch):
    """Count the lazy batches alive at any moment while calibrating on 10 and on 20 of them:
    each is loaded again and again, never held together (a list would hold all of them). At
    most three: the one being loaded, the one in hand, and a stage's last batch still named by
    a local variable when the next pass starts."""
    alive, most, loads = set(), [0], [0]
    original = lazy_module.default_collate

    def counted(items):
        batch = original(items)
        key = id(batch[0])
        alive.add(key)
        weakref.finalize(batch[0], alive.discard, key)
        loads[0] += 1
        most[0] = max(most[0], len(alive))
        return batch

    monkeypatch.setattr(lazy_module, "default_collate", counted)
    held = _listed(stream.take(range(0, 8)), 8)  # the held-out batches are a list here
    peaks = []
    for repeats in (1, 2):
        training = LazyBatches(stream, 5, workers=0, chosen=list(range(10)) * repeats)  # 10, then 20 batches
        most[0], loads[0] = 0, 0
        calibrate(_model(), held, config=ONE_EPOCH, training_data=training)
        assert loads[0] >= 5 * len(training)  # thresholds, da, bn (statistics, training, statistics), bias
        peaks.append(most[0])
    assert peaks[0] == peaks[1] <= 3, f"lazy batches alive at once: {peaks}"


def test_the_commands_pass_a_streamed_folder_as_lazy_batches(tmp_path, monkeypatch, capsys):
    """parasnn calibrate learns on lazy batches of a streamed folder (no note about memory any
    more), and parasnn ablate also tests on lazy batches."""
    from parasnn.calibration import pipeline
    from parasnn.cli import main
    from parasnn.datasets.folder import IN_MEMORY_LIMIT_VARIABLE
    from parasnn.evaluation import ablation
    from parasnn.io.checkpoint import save_ann
    from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
    folder = _write_folder(tmp_path / "folder")
    monkeypatch.setenv(IN_MEMORY_LIMIT_VARIABLE, "0")  # everything streams
    spec = ModelSpec(name="vgg-small", input_shape=(1, SIDE, SIDE), num_classes=CLASSES, width=4,
                     activation=ActivationSpec(kind=ActivationKind.RELU))
    torch.manual_seed(0)
    save_ann(tmp_path / "ann.pt", build_model(spec), spec,
             config={"dataset": "image-folder", "data_dir": str(folder), "holdout": 12, "seed": 0})
    seen = {}
    run_stages = pipeline.run_stages

    def recording(network, batches, **options):
        seen.update(training=batches, validation=options["validation"])
        return run_stages(network, batches, **options)

    monkeypatch.setattr(pipeline, "run_stages", recording)
    assert main(["calibrate", str(tmp_path / "ann.pt"), "-T", "2", "--stages", "da", "--batch-size", "8",
                 "--out", str(tmp_path / "snn.pt")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert isinstance(seen["training"], LazyBatches) and isinstance(seen["validation"], LazyBatches)
    assert len(seen["training"]) == 5 and seen["training"].dataset.__len__() == 36  # 48 − 12 held apart

    class Stop(Exception):  # the grid itself is not run: only what it is given matters here
        pass

    def stop(model, batches, test_batches, **options):
        seen.update(ablate=(batches, options["training_data"], test_batches))
        raise Stop

    monkeypatch.setattr(ablation, "run_ablation", stop)
    assert main(["ablate", str(tmp_path / "ann.pt"), "-T", "2", "--out", str(tmp_path / "ablation")]) != 0
    assert all(isinstance(batches, LazyBatches) for batches in seen["ablate"])


# -- under torchrun: each process's shard, the same draw everywhere --------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _shard_worker(rank: int, world: int, address: str, root: str, directory: str):
    torch.set_num_threads(1)
    os.environ["PARASNN_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        train = sample_subset(stream_image_folder(root, workers=0).train, None, seed=3)
        lazy = batch_sequence(train, batch_size=4, num_replicas=world, rank=rank)
        config = ONE_EPOCH
        lazy_net = calibrate(_model(), lazy, config=config)
        list_net = calibrate(_model(), list(lazy), config=config)
        held = held_out_indices(len(lazy), validation_fraction=config.validation_fraction, seed=config.seed)
        torch.save({"same": _same_state(_state(lazy_net), _state(list_net)), "held": held, "count": len(lazy)},
                   os.path.join(directory, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_calibrate_their_lazy_shards_as_their_listed_shards(tmp_path):
    root = _write_folder(tmp_path / "folder")
    mp.spawn(_shard_worker, args=(2, f"tcp://127.0.0.1:{_free_port()}", str(root), str(tmp_path)), nprocs=2,
             join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert all(result["same"] for result in results)
    assert results[0]["count"] == results[1]["count"] == 6 and results[0]["held"] == results[1]["held"]
