"""Calibration data as sequences of batches: checked, moved, split and ordered the same way on
every process under torchrun (each process holds its shard; batch i of all processes together
is one global batch).

Two kinds of sequence, the same rules: a *list* of batches in memory (any iterable of batches
passed in is listed, as before), and a :class:`~parasnn.datasets.lazy.LazyBatches`, which
loads a batch when it is used and keeps none — what ``parasnn calibrate`` passes for a
streamed image folder, so that the stages hold about one batch whatever the size of the data
they learn on. :func:`materialise` keeps a lazy sequence as it is, :func:`on_device` and
:func:`split_batches` return lazy views of it (nothing loaded); every stage only counts,
indexes and iterates its batches, so it runs unchanged on both, and on the same batches the
result is bit-equal (``tests/test_lazy_calibration.py``). Decision: docs/decisions.md, "Data"."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..datasets.batches import inputs_and_labels, inputs_of, move_batch
from ..datasets.lazy import LazyBatches
from ..runtime import distributed
from .config import CalibrationError

__all__ = ["materialise", "as_sequence", "any_batches", "on_device", "inputs_of", "labelled", "split_batches",
           "held_out_indices", "batch_order", "measuring_sample", "LazyBatches"]


def as_sequence(batches: Iterable | None) -> Sequence:
    """``batches`` as a re-iterable sequence, nothing checked: a :class:`LazyBatches` as it is
    (nothing loaded), anything else listed; ``None`` gives an empty list."""
    if batches is None:
        return []
    return batches if isinstance(batches, LazyBatches) else list(batches)


def materialise(batches: Iterable, *, where: str, equal_shards: bool = True) -> Sequence:
    """The batches as a re-iterable sequence (:func:`as_sequence`: a list, or a
    :class:`LazyBatches` kept as it is); refuses empty data with a clear message, and (with
    ``equal_shards``, for data that is trained on batch by batch) shards of unequal length."""
    if batches is None:
        raise CalibrationError(f"{where}: calibration data is required (batches of inputs, or (inputs, labels))")
    items = as_sequence(batches)
    # Under torchrun every process must hold the same number of batches: each batch is one
    # collective step, and a process with fewer would leave the others waiting for ever.
    most, fewest = (int(v) for v in distributed.all_reduce_max(torch.tensor([float(len(items)), -float(len(items))])))
    fewest = -fewest
    if most == 0:
        raise CalibrationError(f"{where}: the data is empty: pass at least one batch "
                               "(for calibration, the held-apart training slice: parasnn calibrate --calibration-size N)")
    if equal_shards and most != fewest:
        raise CalibrationError(f"{where}: the processes hold {fewest} to {most} batches; shard the data so that "
                               "every process gets the same number (a DistributedSampler does)")
    return items


def any_batches(batches: Sequence) -> bool:
    """Whether any process holds a batch (the same answer on every process under torchrun)."""
    return int(distributed.all_reduce_sum(torch.tensor([float(len(batches))]))[0]) > 0


def on_device(batches: Sequence, device: torch.device) -> Sequence:
    """The batches with their tensors moved to ``device`` (threshold recording runs the model
    on the batches as they are): a list, or for a :class:`LazyBatches` a view that moves each
    batch when it is loaded."""
    if isinstance(batches, LazyBatches):
        return batches.to(device)
    return [move_batch(batch, device) for batch in batches]


def labelled(batch, *, where: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a batch, or a :class:`CalibrationError` naming ``where``."""
    return inputs_and_labels(batch, where=where, error=CalibrationError)


def held_out_indices(count: int, *, validation_fraction: float, seed: int = 0) -> list[int]:
    """The indices, ascending, of the batches :func:`split_batches` holds out of ``count``:
    ``round(fraction·count)`` (at least one when the fraction is positive and count ≥ 2,
    never all), drawn at random with ``seed``. Depends only on its arguments, so it is the same
    on every process under torchrun (all shards have the same length)."""
    held = 0
    if validation_fraction > 0 and count >= 2:
        held = min(count - 1, max(1, round(validation_fraction * count)))
    # Epoch −1 of the batch-order streams: a draw of its own, not correlated with the order in
    # which a stage then visits its batches (epochs 0, 1, …).
    return sorted(batch_order(count, seed=seed, epoch=-1)[:held])


def split_batches(batches: Sequence, *, validation_fraction: float, seed: int = 0) -> tuple[Sequence, Sequence]:
    """``(training, validation)``: the batches at :func:`held_out_indices` are held out, both
    parts keep their order. A random draw, not the last batches, so that data stored class by
    class does not leave the last classes to judge (issue 14). Lists for a list (or any
    iterable); two views of a :class:`LazyBatches`, nothing loaded."""
    batches = as_sequence(batches)
    chosen = set(held_out_indices(len(batches), validation_fraction=validation_fraction, seed=seed))
    training = [i for i in range(len(batches)) if i not in chosen]
    validation = sorted(chosen)
    return _pick(batches, training), _pick(batches, validation)


def batch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    """A seeded order of batch indices, the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def measuring_sample(batches: Sequence, *, images: int | None, batch_size: int, seed: int = 0) -> Sequence:
    """The batches a pass that only measures reads (ReLU thresholds, stage da's running
    averages, stage bn's statistics): ``ceil(images / batch_size)`` of them drawn at random
    with ``seed`` (kept in their order), or all of them when ``images`` is ``None`` or covers
    them. ``batch_size`` is the global one, so every process under torchrun draws the same
    indices of its own shard. A view for a :class:`LazyBatches`, nothing loaded."""
    batches = as_sequence(batches)
    if images is None:
        return batches
    count = -(-images // batch_size)  # ceiling division
    if count >= len(batches):
        return batches
    # Epoch −2 of the batch-order streams: a draw of its own (−1 is the held-out draw).
    chosen = sorted(batch_order(len(batches), seed=seed, epoch=-2)[:count])
    return _pick(batches, chosen)


def _pick(batches: Sequence, indices: Sequence[int]) -> Sequence:
    """The batches at ``indices``: a view of a :class:`LazyBatches` (nothing loaded), else a list."""
    return batches.select(indices) if isinstance(batches, LazyBatches) else [batches[i] for i in indices]
