"""CIFAR-10 / CIFAR-100: the python-pickle archives ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` extracted; ``data_dir`` is the extracted folder or its parent::

    cifar-10-batches-py/   data_batch_1 … data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta           (fine labels are used)

The pickles are read with an unpickler that allows numpy arrays only (no code runs on load).
"""
from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .info import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DataError, DatasetInfo, DatasetName, Splits,
                   check_labels)
from .transforms import make_splits

__all__ = ["load_cifar"]


@dataclass(frozen=True)
class _CifarLayout:
    label: str                   # for messages
    folder: str                  # name of the extracted folder
    url: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CIFAR_LAYOUTS = {
    DatasetName.CIFAR10: _CifarLayout(
        label="CIFAR-10", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{index}" for index in range(1, 6)), test_file="test_batch",
        meta_file="batches.meta", label_key=b"labels", names_key=b"label_names", num_classes=10,
        mean=CIFAR10_MEAN, std=CIFAR10_STD,
    ),
    DatasetName.CIFAR100: _CifarLayout(
        label="CIFAR-100", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train_files=("train",), test_file="test", meta_file="meta", label_key=b"fine_labels",
        names_key=b"fine_label_names", num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD,
    ),
}

# The only globals a CIFAR pickle needs (numpy arrays, and bytes as pickled by Python 3 at
# protocol 2). Refusing everything else means a doctored pickle cannot run code on load.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            # numpy 2 renamed numpy.core to numpy._core; the old name warns on import.
            module = module.replace("numpy.core", "numpy._core", 1)
        return getattr(importlib.import_module(module), name)


def _read_pickle(path: Path, *, layout: _CifarLayout) -> dict:
    if not path.is_file():
        raise DataError(
            f"{layout.label}: {path} is missing; the extracted {layout.folder} folder is incomplete. "
            f"Download {layout.url} again and extract it."
        )
    try:
        with path.open("rb") as handle:
            content = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            OSError) as error:
        raise DataError(
            f"{path}: cannot read this {layout.label} pickle ({error}); download {layout.url} again and extract it"
        ) from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    return content


def _entry(content: dict, key: bytes, *, path: Path):
    # Real files are Python 2 pickles read with encoding="bytes": keys are bytes. Accept str
    # keys too, for copies re-pickled by Python 3.
    for candidate in (key, key.decode()):
        if candidate in content:
            return content[candidate]
    raise DataError(f"{path}: no {key!r} entry (found {sorted(map(repr, content))}); the file is damaged")


def _read_cifar_batch(path: Path, *, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of one CIFAR pickle.

    ``data`` is ``(N, 3072)``: per image the 1024 red, then green, then blue pixels, each
    plane row-major — so a reshape to ``(N, 3, 32, 32)`` is exact.
    """
    content = _read_pickle(path, layout=layout)
    data = np.asarray(_entry(content, b"data", path=path))
    labels = np.asarray(_entry(content, layout.label_key, path=path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataError(f"{path}: data is {data.dtype}, expected uint8 pixels")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {layout.label_key!r} should be {data.shape[0]} integer labels, found shape {labels.shape} "
            f"of {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    check_labels(labels, num_classes=layout.num_classes, where=str(path))
    return data.reshape(-1, 3, 32, 32), labels


def _find_cifar_dir(directory: Path, *, layout: _CifarLayout) -> Path:
    """``directory`` itself if it holds the batches, else its ``layout.folder`` child."""
    candidates = [directory, directory / layout.folder]
    for candidate in candidates:
        if (candidate / layout.test_file).is_file():
            return candidate
    looked = " and ".join(str(candidate / layout.test_file) for candidate in candidates)
    archive = Path(layout.url).name
    archives = [candidate / archive for candidate in (directory, directory.parent) if (candidate / archive).is_file()]
    hint = (
        f" Found the archive {archives[0]}: extract it with `tar -xzf {archives[0]} -C {archives[0].parent}`."
        if archives else ""
    )
    parent = directory.parent if directory.name == layout.folder else directory
    raise DataError(
        f"{layout.label} not found: looked for {looked}.{hint} To get it: download {layout.url} and "
        f"extract it into {parent} (`tar -xzf {archive} -C {parent}` creates {parent / layout.folder}), "
        "or pass the extracted folder or its parent as data_dir (--data-dir)."
    )


def load_cifar(dataset: DatasetName, directory: Path, *, image_size: int | None) -> Splits:
    layout = _CIFAR_LAYOUTS[dataset]
    folder = _find_cifar_dir(directory, layout=layout)
    meta_path = folder / layout.meta_file
    names = _entry(_read_pickle(meta_path, layout=layout), layout.names_key, path=meta_path)
    class_names = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    if len(class_names) != layout.num_classes:
        raise DataError(f"{meta_path}: {len(class_names)} class names, expected {layout.num_classes}")
    train = [_read_cifar_batch(folder / file, layout=layout) for file in layout.train_files]
    test_raw, test_labels = _read_cifar_batch(folder / layout.test_file, layout=layout)
    info = DatasetInfo(
        name=dataset.value, input_shape=(3, 32, 32), num_classes=layout.num_classes, mean=layout.mean,
        std=layout.std, class_names=class_names, source=str(folder),
    )
    return make_splits(
        train_raw=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_raw=test_raw, test_labels=test_labels, info=info, image_size=image_size,
    )
