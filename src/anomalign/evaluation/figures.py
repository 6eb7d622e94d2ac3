"""Pictures of what was generated: mask contours drawn on images, and grids."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] -> bool [H, W], the mask pixels that touch a non-mask pixel (4-neighbourhood)."""
    m = np.pad(mask.astype(bool), 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def draw_contour(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = RED, scale: int = 1
                 ) -> np.ndarray:
    """uint8 [H, W, 3] with the contour of bool ``mask`` [H, W] drawn in ``color``; upscaled by ``scale``
    first (nearest) so a 1-px contour does not hide a 64-px image's defect."""
    if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
        mask = mask.repeat(scale, 0).repeat(scale, 1)
    out = image.copy()
    out[mask_contour(mask)] = color
    return out


def grid(tiles: list[np.ndarray], columns: int, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile equally sized uint8 [h, w, 3] images into a grid [rows*(h+pad), columns*(w+pad), 3]."""
    if not tiles:
        raise ValueError("no tiles")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, dtype=np.uint8)
    for n, t in enumerate(tiles):
        r, c = divmod(n, columns)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = t
    return out


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a PNG atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)
    return path
