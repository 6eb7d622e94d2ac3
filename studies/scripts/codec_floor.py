"""Issue 46 item 4: does the generator's own path make a REAL defect look generated? (docs/synthesis.md)

Each real defect's generation window (R / scale native px around the defect, as `generate --normals` cuts it) is
(a) resized to R and back, or (b) resized, encoded and decoded by the generator's codec and resized back, and
pasted into its image; the C2ST of `evaluate-generation` then compares the real defect crops with these. An AUC
near 0.5 says the codec and the window's resolution leave a real defect as it was, so a high AUC of generated
defects comes from what the UNet draws.

    python studies/scripts/codec_floor.py RUN/generator ../shared/datasets/polyp-dev --scale 0.303
"""
import argparse

import numpy as np
import torch
from PIL import Image

from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset
from anomalign.evaluation.discriminability import defect_crops, discriminability
from anomalign.generator.model import MaskGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("generator")
    ap.add_argument("data")
    ap.add_argument("--scale", type=float, required=True, help="the scale the generator was fine-tuned at")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = MaskGenerator.load(args.generator).eval()
    R = gen.resolution
    side = round(R / args.scale)
    data = load_dataset(args.data, DataOptions(), announce=False)
    reals, masks, resized, coded = [], [], [], []
    for s in data.samples:  # every split: a property of the path, not of a split
        if s.mask is None:
            continue
        m = np.array(Image.open(s.mask).convert("L")) > 127
        if not m.any():
            continue
        im = np.array(Image.open(s.image).convert("RGB"))
        ys, xs = np.nonzero(m)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        H, W = m.shape
        n = min(side, H, W)
        top, left = min(max(0, cy - n // 2), H - n), min(max(0, cx - n // 2), W - n)
        small = Image.fromarray(im[top:top + n, left:left + n]).resize((R, R), Image.BICUBIC)
        a = im.copy()
        a[top:top + n, left:left + n] = np.asarray(small.resize((n, n), Image.BICUBIC))
        x = torch.from_numpy(np.array(small)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = gen.decode(gen.encode(x)).clamp(-1, 1)[0].permute(1, 2, 0).numpy()
        if (im == im[..., :1]).all():  # grey data stays grey, as `generate` writes it (the channel mean)
            y = y.mean(axis=2, keepdims=True).repeat(3, axis=2)
        b = im.copy()
        b[top:top + n, left:left + n] = np.asarray(
            Image.fromarray(((y + 1) * 127.5).round().astype(np.uint8)).resize((n, n), Image.BICUBIC))
        reals.append(im)
        masks.append(m)
        resized.append(a)
        coded.append(b)
    rc, rm = defect_crops(reals, masks)
    print(f"{len(rc)} real defects, {side}-px windows at {R} px")
    for name, imgs in (("resized only", resized), ("resized + codec", coded)):
        d = discriminability(rc, rm, *defect_crops(imgs, masks), seed=args.seed)
        c, e = d["crop"], d["seam"]
        print(f"{name}: C2ST crop {c['auc']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}], seam {e['auc']:.2f} "
              f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}], labels permuted {c['auc_permuted']:.2f} / "
              f"{e['auc_permuted']:.2f}; most telling (crop): {c['top_features'][:3]}")


if __name__ == "__main__":
    main()
