"""What a data set is: its name, shape, classes and statistics (:class:`DatasetInfo`), its
training and test splits (:class:`Splits`), where it is read from by default and the error
raised when it cannot be (:class:`DataError`). The readers live one per format: :mod:`.idx`,
:mod:`.cifar`, :mod:`.digits`, :mod:`.folder`."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import TensorDataset

__all__ = ["DatasetName", "DatasetInfo", "Splits", "DataError", "DEFAULT_DIRS", "parse_name", "check_labels",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_CLASSES", "DIGITS_MEAN", "DIGITS_STD", "DIGITS_CLASSES",
           "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION"]


class DatasetName(str, enum.Enum):
    """The data sets :func:`load_dataset` knows; the value is the name used on the command line."""

    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    DIGITS = "digits"
    IMAGE_FOLDER = "image-folder"

    def __str__(self) -> str:  # so f-strings and argparse show "fashion-mnist", not the member
        return self.value


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Attributes:
        name: the :class:`DatasetName` value, e.g. ``"fashion-mnist"``.
        input_shape: ``(C, H, W)`` of one image as the model sees it (after any resizing).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        mean, std: per-channel normalisation, one entry per channel, on the ``[0, 1]`` scale.
        class_names: ``num_classes`` human-readable names, indexed by label.
        source: the directory (or file) the data came from, or ``"sklearn"`` for digits.
        pixel_max: the largest raw pixel value; raw pixels are divided by it before
            normalisation (255 for 8-bit images, 16 for digits).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    source: str
    pixel_max: int = 255


@dataclass
class Splits:
    """A data set's training and test splits, each ``TensorDataset(images, labels)`` with
    images ``float32 (N, C, H, W)`` (normalised with ``info.mean`` / ``info.std``) and
    labels ``int64 (N,)``."""

    train: TensorDataset
    test: TensorDataset
    info: DatasetInfo


class DataError(Exception):
    """A data set could not be found, read or validated. The message names the file or
    directory looked at and says how to obtain or repair the data."""


DEFAULT_DIRS: dict[DatasetName, Path] = {
    DatasetName.FASHION_MNIST: Path("/usr/share/datasets/fashion-mnist"),
    DatasetName.CIFAR10: Path.home() / ".cache" / "parasnn" / "cifar-10-batches-py",
    DatasetName.CIFAR100: Path.home() / ".cache" / "parasnn" / "cifar-100-python",
}
"""Where :func:`load_dataset` looks when no ``data_dir`` is given. Digits ships with
scikit-learn and an image folder has no default."""

# Training-set statistics on the [0, 1] scale. Fashion-MNIST's are the values used throughout
# the literature (exact: 0.28604 / 0.35302, population std over all 60000·784 pixels).
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)
# Per-channel mean and population std over the 50000 training images (not the often-copied
# (0.2023, 0.1994, 0.2010), which is a mean of per-image stds).
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)
# Digits: statistics of the training split made by DIGITS_SPLIT_SEED (tests check them).
DIGITS_MEAN: tuple[float, ...] = (0.3055,)
DIGITS_STD: tuple[float, ...] = (0.3761,)
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
DIGITS_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))


def parse_name(name: DatasetName | str) -> DatasetName:
    if isinstance(name, DatasetName):
        return name
    text = str(name).strip().lower().replace("_", "-")
    try:
        return DatasetName(text)
    except ValueError:
        known = ", ".join(member.value for member in DatasetName)
        raise DataError(f"unknown data set {name!r}; choose one of: {known}") from None



def check_labels(labels: np.ndarray, *, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels range over {int(labels.min())}..{int(labels.max())}, expected "
            f"0..{num_classes - 1}; the file is damaged or belongs to another data set"
        )
