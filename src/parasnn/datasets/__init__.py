"""Data sets: one reader per format (:mod:`.idx` Fashion-MNIST, :mod:`.cifar`, :mod:`.digits`,
:mod:`.folder` image folders, :mod:`.text` text that ships in packages), what a data set is (:mod:`.info`), normalising and augmenting
(:mod:`.transforms`), splits, samples and loaders (:mod:`.splits`), batches (:mod:`.batches`),
batches loaded when used (:mod:`.lazy`, :class:`LazyBatches`) and shipped slices (:mod:`.subset`). The public names of the image data sets are re-exported here."""
from .batches import inputs_and_labels, inputs_of
from .info import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DEFAULT_DIRS,
                   DIGITS_MEAN, DIGITS_SPLIT_SEED, DIGITS_STD, DIGITS_TEST_FRACTION, FASHION_MNIST_CLASSES,
                   FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataError, DatasetInfo, DatasetName, Splits)
from .lazy import LazyBatches
from .load import checkpoint_dataset, load_dataset
from .splits import (calibration_split, first_examples, held_apart_batches, held_apart_sample, make_loader, recorded_split, sample_subset,
                     training_sample)
from .subset import load_subset, save_subset
from .transforms import augment, denormalize, normalize, to_uint8

__all__ = [
    "DatasetName", "DatasetInfo", "Splits", "DataError", "DEFAULT_DIRS", "load_dataset", "checkpoint_dataset",
    "calibration_split", "recorded_split", "first_examples", "sample_subset", "held_apart_sample", "held_apart_batches",
    "training_sample",
    "make_loader", "augment", "save_subset", "load_subset", "normalize", "denormalize", "to_uint8", "inputs_of",
    "inputs_and_labels", "LazyBatches",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_CLASSES",
    "DIGITS_MEAN", "DIGITS_STD", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION",
]
