"""Tests for parasnn.datasets.data: every on-disk layout written small into tmp_path, plus the real
Fashion-MNIST files when the Debian package is installed."""
from __future__ import annotations

import gzip
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parasnn.datasets import data, idx
from parasnn.datasets.data import (DataError, DatasetInfo, DatasetName, augment, calibration_split, first_examples,
                          load_dataset, load_subset, make_loader, recorded_split, save_subset, to_uint8)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------------------------
# Writers for the on-disk layouts
# --------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file's bytes: magic 0x0000 08 ndim, big-endian sizes, then uint8 data."""
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gzipped: bool) -> Path:
    payload = idx_bytes(array)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(directory: Path, *, gzipped: bool, seed: int = 0, train_count: int = 6,
                        test_count: int = 4) -> dict[str, np.ndarray]:
    """Random 28×28 images and labels in the four idx files; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    arrays = {
        "train_images": generator.integers(0, 256, (train_count, 28, 28), dtype=np.uint8),
        "train_labels": generator.integers(0, 10, train_count, dtype=np.uint8),
        "test_images": generator.integers(0, 256, (test_count, 28, 28), dtype=np.uint8),
        "test_labels": generator.integers(0, 10, test_count, dtype=np.uint8),
    }
    arrays["train_images"][0] = 0      # the extremes must survive normalisation exactly
    arrays["train_images"][1] = 255
    for key, stem in IDX_STEMS.items():
        write_idx(directory / stem, arrays[key], gzipped=gzipped)
    return arrays


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) -> CIFAR's (N, 3072) rows: red plane, green plane, blue plane."""
    return images.reshape(len(images), 3 * 32 * 32)


