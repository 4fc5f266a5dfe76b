"""Batches loaded when they are used: a :class:`LazyBatches` is a sequence of batches of a
dataset that holds no image — ``batches[i]`` decodes batch ``i`` on demand and nothing keeps
it once the caller lets go of it.

Why: calibration indexes its batches (every stage visits them in a seeded order,
:func:`parasnn.calibration.batches.batch_order`; the held-out batches are drawn at random,
:func:`parasnn.calibration.batches.split_batches`), so it needs a *sequence* — counted,
indexed, re-iterable — not a one-pass loader. A list of decoded batches is such a sequence,
but on a streamed image folder (ImageNet layout, :mod:`parasnn.datasets.streaming`) it would
hold the whole training set in memory. This one holds the dataset (paths and labels) and the
partition into batches only, so memory stays at about one batch, plus the loader's prefetch
when it is iterated in order with worker processes, whatever the number of batches.

The partition is fixed: batch ``b`` of the dataset is examples ``b·batch_size …
min((b+1)·batch_size, n) − 1`` in order — what ``DataLoader(dataset, batch_size,
shuffle=False)`` yields — and each batch is collated with the loader's own
``default_collate``, so item ``i`` is bit-equal to the loader's batch ``i`` (a list
``[images, labels]``). Randomness is the caller's: cut a seeded random sample (the sampling
helpers of :mod:`parasnn.datasets.splits` return it in random order) and, under torchrun,
this process's shard (:func:`parasnn.datasets.splits.batch_sequence`) before wrapping it. A
view (:meth:`LazyBatches.select`, slicing) keeps the same partition and names some of its
batches in a chosen order; :meth:`LazyBatches.to` moves each batch to a device when it is
loaded. Decisions: docs/decisions.md, "Data".
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .batches import move_batch

__all__ = ["LazyBatches"]


class LazyBatches(Sequence):
    """A sequence of batches of ``dataset``, each loaded when indexed or reached.

    Args:
        dataset: a map-style dataset (``len`` and ``dataset[i]``), e.g. an
            :class:`~parasnn.datasets.streaming.ImageFolderStream` or a ``TensorDataset``.
        batch_size: examples per batch of the partition (the last batch may be smaller).
        workers: decoding processes used when the sequence is *iterated* (a ``DataLoader``
            over the batches in order, prefetching two batches per worker); indexing always
            decodes in the calling process. Default: the dataset's own
            (:func:`parasnn.datasets.splits.loader_workers`: 0 for tensors in memory).
        device: where the tensors of a loaded batch are moved (None: as loaded, on the CPU).
        chosen: the numbers of the partition's batches this sequence holds, in its order
            (None: all of them in order); what :meth:`select` and slicing pass.

    ``len(batches)`` is the number of batches, ``batches[i]`` batch ``i`` (negative indices
    count from the end; a slice gives a view), ``iter(batches)`` yields them in order. Nothing
    loaded is cached: memory does not grow with the number of batches.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, workers: int | None = None,
                 device: torch.device | str | None = None, chosen: Sequence[int] | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"LazyBatches: batch_size must be an integer >= 1, got {batch_size!r}")
        if workers is None:
            from .splits import loader_workers
            workers = loader_workers(dataset)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"LazyBatches: workers must be an integer >= 0, got {workers!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.workers = workers
        self.device = None if device is None else torch.device(device)
        # Numbers of the partition's batches this sequence holds, in its order (None: all, in order).
        self._chosen = None if chosen is None else tuple(int(b) for b in chosen)
        outside = [b for b in self._chosen or () if not 0 <= b < self.partition_size()]
        if outside:
            raise IndexError(f"LazyBatches: chosen batches {outside[:5]} outside the {self.partition_size()} batches "
                             "of the partition")

    # -- the partition -----------------------------------------------------------------------

    def partition_size(self) -> int:
        """Batches in the partition of the whole dataset (a view may hold fewer)."""
        return -(-len(self.dataset) // self.batch_size)

    def batch_number(self, index: int) -> int:
        """The partition's number of the batch at ``index`` of this sequence."""
        if isinstance(index, bool) or not isinstance(index, int):
            index = int(index)  # numpy and tensor integers; anything else raises TypeError here
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"LazyBatches: batch {index} of {count}")
        return index if self._chosen is None else self._chosen[index]

    def rows(self, index: int) -> range:
        """The dataset's examples that make the batch at ``index``, in order."""
        start = self.batch_number(index) * self.batch_size
        return range(start, min(start + self.batch_size, len(self.dataset)))

    # -- views -------------------------------------------------------------------------------

    def select(self, indices: Sequence[int]) -> "LazyBatches":
        """A view holding the batches at ``indices`` of this sequence, in that order (nothing
        loaded); the same dataset, partition, workers and device."""
        return LazyBatches(self.dataset, self.batch_size, workers=self.workers, device=self.device,
                           chosen=[self.batch_number(i) for i in indices])

    def to(self, device: torch.device | str) -> "LazyBatches":
        """The same batches, each moved to ``device`` when it is loaded."""
        return LazyBatches(self.dataset, self.batch_size, workers=self.workers, device=device,
                           chosen=self._chosen)

    # -- Sequence ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.partition_size() if self._chosen is None else len(self._chosen)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.select(range(*index.indices(len(self))))
        return self._load(self.rows(index))

    def __iter__(self) -> Iterator:
        count = len(self)
        if self.workers == 0 or count < 2:
            for index in range(count):
                yield self[index]
            return
        # In order, with prefetch: the workers decode the next batches while this one is used.
        loader = DataLoader(self.dataset, batch_sampler=_BatchRows(self), num_workers=self.workers,
                            prefetch_factor=2, collate_fn=default_collate)
        for batch in loader:
            yield self._moved(batch)

    def __repr__(self) -> str:
        view = "" if self._chosen is None else f" (a view of {self.partition_size()})"
        return (f"LazyBatches({len(self)} batches{view} of {self.batch_size} from {type(self.dataset).__name__} "
                f"of {len(self.dataset)}, workers={self.workers}, device={self.device})")

    # -- loading -----------------------------------------------------------------------------

    def _load(self, rows: range):
        # What a DataLoader's fetcher does for one batch, in this process: __getitems__ when
        # the dataset has it, else one item at a time; then the loader's collate.
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(list(rows)) if getitems is not None else [self.dataset[i] for i in rows]
        return self._moved(default_collate(items))

    def _moved(self, batch):
        if self.device is None:
            return batch
        return move_batch(batch, self.device)


class _BatchRows:
    """The rows of every batch of ``batches`` in order, as a loader's batch sampler: made one
    batch at a time (a list of every row of an ImageNet training set would be ~45 MB)."""

    def __init__(self, batches: LazyBatches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(self.batches.rows(index)) for index in range(len(self.batches)))
