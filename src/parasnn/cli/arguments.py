"""Options from the user, parsed once for every ``parasnn`` command: ``argparse`` types (each
turns a command-line string into a value or raises :class:`argparse.ArgumentTypeError`,
which argparse reports as a usage error naming the option) and option dataclasses read back
from a saved checkpoint or JSON (:func:`dataclass_from_dict`)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["forms_list", "positive_int", "positive_int_or_all", "positive_int_list", "time_steps", "time_steps_list",
           "device", "dataclass_from_dict", "config_path"]

_Options = TypeVar("_Options")


def positive_int(text: str) -> int:
    """One integer ≥ 1 (a T, a batch size, a count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_int_or_all(text: str) -> int | None:
    """An integer ≥ 1, or ``all`` (``None``: no limit), e.g. a sample size."""
    return None if text.strip().lower() == "all" else positive_int(text)


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers ≥ 1, e.g. ``1,2,4,8`` (time steps, batch sizes, levels)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 such as 1,2,4,8, got {text!r}")
    return [positive_int(part) for part in parts]


def time_steps(text: str) -> int:
    """One T: an integer in 1 … 2^24 (:data:`parasnn.conversion.network.MAX_TIME_STEPS`), refused
    here rather than after an hour of evaluation."""
    from ..conversion.network import MAX_TIME_STEPS
    value = positive_int(text)
    if value > MAX_TIME_STEPS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_TIME_STEPS} time steps (2^24), got {value}")
    return value


def time_steps_list(text: str) -> list[int]:
    """Comma-separated T values, each as :func:`time_steps`."""
    values = positive_int_list(text)
    for value in values:
        time_steps(str(value))
    return values


def device(text: str) -> "torch.device":
    """``cpu``, ``cuda``, ``cuda:1``, … or ``auto``: this process's GPU when there is one (its
    local rank's under torchrun), else the CPU."""
    if text == "auto":
        from ..runtime.distributed import default_device
        return default_device()
    import torch  # here, so that `parasnn --help` does not import it
    try:
        return torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: {error}") from None


def dataclass_from_dict(cls: type[_Options], data: Mapping[str, Any], *,
                        error: type[Exception] = ValueError) -> _Options:
    """``cls(**data)`` for an options dataclass, refusing entries it does not know (a saved
    configuration from another version, or a typo) with ``error`` naming them."""
    unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise error(f"{cls.__name__}: unknown entries {sorted(unknown)}")
    return cls(**data)


def config_path(output: Path) -> Path:
    """``<stem>.config.json`` beside an output file: where every command writes the options
    it ran with (``runs/x/snn.pt`` → ``runs/x/snn.config.json``)."""
    return Path(output).with_name(Path(output).stem + ".config.json")


def forms_list(text: str):
    """``--forms``: a comma-separated, non-empty subset of parallel,serial."""
    from ..evaluation.accuracy import Form
    parts = [part.strip() for part in text.split(",") if part.strip()]
    known = [form.value for form in Form]
    if not parts or any(part not in known for part in parts):
        raise argparse.ArgumentTypeError(f"expected parallel, serial or parallel,serial, got {text!r}")
    return [Form(part) for part in dict.fromkeys(parts)]
