"""Image folders: ``data_dir/train/<class>/<image>`` and ``data_dir/test/<class>/<image>`` (or
``val/`` instead of ``test/``), read with Pillow (``pip install 'parasnn[vision]'``). Classes are
the sub-directory names of ``train/``, sorted; mean and std come from the training split. Files
are read class by class, so the splits are stored class by class: draw samples with
:func:`parasnn.datasets.splits.sample_subset`, never the first rows."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .info import DataError, DatasetInfo, DatasetName, Splits
from .transforms import make_splits

__all__ = ["load_image_folder", "IMAGE_SUFFIXES", "GRAYSCALE_MODES", "import_pil"]

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


def load_image_folder(root: Path, *, image_size: int | None) -> Splits:
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
    # Population statistics of the training split, in float64 so large folders do not lose digits.
    scaled_mean = train_raw.mean(axis=(0, 2, 3), dtype=np.float64) / 255.0
    scaled_std = train_raw.std(axis=(0, 2, 3), dtype=np.float64) / 255.0
    # A constant channel has std 0; dividing by 1 instead keeps the images finite.
    scaled_std = np.where(scaled_std > 1e-8, scaled_std, 1.0)
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
