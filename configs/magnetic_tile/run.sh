#!/usr/bin/env bash
# Magnetic tile at native resolution (docs/results.md, "Native resolution"): every arm, 3 seeds, one resumable
# queue, with the shipped (TAEF2 v) base; run folder runs/mt_v as in the docs.
#   configs/magnetic_tile/run.sh [MT_DIR] [WORK_DIR]    env: as configs/run_arms.sh (ARMS, SEEDS, T5_SEEDS, T5_PAIRS)
CONFIGS=configs/magnetic_tile exec configs/run_arms.sh "${1:-../shared/datasets/magnetic-tile}" "${2:-runs/mt_v}"
