#!/usr/bin/env bash
# Generative Feedback at native resolution (docs/results.md), with the configs of CONFIGS: per seed, the
# real-only recipe plus L_fb through the seed's own generator (W/gen_sS, made by run_arms.sh) -> W/fb_sS ("feedback only"), and with
# FULL=1 also the real + diffusion arm plus L_fb -> W/full_sS ("full method"); ARMS="full" runs that one only.
# Feedback on 4 of the 16 real crops, every 2nd step (--fb-rows 4, fb_every 2 in the config): ~1.8x the cost of a real-only step on the CPU;
# all 16 crops every 2nd step cost ~4.6x (measured). Waits for a seed's generator if run.sh is still making it.
#
#   CONFIGS=configs/DATASET configs/run_feedback.sh DATA_DIR WORK_DIR    env: SEEDS="0 1 2"  FULL=""  ARMS="fb"  FB="--fb-rows 4"
set -uo pipefail
C=${CONFIGS:?set CONFIGS=configs/crackforest or configs/magnetic_tile}
D=${1:?DATA_DIR}
W=${2:?WORK_DIR}
SEEDS=${SEEDS:-"0 1 2"}
FB=${FB:-"--fb-rows 4"}
ARMS=${ARMS:-fb${FULL:+ full}}
AN=${AN:-anomalign}
export OMP_NUM_THREADS=1
mkdir -p "$W/logs"
seg() {  # seg OUT SEED [flags]: train (resumable), then evaluate the best-val checkpoint on test
  local out=$1 s=$2; shift 2
  if [ ! -f "$out/segmenter.safetensors" ]; then
    local resume=""
    [ -d "$out/checkpoints" ] && resume="--resume latest"
    $AN train-segmenter --config $C/segmenter_unet.yaml --train "$D" --out "$out" --seed "$s" $resume "$@" || return 1
  fi
  [ -f "$out/eval/eval.json" ] || $AN evaluate --config $C/evaluate.yaml --segmenter "$out/best" --test "$D" \
    --out "$out/eval"
}
for s in $SEEDS; do
  until [ -f "$W/gen_s$s/generator.safetensors" ]; do sleep 30; done
  if [[ " $ARMS " == *" fb "* ]]; then
    seg "$W/fb_s$s" "$s" --feedback-generator "$W/gen_s$s" $FB > "$W/logs/fb_s$s.log" 2>&1
  fi
  if [[ " $ARMS " == *" full "* ]]; then
    until [ -f "$W/syn_s$s/summary.json" ]; do sleep 30; done
    seg "$W/full_s$s" "$s" --feedback-generator "$W/gen_s$s" $FB --synthetic "$W/syn_s$s" \
      --batch-size 20 --synthetic-fraction 0.2 --synthetic-weight 0.3 > "$W/logs/full_s$s.log" 2>&1
  fi
done
