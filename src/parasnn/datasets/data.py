"""The public names of :mod:`parasnn.datasets` under their parasnn 0.1 module path
(``from parasnn.datasets.data import load_dataset`` keeps working). Each lives in its own
module now: :mod:`.info`, :mod:`.load`, one reader per format (:mod:`.idx`, :mod:`.cifar`,
:mod:`.digits`, :mod:`.folder`), :mod:`.transforms`, :mod:`.splits`, :mod:`.subset`."""
from __future__ import annotations

from .info import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DEFAULT_DIRS,
                   DIGITS_MEAN, DIGITS_SPLIT_SEED, DIGITS_STD, DIGITS_TEST_FRACTION, FASHION_MNIST_CLASSES,
                   FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataError, DatasetInfo, DatasetName, Splits)
from .load import load_dataset
from .splits import calibration_split, first_examples, make_loader, recorded_split, sample_subset
from .subset import load_subset, save_subset
from .transforms import augment, denormalize, normalize, to_uint8

__all__ = [
    "DatasetName", "DatasetInfo", "Splits", "DataError", "DEFAULT_DIRS", "load_dataset",
    "calibration_split", "recorded_split", "first_examples", "sample_subset", "make_loader", "augment",
    "save_subset", "load_subset", "normalize", "denormalize", "to_uint8",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_CLASSES",
    "DIGITS_MEAN", "DIGITS_STD", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION",
]
