"""Decoding images and masks from disk, with errors that name the file and the problem.

Mask binarization rule (one place, documented in docs/data.md):
- mode "1": used as is; mode "P" (palette): the palette index, nonzero = anomaly;
- colour masks: the maximum over the colour channels (a red mask on black counts);
- values are scaled to [0, 1] by the bit depth (255 for 8-bit, 65535 for 16-bit) and
  thresholded at ``threshold`` (default 0.5: the geometric edge of an anti-aliased mask);
- class-id masks (VisA, or any lossless mask whose values are integers <= 15 with at most 4
  distinct values, e.g. 0/1 PNGs)
  are binarized as nonzero = anomaly. JPEG masks never take this path: their noise near 0 would
  turn into false anomalies.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalign.data.sample import LOSSLESS_EXTS, Problem
from anomalign.errors import DataError

DEFAULT_MASK_THRESHOLD = 0.5
# Largest image decoded, in megapixels. Decided from the header, before any pixel is decoded: a 164 KB PNG
# can claim 13 000 x 13 000 px and take gigabytes to decode. Raised with --max-megapixels.
DEFAULT_MAX_MEGAPIXELS = 100.0
_max_pixels = int(DEFAULT_MAX_MEGAPIXELS * 1e6)
_MAX_ID_VALUE = 15
_MAX_ID_COUNT = 4  # class-id masks hold few ids; anti-aliased faint masks hold many values


class FileProblem(DataError):
    """Raised when one file cannot be used; ``problem`` says which file and why."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


def set_max_megapixels(megapixels: float) -> None:
    """Set the largest image (in megapixels) that ``open_image`` decodes, for this process.

    Process-wide, like PIL's own ``Image.MAX_IMAGE_PIXELS``: commands set it from ``--max-megapixels``
    before reading data, so every reader and loader applies the same limit.
    """
    global _max_pixels
    if not megapixels > 0:
        raise ValueError(f"max megapixels must be > 0, got {megapixels}")
    _max_pixels = int(megapixels * 1e6)
    # PIL refuses images over 2x its own limit while opening the header; keep its check above ours so the
    # size decision (and the message) is ours.
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < _max_pixels:
        Image.MAX_IMAGE_PIXELS = _max_pixels


def _too_large(path: Path, size: str) -> FileProblem:
    return FileProblem(Problem(path, "too-large", f"image too large: {size}, over the limit of "
                                                  f"{_max_pixels / 1e6:g} MP; nothing was decoded (raise the "
                                                  "limit with --max-megapixels if the image is genuine)"))


def check_scaled_size(path: Path, width: int, height: int, scale: float, flag: str = "--scale") -> None:
    """Refuse an image whose size after resampling by ``scale`` is over the megapixel limit: the limit guards
    the memory a command uses, and that is set by the resampled image, not by the file."""
    pixels = width * scale * height * scale
    if pixels > _max_pixels:
        raise DataError(f"{path}: {width} x {height} px at {flag} {scale:g} is {round(width * scale)} x "
                        f"{round(height * scale)} px ({pixels / 1e6:,.0f} MP), over the limit of "
                        f"{_max_pixels / 1e6:g} MP; nothing was computed (lower {flag}, or raise --max-megapixels "
                        "if the machine has the memory)")


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header only, under the same checks and limit as ``open_image``
    (a file that is no image, empty, or over the megapixel limit raises FileProblem); nothing is decoded."""
    with open_image(path, decode=False) as im:
        return im.size


def open_image(path: Path, decode: bool = True) -> Image.Image:
    """Open and fully decode ``path`` (so truncation is detected here, not mid-training).

    Images over the size limit (``set_max_megapixels``) are refused from their header, before decoding.
    ``decode=False``: the header only (the caller closes the image).
    """
    path = Path(path)
    if path.is_dir():  # else PIL's "[Errno 21] Is a directory" would be reported as corrupt image data
        raise FileProblem(Problem(path, "not-a-file", "is a folder, not an image file; give the image files, or the "
                                                      "folder to a command that reads folders"))
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileProblem(Problem(path, "unreadable", f"cannot read file ({e.strerror or e})")) from None
    if size == 0:
        raise FileProblem(Problem(path, "zero-byte", "file is empty (0 bytes)"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBomb / palette warnings
            im = Image.open(path)  # reads the header only
            if im.width * im.height > _max_pixels:
                im.close()
                raise _too_large(path, f"{im.width} x {im.height} px ({im.width * im.height / 1e6:,.0f} MP)")
            if decode:
                im.load()
    except Image.DecompressionBombError as e:  # PIL's own header check fired first (over 2x its limit)
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, f"{int(pixels[1]) / 1e6:,.0f} MP" if pixels else "its header claims more pixels than PIL allows") from None
    except UnidentifiedImageError:
        raise FileProblem(Problem(path, "unreadable", "not an image PIL can decode (corrupt or wrong format)")) from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        text = str(e)
        kind = "truncated" if "truncat" in text.lower() or isinstance(e, EOFError) else "unreadable"
        what = "image file is truncated" if kind == "truncated" else "image data is corrupt"
        raise FileProblem(Problem(path, kind, f"{what} ({text})")) from None
    return im


def _to_uint8_array(im: Image.Image) -> np.ndarray:
    """HxW or HxWxC uint8 array, rescaling 16-bit and float images instead of clipping them."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im)


def read_image(path: Path) -> np.ndarray:
    """Decode an image as RGB. Returns uint8 array [H, W, 3]. Grey and 16-bit images are expanded."""
    im = open_image(path)
    if im.mode in ("RGB",):
        return np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
        arr = _to_uint8_array(im) if im.mode != "1" else np.asarray(im).astype(np.uint8) * 255
        return np.repeat(arr[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def mask_values(im: Image.Image) -> tuple[np.ndarray, float]:
    """Raw mask values [H, W] (float64) and the full-scale value of its bit depth."""
    if im.mode == "1":
        return np.asarray(im, dtype=np.float64), 1.0
    if im.mode == "P":
        return np.asarray(im, dtype=np.float64), 255.0
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.float64), 65535.0
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        if im.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        return arr, top
    if im.mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.float64), 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    return rgb.max(axis=2), 255.0


def binarize(values: np.ndarray, full_scale: float, *, path: Path | None = None, mode: str = "",
             threshold: float = DEFAULT_MASK_THRESHOLD, ids: bool | None = None) -> np.ndarray:
    """Binarize raw mask values (see module docstring). Returns bool [H, W]."""
    if ids is None:
        lossless = path is None or path.suffix.lower() in LOSSLESS_EXTS
        top = values.max(initial=0)
        ids = mode == "P" or (lossless and mode != "1" and 0 < top <= _MAX_ID_VALUE
                              and np.array_equal(values, np.round(values))
                              and len(np.unique(values)) <= _MAX_ID_COUNT)
    if ids:
        return values > 0
    return values / full_scale >= threshold


def load_mask(path: Path, threshold: float = DEFAULT_MASK_THRESHOLD, ids: bool | None = None) -> np.ndarray:
    """Decode and binarize a mask in any mode (1, L, P, RGB, 16-bit). Returns bool [H, W]."""
    im = open_image(path)
    values, top = mask_values(im)
    return binarize(values, top, path=Path(path), mode=im.mode, threshold=threshold, ids=ids)
