"""Image/mask preprocessing and exact paired augmentation (flips, 90° rotations).

Every geometric op takes and returns BOTH the image and the mask, so they cannot drift apart:
images resize with bilinear/bicubic (antialiased), masks with nearest ("nearest-exact": the same
pixel-centre convention as the image resize, so the two stay aligned).
The model range is defined once here: ``to_model_range`` / ``from_model_range``.
"""
from __future__ import annotations

import itertools
import random
from typing import Literal

import numpy as np
import torch
from PIL import Image

from anomalign.errors import ConfigError

Interp = Literal["bilinear", "bicubic"]


def resize_images(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Images [B, C, H, W] (float) to ``size`` (side or (H, W)) by antialiased bilinear resampling: the one image
    resize of the tensor code paths (masks take ``nearest`` / ``nearest-exact`` instead). Not clamped."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return torch.nn.functional.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)


def to_model_range(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] (or [B, H, W, 3]) -> float32 [3, H, W] (or [B, 3, H, W]) in [-1, 1]."""
    a = np.asarray(image)
    if not a.flags.writeable:  # e.g. np.asarray(PIL image): torch warns about (and cannot own) read-only memory
        a = a.copy()
    t = torch.as_tensor(a)
    t = t.movedim(-1, -3).to(torch.float32)
    return t / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (clipped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def is_grey(images: torch.Tensor | np.ndarray) -> bool:
    """True when every pixel of ``images`` [..., 3, H, W] (tensor) or [..., H, W, 3] (uint8 array) has equal
    R, G and B — grey data decoded as RGB (``imageio.read_image`` replicates grey channels exactly)."""
    if isinstance(images, np.ndarray):
        return bool((images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all())
    return bool(torch.equal(images[..., 0, :, :], images[..., 1, :, :])
                and torch.equal(images[..., 1, :, :], images[..., 2, :, :]))


def grey_u8(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W], the channel mean (generated "grey" images carry a faint tint)."""
    return np.rint(image.astype(np.float32).mean(2)).astype(np.uint8)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """bool [H, W] -> float32 [1, H, W] in {0, 1}."""
    return torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)[None]


def resize_pair_pil(image: np.ndarray, mask: np.ndarray, size: tuple[int, int],
                    interpolation: Interp = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Resize uint8 [H, W, 3] and bool [H, W] to ``size`` = (height, width): image smooth, mask nearest."""
    h, w = size
    if image.shape[:2] == (h, w) and mask.shape == (h, w):
        return image, mask
    resample = Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR
    img = np.asarray(Image.fromarray(image).resize((w, h), resample=resample))
    return img, resize_mask(mask, size)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] -> bool ``size`` = (height, width), nearest neighbour (no new grey levels to threshold)."""
    h, w = size
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), resample=Image.NEAREST)) > 127


# Tensor ops on image [C, H, W] and mask [1, H, W]: each applies the same geometry to both.

def hflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.flip(-1), mask.flip(-1)


def vflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.flip(-2), mask.flip(-2)


