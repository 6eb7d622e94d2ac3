"""The classifier two-sample test of issue 46: can a small model tell generated defect crops from real ones?"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomalign.evaluation.discriminability import (auc, boundary_ring, c2st, crop_features, defect_crop,
                                                   defect_crops, delong_interval, discriminability,
                                                   stratified_folds)


def defect_set(n: int, seed: int, size: int = 96, edge: float = 0.0, shift: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of one distribution: a smooth reddish texture with an elliptic lighter defect blended in over a
    feathered boundary (uint8 [n, size, size, 3], bool masks). ``edge``: grey levels taken off the defect's outer
    1-px boundary (a pasted-looking seam); ``shift``: grey levels added to the whole image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images, masks = [], []
    for _ in range(n):
        low = F.interpolate(torch.from_numpy(rng.normal(size=(1, 3, size // 4, size // 4)).astype(np.float32)),
                            size=(size, size), mode="bicubic", align_corners=False)[0].numpy()
        base = np.array([170, 110, 100], np.float32)[:, None, None] + 15 * low + rng.normal(0, 4, (3, size, size))
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        ry, rx = rng.uniform(0.08, 0.2, 2) * size
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = d <= 1
        alpha = np.clip((1.3 - d) / 0.6, 0, 1)  # the defect fades into its surroundings
        image = base * (1 - alpha) + (np.array([200, 150, 140], np.float32)[:, None, None] + 10 * low[::-1]) * alpha
        if edge:
            inner = -F.max_pool2d(-torch.from_numpy(mask.astype(np.float32))[None, None], 3, 1, 1)[0, 0].numpy()
            image[:, mask & (inner < 0.5)] -= edge
        images.append(np.clip(image + shift, 0, 255).astype(np.uint8).transpose(1, 2, 0))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


@pytest.fixture(scope="module")
def crops():
    """Crops of three sets: two of one distribution, one with a hard dark edge along every mask boundary, one
    with every pixel 15 grey levels brighter."""
    return {"a": defect_crops(*defect_set(120, 1)), "b": defect_crops(*defect_set(120, 2)),
            "edge": defect_crops(*defect_set(120, 3, edge=40)), "bright": defect_crops(*defect_set(120, 4, shift=15))}


def test_identical_distributions_are_indistinguishable(crops):
    r = discriminability(*crops["a"], *crops["b"], seed=0)
    assert r["real"] == r["synthetic"] == 120 and r["size"] == 64
    for variant in ("crop", "seam"):
        v = r[variant]
        assert abs(v["auc"] - 0.5) < 0.1, (variant, v)
        assert v["ci_low"] <= 0.5 <= v["ci_high"], (variant, v)
        assert abs(v["auc_permuted"] - 0.5) < 0.05 and v["p_permutation"] > 0.05, (variant, v)


def test_a_hard_edge_along_the_mask_boundary_is_found_by_the_seam_ring(crops):
    r = discriminability(*crops["a"], *crops["edge"], seed=0)
    assert r["seam"]["auc"] > 0.95 and r["seam"]["ci_low"] > 0.85, r["seam"]
    assert r["crop"]["auc"] > 0.95, r["crop"]
    # the permutation control of the same crops stays at chance, and the real labels beat every permutation
    for variant in ("crop", "seam"):
        assert abs(r[variant]["auc_permuted"] - 0.5) < 0.06, r[variant]
        assert r[variant]["p_permutation"] == pytest.approx(1 / 31)
    # and the statistics that told them apart are the boundary's
    assert any(name.startswith(("ring", "boundary")) for name, _ in r["seam"]["top_features"])


def test_the_seam_ring_ignores_colour_the_whole_crop_sees_it(crops):
    """A brighter image everywhere: the whole crop tells it at once, the seam ring (no absolute colour, only the
    transition) cannot."""
    r = discriminability(*crops["a"], *crops["bright"], seed=0)
    assert r["crop"]["auc"] > 0.95, r["crop"]
    assert abs(r["seam"]["auc"] - 0.5) < 0.1 and r["seam"]["ci_low"] <= 0.5, r["seam"]


def test_deterministic_by_seed(crops):
    one = discriminability(*crops["a"], *crops["edge"], seed=3, permutations=5)
    two = discriminability(*crops["a"], *crops["edge"], seed=3, permutations=5)
    assert json.dumps(one) == json.dumps(two)
    other = discriminability(*crops["a"], *crops["b"], seed=4, permutations=5)
    same = discriminability(*crops["a"], *crops["b"], seed=3, permutations=5)
    assert other["crop"]["auc"] != same["crop"]["auc"]  # the seed draws the folds (and nothing else does)
    y = np.r_[np.zeros(50, int), np.ones(30, int)]
    folds = stratified_folds(y, 5, 0)
    assert all((np.bincount(folds[y == c]) == n).all() for c, n in ((0, 10), (1, 6)))  # every fold, both classes
    assert not np.array_equal(folds, stratified_folds(y, 5, 1))


def test_cheap_on_one_thread(crops):
    """A few hundred crops, both variants, 30 permutations: well under 30 s on one CPU thread (issue 46)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        images = np.concatenate([crops["a"][0], crops["b"][0], crops["edge"][0]])
        masks = np.concatenate([crops["a"][1], crops["b"][1], crops["edge"][1]])
        discriminability(images[:180], masks[:180], images[180:], masks[180:], seed=0)
        assert time.perf_counter() - start < 30
    finally:
        torch.set_num_threads(threads)


