"""The streamed image folder decodes the same tensors as the in-memory reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from parasnn.datasets.data import DataError, load_dataset, normalize
from parasnn.datasets.streaming import ImageFolderStream, stream_image_folder, stream_loader

Image = pytest.importorskip("PIL.Image")


def _write_folder(root: Path, *, modes: dict[str, str], sizes=((9, 7),), per_class: int = 3, seed: int = 0):
    """root/{train,test}/<class>/<i>.png with random pixels; ``modes`` maps class → PIL mode."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, (name, mode) in enumerate(modes.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                width, height = sizes[(i + c) % len(sizes)]
                shape = (height, width) if mode == "L" else (height, width, len(mode))
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"{i}.png")


def _stack(dataset):
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


@pytest.mark.parametrize("modes,sizes,image_size", [
    ({"a": "L", "b": "L"}, ((9, 7),), None),                       # all grey: one channel
    ({"a": "RGB", "b": "L", "c": "RGBA"}, ((9, 7),), None),        # mixed: RGB, grey repeated
    ({"a": "RGB", "b": "RGB"}, ((9, 7), (12, 5)), 8),              # resized
])
def test_stream_equals_in_memory(tmp_path, modes, sizes, image_size):
    _write_folder(tmp_path, modes=modes, sizes=sizes)
    memory = load_dataset("image-folder", data_dir=tmp_path, image_size=image_size)
    streamed = stream_image_folder(tmp_path, image_size=image_size, workers=0)
    info = streamed.info
    assert (info.input_shape, info.num_classes, info.class_names) == \
        (memory.info.input_shape, memory.info.num_classes, memory.info.class_names)
    # exact integer sums in both readers: the same numbers, so the same normalised bits
    assert (info.mean, info.std) == (memory.info.mean, memory.info.std)
    for stream, (images, labels) in ((streamed.train, memory.train.tensors), (streamed.test, memory.test.tensors)):
        raw = torch.stack([torch.from_numpy(np.array(stream.raw(i))) for i in range(len(stream))])
        assert torch.equal(normalize(raw, memory.info), images)  # the same decoded pixels
        streamed_images, streamed_labels = _stack(stream)
        assert torch.equal(streamed_labels, labels)
        assert torch.equal(streamed_images, images)


def test_loader_with_workers_and_statistics(tmp_path):
    _write_folder(tmp_path, modes={"a": "RGB", "b": "RGB"}, per_class=5)
    memory = load_dataset("image-folder", data_dir=tmp_path)
    streamed = stream_image_folder(tmp_path, workers=2, statistics=(memory.info.mean, memory.info.std))
    loader = stream_loader(streamed.train, batch_size=4, shuffle=False, workers=2)
    images = torch.cat([batch for batch, _ in loader])
    assert torch.equal(images, memory.train.tensors[0])
    shuffled = [labels for _, labels in stream_loader(streamed.train, batch_size=3, shuffle=True, seed=1, workers=0)]
    again = [labels for _, labels in stream_loader(streamed.train, batch_size=3, shuffle=True, seed=1, workers=0)]
    assert all(torch.equal(a, b) for a, b in zip(shuffled, again))
    assert sorted(torch.cat(shuffled).tolist()) == sorted(memory.train.tensors[1].tolist())


def test_stream_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        stream_image_folder(tmp_path)
    _write_folder(tmp_path, modes={"a": "RGB"}, sizes=((9, 7), (4, 4)))
    with pytest.raises(DataError, match="all images must have one size"):
        stream_image_folder(tmp_path, workers=0)
    bad = tmp_path / "train" / "a" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        stream_image_folder(tmp_path, image_size=4, workers=0)
    with pytest.raises(ValueError, match="labels"):
        ImageFolderStream(["x.png"], [], grayscale=True, size=None, info=None)


