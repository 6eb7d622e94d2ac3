"""Atomic file writes: write under a hidden temporary name beside the target, then rename.

A killed process therefore never leaves a partial file under the real name; leftovers match ``.*.tmp``.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

from PIL import Image


def temp_path(path: Path) -> Path:
    """``dir/.name.<pid>.tmp`` beside ``path`` (hidden, unique per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield the temporary name to write ``path`` under; on success it is renamed to ``path``, on any error
    (a full disk, a kill signal turned into an exception) it is removed, so neither a partial file nor a
    leftover temp file stays behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with os_errors(path):
            yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def os_errors(path: Path) -> Iterator[None]:
    """Errors of the machine while writing ``path`` raised as ``OSError`` (which the CLI reports in one line, exit
    1): safetensors reports a full disk as ``SafetensorError('... No space left on device (os error 28)')``."""
    import re
    try:
        yield
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e)) if not isinstance(e, OSError) else None
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_png(array, path: Path) -> Path:
    """Write a uint8 array ([H, W] or [H, W, 3]) or a PIL image as PNG, atomically."""
    with atomic_target(path) as tmp:
        (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(tmp, format="PNG")
    return Path(path)


def is_hub_id(source: str) -> bool:
    """True for a Hugging Face hub id (``org/name``) that is not also a local path; such sources are left
    to the loading library, local paths are checked here first."""
    return not (Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") != 1)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks): identifies weights whatever their path."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# One writer per output folder: `run`, `generate` and the training commands take an exclusive lock on their
# output folder before they write into it, so a second process on the same --out stops with the holder's name
# instead of interleaving its files with the first one's. flock is released by the kernel when the holder dies
# (kill -9 included), so a stale lock file never blocks a rerun.
LOCK_NAME = ".anomalign.lock"
_held: dict[str, tuple[int, int]] = {}  # resolved folder -> (file descriptor, depth): re-entrant within a process
_scopes: list[list[str]] = []


def check_out_outside(out: Path, inputs: dict) -> None:
    """Refuse an output folder that is, or lies inside, one of the ``inputs`` (option name -> folder or file;
    None is skipped): the run would write its images and masks among the user's data, read them back as data
    on the next rerun, and fail there every time. Checked before anything is written."""
    from anomalign.errors import AnomalignError
    target = Path(out).resolve()
    for name, source in inputs.items():
        for item in ([source] if isinstance(source, (str, Path)) else list(source or [])):
            folder = Path(item).resolve()
            if not folder.is_dir():
                continue
            if target == folder or folder in target.parents:
                raise AnomalignError(f"{out}: --out is inside {name} ({item}); the run would write into your data "
                                     "and read its own outputs back as data. Choose an --out outside it (nothing "
                                     "was written)")


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` except our own bookkeeping: atomic-write leftovers (``.name.<pid>.tmp``) and the
    folder's lock file."""
    return [p for p in Path(folder).iterdir()
            if not ((p.name.startswith(".") and p.name.endswith(".tmp")) or p.name == LOCK_NAME)]


def lock_folder(folder: Path, command: str) -> None:
    """Take the exclusive lock of output ``folder`` (created if missing) for ``command``, or raise
    ``AnomalignError`` naming the process that holds it. Held until the enclosing ``releases_locks`` function
    returns (or the process exits); taking it again in the same process is a no-op."""
    import fcntl
    import json
    import time

    from anomalign.errors import AnomalignError
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, UnicodeDecodeError):
                holder = {}
            os.close(fd)
            who = (f"`anomalign {holder.get('command', '?')}` (pid {holder.get('pid', '?')}, started "
                   f"{holder.get('started', '?')})") if holder else "another anomalign process"
            raise AnomalignError(f"{folder}: {who} is writing into this folder; wait for it to finish, or choose "
                                 "another --out (nothing was changed)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        _held[key] = (fd, 1)
    if _scopes:
        _scopes[-1].append(key)


def _release(key: str) -> None:
    import fcntl
    fd, depth = _held[key]
    if depth > 1:
        _held[key] = (fd, depth - 1)
        return
    del _held[key]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def releases_locks(fn):
    """Decorator: folder locks that ``fn`` takes (``lock_folder``) are released when it returns or raises, so
    a Python session can run one command after another on a folder that another process then continues."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _scopes.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for key in reversed(_scopes.pop()):
                _release(key)
    return wrapper
