#!/usr/bin/env bash
# The whole magnetic-tile study (docs/results.md) with anomalign commands only.
#
#   configs/magnetic_tile/run_study.sh [MT_DIR] [WORK_DIR]
#
# env: SEEDS="0 1 2"  T5_SEEDS="0" (Table 5 seeds)  AN="anomalign"
#      PARALLEL=1: run independent jobs at once (for a GPU machine with many cores): first every generator
#                  (+ its synthetic set), then every segmenter, then the generation evaluations.
#      EXTRA_GEN / EXTRA_SYN / EXTRA_SEG: extra flags for every train-generator / generate / train-segmenter
#      (e.g. "--max-steps 2" for a smoke run). Finished runs are skipped, so a killed study resumes.
set -uo pipefail
MT=${1:-../shared/datasets/magnetic-tile}
W=${2:-runs/magnetic_tile}
C=configs/magnetic_tile
SEEDS=${SEEDS:-"0 1 2"}
T5_SEEDS=${T5_SEEDS:-"0"}
AN=${AN:-anomalign}
EXTRA_GEN=${EXTRA_GEN:-}
EXTRA_SYN=${EXTRA_SYN:-}
EXTRA_SEG=${EXTRA_SEG:-}
mkdir -p "$W/logs"

gen_syn() {  # gen_syn GEN SYN SEED ALPHA [train-generator flags...]: a generator and its 300 synthetic pairs
  local g=$1 y=$2 s=$3 a=$4; shift 4
  if [ ! -f "$g/generator.safetensors" ]; then
    $AN train-generator --config $C/generator.yaml --data "$MT" --out "$g" --seed "$s" --alpha "$a" \
      $EXTRA_GEN "$@" || return 1
  fi
  [ -f "$y/summary.json" ] || $AN generate --config $C/generate.yaml --generator "$g" --masks "$MT" --out "$y" \
    --seed "$s" $EXTRA_SYN
}
seg() {  # seg OUT SEED [train-segmenter flags...]: train, then evaluate the best-val checkpoint on the test split
  local out=$1 s=$2; shift 2
  if [ ! -f "$out/segmenter.safetensors" ]; then
    $AN train-segmenter --config $C/segmenter.yaml --train "$MT" --out "$out" --seed "$s" $EXTRA_SEG "$@" || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$MT" \
    --out "$out/eval"
}
generation() {  # generation SEED_DIR: studies 1, 4, 5 (FID, alignment, oracle IoU, t-SNE, premise) for one seed
  local d=$1
  [ -f "$d/generation/generation.json" ] || $AN evaluate-generation --config $C/evaluate_generation.yaml \
    --generated "$d/syn_a0" "$d/syn_a0.7" --labels alpha=0 alpha=0.7 --real "$MT" --generator "$d/gen_a0.7" \
    --oracle "$d/seg_real/best" --out "$d/generation"
}

# Each job: NAME then a command line; its output goes to $W/logs/NAME.log.
generator_jobs() {
  for s in $SEEDS; do
    for a in 0 0.7; do echo "gen_s${s}_a$a gen_syn $W/seed$s/gen_a$a $W/seed$s/syn_a$a $s $a"; done
  done
  for s in $T5_SEEDS; do  # Study 3: the "all pairs" arm is seed S's α = 0.7 run
    for n in 20 50 100; do
      echo "gen_t5_s${s}_n$n gen_syn $W/table5/seed$s/gen_n$n $W/table5/seed$s/syn_n$n $s 0.7 --train-pairs $n"
    done
  done
}
segmenter_jobs() {
  for s in $SEEDS; do
    local d=$W/seed$s
    echo "seg_s${s}_real seg $d/seg_real $s"                                  # Table 4 rows (study 2)
    echo "seg_s${s}_syn_a0 seg $d/seg_syn_a0 $s --synthetic $d/syn_a0"
    echo "seg_s${s}_syn_a0.7 seg $d/seg_syn_a0.7 $s --synthetic $d/syn_a0.7"
    echo "seg_s${s}_fb seg $d/seg_fb $s --feedback-generator $d/gen_a0.7"
    echo "seg_s${s}_full seg $d/seg_full $s --synthetic $d/syn_a0.7 --feedback-generator $d/gen_a0.7"
  done
  for s in $T5_SEEDS; do
    for n in 20 50 100; do
      echo "seg_t5_s${s}_n$n seg $W/table5/seed$s/seg_syn_n$n $s --synthetic $W/table5/seed$s/syn_n$n"
    done
  done
}
evaluation_jobs() {  # studies 1, 4, 5; the real-only segmenter is the oracle
  for s in $SEEDS; do echo "generation_s$s generation $W/seed$s"; done
}
run_jobs() {  # run_jobs < job list
  while read -r name cmd; do
    if [ "${PARALLEL:-0}" = 1 ]; then
      $cmd < /dev/null > "$W/logs/$name.log" 2>&1 &
    else
      echo "== $name"; $cmd < /dev/null 2>&1 | tee "$W/logs/$name.log"
    fi
  done
  wait
}

generator_jobs | run_jobs
segmenter_jobs | run_jobs
evaluation_jobs | run_jobs
echo "study finished: $W"
