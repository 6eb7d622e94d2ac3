"""Bad-input corpus: each case must be reported with the file's name and the problem, all at once."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anomalign.data import DataOptions, check_dataset, load_dataset, read_dataset
from anomalign.errors import DataError
from dummy_data import pair, save, write_paired, write_realiad, write_same_folder_suffix, write_visa


def noisy_png(path, size=64):
    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return save(path, arr)


@pytest.fixture
def bad_paired(tmp_path):
    """A paired dataset with one good pair per defect plus one instance of every problem."""
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=3, normals=2)
    img, msk = root / "images" / "scratch", root / "masks" / "scratch"
    cases = {}
    (img / "zero.jpg").write_bytes(b"")
    save(msk / "zero.png", pair(1)[1])
    cases["zero.jpg"] = "zero-byte"
    data = noisy_png(img / "cut.png").read_bytes()
    (img / "cut.png").write_bytes(data[: len(data) // 2])
    save(msk / "cut.png", np.zeros((64, 64), bool))
    cases["cut.png"] = "truncated"
    jpg = img / "cutj.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[:900])
    save(msk / "cutj.png", np.zeros((64, 64), bool))
    cases["cutj.jpg"] = "truncated"
    (img / "text.png").write_text("this is not a png")
    save(msk / "text.png", pair(2)[1])
    cases["text.png"] = "unreadable"
    save(img / "nomask.jpg", pair(3)[0])
    cases["nomask.jpg"] = "missing-mask"
    save(msk / "orphan.png", pair(4)[1])
    cases["orphan.png"] = "orphan-mask"
    save(img / "big.jpg", pair(5, size=(30, 40))[0])
    save(msk / "big.png", pair(5)[1])
    cases["big.png"] = "size-mismatch"
    save(img / "empty.jpg", pair(6)[0])
    save(msk / "empty.png", np.zeros((24, 32), bool))
    cases["empty.png"] = "empty-mask"
    soft = pair(7)[1].astype(np.uint8) * 200 + 20
    save(img / "soft.jpg", pair(7)[0])
    save(msk / "soft.png", np.where(np.arange(32) % 2 == 0, soft, soft // 2).astype(np.uint8))
    cases["soft.png"] = "non-binary-mask"
    (img / "notes.txt").write_text("not an image")
    cases["notes.txt"] = "unsupported-file"
    save(img / "dup.jpg", pair(8)[0])
    save(img / "dup.png", pair(8)[0])
    save(msk / "dup.png", pair(8)[1])
    cases["dup.png"] = "duplicate-name"
    save(img / "badmask.jpg", pair(9)[0])
    (msk / "badmask.png").write_bytes(bytes(range(256)) * 4)  # no image signature
    cases["badmask.png"] = "unreadable"
    save(root / "images" / "good" / "notnormal.jpg", pair(10)[0])
    save(root / "masks" / "good" / "notnormal.png", pair(10)[1])
    cases["notnormal.png"] = "normal-with-anomaly"
    faint = tmp_path / "faint16.png"
    Image.fromarray(pair(11)[1].astype(np.uint16) * 255).save(faint)  # 255 of 65535: below threshold
    save(img / "faint.jpg", pair(11)[0])
    faint.replace(msk / "faint.png")
    cases["faint.png"] = "empty-mask"
    (root / "metadata.jsonl").write_text('{"file_name": "images/scratch/000.jpg"}\nnot json\n')
    cases["metadata.jsonl"] = "bad-metadata"
    return root, cases


def test_every_problem_is_reported_with_file_and_kind(bad_paired):
    root, cases = bad_paired
    assert len(cases) >= 12
    report = check_dataset(read_dataset(root))
    found = {(p.path.name, p.kind): str(p) for p in report.problems}
    for name, kind in cases.items():
        assert (name, kind) in found, f"{name}: expected a '{kind}' problem, got {sorted(found)}"
        assert name in found[(name, kind)]
    text = report.format(max_per_kind=100)
    for name in cases:
        assert name in text
    assert "faint.png" in found[("faint.png", "empty-mask")] and "below the threshold" in found[("faint.png", "empty-mask")]


def test_policy_fail_lists_all_errors_and_skip_keeps_good_pairs(bad_paired):
    root, cases = bad_paired
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    errors = [n for n, k in cases.items() if k in {"zero-byte", "truncated", "unreadable", "missing-mask",
                                                   "orphan-mask", "size-mismatch", "duplicate-name", "bad-metadata"}]
    for name in errors:
        assert name in message, f"{name} missing from the fail-policy error"
    index = load_dataset(root, DataOptions(policy="skip"))
    names = {s.image.name for s in index.samples}
    assert {"000.jpg", "001.jpg", "002.jpg", "empty.jpg", "soft.jpg"} <= names  # warnings do not drop pairs
    assert not names & {"zero.jpg", "cut.png", "cutj.jpg", "text.png", "nomask.jpg", "big.jpg", "badmask.jpg"}


def test_same_folder_ambiguous_pair(tmp_path):
    write_same_folder_suffix(tmp_path, n=2)
    save(tmp_path / "odd.png", pair(1)[0])
    save(tmp_path / "odd.bmp", pair(1)[0])
    problems = read_dataset(tmp_path).problems
    assert any(p.kind == "ambiguous-pair" and "odd" in str(p) for p in problems)


def test_visa_missing_image_and_realiad_bad_json(tmp_path):
    write_visa(tmp_path / "visa")
    csv = tmp_path / "visa" / "split_csv" / "1cls.csv"
    csv.write_text(csv.read_text() + "candle,test,anomaly,candle/Data/Images/Anomaly/ghost.JPG,candle/x.png\n")
    problems = read_dataset(tmp_path / "visa").problems
    assert any(p.kind == "missing-file" and p.path.name == "ghost.JPG" for p in problems)
    write_realiad(tmp_path / "riad")
    (tmp_path / "riad" / "realiad_jsons" / "broken.json").write_text("{not json")
    problems = read_dataset(tmp_path / "riad").problems
    assert any(p.kind == "bad-json" and p.path.name == "broken.json" for p in problems)


def test_cli_check_reports_without_traceback(bad_paired, tmp_path):
    root, cases = bad_paired
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "anomalign", "data", "check", str(root), "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "zero.jpg" in proc.stdout and "layout:  paired" in proc.stdout
    payload = json.loads(out.read_text())
    assert {p["kind"] for p in payload["problems"]} >= set(cases.values())
    proc = subprocess.run([sys.executable, "-m", "anomalign", "data", "check", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
