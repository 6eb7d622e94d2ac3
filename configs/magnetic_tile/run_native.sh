#!/usr/bin/env bash
# Native-resolution segmenters on magnetic tile (docs/results.md, "Native resolution"): real only, per seed,
# then the best-val checkpoint evaluated at full size on the test split. Resumable (finished runs are skipped).
# SYN_SEEDS="0": also a generator fine-tuned on native crops, 300 full-size synthetic pairs (generate
# --normals) and a real + synthetic segmenter, per listed seed.
#
#   configs/magnetic_tile/run_native.sh [MT_DIR] [WORK_DIR]
#   env: SEEDS="0 1 2"  SYN_SEEDS=""  JOBS=2  EXTRA_SEG=""  ONLY_SYN=1 (skip the real-only segmenters)
#        SEG_CONFIG=configs/magnetic_tile/segmenter_native.yaml (the U-Net recipe: segmenter_unet.yaml)
#        REAL_NAME=real  SYN_NAME=synth (run folder prefixes)  SYN_SEG="" (extra flags of the real + synthetic
#        segmenter only, e.g. SYN_NAME=plus4_w30 SYN_SEG="--batch-size 20 --synthetic-fraction 0.2
#        --synthetic-weight 0.3": 16 real crops per step as real only, plus 4 synthetic ones at w_syn 0.3)
#        GEN_TAG="" EXTRA_GEN="" (a generator variant in its own folders, W/gen${GEN_TAG}_sS and W/syn${GEN_TAG}_sS,
#        e.g. GEN_TAG=_a0 EXTRA_GEN="--alpha 0", or GEN_TAG=_n20 EXTRA_GEN="--train-pairs 20" for Table 5)
#        SYN_NAME=- makes the generator and its pairs only (for configs/run_feedback.sh's full method)
#        SYN_TAG=$GEN_TAG EXTRA_SYN="" (a variant of the synthetic pairs in W/syn${SYN_TAG}_sS, e.g.
#        SYN_TAG=_hosts EXTRA_SYN="--hosts anomalous": the defects generated into the anomalous training tiles)
set -uo pipefail
MT=${1:-../shared/datasets/magnetic-tile}
W=${2:-runs/mt_native}
C=${CONFIGS:-configs/magnetic_tile}  # CONFIGS=configs/crackforest: the same arms there
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
AN=${AN:-anomalign}
EXTRA_SEG=${EXTRA_SEG:-}
SEG_CONFIG=${SEG_CONFIG:-$C/segmenter_native.yaml}
REAL_NAME=${REAL_NAME:-real}
SYN_NAME=${SYN_NAME:-synth}
SYN_SEG=${SYN_SEG:-}
GEN_TAG=${GEN_TAG:-}
EXTRA_GEN=${EXTRA_GEN:-}
SYN_TAG=${SYN_TAG:-$GEN_TAG}
EXTRA_SYN=${EXTRA_SYN:-}
mkdir -p "$W/logs"
seg() {  # seg OUT SEED [flags]
  local out=$1 s=$2; shift 2
  if [ ! -f "$out/segmenter.safetensors" ]; then
    local resume=""
    [ -d "$out/checkpoints" ] && resume="--resume latest"
    $AN train-segmenter --config "$SEG_CONFIG" --train "$MT" --out "$out" --seed "$s" $resume \
      $EXTRA_SEG "$@" || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$MT" \
    --out "$out/eval"
}
export OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
syn() {  # syn SEED: generator on crops -> full-size synthetic pairs -> real + synthetic segmenter
  local s=$1 g="$W/gen${GEN_TAG}_s$1" y="$W/syn${SYN_TAG}_s$1"
  if [ ! -f "$g/generator.safetensors" ]; then
    local resume=""
    [ -d "$g/checkpoints" ] && resume="--resume latest"
    $AN train-generator --config $C/generator_native.yaml --data "$MT" --out "$g" --seed "$s" $resume \
      $EXTRA_GEN || return 1
  fi
  [ -f "$y/summary.json" ] || $AN generate --config $C/generate_native.yaml --generator "$g" --masks "$MT" \
    --normals "$MT" --out "$y" --seed "$s" $EXTRA_SYN || return 1
  [ "$SYN_NAME" = - ] && return 0
  seg "$W/${SYN_NAME}_s$s" "$s" --synthetic "$y" $SYN_SEG
}
n=0
for s in ${SYN_SEEDS:-}; do
  log=$SYN_NAME; [ "$log" = - ] && log=gen$SYN_TAG
  syn "$s" > "$W/logs/${log}_s$s.log" 2>&1 &
  n=$((n + 1))
  if [ "$n" -ge "$JOBS" ]; then wait -n; n=$((n - 1)); fi
done
[ -n "${ONLY_SYN:-}" ] && SEEDS=""
for s in $SEEDS; do
  seg "$W/${REAL_NAME}_s$s" "$s" > "$W/logs/${REAL_NAME}_s$s.log" 2>&1 &
  n=$((n + 1))
  if [ "$n" -ge "$JOBS" ]; then wait -n; n=$((n - 1)); fi
done
wait
