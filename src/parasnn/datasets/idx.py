"""Fashion-MNIST: the four idx files of Zalando's Fashion-MNIST, gzipped or not, directly in
``data_dir``::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

Default directory: ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``).
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .info import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataError, DatasetInfo, DatasetName,
                   Splits, check_labels)
from .transforms import make_splits

__all__ = ["read_idx", "load_fashion_mnist"]

_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, H, W)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)

_FASHION_MNIST_HELP = (
    "To get it: `sudo apt-get install dataset-fashion-mnist` (installs the files into "
    "/usr/share/datasets/fashion-mnist), or download the four files from "
    "https://github.com/zalandoresearch/fashion-mnist into a directory and pass that "
    "directory as data_dir (--data-dir)."
)


def _read_maybe_gzipped(path: Path) -> bytes:
    """The bytes of ``path``, decompressed if it is gzipped (judged by content, not name)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: the gzip stream is damaged or truncated ({error}); download the file again"
        ) from error


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse an idx file (gzipped or not) into a ``uint8`` array with the header's dimensions.

    idx layout: a big-endian 32-bit magic number ``0x0000 TT DD`` (``TT = 0x08`` unsigned
    bytes, ``DD`` the number of dimensions), ``DD`` big-endian 32-bit sizes, then the data.
    """
    data = _read_maybe_gzipped(path)
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no header); download it again")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: not an idx {kind} file (magic number {found}, expected {magic}); "
            "the file is damaged or is not the one its name says"
        )
    dimensions = magic & 0xFF
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise DataError(f"{path}: truncated idx header ({len(data)} of {header_size} bytes); download it again")
    shape = tuple(int.from_bytes(data[4 + 4 * axis: 8 + 4 * axis], "big") for axis in range(dimensions))
    expected = math.prod(shape)
    present = len(data) - header_size
    if present < expected:
        raise DataError(
            f"{path}: truncated idx file: header promises {shape} = {expected} bytes of data, "
            f"found {present}; download it again"
        )
    if present > expected:
        raise DataError(
            f"{path}: {present - expected} unexpected bytes after the {shape} data; the file is damaged"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header_size).reshape(shape)


def _find_fashion_mnist_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise DataError(
            f"Fashion-MNIST not found: directory {directory} does not exist. {_FASHION_MNIST_HELP}"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in _FASHION_MNIST_FILES.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        existing = [candidate for candidate in candidates if candidate.is_file()]
        if existing:
            found[key] = existing[0]
        else:
            missing.append(" or ".join(str(candidate) for candidate in candidates))
    if missing:
        raise DataError(
            "Fashion-MNIST not found: missing " + "; ".join(missing) + f". {_FASHION_MNIST_HELP}"
        )
    return found


def load_fashion_mnist(directory: Path, *, image_size: int | None) -> Splits:
    files = _find_fashion_mnist_files(directory)
    arrays = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"], magic=_IDX_IMAGES_MAGIC)
        labels = read_idx(files[f"{split}_labels"], magic=_IDX_LABELS_MAGIC).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'{split}_images']} holds {images.shape[0]} images but "
                f"{files[f'{split}_labels']} holds {labels.shape[0]} labels; one of them is from another copy"
            )
        check_labels(labels, num_classes=len(FASHION_MNIST_CLASSES), where=str(files[f"{split}_labels"]))
        arrays[split] = (images[:, None], labels)  # (N, H, W) -> (N, 1, H, W)
    if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
        raise DataError(
            f"{files['train_images']} and {files['test_images']} hold images of different sizes "
            f"({arrays['train'][0].shape[2:]} and {arrays['test'][0].shape[2:]})"
        )
    channels, height, width = arrays["train"][0].shape[1:]
    info = DatasetInfo(
        name=DatasetName.FASHION_MNIST.value, input_shape=(channels, height, width),
        num_classes=len(FASHION_MNIST_CLASSES), mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
        class_names=FASHION_MNIST_CLASSES, source=str(directory),
    )
    return make_splits(train_raw=arrays["train"][0], train_labels=arrays["train"][1],
                        test_raw=arrays["test"][0], test_labels=arrays["test"][1],
                        info=info, image_size=image_size)
