"""Readers for public anomaly benchmarks: MVTec AD, VisA and Real-IAD."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from anomalign.data.folders import DataOptions, is_image, strip_mask_suffix, unsupported, walk_files
from anomalign.data.sample import NORMAL_NAMES, Problem, Sample

# Real-IAD names its defects by two-letter codes; prompts read better with words.
REALIAD_DEFECTS = {"AK": "pit", "BX": "deformation", "CH": "abrasion", "HS": "scratch", "PS": "damage",
                   "QS": "missing_part", "YW": "foreign_object", "ZW": "contamination"}


def natural_key(path: Path) -> list:
    """Sort "2.png" before "10.png"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def mvtec_categories(root: Path) -> list[Path]:
    """``[root]`` if root is one MVTec category, else its sub-folders that look like categories."""
    if (root / "ground_truth").is_dir() and (root / "test").is_dir():
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "ground_truth").is_dir() and (d / "test").is_dir())


def _images(directory: Path, problems: list[Problem]) -> list[Path]:
    out = []
    for f in walk_files(directory):
        if (p := unsupported(f)) is not None:
            problems.append(p)
        elif is_image(f):
            out.append(f)
    return sorted(out, key=natural_key)


def read_mvtec(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """MVTec AD. Defect images have no train split: the first ceil(n/3) of each defect type (natural
    file-name order) train the generator/segmenter, the rest are test (AnomalyDiffusion's protocol)."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for cat_dir in mvtec_categories(root):
        cat = cat_dir.name
        good = cat_dir / "train" / "good"
        for f in _images(good, problems) if good.is_dir() else []:
            samples.append(Sample(f, None, "good", True, "train", category=cat))
        gt_root = cat_dir / "ground_truth"
        used_masks: set[Path] = set()
        for defect_dir in sorted(p for p in (cat_dir / "test").iterdir() if p.is_dir()):
            defect = defect_dir.name
            files = _images(defect_dir, problems)
            if defect.lower() in NORMAL_NAMES:
                samples += [Sample(f, None, "good", True, "test", category=cat) for f in files]
                continue
            gt_dir = gt_root / defect
            masks = {strip_mask_suffix(m.stem, opts.mask_suffixes): m
                     for m in (_images(gt_dir, problems) if gt_dir.is_dir() else [])}
            n_train = math.ceil(len(files) * opts.mvtec_train_fraction)
            for i, f in enumerate(files):
                mask = masks.get(f.stem)
                if mask is None:
                    problems.append(Problem(f, "missing-mask", f"no mask {gt_dir / (f.stem + '_mask.png')}"))
                    continue
                used_masks.add(mask)
                samples.append(Sample(f, mask, defect, False, "train" if i < n_train else "test", category=cat))
        for m in _images(gt_root, []) if gt_root.is_dir() else []:
            if m not in used_masks:
                problems.append(Problem(m, "orphan-mask", "ground-truth mask has no test image with the same name"))
    return samples, problems


def listed_pair_problem(image: Path, mask: Path | None, normal: bool, listed_in: str) -> Problem | None:
    """What is wrong with a pair a split file lists (image not on disk; anomalous image without its mask), or None."""
    if not image.is_file():
        return Problem(image, "missing-file", f"listed in {listed_in} but not on disk")
    if not normal and (mask is None or not mask.is_file()):
        return Problem(image, "missing-mask", f"anomalous image without mask file ({mask})")
    return None


def read_visa(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """VisA: ``split_csv/<visa_csv>`` rows (object, split, label, image, mask); masks hold class ids."""
    csv_path = root / "split_csv" / opts.visa_csv
    if not csv_path.is_file():
        return [], [Problem(csv_path, "missing-file", "VisA split file not found (set visa_csv to another file "
                            "in split_csv/)")]
    samples: list[Sample] = []
    problems: list[Problem] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            return [], [Problem(csv_path, "bad-csv", f"missing column(s) {sorted(missing)}")]
        for n, row in enumerate(reader, start=2):
            image = root / row["image"]
            normal = row["label"].strip().lower() in NORMAL_NAMES
            mask = root / row["mask"] if row["mask"].strip() else None
            split = {"train": "train", "test": "test", "val": "val"}.get(row["split"].strip().lower())
            if split is None:
                problems.append(Problem(csv_path, "bad-csv", f"line {n}: unknown split {row['split']!r}"))
                continue
            if (problem := listed_pair_problem(image, mask, normal, f"{csv_path.name} line {n}")) is not None:
                problems.append(problem)
                continue
            samples.append(Sample(image, mask if mask is not None and mask.is_file() else None,
                                  "good" if normal else "anomaly", normal, split,
                                  category=row["object"], mask_ids=True))
    return samples, problems


def _realiad_base(root: Path, category: str, first_path: str) -> Path:
    """The folder that ``image_path`` entries of one category are relative to."""
    candidates = [root / category]
    candidates += [d / category for d in sorted(root.iterdir()) if d.is_dir() and d.name.startswith("realiad_")]
    candidates.append(root)
    for c in candidates:
        if (c / first_path).is_file():
            return c
    return candidates[0]


def read_realiad(root: Path, opts: DataOptions) -> tuple[list[Sample], list[Problem]]:
    """Real-IAD: ``realiad_jsons/<category>.json`` with train/test lists of image_path, mask_path, anomaly_class."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for jf in sorted((root / "realiad_jsons").glob("*.json")):
        try:
            data = json.loads(jf.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append(Problem(jf, "bad-json", f"cannot parse ({e})"))
            continue
        normal_class = str((data.get("meta") or {}).get("normal_class", "OK"))
        bases: dict[str, Path] = {}
        for split in ("train", "test"):
            for item in data.get(split) or []:
                if not isinstance(item, dict) or "image_path" not in item:
                    problems.append(Problem(jf, "bad-json", f"an entry of '{split}' has no image_path"))
                    continue
                cat = str(item.get("category") or jf.stem)
                if cat not in bases:
                    bases[cat] = _realiad_base(root, cat, item["image_path"])
                image = bases[cat] / item["image_path"]
                cls = str(item.get("anomaly_class", normal_class))
                normal = cls == normal_class or cls.lower() in NORMAL_NAMES
                mask = bases[cat] / item["mask_path"] if item.get("mask_path") else None
                if (problem := listed_pair_problem(image, mask, normal, jf.name)) is not None:
                    problems.append(problem)
                    continue
                samples.append(Sample(image, mask if (mask is not None and mask.is_file()) else None,
                                      "good" if normal else REALIAD_DEFECTS.get(cls, cls), normal, split, category=cat))
    return samples, problems
