#!/usr/bin/env bash
# Trains the arithmetic teacher that the quickstart ships in
# launch/checkpoints/arithmetic_sum3_2digit_teacher (gin/experiments/arithmetic/teacher.gin:
# 4000 steps, about 15 minutes on 2 CPU cores), then exports its params (no optimizer state).
#
#   bash launch/train_arithmetic_teacher.sh [RUN_DIR] [EXPORT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-/tmp/gkd_arithmetic_teacher}
EXPORT_DIR=${2:-launch/checkpoints/arithmetic_sum3_2digit_teacher}
mkdir -p "$RUN_DIR"
python3 -m gkd_t5x.train --gin_file=gin/runs/train.gin \
  --gin_file=gin/experiments/arithmetic/teacher.gin --gin.MODEL_DIR="'$RUN_DIR'" \
  2> "$RUN_DIR/train.log"
rm -rf "$EXPORT_DIR"
python3 launch/export_params.py --checkpoint="$RUN_DIR" --output="$EXPORT_DIR" \
  2>> "$RUN_DIR/train.log"