def test_storage_rule_and_forced_storage(tmp_path, monkeypatch):
    from parasnn.datasets.folder import IN_MEMORY_LIMIT_VARIABLE, ImageStorage, choose_storage
    _write_folder(tmp_path, modes={"a": "RGB", "b": "L"}, per_class=4)
    decoded = 16 * 3 * 7 * 9 * 4  # 16 images of 9 x 7, counted as 3 float32 channels
    monkeypatch.setenv(IN_MEMORY_LIMIT_VARIABLE, str(decoded))
    assert choose_storage("auto", images=16, height=7, width=9) is ImageStorage.MEMORY
    assert hasattr(load_dataset("image-folder", data_dir=tmp_path).train, "tensors")
    monkeypatch.setenv(IN_MEMORY_LIMIT_VARIABLE, str(decoded - 1))
    assert choose_storage("auto", images=16, height=7, width=9) is ImageStorage.STREAM
    streamed = load_dataset("image-folder", data_dir=tmp_path)
    assert isinstance(streamed.train, ImageFolderStream) and isinstance(streamed.test, ImageFolderStream)
    memory = load_dataset("image-folder", data_dir=tmp_path, storage="memory")
    assert streamed.info == memory.info
    assert torch.equal(_stack(streamed.test)[0], memory.test.tensors[0])
    assert choose_storage("stream", images=1, height=1, width=1) is ImageStorage.STREAM
    monkeypatch.setenv(IN_MEMORY_LIMIT_VARIABLE, "lots")
    with pytest.raises(ValueError, match=IN_MEMORY_LIMIT_VARIABLE):
        load_dataset("image-folder", data_dir=tmp_path)


def test_samples_splits_and_batches_pick_the_same_examples(tmp_path):
    from parasnn.datasets.splits import (batch_sequence, calibration_split, first_examples, make_loader,
                                         sample_subset)
    _write_folder(tmp_path, modes={"a": "RGB", "b": "RGB", "c": "RGB"}, per_class=5)
    memory = load_dataset("image-folder", data_dir=tmp_path, storage="memory")
    streamed = load_dataset("image-folder", data_dir=tmp_path, storage="stream")
    pairs = [(sample_subset(streamed.train, 7, seed=3), sample_subset(memory.train, 7, seed=3)),
             (first_examples(streamed.train, 4), first_examples(memory.train, 4)),
             *zip(calibration_split(streamed.train, size=5, seed=1), calibration_split(memory.train, size=5, seed=1))]
    for stream, tensors in pairs:
        images, labels = _stack(stream)
        assert torch.equal(images, tensors.tensors[0]) and torch.equal(labels, tensors.tensors[1])
    lazy = batch_sequence(streamed.train, batch_size=4)
    listed = batch_sequence(memory.train, batch_size=4)
    assert len(lazy) == len(listed) == 4 and isinstance(listed, list)
    for index in (3, 0, -1):
        assert all(torch.equal(a, b) for a, b in zip(lazy[index], listed[index]))
    for rank in (0, 1):  # a process's shard: the rows a DistributedSampler gives it
        shard = batch_sequence(streamed.train, batch_size=2, num_replicas=2, rank=rank)
        expected = list(make_loader(memory.train, batch_size=2, shuffle=False, distributed=True, num_replicas=2,
                                    rank=rank))
        assert len(shard) == len(expected)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(shard, expected))
    assert make_loader(streamed.test, batch_size=2, shuffle=False).num_workers == 2  # the stream's own
    assert make_loader(memory.test, batch_size=2, shuffle=False).num_workers == 0


def test_calibrate_and_evaluate_stream_an_image_folder(tmp_path, monkeypatch, capsys):
    """End to end on a folder the size rule streams: parasnn calibrate, then evaluate."""
    from parasnn.cli import main
    from parasnn.datasets.folder import IN_MEMORY_LIMIT_VARIABLE
    from parasnn.io.checkpoint import save_ann
    from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
    folder = tmp_path / "folder"
    _write_folder(folder, modes={"a": "L", "b": "L", "c": "L"}, sizes=((8, 8),), per_class=8)
    monkeypatch.setenv(IN_MEMORY_LIMIT_VARIABLE, "0")  # everything streams
    spec = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=3, width=4,
                     activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.5))
    torch.manual_seed(0)
    save_ann(tmp_path / "ann.pt", build_model(spec), spec,
             config={"dataset": "image-folder", "data_dir": str(folder), "holdout": 9, "seed": 0})
    decoded = []
    original = ImageFolderStream.raw
    monkeypatch.setattr(ImageFolderStream, "raw", lambda self, i: decoded.append(i) or original(self, i))
    assert main(["calibrate", str(tmp_path / "ann.pt"), "-T", "2", "--stages", "da,bias", "--bias-epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "snn.pt")]) == 0
    assert decoded, "calibration read no streamed image"
    assert main(["evaluate", str(tmp_path / "ann.pt"), "--snn", str(tmp_path / "snn.pt"), "--time-steps", "2",
                 "--batch-size", "5", "--json", str(tmp_path / "e.json")]) == 0
    import json
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["ann"]["samples"] == 24  # every test image once
