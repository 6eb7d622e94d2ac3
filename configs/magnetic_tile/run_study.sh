#!/usr/bin/env bash
# The whole magnetic-tile study (docs/results.md) with anomalign commands only.
#
#   configs/magnetic_tile/run_study.sh [MT_DIR] [WORK_DIR]
#
# env: SEEDS="0 1 2"  PARALLEL=1 (run the seeds and Table 5 as parallel jobs; for a GPU)  AN="anomalign"
#      EXTRA_GEN / EXTRA_SYN / EXTRA_SEG: extra flags for every train-generator / generate / train-segmenter
#      (e.g. "--max-steps 2" for a smoke run). Finished runs are skipped, so a killed study resumes.
set -uo pipefail
MT=${1:-../shared/datasets/magnetic-tile}
W=${2:-runs/magnetic_tile}
C=configs/magnetic_tile
SEEDS=${SEEDS:-"0 1 2"}
AN=${AN:-anomalign}
EXTRA_GEN=${EXTRA_GEN:-}
EXTRA_SYN=${EXTRA_SYN:-}
EXTRA_SEG=${EXTRA_SEG:-}
mkdir -p "$W"

gen() {  # gen OUT SEED ALPHA [flags...]
  local out=$1 s=$2 a=$3; shift 3
  [ -f "$out/generator.safetensors" ] && return 0
  $AN train-generator --config $C/generator.yaml --data "$MT" --out "$out" --seed "$s" --alpha "$a" $EXTRA_GEN "$@"
}
syn() {  # syn GEN OUT SEED
  [ -f "$2/summary.json" ] && return 0
  $AN generate --config $C/generate.yaml --generator "$1" --masks "$MT" --out "$2" --seed "$3" $EXTRA_SYN
}
seg() {  # seg OUT SEED [flags...]
  local out=$1 s=$2; shift 2
  if [ ! -f "$out/segmenter.safetensors" ]; then
    $AN train-segmenter --config $C/segmenter.yaml --train "$MT" --out "$out" --seed "$s" $EXTRA_SEG "$@" || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$MT" --out "$out/eval"
}

seed_job() {  # Studies 1, 2, 4, 5 for one seed
  local s=$1 d=$W/seed$1
  gen "$d/gen_a0" "$s" 0 && syn "$d/gen_a0" "$d/syn_a0" "$s"
  gen "$d/gen_a0.7" "$s" 0.7 && syn "$d/gen_a0.7" "$d/syn_a0.7" "$s"
  seg "$d/seg_real" "$s"
  seg "$d/seg_syn_a0" "$s" --synthetic "$d/syn_a0"
  seg "$d/seg_syn_a0.7" "$s" --synthetic "$d/syn_a0.7"
  seg "$d/seg_fb" "$s" --feedback-generator "$d/gen_a0.7"
  seg "$d/seg_full" "$s" --synthetic "$d/syn_a0.7" --feedback-generator "$d/gen_a0.7"
  [ -f "$d/generation/generation.json" ] || $AN evaluate-generation --config $C/evaluate_generation.yaml \
    --generated "$d/syn_a0" "$d/syn_a0.7" --labels alpha=0 alpha=0.7 --real "$MT" --generator "$d/gen_a0.7" \
    --out "$d/generation"
}

table5_job() {  # Study 3 (seed 0): generator trained on 20 / 50 / 100 pairs -> + synthetic -> mIoU ("all": seed0)
  local d=$W/table5
  for n in 20 50 100; do
    gen "$d/gen_n$n" 0 0.7 --train-pairs "$n" && syn "$d/gen_n$n" "$d/syn_n$n" 0 && \
      seg "$d/seg_syn_n$n" 0 --synthetic "$d/syn_n$n"
  done
}

if [ "${PARALLEL:-0}" = 1 ]; then
  for s in $SEEDS; do seed_job "$s" > "$W/seed$s.log" 2>&1 & done
  table5_job > "$W/table5.log" 2>&1 &
  wait
else
  for s in $SEEDS; do seed_job "$s"; done
  table5_job
fi
echo "study finished: $W"
