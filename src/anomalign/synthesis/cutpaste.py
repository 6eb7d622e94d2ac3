"""``generate --synthesizer cutpaste``: the baseline a practitioner tries first — real defect pixels pasted
with their masks into normal images, no generator.

Attempt i takes the same source pair and the same mask augmentation as the diffusion synthesizer would
(``augment_pair`` moves the source image through the mask's ops with the same draws), cuts the anomaly
pixels out of the augmented source image, and pastes them, hard-edged, into

- a full-size normal image (``--normals``; location on the foreground by ``synthesis.placement``, exactly
  as the diffusion path places its defects, scaled down the same way when a defect does not fit), or
- a normal image resized to ``--resolution`` (``--background``).

Every pixel outside the mask keeps the normal image's value; grey normal images stay grey. Records carry
``"synthesizer": "cutpaste"``, the source image and mask, the augmentation and the placement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomalign.data.transforms import from_model_range, grey_u8, is_grey, resize_images, to_model_range
from anomalign.errors import DataError
from anomalign.synthesis.augment import augment_pair
from anomalign.training import sample_seed


def source_images(sources, masks, mask_threshold: float) -> list[torch.Tensor]:
    """The image of each mask source as float [3, H, W] in [-1, 1] at its mask's size (masks: [1, H, W] each,
    full-size or resized); an error naming the mask when a source has no image (a bare mask folder)."""
    from anomalign.data.imageio import read_image
    out = []
    for s, m in zip(sources, masks):
        if s.image is None:
            raise DataError(f"{s.mask}: cut-paste needs the image of each mask; pass a dataset (not a folder of "
                            "masks) as --masks")
        x = to_model_range(read_image(s.image))
        if x.shape[-2:] != m.shape[-2:]:
            x = resize_images(x[None], tuple(m.shape[-2:]))[0].clamp(-1, 1)
        out.append(x)
    return out


def paste_pixels(target: np.ndarray, pixels: np.ndarray, mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """Copy of uint8 ``target`` [H, W, 3] with ``pixels`` [h, w, 3] written where bool ``mask`` [h, w] is set,
    at top-left (y, x); a grey target gets grey pixels."""
    out = target.copy()
    if is_grey(target):
        pixels = np.repeat(grey_u8(pixels)[..., None], 3, axis=2)
    box = out[y:y + mask.shape[0], x:x + mask.shape[1]]
    box[mask] = pixels[mask]
    return out


def _resize_u8(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(pixels).resize((shape[1], shape[0]), Image.BILINEAR))


class CutPaste:
    """Produces attempts like ``generate.Synthesizer`` (same ``run`` contract), from real pixels.

    ``masks``: per source [1, H, W] (full size with ``normals``, else R x R); ``images``: the same geometry,
    [3, H, W] in [-1, 1]; ``backgrounds``: (files, images [M, 3, R, R]) or None; ``normals``: a
    ``fullsize.NormalImages`` or None; ``oracle``: optional segmenter for the ``oracle`` score.
    """

    def __init__(self, cfg, sources, masks, images, backgrounds, normals, oracle=None):
        self.cfg, self.sources, self.masks, self.images = cfg, sources, masks, images
        self.backgrounds, self.normals, self.oracle = backgrounds, normals, oracle
        self.usable = [k for k in range(len(sources)) if masks[k].any()]

    def conditioning(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, list[str]]:
        """(source index, augmented mask [1, H, W], augmented image [3, H, W], ops): the same source and mask
        as the diffusion synthesizer's attempt i (same seed stream)."""
        k = self.usable[i % len(self.usable)]
        g = torch.Generator().manual_seed(sample_seed(self.cfg.seed, i, 1))
        mask, image, ops = augment_pair(self.masks[k], self.images[k], self.cfg.augment, g)
        return k, mask, image, ops

    @torch.no_grad()
    def run(self, attempts: list[int]) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
        from anomalign.synthesis.fullsize import defect_box, piece_rng, plan, unplaceable_record
        cfg, out = self.cfg, []
        for i in attempts:
            k, mask, image, ops = self.conditioning(i)
            src = self.sources[k]
            m = mask[0].numpy() > 0.5
            pix = from_model_range(image[None])[0]
            rec = {"index": i, "kept": True, "defect": src.defect, "category": src.category, "prompt": src.prompt,
                   "normal": False, "synthesizer": "cutpaste", "source_mask": str(Path(src.mask).resolve()),
                   "source_image": str(Path(src.image).resolve()), "mask_augment": ops}
            if self.normals is not None:
                y0, x0, y1, x1 = defect_box(m, cfg.max_defect_size, piece_rng(cfg.seed, i))
                defect, box = m[y0:y1, x0:x1], pix[y0:y1, x0:x1]
                placed = plan(i, cfg.seed, defect, self.normals, max(defect.shape))
                if placed is None:
                    out.append((unplaceable_record(i, src, defect.shape), None, None))
                    continue
                p, fitted = placed
                if fitted.shape != defect.shape:  # scaled down to fit: the pixels follow the mask
                    box = _resize_u8(box, fitted.shape)
                normal, _ = self.normals.get(p.normal)
                image_u8 = paste_pixels(normal, box, fitted, p.y, p.x)
                mask_u8 = self.normals.full_mask(p, fitted)
                if is_grey(normal):
                    image_u8 = image_u8[..., 0]
                rec |= self.normals.record(p) | {"resolution": [int(mask_u8.shape[0]), int(mask_u8.shape[1])]}
            else:
                files, backgrounds = self.backgrounds
                bg = from_model_range(backgrounds[i % len(files)][None])[0]
                image_u8 = paste_pixels(bg, pix, m, 0, 0)
                mask_u8 = m.astype(np.uint8) * 255
                if is_grey(bg):
                    image_u8 = image_u8[..., 0]
                rec |= {"background": str(Path(files[i % len(files)]).resolve()), "resolution": int(m.shape[0])}
            rec["scores"] = self._scores(image_u8, mask_u8)
            name = f"{src.defect}/{i:07d}.png"
            rec = {"file_name": f"images/{name}", "mask_file_name": f"masks/{name}", **rec}
            if cfg.min_alignment is not None:
                rec["kept"] = rec["scores"]["oracle_iou"] >= cfg.min_alignment
            out.append((rec, image_u8 if rec["kept"] else None, mask_u8 if rec["kept"] else None))
        return out

    def _scores(self, image_u8: np.ndarray, mask_u8: np.ndarray) -> dict[str, float]:
        if self.oracle is None:
            return {}
        from anomalign.synthesis.scoring import oracle_scores
        rgb = image_u8 if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, axis=2)
        x, m = to_model_range(rgb)[None], torch.from_numpy(mask_u8 > 127).float()[None, None]
        return {"oracle_iou": oracle_scores(self.oracle, x, m)[0]}
