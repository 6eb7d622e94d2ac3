"""`anomalign evaluate`: one row per test set plus the average; clear errors for bad inputs."""
import json

import pytest

from anomalign.cli import main
from anomalign.errors import AnomalignError
from anomalign.segmenter.model import Segmenter
from dummy_data import write_paired, write_pranet


def test_pranet_fixture_gives_one_row_per_test_set_and_the_average(tmp_path, seg_dir, capsys):
    info = write_pranet(tmp_path / "polyp")
    assert main(["evaluate", "--segmenter", str(seg_dir), "--test", str(tmp_path / "polyp"),
                 "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    for s in info["sets"]:
        assert f"| {s} | {info['test']} |" in out
    assert "| **average** |" in out
    payload = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert sorted(payload["sets"]) == sorted(info["sets"]) and payload["size"] == 32
    mean = sum(r["mIoU"] for r in payload["sets"].values()) / 3
    assert payload["average"]["mIoU"] == pytest.approx(mean)
    assert (tmp_path / "eval" / "eval.md").read_text().count("\n") == 3 + 3


def test_test_set_without_masks_and_bad_segmenters(tmp_path, seg_dir, capsys):
    write_paired(tmp_path / "normals", defects=(), n=0, normals=3, splits=["train", "test"])
    assert main(["evaluate", "--segmenter", str(seg_dir), "--test", str(tmp_path / "normals")]) == 2
    assert "has no anomalous images with masks" in capsys.readouterr().err
    assert main(["evaluate", "--segmenter", str(tmp_path / "nothing"), "--test", str(tmp_path / "normals")]) == 2
    assert "not a segmenter folder" in capsys.readouterr().err
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from anomalign.segmenter.model import PRESETS, SPEC_KEY, WEIGHTS_NAME
    from anomalign.weights import write_weights
    net = SegformerForSemanticSegmentation(SegformerConfig(num_labels=3, **PRESETS["tiny"]))
    write_weights(tmp_path / "three" / WEIGHTS_NAME, net.state_dict(), SPEC_KEY, {"config": net.config.to_dict()})
    with pytest.raises(AnomalignError, match="has 3 classes; anomalign needs 2"):
        Segmenter.load(tmp_path / "three")


def test_split_option_scores_the_chosen_split(tmp_path, seg_dir):
    counts = write_paired(tmp_path / "d", defects=("scratch",), n=5, normals=0, splits=["train"])
    counts |= write_paired(tmp_path / "d", defects=("scratch",), n=3, normals=0, splits=["test"])
    for split in ("train", "test"):
        assert main(["evaluate", "--segmenter", str(seg_dir), "--test", str(tmp_path / "d"), "--split", split,
                     "--out", str(tmp_path / split)]) == 0
        payload = json.loads((tmp_path / split / "eval.json").read_text())
        expected = counts[(split, "scratch")] - (split == "train")  # val (10 %, at least 1) is carved from train
        assert payload["split"] == split and payload["sets"]["d"]["images"] == expected
    assert main(["evaluate", "--segmenter", str(seg_dir), "--test", str(tmp_path / "d"), "--split", "val",
                 "--out", str(tmp_path / "val")]) == 0
    assert json.loads((tmp_path / "val" / "eval.json").read_text())["sets"]["d"]["images"] == 1
