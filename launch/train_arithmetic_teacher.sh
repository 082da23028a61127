#!/usr/bin/env bash
# Trains a shipped arithmetic teacher, then exports its params (no optimizer state):
#   - launch/checkpoints/arithmetic_sum3_2digit_teacher, the quickstart's (the defaults:
#     gin/experiments/arithmetic/teacher.gin, 4000 steps, about 15 minutes on 2 CPU cores);
#   - launch/checkpoints/arithmetic_chain5_teacher, the reproduction's second task's
#     (gin/experiments/arithmetic/chain5_teacher.gin, 4000 steps, about 30 minutes).
#
#   bash launch/train_arithmetic_teacher.sh [RUN_DIR] [EXPORT_DIR] [GIN_FILE]
#
# PYTHON: the interpreter (default python3, which must be the environment's).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-/tmp/gkd_arithmetic_teacher}
EXPORT_DIR=${2:-launch/checkpoints/arithmetic_sum3_2digit_teacher}
GIN_FILE=${3:-gin/experiments/arithmetic/teacher.gin}
PYTHON=${PYTHON:-python3}
mkdir -p "$RUN_DIR"
"$PYTHON" -m gkd_t5x.train --gin_file=gin/runs/train.gin \
  --gin_file="$GIN_FILE" --gin.MODEL_DIR="'$RUN_DIR'" \
  2> "$RUN_DIR/train.log"
rm -rf "$EXPORT_DIR"
"$PYTHON" launch/export_params.py --checkpoint="$RUN_DIR" --output="$EXPORT_DIR" \
  2>> "$RUN_DIR/train.log"
