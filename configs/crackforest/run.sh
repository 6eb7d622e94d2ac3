#!/usr/bin/env bash
# CrackForest at native resolution (docs/results.md, "CrackForest"): every arm of the magnetic-tile native
# study with this folder's configs, 3 seeds, resumable (finished runs are skipped).
#   real only            -> W/real_sS
#   + 4 diffusion crops  -> W/gen_sS (generator), W/syn_sS (300 full-size pairs), W/plus4_w30_sS
#   + 4 cut-paste crops  -> W/cutpaste_syn_sS, W/cpplus4_w30_sS
#   feedback only        -> W/fb_sS (run_feedback.sh; FULL=1 adds the full method, W/full_sS)
# Two jobs at a time (one CPU thread each); then `python configs/magnetic_tile/collect_native.py W`.
#
#   configs/crackforest/run.sh [CF_DIR] [WORK_DIR]     env: SEEDS="0 1 2"
set -uo pipefail
CF=${1:-../shared/datasets/crackforest}
W=${2:-runs/cf}
SEEDS=${SEEDS:-"0 1 2"}
M=configs/magnetic_tile
export CONFIGS=configs/crackforest SEG_CONFIG=configs/crackforest/segmenter_unet.yaml JOBS=2
PLUS4="--batch-size 20 --synthetic-fraction 0.2 --synthetic-weight 0.3"  # the arm chosen on magnetic tile's val
mkdir -p "$W"
SEEDS="$SEEDS" $M/run_native.sh "$CF" "$W"  # real only
for s in $SEEDS; do  # one queue of single-seed jobs, two at a time
  printf 'SEEDS=%s ONLY_SYN=1 SYN_SEEDS=%s SYN_NAME=plus4_w30 SYN_SEG="%s" %s/run_native.sh %q %q\n' "$s" "$s" "$PLUS4" $M "$CF" "$W"
  printf 'SEEDS=%s SEG_NAME=cpplus4_w30 SYN_SEG="%s" %s/run_cutpaste.sh %q %q\n' "$s" "$PLUS4" $M "$CF" "$W"
done | xargs -d '\n' -P 2 -I{} bash -c '{}'
SEEDS="$SEEDS" configs/crackforest/run_feedback.sh "$CF" "$W"
