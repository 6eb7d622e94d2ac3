"""Bad input, foreign folders, damaged checkpoints and kill -9: no traceback, no lost file, no silent drop.

One test (or more) per case of docs/reliability.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anomalign.cli import main
from anomalign.data import DataOptions, load_dataset
from anomalign.data.imageio import DEFAULT_MAX_MEGAPIXELS, open_image, set_max_megapixels
from anomalign.errors import AnomalignError, DataError
from anomalign.segmenter.model import Segmenter
from anomalign.training import LoopOptions, TrainingDiverged, TrainTask, train_loop
from dummy_data import noisy_png_bytes, pair, save, write_paired
from tiny_models import dummy_tiny_generator

SRC = str(Path(__file__).resolve().parents[1] / "src")


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` px, followed by a few bytes of (garbage) image data:
    decoding it would fail as truncated, so a 'too large' verdict proves the header alone decided."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def default_image_limit():
    yield
    set_max_megapixels(DEFAULT_MAX_MEGAPIXELS)  # tests below change the process-wide limit


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


# 1. decompression bomb ------------------------------------------------------------------------------------


def test_huge_image_is_refused_from_its_header(tmp_path, capsys):
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=3, normals=0)
    bomb = png_header_only(root / "images" / "scratch" / "bomb.png", 100_000, 100_000)
    save(root / "masks" / "scratch" / "bomb.png", pair(0)[1])
    for policy in ("fail", "skip"):
        code, out = run_cli(capsys, "data", "check", root, "--policy", policy)
        assert "Traceback" not in out and "bomb.png" in out and "image too large" in out
        assert "10,000 MP" in out and "--max-megapixels" in out
        assert code == (1 if policy == "fail" else 0)
    with pytest.raises(DataError, match="bomb.png.*image too large"):
        load_dataset(root)
    index = load_dataset(root, DataOptions(policy="skip"))
    assert [p.path for p in index.skipped] == [bomb] and len(index.samples) == 3
    # a real image over a lowered limit: refused with its size, the limit and the option that raises it
    set_max_megapixels(0.0005)
    with pytest.raises(DataError, match=r"32 x 24 px .* limit of 0.0005 MP; nothing was decoded .*--max-megapixels"):
        open_image(root / "images" / "scratch" / "000.jpg")


def test_limit_above_pils_own_still_decodes(tmp_path):
    """Raising --max-megapixels past PIL's bomb limit must really admit the image (PIL's check moves up)."""
    from PIL import Image
    path = tmp_path / "a.png"
    save(path, pair(0)[0])
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 100  # as if PIL's limit were below this 768-px image
        set_max_megapixels(1.0)
        assert open_image(path).size == (32, 24)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# 2. --policy skip says what it skipped ----------------------------------------------------------------------


def truncated_dataset(root: Path) -> Path:
    write_paired(root, defects=("scratch",), n=4, normals=0)
    cut = root / "images" / "scratch" / "cut.png"
    data = noisy_png_bytes()
    cut.write_bytes(data[: len(data) // 2])
    save(root / "masks" / "scratch" / "cut.png", pair(9)[1])
    return cut


def test_data_check_skip_differs_from_fail(tmp_path, capsys):
    root = tmp_path / "data"
    cut = truncated_dataset(root)
    code_fail, out_fail = run_cli(capsys, "data", "check", root)
    code_skip, out_skip = run_cli(capsys, "data", "check", root, "--policy", "skip")
    assert code_fail == 1 and code_skip == 0
    assert "left out 1 file(s)" in out_skip and str(cut) in out_skip.split("left out")[1]
    assert "4 usable pair(s) remain" in out_skip and "left out" not in out_fail


def test_training_with_skip_lists_the_dropped_pair(tmp_path, capsys):
    root = tmp_path / "data"
    cut = truncated_dataset(root)
    out = tmp_path / "seg"
    code, text = run_cli(capsys, "train-segmenter", "--train", root, "--out", out, "--policy", "skip",
                         "--size", 32, "--max-steps", 1, "--batch-size", 2, "--validate-every", 0, "--device", "cpu",
                         "--val-fraction", 0, "--test-fraction", 0)
    assert code == 0, text
    assert "--policy skip left out 1 file(s)" in text and str(cut) in text
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(r["path"], r["kind"]) for r in skipped] == [(str(cut), "truncated")]
    code, text = run_cli(capsys, "train-segmenter", "--train", root, "--out", tmp_path / "seg2", "--size", 32,
                         "--max-steps", 1, "--device", "cpu")
    assert code == 2 and "cut.png" in text and not (tmp_path / "seg2").exists()  # fail: stops, writes nothing


# 3. empty dataset, 4. a folder named like an image ------------------------------------------------------------


def test_empty_dataset_is_an_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code, out = run_cli(capsys, "data", "check", tmp_path)
    assert code == 1 and "empty-dataset" in out and "no image/mask pairs" in out
    code, _ = run_cli(capsys, "data", "check", tmp_path, "--policy", "skip")
    assert code == 1


def test_folder_named_like_an_image_is_reported(tmp_path, capsys):
    write_paired(tmp_path, defects=("scratch",), n=2, normals=0)
    (tmp_path / "images" / "scratch" / "bad.png").mkdir()
    save(tmp_path / "images" / "scratch" / "bad.png" / "inner.png", pair(3)[0])
    save(tmp_path / "masks" / "scratch" / "bad.png", pair(3)[1])
    code, out = run_cli(capsys, "data", "check", tmp_path)
    assert code == 1 and "not-a-file" in out and "bad.png: is a folder, not an image file" in out
    assert "inner.png" not in out.split("problems")[0]  # its contents are not read as images


def test_symlinked_normals_folder_is_read(tmp_path):
    elsewhere = tmp_path / "normals"
    for i in range(2):
        save(elsewhere / f"n{i}.jpg", pair(50 + i, empty=True)[0])
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=2, normals=0)
    (root / "images" / "good").symlink_to(elsewhere, target_is_directory=True)
    index = load_dataset(root, DataOptions(val_fraction=0.0, test_fraction=0.0))
    assert sum(s.normal for s in index.samples) == 2


# 5. damaged checkpoints, pickled pretrained weights ------------------------------------------------------------


def tiny_task(w: torch.nn.Parameter, nan_at: int | None = None) -> TrainTask:
    def get_batch(k, rank, world):
        return torch.full((3,), float("nan")) if k == nan_at else torch.ones(3)
    return TrainTask(params=[w], get_batch=get_batch, step_fn=lambda b, g: {"loss": ((w * b) ** 2).sum()},
                     state_fn=lambda: {"w": w.data}, load_state_fn=lambda sd: w.data.copy_(sd["w"]),
                     save_fn=lambda d: None)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer.json"])
def test_damaged_checkpoint_file_is_named(tmp_path, name):
    opts = LoopOptions(max_steps=2, checkpoint_every=1, device="cpu", log_every=1)
    train_loop(tiny_task(torch.nn.Parameter(torch.ones(3))), opts, tmp_path, progress=False)
    (tmp_path / "checkpoints" / "step-0000002" / name).write_bytes(b"\x80\x04not a checkpoint")
    opts = LoopOptions(max_steps=4, checkpoint_every=1, device="cpu", log_every=1, resume="latest")
    with pytest.raises(AnomalignError, match=f"step-0000002/{name}: damaged checkpoint file"):
        train_loop(tiny_task(torch.nn.Parameter(torch.ones(3))), opts, tmp_path, progress=False)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_pretrained_folder_is_refused_without_running_it(tmp_path):
    from transformers import SegformerConfig
    folder = tmp_path / "pretrained"
    folder.mkdir()
    SegformerConfig(num_labels=2, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                    num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8).save_pretrained(folder)
    marker = tmp_path / "payload_ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    with pytest.raises(AnomalignError, match="pretrained: cannot load a Segformer"):
        Segmenter("tiny", pretrained=str(folder))
    assert not marker.exists()


# 6. foreign folders are never written into ------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["train-generator", "train-segmenter"])
def test_training_refuses_a_foreign_folder(tmp_path, capsys, command):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "config.yaml").write_text("my: own config\n")
    (out / "logs" / "train.csv").write_text("step,loss\n1,0.5\n")
    before = snapshot(out)
    data_flag = "--data" if command == "train-generator" else "--train"
    code, text = run_cli(capsys, command, data_flag, data, "--out", out, "--max-steps", 1, "--device", "cpu")
    assert code == 2 and "not written by `anomalign " + command in text and "nothing was changed" in text
    assert snapshot(out) == before


def test_unfinished_run_needs_resume_and_marks_its_folder(tmp_path, capsys):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    out = tmp_path / "seg"
    args = ["train-segmenter", "--train", data, "--out", out, "--size", 32, "--batch-size", 2, "--validate-every", 0,
            "--device", "cpu", "--checkpoint-every", 1, "--val-fraction", 0, "--test-fraction", 0]
    assert run_cli(capsys, *args, "--max-steps", 1)[0] == 0
    assert json.loads((out / "run.json").read_text())["command"] == "train-segmenter"
    (out / "segmenter.safetensors").unlink()  # as if killed after its checkpoint, before the end
    code, text = run_cli(capsys, *args, "--max-steps", 2)
    assert code == 2 and "unfinished run" in text and "--resume latest" in text
    assert run_cli(capsys, *args, "--max-steps", 2, "--resume", "latest")[0] == 0
    code, text = run_cli(capsys, "train-generator", "--data", data, "--out", out, "--device", "cpu")
    assert code == 2 and "was written by `anomalign train-segmenter`" in text


# 7. messages instead of tracebacks ---------------------------------------------------------------------------


def test_generate_into_a_folder_with_a_foreign_run_json(tmp_path, capsys):
    gen = tmp_path / "gen"
    dummy_tiny_generator().save(gen)
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"something": "else"}')
    code, text = run_cli(capsys, "generate", "--generator", gen, "--masks", data, "--out", out, "--num", 1,
                         "--steps", 2, "--device", "cpu")
    assert code == 2 and "run.json: not the record of an `anomalign generate` run" in text
    assert "Traceback" not in text and (out / "run.json").read_text() == '{"something": "else"}'


def test_segment_into_a_file_and_misspelt_augmentation(tmp_path, capsys):
    seg = Segmenter("tiny")
    seg.save(tmp_path / "seg", {"size": 32})
    img = save(tmp_path / "a.png", pair(0)[0])
    target = tmp_path / "afile.txt"
    target.write_text("mine")
    code, text = run_cli(capsys, "segment", img, "--segmenter", tmp_path / "seg", "--out", target)
    assert code == 2 and "--out is a file" in text and target.read_text() == "mine"
    code, text = run_cli(capsys, "train-segmenter", "--train", tmp_path, "--out", tmp_path / "s", "--augment", "hfilp")
    assert code == 2 and "unknown augmentation(s) ['hfilp']" in text and "Traceback" not in text


# 8. the same weights give the same bytes -------------------------------------------------------------------


def test_saved_generator_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{SRC!r}, {str(Path(__file__).parent)!r}]
        from tiny_models import dummy_tiny_generator
        dummy_tiny_generator().save(sys.argv[1])
    """)
    digests = set()
    for seed in ("1", "2", "3"):
        folder = tmp_path / f"g{seed}"
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
        digests.add(tuple(hashlib.sha256((folder / n).read_bytes()).hexdigest()
                          for n in ("generator.safetensors", "generator.json")))
    assert len(digests) == 1


