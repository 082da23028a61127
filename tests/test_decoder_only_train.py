"""Decoder-only GKD end to end: `python -m gkd_t5x.train` and `python -m gkd_t5x.eval` on the
offline arithmetic task with the decoder-only experiments (gin/experiments/arithmetic/
decoder_only_*.gin) and the test-sized nets of tests/testdata/tiny_arithmetic_decoder_only.gin.

A decoder-only teacher and SFT student are trained, then on-policy GKD with JSD(0.9) (lambda =
1) starts from both; a run stopped after its first checkpoint and restarted ends where the
uninterrupted run does, and the evaluator reads the result. The scaffolding is tests/runs.py's.
"""

import json
import os

import numpy as np
import pytest
import runs

from gkd_t5x import event_files

EXPERIMENTS = runs.DECODER_ONLY
teacher_dir = EXPERIMENTS.trained('teacher')
sft_dir = EXPERIMENTS.trained('student_sft')


def gkd_bindings(teacher_dir, sft_dir, *extra):
  return runs.distillation_bindings(
      teacher_dir, sft_dir, 'LMBDA=1.0', 'DIVERGENCE="jsd"', 'BETA=0.9', 'EVAL_PERIOD=6', *extra
  )


@pytest.fixture(scope='module')
def gkd_run(tmp_path_factory, teacher_dir, sft_dir):
  """6 steps of on-policy GKD (lambda 1, JSD(0.9)), checkpoints every 3, evaluated at the end."""
  model_dir = tmp_path_factory.mktemp('decoder_only_gkd')
  EXPERIMENTS.train(model_dir, 'gkd', *gkd_bindings(teacher_dir, sft_dir))
  return model_dir


def test_on_policy_gkd_trains_and_evaluates(gkd_run):
  scalars = runs.train_scalars(gkd_run)
  assert [step for step, _ in scalars['loss']] == list(range(1, 7))
  assert all(np.isfinite(value) and value > 0 for _, value in scalars['loss'])
  assert {value for _, value in scalars['on_policy_fraction']} == {1.0}
  assert {value for _, value in scalars['lmbda']} == {1.0}
  # The student's continuations: at least one token, at most the 32 target positions.
  assert all(1 <= value <= 32 for _, value in scalars['sample_length'])
  eval_scalars = event_files.read_scalars(os.path.join(gkd_run, 'eval'))
  assert [step for step, _ in eval_scalars['validation/loss']] == [6]
  assert eval_scalars['validation/on_policy_divergence'][0][1] > 0
  assert 0 <= eval_scalars['inference/arithmetic_sum3_2digit/accuracy'][0][1] <= 100
  predictions = [json.loads(line) for line in open(gkd_run / 'predictions_6.jsonl')]
  assert len(predictions) == 16 and all(p['input'].endswith('=') for p in predictions)


def test_sft_student_starts_the_distillation(sft_dir, teacher_dir, tmp_path):
  """One step at a negligible learning rate from INITIAL_CHECKPOINT_PATH keeps its params."""
  sft = EXPERIMENTS.assert_distillation_starts_from(teacher_dir, sft_dir, tmp_path, sft_step=6)
  assert any('decoder' in key for key in sft)


def test_restarted_run_ends_where_the_uninterrupted_run_does(
    gkd_run, teacher_dir, sft_dir, tmp_path
):
  """Stopped at its step-3 checkpoint, then restarted with the same command: it resumes from
  the checkpoint (data position and step keys included) and ends with the same params and
  metrics."""
  bindings = gkd_bindings(teacher_dir, sft_dir, runs.NO_EVALUATION)
  EXPERIMENTS.train(tmp_path, 'gkd', *bindings, 'TRAIN_STEPS=3')
  resumed = EXPERIMENTS.train(tmp_path, 'gkd', *bindings)
  assert 'steps 3 -> 6' in resumed.stdout
  runs.assert_trees_equal(runs.final_params(tmp_path, 6), runs.final_params(gkd_run, 6))
  assert runs.train_scalars(tmp_path) == runs.train_scalars(gkd_run)


def test_evaluator_reads_the_decoder_only_checkpoint(gkd_run, teacher_dir, tmp_path):
  runs.run(
      EXPERIMENTS.argv(
          'gkd_t5x.eval',
          'eval',
          'gkd',
          f'CHECKPOINT_PATH="{gkd_run}"',
          f'EVAL_OUTPUT_DIR="{tmp_path}"',
          f'TEACHER_CHECKPOINT_PATH="{teacher_dir}"',
      )
  )
  summary = json.load(open(tmp_path / 'metrics.json'))
  assert summary['checkpoint'].endswith('checkpoint_6') and summary['split'] == 'test'
  metrics = summary['metrics']
  assert metrics['test/num_sequences'] == 16 and np.isfinite(metrics['test/loss'])
  assert metrics['test/on_policy_divergence'] > 0
  assert 0 <= metrics['inference/arithmetic_sum3_2digit/accuracy'] <= 100
  assert len(open(tmp_path / 'predictions.jsonl').readlines()) == 16
