"""Make a smaller copy of the magnetic-tile folders (longer side <= 224 px, same names and layout).

Used only to send the data to a GPU machine whose upload limit is below the original's 57 MB; the study
resizes every image to 128 px anyway. Images: bicubic + JPEG quality 90; masks: bilinear (grey, as the
anti-aliased originals) + PNG, binarized at 0.5 by the reader as usual.

    python studies/scripts/shrink_copy.py ../shared/datasets/magnetic-tile .mt_small
"""
import sys
from pathlib import Path

from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for f in sorted(src.rglob("*")):
    if not f.is_file():
        continue
    out = dst / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(f)
    s = 224 / max(im.size)
    size = (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))) if s < 1 else im.size
    if f.suffix.lower() == ".png":
        im.convert("L").resize(size, Image.BILINEAR).save(out)
    else:
        im.convert("RGB").resize(size, Image.BICUBIC).save(out, quality=90)
    n += 1
print(f"{n} files -> {dst}")
