"""The diffusion synthesizer of ``anomalign generate``: attempt i -> (record, image, mask), drawn by the
mask-conditioned generator (``generator.sampler.sample``) and scored (``synthesis.scoring``).

``synthesis.cutpaste`` is the other synthesizer (real defect pixels pasted); ``synthesis.generate`` runs
either over the attempts, writes and resumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomalign.generator.window import seamless_masks
from anomalign.synthesis.augment import augment_mask
from anomalign.synthesis.options import GenerateConfig
from anomalign.synthesis.sources import MaskSource
from anomalign.training import sample_seed


class DiffusionSynthesizer:
    """The generator draws each defect: everything needed to produce attempt i (loaded once per process), in
    one of three placements: the generator's own window (the mask alone), a ``--background`` image (inpainting)
    or a window of a full-size ``--normals`` image (``synthesis.fullsize``), pasted back."""

    def __init__(self, cfg: GenerateConfig, gen, sources: list[MaskSource], masks, backgrounds, oracle,
                 generator_sha: str, normals=None):
        """``masks``: [N, 1, R, R] at the generator's resolution, or (with ``normals``, a ``NormalImages``) a
        list of full-size masks [1, H_k, W_k]; ``backgrounds``: (files, images [M, 3, R, R]) or None."""
        self.cfg, self.gen, self.sources, self.masks = cfg, gen, sources, masks
        self.backgrounds, self.oracle, self.generator_sha = backgrounds, oracle, generator_sha
        self.normals = normals
        from anomalign.generator.sampler import x0_bound_of
        self.x0_bound = x0_bound_of(gen, cfg.x0_clip)  # the bound actually used, recorded per sample
        self.usable = [k for k in range(len(sources)) if masks[k].any()]
        # The scale the generator saw its training crops at: a full-size window covers resolution / scale native px.
        self.scale = cfg.scale if cfg.scale is not None else float(gen.spec.get("scale") or 1.0)

    def conditioning(self, i: int) -> tuple[int, torch.Tensor, list[str]]:
        """(source index, mask [1, H, W], augmentations applied) of attempt i."""
        k = self.usable[i % len(self.usable)]
        g = torch.Generator().manual_seed(sample_seed(self.cfg.seed, i, 1))
        mask, ops = augment_mask(self.masks[k], self.cfg.augment, g)
        return k, mask, ops

    def run(self, attempts: list[int]) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
        """Generate and score ``attempts``; returns (record, image uint8 [H, W, 3], mask uint8 [H, W]) each.

        Batched network calls can differ from unbatched ones by float rounding (kernels sum in another
        order); ``batch_invariant`` trades speed for bit-identical results.
        """
        plans, skipped = {}, []
        if self.normals is not None:  # full size: where each defect goes, and which fit nowhere
            plans = self.placements(attempts)
            skipped = [i for i in attempts if plans[i][0] is None]
            attempts = [i for i in attempts if plans[i][0] is not None]
        if self.cfg.batch_invariant:
            made = [r for i in attempts for r in self._run([i], plans)]
        else:
            made = self._run(attempts, plans) if attempts else []
        if skipped:
            from anomalign.synthesis.fullsize import unplaceable_record
            made += [(unplaceable_record(i, self.sources[self.conditioning(i)[0]], plans[i][1].shape), None, None)
                     for i in skipped]
        return sorted(made, key=lambda r: r[0]["index"])

    def placements(self, attempts: list[int]) -> dict[int, tuple]:
        """{attempt: (Placement or None when the defect fits on no host, the defect bool [h, w] as placed)}."""
        from anomalign.synthesis.fullsize import defect_shape, piece_rng, plan
        cfg = self.cfg
        size = self.gen.resolution if cfg.resolution is None else cfg.resolution
        out = {}
        for i in attempts:
            defect = defect_shape(self.conditioning(i)[1], cfg.max_defect_size, piece_rng(cfg.seed, i))
            out[i] = plan(i, cfg.seed, defect, self.normals, size, scale=self.scale, margin=cfg.margin) or (None, defect)
        return out

    @torch.no_grad()
    def _run(self, attempts: list[int], plans: dict) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
        from anomalign.data.transforms import from_model_range, grey_u8
        from anomalign.generator.sampler import sample
        from anomalign.synthesis.scoring import free_lunch, oracle_scores

        cfg, gen = self.cfg, self.gen
        cond = [self.conditioning(i) for i in attempts]
        prompts = [self.sources[k].prompt for k, _, _ in cond]
        seeds = [sample_seed(cfg.seed, i, 0) for i in attempts]
        bg = region = alpha = placed = None
        if self.normals is not None:  # full size: a window of each normal image around the defect's location
            from anomalign.synthesis.fullsize import window_edges, window_inputs, window_keep
            size = gen.resolution if cfg.resolution is None else cfg.resolution
            placed, defects = [plans[i][0] for i in attempts], [plans[i][1] for i in attempts]
            bg, masks = map(torch.stack, zip(*(window_inputs(p, d, self.normals, size)
                                               for p, d in zip(placed, defects))))
            edges = [window_edges(p, self.normals) for p in placed]
            keep = torch.stack([window_keep(p, self.normals, size) for p in placed])
            region, alpha = seamless_masks(masks, cfg.margin, edges, cfg.dilate, cfg.feather, keep=keep)
        else:
            masks = torch.stack([m for _, m, _ in cond])
        if self.backgrounds is not None:  # the whole image is the window: its sides are the image's edges
            files, images = self.backgrounds
            bg_idx = [i % len(files) for i in attempts]
            bg = images[bg_idx]
            region, alpha = seamless_masks(masks, cfg.margin, [(True,) * 4] * len(attempts), cfg.dilate, cfg.feather)
        # A soft region is pasted at full size from the raw decoded window (blended there, at native resolution,
        # not twice); the window's own composite is what the scores see.
        raw_paste = placed is not None and cfg.margin > 0
        fake = sample(gen, masks, prompts, seeds, cfg.scheduler, cfg.steps, cfg.guidance, background=bg,
                      region=region, resample=cfg.resample, feather_px=cfg.feather, x0_clip=cfg.x0_clip,
                      alpha=alpha, composite=not raw_paste).float().cpu()
        decoded = fake
        if raw_paste:
            fake = alpha * fake + (1 - alpha) * bg
        scores: dict[str, list[float]] = {}
        if "free-lunch" in cfg.scores:
            fl = free_lunch(gen, fake, masks, prompts, shift=masks.shape[-1] // 4,
                            noise_seeds=[sample_seed(cfg.seed, i, 3) for i in attempts])
            scores["free_lunch"] = fl["score"].tolist()
            scores["loss_true_mask"] = fl["true"].tolist()
            scores["loss_moved_mask"] = fl["moved"].tolist()
            scores["loss_empty_mask"] = fl["empty"].tolist()
        if "oracle" in cfg.scores:
            scores["oracle_iou"] = oracle_scores(self.oracle, fake, masks)
        key = {"free-lunch": "free_lunch", "oracle": "oracle_iou"}[cfg.filter_score(self.oracle is not None)]
        images_u8 = from_model_range(fake)
        out = []
        for j, (i, (k, mask, ops)) in enumerate(zip(attempts, cond)):
            src = self.sources[k]
            row_scores = {name: float(v[j]) for name, v in scores.items()}
            kept = cfg.min_alignment is None or row_scores[key] >= cfg.min_alignment
            name = f"{src.defect}/{i:07d}.png"
            rec = {"file_name": f"images/{name}", "mask_file_name": f"masks/{name}", "index": i, "kept": kept,
                   "defect": src.defect, "category": src.category, "prompt": src.prompt, "normal": False,
                   "seed": seeds[j], "source_mask": str(Path(src.mask).resolve()),
                   "source_image": str(Path(src.image).resolve()) if src.image else None, "mask_augment": ops,
                   "background": (str(Path(self.backgrounds[0][i % len(self.backgrounds[0])]).resolve())
                                  if self.backgrounds is not None else None),
                   "generator": str(Path(cfg.generator).resolve()), "generator_sha256": self.generator_sha,
                   "scheduler": cfg.scheduler, "steps": cfg.steps, "guidance": cfg.guidance,
                   "x0_clip": self.x0_bound, "resolution": int(masks.shape[-1]), "scores": row_scores}
            image_u8, m_u8 = images_u8[j], (masks[j, 0].numpy() > 0.5).astype(np.uint8) * 255
            if gen.spec.get("grayscale"):  # a generator trained on grey data writes grey images
                image_u8 = grey_u8(image_u8)
            if placed is not None:
                from anomalign.synthesis.fullsize import compose
                p = placed[j]
                window_u8 = from_model_range(decoded[j:j + 1])[0] if raw_paste else images_u8[j]
                image_u8, m_u8 = compose(p, defects[j], window_u8, alpha[j] if raw_paste else region[j], self.normals)
                rec |= self.normals.record(p) | {"window": [p.top, p.left, p.side], "window_scale": self.scale,
                                                 "resolution": [int(m_u8.shape[0]), int(m_u8.shape[1])]}
            out.append((rec, image_u8 if kept else None, m_u8 if kept else None))
        return out
