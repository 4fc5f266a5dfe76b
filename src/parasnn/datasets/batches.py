"""What one batch holds: a tensor of inputs, or ``(inputs, labels)`` — the one place that
unpacks a batch, for every module that iterates over data."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inputs_of", "inputs_and_labels", "model_inputs", "move_batch"]


def inputs_of(batch) -> Tensor:
    """The inputs of ``batch``: ``batch[0]`` of an ``(inputs, labels)`` pair, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def inputs_and_labels(batch, *, where: str = "this step", error: type[Exception] = ValueError
                      ) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a labelled batch; ``error`` naming ``where`` when it has no labels."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise error(f"{where} needs (inputs, labels) batches; the data has no labels")
    return batch[0], batch[1]


def model_inputs(batch) -> tuple[Tensor, ...]:
    """The positional inputs of the model for ``batch``: ``(x,)`` for a tensor or an
    ``(x, labels)`` pair; ``(a, b, …)`` when the inputs are themselves a tuple or list, as
    for a model of several inputs (``((input_ids, attention_mask), labels)``)."""
    inputs = inputs_of(batch)
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def move_batch(batch, device: torch.device):
    """``batch`` with every tensor in it (nested tuples and lists included, their types kept)
    moved to ``device``; anything else as it is."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_batch(part, device) for part in batch)
    return batch
