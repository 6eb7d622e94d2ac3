"""What the segmenter trainer feeds the shared loop: real/synthetic batches and the Eq. 6-11 step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from anomalign.data.crops import CropPairs
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.transforms import DihedralViews, photometric_jitter, resize_images
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
    """z0 = E(x) of Eq. 10 for the real pairs' views: the ORIGINAL images read at the frozen generator's
    resolution R (not the segmenter-size tensors upsampled: the generator was tuned on sharp R-px images and
    would see blurred latents unlike any it knows), encoded to [C, R/f, R/f] per (pair, view) on first use and
    cached. The views are the segmenter's (same augment and seed), so key (pair, view) names the same flip."""
    if real.images.shape[-1] == gen.resolution:
        images, masks = real.images, real.masks
    else:
        images, masks = PairDataset(real.samples, size=gen.resolution).tensors()
    # SD's VAE at 512 px holds ~1 GB of activations per image: a small encoding batch fits 24-GB GPUs
    encode_batch = 8 if gen.spec.get("backend") == "sd" else 64
    return LatentPairs(gen, images, masks, real.prompts, augment, seed, encode_batch=encode_batch)


class CropFeedback:
    """Generative Feedback for crops: the frozen generator sees each crop inside a window of ITS resolution R.

    A c-px training crop (at ``--scale``) is smaller than R for SD (128-px crops, R = 512). Upsampling it to R
    would blur it; instead the generator gets an R-px window of the same image at the same scale that contains
    the crop: centred on it, then shifted to lie inside the image where the image is large enough (so the
    generator sees a real R-px region, as in its training; reflected beyond the border only where the image is
    smaller than R), flipped/rotated by the crop's view. Its mask condition is the segmenter's m̃ on the crop's
    square and the true mask around it, and L_fb is averaged over the latent cells of the crop's square, where
    m̃ acts. When c >= R the crop itself is resized to R (a downsampling, no blur) and L_fb covers it all.
    """

    def __init__(self, gen, real: CropPairs):
        self.gen, self.real = gen, real

    def windows(self, keys: list, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the crop rows (``keys`` (pair, None), ``seeds`` their draws): windows [n, 3, R, R] in [-1, 1], true
        masks [n, 1, R, R] and the crop's square in each window [n, 1, R, R] (1 inside)."""
        import random

        from anomalign.data.transforms import dihedral_view, mask_to_tensor, to_model_range
        sampler, size = self.real.sampler, self.gen.resolution
        c = sampler.crop
        xs, ms, inside = [], [], []
        for (i, _), draw in zip(keys, seeds):
            top, left = sampler.box(i, draw)  # the crop CropPairs.sample cut for this draw
            h, w = sampler.masks[i].shape
            wt, wl = (_inside(p - (size - c) // 2, n, size) for p, n in ((top, h), (left, w)))
            image, mask = (_window(a, wt, wl, size) for a in (sampler.images[i], sampler.masks[i]))
            square = torch.zeros(1, size, size)
            square[:, top - wt:top - wt + c, left - wl:left - wl + c] = 1
            variant = self.real.variants[random.Random(draw).randrange(len(self.real.variants))]
            x, m = dihedral_view(to_model_range(image), mask_to_tensor(mask), variant)
            _, sq = dihedral_view(x, square, variant)
            xs.append(x)
            ms.append(m)
            inside.append(sq)
        return torch.stack(xs).contiguous(), torch.stack(ms).contiguous(), torch.stack(inside).contiguous()


def crop_windows(gen, samples, crop: int, scale: float, seed: int, jitter: float, threshold: float
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One anomaly-centred crop of each sample as the feedback's generator sees it: images [N, 3, R, R] in
    [-1, 1], true masks [N, 1, R, R] and prompts (the premise check). A crop smaller than the generator's
    resolution R comes in its R-px window (``CropFeedback``); a larger one as cut ([N, 3, c, c]: the premise
    resizes it to R, as the feedback does)."""
    from anomalign.data.crops import crop_bank
    if crop >= gen.resolution:
        x, m, src = crop_bank(samples, crop, scale, 1, jitter, seed, threshold)
        return x, m, [default_prompt(s) for s in src]
    pairs = CropPairs(samples, crop, scale, (), seed, anomaly_fraction=1.0, jitter=jitter, threshold=threshold)
    x, m, _ = CropFeedback(gen, pairs).windows([(i, None) for i in range(len(samples))],
                                               [sample_seed(seed, 0, i) for i in range(len(samples))])
    return x, m, pairs.prompts


def _inside(start: int, length: int, size: int) -> int:
    """A window's start moved so that [start, start + size) lies within [0, length) when length >= size (the
    crop it was centred on stays inside: the crop lies within the image)."""
    return min(max(start, 0), length - size) if length >= size else start


def _window(array, top: int, left: int, size: int):
    """array [H, W, ...] cut to [size, size, ...] at (top, left), reflected (symmetric) where it leaves the array."""
    import numpy as np
    h, w = array.shape[:2]
    sub = array[max(top, 0):min(top + size, h), max(left, 0):min(left + size, w)]
    pad = [(max(0, -top), max(0, top + size - h)), (max(0, -left), max(0, left + size - w))]
    return np.pad(sub, pad + [(0, 0)] * (array.ndim - 2), mode="symmetric") if any(sum(p) for p in pad) else sub


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
                    k: int, rank: int, world: int, photometric: float = 0.0, colour: float = 0.0) -> dict:
    """This rank's share of global micro-batch k: {"image" [B, 3, S, S], "mask" [B, 1, S, S], "synthetic" [B]
    bool, "keys" (pair, view) of the real rows (which come first; the view is None for crops), "prompts" of the
    real rows, "step" k, "seeds" of the real rows}.

    Crops and feedback seeds follow each sample's place in the GLOBAL batch, as the generator's do, so
    a sample's crop and (ε, t) do not depend on the number of processes. ``photometric``: strength of the
    brightness/contrast/gamma jitter of every row (0 = off), seeded by the row's place too; ``colour``: its
    saturation/white-balance jitter (``photometric_jitter``).
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
    if photometric > 0 or colour > 0:
        places = positions + list(range(n_real, n_real + n_syn))[rank::world]
        items["image"] = [photometric_jitter(x, sample_seed(seed, k, p), photometric, colour)
                          for x, p in zip(items["image"], places)]
    items["image"], items["mask"] = torch.stack(items["image"]), torch.stack(items["mask"])
    items["synthetic"] = torch.tensor(items["synthetic"])
    items["step"], items["seeds"] = k, [sample_seed(seed, k, p) for p in positions]
    return items


def segmenter_step(model, batch: dict, o: SegStepOptions, fb=None) -> dict[str, torch.Tensor]:
    """Eq. 6 on every row; on feedback steps also Eq. 8-10 on the real rows (the first ``fb_rows`` of them, if
    set) and Eq. 11.

    ``fb``: the frozen generator's cached latents of the real pairs (``feedback_latents``), or, when training
    on crops, a ``CropFeedback`` (windows encoded at each step); None without feedback.
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
    gen, region = getattr(fb, "gen", fb), None  # a bare MaskGenerator: crops resized to its input
    m_soft = soft_mask(logits[:n], o.temperature)  # Eq. 8-9 on the REAL images
    if isinstance(fb, LatentPairs):
        z0, _ = fb.latents(batch["keys"][:n])
    elif isinstance(fb, CropFeedback) and m_soft.shape[-1] < gen.resolution:  # crops inside generator windows
        windows, true_masks, square = fb.windows(batch["keys"][:n], batch["seeds"][:n])
        with torch.no_grad():
            z0 = gen.encode(windows).float()
        m_soft = _paste(m_soft, true_masks.to(device), square.to(device))
        region = F.avg_pool2d(square, gen.factor).to(device)  # share of each latent cell inside the crop
    else:  # crops at least as large as the generator's input: resized down to it, each encoded when seen
        with torch.no_grad():
            z0 = gen.encode(resize_to(x[:n], gen.resolution)).float()
    if m_soft.shape[-1] != gen.resolution:
        m_soft = F.interpolate(m_soft, size=(gen.resolution, gen.resolution), mode="area")
    _, t, noise = seeded_draws(batch["seeds"][:n], z0.shape[1:], o.fb_t_min, o.fb_t_max)
    emb = gen.encode_prompts(batch["prompts"][:n])
    l_fb = loss_feedback(gen, z0.to(device), m_soft, emb, noise.to(device), t.to(device), region)
    return {"loss": loss_seg(l_ce, l_fb, o.w_fb), "l_ce": l_ce, "l_fb": l_fb}


def _paste(m_soft: torch.Tensor, true_masks: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
    """The window's mask condition [n, 1, R, R]: m̃ [n, 1, c, c] on the crop's square, the true mask elsewhere
    (differentiable in m̃)."""
    c, out = m_soft.shape[-1], []
    for j in range(len(m_soft)):
        rows, cols = square[j, 0].amax(1).nonzero(), square[j, 0].amax(0).nonzero()
        top, left = int(rows[0]), int(cols[0])
        r = true_masks.shape[-1]
        out.append(F.pad(m_soft[j], (left, r - c - left, top, r - c - top)))
    return torch.stack(out) + true_masks.float() * (1 - square)


def encoder_groups(model, learning_rate: float, encoder_lr_scale: float = 1.0
                   ) -> tuple[list[torch.nn.Parameter], list[dict] | None]:
    """(params, param_groups) of a ``TrainTask``: the pretrained encoder (``segmenter.model.pretrained_encoder``)
    at ``encoder_lr_scale`` x ``learning_rate``, everything else at ``learning_rate``.

    Scale 1 (or no pretrained encoder): every parameter in one group, as before the option existed. Scale 0: the
    encoder is frozen (``requires_grad`` off, left out of the optimizer, the clipping and the EMA, so its
    weights stay bit-identical; a frozen encoder also needs no backward pass: on the CPU about half of a
    fine-tuning step's time, docs/segmenter.md). Otherwise two AdamW groups; the loop's schedule scales both
    peaks alike."""
    from anomalign.segmenter.model import pretrained_encoder
    encoder = pretrained_encoder(model)
    if not encoder or encoder_lr_scale == 1:
        return list(model.parameters()), None
    ids = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if encoder_lr_scale == 0:
        for p in encoder:
            p.requires_grad_(False)
        return rest, None
    return rest + encoder, [{"params": rest, "lr": learning_rate},  # first: the group the log's lr column shows
                            {"params": encoder, "lr": learning_rate * encoder_lr_scale}]


def segmenter_task(model, real: SegPairs, syn: SegPairs | None, batch_size: int, synthetic_fraction: float,
                   seed: int, step_opts: SegStepOptions, fb, save_fn: Callable,
                   validate_fn: Callable | None = None, photometric: float = 0.0, colour: float = 0.0,
                   groups: tuple[list, list[dict] | None] | None = None) -> TrainTask:
    """The TrainTask of a segmenter run: ``synthetic_fraction`` of each global batch from ``syn``. ``groups``:
    (params, param_groups) from ``encoder_groups``; None = every parameter at the loop's learning rate."""
    n_syn = round(batch_size * synthetic_fraction) if syn is not None else 0
    n_real = batch_size - n_syn
    params, param_groups = groups or (list(model.parameters()), None)
    return TrainTask(params=params, param_groups=param_groups,
                     get_batch=lambda k, rank, world: segmenter_batch(real, syn, n_real, n_syn, seed, k, rank, world,
                                                                    photometric, colour),
                     step_fn=lambda batch, g: segmenter_step(model, batch, step_opts, fb),
                     state_fn=model.net.state_dict, load_state_fn=lambda sd: model.net.load_state_dict(sd),
                     save_fn=save_fn, validate_fn=validate_fn, best_metric="mIoU")


def resize_to(t: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    """Images [N, 3, H, W] (bilinear, antialiased, kept in [-1, 1]) or masks [N, 1, H, W] (``nearest``) to size²."""
    if t.shape[-1] == size:
        return t
    if nearest:
        return F.interpolate(t, size=(size, size), mode="nearest-exact")
    return resize_images(t, size).clamp(-1, 1)
