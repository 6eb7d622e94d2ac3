"""What the generator trainers feed the shared loop: cached latent pairs and the dual-branch step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from anomalign.data.transforms import DihedralViews
from anomalign.generator.losses import LossSpace, StopGrad, add_noise, dual_branch_loss
from anomalign.generator.model import MaskGenerator
from anomalign.seeding import normal_rows, sample_generators, seeded_noise
from anomalign.training import TrainTask, batch_indices, sample_seed


class LatentPairs(DihedralViews):
    """Training pairs with their frozen-codec latents, encoded once per (pair, augmentation variant).

    ``images`` [N, 3, H, W] in [-1, 1], ``masks`` [N, 1, H, W] in {0, 1}, ``prompts`` [N]. Augmentations
    are exact dihedral ops (flips, 90° rotations) applied to image and mask together BEFORE encoding,
    so the cache stays valid: z0 = E(aug(x)), h0 = E(aug(m)).
    """

    def __init__(self, gen: MaskGenerator, images: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                 augment: list[str] = (), seed: int = 0, cache: bool = True, encode_batch: int = 64,
                 mask_latents: bool = True):
        super().__init__(images, masks, augment, seed)
        self.gen, self.prompts = gen, list(prompts)
        self.cache_enabled, self.encode_batch = cache, encode_batch
        # h0 = E(m) is only used by Eq. 2-4 (α > 0) and the ``vae`` encoding; without it h0 is an empty
        # [0] tensor per pair (half the encoding time), and any use of it fails on the shape.
        self.mask_latents = mask_latents
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def latents(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """z0, h0 [B, C, h, w] for (pair, variant) keys, encoding only what is not cached."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        fresh: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for s in range(0, len(todo), self.encode_batch):
            chunk = todo[s:s + self.encode_batch]
            xs, ms = zip(*(self.view(i, v) for i, v in chunk))
            z0 = self.gen.encode(torch.stack(xs)).float().cpu()
            h0 = (self.gen.encode_mask_image(torch.stack(ms)).float().cpu() if self.mask_latents
                  else torch.zeros(len(chunk), 0))
            for j, key in enumerate(chunk):
                fresh[key] = (z0[j], h0[j])
        if self.cache_enabled:
            self.cache.update(fresh)
        get = lambda k: self.cache[k] if k in self.cache else fresh[k]  # noqa: E731
        return torch.stack([get(k)[0] for k in keys]), torch.stack([get(k)[1] for k in keys])

    def precompute(self, progress: bool = False) -> None:
        """Encode every (pair, variant) now (e.g. before timing a run)."""
        keys = [(i, v) for i in range(len(self)) for v in range(len(self.variants))]
        from tqdm import tqdm
        for s in tqdm(range(0, len(keys), 512), desc="encoding latents", disable=not progress):
            self.latents(keys[s:s + 512])

    def save_cache(self, file) -> None:
        """Write the encoded latents (e.g. a pretraining corpus, minutes of encoding) to a safetensors file."""
        from anomalign.weights import write_weights
        keys = sorted(self.cache)
        state = {"z0": torch.stack([self.cache[k][0] for k in keys]), "h0": torch.stack([self.cache[k][1] for k in keys]),
                 "keys": torch.tensor(keys, dtype=torch.long).view(-1, 2)}
        write_weights(file, state, "anomalign_latent_cache", {"count": len(keys)})

    def load_cache(self, file) -> bool:
        """Fill the cache from ``save_cache``'s file if it holds every (pair, variant); returns whether it did."""
        from safetensors.torch import load_file
        from safetensors import SafetensorError
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError):  # missing or damaged: re-encoded, never trusted
            return False
        keys = [tuple(k) for k in state["keys"].tolist()] if "keys" in state else []
        # a cache written without mask latents stores h0 as [N, 0]: not usable when they are needed
        if len(keys) != len(self) * len(self.variants) or (self.mask_latents and state["h0"][0].numel() == 0):
            return False
        self.cache = {k: (state["z0"][j], state["h0"][j]) for j, k in enumerate(keys)}
        return True

    def batch(self, indices: list[int], micro_step: int) -> dict:
        keys = [(i, self.variant_of(micro_step, i)) for i in indices]
        z0, h0 = self.latents(keys)
        masks = torch.stack([self.view(i, v)[1] for i, v in keys])
        return {"z0": z0, "h0": h0, "mask": masks, "prompt": [self.prompts[i] for i in indices]}


