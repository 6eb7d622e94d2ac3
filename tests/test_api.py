"""The README's "Python API" example, run as written (on a tiny dataset, with a plan that fits seconds)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import anomalign
from anomalign.errors import AnomalignError
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator, write_tiny_plan

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_is_short():
    assert len(readme_api_example().strip().splitlines()) <= 20


def test_readme_api_example_runs(tmp_path, monkeypatch):
    import anomalign.pipeline as pipeline
    from anomalign.plan import read_plan
    monkeypatch.chdir(tmp_path)
    write_paired(tmp_path / "my_data", defects=("scratch", "hole"), n=8, normals=6)
    dummy_tiny_generator().save(tmp_path / "base")
    write_tiny_plan(tmp_path / "plan.yaml", tmp_path / "base", arms=["synthetic"])
    # the example's `run` plans from the data; here the plan is a seconds-long one
    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: read_plan(tmp_path / "plan.yaml"))
    # and the single-split choice (the tiny data's 2 val anomalies would make --choice auto cross-fit 5 folds:
    # test_run.py tests that; here it would only triple the seconds)
    monkeypatch.setattr(pipeline, "resolve_choice", lambda cfg, fp: ("val", "the test's single split"))
    scope: dict = {}
    exec(compile(readme_api_example(), "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, anomalign.RunResult) and result.chosen in ("baseline", "synthetic")
    assert isinstance(scope["seg"], anomalign.Segmenter) and isinstance(scope["gen"], anomalign.MaskGenerator)
    assert scope["mask"].dtype == bool and scope["mask"].shape == (24, 32)  # the test image's own size
    assert scope["prob"].dtype == np.float32 and np.array_equal(scope["mask"], scope["prob"] >= 0.5)
    assert scope["batch"].dtype == bool and scope["batch"].shape == (4, 24, 32)
    assert scope["images"].dtype == np.uint8 and scope["images"].shape == (2, 128, 128, 3)
    assert scope["image"].dtype == np.uint8 and scope["image"].shape == (24, 32, 3) and scope["where"].sum() == 60

    # the same run by the command: the same choice, numbers and segmenter (equal masks); its result.json read back
    from anomalign.cli import main
    from anomalign.pipeline import RunResult
    assert main(["run", "my_data", "--out", "runs/cli", "--seed", "0", "--plan", str(tmp_path / "plan.yaml")]) == 0
    cli = RunResult.read("runs/cli")
    assert (cli.chosen, cli.reason, cli.test, cli.plan, cli.segmenter) == \
        (result.chosen, result.reason, result.test, Path("runs/cli/plan.yaml"), Path("runs/cli") / result.segmenter.name)
    assert cli.report.is_file() and result.report == Path("runs/mine/report/index.html") and result.report.is_file()
    assert cli.metrics == cli.test[cli.chosen] and 0 <= cli.metrics["mIoU"] <= 1
    image = "my_data/images/scratch/000.jpg"
    assert np.array_equal(anomalign.Segmenter.load(cli.segmenter).predict(image), scope["mask"])
    assert RunResult.read("runs/mine").test == result.test

    # the dict form still answers, for one release, and says what replaces it
    with pytest.warns(DeprecationWarning, match="returns a RunResult"):
        assert result["chosen"] == result.chosen and result["segmenter"] == str(result.segmenter)
    with pytest.raises(AnomalignError, match="has not finished"):
        RunResult.read(tmp_path / "nothing")


def test_segmenter_predict_is_what_segment_writes(tmp_path):
    """Segmenter.predict and `anomalign segment` give the same mask for the same file."""
    from PIL import Image

    from anomalign.cli import main
    from anomalign.segmenter.model import Segmenter
    seg = Segmenter("unet-tiny")
    seg.size = 32
    seg.save(tmp_path / "seg", {"size": 32})
    write_paired(tmp_path / "d", defects=("scratch",), n=2, normals=0)
    image = tmp_path / "d" / "images" / "scratch" / "000.jpg"
    assert main(["segment", str(image), "--segmenter", str(tmp_path / "seg"), "--out", str(tmp_path / "pred"),
                 "--threshold", "0.5"]) == 0
    written = np.asarray(Image.open(next((tmp_path / "pred" / "masks").rglob("*.png")))) > 127
    loaded = Segmenter.load(tmp_path / "seg")
    assert np.array_equal(loaded.predict(image), written)
    assert np.array_equal(loaded.predict(np.asarray(Image.open(image).convert("RGB"))), written)


def test_api_errors_are_clear():
    from anomalign.segmenter.model import Segmenter
    seg = Segmenter("unet-tiny")
    seg.size = 32
    with pytest.raises(AnomalignError, match="uint8 image"):
        seg.predict(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(AnomalignError, match=r"float pixels must lie in \[0, 1\]"):
        seg.predict(np.full((8, 8, 3), 255.0, np.float32))  # 0-255 floats: not silently clipped to white
    with pytest.raises(AnomalignError, match="channels last"):
        seg.predict(torch.zeros(3, 8, 8))
    gen = dummy_tiny_generator()
    with pytest.raises(AnomalignError, match="multiples of"):
        gen.generate(np.zeros((1, 31, 31), bool), "a photo")
    with pytest.raises(AnomalignError, match="2 prompts for 1 masks"):
        gen.generate(np.zeros((1, 32, 32), bool), ["a", "b"])


@pytest.mark.parametrize("trained_on", ["whole images", "crops"])
def test_batch_predict_and_load_auto_equal_what_segment_writes(tmp_path, trained_on):
    """A batch array (uint8 and float in [0, 1], numpy and torch), a list of files and the probabilities of
    ``Segmenter.load(path)`` (device auto, the default) equal `anomalign segment`'s files for the same images."""
    from PIL import Image

    from anomalign.cli import main
    from anomalign.segmenter.model import Segmenter
    torch.manual_seed(0)
    seg = Segmenter("unet-tiny")
    seg.save(tmp_path / "seg", {"size": 32} if trained_on == "whole images" else {"crop_size": 16, "scale": 1.0})
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)  # 24 x 40: resized (or windowed) and back
    files = []
    for k, image in enumerate(batch):
        files.append(tmp_path / "images" / f"{k}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(files[-1])
    loaded = Segmenter.load(tmp_path / "seg")
    prob = loaded.predict(batch, probability=True)
    assert prob.shape == (3, 24, 40) and prob.dtype == np.float32
    threshold = float(np.median(prob))  # a threshold that splits the random network's output: masks can differ
    assert main(["segment", str(tmp_path / "images"), "--segmenter", str(tmp_path / "seg"), "--out",
                 str(tmp_path / "pred"), "--threshold", str(threshold), "--save-probabilities"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "pred" / "masks" / f"{k}.png")) > 127 for k in range(3)])
    written_prob = np.stack([np.asarray(Image.open(tmp_path / "pred" / "probabilities" / f"{k}.png"))
                             for k in range(3)])
    assert 0.2 < written.mean() < 0.8
    masks = loaded.predict(batch, threshold=threshold)
    assert masks.shape == (3, 24, 40) and masks.dtype == bool
    assert np.array_equal(masks, written)
    assert np.array_equal((prob * 255).round().astype(np.uint8), written_prob)
    assert np.array_equal(loaded.predict(batch.astype(np.float32) / 255, threshold=threshold), written)
    assert np.array_equal(loaded.predict(torch.from_numpy(batch), threshold=threshold), written)
    listed = loaded.predict(files, threshold=threshold)
    assert isinstance(listed, list) and all(np.array_equal(m, w) for m, w in zip(listed, written))
    grey = batch[..., :1]  # [N, H, W, 1]: grey images, predicted as the grey file segment reads
    Image.fromarray(grey[0, ..., 0]).save(tmp_path / "grey.png")
    assert main(["segment", str(tmp_path / "grey.png"), "--segmenter", str(tmp_path / "seg"), "--out",
                 str(tmp_path / "pred_grey"), "--threshold", str(threshold)]) == 0
    assert np.array_equal(loaded.predict(grey, threshold=threshold)[0],
                          np.asarray(Image.open(tmp_path / "pred_grey" / "masks" / "grey.png")) > 127)


