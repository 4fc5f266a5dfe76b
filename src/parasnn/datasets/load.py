"""Reading a data set by name: :func:`load_dataset` dispatches to the reader of its format.

Every loader returns :class:`Splits` — a training and a test :class:`~torch.utils.data.TensorDataset`
of ``(images, labels)`` plus a :class:`DatasetInfo`. Images are ``float32`` of shape
``(N, C, H, W)``, normalised per channel as ``(raw / pixel_max - mean) / std``; labels are
``int64`` of shape ``(N,)``. All of a data set is held in memory, except a large image folder (streamed).

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
    Streamed from disk when large (:mod:`parasnn.datasets.folder` states the rule): its splits
    are then :class:`~parasnn.datasets.streaming.ImageFolderStream` s, which decode an image
    when it is used and give the same tensors.

Failures to find, read or validate data raise :class:`DataError`, whose message names the
file or directory involved and says how to get or repair the data.
"""
from __future__ import annotations
from __future__ import annotations

from pathlib import Path

from .cifar import load_cifar
from .digits import load_digits
from .folder import ImageStorage, load_image_folder
from .idx import load_fashion_mnist
from .info import DEFAULT_DIRS, DataError, DatasetName, Splits, parse_name

__all__ = ["load_dataset", "checkpoint_dataset"]


def load_dataset(
    name: DatasetName | str,
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    storage: ImageStorage | str = ImageStorage.AUTO,
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
        storage: image folders only: ``"auto"`` (default: streamed when large, see
            :mod:`parasnn.datasets.folder`), ``"memory"`` or ``"stream"``.

    Returns:
        :class:`Splits` with images ``float32 (N, C, H, W)`` and labels ``int64 (N,)``.

    Raises:
        DataError: the data set is unknown, missing, damaged or inconsistent.
    """
    dataset = parse_name(name)
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if dataset is DatasetName.DIGITS:
        if data_dir is not None:
            raise ValueError("digits ships with scikit-learn and reads no files; do not pass data_dir")
        return load_digits(image_size=image_size)
    if dataset is DatasetName.IMAGE_FOLDER:
        if data_dir is None:
            raise DataError(
                "image-folder needs data_dir (--data-dir): a directory holding train/<class>/<image> "
                "and test/<class>/<image> (or val/<class>/<image>)."
            )
        return load_image_folder(Path(data_dir).expanduser(), image_size=image_size, storage=storage)
    directory = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DIRS[dataset]
    if dataset is DatasetName.FASHION_MNIST:
        return load_fashion_mnist(directory, image_size=image_size)
    return load_cifar(dataset, directory, image_size=image_size)


def checkpoint_dataset(train_config: dict, *, data_dir: str | Path | None = None) -> Splits:
    """The data set a checkpoint was trained on, from its training ``config`` (``dataset``,
    default fashion-mnist; ``data_dir`` unless another is given)."""
    return load_dataset(train_config.get("dataset", "fashion-mnist"),
                        data_dir=data_dir or train_config.get("data_dir"))