def rot90(image: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate both by k*90 degrees counter-clockwise."""
    return torch.rot90(image, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))


DIHEDRAL_AUGMENTS = ("hflip", "vflip", "rot90")


def dihedral_variants(augment: list[str]) -> list[tuple[int, int, int]]:
    """(hflip, vflip, rot90 k) combinations the enabled augmentations can produce."""
    bad = [a for a in augment if a not in DIHEDRAL_AUGMENTS]
    if bad:
        raise ConfigError(f"unknown augmentation(s) {bad}; choose from {list(DIHEDRAL_AUGMENTS)} or none")
    return list(itertools.product((0, 1) if "hflip" in augment else (0,), (0, 1) if "vflip" in augment else (0,),
                                  range(4) if "rot90" in augment else (0,)))


class DihedralViews:
    """Image/mask pairs with exact dihedral views (flips, 90° rotations), the view of pair i at micro-step k
    chosen deterministically from (seed, k, i).

    ``images`` [N, 3, H, W], ``masks`` [N, 1, H, W]; ``view(i, v)`` returns the pair's variant v with the
    same shapes (H = W when rot90 is enabled).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, augment: list[str] = (), seed: int = 0):
        self.images, self.masks, self.seed = images, masks, seed
        self.variants = dihedral_variants(list(augment))

    def __len__(self) -> int:
        return len(self.images)

    def variant_of(self, micro_step: int, i: int) -> int:
        """Which augmentation variant pair i gets at micro-step k (deterministic)."""
        if len(self.variants) == 1:
            return 0
        return random.Random(f"{self.seed}:{micro_step}:{i}").randrange(len(self.variants))

    def view(self, i: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Variant v of pair i: image [3, H, W] and mask [1, H, W], flipped/rotated together."""
        return dihedral_view(self.images[i], self.masks[i], self.variants[v])


def dihedral_view(image: torch.Tensor, mask: torch.Tensor, variant: tuple[int, int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [C, H, W] and mask [1, H, W] flipped/rotated together by ``variant`` = (hflip, vflip, rot90 k)."""
    hf, vf, k = variant
    if hf:
        image, mask = hflip(image, mask)
    if vf:
        image, mask = vflip(image, mask)
    if k:
        image, mask = rot90(image, mask, k)
    return image, mask


def photometric_jitter(image: torch.Tensor, seed: int, strength: float, colour: float = 0.0) -> torch.Tensor:
    """Random global brightness, contrast and gamma of one image [C, H, W] in [-1, 1] (the mask is untouched:
    these ops move no pixel). ``strength`` s in [0, 1]: brightness shift up to ±0.2·s (of the [0, 1] range),
    contrast ×e^(±0.3·s) about the image mean, gamma e^(±0.3·s). The same numbers for every channel, so a
    grey image stays grey. ``colour`` c in [0, 1] (colour photographs only; 0 = off): saturation ×e^(±0.5·c)
    about each pixel's grey value and a white-balance shift, each channel ×e^(±0.15·c) (a colour cast of another
    camera or light). Deterministic in ``seed``; s = c = 0 returns the image unchanged."""
    if strength <= 0 and colour <= 0:
        return image
    rng = random.Random(seed ^ 0x5EED)
    u = lambda: rng.uniform(-1.0, 1.0)  # noqa: E731
    shift, contrast, gamma = 0.2 * strength * u(), float(np.exp(0.3 * strength * u())), float(np.exp(0.3 * strength * u()))
    x = (image + 1) / 2
    x = ((x - x.mean()) * contrast + x.mean() + shift).clamp(0, 1) ** gamma
    if colour > 0 and x.shape[0] == 3:
        # drawn after the grey jitter's numbers, so colour 0 leaves the grey jitter of every seed as it was
        saturation = float(np.exp(0.5 * colour * u()))
        gains = torch.tensor([float(np.exp(0.15 * colour * u())) for _ in range(3)], dtype=x.dtype).view(3, 1, 1)
        grey = x.mean(0, keepdim=True)
        x = ((grey + (x - grey) * saturation) * gains).clamp(0, 1)
    return (x * 2 - 1).clamp(-1, 1)


def image_u8(image, what: str = "image") -> np.ndarray:
    """One image as the uint8 RGB array [H, W, 3] every predictor and sampler takes: the input forms of the Python
    API (``Segmenter.predict``, ``MaskGenerator.inpaint``) in one place.

    ``image``: a file path (decoded as the commands decode files), a PIL image, or an array / torch tensor
    (channels last) [H, W, 3], [H, W, 1] or [H, W] (grey, channels replicated), uint8 or float in [0, 1]. Float
    pixels are quantised to 8 bits (``round(255 x)``), what an 8-bit file of the image holds: the networks were
    trained on 8-bit files, and ``x / 255`` then gives exactly the result of the file's uint8 pixels. Anything
    else (another dtype, NaN, values outside [0, 1], channels first, no pixel) is an AnomalignError naming
    ``what`` and the array's shape."""
    from pathlib import Path

    from anomalign.errors import AnomalignError
    if isinstance(image, (str, Path)):
        from anomalign.data.imageio import read_image
        return read_image(Path(image))
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        return np.asarray(image.convert("RGB"))
    a = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    shape = list(a.shape)
    if a.ndim == 3 and a.shape[-1] not in (1, 3) and a.shape[0] in (1, 3):
        raise AnomalignError(f"{what} must be channels last [H, W, 3], got {shape} (channels first? move the "
                             "channel axis last, e.g. x.permute(1, 2, 0))")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise AnomalignError(f"{what} must be a uint8 image [H, W, 3] or [H, W] (or float in [0, 1]), got "
                             f"{a.dtype} {shape}")
    if 0 in a.shape[:2]:
        # before any network sees it: an empty image otherwise fails deep inside torch's resize
        raise AnomalignError(f"{what} is empty ({shape[0]} x {shape[1]} px, shape {shape}); it needs at least "
                             "1 x 1 px")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind != "f":
        raise AnomalignError(f"{what} must be a uint8 image [H, W, 3] or [H, W] (or float in [0, 1]), got "
                             f"{a.dtype} {shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise AnomalignError(f"{what}: float pixels must lie in [0, 1] (got min {np.nanmin(a):g}, max "
                             f"{np.nanmax(a):g}{', and NaN or inf' if not np.isfinite(a).all() else ''}); "
                             "pass uint8 [0, 255] pixels, or divide by 255")
    return np.rint(a.astype(np.float64) * 255).astype(np.uint8)
