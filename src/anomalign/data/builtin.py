"""The built-in dataset: procedural industrial surfaces with exact defect masks (``anomalign data make-demo``).

Written in the paired-folder layout so that every other command reads it like user data:
``OUT/{train,val,test}/images/<defect>/<material>_<n>.png`` + the same path under ``masks/``,
``metadata.jsonl`` per split (defect, category = material) and ``dataset_card.md``.
Sample i of a split depends only on (seed, split, i): the files are identical run to run.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from anomalign.config import option, save_config
from anomalign.data.procedural import DEFECTS, MATERIALS, render_sample
from anomalign.errors import ConfigError, DataError

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass
class MakeDemoConfig:
    """Options of ``anomalign data make-demo``."""

    out: Path = option(help="output folder (must not exist or be empty)", positional=True)
    seed: int = option(0, "random seed: same seed, identical files")
    size: int = option(64, "image side in pixels")
    materials: list[str] = option(default_factory=lambda: list(MATERIALS),
                                  help=f"surface materials to draw from ({', '.join(MATERIALS)})")
    defects: list[str] = option(default_factory=lambda: list(DEFECTS), help=f"defect types ({', '.join(DEFECTS)})")
    train_per_defect: int = option(24, "anomalous training images per defect type")
    val_per_defect: int = option(4, "anomalous validation images per defect type")
    test_per_defect: int = option(20, "anomalous test images per defect type")
    normal_train: int = option(24, "defect-free training images")
    normal_val: int = option(4, "defect-free validation images")
    normal_test: int = option(20, "defect-free test images")

    def validate(self) -> None:
        bad = [m for m in self.materials if m not in MATERIALS] + [d for d in self.defects if d not in DEFECTS]
        if bad:
            raise ConfigError(f"unknown material/defect {bad}; materials: {list(MATERIALS)}, defects: {list(DEFECTS)}")
        if self.size < 16:
            raise ConfigError(f"size must be >= 16, got {self.size}")
        counts = [self.train_per_defect, self.val_per_defect, self.test_per_defect,
                  self.normal_train, self.normal_val, self.normal_test]
        if min(counts) < 0:
            raise ConfigError("image counts must be >= 0")


def _plan(cfg: MakeDemoConfig) -> list[tuple[str, str, str | None]]:
    """(split, material, defect or None) per image; materials cycle so each defect sees all of them."""
    plan = []
    per_split = {"train": (cfg.train_per_defect, cfg.normal_train), "val": (cfg.val_per_defect, cfg.normal_val),
                 "test": (cfg.test_per_defect, cfg.normal_test)}
    for split, (n_def, n_norm) in per_split.items():
        for d in cfg.defects:
            plan += [(split, cfg.materials[i % len(cfg.materials)], d) for i in range(n_def)]
        plan += [(split, cfg.materials[i % len(cfg.materials)], None) for i in range(n_norm)]
    return plan


def make_demo_dataset(cfg: MakeDemoConfig, progress: bool = True) -> Path:
    """Render the dataset into ``cfg.out`` (built in a temp folder, renamed when complete)."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: output folder already exists and is not empty; choose another folder or remove it")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # leftovers of an interrupted make-demo: ours, safe to remove
    counters: dict[tuple[str, str], int] = {}
    rows: dict[str, list[dict]] = {s: [] for s in _SPLIT_CODES}
    plan = _plan(cfg)
    for i, (split, material, defect) in enumerate(tqdm(plan, desc="rendering", unit="img", disable=not progress)):
        key = (split, defect or "good")
        n = counters.get(key, 0)
        counters[key] = n + 1
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], i])
        image, mask = render_sample(rng, cfg.size, material, defect)
        rel = Path(defect or "good") / f"{material}_{n:04d}.png"
        for sub, arr in (("images", image), ("masks", mask.astype(np.uint8) * 255)):
            path = tmp / split / sub / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, optimize=False)
        rows[split].append({"file_name": f"images/{rel.as_posix()}", "mask": f"masks/{rel.as_posix()}",
                            "defect": defect or "good", "category": material, "normal": defect is None})
    for split, items in rows.items():
        if items:
            (tmp / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    _write_card(tmp, cfg, rows)
    save_config(cfg, tmp / "config.yaml")
    if out.exists():
        out.rmdir()  # checked empty above
    tmp.replace(out)
    return out


def _write_card(root: Path, cfg: MakeDemoConfig, rows: dict[str, list[dict]]) -> None:
    lines = ["# anomalign built-in demo dataset", "",
             "Procedurally generated industrial surfaces (numpy only, `anomalign.data.procedural`) with exact",
             "pixel masks: a mask pixel is set where the painted defect's coverage is >= 0.5.", "",
             f"- seed: {cfg.seed}; size: {cfg.size}x{cfg.size} px; materials: {', '.join(cfg.materials)}",
             f"- defect types: {', '.join(cfg.defects)}; normals live in `images/good/` with empty masks", "",
             "| split | " + " | ".join([*cfg.defects, "good"]) + " |", "|---" * (len(cfg.defects) + 2) + "|"]
    for split, items in rows.items():
        counts = [sum(r["defect"] == d for r in items) for d in [*cfg.defects, "good"]]
        lines.append(f"| {split} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", f"Reproduce: `anomalign data make-demo OUT --seed {cfg.seed} --size {cfg.size}`", ""]
    (root / "dataset_card.md").write_text("\n".join(lines))
