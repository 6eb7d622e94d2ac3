"""What the segmenter trainer feeds the shared loop: real/synthetic batches and the Eq. 6-11 step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from anomalign.data.crops import CropPairs
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.transforms import DihedralViews, photometric_jitter
from anomalign.generator.task import LatentPairs, seeded_draws
from anomalign.segmenter.losses import loss_ce, loss_dice, loss_feedback, loss_seg, soft_mask
from anomalign.training import TrainTask, batch_indices, sample_seed


class SegPairs(DihedralViews):
    """The pairs of one source (real or synthetic) as tensors at the segmenter size, with exact dihedral
    views: images [N, 3, S, S] in [-1, 1], masks [N, 1, S, S] in {0, 1}, prompts [N]."""

    def __init__(self, samples, size: int, augment: list[str], seed: int):
        ds = PairDataset(samples, size=size)
        super().__init__(*ds.tensors(), augment, seed)
        self.samples = ds.samples
        self.prompts = [default_prompt(s) for s in self.samples]

    def sample(self, k: int, i: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair i as seen at micro-step k: its dihedral view (the same for every batch position)."""
        return self.view(i, self.variant_of(k, i))


def feedback_latents(gen, real: SegPairs, augment: list[str], seed: int) -> LatentPairs:
    """z0 = E(x) of Eq. 10 for the real pairs' views: images [N, 3, S, S] resized to the frozen generator's
    resolution R (masks too, nearest), encoded to [C, R/f, R/f] per (pair, view) on first use and cached."""
    return LatentPairs(gen, resize_to(real.images, gen.resolution), resize_to(real.masks, gen.resolution, True),
                       real.prompts, augment, seed)


@dataclass
class SegStepOptions:
    anomaly_weight: float = 1.0
    temperature: float = 0.5
    w_fb: float = 1.0
    fb_t_min: int = 0
    fb_t_max: int = 500
    fb_every: int = 1
    fb_warmup_steps: int = 0
    fb_rows: int = 0
    dice_weight: float = 0.0
    synthetic_weight: float = 1.0


def segmenter_batch(real: SegPairs | CropPairs, syn: SegPairs | CropPairs | None, n_real: int, n_syn: int, seed: int,
                    k: int, rank: int, world: int, photometric: float = 0.0) -> dict:
    """This rank's share of global micro-batch k: {"image" [B, 3, S, S], "mask" [B, 1, S, S], "synthetic" [B]
    bool, "keys" (pair, view) of the real rows (which come first; the view is None for crops), "prompts" of the
    real rows, "step" k, "seeds" of the real rows}.

    Crops and feedback seeds follow each sample's place in the GLOBAL batch, as the generator's do, so
    a sample's crop and (ε, t) do not depend on the number of processes. ``photometric``: strength of the
    brightness/contrast/gamma jitter of every row (0 = off), seeded by the row's place too.
    """
    positions = list(range(n_real))[rank::world]
    idx_r = batch_indices(len(real), n_real, seed, k) if n_real else []
    crops = isinstance(real, CropPairs)
    keys = [(idx_r[p], None if crops else real.variant_of(k, idx_r[p])) for p in positions]
    xs, ms = zip(*(real.sample(k, idx_r[p], p) for p in positions)) if keys else ((), ())
    items = {"image": list(xs), "mask": list(ms), "synthetic": [False] * len(keys), "keys": keys,
             "prompts": [real.prompts[i] for i, _ in keys]}
    if n_syn:
        idx_s = batch_indices(len(syn), n_syn, seed + 1, k)
        for p in list(range(n_syn))[rank::world]:
            x, m = syn.sample(k, idx_s[p], n_real + p)
            items["image"].append(x)
            items["mask"].append(m)
            items["synthetic"].append(True)
    if photometric > 0:
        places = positions + list(range(n_real, n_real + n_syn))[rank::world]
        items["image"] = [photometric_jitter(x, sample_seed(seed, k, p), photometric)
                          for x, p in zip(items["image"], places)]
    items["image"], items["mask"] = torch.stack(items["image"]), torch.stack(items["mask"])
    items["synthetic"] = torch.tensor(items["synthetic"])
    items["step"], items["seeds"] = k, [sample_seed(seed, k, p) for p in positions]
    return items


