"""Readers for folder layouts: paired folders (images/ + masks/), same-folder pairs, PraNet polyp split.

Readers only look at names on disk; decoding and pixel checks happen in ``validate``.
Each reader returns ``(samples, problems)``; samples without a split get one in ``layouts``.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from anomalign.config import option
from anomalign.errors import ConfigError

from anomalign.data.sample import IMAGE_EXTS, LOSSLESS_EXTS, NORMAL_NAMES, Problem, Sample

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
MASK_DIR_NAMES = ("masks", "mask")
SPLIT_DIR_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                   "validation": "val", "test": "test", "testing": "test"}
# Folder names that hold images but name no defect (magnetic tile: MT_Crack/Imgs/x.jpg).
GENERIC_DIR_NAMES = frozenset({"imgs", "img", "images", "image", "data"})
# Sidecar files a dataset may hold next to its images without being a problem.
SIDECAR_NAMES = frozenset({"metadata.jsonl", "dataset_card.md", "readme.md", "readme.txt", "license",
                           "license.txt", "config.yaml", "thumbs.db", "desktop.ini"})


LAYOUT_NAMES = ("auto", "paired", "same-folder", "mvtec", "visa", "realiad", "pranet")


@dataclass(kw_only=True)
class DataOptions:
    """How a dataset is read, checked and split; every command that reads data has these options.

    The rules are documented in docs/data.md.
    """

    layout: Literal[LAYOUT_NAMES] = option("auto", "dataset layout (auto: detect)")
    policy: Literal["fail", "skip"] = option("fail", "bad files: fail (list every problem and stop) or skip them")
    mask_threshold: float = option(0.5, "binarization threshold as a fraction of the mask's full scale")
    split_seed: int = option(0, "seed of the deterministic split for layouts without one")
    val_fraction: float = option(0.1, "validation fraction per defect type (layouts without a val split)")
    test_fraction: float = option(0.2, "test fraction per defect type (layouts without a test split)")
    mask_suffixes: list[str] = option(default_factory=lambda: ["_mask", "-mask", "_gt", "_label", "_seg"],
                                      help="file-name suffixes that mark a mask (x_mask.png for x.png)")
    mvtec_train_fraction: float = option(1 / 3, "MVTec AD: fraction of each defect type used for training "
                                         "(rounded up)")
    visa_csv: str = option("1cls.csv", "VisA: split file in split_csv/")
    max_megapixels: float = option(100.0, "largest image decoded, in megapixels (larger files are refused "
                                          "from their header, as a problem of that file)")
    train_pairs: int | None = option(None, "use only this many anomalous training pairs: a seeded random subset "
                                           "(--split-seed), the same for every command and run; the others are "
                                           "not used at all (the few-pairs regime; the paper's Table 5)")
    cv_fold: str | None = option(None, "cross-fitting (set by `anomalign run --choice cv`): 'k/K' makes fold k (from 0) "
                                       "of K of train + val the val split and the rest train; 'all' makes train + "
                                       "val all train (the refit); test is untouched")

    def validate(self) -> None:
        for name in ("val_fraction", "test_fraction", "mask_threshold", "mvtec_train_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"option '{name}' must be in [0, 1], got {v}")
        if self.train_pairs is not None and self.train_pairs < 1:
            raise ConfigError(f"train_pairs must be >= 1, got {self.train_pairs}")
        if self.cv_fold is not None:
            parse_cv_fold(self.cv_fold)
        if not self.max_megapixels > 0:
            raise ConfigError(f"option 'max_megapixels' must be > 0, got {self.max_megapixels}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must be < 1")


def parse_cv_fold(spec: str) -> tuple[int, int] | None:
    """``--cv-fold``: 'k/K' -> (k, K) with 0 <= k < K and K >= 2; 'all' -> None (every train + val sample trains)."""
    if spec == "all":
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"cv_fold must be 'k/K' (e.g. 0/5) or 'all', got {spec!r}") from None
    if not (n >= 2 and 0 <= k < n):
        raise ConfigError(f"cv_fold {spec!r}: needs K >= 2 folds and 0 <= k < K")
    return k, n


def walk_files(directory: Path) -> list[Path]:
    """All non-hidden files under ``directory``, sorted, skipping hidden folders.

    Symlinked folders are followed (a linked ``images/good/`` is read), each real folder once (no loops).
    A folder named like an image (``bad.png/``) is returned as is, not entered, so readers report it.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for cur, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(cur)
        if real in seen:  # a link back to a folder already read
            dirs[:] = []
            continue
        seen.add(real)
        named_like_images = {d for d in dirs if is_image(Path(d))}
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in named_like_images)
        out.extend(Path(cur) / f for f in sorted([*files, *named_like_images]) if not f.startswith("."))
    return out


