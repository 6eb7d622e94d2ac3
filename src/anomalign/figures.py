"""Pictures of what was generated: mask contours drawn on images, and grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anomalign.files import save_png  # noqa: F401  (re-exported: figures are saved with it)

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



def line_plot(series: dict[str, tuple[list[float], list[float]]], path: Path, title: str = "",
              size: tuple[int, int] = (560, 300), log_y: bool = False) -> Path:
    """Line chart of named (x, y) series with axes ranges and a legend, as a PNG (PIL only)."""
    from PIL import ImageDraw

    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    w, h = size
    left, right, top = 60, 10, 24
    img = Image.new("RGB", (w, h + 14 * len(series)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 4), title, fill="black")
    xs = [x for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1] if np.isfinite(y) and (y > 0 or not log_y)]
    if not xs or not ys:
        draw.text((left, top + 20), "no data", fill="black")
        return save_png(np.asarray(img), path)
    f = (lambda v: np.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = f(min(ys)), f(max(ys)) if f(max(ys)) > f(min(ys)) else f(min(ys)) + 1
    pw, ph = w - left - right, h - top - 40

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (f(y) - y0) / (y1 - y0)) * ph

    draw.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    for v, label in ((y0, min(ys)), (y1, max(ys))):
        draw.text((4, top + (1 - (v - y0) / (y1 - y0)) * ph - 6), f"{label:.3g}", fill="black")
    draw.text((left, top + ph + 4), f"{x0:g}", fill="black")
    draw.text((left + pw - 30, top + ph + 4), f"{x1:g}", fill="black")
    for k, (name, (sx, sy)) in enumerate(series.items()):
        c = colors[k % len(colors)]
        pts = [px(x, y) for x, y in zip(sx, sy) if np.isfinite(y) and (y > 0 or not log_y)]
        if len(pts) > 1:
            draw.line(pts, fill=c, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=c)
        ly = h - 16 + 14 * k
        draw.rectangle([left, ly, left + 10, ly + 8], fill=c)
        draw.text((left + 16, ly - 2), name, fill="black")
    return save_png(np.asarray(img), path)
