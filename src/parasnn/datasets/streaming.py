"""Image folders read from disk as they are used: memory that does not grow with the folder.

The in-memory image-folder reader decodes every image up front and keeps them all, so an
ImageNet-size folder does not fit. :func:`stream_image_folder` reads the same layout
(``root/train/<class>/<image>``, ``root/test/<class>/<image>`` or ``val/``) and returns
datasets that decode one image per ``__getitem__``, in :class:`~torch.utils.data.DataLoader`
worker processes (:func:`stream_loader`). What it keeps per image is its path relative to
the split directory (bytes, in one numpy array, so forked workers share the pages instead of
copying them as reference counts of Python strings change) and its label: about
``len(path) + 8`` bytes per image (≈ 40 bytes for ``class/name.png``; an ImageNet training
set's 1.28 M images: ≈ 60 MB, against ≈ 190 GB decoded) — the only part that grows with the
folder.

Same tensors as the in-memory reader: decoding is the same Pillow code (``convert("L")`` when
every image of the folder is grey, ``"RGB"`` otherwise; ``resize(..., BILINEAR)`` when an
``image_size`` is given), normalisation is :func:`parasnn.datasets.data.normalize` applied to
one image — elementwise, so the same bits as on the whole stack. The per-channel mean is the
same number (an exact integer sum divided by the count); the standard deviation comes from
exact integer moments, where the in-memory reader sums float64 squares, so the two can
differ in the last bits (``tests/test_streaming.py`` checks both).

Cost: one pass over every image's header (mode, size) and, unless ``statistics`` is given,
one decoding pass over the training split for the mean and std (in workers too).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .folder import GRAYSCALE_MODES, IMAGE_SUFFIXES, import_pil
from .info import DataError, DatasetInfo, DatasetName
from .lazy import LazyBatches  # its home was here; re-exported for older imports
from .splits import make_loader
from .transforms import normalize

__all__ = ["IMAGE_SUFFIXES", "GRAYSCALE_MODES", "list_image_files", "ImageFolderStream", "StreamSplits",
           "stream_image_folder", "stream_loader", "channel_statistics", "exact_statistics", "LazyBatches",
           "DEFAULT_WORKERS"]

DEFAULT_WORKERS = 2
"""Decoding processes of a loader over a streamed folder when the caller names none."""



def list_image_files(split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names (sorted sub-directories, or the given ones), then the images' paths
    relative to ``split_dir`` (``bytes``, one numpy array) and their ``int64`` labels; files
    sorted by name within a class, only known image suffixes, no hidden entries (the
    in-memory reader's rules). Only one class's names are held as Python strings at a time."""
    found = sorted(entry.name for entry in os.scandir(split_dir)
                   if entry.is_dir() and not entry.name.startswith("."))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{split_dir}: classes {unknown} do not exist in the training split; every test class "
                            "needs a directory of the same name under train/")
    paths, labels = [], []
    for label, class_name in enumerate(classes):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            continue
        names = sorted(entry.name for entry in os.scandir(class_dir)
                       if entry.is_file() and not entry.name.startswith(".")
                       and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)
        paths.append(np.array([f"{class_name}/{name}".encode() for name in names], dtype=np.bytes_))
        labels.append(np.full(len(names), label, dtype=np.int64))
    if not paths:
        return list(classes), np.array([], dtype=np.bytes_), np.array([], dtype=np.int64)
    return list(classes), np.concatenate(paths), np.concatenate(labels)