def find_child(base: Path, names: tuple[str, ...]) -> Path | None:
    """The child folder of ``base`` whose lower-cased name is in ``names`` (in that preference order)."""
    if not base.is_dir():
        return None
    children = {p.name.lower(): p for p in base.iterdir() if p.is_dir()}
    for n in names:
        if n in children:
            return children[n]
    return None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


def unsupported(path: Path) -> Problem | None:
    """A warning for a file that is neither an image nor a known sidecar (an error for a folder named like
    an image, e.g. ``images/bad.png/``), else None."""
    if path.is_dir():
        return Problem(path, "not-a-file", "is a folder, not an image file (its name ends in an image "
                                           f"extension, {path.suffix}); its contents are not read")
    if is_image(path) or path.name.lower() in SIDECAR_NAMES:
        return None
    return Problem(path, "unsupported-file",
                   f"not a supported image type ({path.suffix or 'no extension'}); ignored "
                   f"(supported: {', '.join(sorted(IMAGE_EXTS))})", "warning")


def strip_mask_suffix(stem: str, suffixes: list[str] | tuple[str, ...]) -> str:
    for suf in suffixes:
        if stem.lower().endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def read_metadata(base: Path) -> tuple[dict[str, dict], list[Problem]]:
    """Optional ``metadata.jsonl`` (Hugging Face imagefolder style) keyed by ``file_name``.

    Rows may set ``defect``, ``category``, ``normal`` and ``prompt`` for one image.
    """
    path = base / "metadata.jsonl"
    rows: dict[str, dict] = {}
    problems: list[Problem] = []
    if not path.is_file():
        return rows, problems
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[PurePosixPath(row["file_name"]).as_posix()] = row
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            problems.append(Problem(path, "bad-metadata", f"line {n} is not a JSON object with 'file_name' ({e})"))
    return rows, problems


def scan_paired(base: Path, split: str | None, opts: DataOptions, *, defect: str | None = None,
                subset: str = "") -> tuple[list[Sample], list[Problem]]:
    """Pair ``base/images/**`` with ``base/masks/**`` by relative path and stem (any extensions).

    A first-level sub-folder of ``images/`` names the defect type (``images/scratch/1.png``);
    sub-folders named good/normal/ok hold normal images, whose masks are optional.
    """
    img_dir, mask_dir = find_child(base, IMAGE_DIR_NAMES), find_child(base, MASK_DIR_NAMES)
    problems: list[Problem] = []
    if img_dir is None:
        return [], [Problem(base, "missing-folder", f"no images folder (looked for {'/'.join(IMAGE_DIR_NAMES)})")]
    images: dict[PurePosixPath, Path] = {}
    for f in walk_files(img_dir):
        if (p := unsupported(f)) is not None:
            problems.append(p)
            continue
        if not is_image(f):
            continue
        key = PurePosixPath(f.relative_to(img_dir).with_suffix("").as_posix())
        if key in images:
            problems.append(Problem(f, "duplicate-name", f"another image has the same name ({images[key].name}); "
                                    "masks are matched by name, so the pair is ambiguous"))
            continue
        images[key] = f
    masks: dict[PurePosixPath, Path] = {}
    for f in walk_files(mask_dir) if mask_dir is not None else []:
        if (p := unsupported(f)) is not None:
            problems.append(p)
            continue
        if not is_image(f):
            continue
        rel = f.relative_to(mask_dir).with_suffix("")
        key = PurePosixPath(rel.parent.as_posix()) / strip_mask_suffix(rel.name, opts.mask_suffixes)
        if key in masks:
            problems.append(Problem(f, "duplicate-name", f"another mask has the same name ({masks[key].name})"))
            continue
        masks[key] = f
    meta, meta_problems = read_metadata(base)
    problems += meta_problems
    samples: list[Sample] = []
    for key, img in images.items():
        mask = masks.pop(key, None)
        group = key.parts[0] if len(key.parts) > 1 else None
        name = defect or group or "anomaly"
        row = meta.get(img.relative_to(base).as_posix(), {})
        normal = bool(row.get("normal", name.lower() in NORMAL_NAMES))
        if mask is None and not normal:
            where = mask_dir if mask_dir is not None else base / "masks"
            problems.append(Problem(img, "missing-mask", f"no mask for this image (looked for {where / key}.*)"))
            continue
        samples.append(Sample(image=img, mask=mask, defect=str(row.get("defect", "good" if normal else name)),
                              normal=normal, split=split, category=str(row.get("category", "")),
                              subset=subset, prompt=row.get("prompt")))
    for mask in masks.values():
        problems.append(Problem(mask, "orphan-mask", "mask has no image with the same name"))
    return samples, problems


