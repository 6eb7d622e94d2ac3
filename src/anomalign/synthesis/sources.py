"""Where synthesis reads its inputs: the anomaly masks to condition on (a dataset's or a folder of masks, in
a fixed order, with their prompts) and the normal images to inpaint or paste into."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from anomalign.data.folders import is_image, walk_files
from anomalign.errors import DataError

if TYPE_CHECKING:
    from anomalign.synthesis.options import GenerateConfig


@dataclass
class MaskSource:
    mask: Path
    defect: str
    category: str
    prompt: str
    image: Path | None = None
    mask_ids: bool = False


def read_mask_sources(cfg: "GenerateConfig") -> tuple[list[MaskSource], list]:
    """The anomaly masks to condition on, in a fixed order."""
    from anomalign.data.dataset import default_prompt

    root = Path(cfg.masks)
    if not root.exists():
        raise DataError(f"{root}: --masks does not exist")
    mode = cfg.masks_layout
    if mode == "auto":
        mode = "dataset" if is_dataset(root) else "mask-folder"

    def prompt_for(defect: str, category: str, fallback: str) -> str:
        if cfg.prompt is None:
            return fallback
        return cfg.prompt.format(defect=defect.replace("_", " "), category=category.replace("_", " ") or "surface")

    if mode == "dataset":
        from anomalign.data.validate import load_dataset
        index = load_dataset(root, cfg)
        samples = index.samples if cfg.split == "all" else index.split(cfg.split)
        samples = [s for s in samples if not s.normal and s.mask is not None]
        if not samples:
            raise DataError(f"{root}: no anomalous samples with masks in split {cfg.split!r} "
                            f"(splits present: {sorted({s.split for s in index.samples if s.split})}); "
                            "pass --split all or another split")
        return [MaskSource(s.mask, s.defect, s.category, prompt_for(s.defect, s.category, default_prompt(s)),
                           s.image, s.mask_ids) for s in samples], index.skipped
    files = [root] if root.is_file() else [f for f in walk_files(root) if is_image(f)]
    if not files:
        raise DataError(f"{root}: no mask images found (looked for image files, recursively)")
    out = []
    for f in sorted(files):
        rel = f.relative_to(root).parts if root.is_dir() else (f.name,)
        defect = rel[0] if len(rel) > 1 else "anomaly"
        default = (f"a photo of a {cfg.category.replace('_', ' ') or 'surface'} with a "
                   f"{defect.replace('_', ' ')} defect")
        out.append(MaskSource(f, defect, cfg.category, prompt_for(defect, cfg.category, default)))
    return out, []


def load_masks(sources: list[MaskSource], size: int, threshold: float) -> tuple[torch.Tensor, list[str]]:
    """Masks [N, 1, size, size] in {0, 1}; also the files whose anomaly vanished at ``size`` (skipped)."""
    from anomalign.data.imageio import load_mask
    from anomalign.data.transforms import resize_mask

    tensors, vanished = [], []
    for s in sources:
        m = resize_mask(load_mask(s.mask, threshold, s.mask_ids), (size, size))
        if not m.any():
            vanished.append(str(s.mask))
        tensors.append(torch.from_numpy(m.astype(np.float32))[None])
    return torch.stack(tensors), vanished


def read_backgrounds(cfg: "GenerateConfig", size: int) -> tuple[tuple[list[Path], torch.Tensor], list]:
    """Normal images for inpainting, (files, [N, 3, size, size] in [-1, 1]), decode-checked under ``--policy``;
    also the problems of the files skip left out."""
    from anomalign.data.imageio import read_image
    from anomalign.data.sample import Sample
    from anomalign.data.transforms import to_model_range
    from anomalign.data.validate import check_samples

    files = normal_files(cfg, Path(cfg.background), "--background")
    usable, problems = check_samples([Sample(image=f, mask=None, defect="good", normal=True) for f in files], cfg,
                                     f"{cfg.background} (--background)")
    if not usable:
        raise DataError(f"{cfg.background}: no usable image left for --background", problems)
    files = [s.image for s in usable]
    arrays = [np.asarray(Image.fromarray(read_image(f)).resize((size, size), Image.BICUBIC)) for f in files]
    return (files, torch.stack([to_model_range(a) for a in arrays])), problems


def is_dataset(root: Path) -> bool:
    """Whether ``root`` is a folder in a dataset layout anomalign reads (else: a plain folder of images)."""
    from anomalign.data.layouts import detect_layout
    try:
        return root.is_dir() and bool(detect_layout(root))
    except DataError:
        return False


def normal_files(cfg: "GenerateConfig", root: Path, flag: str, split: str = "all") -> list[Path]:
    """The normal images of ``root``: a dataset's normal samples (of ``split``), or every image of a folder
    (or one file)."""
    if not root.exists():
        raise DataError(f"{root}: {flag} does not exist")
    if is_dataset(root):
        index = _dataset_as_used(cfg, root)
        files = [s.image for s in (index.samples if split == "all" else index.split(split)) if s.normal]
    else:
        files = [root] if root.is_file() else sorted(f for f in walk_files(root) if is_image(f))
    if not files:
        raise DataError(f"{root}: no normal images found for {flag}")
    return files


def host_files(cfg: "GenerateConfig", root: Path, split: str = "all", hosts: str = "normal"
               ) -> tuple[list[Path], list[tuple[Path, bool] | None]]:
    """The images ``generate --normals`` pastes defects into, with each one's own anomaly mask as (file, holds
    class ids) (None for a normal image). ``hosts``: "normal" (a dataset's normal samples, or every image of a
    folder), "anomalous" (a dataset's anomalous samples: for data without normal images) or "all". With
    ``cfg.train_pairs`` / ``cfg.cv_fold`` only the pairs that subset or fold trains on can be a host."""
    if hosts == "normal":
        files = normal_files(cfg, root, "--normals", split)
        return files, [None] * len(files)
    if not is_dataset(root):
        raise DataError(f"{root}: --hosts {hosts} needs a dataset as --normals (a folder of images has no masks "
                        "to keep)")
    index = _dataset_as_used(cfg, root)
    samples = index.samples if split == "all" else index.split(split)
    if hosts == "anomalous":
        samples = [s for s in samples if not s.normal]
    picked = [(s.image, None if s.normal else (s.mask, bool(s.mask_ids)))
              for s in samples if s.normal or s.mask is not None]
    if not picked:
        raise DataError(f"{root}: no {hosts} images in split {split!r} for --normals")
    files, masks = map(list, zip(*picked))
    return files, masks


def _dataset_as_used(cfg, root: Path):
    """The dataset under ``root`` with the samples and splits the run's other stages use. With --train-pairs or
    --cv-fold that is ``load_dataset``'s view (the seeded subset, drawn after the policy's checks; the
    cross-fitting fold): pairs left out, or held out, must not come back as hosts (with their real defects kept)
    into the arms' training data. Otherwise the files as read (``usable_hosts`` checks them)."""
    if getattr(cfg, "train_pairs", None) is not None or getattr(cfg, "cv_fold", None) is not None:
        from anomalign.data.validate import load_dataset
        return load_dataset(root, cfg, announce=False)
    from anomalign.data.layouts import read_dataset
    return read_dataset(root, cfg)