# 10. the NaN stop promises only what it checked ------------------------------------------------------------


def test_nan_stop_flags_a_checkpoint_whose_weights_exploded(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    opts = LoopOptions(max_steps=6, checkpoint_every=1, device="cpu", log_every=1, learning_rate=1e6,
                       max_grad_norm=0)
    with pytest.raises(TrainingDiverged, match=r"step 3.*Latest checkpoint: .*step-0000003 \(its weights are "
                                               r"finite, largest \|weight\| [0-9.]+e\+\d+; 1 when this run started\)"
                                               r".*grew more than 10x"):
        train_loop(tiny_task(w, nan_at=3), opts, tmp_path, progress=False)
    opts = LoopOptions(max_steps=6, checkpoint_every=1, device="cpu", log_every=1, learning_rate=1e-3)
    with pytest.raises(TrainingDiverged) as e:
        train_loop(tiny_task(torch.nn.Parameter(torch.ones(3)), nan_at=3), opts, tmp_path / "b", progress=False)
    assert "grew" not in str(e.value) and "step-0000003" in str(e.value)


# 11. kill -9 during train-segmenter, with and without feedback, and inside the checkpoint write -------------


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    import anomalign.training as training
    mode, at = sys.argv[1], int(sys.argv[2])
    real_save, calls = training.save_file, []

    def save_file(tensors, path, *a, **k):  # kill -9 inside the write of checkpoint `at`
        real_save(tensors, path, *a, **k)
        if mode == "during" and f"step-{{at:07d}}.tmp" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    training.save_file = save_file
    real_ckpt = training._save_checkpoint

    def save_checkpoint(out_dir, step, *a, **k):  # kill -9 right after checkpoint `at`, mid-run
        res = real_ckpt(out_dir, step, *a, **k)
        if mode == "after" and step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return res
    training._save_checkpoint = save_checkpoint
    from anomalign.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("feedback,mode", [(False, "after"), (True, "during")])
def test_killed_segmenter_resumes_to_the_same_weights(tmp_path, feedback, mode):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=5, normals=1)
    args = ["train-segmenter", "--train", str(data), "--size", "32", "--max-steps", "6", "--batch-size", "2",
            "--validate-every", "3", "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu"]
    if feedback:
        dummy_tiny_generator().save(tmp_path / "gen")
        args += ["--feedback-generator", str(tmp_path / "gen")]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER.format(src=SRC), mode, "4", *args, "--out", str(killed)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert ckpts == (["step-0000002", "step-0000004"] if mode == "after" else ["step-0000002", "step-0000004.tmp"])
    assert main(args + ["--out", str(killed)]) == 2  # an unfinished run is not restarted by accident
    assert main(args + ["--out", str(killed), "--resume", "latest"]) == 0
    a, b = load_file(str(tmp_path / "whole" / "segmenter.safetensors")), load_file(str(killed / "segmenter.safetensors"))
    # Exact without feedback. With it, the frozen generator's latent cache is filled in another batch order
    # after a resume, which moves its floats in the last digit (not a different draw); Adam turns that into
    # differences of up to ~1e-4 on weights whose gradient is ~0 (lr 1e-3): well under one step.
    tol = dict(rtol=1e-4, atol=1e-6) if feedback else dict(rtol=0, atol=0)
    wtol = dict(rtol=0, atol=3e-4) if feedback else tol
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **wtol) for k in a)
    logs = [(f / "logs" / "train.csv").read_text() for f in (tmp_path / "whole", killed)]
    assert logs[0].splitlines()[0] == logs[1].splitlines()[0]
    rows = [np.array([[float(v) for v in r.split(",")[:-2]] for r in log.splitlines()[1:]]) for log in logs]
    assert rows[0].shape == (6, 4) and np.allclose(rows[0], rows[1], equal_nan=True, **tol)  # without lr, it/s
    assert not list(killed.rglob("*.tmp"))