def write_pickle(path: Path, content: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(content, handle, protocol=2)  # the real files are Python 2 protocol-2 pickles


def write_cifar10(folder: Path, *, per_batch: int = 2, test_count: int = 3, seed: int = 0) -> dict:
    folder.mkdir(parents=True)
    generator = np.random.default_rng(seed)
    written = {"train_images": [], "train_labels": []}
    for index in range(1, 6):
        images = generator.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [int(label) for label in generator.integers(0, 10, per_batch)]
        write_pickle(folder / f"data_batch_{index}",
                     {b"batch_label": b"training batch", b"labels": labels, b"data": cifar_rows(images),
                      b"filenames": [b"x.png"] * per_batch})
        written["train_images"].append(images)
        written["train_labels"].extend(labels)
    written["test_images"] = generator.integers(0, 256, (test_count, 3, 32, 32), dtype=np.uint8)
    written["test_labels"] = [int(label) for label in generator.integers(0, 10, test_count)]
    write_pickle(folder / "test_batch", {b"labels": written["test_labels"],
                                         b"data": cifar_rows(written["test_images"])})
    names = [name.encode() for name in data.CIFAR10_CLASSES]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    written["train_images"] = np.concatenate(written["train_images"])
    return written


def write_cifar100(folder: Path, *, seed: int = 0) -> dict:
    folder.mkdir(parents=True)
    generator = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", 5), ("test", 3)):
        images = generator.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        fine = [int(label) for label in generator.integers(0, 100, count)]
        coarse = [label // 5 for label in fine]
        write_pickle(folder / split, {b"data": cifar_rows(images), b"fine_labels": fine, b"coarse_labels": coarse,
                                      b"filenames": [b"x.png"] * count, b"batch_label": split.encode()})
        written[split] = (images, fine)
    written["names"] = [f"class_{index:03d}" for index in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": [name.encode() for name in written["names"]],
                                   b"coarse_label_names": [b"c"] * 20})
    return written


# --------------------------------------------------------------------------------------------
# Real Fashion-MNIST
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_fashion_mnist() -> data.Splits:
    return load_dataset("fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION_MNIST.exists(),
                    reason=f"{REAL_FASHION_MNIST} is absent (sudo apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_shapes_labels_and_normalisation(real_fashion_mnist: data.Splits) -> None:
    train_images, train_labels = real_fashion_mnist.train.tensors
    test_images, test_labels = real_fashion_mnist.test.tensors
    assert train_images.shape == (60000, 1, 28, 28) and train_images.dtype == torch.float32
    assert test_images.shape == (10000, 1, 28, 28)
    assert train_labels.shape == (60000,) and train_labels.dtype == torch.int64
    assert test_labels.shape == (10000,)
    # Every class appears, nothing outside 0..9; the set is balanced.
    assert torch.equal(torch.bincount(train_labels, minlength=10), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test_labels, minlength=10), torch.full((10,), 1000))
    assert abs(train_images.mean().item()) < 0.01
    assert abs(train_images.std().item() - 1.0) < 0.01
    info = real_fashion_mnist.info
    assert info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    assert info.source == str(REAL_FASHION_MNIST)


@pytest.mark.skipif(not REAL_FASHION_MNIST.exists(),
                    reason=f"{REAL_FASHION_MNIST} is absent (sudo apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_statistics_match_the_constants() -> None:
    raw = idx.read_idx(REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz", magic=2051)
    # Moments from the histogram of the 256 levels: exact, and much faster than float64 std.
    counts = np.bincount(raw.ravel(), minlength=256)
    levels = np.arange(256) / 255
    mean = (counts * levels).sum() / counts.sum()
    std = np.sqrt((counts * (levels - mean) ** 2).sum() / counts.sum())
    assert mean == pytest.approx(data.FASHION_MNIST_MEAN[0], abs=1e-4)
    assert std == pytest.approx(data.FASHION_MNIST_STD[0], abs=1e-4)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST layout written into tmp_path
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gzipped", [True, False], ids=["gzipped", "plain"])
def test_idx_files_load_with_exact_pixels(tmp_path: Path, gzipped: bool) -> None:
    written = write_fashion_mnist(tmp_path, gzipped=gzipped)
    splits = load_dataset(DatasetName.FASHION_MNIST, data_dir=tmp_path)
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        images, labels = dataset.tensors
        assert images.shape == (len(written[f"{split}_labels"]), 1, 28, 28)
        np.testing.assert_array_equal(to_uint8(images, splits.info)[:, 0], written[f"{split}_images"])
        np.testing.assert_array_equal(labels.numpy(), written[f"{split}_labels"].astype(np.int64))
    # The normalisation is the documented one: 0 -> -mean/std, 255 -> (1 - mean)/std.
    mean, std = data.FASHION_MNIST_MEAN[0], data.FASHION_MNIST_STD[0]
    assert torch.allclose(splits.train.tensors[0][0], torch.tensor(-mean / std))
    assert torch.allclose(splits.train.tensors[0][1], torch.tensor((1 - mean) / std))
    assert splits.info.source == str(tmp_path) and splits.info.pixel_max == 255


def test_idx_gzip_is_recognised_by_content_and_names_accept_aliases(tmp_path: Path) -> None:
    written = write_fashion_mnist(tmp_path, gzipped=True)
    # A gzipped file without the .gz suffix still loads.
    for stem in IDX_STEMS.values():
        (tmp_path / f"{stem}.gz").rename(tmp_path / stem)
    splits = load_dataset("FASHION_MNIST", data_dir=str(tmp_path))
    np.testing.assert_array_equal(to_uint8(splits.test.tensors[0], splits.info)[:, 0], written["test_images"])


@settings(max_examples=25, deadline=None)
@given(array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=6)),
       gzipped=st.booleans())
def test_idx_reader_round_trips_any_image_array(array: np.ndarray, gzipped: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_idx(Path(directory) / "images", array, gzipped=gzipped)
        read = idx.read_idx(path, magic=2051)
    assert read.shape == array.shape
    np.testing.assert_array_equal(read, array)


def test_image_size_resizes_tensor_datasets(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=False)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path, image_size=14)
    assert splits.train.tensors[0].shape == (6, 1, 14, 14)
    assert splits.test.tensors[0].shape == (4, 1, 14, 14)
    assert splits.info.input_shape == (1, 14, 14)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("fashion-mnist", data_dir=tmp_path, image_size=0)


def test_missing_fashion_mnist_directory_says_where_and_how(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as caught:
        load_dataset("fashion-mnist", data_dir=missing)
    assert str(missing) in str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in str(caught.value)


def test_missing_fashion_mnist_file_names_the_exact_paths(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in message
    assert "train-images" not in message  # only what is missing is listed
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzipped", "plain"])
@pytest.mark.parametrize("keep", [2, 10, 100], ids=["inside-magic", "inside-header", "inside-data"])
def test_truncated_idx_file_is_reported(tmp_path: Path, gzipped: bool, keep: int) -> None:
    write_fashion_mnist(tmp_path, gzipped=False)
    plain = tmp_path / "train-images-idx3-ubyte"
    payload = plain.read_bytes()[:keep]
    plain.unlink()
    # Gzipped: a complete gzip stream around a truncated idx file.
    path = write_idx(plain, np.zeros(0, np.uint8), gzipped=gzipped)
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    with pytest.raises(DataError, match="truncated") as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_cut_gzip_stream_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    compressed = path.read_bytes()
    path.write_bytes(compressed[: len(compressed) // 2])  # as an interrupted download leaves it
    with pytest.raises(DataError, match="gzip stream is damaged or truncated") as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_idx_with_trailing_bytes_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="unexpected bytes") as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_wrong_magic_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=True)
    # A labels file where the images should be.
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="magic number 2049, expected 2051") as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(images) in str(caught.value)


def test_mismatched_counts_and_bad_labels_are_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gzipped=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(5, np.uint8), gzipped=False)  # 6 images, 5 labels
    with pytest.raises(DataError, match="5 labels"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    write_idx(labels, np.full(6, 10, np.uint8), gzipped=False)  # label 10 of 0..9
    with pytest.raises(DataError, match="0..9") as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(labels) in str(caught.value)


def test_unknown_dataset_name_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="fashion-mnist, cifar10, cifar100, digits, image-folder"):
        load_dataset("mnist")


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("point_at", ["batches-folder", "parent"])
def test_cifar10_pickles_load_with_exact_pixels(tmp_path: Path, point_at: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(folder)
    splits = load_dataset("cifar10", data_dir=folder if point_at == "batches-folder" else tmp_path)
    assert splits.info.input_shape == (3, 32, 32) and splits.info.num_classes == 10
    assert splits.info.class_names == data.CIFAR10_CLASSES
    assert splits.info.source == str(folder)
    np.testing.assert_array_equal(to_uint8(splits.train.tensors[0], splits.info), written["train_images"])
    np.testing.assert_array_equal(splits.train.tensors[1].numpy(), written["train_labels"])
    np.testing.assert_array_equal(to_uint8(splits.test.tensors[0], splits.info), written["test_images"])
    np.testing.assert_array_equal(splits.test.tensors[1].numpy(), written["test_labels"])
    assert splits.train.tensors[0].dtype == torch.float32 and splits.train.tensors[1].dtype == torch.int64


def test_cifar_rows_are_red_green_blue_planes(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[1024 + 32 * 2 + 5] = 99  # green, row 2, column 5
    write_pickle(folder / "test_batch", {b"labels": [3], b"data": row[None]})
    splits = load_dataset("cifar10", data_dir=folder)
    raw = to_uint8(splits.test.tensors[0], splits.info)[0]
    assert raw[0].min() == raw[0].max() == 10 and raw[2].min() == raw[2].max() == 30
    assert raw[1, 2, 5] == 99 and int((raw[1] == 20).sum()) == 1023


def test_cifar100_pickles_use_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    written = write_cifar100(folder)
    splits = load_dataset("cifar100", data_dir=tmp_path)
    assert splits.info.num_classes == 100 and splits.info.class_names == tuple(written["names"])
    assert splits.info.mean == data.CIFAR100_MEAN
    for dataset, split in ((splits.train, "train"), (splits.test, "test")):
        images, fine = written[split]
        np.testing.assert_array_equal(to_uint8(dataset.tensors[0], splits.info), images)
        np.testing.assert_array_equal(dataset.tensors[1].numpy(), fine)


def test_missing_cifar_says_where_and_gives_the_url(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "test_batch") in message
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_incomplete_or_damaged_cifar_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=folder)
    assert str(folder / "data_batch_4") in str(caught.value)
    write_cifar10(tmp_path / "second" / "cifar-10-batches-py")
    damaged = tmp_path / "second" / "cifar-10-batches-py" / "data_batch_2"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path / "second")
    assert str(damaged) in str(caught.value)


def test_cifar_pickles_from_numpy_1_load(tmp_path: Path) -> None:
    """The published files name numpy.core.multiarray (numpy 1); numpy 2 calls it numpy._core."""
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(folder)
    test_batch = folder / "test_batch"
    content = test_batch.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in content or b"numpy.core.multiarray\n_reconstruct" in content
    test_batch.write_bytes(content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    splits = load_dataset("cifar10", data_dir=folder)
    np.testing.assert_array_equal(to_uint8(splits.test.tensors[0], splits.info), written["test_images"])


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    write_pickle(folder / "test_batch", {b"labels": [0], b"data": _RunsCode()})
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar10", data_dir=folder)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

def write_png(path: Path, pixels: np.ndarray) -> None:
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_loads_rgb_with_sorted_classes(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    generator = np.random.default_rng(0)
    written = {}
    for split, class_name, count in (("train", "zebra", 2), ("train", "ant", 3), ("val", "zebra", 1),
                                     ("val", "ant", 1)):
        for index in range(count):
            pixels = generator.integers(0, 256, (5, 6, 3), dtype=np.uint8)  # H=5, W=6
            write_png(tmp_path / split / class_name / f"{index}.png", pixels)
            written[(split, class_name, index)] = pixels
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored by suffix
    splits = load_dataset("image-folder", data_dir=tmp_path)
    info = splits.info
    assert info.class_names == ("ant", "zebra") and info.num_classes == 2
    assert info.input_shape == (3, 5, 6) and info.source == str(tmp_path)
    images, labels = splits.train.tensors
    assert labels.tolist() == [0, 0, 0, 1, 1]
    expected = np.stack([written[("train", "ant", i)] for i in range(3)]
                        + [written[("train", "zebra", i)] for i in range(2)]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(to_uint8(images, info), expected)
    # The statistics are the training split's own, so the normalised split is centred and scaled.
    assert torch.allclose(images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(images.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    assert splits.test.tensors[1].tolist() == [0, 1]


def test_image_folder_grayscale_mixed_and_resized(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    for split in ("train", "test"):
        write_png(tmp_path / split / "a" / "0.png", gray)
        write_png(tmp_path / split / "b" / "0.png", 255 - gray)
    splits = load_dataset("image-folder", data_dir=tmp_path)
    assert splits.info.input_shape == (1, 4, 4)
    np.testing.assert_array_equal(to_uint8(splits.train.tensors[0], splits.info)[0, 0], gray)
    # One colour image turns the whole set RGB; a grey image becomes three equal channels.
    write_png(tmp_path / "train" / "b" / "1.png", np.zeros((4, 4, 3), np.uint8))
    splits = load_dataset("image-folder", data_dir=tmp_path)
    assert splits.info.input_shape == (3, 4, 4)
    raw = to_uint8(splits.train.tensors[0], splits.info)
    for channel in range(3):
        np.testing.assert_array_equal(raw[0, channel], gray)
    # Different sizes are fine once a size is asked for.
    write_png(tmp_path / "test" / "a" / "1.png", np.zeros((7, 9), np.uint8))
    splits = load_dataset("image-folder", data_dir=tmp_path, image_size=8)
    assert splits.info.input_shape == (3, 8, 8)
    assert splits.test.tensors[0].shape == (3, 3, 8, 8)


def test_image_folder_with_inconsistent_sizes_names_the_files(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "train" / "b" / "0.png", np.zeros((4, 5), np.uint8))
    write_png(tmp_path / "test" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="image_size") as caught:
        load_dataset("image-folder", data_dir=tmp_path)
    assert str(tmp_path / "train" / "b" / "0.png") in str(caught.value)
    assert str(tmp_path / "train" / "a" / "0.png") in str(caught.value)


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("image-folder")
    with pytest.raises(DataError) as caught:
        load_dataset("image-folder", data_dir=tmp_path)
    assert str(tmp_path / "train") in str(caught.value) and str(tmp_path / "val") in str(caught.value)
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "test" / "stranger" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="stranger"):
        load_dataset("image-folder", data_dir=tmp_path)
    (tmp_path / "test" / "stranger" / "0.png").unlink()
    (tmp_path / "test" / "stranger").rmdir()
    write_png(tmp_path / "test" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        load_dataset("image-folder", data_dir=tmp_path)
    assert str(tmp_path / "train" / "a" / "1.png") in str(caught.value)


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------

def test_digits_split_is_stratified_deterministic_and_matches_its_statistics() -> None:
    pytest.importorskip("sklearn")
    splits = load_dataset("digits")
    again = load_dataset(DatasetName.DIGITS)
    train_images, train_labels = splits.train.tensors
    test_images, test_labels = splits.test.tensors
    assert train_images.shape == (1438, 1, 8, 8) and test_images.shape == (359, 1, 8, 8)
    assert splits.info.input_shape == (1, 8, 8) and splits.info.pixel_max == 16
    assert splits.info.source == "sklearn"
    assert torch.equal(train_images, again.train.tensors[0]) and torch.equal(test_labels, again.test.tensors[1])
    # Each class keeps (to rounding) a fifth of its examples in the test split.
    totals = torch.bincount(train_labels, minlength=10) + torch.bincount(test_labels, minlength=10)
    assert torch.all((torch.bincount(test_labels, minlength=10) - 0.2 * totals).abs() <= 0.5)
    raw = to_uint8(train_images, splits.info)
    assert raw.max() == 16 and raw.min() == 0
    assert raw.mean() / 16 == pytest.approx(data.DIGITS_MEAN[0], abs=1e-3)
    assert (raw / 16).std() == pytest.approx(data.DIGITS_STD[0], abs=1e-3)
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("digits", data_dir="/tmp")


# --------------------------------------------------------------------------------------------
# calibration_split, make_loader
# --------------------------------------------------------------------------------------------

def numbered_dataset(length: int) -> torch.utils.data.TensorDataset:
    """Row i holds the value i, so rows can be traced through splits and loaders."""
    return torch.utils.data.TensorDataset(torch.arange(length, dtype=torch.float32).view(-1, 1, 1, 1),
                                          torch.arange(length))


@settings(max_examples=40, deadline=None)
@given(data_strategy=st.data(), length=st.integers(2, 200), seed=st.integers(0, 2**31 - 1))
def test_calibration_split_is_a_seeded_partition(data_strategy, length: int, seed: int) -> None:
    size = data_strategy.draw(st.integers(1, length - 1))
    rest, calibration = calibration_split(numbered_dataset(length), size=size, seed=seed)
    assert len(calibration) == size and len(rest) == length - size
    rest_rows, calibration_rows = rest.tensors[1].tolist(), calibration.tensors[1].tolist()
    assert sorted(rest_rows + calibration_rows) == list(range(length))
    assert rest_rows == sorted(rest_rows) and calibration_rows == sorted(calibration_rows)
    # Images travel with their labels.
    assert calibration.tensors[0].flatten().long().tolist() == calibration_rows
    _, repeated = calibration_split(numbered_dataset(length), size=size, seed=seed)
    assert repeated.tensors[1].tolist() == calibration_rows


def test_calibration_split_depends_on_the_seed_and_rejects_bad_sizes() -> None:
    dataset = numbered_dataset(100)
    first = calibration_split(dataset, size=10, seed=0)[1].tensors[1]
    second = calibration_split(dataset, size=10, seed=1)[1].tensors[1]
    assert not torch.equal(first, second)
    for size in (0, -1, 100, 101):
        with pytest.raises(ValueError, match="between 1 and 99"):
            calibration_split(dataset, size=size)


def test_make_loader_is_seeded_and_complete() -> None:
    dataset = numbered_dataset(10)

    def order(loader) -> list[int]:
        return [int(label) for _, labels in loader for label in labels]

    assert order(make_loader(dataset, batch_size=3, shuffle=False)) == list(range(10))
    shuffled = order(make_loader(dataset, batch_size=3, shuffle=True, seed=5))
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert order(make_loader(dataset, batch_size=3, shuffle=True, seed=5)) == shuffled
    dropped = make_loader(dataset, batch_size=3, shuffle=False, drop_last=True)
    assert [len(labels) for _, labels in dropped] == [3, 3, 3]
    assert make_loader(dataset, batch_size=3, shuffle=False).num_workers == 0


def test_make_loader_distributed_splits_among_ranks() -> None:
    dataset = numbered_dataset(10)
    loaders = [make_loader(dataset, batch_size=2, shuffle=True, seed=3, distributed=True, num_replicas=2, rank=rank)
               for rank in (0, 1)]
    assert all(isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler) for loader in loaders)
    shares = [[int(label) for _, labels in loader for label in labels] for loader in loaders]
    assert len(shares[0]) == len(shares[1]) == 5
    assert sorted(shares[0] + shares[1]) == list(range(10))
    loaders[0].sampler.set_epoch(1)
    assert [int(label) for _, labels in loaders[0] for label in labels] != shares[0]
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="process group"):
            make_loader(dataset, batch_size=2, shuffle=True, distributed=True)


# --------------------------------------------------------------------------------------------
# augment
# --------------------------------------------------------------------------------------------

def replicate_shift(image: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """Reference: shift (C, H, W) by (down, right) pixels, filling in from the nearest border."""
    height, width = image.shape[-2:]
    rows = (torch.arange(height) - down).clamp(0, height - 1)
    columns = (torch.arange(width) - right).clamp(0, width - 1)
    return image[:, rows][:, :, columns]


batches = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 6),
                                           st.integers(1, 6)),
                     elements=st.floats(-3, 3, width=32))


@settings(max_examples=40, deadline=None)
@given(array=batches, seed=st.integers(0, 2**31 - 1), padding=st.integers(0, 3), flip=st.booleans())
def test_augment_is_a_deterministic_pure_shift_and_flip(array: np.ndarray, seed: int, padding: int,
                                                        flip: bool) -> None:
    images = torch.from_numpy(array)
    before = images.clone()
    first = augment(images, generator=torch.Generator().manual_seed(seed), padding=padding, flip=flip)
    second = augment(images, generator=torch.Generator().manual_seed(seed), padding=padding, flip=flip)
    assert torch.equal(images, before)  # the input is untouched
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, second)
    # Each output is its input, possibly mirrored, shifted by at most `padding` each way.
    shifts = range(-padding, padding + 1)
    for output, image in zip(first, images):
        candidates = [image, image.flip(-1)] if flip else [image]
        assert any(torch.equal(output, replicate_shift(candidate, down, right))
                   for candidate in candidates for down in shifts for right in shifts)


@settings(max_examples=20, deadline=None)
@given(array=batches, seed=st.integers(0, 2**31 - 1))
def test_augment_without_padding_or_flip_is_identity(array: np.ndarray, seed: int) -> None:
    images = torch.from_numpy(array)
    result = augment(images, generator=torch.Generator().manual_seed(seed), padding=0, flip=False)
    assert torch.equal(result, images) and result.data_ptr() != images.data_ptr()


def test_augment_varies_per_image_and_with_the_seed() -> None:
    images = torch.arange(64 * 8 * 8, dtype=torch.float32).view(64, 1, 8, 8)
    first = augment(images, generator=torch.Generator().manual_seed(0))
    second = augment(images, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(first, second)
    flipped = sum(bool(torch.equal(output[:, 2:-2, 2:-2], image.flip(-1)[:, 2:-2, 2:-2]) or
                       any(torch.equal(output, replicate_shift(image.flip(-1), down, right))
                           for down in range(-2, 3) for right in range(-2, 3)))
                  for output, image in zip(augment(images, generator=torch.Generator().manual_seed(2), padding=2),
                                           images))
    assert 10 < flipped < 54  # about half of 64 are mirrored
    with pytest.raises(ValueError, match="padding"):
        augment(images, generator=torch.Generator(), padding=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(images[0], generator=torch.Generator())


# --------------------------------------------------------------------------------------------
# save_subset / load_subset
# --------------------------------------------------------------------------------------------

def test_subset_round_trip_normalises_like_load_dataset(tmp_path: Path) -> None:
    written = write_fashion_mnist(tmp_path / "fashion", gzipped=True)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path / "fashion")
    target = tmp_path / "assets" / "subset.npz"
    target.parent.mkdir()
    raw = to_uint8(splits.test.tensors[0][:3], splits.info)
    assert save_subset(target, "fashion-mnist", raw, splits.test.tensors[1][:3].numpy()) == target
    assert sorted(os.listdir(target.parent)) == ["subset.npz"]  # no temporary file left behind
    assert target.stat().st_mode & 0o777 == 0o644  # not the temporary file's private mode
    dataset, info = load_subset(target)
    assert torch.equal(dataset.tensors[0], splits.test.tensors[0][:3])
    assert torch.equal(dataset.tensors[1], splits.test.tensors[1][:3])
    np.testing.assert_array_equal(to_uint8(dataset.tensors[0], info)[:, 0], written["test_images"][:3])
    assert info.name == "fashion-mnist" and info.input_shape == (1, 28, 28)
    assert info.class_names == data.FASHION_MNIST_CLASSES and info.source == str(target)


@settings(max_examples=20, deadline=None)
@given(images=hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.just(3), st.integers(1, 4), st.integers(1, 4))),
       data_strategy=st.data())
def test_subset_round_trip_any_cifar_slice(images: np.ndarray, data_strategy) -> None:
    labels = data_strategy.draw(hnp.arrays(np.int64, images.shape[0], elements=st.integers(0, 9)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "slice.npz"
        save_subset(path, DatasetName.CIFAR10, images, labels)
        dataset, info = load_subset(path)
        assert os.listdir(directory) == ["slice.npz"]
    np.testing.assert_array_equal(to_uint8(dataset.tensors[0], info), images)
    np.testing.assert_array_equal(dataset.tensors[1].numpy(), labels)
    assert info.mean == data.CIFAR10_MEAN and info.num_classes == 10


def test_subset_keeps_given_info_for_image_folders(tmp_path: Path) -> None:
    info = DatasetInfo(name="image-folder", input_shape=(1, 2, 2), num_classes=2, mean=(0.25,), std=(0.5,),
                       class_names=("cat", "dog"), source="/somewhere")
    images = np.array([[[0, 255], [64, 128]]], dtype=np.uint8)
    with pytest.raises(ValueError, match="info="):
        save_subset(tmp_path / "s.npz", "image-folder", images, np.array([1]))
    save_subset(tmp_path / "s.npz", "image-folder", images, np.array([1]), info=info)
    dataset, loaded = load_subset(tmp_path / "s.npz")
    assert loaded.class_names == ("cat", "dog") and loaded.mean == (0.25,) and loaded.std == (0.5,)
    assert torch.allclose(dataset.tensors[0], (torch.tensor(images, dtype=torch.float32)[None] / 255 - 0.25) / 0.5)


def test_failed_subset_write_leaves_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "subset.npz"
    images = np.zeros((2, 28, 28), np.uint8)
    save_subset(target, "fashion-mnist", images, np.array([0, 1]))
    before = target.read_bytes()

    def fail(*arguments, **keywords):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(OSError, match="disk full"):
        save_subset(target, "fashion-mnist", images + 1, np.array([1, 0]))
    assert os.listdir(tmp_path) == ["subset.npz"] and target.read_bytes() == before


def test_subset_argument_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_subset(tmp_path / "s.npz", "fashion-mnist", np.zeros((1, 28, 28), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        save_subset(tmp_path / "s.npz", "fashion-mnist", np.zeros((2, 28, 28), np.uint8), np.array([0]))
    with pytest.raises(ValueError, match="0..9"):
        save_subset(tmp_path / "s.npz", "fashion-mnist", np.zeros((1, 28, 28), np.uint8), np.array([10]))
    with pytest.raises(DataError, match="no such subset file"):
        load_subset(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", values=np.zeros(3))
    with pytest.raises(DataError, match="not a parasnn subset file"):
        load_subset(tmp_path / "other.npz")
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(tmp_path / "garbage.npz")):
        load_subset(tmp_path / "garbage.npz")


# --------------------------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------------------------

def test_optional_dependencies_are_imported_lazily() -> None:
    import ast

    # data.py re-exports the modules of the package (one reader per format): check them all.
    trees = [ast.parse(path.read_text()) for path in Path(data.__file__).parent.glob("*.py")]
    top_level = set()
    for node in (node for tree in trees for node in tree.body):  # module level only; in functions = lazy
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert "torch" in top_level and "numpy" in top_level
    assert not top_level & {"sklearn", "PIL", "torchvision"}


def test_missing_optional_dependencies_say_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install 'parasnn\[digits\]'"):
        load_dataset("digits")
    monkeypatch.setitem(sys.modules, "PIL", None)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"pip install 'parasnn\[vision\]'"):
        load_dataset("image-folder", data_dir=tmp_path)


def test_recorded_split_reproduces_the_training_split_and_falls_back_to_a_seeded_slice():
    train = torch.utils.data.TensorDataset(torch.arange(100).float().unsqueeze(1), torch.arange(100))
    rest, held = recorded_split(train, config={"holdout": 10, "seed": 3})
    expected_rest, expected_held = calibration_split(train, size=10, seed=3)
    assert torch.equal(held.tensors[1], expected_held.tensors[1])
    assert torch.equal(rest.tensors[1], expected_rest.tensors[1])
    # Trained on everything (no holdout recorded): a seeded slice of the fallback size.
    _, fallback = recorded_split(train, config={}, fallback_size=7)
    assert len(fallback) == 7 and torch.equal(fallback.tensors[1], calibration_split(train, size=7)[1].tensors[1])
    assert len(first_examples(held, 4)) == 4 and first_examples(held, None) is held
    with pytest.raises(ValueError, match="at least one"):
        first_examples(held, 0)
