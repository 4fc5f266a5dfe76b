"""Run directories of :func:`parasnn.training.train.train`: who may write one, what it must
hold to be resumed, and the random-number states that make a resume faithful.

Rules:

* One writer at a time: a second ``train`` into a locked directory is refused naming the
  holder's pid. The lock is an ``flock``, released by the kernel when its process dies, so a
  ``kill -9``'d run never leaves a lock that blocks the next one.
* The configuration is checked before anything is written: resuming with another
  configuration is refused and ``config.json`` stays as it was (``resume=False`` /
  ``--no-resume`` starts over, removing the old run's files).
* A resumed run is bit-identical to an uninterrupted one: ``last.pt`` stores the global
  random-number states (torch CPU and CUDA, numpy, Python ``random``) as they were at the end
  of the epoch, and each epoch's data order and augmentation are seeded by ``(seed, epoch)``.
* ``epochs`` is part of the configuration, because the cosine learning-rate schedule spans all
  epochs: a run cannot be *extended* to more epochs and stay equal to a run that had those
  epochs from the start, so a larger ``--epochs`` on an existing run is refused with the way
  out (resume with the old ``--epochs``, or train the new length into a new ``--out``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RUN_FILES", "RunError", "run_lock", "random_states", "restore_random_states", "own_random_states",
           "check_run_config"]

# The files a run writes (removed by resume=False before a fresh start).
RUN_FILES = ("config.json", "last.pt", "model.pt", "metrics.json")


class RunError(Exception):
    """A run directory that cannot be used as asked; the message names it and the way out."""


@contextlib.contextmanager
def run_lock(directory: str | Path):
    """Hold the run directory's lock for the block: ``.lock`` (created if needed) is
    ``flock``ed and holds this process's pid. Another holder → :class:`RunError` naming its
    pid. The kernel releases the lock when the holder dies, so a dead run's lock is taken over."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"--out {directory} is a file, not a run directory; choose a directory path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunError(f"cannot use {directory} as a run directory ({error.strerror}); choose a writable --out") \
            from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(handle)
        raise RunError(f"run directory {directory} is in use by process {holder} (another parasnn train); wait for "
                       "it to finish, stop it, or choose another --out") from None
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def random_states() -> dict[str, Any]:
    """Every global random-number state training draws from, in a ``weights_only``-loadable form."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def restore_random_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`random_states`."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def check_run_config(out_dir: Path, new: dict, *, recorded: dict | None, epochs_done: int | None) -> None:
    """Refuse to resume a run recorded with another configuration, naming the differences and
    the way out; a larger or smaller ``epochs`` gets its own explanation (see the module notes)."""
    if recorded is None:
        return
    if recorded == new:
        return
    if not isinstance(recorded, dict):
        raise RunError(f"{out_dir} holds a damaged run configuration; pass --no-resume to start over there, "
                       "or choose another --out")
    changed = _differences(recorded, new)
    if changed == [f"epochs: {recorded.get('epochs')!r} -> {new['epochs']!r}"]:
        done = f", {epochs_done} done" if epochs_done is not None else ""
        raise RunError(
            f"{out_dir} holds a run of {recorded.get('epochs')} epochs{done}; --epochs {new['epochs']} would change "
            "its cosine learning-rate schedule, so the result would not equal a run of that length. Rerun with "
            f"--epochs {recorded.get('epochs')} to resume/keep it, or train {new['epochs']} epochs into a new --out "
            "(or --no-resume to start over here)")
    raise RunError(f"{out_dir} holds a run with a different configuration ({'; '.join(changed[:6])}); choose "
                   "another --out directory, or pass --no-resume to start over there")



@contextlib.contextmanager
def own_random_states(seed: int):
    """Seed every global generator for the run and give the caller's states back afterwards."""
    saved = random_states()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        restore_random_states(saved)
