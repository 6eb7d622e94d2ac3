#!/usr/bin/env bash
# The practitioner's baseline beside run_native.sh's diffusion arm (docs/results.md, "Native resolution"):
# per seed, 300 cut-paste pairs (real defect pixels of the training split pasted with their augmented masks
# into the training split's full-size normal tiles; same masks, augmentation and placements as the diffusion
# set of that seed) and a real + cut-paste segmenter with the same recipe, evaluated at full size on test.
#
#   configs/magnetic_tile/run_cutpaste.sh [MT_DIR] [WORK_DIR]
#   env: SEEDS="0 1 2"  JOBS=2  SEG_CONFIG=configs/magnetic_tile/segmenter_unet.yaml
#        SEG_NAME=cutpaste (run folder prefix)  SYN_SEG="" (extra segmenter flags, as in run_native.sh)
set -uo pipefail
MT=${1:-../shared/datasets/magnetic-tile}
W=${2:-runs/mt_unet}
C=${CONFIGS:-configs/magnetic_tile}  # CONFIGS=configs/crackforest: the same arms there
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
AN=${AN:-anomalign}
SEG_CONFIG=${SEG_CONFIG:-$C/segmenter_unet.yaml}
SEG_NAME=${SEG_NAME:-cutpaste}
SYN_SEG=${SYN_SEG:-}
mkdir -p "$W/logs"
export OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
one() {  # one SEED
  local s=$1 y="$W/cutpaste_syn_s$1" out="$W/${SEG_NAME}_s$1"
  [ -f "$y/summary.json" ] || $AN generate --config $C/generate_native.yaml --synthesizer cutpaste \
    --masks "$MT" --normals "$MT" --out "$y" --seed "$s" || return 1
  if [ ! -f "$out/segmenter.safetensors" ]; then
    local resume=""
    [ -d "$out/checkpoints" ] && resume="--resume latest"
    $AN train-segmenter --config "$SEG_CONFIG" --train "$MT" --out "$out" --seed "$s" --synthetic "$y" $SYN_SEG $resume || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$MT" \
    --out "$out/eval"
}
n=0
for s in $SEEDS; do
  one "$s" > "$W/logs/${SEG_NAME}_s$s.log" 2>&1 &
  n=$((n + 1))
  if [ "$n" -ge "$JOBS" ]; then wait -n; n=$((n - 1)); fi
done
wait
