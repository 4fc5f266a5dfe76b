"""A dependency-free progress bar for loops that take more than a few seconds.

On a terminal it redraws one line (``\\r``); in a log (CI, a file) it prints a line at most
every ``interval`` seconds, so logs stay short. ``PARASNN_PROGRESS=0`` silences it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress"]

Item = TypeVar("Item")


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def progress(items: Iterable[Item], *, description: str, total: int | None = None, interval: float = 10.0,
             stream=None) -> Iterator[Item]:
    """Yield from ``items`` while reporting ``description  done/total  elapsed<eta``."""
    stream = stream or sys.stderr
    if os.environ.get("PARASNN_PROGRESS", "1") == "0":
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    interactive = hasattr(stream, "isatty") and stream.isatty()
    start = last = time.monotonic()
    done = 0

    def line() -> str:
        elapsed = time.monotonic() - start
        if total:
            eta = elapsed / done * (total - done) if done else 0.0
            width = 24
            filled = int(width * done / total)
            return (f"{description} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                    f"{_format_seconds(elapsed)}<{_format_seconds(eta)}")
        return f"{description} {done} {_format_seconds(elapsed)}"

    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if interactive and now - last > 0.1:
            stream.write("\r" + line())
            stream.flush()
            last = now
        elif not interactive and now - last > interval:
            stream.write(line() + "\n")
            stream.flush()
            last = now
    if time.monotonic() - start > 1.0:  # a closing line only for loops worth reporting
        stream.write(("\r" if interactive else "") + line() + "\n")
        stream.flush()