def paired_split_dirs(root: Path) -> dict[str, Path]:
    """``{"train": root/train, ...}`` for split sub-folders that hold an images folder."""
    out: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_DIR_NAMES.get(child.name.lower())
        if split and find_child(child, IMAGE_DIR_NAMES) is not None:
            out[split] = child
    return out


def read_paired(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """Paired folders, either at ``root`` or in ``root/{train,val,test}``."""
    splits = paired_split_dirs(root)
    if not splits:
        return scan_paired(root, None, opts)
    samples, problems = [], []
    for split, base in splits.items():
        s, p = scan_paired(base, split, opts)
        samples += s
        problems += p
    return samples, problems


def _group_names(root: Path, dirs: list[Path]) -> dict[Path, str]:
    """Defect name per folder: first non-generic folder under root, minus a prefix all share ("MT_")."""
    names: dict[Path, str] = {}
    for d in dirs:
        parts = [p for p in d.relative_to(root).parts if p.lower() not in GENERIC_DIR_NAMES]
        names[d] = parts[0] if parts else "anomaly"
    distinct = sorted(set(names.values()))
    if len(distinct) >= 2 and "_" in distinct[0]:
        prefix = distinct[0].split("_", 1)[0] + "_"
        if all(n.startswith(prefix) and len(n) > len(prefix) for n in distinct):
            names = {d: n[len(prefix):] for d, n in names.items()}
    return names


def read_same_folder(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """Image and mask side by side: ``x.jpg`` + ``x.png`` (lossy image, lossless mask) or ``x.png`` + ``x_mask.png``."""
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    problems: list[Problem] = []
    for f in walk_files(root):
        if (p := unsupported(f)) is not None:
            problems.append(p)
        elif is_image(f):
            by_dir[f.parent].append(f)
    groups = _group_names(root, sorted(by_dir))
    samples: list[Sample] = []
    for d, files in sorted(by_dir.items()):
        name = groups[d]
        normal = name.lower() in NORMAL_NAMES
        stems: dict[str, list[Path]] = defaultdict(list)
        suffixed: dict[str, Path] = {}
        for f in files:
            base = strip_mask_suffix(f.stem, opts.mask_suffixes)
            if base != f.stem:
                suffixed[base] = f
            else:
                stems[f.stem].append(f)
        for stem, fs in sorted(stems.items()):
            image, mask = None, suffixed.pop(stem, None)
            if mask is not None and len(fs) == 1:
                image = fs[0]
            elif mask is None and len(fs) == 1:
                image = fs[0]
            elif mask is None and len(fs) == 2:
                lossy = [f for f in fs if f.suffix.lower() not in LOSSLESS_EXTS]
                if len(lossy) == 1:
                    image, mask = lossy[0], next(f for f in fs if f is not lossy[0])
            if image is None:
                problems.append(Problem(fs[0], "ambiguous-pair", "cannot tell image from mask among "
                                        f"{', '.join(f.name for f in fs)}; name masks <stem>_mask.<ext>"))
                continue
            if mask is None and not normal:
                problems.append(Problem(image, "missing-mask", f"no mask beside this image (looked for {stem}.png "
                                        f"and {stem}{opts.mask_suffixes[0]}.*)"))
                continue
            samples.append(Sample(image=image, mask=mask, defect="good" if normal else name, normal=normal))
        for mask in suffixed.values():
            problems.append(Problem(mask, "orphan-mask", "mask has no image with the same name beside it"))
    return samples, problems


def read_pranet(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """PraNet polyp split: ``TrainDataset/{images,masks}``, ``TestDataset/<set>/{images,masks}``."""
    samples, problems = [], []
    train = find_child(root, ("traindataset",))
    if train is not None:
        s, p = scan_paired(train, "train", opts, defect="polyp")
        samples += s
        problems += p
    test = find_child(root, ("testdataset",))
    for set_dir in sorted(p for p in test.iterdir() if p.is_dir()) if test is not None else []:
        s, p = scan_paired(set_dir, "test", opts, defect="polyp", subset=set_dir.name)
        samples += s
        problems += p
    return samples, problems


def has_same_folder_pairs(root: Path, limit: int = 5000) -> bool:
    """True if some folder under ``root`` holds an image with its mask beside it."""
    suffixes = tuple(DataOptions().mask_suffixes)
    seen: dict[tuple[Path, str], set[str]] = defaultdict(set)
    for i, f in enumerate(walk_files(root)):
        if i >= limit:
            break
        if not is_image(f):
            continue
        base = strip_mask_suffix(f.stem, suffixes)
        if base != f.stem:
            return True
        seen[(f.parent, f.stem)].add(f.suffix.lower())
    return any(len(exts) == 2 and len(exts - LOSSLESS_EXTS) == 1 for exts in seen.values())
