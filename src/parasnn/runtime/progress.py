"""Progress bars (tqdm) for loops that take more than a second: off in library calls unless
asked for, on in the command line.

``progress(items, description=..., total=...)`` yields from ``items``; while bars are enabled
(:func:`enable`, or ``PARASNN_PROGRESS=1``) it shows a tqdm bar with the rate and the time
left, nested bars stacking. On a terminal the bar redraws in place; in a log (CI, a file) it
writes one line at most every ``interval`` seconds and never the same count twice, so logs
stay short. Loops shorter than a second print nothing. ``PARASNN_PROGRESS=0`` silences every
bar, the command line's included.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "enable", "disable", "enabled"]

Item = TypeVar("Item")

_state = {"enabled": False}  # library default: quiet; the CLI calls enable()


def enable(on: bool = True) -> None:
    """Show progress bars from now on (``on=False``: hide them). ``PARASNN_PROGRESS`` wins."""
    _state["enabled"] = bool(on)


def disable() -> None:
    """Hide progress bars (the library default)."""
    enable(False)


def enabled() -> bool:
    """Whether :func:`progress` shows bars: ``PARASNN_PROGRESS`` (0/1) if set, else :func:`enable`'s choice."""
    setting = os.environ.get("PARASNN_PROGRESS")
    if setting in ("0", "1"):
        return setting == "1"
    return _state["enabled"]


_COUNT = re.compile(r"(\d+(?:/\d+)?)(?=(?:it)? ?\[|\s*\[)")


class _LogLines:
    """A stream adapter for logs: tqdm redraws with ``\\r``; a log gets one line per redraw,
    and a redraw that shows the same count as the line before (tqdm's closing redraw) is dropped."""

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, text: str) -> None:
        for part in text.split("\r"):
            line = part.strip("\n").rstrip()
            if not line:
                continue
            found = _COUNT.search(line)
            key = (line.split(":")[0], found.group(1)) if found else line
            if key != self.last:
                self.stream.write(line + "\n")
                self.last = key

    def flush(self) -> None:
        self.stream.flush()


def progress(items: Iterable[Item], *, description: str, total: int | None = None, interval: float = 10.0,
             stream=None) -> Iterator[Item]:
    """Yield from ``items``, showing ``description``, the count (of ``total``, default
    ``len(items)``), the rate and the time left while bars are :func:`enabled`."""
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    with tqdm(items, desc=description, total=total, file=stream if interactive else _LogLines(stream),
              mininterval=0.1 if interactive else interval, delay=1.0, dynamic_ncols=interactive,
              ascii=not interactive, leave=True) as bar:
        yield from bar
