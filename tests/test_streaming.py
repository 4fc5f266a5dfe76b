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
    assert info.mean == memory.info.mean  # exact integer sums: the same numbers
    assert np.allclose(info.std, memory.info.std, rtol=1e-12, atol=0)
    for stream, (images, labels) in ((streamed.train, memory.train.tensors), (streamed.test, memory.test.tensors)):
        raw = torch.stack([torch.from_numpy(np.array(stream.raw(i))) for i in range(len(stream))])
        # the same decoded pixels, normalised with the same statistics: the same bits
        assert torch.equal(normalize(raw, memory.info), images)
        streamed_images, streamed_labels = _stack(stream)
        assert torch.equal(streamed_labels, labels)
        assert torch.allclose(streamed_images, images, rtol=1e-6, atol=1e-6)
        stream.info = memory.info
        assert torch.equal(_stack(stream)[0], images)


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
