"""What the generator trainers feed the shared loop: cached latent pairs and the dual-branch step."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

import torch

from anomalign.data.transforms import hflip, rot90, vflip
from anomalign.errors import ConfigError
from anomalign.generator.losses import StopGrad, dual_branch_loss
from anomalign.generator.model import MaskGenerator
from anomalign.training import TrainTask, batch_indices, sample_seed

AUGMENTS = ("hflip", "vflip", "rot90")


def dihedral_variants(augment: list[str]) -> list[tuple[int, int, int]]:
    """(hflip, vflip, rot90 k) combinations the enabled augmentations can produce."""
    bad = [a for a in augment if a not in AUGMENTS]
    if bad:
        raise ConfigError(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTS)} or none")
    return list(itertools.product((0, 1) if "hflip" in augment else (0,), (0, 1) if "vflip" in augment else (0,),
                                  range(4) if "rot90" in augment else (0,)))


class LatentPairs:
    """Training pairs with their frozen-codec latents, encoded once per (pair, augmentation variant).

    ``images`` [N, 3, H, W] in [-1, 1], ``masks`` [N, 1, H, W] in {0, 1}, ``prompts`` [N]. Augmentations
    are exact dihedral ops (flips, 90° rotations) applied to image and mask together BEFORE encoding,
    so the cache stays valid: z0 = E(aug(x)), h0 = E(aug(m)).
    """

    def __init__(self, gen: MaskGenerator, images: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                 augment: list[str] = (), seed: int = 0, cache: bool = True, encode_batch: int = 64):
        self.gen, self.images, self.masks, self.prompts = gen, images, masks, list(prompts)
        self.variants = dihedral_variants(list(augment))
        self.seed, self.cache_enabled, self.encode_batch = seed, cache, encode_batch
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    def variant_of(self, micro_step: int, i: int) -> int:
        """Which augmentation variant pair i gets at micro-step k (deterministic)."""
        if len(self.variants) == 1:
            return 0
        return random.Random(f"{self.seed}:{micro_step}:{i}").randrange(len(self.variants))

    def view(self, i: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        hf, vf, k = self.variants[v]
        x, m = self.images[i], self.masks[i]
        if hf:
            x, m = hflip(x, m)
        if vf:
            x, m = vflip(x, m)
        if k:
            x, m = rot90(x, m, k)
        return x, m

    @torch.no_grad()
    def latents(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """z0, h0 [B, C, h, w] for (pair, variant) keys, encoding only what is not cached."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        fresh: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for s in range(0, len(todo), self.encode_batch):
            chunk = todo[s:s + self.encode_batch]
            xs, ms = zip(*(self.view(i, v) for i, v in chunk))
            z0 = self.gen.encode(torch.stack(xs)).float().cpu()
            h0 = self.gen.encode_mask_image(torch.stack(ms)).float().cpu()
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

    def batch(self, indices: list[int], micro_step: int) -> dict:
        keys = [(i, self.variant_of(micro_step, i)) for i in indices]
        z0, h0 = self.latents(keys)
        masks = torch.stack([self.view(i, v)[1] for i, v in keys])
        return {"z0": z0, "h0": h0, "mask": masks, "prompt": [self.prompts[i] for i in indices]}


@dataclass
class GenStepOptions:
    alpha: float = 0.7
    al_stop_grad: StopGrad = "none"
    w_mask: float = 0.0
    snr_gamma: float | None = None
    mask_dropout: float = 0.1
    prompt_dropout: float = 0.1


def generator_step(gen: MaskGenerator, batch: dict, o: GenStepOptions) -> dict[str, torch.Tensor]:
    """Condition dropout (mask and prompt independently, for guidance), then the dual-branch loss.

    Every random draw of a sample comes from its own generator (``batch["seeds"]``, fixed by the
    training seed, the step and the sample's place in the GLOBAL batch), so a run gives the same
    result whatever the number of processes.
    """
    z_shape = batch["z0"].shape[1:]
    keep_mask, keep_prompt, noise, t = [], [], [], []
    for seed in batch["seeds"]:
        g = torch.Generator().manual_seed(seed)
        keep_mask.append(bool(torch.rand((), generator=g) >= o.mask_dropout))
        keep_prompt.append(bool(torch.rand((), generator=g) >= o.prompt_dropout))
        t.append(torch.randint(0, gen.scheduler.config.num_train_timesteps, (), generator=g))
        noise.append(torch.randn(z_shape, generator=g))
    keep_mask = torch.tensor(keep_mask)
    dev = gen.device
    z0, h0, mask = batch["z0"].to(dev), batch["h0"].to(dev), batch["mask"].to(dev)
    emb = gen.encode_prompts([p if k else "" for p, k in zip(batch["prompt"], keep_prompt)])
    cond = gen.condition(mask, keep_mask, mask_latent=h0 if gen.mask_encoding == "vae" else None)
    return dual_branch_loss(gen, z0, h0, cond, emb, alpha=o.alpha, stop_grad=o.al_stop_grad, w_mask=o.w_mask,
                            snr_gamma=o.snr_gamma, noise=torch.stack(noise), t=torch.stack(t))


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
