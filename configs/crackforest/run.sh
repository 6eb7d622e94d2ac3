#!/usr/bin/env bash
# CrackForest at native resolution (docs/results.md, "CrackForest"): every arm, 3 seeds, one resumable queue.
#   configs/crackforest/run.sh [CF_DIR] [WORK_DIR]    env: as configs/run_arms.sh (ARMS, SEEDS, T5_SEEDS, T5_PAIRS)
CONFIGS=configs/crackforest exec configs/run_arms.sh "${1:-../shared/datasets/crackforest}" "${2:-runs/cf}"
