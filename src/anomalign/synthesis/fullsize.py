"""``generate --normals``: synthetic defects generated inside full-size normal images (native resolution).

Attempt i takes normal image ``i mod #normals``, its source mask (augmented at the mask's own resolution,
then cut to the defect's bounding box), a location on the normal image's foreground
(``synthesis.placement``), and a square window around it of R / scale native px, R the generator's resolution
and scale the one it was fine-tuned at (larger if the defect and its context need it; the window is resized to R
for generation and back). The defect is generated in the window by the inpainting sampler and pasted back
through the region only (``generator.window.seamless_masks``: the mask with a soft context band, zero on the
window's border ring): every other pixel of the normal image keeps its value. Grayscale normal images stay
grayscale.

Anomalous hosts (``generate --hosts anomalous``, for datasets without normal images such as CrackForest):
the host's own mask is kept. Its defect pixels, grown by ``host_gap`` px, are taken out of the foreground, so
a new defect never touches an existing one, and the written mask is the union of the host's mask and the new
defect.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomalign.data.transforms import is_grey
from anomalign.errors import DataError
from anomalign.generator.window import paste_window, window_around, window_pad, window_side, window_tensors
from anomalign.synthesis.placement import estimate_foreground, place


@dataclass
class Placement:
    """Where attempt i's defect went: normal image ``normal``, defect top-left (y, x) and size (h, w), and
    the generation window (top, left, side) in that image's pixels."""
    normal: int
    y: int
    x: int
    h: int
    w: int
    top: int
    left: int
    side: int
    shrink: float = 1.0  # < 1: the defect was scaled down to fit the image's shorter side


