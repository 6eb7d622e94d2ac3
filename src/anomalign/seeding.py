"""Per-sample random draws: sample i draws from its own ``torch.Generator`` seeded with ``seeds[i]``.

Every trainer and sampler draws this way, so a sample's noise depends on its seed only (not on the batch it
lands in, the batch size or the number of processes), and a resumed or resharded run draws the same numbers.
"""
from __future__ import annotations

import torch


def sample_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with ``seeds[i]``."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def normal_rows(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """[B, *shape] standard normal float32 (CPU), row i drawn from ``generators[i]`` (which advance)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def seeded_noise(seeds: list[int], shape: tuple[int, ...], device="cpu", dtype=torch.float32) -> torch.Tensor:
    """[B, *shape] standard normal noise, row i from a fresh generator seeded with ``seeds[i]``."""
    return normal_rows(sample_generators(seeds), shape).to(device=device, dtype=dtype)
