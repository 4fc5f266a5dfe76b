"""Shipping a slice of a data set: :func:`save_subset` writes a small raw slice as a compressed
``.npz`` with everything needed to normalise it, :func:`load_subset` reads it back."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..io.files import atomic_path
from .info import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD,
                   FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataError, DatasetInfo, DatasetName,
                   check_labels, parse_name)
from .transforms import normalize

__all__ = ["save_subset", "load_subset"]

_SUBSET_FORMAT = 1


def _builtin_info(name: DatasetName, shape: tuple[int, int, int]) -> DatasetInfo:
    statistics = {
        DatasetName.FASHION_MNIST: (FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES, 255),
        DatasetName.CIFAR10: (CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES, 255),
        DatasetName.DIGITS: (DIGITS_MEAN, DIGITS_STD, DIGITS_CLASSES, 16),
    }
    if name not in statistics:
        raise ValueError(f"save_subset needs info= for {name.value} (its class names or statistics are "
                         "not built in); pass the DatasetInfo that load_dataset returned")
    mean, std, class_names, pixel_max = statistics[name]
    return DatasetInfo(name=name.value, input_shape=shape, num_classes=len(class_names), mean=mean, std=std,
                       class_names=class_names, source="", pixel_max=pixel_max)


def save_subset(
    path: str | Path,
    dataset_name: DatasetName | str,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    info: DatasetInfo | None = None,
) -> Path:
    """Store a small raw slice of a data set as a compressed ``.npz``, e.g. a few hundred
    Fashion-MNIST test images to ship inside the package.

    Args:
        path: the file to write, exactly as given (no suffix is added).
        dataset_name: the data set the slice comes from.
        images_uint8: raw pixels, ``uint8 (N, C, H, W)`` or ``(N, H, W)`` for one channel
            (use :func:`to_uint8` to get them from normalised tensors).
        labels: integer labels ``(N,)``.
        info: the data set's :class:`DatasetInfo` (from :func:`load_dataset`); optional for
            fashion-mnist, cifar10 and digits, whose statistics and class names are built in.

    The file holds the pixels, labels and everything :func:`load_subset` needs to normalise
    them (name, mean, std, class names, pixel_max). It is written to a temporary file in the
    same directory and moved into place with ``os.replace``, so readers never see a partial
    file. Returns the path written.
    """
    name = parse_name(dataset_name)
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"images_uint8 must be uint8 raw pixels, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images_uint8 must be (N, C, H, W) or (N, H, W) with N >= 1, got {images.shape}")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {images.shape[0]} integers, got shape {labels.shape} of {labels.dtype}")
    shape = tuple(int(size) for size in images.shape[1:])
    if info is None:
        info = _builtin_info(name, shape)
    elif info.name != name.value:
        raise ValueError(f"info describes {info.name!r} but dataset_name is {name.value!r}")
    if len(info.mean) != shape[0] or len(info.std) != shape[0]:
        raise ValueError(f"images have {shape[0]} channels but the statistics have {len(info.mean)}")
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise ValueError(f"labels must lie in 0..{info.num_classes - 1}")
    if int(images.max()) > info.pixel_max:
        raise ValueError(f"pixel values exceed {name.value}'s maximum {info.pixel_max}")

    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        # Writing to the open file (not a name) stops numpy from appending ".npz".
        np.savez_compressed(
            stream, format_version=np.int64(_SUBSET_FORMAT), name=np.str_(name.value), images=images,
            labels=labels.astype(np.int64), mean=np.asarray(info.mean, dtype=np.float64),
            std=np.asarray(info.std, dtype=np.float64), class_names=np.asarray(info.class_names, dtype=np.str_),
            pixel_max=np.int64(info.pixel_max),
        )
    return path


def load_subset(path: str | Path) -> tuple[TensorDataset, DatasetInfo]:
    """Read a file written by :func:`save_subset`.

    Returns:
        ``(TensorDataset(images float32 (N, C, H, W) normalised like load_dataset, labels
        int64 (N,)), DatasetInfo)`` with ``info.source`` the file's path.
    """
    path = Path(path)
    required = ("format_version", "name", "images", "labels", "mean", "std", "class_names", "pixel_max")
    try:
        with np.load(path, allow_pickle=False) as archive:  # no pickles: loading runs no code
            missing = [key for key in required if key not in archive.files]
            if missing:
                raise DataError(f"{path}: not a parasnn subset file (missing {missing}); write it with save_subset")
            content = {key: archive[key] for key in required}
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such subset file") from error
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read this subset file ({error}); write it again with save_subset") from error
    if int(content["format_version"]) != _SUBSET_FORMAT:
        raise DataError(f"{path}: subset format {int(content['format_version'])}, this parasnn reads {_SUBSET_FORMAT}")
    images = content["images"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"{path}: images are {images.dtype} {images.shape}, expected uint8 (N, C, H, W)")
    info = DatasetInfo(
        name=str(content["name"]), input_shape=tuple(int(size) for size in images.shape[1:]),
        num_classes=len(content["class_names"]), mean=tuple(float(value) for value in content["mean"]),
        std=tuple(float(value) for value in content["std"]),
        class_names=tuple(str(value) for value in content["class_names"]), source=str(path),
        pixel_max=int(content["pixel_max"]),
    )
    labels = content["labels"].astype(np.int64)
    check_labels(labels, num_classes=info.num_classes, where=str(path))
    return TensorDataset(normalize(images, info), torch.from_numpy(labels)), info
