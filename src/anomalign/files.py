"""Atomic file writes: write under a hidden temporary name beside the target, then rename.

A killed process therefore never leaves a partial file under the real name; leftovers match ``.*.tmp``.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

import numpy as np
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
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 array ([H, W] or [H, W, 3]) as PNG, atomically."""
    with atomic_target(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
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
