"""Writing user files so that none is ever half-written, and never onto the wrong thing.

A write goes to a temporary file ``.<name>.tmp-<pid>-<random>`` in the target's directory,
is flushed to disk, then renamed over the target (atomic on POSIX). A crash (``kill -9``)
can therefore leave at most that one recognisable temporary file, never a truncated
target; the next successful write of the same target removes such leftovers of dead
processes.

What is written is always a regular file: a symlink is followed and its *target* is
replaced (the link stays a link); a directory, a device (``/dev/null``), a FIFO or a socket
is refused with :class:`OutputError` instead of being replaced by a file.

Commands check every output before their work starts (:func:`check_outputs`): the path
must not be one of the command's inputs (same resolved path or same inode), must not be
a directory or a special file, and its directory must exist — or be creatable — and
accept a new file. So a typo in ``--json`` costs nothing, and ``--out`` can never
destroy the checkpoint it reads.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

__all__ = ["OutputError", "atomic_path", "write_json", "write_text", "save_torch", "resolve_output",
           "check_outputs", "check_output_directory", "temporary_name", "stale_temporaries"]


class OutputError(ValueError):
    """An output path that must not or cannot be written; the message names it and the fix."""


def temporary_name(target: Path) -> str:
    """``.<name>.tmp-<pid>-<random>``: recognisable, and tied to the writing process so a
    later write can tell a dead writer's leftover from a live concurrent one."""
    return f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temporaries(target: Path) -> list[Path]:
    """Temporary files of ``target`` left by processes that no longer run."""
    pattern = re.compile(re.escape(f".{target.name}.tmp-") + r"(\d+)-[0-9a-f]+$")
    stale = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            stale.append(entry)
    return stale


def resolve_output(path: str | Path) -> Path:
    """The regular file a write of ``path`` replaces: symlinks followed (to their final
    target). Raises :class:`OutputError` for a directory, a device, a FIFO or a socket."""
    path = Path(path)
    resolved = Path(os.path.realpath(path))
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        return resolved
    except NotADirectoryError:
        blocking = _nearest_existing(resolved.parent)
        raise OutputError(f"output {path}: {blocking} is a file, not a directory; choose another path") from None
    except OSError as error:
        raise OutputError(f"output {path}: cannot be inspected ({error.strerror}); choose another path") from None
    if stat.S_ISDIR(mode):
        raise OutputError(f"output {path} is a directory; give a file name (e.g. {path / 'out'}...)")
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise OutputError(f"output {path} is {kind}; parasnn writes regular files only, choose a file path")
    return resolved


def _nearest_existing(directory: Path) -> Path:
    while not os.path.lexists(directory):
        if directory.parent == directory:
            break
        directory = directory.parent
    return directory


def check_output_directory(directory: str | Path, *, what: str = "output directory") -> Path:
    """A directory that will receive files: it exists and accepts a new file, or it can be
    created (its nearest existing ancestor is a directory that accepts one). Nothing is left
    behind by the check. Returns the resolved path."""
    directory = Path(directory)
    resolved = Path(os.path.realpath(directory))
    if resolved.exists() and not resolved.is_dir():
        raise OutputError(f"{what} {directory} is a file, not a directory; choose a directory path")
    existing = _nearest_existing(resolved)
    if not existing.is_dir():
        raise OutputError(f"{what} {directory}: {existing} is a file, not a directory; choose another path")
    # Try it: access() says yes to root on read-only mounts and on /proc.
    probe = existing / f".parasnn-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise OutputError(f"{what} {directory}: cannot create files in {existing} ({error.strerror}); "
                          "choose a writable location") from None
    os.close(handle)
    os.unlink(probe)
    return resolved


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, str | Path | None], *,
                  inputs: Mapping[str, str | Path | None] = {}) -> dict[str, Path]:
    """Check, before any work, that every output file can be written and destroys nothing.

    ``outputs`` / ``inputs``: ``{what: path}`` (``what`` names the option or file for the
    message, e.g. ``"--json"``; ``None`` paths are skipped). Refuses an output that is one of
    the inputs or another output (same resolved path or inode), a directory, a special file,
    or a location where no file can be created. Returns ``{what: resolved path}``."""
    resolved: dict[str, Path] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        try:
            target = resolve_output(path)
        except OutputError as error:
            raise OutputError(f"{what}: {error}") from None
        for name, source in inputs.items():
            if source is not None and _same_file(target, Path(os.path.realpath(source))):
                raise OutputError(f"{what} {path} is the same file as the input {name} {source}; writing it would "
                                  f"destroy the input. Choose another {what} path")
        for name, other in resolved.items():
            if _same_file(target, other):
                raise OutputError(f"{what} {path} and {name} are the same file; give them different paths")
        if target.exists() and not os.access(target, os.W_OK):
            raise OutputError(f"{what} {path} exists and is read-only; choose another path or make it writable")
        check_output_directory(target.parent, what=f"{what} {path}: directory")
        resolved[what] = target
    return resolved


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:  # some file systems do not sync directories
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``'s final target; on success it replaces the
    target (a symlink's target, not the link), on error — including ``SIGTERM`` turned into
    an exception by the CLI — it is removed. Directories, devices and FIFOs are refused."""
    target = resolve_output(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        previous_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        previous_mode = 0o666 & ~umask  # what a plain open() would give
    temporary = target.parent / temporary_name(target)
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror} in {target.parent}; choose a writable location"
                          ) from None
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, previous_mode)
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    for leftover in stale_temporaries(target):
        try:
            os.unlink(leftover)
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Standard JSON: a NaN or infinity becomes ``null`` (a bare ``NaN`` token is not JSON and
    other readers reject it)."""
    text = json.dumps(_finite_or_null(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text(path, text)


def save_torch(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
    return Path(path)