def segmenter_step(model, batch: dict, o: SegStepOptions, fb=None) -> dict[str, torch.Tensor]:
    """Eq. 6 on every row; on feedback steps also Eq. 8-10 on the real rows (the first ``fb_rows`` of them, if
    set) and Eq. 11.

    ``fb``: the frozen generator's cached latents of the real pairs (``feedback_latents``), or, when training
    on crops, the frozen ``MaskGenerator`` itself (crops are encoded at each step); None without feedback.
    Returns {"loss", "l_ce", "l_fb"}; l_fb is NaN on steps without feedback (the log averages it over the
    steps where it ran).
    """
    device = next(model.parameters()).device
    x, m = batch["image"].to(device), batch["mask"].to(device)
    logits = model(x)
    synthetic = batch["synthetic"].to(device)
    l_ce = loss_ce(logits, m, synthetic, o.anomaly_weight, o.synthetic_weight)
    if o.dice_weight:  # not in the paper: an option for tiny defects (the logged l_ce includes it)
        rows = torch.where(synthetic, o.synthetic_weight, 1.0)  # w_syn = 1: every row 1, the paper's pooling
        l_ce = l_ce + o.dice_weight * loss_dice(logits, m, row_weight=rows)
    k = batch["step"]
    if fb is None or k < o.fb_warmup_steps or k % o.fb_every or not batch["keys"]:
        return {"loss": l_ce, "l_ce": l_ce, "l_fb": torch.full((), float("nan"), device=l_ce.device)}
    n = len(batch["keys"]) if not o.fb_rows else min(o.fb_rows, len(batch["keys"]))  # rows are in random order
    if isinstance(fb, LatentPairs):
        gen = fb.gen
        z0, _ = fb.latents(batch["keys"][:n])
    else:  # crops: each is seen once, so it is encoded now instead of cached
        gen = fb
        with torch.no_grad():
            z0 = gen.encode(resize_to(x[:n], gen.resolution)).float()
    m_soft = soft_mask(logits[:n], o.temperature)  # Eq. 8-9 on the REAL images
    if m_soft.shape[-1] != gen.resolution:
        m_soft = F.interpolate(m_soft, size=(gen.resolution, gen.resolution), mode="area")
    _, t, noise = seeded_draws(batch["seeds"][:n], z0.shape[1:], o.fb_t_min, o.fb_t_max)
    emb = gen.encode_prompts(batch["prompts"][:n])
    l_fb = loss_feedback(gen, z0.to(device), m_soft, emb, noise.to(device), t.to(device))
    return {"loss": loss_seg(l_ce, l_fb, o.w_fb), "l_ce": l_ce, "l_fb": l_fb}


def segmenter_task(model, real: SegPairs, syn: SegPairs | None, batch_size: int, synthetic_fraction: float,
                   seed: int, step_opts: SegStepOptions, fb, save_fn: Callable,
                   validate_fn: Callable | None = None, photometric: float = 0.0) -> TrainTask:
    """The TrainTask of a segmenter run: ``synthetic_fraction`` of each global batch from ``syn``."""
    n_syn = round(batch_size * synthetic_fraction) if syn is not None else 0
    n_real = batch_size - n_syn
    return TrainTask(params=list(model.parameters()),
                     get_batch=lambda k, rank, world: segmenter_batch(real, syn, n_real, n_syn, seed, k, rank, world,
                                                                    photometric),
                     step_fn=lambda batch, g: segmenter_step(model, batch, step_opts, fb),
                     state_fn=model.net.state_dict, load_state_fn=lambda sd: model.net.load_state_dict(sd),
                     save_fn=save_fn, validate_fn=validate_fn, best_metric="mIoU")


def resize_to(t: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    """Images [N, 3, H, W] (bilinear, antialiased, kept in [-1, 1]) or masks [N, 1, H, W] (``nearest``) to size²."""
    if t.shape[-1] == size:
        return t
    if nearest:
        return F.interpolate(t, size=(size, size), mode="nearest-exact")
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