def test_auc_and_delong_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    y = np.array([0, 0, 1, 1, 1])
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: wins 1+0, 1+1, 1+0.5 -> 4.5 / 6
    assert auc(scores, y) == pytest.approx(0.75)
    low, high, se = delong_interval(scores, y)
    v10, v01 = np.array([0.5, 1.0, 0.75]), np.array([1.0, 0.5])  # per positive / per negative
    assert se == pytest.approx(np.sqrt(v10.var(ddof=1) / 3 + v01.var(ddof=1) / 2))
    assert low == pytest.approx(max(0, 0.75 - 1.959964 * se), abs=1e-5) and high == 1.0
    with pytest.raises(ValueError):
        auc(scores, np.ones(5, int))


def test_c2st_needs_two_of_each_and_names_its_features():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(0, 1, (40, 3)) + [2, 0, 0]]
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    r = c2st(X, y, ["a", "b", "c"], permutations=5)
    assert r["auc"] > 0.8 and r["top_features"][0][0] == "a" and r["top_features"][0][1] > 0
    with pytest.raises(ValueError):
        c2st(X[:41], y[:41])


def test_defect_crop_centre_and_scale():
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    small = np.zeros((300, 400), bool)
    small[100:110, 200:212] = True
    crop, m = defect_crop(image, small)
    # a small defect keeps its native pixels: the crop is the 64-px square around it, unresized
    assert crop.shape == (64, 64, 3) and m.sum() == 120
    ys, xs = np.nonzero(m)
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1
    top, left = 104 - 32, 205 - 32  # the defect pixel nearest the box centre (104.5, 205.5), the first of a tie
    assert np.array_equal(crop, image[top:top + 64, left:left + 64])
    large = np.zeros((300, 400), bool)
    large[50:130, 20:100] = True  # 80 px: a 160-px crop with the defect in its middle half, shrunk to 64
    crop, m = defect_crop(image, large)
    assert m.shape == (64, 64) and 0.2 < m.mean() < 0.3
    long = np.zeros((300, 400), bool)
    long[150, 10:390] = True  # a 380-px crack: the crop stops at the image's shorter side, crack through its middle
    crop, m = defect_crop(image, long)
    assert m[31:34].any() and not m[:25].any()
    assert defect_crop(image, np.zeros((300, 400), bool)) is None
    images, masks = defect_crops([image, image], [small, np.zeros((300, 400), bool)])
    assert images.shape == (1, 64, 64, 3)


def test_boundary_ring_reaches_both_sides():
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 10:22, 10:22] = True
    ring = boundary_ring(mask, 2)[0]
    assert ring[10, 16] and ring[8, 16] and not ring[7, 16] and not ring[16, 16] and ring[11, 16]
    assert not ring[12, 16]


def test_feature_variants_have_names():
    images, masks = defect_crops(*defect_set(4, 0))
    for variant, n in (("crop", 30), ("seam", 22)):
        X, names = crop_features(images, masks, variant)
        assert X.shape == (4, n) == (4, len(names)) and np.isfinite(X).all()
    with pytest.raises(ValueError):
        crop_features(images, masks, "ring")