MIN_HOST_SIDE = 16  # px: a smaller host image cannot receive a defect that still has pixels


def usable_hosts(cfg: "GenerateConfig", files: list[Path], host_masks: list) -> tuple[list[Path], list, list]:
    """The ``--normals`` images (and anomalous hosts' masks) that can be used, checked before anything is
    written: decodable, at least MIN_HOST_SIDE px, with a matching ``--foreground`` mask when given. Under
    ``--policy fail`` a problem stops the run with every file named; under ``skip`` those hosts are left out
    (returned as problems for skipped.json)."""
    from anomalign.data.sample import Sample
    from anomalign.data.validate import check_samples
    from anomalign.synthesis.fullsize import foreground_problems
    samples = [Sample(image=f, mask=m[0] if m else None, defect="host", normal=m is None,
                      mask_ids=m[1] if m else None) for f, m in zip(files, host_masks)]
    usable, problems = check_samples(samples, cfg, f"{cfg.normals} (--normals)", min_side=MIN_HOST_SIDE)
    if cfg.foreground is not None:
        more = foreground_problems([s.image for s in usable], Path(cfg.foreground))
        if more and cfg.policy == "fail":
            raise DataError(f"{cfg.foreground}: {len(more)} problem(s) with --foreground (use --policy skip to "
                            "leave those images out)", more)
        bad = {p.path for p in more}
        usable = [s for s in usable if s.image not in bad]
        problems += more
    if not usable:
        raise DataError(f"{cfg.normals}: no usable host image left for --normals", problems)
    keep = {s.image for s in usable}
    picked = [(f, m) for f, m in zip(files, host_masks) if f in keep]
    return [f for f, _ in picked], [m for _, m in picked], problems
