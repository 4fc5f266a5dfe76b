"""Calibration data as lists of batches: materialised, checked, moved, split and ordered the
same way on every process under torchrun (each process holds its shard; batch i of all
processes together is one global batch)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..datasets.batches import inputs_and_labels, inputs_of
from ..runtime import distributed
from .config import CalibrationError

__all__ = ["materialise", "any_batches", "on_device", "inputs_of", "labelled", "split_batches", "batch_order"]


def materialise(batches: Iterable, *, where: str, equal_shards: bool = True) -> list:
    """A re-iterable list of the batches; refuses empty data with a clear message, and (with
    ``equal_shards``, for data that is trained on batch by batch) shards of unequal length."""
    if batches is None:
        raise CalibrationError(f"{where}: calibration data is required (batches of inputs, or (inputs, labels))")
    items = list(batches)
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


def on_device(batches: Sequence, device: torch.device) -> list:
    """The batches with their tensors moved to ``device`` (threshold recording runs the model
    on the batches as they are)."""
    def move(item):
        if isinstance(item, Tensor):
            return item.to(device)
        if isinstance(item, (tuple, list)):
            return type(item)(move(part) for part in item)
        return item
    return [move(batch) for batch in batches]


def labelled(batch, *, where: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a batch, or a :class:`CalibrationError` naming ``where``."""
    return inputs_and_labels(batch, where=where, error=CalibrationError)


def split_batches(batches: Sequence, *, validation_fraction: float, seed: int = 0) -> tuple[list, list]:
    """``(training, validation)``: ``round(fraction·n)`` batches (at least one when the fraction
    is positive and n ≥ 2), drawn at random with ``seed``, are held out; both keep their
    order. A random draw, not the last batches, so that data stored class by class does not
    leave the last classes to judge (issue 14). The draw depends only on ``seed`` and n, so it
    is the same on every process under torchrun (all shards have the same length)."""
    batches = list(batches)
    held = 0
    if validation_fraction > 0 and len(batches) >= 2:
        held = min(len(batches) - 1, max(1, round(validation_fraction * len(batches))))
    # Epoch −1 of the batch-order streams: a draw of its own, not correlated with the order in
    # which a stage then visits its batches (epochs 0, 1, …).
    chosen = set(batch_order(len(batches), seed=seed, epoch=-1)[:held])
    return ([b for i, b in enumerate(batches) if i not in chosen], [b for i, b in enumerate(batches) if i in chosen])


def batch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    """A seeded order of batch indices, the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()
