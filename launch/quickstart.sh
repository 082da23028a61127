#!/usr/bin/env bash
# The quickstart: a complete small GKD experiment on the offline arithmetic task, on CPU.
#
#   bash launch/quickstart.sh [WORK_DIR]          (default /tmp/gkd_quickstart)
#
# 1. the teacher: the checkpoint shipped in launch/checkpoints/arithmetic_sum3_2digit_teacher
#    (TRAIN_TEACHER=1 trains it anew with launch/train_arithmetic_teacher.sh, ~15 min);
# 2. the student, fine-tuned on the ground truth (SFT);
# 3. from the same SFT checkpoint: supervised KD (forward KL on the ground truth, lambda = 0)
#    and on-policy GKD (forward KL on the student's own samples, lambda = 1);
# 4. every model evaluated on the test split (greedy decoding, exact match of the final answer),
#    and a table of the results with the run directories.
# Completed runs and evaluations are skipped when the script runs again; logs go to
# WORK_DIR/logs; a failing stage prints its command, its log's path and the log's last lines.
# Environment variables: SFT_STEPS, DISTILL_STEPS (step counts), EVAL_EXAMPLES (evaluate on the
# first N validation / test problems; default all 1000), PYTHON (the interpreter of every
# stage; default python3, which must be the environment's).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=${1:-/tmp/gkd_quickstart}
SFT_STEPS=${SFT_STEPS:-1000}
DISTILL_STEPS=${DISTILL_STEPS:-500}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-None}
EXPERIMENTS=gin/experiments/arithmetic
export PYTHON=${PYTHON:-python3}
LOGS=$WORK_DIR/logs
mkdir -p "$LOGS"
start=$(date +%s)

TEACHER=launch/checkpoints/arithmetic_sum3_2digit_teacher
if [[ "${TRAIN_TEACHER:-0}" == 1 ]]; then
  TEACHER=$WORK_DIR/teacher
  [[ -d $TEACHER ]] || bash launch/train_arithmetic_teacher.sh "$WORK_DIR/teacher_run" "$TEACHER"
fi

# stage LOG COMMAND...: runs COMMAND with its stderr in LOG; if it fails, says what failed.
stage() {
  local log=$1
  shift
  if ! "$@" 2> "$log"; then
    echo "FAILED: $*" >&2
    echo "log: $log; its last lines:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

# train NAME EXPERIMENT STEPS [gin bindings...]: without the trainer's own evaluation on the
# validation split, since every model is evaluated on the test split below.
train() {
  local name=$1 experiment=$2 steps=$3
  shift 3
  if [[ -d $WORK_DIR/$name/checkpoint_$steps ]]; then
    echo "== $name: done already"
    return
  fi
  echo "== $name ($experiment, $steps steps)"
  stage "$LOGS/$name.log" "$PYTHON" -m gkd_t5x.train --gin_file=gin/runs/train.gin \
    --gin_file="$EXPERIMENTS/$experiment.gin" --gin.MODEL_DIR="'$WORK_DIR/$name'" \
    --gin.TRAIN_STEPS="$steps" --gin.train.train.eval_dataset_cfg=None "$@"
}

# evaluate NAME EXPERIMENT CHECKPOINT
evaluate() {
  local name=$1 experiment=$2 checkpoint=$3
  if [[ -f $WORK_DIR/test_eval/$name/metrics.json ]]; then
    echo "== test split: $name: done already"
    return
  fi
  echo "== test split: $name"
  stage "$LOGS/eval_$name.log" "$PYTHON" -m gkd_t5x.eval --gin_file=gin/runs/eval.gin \
    --gin_file="$EXPERIMENTS/$experiment.gin" --gin.CHECKPOINT_PATH="'$checkpoint'" \
    --gin.EVAL_OUTPUT_DIR="'$WORK_DIR/test_eval/$name'" --gin.EVAL_SPLIT="'test'" \
    --gin.EVAL_NUM_EXAMPLES="$EVAL_EXAMPLES" > /dev/null
}

train student_sft student_sft "$SFT_STEPS"
DISTILL=(--gin.INITIAL_CHECKPOINT_PATH="'$WORK_DIR/student_sft'"
         --gin.TEACHER_CHECKPOINT_PATH="'$TEACHER'")
train supervised_kd supervised_kd "$DISTILL_STEPS" "${DISTILL[@]}"
train gkd gkd "$DISTILL_STEPS" "${DISTILL[@]}"

evaluate teacher teacher "$TEACHER"
evaluate student_sft student_sft "$WORK_DIR/student_sft"
evaluate supervised_kd supervised_kd "$WORK_DIR/supervised_kd"
evaluate gkd gkd "$WORK_DIR/gkd"

"$PYTHON" launch/results_table.py "$WORK_DIR/test_eval" teacher student_sft supervised_kd gkd
echo "Quickstart wall time: $(( $(date +%s) - start )) s. Runs and logs: $WORK_DIR"
