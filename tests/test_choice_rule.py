"""The validation choice of `anomalign run` (evaluation/choice.py): the rule's corner cases (n = 1, 2, all-equal
gains, three arms), its statistics against reference values, the false-positive criterion, the empty-mask
convention it shares with SegmentationMeter, and a smoke run of the simulation benchmark."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalign.evaluation.choice import (ALPHA, FP_TOLERANCE, MIN_VAL_ANOMALIES, choose, holm, paired_t,
                                         student_t_quantile, student_t_sf)

ROOT = Path(__file__).resolve().parents[1]


def gains_with_t(t: float, n: int, scale: float = 0.05) -> np.ndarray:
    """Per-image gains [n] whose one-sample t statistic is exactly ``t`` (mean scale * t / sqrt(n), sd scale)."""
    z = np.random.default_rng(n).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return scale * (z + t / np.sqrt(n))


def test_t_distribution_matches_reference_values():
    # scipy.stats.t.sf / .ppf (scipy 1.17.1), computed once: the rule needs no scipy
    assert student_t_sf(2.0, 1) == pytest.approx(0.14758361765043326, abs=1e-12)
    assert student_t_sf(-0.5, 3) == pytest.approx(0.6742760175759245, abs=1e-12)
    assert student_t_sf(1.7, 39) == pytest.approx(0.04854711286563124, abs=1e-12)
    assert student_t_quantile(0.95, 9) == pytest.approx(1.833112932656237, abs=1e-9)
    assert student_t_quantile(0.97, 19) == pytest.approx(2.0000174735353595, abs=1e-9)
    r = paired_t(gains_with_t(1.7, 40))
    assert r["t"] == pytest.approx(1.7) and r["p"] == pytest.approx(0.04854711286563124, abs=1e-10)


def test_holm_steps_down_and_counts_an_untestable_arm():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    with_nan = holm({"a": 0.01, "b": float("nan")})
    assert with_nan["a"] == pytest.approx(0.02) and np.isnan(with_nan["b"])


def test_one_val_anomaly_never_adopts():
    r = choose(np.array([0.2]), {"synthetic": np.array([0.9])})  # +70 points on the only image
    assert r["chosen"] == "baseline" and "only 1 val anomaly" in r["reason"]
    assert np.isnan(r["arms"]["synthetic"]["p"]) and not r["arms"]["synthetic"]["wins"]
    # the old rule's bound was the gain itself here: it adopted
    from anomalign.evaluation.choice import choose_bootstrap
    assert choose_bootstrap(np.array([0.2]), {"synthetic": np.array([0.9])}) == "synthetic"


def test_two_val_anomalies_stay_under_the_minimum_even_when_both_gain():
    base = np.array([0.30, 0.50])
    arm = base + np.array([0.30, 0.31])
    r = choose(base, {"synthetic": arm})
    assert r["chosen"] == "baseline" and f"needs >= {MIN_VAL_ANOMALIES}" in r["reason"]
    assert r["arms"]["synthetic"]["p"] < ALPHA  # the test alone would pass: the minimum is what keeps the baseline
    assert choose(base, {"synthetic": arm}, min_images=2)["chosen"] == "synthetic"


def test_all_equal_gains():
    base = np.linspace(0.2, 0.8, 12)
    up = choose(base, {"synthetic": base + 0.02})  # every image gains 2 points: no spread, no doubt
    assert up["chosen"] == "synthetic" and up["arms"]["synthetic"]["p"] == 0.0
    assert up["arms"]["synthetic"]["bound"] == pytest.approx(0.02)
    same = choose(base, {"synthetic": base.copy(), "both": base.copy()})
    assert same["chosen"] == "baseline" and same["arms"]["both"]["p_holm"] == 1.0
    down = choose(base, {"synthetic": base - 0.02})
    assert down["chosen"] == "baseline" and down["arms"]["synthetic"]["p"] == 1.0


def test_three_arms_are_corrected_together():
    """Each arm alone at p = 0.03 would be adopted; three of them at once are not (Holm: 3 x 0.03 > 0.05), and
    an arm that is clear (p ~ 0.001) is adopted over them."""
    n = 20
    base = np.full(n, 0.4)
    t03 = student_t_quantile(0.97, n - 1)  # t with one-sided p = 0.03
    arms = {a: base + gains_with_t(t03, n) for a in ("synthetic", "feedback", "both")}
    alone = choose(base, {"synthetic": arms["synthetic"]})
    assert alone["chosen"] == "synthetic" and alone["arms"]["synthetic"]["p"] == pytest.approx(0.03, abs=1e-6)
    three = choose(base, arms)
    assert three["chosen"] == "baseline" and all(r["p_holm"] == pytest.approx(0.09, abs=1e-5)
                                                 for r in three["arms"].values())
    assert "Holm-adjusted p 0.090" in three["reason"]
    clear = dict(arms, both=base + gains_with_t(student_t_quantile(0.999, n - 1), n))
    r = choose(base, clear)
    assert r["chosen"] == "both" and r["arms"]["both"]["p_holm"] == pytest.approx(0.003, abs=1e-5)


def test_an_arm_that_adds_false_alarms_on_normals_is_not_adopted():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 30)
    arm = base + 0.05 + rng.normal(0, 0.01, 30)  # a clear IoU gain on the anomalies
    fp0 = np.full(8, 0.0005)
    noisy = choose(base, {"synthetic": arm}, fp_baseline=fp0, fp_arms={"synthetic": fp0 + 0.004})
    assert noisy["chosen"] == "baseline" and not noisy["arms"]["synthetic"]["fp_ok"]
    assert "false alarms on 8 val normals" in noisy["reason"]
    within = choose(base, {"synthetic": arm}, fp_baseline=fp0, fp_arms={"synthetic": fp0 + FP_TOLERANCE / 2})
    assert within["chosen"] == "synthetic" and "false-positive area on 8 val normals +0.05 %" in within["reason"]
    no_normals = choose(base, {"synthetic": arm})  # nothing to check it on: said, not silently passed
    assert no_normals["chosen"] == "synthetic" and "no val normal images" in no_normals["reason"]
    with pytest.raises(ValueError, match="scored on 8 normal images, the arm on 3"):
        choose(base, {"synthetic": arm}, fp_baseline=fp0, fp_arms={"synthetic": fp0[:3]})


def test_empty_masks_follow_the_segmentation_meter(tmp_path, monkeypatch):
    """An anomalous image whose mask is empty is no IoU sample (it scored 0 or 1 by whether anything was
    predicted, where SegmentationMeter leaves it out): it is scored by its false-positive area, like a normal."""
    import anomalign.segmenter.sliding as sliding
    from anomalign.data.validate import load_dataset
    from anomalign.evaluation.choice import per_image_iou, per_image_scores
    from anomalign.metrics import SegmentationMeter
    from dummy_data import pair, save, write_paired
    from anomalign.data.dataset import load_pair
    write_paired(tmp_path / "data", defects=("scratch",), n=3, normals=2)
    save(tmp_path / "data" / "images" / "scratch" / "009.jpg", pair(99)[0])
    save(tmp_path / "data" / "masks" / "scratch" / "009.png", np.zeros((24, 32), bool))  # anomalous, empty mask
    samples = load_dataset(tmp_path / "data", announce=False).samples

    # a segmenter that raises every pixel
    monkeypatch.setattr(sliding, "predict_full_size", lambda model, image, size, *a, **k:
                        torch.ones(image.shape[-2], image.shape[-1]))

    class Model:
        size = 32

        def eval(self):
            return self
    scores = per_image_scores(Model(), samples)
    meter = SegmentationMeter()
    for s in samples:
        _, mask = load_pair(s, None, 0.5)
        meter.update(torch.ones(1, 1, *mask.shape), torch.from_numpy(mask)[None, None].float())
    assert len(scores["iou"]) == meter.result()["images"] == 3
    assert scores["iou"].mean() == pytest.approx(meter.result()["mIoU"])
    assert len(scores["fp"]) == 3 and np.allclose(scores["fp"], 1.0)  # 2 normals + the empty-mask anomalous image
    assert len(per_image_iou(Model(), samples)) == 3


def test_the_simulation_benchmark_runs_and_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("choice_rule_simulation",
                                                  ROOT / "benchmarks" / "choice_rule_simulation.py")
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    doc = tmp_path / "run.md"
    doc.write_text("# run\n\n## Pre-registered choice rule\n\nsome text\n")
    assert sim.main(["--reps", "4", "--doc", str(doc)]) == 0
    first = doc.read_text()
    assert first.count(sim.MARK_START) == 1 and "| 100 | +2 |" in first and "| 40 |" in first
    assert "| 100 | +2 | 2 |" in first  # the cross-fitted table
    assert sim.main(["--reps", "3", "--doc", str(doc)]) == 0  # rewritten in place, not appended
    assert doc.read_text().count(sim.MARK_START) == 1 and "--reps 3" in doc.read_text()
    # no true gain at n = 1: the old rule adopts on most splits, the new one never
    assert sim.adoption_rate("today", 1, (0.0, 0.0, 0.0), 40, 0) > 0.3
    assert sim.adoption_rate("new", 1, (0.0, 0.0, 0.0), 40, 0) == 0.0


# the cross-fitted choice's statistics --------------------------------------------------------------------------


def test_cross_fitted_gains_are_judged_on_fold_means():
    from anomalign.evaluation.choice import choose_cv, pooled_fold_gain
    r = pooled_fold_gain([np.full(2, 0.1), np.zeros(3), np.full(2, 0.05)])
    assert r["fold_means"] == pytest.approx([0.1, 0.0, 0.05]) and r["folds"] == 3 and r["images"] == 7
    assert r["mean"] == pytest.approx(0.05) and r["image_mean"] == pytest.approx(0.3 / 7)
    assert r["p"] == pytest.approx(paired_t(np.array([0.1, 0.0, 0.05]))["p"])
    rng = np.random.default_rng(0)
    base = [rng.uniform(0.2, 0.8, 20) for _ in range(5)]
    clear = choose_cv(base, {"synthetic": [b + 0.03 + rng.normal(0, 0.02, 20) for b in base]})
    assert clear["chosen"] == "synthetic" and clear["folds"] == 5 and clear["images"] == 100
    assert len(clear["arms"]["synthetic"]["folds"]) == 5 and "t on 5 fold means" in clear["reason"]
    # one fold's models carry the whole gain: 100 images pooled as independent would adopt it (p ~ 1e-6), the
    # fold means do not (p ~ 0.19)
    one_fold = [b + (0.2 if k == 0 else rng.normal(0, 0.01, 20)) for k, b in enumerate(base)]
    assert choose(np.concatenate(base), {"synthetic": np.concatenate(one_fold)})["chosen"] == "synthetic"
    r = choose_cv(base, {"synthetic": one_fold})
    assert r["chosen"] == "baseline" and r["arms"]["synthetic"]["p"] > 0.1
    two = choose_cv(base[:2], {"synthetic": [b + 0.05 for b in base[:2]]})
    assert two["chosen"] == "baseline" and "only 2 fold(s)" in two["reason"]
    few = choose_cv([b[:2] for b in base], {"synthetic": [b[:2] + 0.05 for b in base]})  # 10 images in 5 folds: ok
    assert few["chosen"] == "synthetic"
    fewer = choose_cv([b[:1] for b in base], {"synthetic": [b[:1] + 0.05 for b in base]})  # 5 held-out anomalies
    assert fewer["chosen"] == "baseline" and "only 5 held-out anomalies" in fewer["reason"]
    with pytest.raises(ValueError, match="other folds or images"):
        choose_cv(base, {"synthetic": base[:4]})
