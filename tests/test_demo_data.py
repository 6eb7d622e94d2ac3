"""The built-in dataset: deterministic by seed, exact masks, readable by the data layer."""
import filecmp
from pathlib import Path

import numpy as np
import pytest

from anomalign.config import build_config
from anomalign.data import load_dataset
from anomalign.data.builtin import MakeDemoConfig, make_demo_dataset
from anomalign.data.procedural import DEFECTS, MATERIALS, render_material, render_sample
from anomalign.errors import DataError

SMALL = dict(train_per_defect=3, val_per_defect=1, test_per_defect=2, normal_train=2, normal_val=1, normal_test=2)


def make(out, **kw):
    return make_demo_dataset(build_config(MakeDemoConfig, {"out": str(out), **SMALL, **kw}), progress=False)


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "config.yaml")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "config.yaml")
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def test_same_seed_identical_files_different_seed_differs(tmp_path):
    a, b, c = make(tmp_path / "a"), make(tmp_path / "b"), make(tmp_path / "c", seed=1)
    assert same_tree(a, b)
    assert not same_tree(a, c)


def test_reads_back_as_paired_layout_with_counts_and_categories(tmp_path):
    out = make(tmp_path / "d")
    index = load_dataset(out)
    assert index.layout == "paired" and not index.problems
    n_def = len(DEFECTS)
    assert len(index.split("train")) == 3 * n_def + 2
    assert len(index.split("test")) == 2 * n_def + 2
    assert set(index.defects()) == set(DEFECTS)
    assert {s.category for s in index.samples} <= set(MATERIALS)
    assert (out / "dataset_card.md").is_file() and (out / "config.yaml").is_file()


def test_refuses_to_overwrite(tmp_path):
    out = make(tmp_path / "e")
    with pytest.raises(DataError, match="already exists and is not empty"):
        make(out)


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("material", MATERIALS)
def test_masks_are_exact(material, defect):
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    image, mask = render_sample(rng_a, 64, material, defect)
    background = (render_material(rng_b, 64, material) * 255 + 0.5).astype(np.uint8)
    assert mask.any() and image.shape == (64, 64, 3) and image.dtype == np.uint8
    changed = np.abs(image.astype(int) - background.astype(int)).max(-1) > 0
    # Outside the mask, only a thin anti-aliased rim may change: every changed pixel touches the mask.
    near = np.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(mask, dy, 0), dx, 1)
    assert not (changed & ~near).any()
