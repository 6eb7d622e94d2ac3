#!/bin/bash
# Issue 47 item 3: the plain U-Net reference a user would try first, on polyp-dev split seeds given as arguments:
# whole frames resized to 256 px, plain cross-entropy (no anomaly weight, no Dice), flips only, no photometric or
# colour jitter, 3 200 steps at batch 4 (the pixels per step of run's 16 x 128-px crops), evaluated at full size.
#   bash studies/polyp_dev/reference.sh OUT_DIR 0 1 2
set -e
out=$1; shift
for s in "$@"; do
  o=$out/ref_s$s
  [ -f $o/eval/eval.json ] && continue
  anomalign train-segmenter --train ../shared/datasets/polyp-dev --out $o --split-seed $s --seed $s \
    --preset unet-tiny --crop-size 0 --size 256 --batch-size 4 --max-steps 3200 --anomaly-weight 1 --dice-weight 0 \
    --photometric 0 --colour 0 --validate-every 400
  anomalign evaluate --segmenter $o --test ../shared/datasets/polyp-dev --split-seed $s --full-size --out $o/eval
done
