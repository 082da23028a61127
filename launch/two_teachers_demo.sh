#!/usr/bin/env bash
# Two teachers in one run (issue 27) on the offline arithmetic mixture, against one teacher alone.
#
#   bash launch/two_teachers_demo.sh OUT_DIR
#
# 1. student_sft: the arithmetic student, SFT on the mixture arithmetic_sum3_2digit_chain5 (the
#    two tasks at equal rates; gin/experiments/arithmetic/mixture.gin), SFT_STEPS steps;
# 2. from it, DISTILL_STEPS steps of on-policy GKD (lambda = 1, forward KL) on the same mixture:
#      two_teachers   each task scored by its own teacher (two_teachers.gin)
#      sum3_teacher   every row scored by the sum3 teacher (TEACHER_CHECKPOINT_PATH)
#      chain5_teacher every row scored by the chain5 teacher
# Each run evaluates each task on 400 validation problems at its end. One seed (RANDOM_SEED).
# A run whose directory holds eval_metrics.jsonl is skipped.
set -euo pipefail
OUT=${1:?usage: two_teachers_demo.sh OUT_DIR}
SFT_STEPS=${SFT_STEPS:-1000}
DISTILL_STEPS=${DISTILL_STEPS:-300}
PYTHON=${PYTHON:-python}
G=gin/experiments/arithmetic
SUM3=launch/checkpoints/arithmetic_sum3_2digit_teacher
CHAIN5=launch/checkpoints/arithmetic_chain5_teacher
mkdir -p "$OUT"

train() {  # train RUN GIN_ARGS...
  local run=$1; shift
  if [[ -f "$OUT/$run/eval_metrics.jsonl" ]]; then return; fi
  "$PYTHON" -m gkd_t5x.train --gin_file=gin/runs/train.gin "$@" \
    --gin.MODEL_DIR="'$OUT/$run'" --gin.EVAL_NUM_EXAMPLES=400 > "$OUT/$run.log" 2>&1 \
    || { echo "FAILED: $run (log: $OUT/$run.log)"; tail -20 "$OUT/$run.log"; exit 1; }
}

train student_sft --gin_file=$G/student_sft.gin --gin_file=$G/mixture.gin \
  --gin.TRAIN_STEPS="$SFT_STEPS"
distill=(--gin_file=$G/gkd.gin --gin_file=$G/mixture.gin --gin.TRAIN_STEPS="$DISTILL_STEPS"
         --gin.INITIAL_CHECKPOINT_PATH="'$OUT/student_sft'")
train two_teachers "${distill[@]}" --gin_file=$G/two_teachers.gin
train sum3_teacher "${distill[@]}" --gin.TEACHER_CHECKPOINT_PATH="'$SUM3'"
train chain5_teacher "${distill[@]}" --gin.TEACHER_CHECKPOINT_PATH="'$CHAIN5'"

"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print('| run | sum3 accuracy (%) | chain5 accuracy (%) | sum3 divergence | chain5 divergence |')
print('| --- | --- | --- | --- | --- |')
for run in ('student_sft', 'two_teachers', 'sum3_teacher', 'chain5_teacher'):
  with open(f'{out}/{run}/eval_metrics.jsonl') as f:
    m = json.loads(f.readlines()[-1])['metrics']
  cells = [m[f'inference/arithmetic_{t}/accuracy'] for t in ('sum3_2digit', 'chain5')]
  cells += [m.get(f'validation/arithmetic_{t}/on_policy_divergence', float('nan'))
            for t in ('sum3_2digit', 'chain5')]
  print(f'| {run} | ' + ' | '.join(f'{c:.4g}' for c in cells) + ' |')
PY
