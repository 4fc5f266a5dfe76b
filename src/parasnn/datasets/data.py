"""Data sets: reading them from disk, normalising, splitting, loading in batches, augmenting.

Every loader returns :class:`Splits` — a training and a test :class:`~torch.utils.data.TensorDataset`
of ``(images, labels)`` plus a :class:`DatasetInfo`. Images are ``float32`` of shape
``(N, C, H, W)``, normalised per channel as ``(raw / pixel_max - mean) / std``; labels are
``int64`` of shape ``(N,)``. All of a data set is held in memory (the supported sets are small).

Supported data sets (:class:`DatasetName`) and the layouts read from disk — no torchvision:

``fashion-mnist``
    The four idx files of Zalando's Fashion-MNIST, gzipped or not, directly in ``data_dir``::

        train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
        t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

    Default directory: ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``). Normalised with the usual training-set statistics
    mean 0.2860, std 0.3530 (:data:`FASHION_MNIST_MEAN`, :data:`FASHION_MNIST_STD`).
``cifar10`` / ``cifar100``
    The python-pickle archives ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
    extracted; ``data_dir`` is the extracted folder or its parent::

        cifar-10-batches-py/   data_batch_1 … data_batch_5, test_batch, batches.meta
        cifar-100-python/      train, test, meta           (fine labels are used)

    Default directories: ``~/.cache/parasnn/cifar-10-batches-py`` and
    ``~/.cache/parasnn/cifar-100-python``. Normalised with the standard per-channel
    training-set statistics (:data:`CIFAR10_MEAN` … :data:`CIFAR100_STD`).
``digits``
    scikit-learn's bundled 8×8 handwritten digits (``pip install 'parasnn[digits]'``):
    1797 images with 17 grey levels (0..16, so ``pixel_max`` is 16), split 80/20 stratified
    by class with a fixed seed; no ``data_dir``.
``image-folder``
    ``data_dir/train/<class>/<image>`` and ``data_dir/test/<class>/<image>`` (or ``val/``
    instead of ``test/``), read with Pillow (``pip install 'parasnn[vision]'``). Classes are
    the sub-directory names of ``train/``, sorted; mean and std come from the training split.

Failures to find, read or validate data raise :class:`DataError`, whose message names the
file or directory involved and says how to get or repair the data.
"""
from __future__ import annotations

import enum
import gzip
import importlib
import math
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ..io.files import atomic_path

__all__ = [
    "DatasetName", "DatasetInfo", "Splits", "DataError", "DEFAULT_DIRS", "load_dataset",
    "calibration_split", "recorded_split", "first_examples", "make_loader", "augment", "save_subset", "load_subset",
    "normalize", "denormalize", "to_uint8",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_CLASSES",
    "DIGITS_MEAN", "DIGITS_STD", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION",
]


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
_DIGITS_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))

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


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

def load_dataset(
    name: DatasetName | str,
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
) -> Splits:
    """Read a data set from disk and return its normalised training and test splits.

    Args:
        name: a :class:`DatasetName` or its value (``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"digits"``, ``"image-folder"``; ``_`` for ``-`` and any case
            are accepted).
        data_dir: where the files are; defaults to :data:`DEFAULT_DIRS`. Required for
            ``image-folder``; not accepted for ``digits`` (it ships with scikit-learn).
        image_size: resize every image to ``image_size × image_size``. Image folders are
            resized image by image with Pillow (bilinear); the other sets are resized as
            tensors (bilinear, antialiased). ``None`` keeps the native size. The
            normalisation statistics are not recomputed after resizing.

    Returns:
        :class:`Splits` with images ``float32 (N, C, H, W)`` and labels ``int64 (N,)``.

    Raises:
        DataError: the data set is unknown, missing, damaged or inconsistent.
    """
    dataset = _parse_name(name)
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if dataset is DatasetName.DIGITS:
        if data_dir is not None:
            raise ValueError("digits ships with scikit-learn and reads no files; do not pass data_dir")
        return _load_digits(image_size=image_size)
    if dataset is DatasetName.IMAGE_FOLDER:
        if data_dir is None:
            raise DataError(
                "image-folder needs data_dir (--data-dir): a directory holding train/<class>/<image> "
                "and test/<class>/<image> (or val/<class>/<image>)."
            )
        return _load_image_folder(Path(data_dir).expanduser(), image_size=image_size)
    directory = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DIRS[dataset]
    if dataset is DatasetName.FASHION_MNIST:
        return _load_fashion_mnist(directory, image_size=image_size)
    return _load_cifar(dataset, directory, image_size=image_size)


