"""generate --synthesizer cutpaste: real defect pixels pasted with their masks (the practitioner's baseline)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomalign.errors import ConfigError, DataError
from anomalign.synthesis.augment import MASK_AUGMENTS, augment_mask, augment_pair
from anomalign.synthesis.generate import GenerateConfig, run_generate
from dummy_data import save, write_paired


def test_augment_pair_moves_the_image_with_exactly_the_masks_layout():
    mask = torch.zeros(1, 32, 32)
    mask[0, 5:12, 8:20] = 1
    image = torch.rand(3, 32, 32) * 2 - 1
    for ops in [["flip"], ["rot90"], ["affine"], ["elastic"], ["replace"], list(MASK_AUGMENTS)]:
        for seed in range(4):
            m1, ops1 = augment_mask(mask, ops, torch.Generator().manual_seed(seed))
            m2, x2, ops2 = augment_pair(mask, image, ops, torch.Generator().manual_seed(seed))
            assert torch.equal(m1, m2) and ops1 == ops2 and x2.shape == (3, 32, 32)
    # exact ops move pixels exactly: a flipped pair is the flipped image
    m, x, ops = augment_pair(mask, image, ["flip"], torch.Generator().manual_seed(1))
    expected = image.flip(-1) if "hflip" in ops[0] else image
    expected = expected.flip(-2) if "vflip" in ops[0] else expected
    assert ops and torch.equal(x, expected)


@pytest.fixture()
def sources(tmp_path):
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=3, normals=0, image_ext=".png")  # defect pixels are 230
    return root


def normals_folder(root, n=2, size=(60, 70), grey=False):
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        img = (rng.random((*size, 3)) * 40 + 60).astype(np.uint8)
        save(root / "normals" / f"n{i}.png", img.mean(2).astype(np.uint8) if grey else img)
        save(root / "fg" / f"n{i}.png", np.ones(size, bool))
    return root / "normals", root / "fg"


def test_full_size_cut_paste_changes_only_the_mask_and_pastes_the_real_pixels(tmp_path, sources):
    normals, fg = normals_folder(tmp_path)
    out = tmp_path / "out"
    summary = run_generate(GenerateConfig(synthesizer="cutpaste", masks=sources, normals=normals, foreground=fg,
                                          out=out, num=4, split="all", augment=["flip"], device="cpu"),
                           progress=False)
    assert summary["kept"] == 4
    rows = [json.loads(r) for r in (out / "metadata.jsonl").read_text().splitlines()]
    for r in rows:
        image = np.asarray(Image.open(out / r["file_name"]))
        mask = np.asarray(Image.open(out / r["mask_file_name"])) > 127
        normal = np.asarray(Image.open(r["normal_image"]))
        assert r["synthesizer"] == "cutpaste" and image.shape == normal.shape and mask.any()
        assert np.array_equal(image[~mask], normal[~mask])  # exactly untouched outside the mask
        assert (image[mask] == 230).all()  # the source's defect pixels (flips move pixels exactly)
        y, x, h, w = r["defect_box"]
        assert mask[y:y + h, x:x + w].sum() == mask.sum()


def test_cut_paste_into_resized_backgrounds_and_grey_normals(tmp_path, sources):
    normals, _ = normals_folder(tmp_path, grey=True)
    out = tmp_path / "bg"
    run_generate(GenerateConfig(synthesizer="cutpaste", masks=sources, background=normals, resolution=32, out=out,
                                num=2, split="all", device="cpu"), progress=False)
    for p in sorted((out / "images").rglob("*.png")):
        img = Image.open(p)
        assert img.mode == "L" and img.size == (32, 32)  # grey normals stay grey
    grey_out = tmp_path / "grey_full"
    run_generate(GenerateConfig(synthesizer="cutpaste", masks=sources, normals=normals, out=grey_out, num=2,
                                split="all", device="cpu"), progress=False)
    assert all(Image.open(p).mode == "L" for p in (grey_out / "images").rglob("*.png"))


def test_cut_paste_options_and_inputs_are_checked(tmp_path, sources):
    normals, _ = normals_folder(tmp_path)
    with pytest.raises(ConfigError, match="--normals .* or\n?.*--background"):
        GenerateConfig(synthesizer="cutpaste", masks=sources, out=tmp_path / "o", num=1).validate()
    with pytest.raises(ConfigError, match="needs --resolution"):
        GenerateConfig(synthesizer="cutpaste", masks=sources, background=normals, out=tmp_path / "o", num=1).validate()
    with pytest.raises(ConfigError, match="free-lunch score needs a generator"):
        GenerateConfig(synthesizer="cutpaste", masks=sources, normals=normals, out=tmp_path / "o", num=1,
                       filter_by="free-lunch").validate()
    with pytest.raises(ConfigError, match="--generator is required"):
        GenerateConfig(masks=sources, out=tmp_path / "o", num=1).validate()
    mask_folder = tmp_path / "bare_masks"
    save(mask_folder / "scratch" / "m.png", np.pad(np.ones((4, 4), bool), 8))
    with pytest.raises(DataError, match="cut-paste needs the image of each mask"):
        run_generate(GenerateConfig(synthesizer="cutpaste", masks=mask_folder, normals=normals, out=tmp_path / "o2",
                                    num=1, device="cpu"), progress=False)
