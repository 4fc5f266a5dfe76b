"""Image folders: ``data_dir/train/<class>/<image>`` and ``data_dir/test/<class>/<image>`` (or
``val/`` instead of ``test/``), read with Pillow (``pip install 'parasnn[vision]'``). Classes are
the sub-directory names of ``train/``, sorted; mean and std come from the training split. Files
are read class by class, so the splits are stored class by class: draw samples with
:func:`parasnn.datasets.splits.sample_subset`, never the first rows.

Two readers, the same tensors (``tests/test_streaming.py``): **streamed**
(:mod:`parasnn.datasets.streaming`: an image is decoded when it is used, memory independent of
the folder's size) and **in memory** (every image decoded once, up front). The rule
(:class:`ImageStorage` ``AUTO``, the default): in memory when the decoded float32 images of
both splits would take at most :func:`in_memory_limit` bytes — 1 GiB, or a quarter of the
memory available now if that is less; ``$PARASNN_IN_MEMORY_LIMIT`` (bytes) overrides — and
streamed otherwise. A small folder is cheaper in memory (decoded once, no worker processes, no
decoding on every pass: calibration reads its data 7 times); an ImageNet-size one does not fit
there at all (its 50 000 validation images alone are 30 GB as float32 at 224×224). The estimate
counts 3 channels and the first image's size (or ``image_size``) and reads no pixel."""
from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .info import DataError, DatasetInfo, DatasetName, Splits
from .transforms import make_splits

__all__ = ["load_image_folder", "IMAGE_SUFFIXES", "GRAYSCALE_MODES", "import_pil", "ImageStorage",
           "in_memory_limit", "IN_MEMORY_LIMIT_VARIABLE", "DEFAULT_IN_MEMORY_LIMIT", "choose_storage"]


class ImageStorage(str, enum.Enum):
    """Where an image folder's decoded images live: chosen by size (``auto``), all in memory,
    or streamed from disk."""

    AUTO = "auto"
    MEMORY = "memory"
    STREAM = "stream"


IN_MEMORY_LIMIT_VARIABLE = "PARASNN_IN_MEMORY_LIMIT"
DEFAULT_IN_MEMORY_LIMIT = 2 ** 30


