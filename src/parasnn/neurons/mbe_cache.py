"""On-disk cache of MBE fits (:func:`parasnn.neurons.mbe_fit.fit_mbe`).

One small JSON file per fit, named ``{function}-N{bases}-T{time_steps}-{digest[:20]}.json``
in ``$PARASNN_CACHE/mbe`` (default ``~/.cache/parasnn/mbe``); the digest covers the fit
method's version and the reduced fit samples, so a different range or calibration set is a
different file. JSON keeps float64 values exactly and loads without executing anything.
Files are written atomically (temporary file + rename). A file that cannot be read back
(truncated, edited, from another version) is refitted and overwritten, with a one-line
warning naming it — a cache must never be the reason a conversion fails.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ..io.files import write_json
from .mbe_fit import MBEFit
from .mbe_functions import ScalarFunction

__all__ = ["cache_directory", "cache_path", "load_fit", "store_fit", "CACHE_ENVIRONMENT"]

CACHE_ENVIRONMENT = "PARASNN_CACHE"


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$PARASNN_CACHE/mbe``, else ``~/.cache/parasnn/mbe``."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get(CACHE_ENVIRONMENT) or Path.home() / ".cache" / "parasnn"
    return Path(root) / "mbe"


def cache_path(function: ScalarFunction, *, bases: int, time_steps: int, digest: str,
               cache_dir: str | Path | None = None) -> Path:
    return cache_directory(cache_dir) / f"{ScalarFunction(function).value}-N{bases}-T{time_steps}-{digest[:20]}.json"


def load_fit(function: ScalarFunction, *, bases: int, time_steps: int, digest: str,
             cache_dir: str | Path | None = None) -> MBEFit | None:
    """The cached fit, or ``None`` if absent or unreadable (then with a warning)."""
    path = cache_path(function, bases=bases, time_steps=time_steps, digest=digest, cache_dir=cache_dir)
    if not path.exists():
        return None
    try:
        fit = MBEFit.from_dict(json.loads(path.read_text()))
        if (fit.function, fit.bases, fit.time_steps, fit.digest) != (ScalarFunction(function), bases, time_steps,
                                                                     digest):
            raise ValueError("it holds a different fit")
        return fit
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"MBE fit cache {path} is unreadable ({error}); refitting and overwriting it", stacklevel=3)
        return None


def store_fit(fit: MBEFit, *, cache_dir: str | Path | None = None) -> Path:
    path = cache_path(fit.function, bases=fit.bases, time_steps=fit.time_steps, digest=fit.digest,
                      cache_dir=cache_dir)
    return write_json(path, fit.to_dict())
