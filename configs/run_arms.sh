#!/usr/bin/env bash
# Every arm of the native-resolution study (docs/results.md) on one dataset, with the configs of CONFIGS
# (configs/crackforest or configs/magnetic_tile; each has a run.sh that calls this), 3 seeds, resumable
# (finished runs are skipped).
#   real      real only                                    -> W/real_sS
#   plus4     + 4 diffusion crops per step (α 0.7)         -> W/gen_sS (generator), W/syn_sS (300 pairs), W/plus4_w30_sS
#   cutpaste  + 4 cut-paste crops per step                 -> W/cutpaste_syn_sS, W/cpplus4_w30_sS
#   gen       the α 0.7 generator and its 300 pairs only  -> W/gen_sS, W/syn_sS (what fb and full use; added
#             first automatically when fb or full is asked without plus4)
#   fb        feedback only (run_feedback.sh)              -> W/fb_sS
#   a0        + 4 diffusion crops, generator at α = 0      -> W/gen_a0_sS, W/syn_a0_sS, W/a0plus4_w30_sS
#   full      full method: plus4 + feedback                -> W/full_sS (the seed's gen_sS and syn_sS)
#   pretrain  two stages: PRE_STEPS on the seed's 300 diffusion pairs alone (--synthetic-fraction 1), then
#             FT_STEPS real-only steps from those weights (--init-from)
#             -> W/gen_sS, W/syn_sS, W/pre800_sS, W/pre800ft2400_sS (PRE_STEPS=800, FT_STEPS=2400)
#   reallong  real only with REAL_STEPS steps: the control of the same budget as pretrain -> W/real3200_sS
#   plus4long plus4 with REAL_STEPS steps: the same real crops, steps and schedule as reallong, plus 4 synthetic
#             crops per step -> W/gen_sS, W/syn_sS, W/plus4_w30_3200_sS
#   hosts     as plus4long, but the 300 pairs generated into the anomalous training tiles (--hosts anomalous)
#             instead of the normal ones -> W/gen_sS, W/syn_hosts_sS, W/hostsplus4_w30_3200_sS
#   filtered  as plus4long, but only pairs whose generation window the seed's real-only segmenter (W/real${REAL_STEPS}_sS,
#             the reallong arm) segments at IoU >= MIN_ORACLE with their mask (generate --oracle --min-alignment)
#             -> W/gen_sS, W/syn_orc_sS, W/orcplus4_w30_$REAL_STEPS_sS
#   fbwarm    feedback search on the val split: reallong's recipe plus L_fb through the seed's gen_sS, started
#             after REAL_STEPS/2 plain steps (L_ce converged), λ 0.1 -> W/fbwarm_$REAL_STEPS_sS
#   fullorc   the full method with both findings: the filtered arm's pairs (W/syn_orc_sS, made first by ARMS=filtered)
#             + fbwarm's feedback -> W/fullorc_$REAL_STEPS_sS
#   realcopy  control of plus4long: the real training pairs themselves added as the "synthetic" set (magnetic
#             tile: configs/magnetic_tile/real_as_synthetic.py) -> W/realcopy, W/plus4real_3200_sS
#   gena0     the α 0 generator and its 300 pairs only (alignment measures)  -> W/gen_a0_sS, W/syn_a0_sS
#   t5        Table 5: generators on 20 / 50 (T5_PAIRS) of the 71 training pairs, then as plus4 (seeds T5_SEEDS;
#             the "all pairs" arm is plus4) -> W/gen_n20_sS, W/syn_n20_sS, W/n20plus4_w30_sS (and n50); queued last
# One queue of single-seed jobs, two at a time (one CPU thread each), seed by seed in the order of ARMS; then
# `python configs/magnetic_tile/collect_native.py W`.
#
#   CONFIGS=configs/DATASET configs/run_arms.sh DATA_DIR WORK_DIR
#   env: DRY_RUN=1 (print the queue only)  SEEDS="0 1 2"  T5_SEEDS="0 1"  T5_PAIRS="20 50"  PRE_STEPS=800  FT_STEPS=2400
#        REAL_STEPS=PRE_STEPS+FT_STEPS  MIN_ORACLE=0.3  ARMS="real plus4 cutpaste fb a0 full t5" (pretrain, reallong, plus4long, hosts, filtered, fbwarm, fullorc, realcopy, gena0: only when asked)
set -uo pipefail
C=${CONFIGS:?set CONFIGS=configs/crackforest or configs/magnetic_tile}
D=${1:?DATA_DIR}
W=${2:?WORK_DIR}
SEEDS=${SEEDS:-"0 1 2"}
T5_SEEDS=${T5_SEEDS:-"0 1"}
T5_PAIRS=${T5_PAIRS:-"20 50"}  # of the training pairs (CrackForest has 71); "all" is the plus4 arm
ARMS=${ARMS:-"real plus4 cutpaste fb a0 full t5"}
PRE_STEPS=${PRE_STEPS:-800}
FT_STEPS=${FT_STEPS:-2400}  # real only's steps; FT_STEPS=$((2400 - PRE_STEPS)) puts both stages at real only's budget
REAL_STEPS=${REAL_STEPS:-$((PRE_STEPS + FT_STEPS))}
MIN_ORACLE=${MIN_ORACLE:-0.3}  # the filtered arm's threshold (docs/synthesis.md's example)
if [[ " $ARMS " =~ " "(fb|full)" " && ! " $ARMS " =~ " "(plus4|gen)" " ]]; then ARMS="gen $ARMS"; fi
M=configs/magnetic_tile
export CONFIGS=$C SEG_CONFIG=$C/segmenter_unet.yaml JOBS=2  # one seed per job: JOBS=2 only sets one thread each
PLUS4="--batch-size 20 --synthetic-fraction 0.2 --synthetic-weight 0.3"  # the arm chosen on magnetic tile's val
FBWARM="--fb-rows 4 --fb-warmup-steps $((REAL_STEPS / 2)) --temperature 0.1"  # the feedback search's val choice
mkdir -p "$W"
DIRS=$(printf '%q %q' "$D" "$W")  # the two arguments of every script below, quoted for the queue
job() {  # job ARM SEED: print the queue line of one arm and seed
  local a=$1 s=$2 native="SEEDS=$2 ONLY_SYN=1 SYN_SEEDS=$2 $M/run_native.sh $DIRS"
  case $a in
    real) echo "SEEDS=$s $M/run_native.sh $DIRS" ;;
    plus4) echo "SYN_NAME=plus4_w30 SYN_SEG='$PLUS4' $native" ;;
    cutpaste) echo "SEEDS=$s SEG_NAME=cpplus4_w30 SYN_SEG='$PLUS4' $M/run_cutpaste.sh $DIRS" ;;
    fb) echo "SEEDS=$s ARMS=fb configs/run_feedback.sh $DIRS" ;;
    a0) echo "GEN_TAG=_a0 EXTRA_GEN='--alpha 0' SYN_NAME=a0plus4_w30 SYN_SEG='$PLUS4' $native" ;;
    gen) echo "SYN_NAME=- $native" ;;
    full) echo "SEEDS=$s ARMS=full configs/run_feedback.sh $DIRS" ;;  # waits for the plus4 or gen job's gen_sS, syn_sS
    pretrain)  # stage 2 starts from stage 1's final weights; both are evaluated on test like every arm
        local pre; printf -v pre %q "$W/pre${PRE_STEPS}_s$s"
        echo "SYN_NAME=pre$PRE_STEPS SYN_SEG='--synthetic-fraction 1 --max-steps $PRE_STEPS' $native && SEEDS=$s" \
             "REAL_NAME=pre${PRE_STEPS}ft$FT_STEPS EXTRA_SEG='--init-from $pre --max-steps $FT_STEPS'" \
             "$M/run_native.sh $DIRS" ;;
    plus4long) echo "SYN_NAME=plus4_w30_$REAL_STEPS SYN_SEG='$PLUS4 --max-steps $REAL_STEPS' $native" ;;
    hosts) echo "SYN_TAG=_hosts EXTRA_SYN='--hosts anomalous' SYN_NAME=hostsplus4_w30_$REAL_STEPS" \
                "SYN_SEG='$PLUS4 --max-steps $REAL_STEPS' $native" ;;
    filtered) local o; printf -v o %q "$W/real${REAL_STEPS}_s$s/best"
        echo "SYN_TAG=_orc EXTRA_SYN='--oracle $o --min-alignment $MIN_ORACLE' SYN_NAME=orcplus4_w30_$REAL_STEPS" \
             "SYN_SEG='$PLUS4 --max-steps $REAL_STEPS' $native" ;;
    fbwarm) local g; printf -v g %q "$W/gen_s$s"
        echo "until [ -f $g/generator.safetensors ]; do sleep 30; done; SEEDS=$s REAL_NAME=fbwarm_$REAL_STEPS" \
             "EXTRA_SEG='--feedback-generator $g $FBWARM --max-steps $REAL_STEPS' $M/run_native.sh $DIRS" ;;
    fullorc) local g y; printf -v g %q "$W/gen_s$s"; printf -v y %q "$W/syn_orc_s$s"
        echo "until [ -f $y/summary.json ]; do sleep 30; done; SEEDS=$s REAL_NAME=fullorc_$REAL_STEPS" \
             "EXTRA_SEG='--synthetic $y $PLUS4 --feedback-generator $g $FBWARM --max-steps $REAL_STEPS'" \
             "$M/run_native.sh $DIRS" ;;
    realcopy) local rc; printf -v rc %q "$W/realcopy"
        echo "python $M/real_as_synthetic.py $DIRS/realcopy && SEEDS=$s REAL_NAME=plus4real_$REAL_STEPS" \
             "EXTRA_SEG='--synthetic $rc $PLUS4 --max-steps $REAL_STEPS' $M/run_native.sh $DIRS" ;;
    gena0) echo "GEN_TAG=_a0 EXTRA_GEN='--alpha 0' SYN_NAME=- $native" ;;
    reallong) echo "SEEDS=$s REAL_NAME=real$REAL_STEPS EXTRA_SEG='--max-steps $REAL_STEPS' $M/run_native.sh $DIRS" ;;
    t5) local n=$3
        echo "GEN_TAG=_n$n EXTRA_GEN='--train-pairs $n' SYN_NAME=n${n}plus4_w30 SYN_SEG='$PLUS4' $native" ;;
    *) echo "unknown arm '$a' (choices: real plus4 cutpaste gen fb a0 full pretrain reallong plus4long hosts filtered fbwarm fullorc realcopy gena0 t5)" >&2; return 1 ;;
  esac
}
{
  for s in $SEEDS; do
    for a in $ARMS; do
      [ "$a" = t5 ] || job "$a" "$s" || exit 1
    done
  done
  if [[ " $ARMS " == *" t5 "* ]]; then  # last, smallest generator set first across seeds
    for n in $T5_PAIRS; do for s in $T5_SEEDS; do job t5 "$s" "$n"; done; done
  fi
} | if [ -n "${DRY_RUN:-}" ]; then cat; else xargs -d '\n' -P 2 -I{} bash -c '{}'; fi
