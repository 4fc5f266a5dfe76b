"""The learning-rate schedule of every training loop in parasnn: linear warm-up, then a
cosine decay to a final fraction of the peak rate."""
from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "warmup_cosine_schedule"]


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine decay from 1 to
    ``final_fraction`` at ``total_steps`` (0: decay to nothing)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * done))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                           final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``optimizer`` through :func:`warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps=total_steps, warmup_steps=warmup_steps,
                                              final_fraction=final_fraction))
