"""`generate --normals`: defects generated into full-size normal images, pasted back exactly, on the object."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomalign.errors import ConfigError
from anomalign.synthesis.generate import GenerateConfig, run_generate
from dummy_data import pasted_pairs, save, write_paired


def normals_with_objects(folder, n=3, grey=False):
    """Normal images 90 x 130 with a bright disc (the object) on a dark background, and the discs as masks."""
    fg_dir = folder.parent / (folder.name + "_fg")
    yy, xx = np.mgrid[:90, :130]
    rng = np.random.default_rng(0)
    for i in range(n):
        disc = (yy - 45) ** 2 + (xx - 60 - 5 * i) ** 2 < 38 ** 2
        img = np.where(disc[..., None], rng.integers(150, 200, (90, 130, 3)), 15).astype(np.uint8)
        if grey:
            img = np.repeat(img[..., :1], 3, axis=2)
        save(folder / f"n{i}.png", img[..., 0] if grey else img)
        save(fg_dir / f"n{i}.png", disc)
    return fg_dir


def run(gen_dir, data, normals, out, **kw):
    cfg = GenerateConfig(**(dict(generator=gen_dir, masks=data, out=out, num=6, split="all", steps=2, batch_size=3,
                                 augment=["flip"], device="cpu", normals=normals) | kw))
    return run_generate(cfg, progress=False)


def dilate(mask, px):
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * px + 1, 1, px)[0, 0].numpy() > 0


@pytest.mark.parametrize("margin", [0.0, None])
def test_full_size_pairs_change_only_the_dilated_mask_and_sit_on_the_object(gen_dir, tmp_path, margin):
    """margin 0: the old region (the mask grown by --dilate); the default: that plus the context band."""
    from anomalign.generator.window import DILATE_PX, MARGIN, band_px
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    fg_dir = normals_with_objects(tmp_path / "normals")
    run(gen_dir, data, tmp_path / "normals", tmp_path / "out", foreground=fg_dir,
        **({} if margin is None else {"margin": margin}))
    pairs = list(pasted_pairs(tmp_path / "out"))
    assert len(pairs) == 6
    for r, image, mask, normal in pairs:
        fg = np.asarray(Image.open(fg_dir / (r["normal_image"].rsplit("/", 1)[1]))) > 127
        assert image.shape == normal.shape == (90, 130, 3) and mask.shape == (90, 130)
        y, x, h, w = r["defect_box"]
        assert mask.any() and mask[y:y + h, x:x + w].sum() == mask.sum()
        assert fg[mask].all()  # on the object
        top, left, side = r["window"]
        band = 0 if margin == 0 else band_px(max(h, w) * 32 / side, MARGIN) * side / 32  # the generator is 32 px
        outside = ~dilate(mask, DILATE_PX + int(np.ceil(band)) + 1)  # +1: a soft region is resized bilinearly
        assert np.array_equal(image[outside], normal[outside])  # byte-identical (PNG, lossless)
        assert r["source_mask"] and len(r["window"]) == 3


def test_grayscale_normals_stay_grayscale_and_foreground_is_estimated(gen_dir, tmp_path):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    normals_with_objects(tmp_path / "normals", n=2, grey=True)
    run(gen_dir, data, tmp_path / "normals", tmp_path / "out", num=3)
    rows = [json.loads(r) for r in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    yy, xx = np.mgrid[:90, :130]
    for r in rows:
        im = Image.open(tmp_path / "out" / r["file_name"])
        assert im.mode == "L"
        mask = np.asarray(Image.open(tmp_path / "out" / r["mask_file_name"])) > 127
        j = int(r["normal_image"].rsplit("/", 1)[1][1])
        disc = (yy - 45) ** 2 + (xx - 60 - 5 * j) ** 2 < 38 ** 2
        assert disc[mask].mean() > 0.95  # the estimated foreground is the disc


def test_normals_option_errors(gen_dir, tmp_path):
    with pytest.raises(ConfigError, match="--normals and --background"):
        GenerateConfig(generator=gen_dir, masks=tmp_path, out=tmp_path / "o", num=1, normals=tmp_path,
                       background=tmp_path).validate()
    with pytest.raises(ConfigError, match="--foreground needs --normals"):
        GenerateConfig(generator=gen_dir, masks=tmp_path, out=tmp_path / "o", num=1, foreground=tmp_path).validate()


def test_a_defect_longer_than_the_image_is_short_is_scaled_to_fit(tmp_path):
    from anomalign.synthesis.fullsize import NormalImages, fit_defect, plan
    save(tmp_path / "n" / "narrow.png", np.full((120, 40, 3), 90, np.uint8))
    defect = np.ones((100, 20), bool)  # fits the image, but a square window of side 100 does not
    p, placed = plan(0, 0, defect, NormalImages([tmp_path / "n" / "narrow.png"]), size=32)
    assert p.side <= 40 and p.shrink == pytest.approx(0.4) and placed.shape == (40, 8)
    assert p.top <= p.y and p.y + p.h <= p.top + p.side and p.left <= p.x and p.x + p.w <= p.left + p.side
    assert fit_defect(defect, 200)[1] == 1.0


def hosts_with_cracks(root, n=3):
    """A paired dataset of anomalous images only (CrackForest-like: no normals), 64 x 96, one bright horizontal
    crack each."""
    rng = np.random.default_rng(3)
    for i in range(n):
        img = rng.integers(60, 100, (64, 96, 3)).astype(np.uint8)
        mask = np.zeros((64, 96), bool)
        mask[30 + i:32 + i, 5:90] = True
        img[mask] = 240
        save(root / "images" / "crack" / f"{i:03d}.png", img)
        save(root / "masks" / "crack" / f"{i:03d}.png", mask)
    return root


@pytest.mark.parametrize("synthesizer", ["diffusion", "cutpaste"])
def test_anomalous_hosts_keep_their_own_mask_and_new_defects_keep_their_distance(gen_dir, tmp_path, synthesizer):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    hosts = hosts_with_cracks(tmp_path / "hosts")
    kw = {"generator": None, "synthesizer": "cutpaste"} if synthesizer == "cutpaste" else {}
    run(gen_dir, data, hosts, tmp_path / "out", hosts="anomalous", host_gap=8, num=12, **kw)
    rows = [json.loads(r) for r in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for r in rows:
        image = np.asarray(Image.open(tmp_path / "out" / r["file_name"]).convert("RGB")).astype(int)
        mask = np.asarray(Image.open(tmp_path / "out" / r["mask_file_name"])) > 127
        host = np.asarray(Image.open(r["normal_image"]).convert("RGB")).astype(int)
        own = np.asarray(Image.open(r["host_mask"])) > 127
        y, x, h, w = r["defect_box"]
        new = mask.copy()
        new[own] = False
        assert (mask[own]).all() and new.any()  # the union: the host's crack and the new defect
        assert not (dilate(new, 8) & own).any()  # --host-gap px between them
        assert np.array_equal(image[own], host[own])  # the host's crack itself is untouched (the band avoids it)
        if synthesizer == "cutpaste":
            assert np.array_equal(image[~new], host[~new])


def test_anomalous_hosts_need_a_dataset(tmp_path):
    with pytest.raises(ConfigError, match="--hosts anomalous needs --normals"):
        GenerateConfig(synthesizer="cutpaste", masks=tmp_path, out=tmp_path / "o", num=1, background=tmp_path,
                       resolution=32, hosts="anomalous").validate()


def test_long_defects_are_cut_into_pieces_of_native_width():
    import random
    from anomalign.synthesis.fullsize import defect_box
    mask = np.zeros((40, 300), bool)
    mask[20:23, 10:290] = True  # a 3-px wide crack, 280 px long
    assert defect_box(mask) == (20, 10, 23, 290)  # no limit: the bounding box
    for seed in range(5):
        y0, x0, y1, x1 = defect_box(mask, 64, random.Random(seed))
        assert (y1 - y0, x1 - x0) == (3, 64) and 10 <= x0 and x1 <= 290  # width kept, length cut
    assert defect_box(mask, 500, random.Random(0)) == (20, 10, 23, 290)  # short enough: whole


def test_max_defect_size_keeps_pasted_cracks_at_native_width(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        img = np.full((40, 300, 3), 90, np.uint8)
        mask = np.zeros((40, 300), bool)
        mask[18:21, 5:295] = True
        img[mask] = 20
        save(src / "images" / "crack" / f"{i}.png", img)
        save(src / "masks" / "crack" / f"{i}.png", mask)
    hosts = hosts_with_cracks(tmp_path / "hosts")  # 64 x 96: a whole 290-px crack would be shrunk 3x
    cfg = dict(synthesizer="cutpaste", masks=src, normals=hosts, hosts="anomalous", split="all", num=4,
               device="cpu")
    run_generate(GenerateConfig(out=tmp_path / "whole", **cfg), progress=False)
    run_generate(GenerateConfig(out=tmp_path / "pieces", max_defect_size=40, **cfg), progress=False)
    for name, scale_ok in (("whole", lambda s: s < 0.5), ("pieces", lambda s: s == 1.0)):
        rows = [json.loads(r) for r in (tmp_path / name / "metadata.jsonl").read_text().splitlines()]
        assert all(scale_ok(r["defect_scale"]) for r in rows), name
    for r in rows:  # pieces: at most 40 px long, 3 px wide (the crack is horizontal; flips keep it so)
        y, x, h, w = r["defect_box"]
        assert h == 3 and w <= 40


def test_max_defect_size_needs_normals(tmp_path):
    with pytest.raises(ConfigError, match="max_defect_size"):
        GenerateConfig(synthesizer="cutpaste", masks=tmp_path, out=tmp_path / "o", num=1, background=tmp_path,
                       resolution=32, max_defect_size=16).validate()


def test_oracle_scores_the_window_and_the_filter_keeps_the_unfiltered_pairs(gen_dir, tmp_path):
    class Everything:  # marks every pixel it sees: its IoU with a mask is the mask's share of that input
        def predict_proba(self, images):
            return torch.ones(images.shape[0], 1, *images.shape[-2:])

    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    normals_with_objects(tmp_path / "normals")
    cfg = dict(generator=gen_dir, masks=data, num=6, split="all", steps=2, batch_size=3, augment=["flip"],
               device="cpu", normals=tmp_path / "normals", scores=["none"])  # the oracle object adds its score
    run_generate(GenerateConfig(out=tmp_path / "all", **cfg), progress=False, oracle=Everything())
    rows = [json.loads(r) for r in (tmp_path / "all" / "metadata.jsonl").read_text().splitlines()]
    for r in rows:  # the oracle saw the generation window (side 32 at native scale), not the whole image
        mask = np.asarray(Image.open(tmp_path / "all" / r["mask_file_name"])) > 127
        top, left, side = r["window"]
        assert r["scores"]["oracle_iou"] == pytest.approx(mask[top:top + side, left:left + side].mean(), abs=0.02)
        assert r["scores"]["oracle_iou"] > 2 * mask.mean()
    thr = float(np.median([r["scores"]["oracle_iou"] for r in rows]))
    run_generate(GenerateConfig(out=tmp_path / "f", min_alignment=thr, **(cfg | {"num": 2})), progress=False,
                 oracle=Everything())
    kept = [json.loads(r) for r in (tmp_path / "f" / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in kept] == [r["index"] for r in rows if r["scores"]["oracle_iou"] >= thr][:2]
    for r in kept:  # attempt i draws the same pair with or without the filter
        same = np.asarray(Image.open(tmp_path / "all" / r["file_name"])).astype(int)
        assert np.abs(np.asarray(Image.open(tmp_path / "f" / r["file_name"])).astype(int) - same).max() == 0


def test_a_full_size_set_of_many_image_sizes_is_evaluated_as_its_generation_windows(gen_dir, tmp_path):
    """Full-size pairs take their hosts' sizes (magnetic tile's vary): `evaluate-generation` compares the
    generation windows with windows around the real defects instead of failing to stack the images."""
    from anomalign.evaluation.generation import EvaluateGenerationConfig, read_generated, run_evaluate_generation
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    normals_with_objects(tmp_path / "normals", n=2)
    big = np.asarray(Image.open(tmp_path / "normals" / "n0.png"))
    save(tmp_path / "normals" / "n2.png", np.pad(big, ((0, 30), (0, 17), (0, 0)), mode="edge"))  # another size
    run(gen_dir, data, tmp_path / "normals", tmp_path / "out")
    rows = [json.loads(r) for r in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len({tuple(r["resolution"]) for r in rows}) == 2  # both host sizes were used
    images, masks, _ = read_generated(tmp_path / "out", 100)
    side = rows[0]["window"][2]
    assert images.shape == (6, side, side, 3) and masks.shape == (6, side, side) and masks.any(axis=(1, 2)).all()
    result = run_evaluate_generation(EvaluateGenerationConfig(generated=[tmp_path / "out"], real=data, split="all",
                                                              out=tmp_path / "eval", extra_metrics=False))
    assert result["resolution"] == side and result["sets"]["out"]["images"] == 6
    assert any("generation windows" in n for n in result["notes"])


def test_generation_windows_larger_than_the_generator_are_resized_to_its_side(tmp_path):
    """A defect larger than the generator's resolution gets a larger window (generated at the resolution and
    resized back), a host smaller than it a smaller one: read as windows, every pair comes out at the most
    common side, masks still on their defect."""
    from anomalign.evaluation.generation import defect_window, read_generated
    rows = []
    for i, (hw, window) in enumerate([((90, 130), [10, 20, 32]), ((70, 100), [5, 40, 48]), ((60, 90), [0, 8, 32]),
                                      ((24, 90), [0, 30, 24])]):
        image = np.full((*hw, 3), 40, np.uint8)
        mask = np.zeros(hw, bool)
        top, left, side = window
        mask[top + side // 4: top + side // 2, left + side // 4: left + side // 2] = True
        save(tmp_path / "images" / f"{i}.png", image)
        save(tmp_path / "masks" / f"{i}.png", mask)
        rows.append({"file_name": f"images/{i}.png", "mask_file_name": f"masks/{i}.png", "index": i, "window": window})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    images, masks, _ = read_generated(tmp_path, 10)
    assert images.shape == (4, 32, 32, 3) and masks[:, 8:16, 8:16].all()  # the most common side: 32
    big = np.zeros((100, 200), bool)
    big[40:50, 10:190] = True  # 180 px long: a 180-px window, resized to 64
    image, mask = defect_window(np.zeros((100, 200, 3), np.uint8), big, 64)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask[:, 2:62].any(axis=0).all()