@dataclass(kw_only=True)  # keywords only: a field added later cannot shift positional arguments
class GenStepOptions:
    alpha: float = 0.7
    al_stop_grad: StopGrad = "none"
    w_mask: float = 0.0
    snr_gamma: float | None = None
    mask_dropout: float = 0.1
    prompt_dropout: float = 0.1
    loss_space: LossSpace = "epsilon"  # "model": the v-MSE for v models (pretraining); fine-tuning keeps Eq. 1's ε-MSE


def seeded_draws(seeds: list[int], shape: tuple[int, ...], t_low: int, t_high: int, uniforms: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random draws of a training step, sample i from its own generator seeded with ``seeds[i]``:
    ``uniforms`` U(0, 1) numbers [B, uniforms], then a timestep t in [t_low, t_high) [B], then ε [B, *shape].

    Both trainers seed by the sample's place in the GLOBAL batch (``training.sample_seed``), so the draws
    of a sample do not depend on the number of processes.
    """
    if not seeds:
        return torch.zeros(0, uniforms), torch.zeros(0, dtype=torch.long), torch.zeros(0, *shape)
    gens = sample_generators(seeds)  # each draws u, then t, then ε, in that order
    u = torch.stack([torch.stack([torch.rand((), generator=g) for _ in range(uniforms)]) if uniforms
                     else torch.zeros(0) for g in gens])
    t = torch.stack([torch.randint(t_low, t_high, (), generator=g) for g in gens])
    return u, t, normal_rows(gens, shape)


def generator_step(gen: MaskGenerator, batch: dict, o: GenStepOptions) -> dict[str, torch.Tensor]:
    """Condition dropout (mask and prompt independently, for guidance), then the dual-branch loss.

    Every random draw of a sample comes from its own generator (``batch["seeds"]``, fixed by the
    training seed, the step and the sample's place in the GLOBAL batch), so a run gives the same
    result whatever the number of processes.
    """
    u, t, noise = seeded_draws(batch["seeds"], batch["z0"].shape[1:], 0, gen.scheduler.config.num_train_timesteps,
                               uniforms=2)
    keep_mask, keep_prompt = u[:, 0] >= o.mask_dropout, (u[:, 1] >= o.prompt_dropout).tolist()
    dev = gen.device
    z0, h0, mask = batch["z0"].to(dev), batch["h0"].to(dev), batch["mask"].to(dev)
    emb = gen.encode_prompts([p if k else "" for p, k in zip(batch["prompt"], keep_prompt)])
    cond = gen.condition(mask, keep_mask, mask_latent=h0 if gen.mask_encoding == "vae" else None)
    return dual_branch_loss(gen, z0, h0, cond, emb, alpha=o.alpha, stop_grad=o.al_stop_grad, w_mask=o.w_mask,
                            snr_gamma=o.snr_gamma, noise=noise, t=t,
                            loss_space=o.loss_space)


def generator_task(gen: MaskGenerator, pairs: LatentPairs, params: list, batch_size: int, seed: int,
                   step_opts: GenStepOptions, save_fn: Callable, validate_fn=None) -> TrainTask:
    """The TrainTask of a generator run (fine-tuning or base pretraining)."""
    def get_batch(k: int, rank: int, world: int) -> dict:
        idx = batch_indices(len(pairs), batch_size, seed, k)
        positions = list(range(len(idx)))[rank::world]
        batch = pairs.batch([idx[p] for p in positions], k)
        batch["seeds"] = [sample_seed(seed, k, p) for p in positions]
        return batch

    return TrainTask(params=params, get_batch=get_batch,
                     step_fn=lambda batch, g: generator_step(gen, batch, step_opts),
                     state_fn=gen.trainable_state, load_state_fn=gen.load_trainable_state,
                     save_fn=save_fn, validate_fn=validate_fn, best_metric=None)


HELD_OUT_TIMESTEPS = 8  # noise levels per held-out pair: the strata centres of [0, T)


@torch.no_grad()
def held_out_loss(gen: MaskGenerator, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], seed: int = 0,
                  timesteps: int = HELD_OUT_TIMESTEPS, batch_size: int = 32, latents: torch.Tensor | None = None
                  ) -> dict[str, float]:
    """Eq. 1's ε-MSE of the image branch on pairs the generator never trains on, at fixed draws, so that it is a
    function of the weights only and two checkpoints compare exactly.

    images [N, 3, R, R] in [-1, 1], masks [N, 1, R, R] in {0, 1}, prompts [N]. Pair i is noised at
    ``timesteps`` levels t_k = (k + ½)·T / timesteps (k < timesteps), with ε drawn from seed (seed, i, k); mask
    and prompt are given (no dropout). Returns {"heldout_loss": the mean over every latent cell,
    "heldout_defect_loss": the mean over the cells inside the mask (area-weighted; NaN without defect pixels)}.
    The second is the anomaly's own look: the normal surroundings are a large, easy part of every crop.
    ``latents``: E(images) [N, C, h, w] (``held_out_latents``) when already encoded: the codec is frozen, so a
    trainer encodes its held-out pairs once, not at every validation.
    """
    if len(images) != len(masks) or len(images) != len(prompts):
        raise ValueError(f"held_out_loss: {len(images)} images, {len(masks)} masks and {len(prompts)} prompts")
    was_training = gen.unet.training
    gen.unet.eval()
    T = gen.scheduler.config.num_train_timesteps
    total = torch.zeros(()), torch.zeros(())  # (sum of squared errors, cells) over all cells
    defect = torch.zeros(()), torch.zeros(())
    try:
        if latents is None:
            latents = held_out_latents(gen, images, batch_size)
        jobs = [(i, k) for i in range(len(images)) for k in range(timesteps)]
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s:s + batch_size]
            idx = [i for i, _ in chunk]
            z0, m = latents[idx].to(gen.device), masks[idx].to(gen.device)
            t = torch.tensor([int((k + 0.5) * T / timesteps) for _, k in chunk], device=z0.device)
            noise = seeded_noise([(seed * 1_000_003 + i) * 1_009 + k for i, k in chunk], tuple(z0.shape[1:]),
                                 device=z0.device)
            emb = gen.encode_prompts([prompts[i] for i in idx])
            eps = gen.predict_noise(add_noise(gen.scheduler, z0, noise, t), t, emb, gen.condition(m)).float()
            err = (eps - noise).pow(2).mean(dim=1)  # [B, h, w]
            w = F.adaptive_avg_pool2d(m.float(), err.shape[-2:])[:, 0]  # the share of each latent cell in the defect
            total = total[0] + err.sum().cpu(), total[1] + err.numel()
            defect = defect[0] + (w * err).sum().cpu(), defect[1] + w.sum().cpu()
    finally:
        gen.unet.train(was_training)
    return {"heldout_loss": float(total[0] / max(total[1], 1)),
            "heldout_defect_loss": float(defect[0] / defect[1]) if defect[1] > 0 else float("nan")}


@torch.no_grad()
def held_out_latents(gen: MaskGenerator, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """E(images) [N, C, h, w] on the CPU, for ``held_out_loss`` (images [N, 3, R, R] in [-1, 1], N >= 0)."""
    if not len(images):
        return torch.zeros(0)
    return torch.cat([gen.encode(images[s:s + batch_size].to(gen.device)).float().cpu()
                      for s in range(0, len(images), batch_size)])
