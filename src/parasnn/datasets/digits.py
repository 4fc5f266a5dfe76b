"""scikit-learn's bundled 8×8 handwritten digits (``pip install 'parasnn[digits]'``): 1797
images with 17 grey levels (0..16, so ``pixel_max`` is 16), split 80/20 stratified by class
with a fixed seed; no ``data_dir``."""
from __future__ import annotations

import numpy as np

from .info import (DIGITS_CLASSES, DIGITS_MEAN, DIGITS_SPLIT_SEED, DIGITS_STD, DIGITS_TEST_FRACTION, DataError,
                   DatasetInfo, DatasetName, Splits)
from .transforms import make_splits

__all__ = ["load_digits"]


def _stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``, each sorted: per class, a seeded random ``test_fraction``
    (rounded) goes to test. Implemented with numpy alone so it is the same with any sklearn."""
    generator = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(test_fraction * len(members)))
        test_parts.append(generator.permutation(members)[:count])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(labels)), test)  # sorted
    return train, test


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(uint8 (N, 1, 8, 8) in 0..16, int64 labels)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError(
            "the digits data set comes with scikit-learn, which is not installed: "
            "pip install 'parasnn[digits]'"
        ) from error
    bunch = load_digits()
    images = np.asarray(bunch.images).round().astype(np.uint8)[:, None]  # values are whole 0..16
    return images, np.asarray(bunch.target, dtype=np.int64)


def load_digits(*, image_size: int | None) -> Splits:
    images, labels = _digits_raw()
    train, test = _stratified_split(labels, test_fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED)
    info = DatasetInfo(
        name=DatasetName.DIGITS.value, input_shape=(1, 8, 8), num_classes=10, mean=DIGITS_MEAN,
        std=DIGITS_STD, class_names=DIGITS_CLASSES, source="sklearn", pixel_max=16,
    )
    return make_splits(train_raw=images[train], train_labels=labels[train], test_raw=images[test],
                        test_labels=labels[test], info=info, image_size=image_size)
