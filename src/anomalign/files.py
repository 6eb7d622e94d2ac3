"""Atomic file writes: write under a hidden temporary name beside the target, then rename.

A killed process therefore never leaves a partial file under the real name; leftovers match ``.*.tmp``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def temp_path(path: Path) -> Path:
    """``dir/.name.<pid>.tmp`` beside ``path`` (hidden, unique per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 array ([H, W] or [H, W, 3]) as PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def is_hub_id(source: str) -> bool:
    """True for a Hugging Face hub id (``org/name``) that is not also a local path; such sources are left
    to the loading library, local paths are checked here first."""
    return not (Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") != 1)
