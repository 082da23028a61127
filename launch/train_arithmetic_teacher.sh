#!/usr/bin/env bash
# Trains the arithmetic teacher that the quickstart ships in
# launch/checkpoints/arithmetic_sum3_teacher (gin/experiments/arithmetic/teacher.gin: 8000
# steps, about 30 minutes on 2 CPU cores), then exports its params there.
#
#   bash launch/train_arithmetic_teacher.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=${1:-/tmp/gkd_arithmetic_teacher}
python3 -m gkd_t5x.train --gin_file=gin/runs/train.gin \
  --gin_file=gin/experiments/arithmetic/teacher.gin --gin.MODEL_DIR="'$WORK_DIR'" \
  2> "$WORK_DIR.log"
rm -rf launch/checkpoints/arithmetic_sum3_teacher
python3 launch/export_params.py --checkpoint="$WORK_DIR" \
  --output=launch/checkpoints/arithmetic_sum3_teacher 2>> "$WORK_DIR.log"