def test_load_picks_the_device_as_the_commands_do(tmp_path, monkeypatch):
    """``device="auto"`` (the default) goes through ``devices.pick_device``, the one reading of ``--device auto``;
    an explicit device is taken as given."""
    import anomalign.devices
    from anomalign.segmenter.model import Segmenter
    Segmenter("unet-tiny").save(tmp_path / "seg", {"size": 32})
    asked = []
    monkeypatch.setattr(anomalign.devices, "pick_device", lambda d: asked.append(d) or "cpu")
    assert next(Segmenter.load(tmp_path / "seg").parameters()).device.type == "cpu"
    assert asked == ["auto"]
    Segmenter.load(tmp_path / "seg", device="cpu")
    Segmenter.load(tmp_path / "seg", device=torch.device("cpu"))
    assert asked == ["auto"]


@pytest.mark.parametrize("case", ["colour", "grey, window resized"])
def test_inpaint_equals_what_generate_normals_writes(tmp_path, gen_dir, case):
    """``MaskGenerator.inpaint`` on a normal image with the mask ``generate --normals`` placed in it, the record's
    seed and window, gives that command's image and mask exactly; with its own (centred) window it changes only
    the mask grown by the inpainting region and keeps the mask."""
    from PIL import Image

    from anomalign.cli import main
    from anomalign.generator.model import MaskGenerator
    from dummy_data import save
    rng = np.random.default_rng(1)
    grey = case.startswith("grey")
    for k in range(2):
        normal = rng.integers(0, 256, (60, 70) if grey else (60, 70, 3)).astype(np.uint8)
        save(tmp_path / "normals" / f"n{k}.png", normal)
    source = np.zeros((40, 40), bool)
    source[8:32, 10:30] = True  # 24 x 20 px: with --resolution 16 the window is 24 px, resized to 16 and back
    save(tmp_path / "masks" / "scratch" / "a.png", source)
    extra = ["--resolution", "16"] if grey else []
    assert main(["generate", "--generator", str(gen_dir), "--masks", str(tmp_path / "masks"), "--normals",
                 str(tmp_path / "normals"), "--out", str(tmp_path / "out"), "--num", "2", "--steps", "2",
                 "--batch-invariant", "--device", "cpu", *extra]) == 0
    gen = MaskGenerator.load(gen_dir)
    if grey:
        gen.spec["resolution"] = 16  # the size generate was asked for
    rows = [json.loads(r) for r in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        written = np.asarray(Image.open(tmp_path / "out" / r["file_name"]).convert("RGB"))
        written_mask = np.asarray(Image.open(tmp_path / "out" / r["mask_file_name"])) > 127
        normal = np.asarray(Image.open(r["normal_image"]).convert("RGB"))
        from anomalign.generator.window import MARGIN, window_side
        assert r["window"][2] == window_side(24, 20, 16 if grey else 32, 60, 70, 1.0, MARGIN)  # defect + context
        how = dict(seed=r["seed"], steps=r["steps"], scheduler=r["scheduler"])  # guidance: the same default
        assert r["guidance"] == 3.0
        image, mask = gen.inpaint(normal, written_mask, r["prompt"], window=r["window"], **how)
        assert image.dtype == np.uint8 and image.shape == normal.shape and mask.dtype == bool
        assert np.array_equal(mask, written_mask) and np.array_equal(image, written)
        own, own_mask = gen.inpaint(normal, written_mask, r["prompt"], margin=0, **how)  # centred, the old region
        assert np.array_equal(own_mask, written_mask) and not np.array_equal(own, normal)
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(written_mask).float()[None, None], 7, 1, 3)[0, 0]
        assert np.array_equal(own[grown.numpy() == 0], normal[grown.numpy() == 0])  # nothing else changed
        if grey:
            assert np.array_equal(own[..., 0], own[..., 2])


def test_inpaint_errors_are_clear(gen_dir):
    from anomalign.generator.model import MaskGenerator
    gen = MaskGenerator.load(gen_dir)
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(AnomalignError, match=r"mask must be \[H, W\] = \[40, 50\]"):
        gen.inpaint(image, np.ones((40, 40), bool), "a photo")
    with pytest.raises(AnomalignError, match="no anomaly pixel"):
        gen.inpaint(image, np.zeros((40, 50), bool), "a photo")
    big = np.zeros((40, 50), bool)
    big[:, 2:45] = True
    with pytest.raises(AnomalignError, match="does not fit a square window"):
        gen.inpaint(image, big, "a photo")
    small = np.zeros((40, 50), bool)
    small[30:35, 30:35] = True
    with pytest.raises(AnomalignError, match="hold every anomaly pixel"):
        gen.inpaint(image, small, "a photo", window=(0, 0, 32))
