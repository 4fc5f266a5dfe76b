"""Splitting a data set and drawing samples from it, and loading it in batches.

Every sample drawn from data is a *seeded random* sample (:func:`sample_subset`), never the
first rows: image folders (and some test files) are stored class by class, and the first rows
would be a few classes only (issue 14)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ..runtime.checks import require_positive_int

__all__ = ["calibration_split", "recorded_split", "first_examples", "sample_subset", "held_apart_sample",
           "held_apart_batches", "training_sample", "make_loader", "take", "labels_of", "is_streamed",
           "loader_workers", "batch_sequence"]


def is_streamed(dataset: Dataset) -> bool:
    """Whether ``dataset`` decodes its examples when they are read (a streamed image folder,
    :class:`parasnn.datasets.streaming.ImageFolderStream`, possibly inside a ``Subset``)
    rather than holding them as tensors."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return hasattr(dataset, "take") and not hasattr(dataset, "tensors")


def loader_workers(dataset: Dataset) -> int:
    """The decoding processes a loader over ``dataset`` uses unless told: none for tensors
    in memory, the stream's own number (default 2) for a streamed folder."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return int(getattr(dataset, "loader_workers", 0)) if is_streamed(dataset) else 0


def take(dataset: Dataset, rows: torch.Tensor) -> Dataset:
    """The examples of ``dataset`` at ``rows`` (a 1-D integer tensor), in that order: a
    ``TensorDataset`` of indexed tensors, or a streamed dataset's own ``take`` (nothing decoded)."""
    if hasattr(dataset, "tensors"):
        return TensorDataset(*(tensor[rows] for tensor in dataset.tensors))
    if hasattr(dataset, "take"):
        return dataset.take(rows)
    return Subset(dataset, rows.tolist())


def labels_of(dataset: Dataset) -> torch.Tensor | None:
    """The labels of ``dataset`` as a tensor without reading its images: a ``TensorDataset``'s
    second tensor, a streamed dataset's ``labels``; None where there are none."""
    if hasattr(dataset, "tensors"):
        return dataset.tensors[1] if len(dataset.tensors) > 1 else None
    labels = getattr(dataset, "labels", None)
    return None if labels is None else torch.as_tensor(labels)


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
    return take(train, rest_rows), take(train, calibration_rows)


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
    """The first ``count`` examples of ``dataset`` (all of them when ``count`` is ``None``).

    Not a sample: on data stored class by class the first rows are a few classes. To draw
    examples use :func:`sample_subset`."""
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise ValueError(f"need at least one example, got a count of {count}")
    return take(dataset, torch.arange(count))


def _stratified_quotas(counts: torch.Tensor, count: int) -> torch.Tensor:
    """Examples to draw per class: proportional to ``counts`` (largest remainders), and at
    least one of every present class when ``count`` allows it."""
    exact = counts.double() * count / counts.sum()
    quotas = exact.floor().long()
    order = torch.argsort(exact - quotas, descending=True, stable=True)
    quotas[order[: count - int(quotas.sum())]] += 1
    present = counts > 0
    if count >= int(present.sum()):
        for label in torch.nonzero(present & (quotas == 0)).flatten().tolist():
            quotas[int(torch.argmax(quotas))] -= 1  # from the largest quota: proportions barely move
            quotas[label] = 1
    return quotas


def sample_subset(dataset: TensorDataset, count: int | None, *, seed: int = 0) -> TensorDataset:
    """A seeded random sample of ``count`` examples of ``dataset`` (all of them when ``count``
    is ``None`` or at least ``len(dataset)``), drawn without replacement, in random order.

    Stratified by class when the second tensor holds integer labels ``(N,)``: each class
    gives its share of ``count`` (rounded by largest remainders, at least one example of
    every class when ``count`` is at least the number of classes), so a sample of data stored
    class by class has every class. Random order as well as random choice: batches cut from
    the result in order mix the classes. The draw depends only on ``seed`` and the labels;
    the tensors are indexed, never modified.

    Raises:
        ValueError: ``count < 1``.
    """
    if count is not None:
        require_positive_int(count, "sample size (count)")
    total = len(dataset)
    generator = torch.Generator().manual_seed(seed)
    if count is None or count >= total:
        rows = torch.randperm(total, generator=generator)
    else:
        labels = labels_of(dataset)
        if labels is not None and labels.dim() == 1 and not labels.is_floating_point() and labels.numel() and \
                int(labels.min()) >= 0:
            labels = labels.cpu()
            quotas = _stratified_quotas(torch.bincount(labels), count)
            order = torch.randperm(total, generator=generator)
            shuffled = labels[order]
            chosen = [order[shuffled == label][:quota] for label, quota in enumerate(quotas.tolist()) if quota]
            rows = torch.cat(chosen)
            rows = rows[torch.randperm(len(rows), generator=generator)]
        else:
            rows = torch.randperm(total, generator=generator)[:count]
    return take(dataset, rows)


