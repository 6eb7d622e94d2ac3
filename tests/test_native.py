"""Native resolution end to end: a segmenter trained on crops finds a thin defect in a 1-megapixel image."""
import json

import numpy as np
import pytest
from PIL import Image

from anomalign.cli import main
from anomalign.segmenter.model import Segmenter
from dummy_data import line_defect, save, write_line_dataset


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lines")
    write_line_dataset(root)
    out = tmp_path_factory.mktemp("lines_run") / "seg"  # beside the data: an --out inside it is refused
    assert main(["train-segmenter", "--train", str(root), "--out", str(out), "--size", "64", "--max-steps", "300",
                 "--batch-size", "8", "--validate-every", "150", "--device", "cpu", "--anomaly-weight", "5",
                 "--learning-rate", "2e-3"]) == 0
    return root, out


def test_large_images_train_on_crops_automatically(crop_run, capsys):
    root, out = crop_run
    seg = Segmenter.load(out)
    assert seg.crop_size == 64 and seg.scale == 1.0  # 256-px images, --size 64: crops chosen without asking
    rows = (out / "logs" / "validation.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[1]) > 0.5  # validated at full size with sliding windows


def test_segment_finds_a_10px_defect_in_a_megapixel_image(crop_run, tmp_path):
    root, out = crop_run
    image, mask = line_defect(np.random.default_rng(7), 1000, 1000, 10)
    save(tmp_path / "big.png", image)
    assert main(["segment", str(tmp_path / "big.png"), "--segmenter", str(out), "--out", str(tmp_path / "pred")]) == 0
    pred = np.asarray(Image.open(tmp_path / "pred" / "masks" / "big.png")) > 127
    assert pred.shape == (1000, 1000)
    assert (pred & mask).sum() / (pred | mask).sum() >= 0.5


def test_evaluate_scores_a_crop_model_at_full_size(crop_run, tmp_path):
    root, out = crop_run
    assert main(["evaluate", "--segmenter", str(out), "--test", str(root), "--out", str(tmp_path / "ev"),
                 "--layout", "paired"]) == 0
    payload = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert payload["resolution"].startswith("native, 64-px sliding windows")


def test_warns_about_few_validation_anomalies_and_a_flat_validation(tmp_path, capsys, monkeypatch):
    import anomalign.segmenter.train as train
    from dummy_data import write_paired
    write_paired(tmp_path / "d", defects=("scratch",), n=4, normals=0, splits=("train", "val"))
    monkeypatch.setattr(train, "evaluate_samples", lambda *a, **k: {"mIoU": 0.0})  # a segmenter that finds nothing
    assert main(["train-segmenter", "--train", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--size", "32",
                 "--max-steps", "2", "--batch-size", "2", "--validate-every", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "only 4 anomalous validation image(s)" in err and "stayed 0 at every validation" in err


def test_generator_fine_tunes_on_native_crops(tmp_path, gen_dir, capsys):
    write_line_dataset(tmp_path / "d", n_train=3, n_val=1, n_test=0, size=128)
    out = tmp_path / "g"
    assert main(["train-generator", "--data", str(tmp_path / "d"), "--out", str(out), "--base", str(gen_dir),
                 "--max-steps", "2", "--batch-size", "4", "--crops-per-image", "3", "--normals", "0",
                 "--validation-masks", "1", "--validation-steps", "2", "--device", "cpu"]) == 0
    assert "fine-tuning on 32-px crops at native resolution" in capsys.readouterr().out
    from anomalign.config import read_yaml
    saved = read_yaml(out / "config.yaml")
    assert saved["crop_size"] == 32


def test_a_folder_of_normals_is_accepted_by_both_trainers(tmp_path):
    from anomalign.config import build_config
    from anomalign.generator.train import TrainGeneratorConfig, training_pairs
    from anomalign.segmenter.train import TrainSegmenterConfig, training_sets
    from dummy_data import pair, write_paired
    write_paired(tmp_path / "d", defects=("scratch",), n=3, normals=0)
    for i in range(2):
        save(tmp_path / "elsewhere" / f"ok{i}.png", pair(90 + i, empty=True)[0])
    (tmp_path / "elsewhere" / "broken.png").write_bytes(b"")
    common = dict(val_fraction=0.0, test_fraction=0.0, normal_images=str(tmp_path / "elsewhere"), policy="skip")
    seg = build_config(TrainSegmenterConfig, dict(train=str(tmp_path / "d"), out=str(tmp_path / "s"), size=32,
                                                  crop_size=0, **common))
    real, _, _, skipped = training_sets(seg)
    assert len(real) == 5 and sum(s.normal for s in real.samples) == 2
    assert [p.path.name for p in skipped] == ["broken.png"]
    gen = build_config(TrainGeneratorConfig, dict(data=str(tmp_path / "d"), out=str(tmp_path / "g"), crop_size=0,
                                                  **common))
    (images, masks, prompts), _, _, _ = training_pairs(gen, 32)
    assert len(prompts) == 5 and sum("defect-free" in p for p in prompts) == 2


def test_evaluate_full_size_scores_a_resized_segmenter_against_full_masks(tmp_path, seg_dir):
    write_line_dataset(tmp_path / "d", n_train=1, n_val=1, n_test=2, size=96)
    for flag, expect in ((["--full-size"], "scored at full size"), ([], "resized to 32 px")):
        out = tmp_path / ("ev" + str(len(flag)))
        assert main(["evaluate", "--segmenter", str(seg_dir), "--test", str(tmp_path / "d"), "--out", str(out),
                     "--layout", "paired", *flag]) == 0
        payload = json.loads((out / "eval.json").read_text())
        assert payload["resolution"].endswith(expect) and list(payload["sets"].values())[0]["images"] == 2
