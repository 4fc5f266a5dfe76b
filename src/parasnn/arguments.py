"""``argparse`` types shared by every ``parasnn`` command: each turns a command-line string
into a value or raises :class:`argparse.ArgumentTypeError`, which argparse reports as a usage
error naming the option."""
from __future__ import annotations

import argparse

import torch

__all__ = ["positive_int", "positive_int_list", "device"]


def positive_int(text: str) -> int:
    """One integer ≥ 1 (a T, a batch size, a count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers ≥ 1, e.g. ``1,2,4,8`` (time steps, batch sizes, levels)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 such as 1,2,4,8, got {text!r}")
    return [positive_int(part) for part in parts]


def device(text: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, … or ``auto``: this process's GPU when there is one (its
    local rank's under torchrun), else the CPU."""
    if text == "auto":
        from .distributed import default_device
        return default_device()
    try:
        return torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: {error}") from None
