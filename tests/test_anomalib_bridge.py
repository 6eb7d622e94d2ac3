"""`generate --output-layout anomalib`: a folder anomalib's Folder datamodule reads as it is (docs/ecosystem.md).

CI does not install anomalib (its torchvision wheel needs the CUDA build of torch: docs/ecosystem.md), so the
layout is checked here with ``folder_rules``, a reader written from anomalib's documented Folder rules; the tests
that use anomalib itself are skipped where it is not importable and were run by hand in a venv that has it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalign.cli import main
from anomalign.errors import AnomalignError, ConfigError
from dummy_data import save

README = Path(__file__).resolve().parents[1] / "README.md"
# the extensions anomalib searches by default (torchvision's IMG_EXTENSIONS)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def folder_rules(root: Path, normal_dir: str, abnormal_dir: str, mask_dir: str) -> list[dict]:
    """The samples anomalib's Folder makes of ``root``, by its documented rules: each directory searched
    recursively for image extensions; all files sorted by path; the i-th abnormal image gets the i-th mask, whose
    stem must contain the image's stem (else anomalib raises MisMatchError); normal images are the train split
    (label 0), abnormal ones the test split (label 1)."""
    def files(d: str) -> list[Path]:
        found = [f for f in (root / d).glob("**/*") if f.suffix.lower() in IMG_EXTENSIONS and f.is_file()]
        assert found, f"anomalib: Found 0 images in {root / d}"
        return found

    tagged = sorted([(str(f), "normal") for f in files(normal_dir)] + [(str(f), "abnormal") for f in files(abnormal_dir)]
                    + [(str(f), "mask") for f in files(mask_dir)])
    abnormal = [p for p, t in tagged if t == "abnormal"]
    masks = [p for p, t in tagged if t == "mask"]
    assert len(abnormal) == len(masks), "anomalib: every abnormal image needs a mask"
    pairs = dict(zip(abnormal, masks))
    for image, mask in pairs.items():
        assert Path(image).stem in Path(mask).stem, f"anomalib MisMatchError: {image} got {mask}"
    return [{"image_path": p, "label_index": int(t == "abnormal"), "split": "test" if t == "abnormal" else "train",
             "mask_path": pairs.get(p, "")} for p, t in tagged if t != "mask"]


def export(tmp_path: Path, gen_dir: Path, *extra) -> Path:
    """`generate --normals ... --output-layout anomalib` of 6 pairs into two defect types, 2 normal hosts of
    different sizes and formats (one JPEG)."""
    from dummy_data import write_paired
    write_paired(tmp_path / "data", defects=("scratch", "hole"), n=2, normals=0)
    rng = np.random.default_rng(0)
    save(tmp_path / "good" / "a.png", rng.integers(0, 256, (60, 80, 3)).astype(np.uint8))
    Image.fromarray(rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)).save(tmp_path / "good" / "b.jpg")
    out = tmp_path / "syn"
    assert main(["generate", "--generator", str(gen_dir), "--masks", str(tmp_path / "data"), "--normals",
                 str(tmp_path / "good"), "--out", str(out), "--num", "6", "--steps", "2", "--split", "all",
                 "--device", "cpu", "--output-layout", "anomalib", *extra]) == 0
    return out


def test_exported_folder_follows_anomalibs_folder_rules(tmp_path, gen_dir):
    out = export(tmp_path, gen_dir)
    from anomalign.synthesis.anomalib_bridge import FOLDER_DIRS, folder_arguments, sample_rows
    assert folder_arguments(out) == {"root": str(out), "normal_dir": "normal", "abnormal_dir": "images",
                                     "mask_dir": "masks"}
    samples = folder_rules(out, **{k: v for k, v in FOLDER_DIRS.items()})
    normal = [s for s in samples if s["label_index"] == 0]
    abnormal = [s for s in samples if s["label_index"] == 1]
    assert sorted(Path(s["image_path"]).name for s in normal) == ["a.png", "b.jpg"]
    for s in normal:  # the hosts as they are (a hard link on one file system)
        host = tmp_path / "good" / Path(s["image_path"]).name
        assert Path(s["image_path"]).read_bytes() == host.read_bytes() and os.path.samefile(s["image_path"], host)
    rows = {str(out / r["file_name"]): r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert len(abnormal) == 6 and {s["image_path"] for s in abnormal} == set(rows)
    for s in abnormal:  # anomalib's pairing is anomalign's: the same mask file, an image-sized binary mask
        assert s["mask_path"] == str(out / rows[s["image_path"]]["mask_file_name"])
        image = np.asarray(Image.open(s["image_path"]).convert("RGB"))
        mask = np.asarray(Image.open(s["mask_path"]).convert("L")) > 0  # anomalib's read_mask: L, > 0
        assert image.shape[:2] == mask.shape and image.shape[:2] in ((60, 80), (48, 64)) and mask.any()
        assert set(np.unique(np.asarray(Image.open(s["mask_path"])))) <= {0, 255}
    # the adapter's samples frame holds the same pairs, and the normal hosts, as one split
    frame = sample_rows(out, "val")
    assert [r["image_path"] for r in frame] == sorted(r["image_path"] for r in frame)
    assert {(r["image_path"], r["mask_path"], r["label_index"]) for r in frame} == \
        {(s["image_path"], s["mask_path"], s["label_index"]) for s in samples}
    assert {r["split"] for r in frame} == {"val"}
    # still a paired dataset for anomalign (normal/ is not read as images)
    from anomalign.data import DataOptions, load_dataset
    index = load_dataset(out, DataOptions(), announce=False)
    assert len(index.samples) == 6 and all(s.mask is not None for s in index.samples)


def test_output_layout_resumes_and_needs_normal_hosts(tmp_path, gen_dir):
    out = export(tmp_path, gen_dir)
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    # the same run again, and the run without the option, resume: nothing is regenerated, normal/ is kept
    assert main(["generate", "--generator", str(gen_dir), "--masks", str(tmp_path / "data"), "--normals",
                 str(tmp_path / "good"), "--out", str(out), "--num", "6", "--steps", "2", "--split", "all",
                 "--device", "cpu"]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
    with pytest.raises(ConfigError, match="--output-layout anomalib writes the normal images"):
        from anomalign.synthesis.generate import GenerateConfig
        GenerateConfig(generator=gen_dir, masks=tmp_path / "data", out=tmp_path / "o", num=1,
                       output_layout="anomalib").validate()
    with pytest.raises(AnomalignError, match="no normal/"):
        from anomalign.synthesis.anomalib_bridge import folder_arguments
        folder_arguments(tmp_path / "data")


def test_distinct_names_in_normal_dir(tmp_path):
    from anomalign.synthesis.anomalib_bridge import normal_names, write_normal_dir
    a, b = save(tmp_path / "x" / "1.png", np.zeros((4, 4), np.uint8)), save(tmp_path / "y" / "1.png",
                                                                           np.ones((4, 4), np.uint8))
    assert normal_names([a, b]) == ["00000_1.png", "00001_1.png"]
    folder = write_normal_dir(tmp_path / "out", [a, b])
    assert sorted(p.name for p in folder.iterdir()) == ["00000_1.png", "00001_1.png"]


# --- with anomalib itself (skipped where it is not installed; see the module docstring) -------------------------


def readme_anomalib_example() -> str:
    text = README.read_text()
    section = text[text.index("## anomalib"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_anomalibs_folder_datamodule_loads_the_export(tmp_path, gen_dir, monkeypatch):
    pytest.importorskip("anomalib")
    out = export(tmp_path, gen_dir)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "synthetic").symlink_to(out)  # the README's path
    scope: dict = {}
    exec(compile(readme_anomalib_example(), "README.md", "exec"), scope)  # the README's snippet, as written
    datamodule = scope["datamodule"]
    datamodule.setup()
    test = datamodule.test_data.samples
    assert (test.label_index == 1).sum() + (datamodule.val_data.samples.label_index == 1).sum() == 6
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[1:] == (3, 256, 256) and batch.gt_mask.shape[1:] == (256, 256)
    abnormal = batch.gt_label == 1
    assert abnormal.any() and all(batch.gt_mask[abnormal].flatten(1).any(1))
    assert not batch.gt_mask[~abnormal].any()

    # the adapter: the generated anomalies (and their hosts) as the validation split of another datamodule
    from anomalib.data import Folder
    from torchvision.transforms.v2 import Resize

    from anomalign.synthesis.anomalib_bridge import use_for_validation
    other = Folder(name="real", root=out, normal_dir="normal", num_workers=0, augmentations=Resize((64, 64)))
    use_for_validation(other, out)
    other.setup()
    val = next(iter(other.val_dataloader()))
    assert val.image.shape[1:] == (3, 64, 64) and val.gt_mask.shape[1:] == (64, 64)
    assert set(other.val_data.samples.label_index) == {0, 1} and len(other.val_data) == 8