def generated_folder(folder, images, masks, rows_extra=None) -> None:
    """A generated set as `generate` writes it: images/, masks/ and metadata.jsonl."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{i}.png")
        rows.append({"file_name": f"images/{i}.png", "mask_file_name": f"masks/{i}.png", "index": i,
                     **((rows_extra or [{}] * len(images))[i])})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evaluate_generation_shows_the_score(tmp_path, monkeypatch):
    """`evaluate-generation` (and so `run --quality` and the run report, which print its table) gives both AUCs
    with their intervals and the permutation control, next to the other columns."""
    from anomalign.errors import AnomalignError
    from anomalign.evaluation import fid
    from anomalign.evaluation.generation import EvaluateGenerationConfig, run_evaluate_generation

    def no_inception(*args, **kwargs):  # FID has its own tests; on one CPU thread it would take a minute here
        raise AnomalignError("Inception weights left out by the test")
    monkeypatch.setattr(fid, "inception_features", no_inception)
    real_images, real_masks = defect_set(24, 10, size=64)
    data = tmp_path / "data"
    for sub in ("images/blob", "masks/blob"):
        (data / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(real_images, real_masks)):
        Image.fromarray(image).save(data / "images" / "blob" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(data / "masks" / "blob" / f"{i:03d}.png")
    generated_folder(tmp_path / "same", *defect_set(24, 11, size=64))
    generated_folder(tmp_path / "edged", *defect_set(24, 12, size=64, edge=60))
    res = run_evaluate_generation(EvaluateGenerationConfig(
        generated=[tmp_path / "same", tmp_path / "edged"], real=data, split="all", out=tmp_path / "ev",
        extra_metrics=False))
    same, edged = res["sets"]["same"], res["sets"]["edged"]
    assert same["discriminability"]["real"] == 24 and same["discriminability"]["synthetic"] == 24
    assert len(same["c2st_crop"]) == 3 and same["c2st_seam"][1] <= same["c2st_seam"][0] <= same["c2st_seam"][2]
    assert edged["c2st_seam"][0] > 0.9 > same["c2st_seam"][0]
    table = (tmp_path / "ev" / "generation.md").read_text()
    assert "C2ST AUC, seam ring [95 % CI]" in table and f"{edged['c2st_seam'][0]:.2f} [" in table
    assert any(n.startswith("discriminability of edged") and "most telling" in n for n in res["notes"])
    saved = json.loads((tmp_path / "ev" / "generation.json").read_text())
    assert saved["sets"]["edged"]["c2st_seam"] == edged["c2st_seam"]
    off = run_evaluate_generation(EvaluateGenerationConfig(
        generated=[tmp_path / "same"], real=data, split="all", out=tmp_path / "ev2", extra_metrics=False,
        discriminability=False))
    assert "c2st_crop" not in off["sets"]["same"]


def test_full_size_pairs_are_cropped_around_the_generated_defect_only(tmp_path):
    """A full-size pair on an anomalous host: the crop is centred on the new defect (``defect_box``), and the
    host's own defect is not part of the mask whose seam is measured."""
    from anomalign.evaluation.generation import generated_defect_crops
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    host = np.zeros((200, 300), bool)
    host[20:40, 20:40] = True
    Image.fromarray(host.astype(np.uint8) * 255).save(tmp_path / "host.png")
    new = np.zeros((200, 300), bool)
    new[120:132, 200:210] = True
    generated_folder(tmp_path / "set", [image], [host | new],
                     [{"defect_box": [120, 200, 12, 10],
                       "host_mask": str(tmp_path / "host.png")}])
    rows = [json.loads(x) for x in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    crops, masks = generated_defect_crops(tmp_path / "set", rows, np.zeros((1, 64, 64, 3), np.uint8),
                                          np.zeros((1, 64, 64), bool))
    assert masks.shape == (1, 64, 64) and masks[0].sum() == 120
    assert np.array_equal(crops[0], image[125 - 32:125 + 32, 204 - 32:204 + 32])  # centred on the new defect


def test_the_run_report_shows_the_score_next_to_oracle_iou_and_fid(tmp_path):
    """`run --quality` keeps evaluate-generation's set rows in result.json; the run report's generation section
    prints them with the same table: the C2ST columns sit beside FID and oracle IoU, the note explains them."""
    from anomalign.evaluation.report import Page
    from anomalign.evaluation.run_report import generation_section
    sets = {"synthetic": {"images": 96, "fid": 179.5, "oracle_iou": 0.581, "oracle_iou_moved": 0.016,
                          "c2st_crop": [0.78, 0.70, 0.87], "c2st_seam": [0.82, 0.75, 0.90],
                          "c2st_permuted": [0.48, 0.49]}}
    page = Page(tmp_path / "report", "run")
    generation_section(page, tmp_path / "generation", {"sets": sets, "real_images": 80,
                                                       "notes": ["discriminability of synthetic (...)"]},
                       tmp_path / "report")
    html = page.write().read_text()
    for text in ("FID (TF-Inception)", "oracle IoU", "C2ST AUC, crop [95 % CI]", "0.78 [0.70, 0.87]",
                 "C2ST AUC, seam ring [95 % CI]", "0.82 [0.75, 0.90]", "0.48 / 0.49", "discriminability of synthetic"):
        assert text in html, text