def in_memory_limit() -> int:
    """The most bytes of decoded images :class:`ImageStorage` ``AUTO`` keeps in memory:
    ``$PARASNN_IN_MEMORY_LIMIT`` when set, else the smaller of 1 GiB and a quarter of the
    memory available now."""
    text = os.environ.get(IN_MEMORY_LIMIT_VARIABLE)
    if text is not None:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{IN_MEMORY_LIMIT_VARIABLE}={text!r}: expected a number of bytes >= 0")
        return value
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform: the fixed limit alone
        return DEFAULT_IN_MEMORY_LIMIT
    return min(DEFAULT_IN_MEMORY_LIMIT, available // 4)


def choose_storage(storage: ImageStorage | str, *, images: int, height: int, width: int) -> ImageStorage:
    """``MEMORY`` or ``STREAM`` for a folder of ``images`` images of ``height × width``
    (the module docstring's rule when ``storage`` is ``AUTO``)."""
    storage = ImageStorage(storage)
    if storage is not ImageStorage.AUTO:
        return storage
    decoded = images * 3 * height * width * 4  # float32, at most 3 channels
    return ImageStorage.MEMORY if decoded <= in_memory_limit() else ImageStorage.STREAM

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def import_pil():
    try:
        from PIL import Image
    except ImportError as error:
        raise DataError("reading an image folder needs Pillow, which is not installed: "
                        "pip install 'parasnn[vision]'") from error
    return Image


def _list_images(split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-directories, or the given ones) and ``(file, label)`` pairs,
    files sorted by name. Only files with a known image suffix count; hidden entries are skipped."""
    found = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{split_dir}: classes {unknown} do not exist in the training split; every test class needs a "
                "directory of the same name under train/"
            )
    files: list[tuple[Path, int]] = []
    for label, class_name in enumerate(classes):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            continue
        files.extend(
            (entry, label) for entry in sorted(class_dir.iterdir())
            if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES
        )
    return list(classes), files


def load_image_folder(root: Path, *, image_size: int | None, storage: ImageStorage | str = ImageStorage.AUTO
                      ) -> Splits:
    """The folder at ``root`` as :class:`Splits`: ``TensorDataset`` s in memory, or
    :class:`~parasnn.datasets.streaming.ImageFolderStream` s (``storage``, module docstring)."""
    from .streaming import list_image_files, stream_image_folder
    storage = ImageStorage(storage)
    if storage is ImageStorage.AUTO:
        storage = _auto_storage(root, image_size=image_size, listed=list_image_files)
    if storage is ImageStorage.STREAM:
        streamed = stream_image_folder(root, image_size=image_size)
        return Splits(train=streamed.train, test=streamed.test, info=streamed.info)
    return _load_in_memory(root, image_size=image_size)


def _auto_storage(root: Path, *, image_size: int | None, listed) -> ImageStorage:
    """The storage the size rule picks; the in-memory reader where the folder cannot be
    sized (it then reports what is wrong with it)."""
    train_dir = root / "train"
    test_dir = next((d for d in (root / "test", root / "val") if d.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        return ImageStorage.MEMORY
    classes, train_paths, _ = listed(train_dir, None)
    try:
        _, test_paths, _ = listed(test_dir, classes)
    except DataError:
        return ImageStorage.MEMORY
    if not len(train_paths):
        return ImageStorage.MEMORY
    if image_size is not None:
        height = width = image_size
    else:
        try:
            with import_pil().open(train_dir / train_paths[0].decode()) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError):
            return ImageStorage.MEMORY
    return choose_storage(ImageStorage.AUTO, images=len(train_paths) + len(test_paths), height=height, width=width)


def _load_in_memory(root: Path, *, image_size: int | None) -> Splits:
    train_dir = root / "train"
    test_dirs = [root / "test", root / "val"]
    test_dir = next((candidate for candidate in test_dirs if candidate.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"image folder not found: need {train_dir} and {test_dirs[0]} (or {test_dirs[1]}), each holding one "
            "sub-directory of images per class; pass the directory above them as data_dir (--data-dir)"
        )
    Image = import_pil()
    classes, train_files = _list_images(train_dir, None)
    if not classes:
        raise DataError(f"{train_dir}: no class sub-directories; expected {train_dir}/<class>/<image>")
    _, test_files = _list_images(test_dir, classes)
    counts = np.bincount([label for _, label in train_files], minlength=len(classes))
    empty = [classes[label] for label in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{train_dir}: no images for classes {empty} (suffixes read: {sorted(IMAGE_SUFFIXES)})")
    if not test_files:
        raise DataError(f"{test_dir}: no images; expected {test_dir}/<class>/<image>")

    target: tuple[int, int] | None = (image_size, image_size) if image_size is not None else None
    first: Path | None = None
    loaded: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    all_grayscale = True
    for split, files in (("train", train_files), ("test", test_files)):
        for path, _ in files:
            try:
                with Image.open(path) as image:
                    grayscale = image.mode in GRAYSCALE_MODES
                    if target is None:
                        target, first = image.size, path
                    elif image_size is None and image.size != target:
                        raise DataError(
                            f"{path} is {image.size[0]}×{image.size[1]} pixels but {first} is "
                            f"{target[0]}×{target[1]}; all images must have one size, or pass image_size "
                            "(--image-size) to resize them"
                        )
                    image = image.convert("L" if grayscale else "RGB")
                    if image.size != target:
                        image = image.resize(target, Image.Resampling.BILINEAR)
                    pixels = np.asarray(image, dtype=np.uint8)
            except DataError:
                raise
            except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for bad files
                raise DataError(f"{path}: cannot read this image ({error})") from error
            all_grayscale &= grayscale
            loaded[split].append(pixels)

    def stack(images: list[np.ndarray]) -> np.ndarray:
        if all_grayscale:
            return np.stack(images)[:, None]  # (N, 1, H, W)
        # Mixed sets become RGB; a grey image turned RGB repeats its one channel, as PIL does.
        return np.stack([np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
                         for pixels in images]).transpose(0, 3, 1, 2)

    train_raw, test_raw = stack(loaded["train"]), stack(loaded["test"])
    # Population statistics of the training split from exact integer sums: the numbers the
    # streamed reader computes, so both give the same tensors.
    from .streaming import exact_statistics
    total = squares = 0
    for start in range(0, len(train_raw), 1024):  # int64 copies of 1024 images at a time
        wide = train_raw[start:start + 1024].astype(np.int64)
        total = total + wide.sum(axis=(0, 2, 3))
        squares = squares + (wide * wide).sum(axis=(0, 2, 3))
    scaled_mean, scaled_std = exact_statistics(total.tolist(), squares.tolist(),
                                               train_raw.shape[0] * train_raw.shape[2] * train_raw.shape[3])
    info = DatasetInfo(
        name=DatasetName.IMAGE_FOLDER.value, input_shape=tuple(int(size) for size in train_raw.shape[1:]),
        num_classes=len(classes), mean=tuple(float(value) for value in scaled_mean),
        std=tuple(float(value) for value in scaled_std), class_names=tuple(classes), source=str(root),
    )
    return make_splits(
        train_raw=train_raw, train_labels=np.array([label for _, label in train_files], dtype=np.int64),
        test_raw=test_raw, test_labels=np.array([label for _, label in test_files], dtype=np.int64),
        info=info, image_size=None,  # already resized by PIL
    )
