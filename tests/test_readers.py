"""Every layout reader on a small dataset generated in code."""
from collections import Counter

import pytest

from anomalign.data import DataOptions, detect_layout, load_dataset, read_dataset
from anomalign.errors import DataError
from dummy_data import (write_flat_paired, write_mvtec, write_paired, write_pranet, write_realiad,
                        write_same_folder, write_same_folder_suffix, write_visa)


def by_split(index):
    return Counter(s.split for s in index.samples)


def test_paired_with_split_folders(tmp_path):
    write_paired(tmp_path, splits=["train", "val", "test"], n=5, normals=3)
    index = load_dataset(tmp_path)
    assert index.layout == "paired"
    assert by_split(index) == {"train": 13, "val": 13, "test": 13}
    assert set(index.defects()) == {"scratch", "hole"}
    normals = [s for s in index.samples if s.normal]
    assert len(normals) == 9 and all(s.defect == "good" for s in normals)
    assert all(s.mask is not None and s.mask.stem == s.image.stem for s in index.samples)


def test_paired_flat_kvasir_style_jpeg_masks_get_a_seeded_split(tmp_path):
    write_flat_paired(tmp_path, n=10, mask_ext=".jpg")
    a = read_dataset(tmp_path, DataOptions(split_seed=0))
    b = read_dataset(tmp_path, DataOptions(split_seed=0))
    c = read_dataset(tmp_path, DataOptions(split_seed=1))
    assert a.layout == "paired"
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    assert [s.split for s in a.samples] != [s.split for s in c.samples]
    # 10 per group: round(10*0.2)=2 test, round(10*0.1)=1 val, 7 train
    assert by_split(a) == {"train": 7, "val": 1, "test": 2}
    assert all(s.defect == "anomaly" and not s.normal for s in a.samples)


def test_image_and_mask_folder_singular_names(tmp_path):
    write_paired(tmp_path, n=3, normals=0, dirs=("image", "mask"))
    assert len(load_dataset(tmp_path).samples) == 6


def test_same_folder_magnetic_tile_style(tmp_path):
    counts = write_same_folder(tmp_path, n=4, normals=5)
    index = load_dataset(tmp_path)
    assert index.layout == "same-folder"
    found = Counter("normal" if s.normal else s.defect for s in index.samples)
    assert found == {"Blowhole": 4, "Crack": 4, "normal": counts["Free"]}  # "MT_" prefix stripped
    assert all(s.image.suffix == ".jpg" and s.mask.suffix == ".png" for s in index.samples)


def test_same_folder_mask_suffix(tmp_path):
    write_same_folder_suffix(tmp_path, n=4)
    index = load_dataset(tmp_path)
    assert index.layout == "same-folder" and len(index.samples) == 4
    assert all(s.mask.name == s.image.stem + "_mask.png" for s in index.samples)


def test_mvtec_first_third_rule_and_missing_train_good(tmp_path):
    write_mvtec(tmp_path, n=7)
    index = load_dataset(tmp_path, DataOptions(val_fraction=0.0))
    assert index.layout == "mvtec"
    for cat in ("bottle", "screw"):
        for d in ("broken", "scratch"):
            group = [s for s in index.samples if s.category == cat and s.defect == d]
            train = sorted(s.image.name for s in group if s.split == "train")
            assert train == ["000.png", "001.png", "002.png"]  # ceil(7/3) = 3, natural order
            assert sum(s.split == "test" for s in group) == 4
    assert sum(s.normal and s.split == "train" for s in index.samples) == 4  # screw has no train/good
    assert detect_layout(tmp_path / "bottle") == "mvtec"  # one category folder works too


def test_visa_class_id_masks_are_binarized(tmp_path):
    from anomalign.data import load_pair
    write_visa(tmp_path)
    index = load_dataset(tmp_path)
    assert index.layout == "visa"
    anomalies = [s for s in index.samples if not s.normal]
    assert len(anomalies) == 6 and all(s.mask_ids for s in anomalies)
    assert {s.category for s in index.samples} == {"candle", "pcb1"}
    for s in anomalies:
        _, mask = load_pair(s, None)
        assert mask.sum() >= 9  # ids 1/2 would vanish under a 0.5*255 threshold


def test_realiad(tmp_path):
    write_realiad(tmp_path, n_ok=3, n_ng=4)
    index = load_dataset(tmp_path, DataOptions(val_fraction=0.0))
    assert index.layout == "realiad"
    assert Counter(s.defect for s in index.samples) == {"good": 3, "pit": 2, "scratch": 2}
    assert by_split(index) == {"train": 4, "test": 3}


def test_pranet_test_sets_are_kept_apart(tmp_path):
    info = write_pranet(tmp_path)
    index = load_dataset(tmp_path)
    assert index.layout == "pranet"
    assert index.subsets("test") == sorted(info["sets"])
    assert all(len(index.split("test", subset=s)) == info["test"] for s in info["sets"])
    assert len(index.split("train")) + len(index.split("val")) == info["train"]
    assert {s.defect for s in index.samples} == {"polyp"}


def test_explicit_layout_override_and_unknown_layout(tmp_path):
    write_same_folder_suffix(tmp_path)
    assert read_dataset(tmp_path, DataOptions(layout="same-folder")).layout == "same-folder"
    opts = DataOptions()
    opts.layout = "coco"  # bypasses the config check, as a library caller could
    with pytest.raises(DataError, match="unknown layout 'coco'; choose one of"):
        read_dataset(tmp_path, opts)


def test_undetectable_layout_explains_what_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="could not recognise the dataset layout.*--layout"):
        read_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope")