class ImageFolderStream(Dataset):
    """Images of one split, decoded on access: ``dataset[i]`` is ``(image, label)`` with
    ``image`` float32 ``(C, H, W)`` normalised with ``info`` (or raw ``uint8`` pixels when
    ``info`` is None) and ``label`` an int.

    Args:
        paths: one file per example, relative to ``root`` when it is given (kept as bytes in
            one numpy array).
        labels: ``int64`` label per example.
        grayscale: decode to one channel (``"L"``) or three (``"RGB"``).
        size: ``(width, height)`` every image is resized to, or None to keep them as they are.
        info: normalisation; None yields raw pixels (what :func:`channel_statistics` reads).
        root: the directory ``paths`` are relative to (None: they are complete).
        workers: decoding processes a loader uses by default (:func:`parasnn.datasets.splits.make_loader`).
        channels: repeat a grey image's one (normalised) channel this many times, e.g. for an
            RGB model (None: as decoded).
    """

    def __init__(self, paths: Sequence[Path | str] | np.ndarray, labels: Sequence[int], *, grayscale: bool,
                 size: tuple[int, int] | None, info: DatasetInfo | None, root: str | Path | None = None,
                 workers: int = DEFAULT_WORKERS, channels: int | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"ImageFolderStream: {len(paths)} paths but {len(labels)} labels")
        self.paths = paths if isinstance(paths, np.ndarray) and paths.dtype.kind == "S" else \
            np.array([str(p).encode() for p in paths], dtype=np.bytes_)
        self.root = None if root is None else str(root)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.grayscale = grayscale
        self.size = size
        self.info = info
        self.loader_workers = workers
        self.channels = channels

    def take(self, rows) -> "ImageFolderStream":
        """The examples at ``rows`` (indices, any integer sequence or tensor), in that order: a
        new stream over the same files, nothing decoded."""
        rows = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows, dtype=np.int64).reshape(-1)
        return ImageFolderStream(self.paths[rows], self.labels[rows], grayscale=self.grayscale, size=self.size,
                                 info=self.info, root=self.root, workers=self.loader_workers, channels=self.channels)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """The file of example ``index``."""
        name = self.paths[index].decode()
        return name if self.root is None else os.path.join(self.root, name)

    def raw(self, index: int) -> np.ndarray:
        """Pixels of example ``index`` as ``uint8 (C, H, W)``."""
        Image = import_pil()
        path = self.path(index)
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
                if self.size is not None and image.size != self.size:
                    image = image.resize(self.size, Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for bad files
            raise DataError(f"{path}: cannot read this image ({error})") from error
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        pixels = self.raw(index)
        if self.info is None:
            return torch.from_numpy(np.array(pixels)), int(self.labels[index])  # a writable copy
        image = normalize(pixels[None], self.info)[0]
        if self.channels is not None and image.shape[0] != self.channels:
            image = image.expand(self.channels, -1, -1).contiguous()
        return image, int(self.labels[index])


@dataclass
class StreamSplits:
    """Training and test splits of a streamed image folder, and their :class:`DatasetInfo`."""

    train: ImageFolderStream
    test: ImageFolderStream
    info: DatasetInfo


def _scan(split_dir: Path, paths: np.ndarray, *, image_size: int | None, first: tuple | None) -> tuple[bool, tuple]:
    """One pass over the headers: are all images grey, and (without ``image_size``) do they
    have one size. ``first`` carries ``(size, path)`` of the first image across splits."""
    Image = import_pil()
    grayscale = True
    for name in paths:
        path = split_dir / name.decode()
        try:
            with Image.open(path) as image:
                grayscale &= image.mode in GRAYSCALE_MODES
                if first is None:
                    first = (image.size, path)
                elif image_size is None and image.size != first[0]:
                    target, where = first
                    raise DataError(f"{path} is {image.size[0]}×{image.size[1]} pixels but {where} is "
                                    f"{target[0]}×{target[1]}; all images must have one size, or pass image_size "
                                    "(--image-size) to resize them")
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as error:
            raise DataError(f"{path}: cannot read this image ({error})") from error
    return grayscale, first


def channel_statistics(dataset: ImageFolderStream, *, workers: int = 2,
                       batch_size: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``dataset``'s raw pixels on
    the ``[0, 1]`` scale, from exact integer sums streamed through ``workers`` processes.
    A constant channel gets std 1 (as in the in-memory reader)."""
    raw = ImageFolderStream(dataset.paths, dataset.labels, grayscale=dataset.grayscale, size=dataset.size, info=None,
                            root=dataset.root)  # the same arrays, no copy
    total = count = squares = None
    loader = DataLoader(raw, batch_size=batch_size, num_workers=workers, shuffle=False)
    for pixels, _ in loader:
        values = pixels.to(torch.int64)
        batch_sum = values.sum(dim=(0, 2, 3)).tolist()
        batch_squares = (values * values).sum(dim=(0, 2, 3)).tolist()
        n = values.shape[0] * values.shape[2] * values.shape[3]
        if total is None:
            total, squares, count = [0] * len(batch_sum), [0] * len(batch_sum), 0
        total = [a + b for a, b in zip(total, batch_sum)]  # Python ints: exact at any size
        squares = [a + b for a, b in zip(squares, batch_squares)]
        count += n
    if total is None:
        raise DataError("channel_statistics: the split is empty")
    return exact_statistics(total, squares, count)


def exact_statistics(total: Sequence[int], squares: Sequence[int], count: int, *, pixel_max: int = 255
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std on the ``[0, 1]`` scale from exact integer sums
    of the pixels (``total``) and of their squares (``squares``) over ``count`` pixels per
    channel: the same numbers however the sums were cut (in memory or streamed, in any
    batches). A constant channel gets std 1 (dividing by it keeps the images finite)."""
    mean = tuple(float(int(s)) / count / pixel_max for s in total)
    std = []
    for s, q in zip(total, squares):
        s, q = int(s), int(q)
        variance = (count * q - s * s) / (count * count)  # exact numerator, one rounding
        value = math.sqrt(variance) / pixel_max
        std.append(value if value > 1e-8 else 1.0)
    return mean, tuple(std)


def stream_image_folder(root: str | Path, *, image_size: int | None = None, workers: int = 2,
                        statistics: tuple[Sequence[float], Sequence[float]] | None = None) -> StreamSplits:
    """The image folder at ``root`` as streamed :class:`StreamSplits` (see the module docstring).

    Args:
        root: the directory holding ``train/`` and ``test/`` (or ``val/``).
        image_size: resize every image to ``image_size × image_size`` (Pillow bilinear).
        workers: DataLoader worker processes for the statistics pass.
        statistics: ``(mean, std)`` per channel on the ``[0, 1]`` scale, to skip that pass
            (e.g. the published ImageNet values).
    """
    root = Path(root).expanduser()
    train_dir = root / "train"
    test_dirs = [root / "test", root / "val"]
    test_dir = next((candidate for candidate in test_dirs if candidate.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"image folder not found: need {train_dir} and {test_dirs[0]} (or {test_dirs[1]}), each "
                        "holding one sub-directory of images per class; pass the directory above them as data_dir "
                        "(--data-dir)")
    classes, train_paths, train_labels = list_image_files(train_dir, None)
    if not classes:
        raise DataError(f"{train_dir}: no class sub-directories; expected {train_dir}/<class>/<image>")
    _, test_paths, test_labels = list_image_files(test_dir, classes)
    counts = np.bincount(train_labels, minlength=len(classes))
    empty = [classes[label] for label in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{train_dir}: no images for classes {empty} (suffixes read: {sorted(IMAGE_SUFFIXES)})")
    if not len(test_paths):
        raise DataError(f"{test_dir}: no images; expected {test_dir}/<class>/<image>")
    train_grey, first = _scan(train_dir, train_paths, image_size=image_size, first=None)
    test_grey, first = _scan(test_dir, test_paths, image_size=image_size, first=first)
    grayscale = train_grey and test_grey
    size = (image_size, image_size) if image_size is not None else first[0]

    def split(directory, paths, labels, info):
        return ImageFolderStream(paths, labels, grayscale=grayscale, size=size if image_size is not None else None,
                                 info=info, root=directory, workers=workers)

    train = split(train_dir, train_paths, train_labels, None)
    mean, std = channel_statistics(train, workers=workers) if statistics is None else statistics
    channels = 1 if grayscale else 3
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"stream_image_folder: statistics need {channels} values per channel, got {mean}, {std}")
    info = DatasetInfo(name=DatasetName.IMAGE_FOLDER.value, input_shape=(channels, size[1], size[0]),
                       num_classes=len(classes), mean=tuple(float(v) for v in mean),
                       std=tuple(float(v) for v in std), class_names=tuple(classes), source=str(root))
    train.info = info
    return StreamSplits(train=train, test=split(test_dir, test_paths, test_labels, info), info=info)


def stream_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 2,
                  drop_last: bool = False, distributed: bool = False, num_replicas: int | None = None,
                  rank: int | None = None) -> DataLoader:
    """A ``DataLoader`` over a streamed dataset with ``workers`` decoding processes (the
    seeding, shuffling and distributed rules of :func:`parasnn.datasets.data.make_loader`)."""
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                       distributed=distributed, num_replicas=num_replicas, rank=rank, workers=workers)
