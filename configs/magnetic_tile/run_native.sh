#!/usr/bin/env bash
# Native-resolution segmenters on magnetic tile (docs/results.md, "Native resolution"): real only, per seed,
# then the best-val checkpoint evaluated at full size on the test split. Resumable (finished runs are skipped).
#
#   configs/magnetic_tile/run_native.sh [MT_DIR] [WORK_DIR]      env: SEEDS="0 1 2"  JOBS=2  EXTRA_SEG=""
set -uo pipefail
MT=${1:-../shared/datasets/magnetic-tile}
W=${2:-runs/mt_native}
C=configs/magnetic_tile
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
AN=${AN:-anomalign}
EXTRA_SEG=${EXTRA_SEG:-}
mkdir -p "$W/logs"
seg() {  # seg OUT SEED [flags]
  local out=$1 s=$2; shift 2
  if [ ! -f "$out/segmenter.safetensors" ]; then
    local resume=""
    [ -d "$out/checkpoints" ] && resume="--resume latest"
    $AN train-segmenter --config $C/segmenter_native.yaml --train "$MT" --out "$out" --seed "$s" $resume \
      $EXTRA_SEG "$@" || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$MT" \
    --out "$out/eval"
}
export OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
n=0
for s in $SEEDS; do
  seg "$W/real_s$s" "$s" > "$W/logs/real_s$s.log" 2>&1 &
  n=$((n + 1))
  if [ "$n" -ge "$JOBS" ]; then wait -n; n=$((n - 1)); fi
done
wait
