"""Pixels to model inputs and back (:func:`normalize`, :func:`denormalize`, :func:`to_uint8`),
resizing, assembling :class:`~.info.Splits`, and training-time augmentation (:func:`augment`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .info import DatasetInfo, Splits

__all__ = ["normalize", "denormalize", "to_uint8", "resize", "make_splits", "replace_shape", "augment"]


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


def resize(images: Tensor, image_size: int) -> Tensor:
    """Resize float images ``(N, C, H, W)`` to ``image_size`` square, in chunks to bound memory."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    chunks = [
        torch.nn.functional.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False, antialias=True)
        for chunk in images.split(4096)
    ]
    return torch.cat(chunks)


def make_splits(
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
        train_images = resize(train_images, image_size)
        test_images = resize(test_images, image_size)
        info = replace_shape(info, (int(train_images.shape[1]), image_size, image_size))
    return Splits(
        train=TensorDataset(train_images, torch.as_tensor(train_labels, dtype=torch.int64)),
        test=TensorDataset(test_images, torch.as_tensor(test_labels, dtype=torch.int64)),
        info=info,
    )


def replace_shape(info: DatasetInfo, shape: tuple[int, int, int]) -> DatasetInfo:
    return DatasetInfo(name=info.name, input_shape=shape, num_classes=info.num_classes, mean=info.mean,
                       std=info.std, class_names=info.class_names, source=info.source,
                       pixel_max=info.pixel_max)



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
