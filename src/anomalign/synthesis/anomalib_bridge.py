"""anomalign's synthetic anomalies as an anomalib dataset (docs/ecosystem.md).

``generate --normals GOOD --output-layout anomalib`` writes a folder that anomalib's ``Folder`` datamodule reads as
it is, and that anomalign still reads as a paired dataset:

  normal/            the normal images that received the defects (hard links where the file system allows)
  images/<defect>/   the generated anomalous images, full size     -> Folder(abnormal_dir="images")
  masks/<defect>/    their masks, the same relative names           -> Folder(mask_dir="masks")

anomalib's Folder rules (anomalib 2.x, ``make_folder_dataset``): each directory is searched recursively for image
extensions; all files are sorted by path and the i-th abnormal image gets the i-th mask, which must contain the
image's stem — so masks are matched by name as long as the two trees have the same relative names, as here.
Normal images become the train split, abnormal ones the test split.

``anomalib_dataset`` / ``use_for_validation``: the same folder as an ``AnomalibDataset`` (the ``samples`` frame
with ``image_path``, ``split``, ``label_index``, ``mask_path``), to make anomalib's validation split anomalign's
generated anomalies instead of its Perlin-noise blends (``val_split_mode="synthetic"``). anomalib is imported only
there (``pip install "anomalign[anomalib]"``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from anomalign.errors import AnomalignError

# The Folder(...) arguments of a folder written with --output-layout anomalib, relative to it.
FOLDER_DIRS = {"normal_dir": "normal", "abnormal_dir": "images", "mask_dir": "masks"}
NORMAL_DIR = FOLDER_DIRS["normal_dir"]


def normal_names(files: list[Path]) -> list[str]:
    """The names the host images get in ``normal/``: their own names when these are distinct, else each prefixed
    with its index (hosts from several folders may share a name)."""
    names = [Path(f).name for f in files]
    if len(set(names)) == len(names):
        return names
    return [f"{k:05d}_{n}" for k, n in enumerate(names)]


def write_normal_dir(out: Path, files: list[Path]) -> Path:
    """``out/normal/``: the host images ``files`` as they are (a hard link, or a copy across file systems); a file
    already there with the same bytes is kept, so a resumed run rewrites nothing. Returns the folder."""
    folder = Path(out) / NORMAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for src, name in zip(files, normal_names(files)):
        dest = folder / name
        if dest.exists():
            if dest.samefile(src) or dest.read_bytes() == Path(src).read_bytes():
                continue
            dest.unlink()
        tmp = folder / f".{name}.tmp"  # hidden: anomalib's and anomalign's readers skip it if a kill leaves it
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)  # no second copy of the user's images where the file system allows
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return folder


def folder_arguments(root: Path) -> dict:
    """``Folder(**folder_arguments(OUT), name=..., ...)``: root and the three directories of an exported folder."""
    root = Path(root)
    missing = [d for d in FOLDER_DIRS.values() if not (root / d).is_dir()]
    if missing:
        raise AnomalignError(f"{root}: not a folder written by `anomalign generate --output-layout anomalib` "
                             f"(no {', '.join(d + '/' for d in missing)})")
    return {"root": str(root), **FOLDER_DIRS}


def sample_rows(root: Path, split: str = "val") -> list[dict]:
    """The rows of an anomalib ``samples`` frame for an exported folder: every generated image (``label_index``
    1, its ``mask_path``) from ``metadata.jsonl`` and every image of ``normal/`` (``label_index`` 0, no mask), all
    with ``split``; sorted by ``image_path`` as anomalib sorts them."""
    import json
    root = Path(root)
    folder_arguments(root)
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise AnomalignError(f"{meta}: no such file; the generate run in {root} has not finished")
    rows = []
    for line in meta.read_text().splitlines():
        r = json.loads(line)
        rows.append({"image_path": str(root / r["file_name"]), "mask_path": str(root / r["mask_file_name"]),
                     "split": split, "label": "abnormal", "label_index": 1})
    for f in sorted((root / NORMAL_DIR).iterdir()):
        if f.is_file() and not f.name.startswith("."):
            rows.append({"image_path": str(f), "mask_path": "", "split": split, "label": "normal", "label_index": 0})
    return sorted(rows, key=lambda r: r["image_path"])


def anomalib_dataset(root: Path, split: str = "val", augmentations=None):
    """An ``anomalib.data.AnomalibDataset`` (segmentation task) holding ``sample_rows(root, split)``: the generated
    anomalies with their masks and the normal hosts. ``augmentations``: as for any anomalib dataset (e.g.
    ``torchvision.transforms.v2.Resize((256, 256))`` when the images differ in size)."""
    try:
        import pandas as pd
        from anomalib.data.datasets.base.image import AnomalibDataset
    except ImportError as e:
        raise AnomalignError(f"the anomalib bridge needs anomalib ({e}): pip install 'anomalign[anomalib]'") from None

    class AnomalignSynthetic(AnomalibDataset):
        """anomalign's generated anomalies (and their normal hosts) as one anomalib split."""

    dataset = AnomalignSynthetic(augmentations=augmentations)
    frame = pd.DataFrame(sample_rows(root, split))
    frame.attrs["task"] = "segmentation"
    dataset.samples = frame
    return dataset


def use_for_validation(datamodule, root: Path, augmentations=None):
    """Make ``datamodule``'s validation split (an anomalib image datamodule, e.g. ``Folder`` or ``MVTecAD``, not
    yet set up) anomalign's generated anomalies in ``root`` with their normal hosts, instead of a split of the
    test set or Perlin blends: anomalib then picks its threshold and reports validation metrics on them. Its
    train and test splits are untouched. ``augmentations``: the validation transforms (default: the
    datamodule's own, which its setup applies to every split). Returns ``datamodule``."""
    from anomalib.data.utils import ValSplitMode
    if augmentations is not None:  # setup() gives each split the datamodule's transforms: set them there
        datamodule.val_augmentations = augmentations
    datamodule.val_split_mode = ValSplitMode.FROM_DIR  # anomalib builds no validation split of its own then
    datamodule.val_data = anomalib_dataset(root, "val", datamodule.val_augmentations)
    return datamodule