def _parse_name(name: DatasetName | str) -> DatasetName:
    if isinstance(name, DatasetName):
        return name
    text = str(name).strip().lower().replace("_", "-")
    try:
        return DatasetName(text)
    except ValueError:
        known = ", ".join(member.value for member in DatasetName)
        raise DataError(f"unknown data set {name!r}; choose one of: {known}") from None


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

def _channel_view(values: Sequence[float], *, like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def normalize(raw: np.ndarray | Tensor, info: DatasetInfo) -> Tensor:
    """Raw pixels ``(N, C, H, W)`` (any integer or float dtype, ``0 .. info.pixel_max``) to
    the model's input: ``float32 (raw / pixel_max - mean) / std`` per channel."""
    # torch.tensor copies, so read-only numpy buffers (np.frombuffer) need no extra copy.
    images = torch.tensor(np.asarray(raw), dtype=torch.float32) if not isinstance(raw, Tensor) \
        else raw.to(torch.float32, copy=True)
    if images.dim() != 4 or images.shape[1] != len(info.mean):
        raise ValueError(f"expected raw images (N, {len(info.mean)}, H, W), got {tuple(images.shape)}")
    images.div_(info.pixel_max)
    images.sub_(_channel_view(info.mean, like=images)).div_(_channel_view(info.std, like=images))
    return images


def denormalize(images: Tensor, info: DatasetInfo) -> Tensor:
    """Inverse of :func:`normalize` up to the pixel scale: normalised ``(N, C, H, W)`` back to
    ``[0, 1]`` (``images · std + mean``; not clamped)."""
    return images * _channel_view(info.std, like=images) + _channel_view(info.mean, like=images)


def to_uint8(images: Tensor, info: DatasetInfo) -> np.ndarray:
    """Normalised images ``(N, C, H, W)`` back to raw ``uint8`` pixels ``0 .. info.pixel_max``
    (rounded and clamped) — e.g. to store a slice of a data set with :func:`save_subset`."""
    raw = (denormalize(images.detach().to(torch.float32), info) * info.pixel_max).round()
    return raw.clamp_(0, info.pixel_max).to(torch.uint8).cpu().numpy()


def _resize(images: Tensor, image_size: int) -> Tensor:
    """Resize float images ``(N, C, H, W)`` to ``image_size`` square, in chunks to bound memory."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    chunks = [
        torch.nn.functional.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False, antialias=True)
        for chunk in images.split(4096)
    ]
    return torch.cat(chunks)


def _make_splits(
    *,
    train_raw: np.ndarray,
    train_labels: np.ndarray,
    test_raw: np.ndarray,
    test_labels: np.ndarray,
    info: DatasetInfo,
    image_size: int | None,
) -> Splits:
    """Normalise raw ``(N, C, H, W)`` arrays (and resize them if asked) into :class:`Splits`."""
    train_images = normalize(train_raw, info)
    test_images = normalize(test_raw, info)
    if image_size is not None:
        # Resizing after normalisation is the same as before it: bilinear interpolation is
        # affine-equivariant, and this avoids a second float copy of the raw data.
        train_images = _resize(train_images, image_size)
        test_images = _resize(test_images, image_size)
        info = _replace_shape(info, (int(train_images.shape[1]), image_size, image_size))
    return Splits(
        train=TensorDataset(train_images, torch.as_tensor(train_labels, dtype=torch.int64)),
        test=TensorDataset(test_images, torch.as_tensor(test_labels, dtype=torch.int64)),
        info=info,
    )


def _replace_shape(info: DatasetInfo, shape: tuple[int, int, int]) -> DatasetInfo:
    return DatasetInfo(name=info.name, input_shape=shape, num_classes=info.num_classes, mean=info.mean,
                       std=info.std, class_names=info.class_names, source=info.source,
                       pixel_max=info.pixel_max)


def _check_labels(labels: np.ndarray, *, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels range over {int(labels.min())}..{int(labels.max())}, expected "
            f"0..{num_classes - 1}; the file is damaged or belongs to another data set"
        )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)
# --------------------------------------------------------------------------------------------

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


def _read_idx(path: Path, *, magic: int) -> np.ndarray:
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


def _load_fashion_mnist(directory: Path, *, image_size: int | None) -> Splits:
    files = _find_fashion_mnist_files(directory)
    arrays = {}
    for split in ("train", "test"):
        images = _read_idx(files[f"{split}_images"], magic=_IDX_IMAGES_MAGIC)
        labels = _read_idx(files[f"{split}_labels"], magic=_IDX_LABELS_MAGIC).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'{split}_images']} holds {images.shape[0]} images but "
                f"{files[f'{split}_labels']} holds {labels.shape[0]} labels; one of them is from another copy"
            )
        _check_labels(labels, num_classes=len(FASHION_MNIST_CLASSES), where=str(files[f"{split}_labels"]))
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
    return _make_splits(train_raw=arrays["train"][0], train_labels=arrays["train"][1],
                        test_raw=arrays["test"][0], test_labels=arrays["test"][1],
                        info=info, image_size=image_size)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
# --------------------------------------------------------------------------------------------

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
    _check_labels(labels, num_classes=layout.num_classes, where=str(path))
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


def _load_cifar(dataset: DatasetName, directory: Path, *, image_size: int | None) -> Splits:
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
    return _make_splits(
        train_raw=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_raw=test_raw, test_labels=test_labels, info=info, image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

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


def _load_digits(*, image_size: int | None) -> Splits:
    images, labels = _digits_raw()
    train, test = _stratified_split(labels, test_fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED)
    info = DatasetInfo(
        name=DatasetName.DIGITS.value, input_shape=(1, 8, 8), num_classes=10, mean=DIGITS_MEAN,
        std=DIGITS_STD, class_names=_DIGITS_CLASSES, source="sklearn", pixel_max=16,
    )
    return _make_splits(train_raw=images[train], train_labels=labels[train], test_raw=images[test],
                        test_labels=labels[test], info=info, image_size=image_size)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _import_pil():
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
            if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in _IMAGE_SUFFIXES
        )
    return list(classes), files


def _load_image_folder(root: Path, *, image_size: int | None) -> Splits:
    train_dir = root / "train"
    test_dirs = [root / "test", root / "val"]
    test_dir = next((candidate for candidate in test_dirs if candidate.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"image folder not found: need {train_dir} and {test_dirs[0]} (or {test_dirs[1]}), each holding one "
            "sub-directory of images per class; pass the directory above them as data_dir (--data-dir)"
        )
    Image = _import_pil()
    classes, train_files = _list_images(train_dir, None)
    if not classes:
        raise DataError(f"{train_dir}: no class sub-directories; expected {train_dir}/<class>/<image>")
    _, test_files = _list_images(test_dir, classes)
    counts = np.bincount([label for _, label in train_files], minlength=len(classes))
    empty = [classes[label] for label in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{train_dir}: no images for classes {empty} (suffixes read: {sorted(_IMAGE_SUFFIXES)})")
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
                    grayscale = image.mode in _GRAYSCALE_MODES
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
    return _make_splits(
        train_raw=train_raw, train_labels=np.array([label for _, label in train_files], dtype=np.int64),
        test_raw=test_raw, test_labels=np.array([label for _, label in test_files], dtype=np.int64),
        info=info, image_size=None,  # already resized by PIL
    )


# --------------------------------------------------------------------------------------------
# Splitting, batching, augmenting
# --------------------------------------------------------------------------------------------

def calibration_split(train: TensorDataset, *, size: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Hold ``size`` random training examples apart, e.g. to calibrate conversion thresholds
    without looking at the test set. Pass the *training* split; never the test split.

    Returns:
        ``(rest, calibration)``: two new ``TensorDataset`` s over the same tensors' rows,
        disjoint, together the whole of ``train``, each in the original order. The choice
        depends only on ``seed`` and ``len(train)``.

    Raises:
        ValueError: ``size < 1`` or ``size >= len(train)`` (nothing would be left to train on).
    """
    total = len(train)
    if not 1 <= size < total:
        raise ValueError(f"calibration size must be between 1 and {total - 1} (the training set holds {total}), "
                         f"got {size}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    calibration_rows = order[:size].sort().values
    rest_rows = order[size:].sort().values
    return (TensorDataset(*(tensor[rest_rows] for tensor in train.tensors)),
            TensorDataset(*(tensor[calibration_rows] for tensor in train.tensors)))


def recorded_split(train: TensorDataset, *, config: dict, fallback_size: int = 5000
                   ) -> tuple[TensorDataset, TensorDataset]:
    """``(rest, held apart)`` exactly as ``parasnn train`` split the training set, from the
    ``holdout`` and ``seed`` recorded in a checkpoint's ``config``. A network trained on the
    whole training set (no ``holdout``) gets a seeded slice of ``fallback_size`` instead: it
    saw those images in training, but conversion still never looks at the test set."""
    holdout, seed = int(config.get("holdout", 0) or 0), int(config.get("seed", 0) or 0)
    if holdout < 1:
        holdout = min(fallback_size, len(train) - 1)
    return calibration_split(train, size=holdout, seed=seed)


def first_examples(dataset: TensorDataset, count: int | None) -> TensorDataset:
    """The first ``count`` examples of ``dataset`` (all of them when ``count`` is ``None``)."""
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise ValueError(f"need at least one example, got a count of {count}")
    return TensorDataset(*(tensor[:count] for tensor in dataset.tensors))


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """A single-process ``DataLoader`` (``num_workers=0``: the data is already in memory).

    ``shuffle`` orders are seeded by ``seed``, so two loaders made alike yield the same
    batches. With ``distributed=True`` a seeded :class:`DistributedSampler` gives each rank
    its share; the caller must call ``loader.sampler.set_epoch(epoch)`` every epoch for a
    new order. ``num_replicas`` / ``rank`` default to the initialised process group's.
    ``drop_last`` drops the last incomplete batch, and in distributed mode also the tail that
    does not divide among the ranks; with ``drop_last=False`` the sampler instead pads by
    repeating examples so all ranks get the same count — evaluation that needs exact totals
    should not count those twice.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not distributed:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          generator=generator, num_workers=0)
    if num_replicas is None or rank is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("make_loader(distributed=True) needs an initialised torch.distributed process group "
                               "(or explicit num_replicas and rank)")
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0)


def augment(images: Tensor, *, generator: torch.Generator, padding: int = 2, flip: bool = True) -> Tensor:
    """Random translation and horizontal flip of a batch ``(B, C, H, W)``; returns a new tensor.

    Each image is shifted by its own random offset of ``-padding .. padding`` pixels in each
    direction. Pixels shifted in from outside copy the nearest border pixel (replicate
    padding): on normalised tensors zero padding would be the mean colour, not black, and
    replicate padding is right for both black-background (Fashion-MNIST) and natural images
    without knowing the statistics. With ``flip``, each image is mirrored left–right with
    probability ½. The same generator state gives the same result (the random numbers are
    drawn on the generator's device and moved); ``padding=0, flip=False`` returns an
    unchanged copy. The input is never modified.
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects a batch (B, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, channels, height, width = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator,
                            device=generator.device).to(device) - padding
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    row_index = (rows + offsets[:, :1]).clamp_(0, height - 1)  # (B, H); clamping = replicate padding
    if flip:
        mirrored = torch.rand(batch, generator=generator, device=generator.device).to(device) < 0.5
        columns = torch.where(mirrored[:, None], width - 1 - columns, columns)  # (B, W)
    column_index = (columns + offsets[:, 1:]).clamp_(0, width - 1)  # (B, W)
    batch_index = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=device).view(1, channels, 1, 1)
    # Advanced indexing gathers into a new tensor: images itself is untouched.
    return images[batch_index, channel_index, row_index[:, None, :, None], column_index[:, None, None, :]]


# --------------------------------------------------------------------------------------------
# Shipping a slice of a data set
# --------------------------------------------------------------------------------------------

_SUBSET_FORMAT = 1


def _builtin_info(name: DatasetName, shape: tuple[int, int, int]) -> DatasetInfo:
    statistics = {
        DatasetName.FASHION_MNIST: (FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES, 255),
        DatasetName.CIFAR10: (CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES, 255),
        DatasetName.DIGITS: (DIGITS_MEAN, DIGITS_STD, _DIGITS_CLASSES, 16),
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
    name = _parse_name(dataset_name)
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
    _check_labels(labels, num_classes=info.num_classes, where=str(path))
    return TensorDataset(normalize(images, info), torch.from_numpy(labels)), info