def held_apart_sample(train: TensorDataset, *, config: dict, size: int | None, seed: int = 0,
                      fallback_size: int = 5000) -> TensorDataset:
    """A seeded random sample of ``size`` examples (all when ``None``) of the slice of the
    training set that ``parasnn train`` held apart (:func:`recorded_split` of a checkpoint's
    ``config``): the data conversion and calibration may look at, never the test set."""
    _, held_apart = recorded_split(train, config=config, fallback_size=size or fallback_size)
    return sample_subset(held_apart, size, seed=seed)


def held_apart_batches(train: TensorDataset, *, config: dict, size: int | None, batch_size: int = 256,
                       seed: int = 0) -> list:
    """:func:`held_apart_sample` cut into batches ``(inputs, labels)`` of ``batch_size`` (one
    process; sharded loaders are the caller's business)."""
    sample = held_apart_sample(train, config=config, size=size, seed=seed)
    return list(make_loader(sample, batch_size=batch_size, shuffle=False))


def training_sample(train: TensorDataset, *, config: dict, size: int | None, seed: int = 0) -> TensorDataset:
    """A seeded random sample of ``size`` examples (all when ``None``) of the part of the
    training set a checkpoint was trained on (the complement of :func:`held_apart_sample`)."""
    rest, _ = recorded_split(train, config=config)
    return sample_subset(rest, size, seed=seed)


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
    workers: int | None = None,
) -> DataLoader:
    """A ``DataLoader``; ``workers`` decoding processes (default :func:`loader_workers`: none
    for in-memory data, the stream's own number for a streamed image folder).

    ``shuffle`` orders are seeded by ``seed``, so two loaders made alike yield the same
    batches. With ``distributed=True`` a seeded :class:`DistributedSampler` gives each rank
    its share; the caller must call ``loader.sampler.set_epoch(epoch)`` every epoch for a
    new order. ``num_replicas`` / ``rank`` default to the initialised process group's.
    ``drop_last`` drops the last incomplete batch, and in distributed mode also the tail that
    does not divide among the ranks; with ``drop_last=False`` the sampler instead pads by
    repeating examples so all ranks get the same count — evaluation that needs exact totals
    should not count those twice.
    """
    require_positive_int(batch_size, "batch_size")
    if workers is None:
        workers = loader_workers(dataset)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    options = dict(batch_size=batch_size, drop_last=drop_last, num_workers=workers,
                   persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    if not distributed:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, shuffle=shuffle, generator=generator, **options)
    if num_replicas is None or rank is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("make_loader(distributed=True) needs an initialised torch.distributed process group "
                               "(or explicit num_replicas and rank)")
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, sampler=sampler, **options)


def batch_sequence(dataset: Dataset, *, batch_size: int, num_replicas: int = 1, rank: int = 0):
    """Batches of ``dataset`` in order that can be indexed and counted (what calibration
    needs): for in-memory data a list of the loader's batches; for a streamed folder a
    :class:`parasnn.datasets.lazy.LazyBatches` that decodes a batch when it is used (item i
    bit-equal to the loader's batch i), so memory does not grow with the data. With ``num_replicas > 1``, this ``rank``'s share
    as a ``DistributedSampler`` without shuffling gives it (``batch_size`` per process)."""
    if num_replicas > 1:
        rows = torch.tensor(list(DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)),
                            dtype=torch.int64)
        dataset = take(dataset, rows)
    if is_streamed(dataset):
        from .lazy import LazyBatches
        return LazyBatches(dataset, batch_size)
    return list(make_loader(dataset, batch_size=batch_size, shuffle=False))