class NormalImages:
    """Full-size host images (decoded on demand, a few kept) with their foreground masks.

    ``foreground_dir``: optional folder of foreground masks named like the images (``<stem>.png`` or any
    image extension); otherwise ``placement.estimate_foreground``.

    ``host_masks``: per image, the anomaly mask of an anomalous host as (file, holds class ids), or None for a
    normal image: kept in the written mask and, grown by ``host_gap`` px, removed from the foreground.
    """

    def __init__(self, files: list[Path], foreground_dir: Path | None = None, keep: int = 8,
                 host_masks: list | None = None, host_gap: int = 8, mask_threshold: float = 0.5):
        self.files, self.foreground_dir, self.keep = list(files), foreground_dir, keep
        self.host_masks = list(host_masks) if host_masks is not None else [None] * len(self.files)
        if len(self.host_masks) != len(self.files):
            raise ValueError("host_masks needs one entry (a mask file or None) per image")
        self.host_gap, self.mask_threshold = host_gap, mask_threshold
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._fg: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}  # every foreground, bit-packed: placement
        # tries up to 10 images x 3 scales per defect, and estimating a foreground costs ~0.5 s at 0.15 MP

    def __len__(self) -> int:
        return len(self.files)

    def get(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image [H, W, 3] and bool foreground [H, W] of normal image j."""
        if j not in self._cache:
            from anomalign.data.imageio import read_image
            image = read_image(self.files[j])
            if j in self._fg:
                bits, shape = self._fg[j]
                fg = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
            else:
                fg = self._foreground(j, image)
                self._fg[j] = (np.packbits(fg), fg.shape)
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[j] = (image, fg)
        return self._cache[j]

    def _foreground(self, j: int, image: np.ndarray) -> np.ndarray:
        from anomalign.data.imageio import load_mask
        existing = self.existing(j)
        if existing is not None and existing.shape != image.shape[:2]:
            raise DataError(f"{self.host_masks[j][0]}: mask is {existing.shape[1]}x{existing.shape[0]} but the "
                            f"image is {image.shape[1]}x{image.shape[0]}")
        if self.foreground_dir is not None:
            found = foreground_file(self.files[j], self.foreground_dir)
            if found is None:  # checked before the run starts (foreground_problems); kept for direct use
                raise DataError(f"{self.files[j]}: no foreground mask named {self.files[j].stem}.* in "
                                f"{self.foreground_dir}")
            fg = load_mask(found)
            if fg.shape != image.shape[:2]:
                raise DataError(f"{found}: foreground mask is {fg.shape[1]}x{fg.shape[0]} but the image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        else:
            fg = estimate_foreground(image, ignore=existing)
        return fg & ~grow(existing, self.host_gap) if existing is not None else fg

    def existing(self, j: int) -> np.ndarray | None:
        """bool [H, W] anomaly mask of host j (an anomalous host), or None for a normal image."""
        if self.host_masks[j] is None:
            return None
        from anomalign.data.imageio import load_mask
        file, ids = self.host_masks[j]
        return load_mask(file, self.mask_threshold, ids)

    def full_mask(self, p: "Placement", defect: np.ndarray) -> np.ndarray:
        """uint8 [H, W] (0/255) mask of the written image: the placed defect, united with the host's own mask."""
        image, _ = self.get(p.normal)
        mask = np.zeros(image.shape[:2], bool)
        mask[p.y:p.y + p.h, p.x:p.x + p.w] = defect
        existing = self.existing(p.normal)
        if existing is not None:
            mask |= existing
        return mask.astype(np.uint8) * 255

    def record(self, p: "Placement") -> dict:
        """Metadata of a placement: the host image (and its own mask, if anomalous), defect box and scale."""
        host = self.host_masks[p.normal]
        return {"normal_image": str(Path(self.files[p.normal]).resolve()),
                "host_mask": str(Path(host[0]).resolve()) if host is not None else None,
                "defect_box": [p.y, p.x, p.h, p.w], "defect_scale": p.shrink}


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """bool [H, W] mask dilated by ``px`` pixels (square neighbourhood)."""
    if px <= 0 or not mask.any():
        return mask
    t = torch.from_numpy(mask).float()[None, None]
    return F.max_pool2d(t, 2 * px + 1, 1, px)[0, 0].numpy() > 0.5


def piece_rng(seed: int, i: int) -> random.Random:
    """The stream that picks attempt i's defect piece (``defect_box``): the same for both synthesizers."""
    return random.Random(f"{seed}:{i}:piece")


def defect_box(mask: np.ndarray, limit: int | None = None, rng: random.Random | None = None
               ) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1): the box of bool mask [H, W] that becomes the defect: the bounding box of its anomaly
    pixels, or, when ``limit`` is set and that box is longer than ``limit`` px, a piece of at most
    ``limit`` x ``limit`` px around an anomaly pixel drawn with ``rng`` (trimmed to the pixels it holds). Long
    thin defects (road cracks) then keep their native width instead of being scaled down to fit a window."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if limit is None or max(y1 - y0, x1 - x0) <= limit:
        return int(y0), int(x0), int(y1), int(x1)
    k = (rng or random.Random(0)).randrange(len(ys))
    top = min(max(y0, ys[k] - limit // 2), max(y0, y1 - limit))
    left = min(max(x0, xs[k] - limit // 2), max(x0, x1 - limit))
    piece = mask[top:top + limit, left:left + limit]
    py, px = np.nonzero(piece)
    return (int(top + py.min()), int(left + px.min()), int(top + py.max() + 1), int(left + px.max() + 1))


def defect_shape(mask: torch.Tensor, limit: int | None = None, rng: random.Random | None = None) -> np.ndarray:
    """bool [h, w]: the anomaly pixels of an augmented source mask [1, H, W] inside ``defect_box``."""
    m = mask[0].numpy() > 0.5
    y0, x0, y1, x1 = defect_box(m, limit, rng)
    return m[y0:y1, x0:x1]


def fit_defect(defect: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """bool [h, w] defect scaled down (nearest) so that its longer side fits ``side`` px — a square generation
    window must hold it inside the image; (defect, scale applied)."""
    h, w = defect.shape
    if max(h, w) <= side:
        return defect, 1.0
    scale = side / max(h, w)
    out = np.asarray(Image.fromarray(defect.astype(np.uint8) * 255).resize(
        (max(1, int(w * scale)), max(1, int(h * scale))), Image.NEAREST)) > 127
    return out, scale  # may have no pixel left (a thin defect shrunk a lot): then it does not fit


def plan(i: int, seed: int, defect: np.ndarray, normals: NormalImages, size: int, tries: int = 200,
         normals_to_try: int = 10, scale: float = 1.0, margin: float = 0.0) -> tuple[Placement, np.ndarray] | None:
    """Placement of attempt i: normal image i mod N (or one of the next ones if the defect does not fit
    on its foreground), a location drawn from ``(seed, i)``, and the generation window; also the defect as
    placed: scaled down when longer than the image's shorter side, and to a half or a quarter of that side
    when it fits no foreground otherwise (``Placement.shrink`` records the scale). None when it fits on none
    of the images tried: the attempt is skipped and counted, the run goes on.

    The window (``generator.window.window_side``) covers ``size`` / ``scale`` native px, widened until the
    defect and its context band (``margin``) fit, and is placed so the band stays clear of its sides inside the
    image (``window_pad``); ``scale`` 1 and ``margin`` 0 give the old window of ``size`` px."""
    rng = random.Random(f"{seed}:{i}:placement")
    for extra in (1.0, 0.5, 0.25):  # a defect covering most of an image may only fit the foreground smaller
        for step in range(min(normals_to_try, len(normals))):
            j = (i + step) % len(normals)
            image, fg = normals.get(j)
            fitted, shrink = fit_defect(defect, int(min(image.shape[:2]) * extra))
            if not fitted.any():
                continue
            spot = place(fitted, fg, rng, tries)
            if spot is not None:
                y, x = spot
                h, w = fitted.shape
                side = window_side(h, w, size, *image.shape[:2], scale, margin)
                pad = window_pad(h, w, side, size, margin)
                top, left, side = window_around(y, x, h, w, side, *image.shape[:2], rng, pad)
                return Placement(j, y, x, h, w, top, left, side, shrink), fitted
    return None


def window_inputs(p: Placement, defect: np.ndarray, normals: NormalImages, size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation inputs of a placement at the generator's resolution R: the normal window [3, R, R] in
    [-1, 1] and the defect mask in it [1, R, R] in {0, 1} (``generator.window.window_tensors``)."""
    image, _ = normals.get(p.normal)
    mask = np.zeros((p.side, p.side), np.float32)
    mask[p.y - p.top:p.y - p.top + p.h, p.x - p.left:p.x - p.left + p.w] = defect
    return window_tensors(image, p.top, p.left, p.side, mask, size)


def window_keep(p: Placement, normals: NormalImages, size: int) -> torch.Tensor:
    """[1, R, R] in {0, 1}: the window's pixels off the host's foreground (a frame, a plain background, an
    anomalous host's own defects and their gap), which the context band must leave as they are; a window cell
    counts as kept if any of its native pixels is (thin cracks survive the reduction to R)."""
    from anomalign.generator.window import keep_tensor
    _, fg = normals.get(p.normal)
    return keep_tensor(~fg[p.top:p.top + p.side, p.left:p.left + p.side], size)


def window_edges(p: Placement, normals: NormalImages) -> tuple[bool, bool, bool, bool]:
    """Which sides of the placement's window (top, bottom, left, right) lie on its image's edge."""
    from anomalign.generator.window import open_edges
    return open_edges(p.top, p.left, p.side, *normals.get(p.normal)[0].shape[:2])


def compose(p: Placement, defect: np.ndarray, window_u8: np.ndarray, region: torch.Tensor, normals: NormalImages
            ) -> tuple[np.ndarray, np.ndarray]:
    """Full-size image uint8 [H, W] (grayscale normals) or [H, W, 3] and mask uint8 [H, W] (0/255, the defect's
    own pixels, and the host's own mask for an anomalous host): the generated window [R, R, 3] pasted into the
    normal image through the inpainting region [1, R, R] only, blended by it where it is soft
    (``generator.window.paste_window``), so every pixel where it is 0 keeps its value."""
    image, _ = normals.get(p.normal)
    full = paste_window(image, window_u8, region, p.top, p.left, p.side)
    return (full[..., 0] if is_grey(image) else full), normals.full_mask(p, defect)


def unplaceable_record(i: int, source, shape: tuple[int, int]) -> dict:
    """The record of attempt i whose defect (bool [h, w] of ``shape``) fits on no host image: not kept, with the
    reason, so the run's summary can count such attempts instead of stopping at the first one."""
    return {"index": i, "kept": False, "reason": "unplaceable", "defect": source.defect,
            "category": source.category, "prompt": source.prompt, "normal": False,
            "source_mask": str(Path(source.mask).resolve()), "defect_size": [int(shape[0]), int(shape[1])],
            "scores": {}}


def foreground_file(image: Path, folder: Path) -> Path | None:
    """The ``--foreground`` mask of a host image: ``folder/<stem>.*`` (the first by name), or None."""
    found = sorted(Path(folder).glob(Path(image).stem + ".*"))
    return found[0] if found else None


def foreground_problems(images: list[Path], folder: Path) -> list:
    """Problems (``data.sample.Problem``) of the ``--foreground`` masks of host images, from headers only: a
    missing mask, or one whose size differs from its image's."""
    from anomalign.data.imageio import FileProblem, header_size
    from anomalign.data.sample import Problem
    problems = []
    for image in images:
        fg = foreground_file(image, folder)
        if fg is None:
            problems.append(Problem(image, "no-foreground", f"no foreground mask named {Path(image).stem}.* in {folder}"))
            continue
        try:
            size, want = header_size(fg), header_size(image)
        except FileProblem as e:
            problems.append(e.problem)
            continue
        if size != want:
            problems.append(Problem(fg, "size-mismatch", f"foreground mask is {size[0]}x{size[1]} but the image "
                                                         f"{Path(image).name} is {want[0]}x{want[1]}"))
    return problems
