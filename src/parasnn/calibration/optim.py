"""The optimiser of the two training stages (bn, bias): AdamW without weight decay, linear
warm-up, cosine decay to the final learning rate."""
from __future__ import annotations

import torch
from torch import nn

from ..runtime.schedule import warmup_cosine_schedule

__all__ = ["stage_optimizer"]


def stage_optimizer(parameters: list[nn.Parameter], *, learning_rate: float, final_learning_rate: float,
                    total_steps: int, warmup_fraction: float):
    """``(optimizer, schedule)``; ``schedule.step()`` after every ``optimizer.step()``."""
    # No weight decay: it would pull BN scales / biases toward 0 for no reason (paper: omitted).
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0
    final = min(1.0, final_learning_rate / learning_rate)
    return optimizer, warmup_cosine_schedule(optimizer, total_steps=total_steps, warmup_steps=warmup,
                                             final_fraction=final)
