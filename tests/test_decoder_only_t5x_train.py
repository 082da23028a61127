"""The decoder-only GKD model under real T5X: `python -m t5x.train` and `t5x.infer`.

The runs use the project's gin files unchanged (gin/runs/t5x_*.gin and the decoder-only
experiments of gin/experiments/arithmetic/) with the test-sized nets of
tests/testdata/tiny_arithmetic_decoder_only.gin:

  1. T5X trains the decoder-only teacher (SFT) and writes an orbax checkpoint.
  2. T5X runs on-policy GKD (lambda = 1, JSD(0.9)) on 2 simulated devices with 2-way model
     parallelism, the teacher restored from that run's directory, with T5X's train_eval and
     seqio infer_eval.
  3. `t5x.infer` scores the targets with the trained student (`score_batch`).

Skipped where t5x is not installed (it is not on PyPI; see the README). The decoder-only model
is this project's own network: T5X's decoder_only example is not needed.
"""

import json

import numpy as np
import pytest
import runs

pytest.importorskip('t5x.train')

import orbax.checkpoint as ocp
import test_t5x_train as t5x_helpers

from gkd_t5x import event_files

TASK = t5x_helpers.TASK
EXPERIMENTS = runs.DECODER_ONLY


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('t5x_decoder_only_teacher')
  EXPERIMENTS.run_t5x(
      'train', 't5x_finetune', 'teacher', f'MODEL_DIR="{run_dir}"', *t5x_helpers.COMMON
  )
  return run_dir


@pytest.fixture(scope='module')
def gkd_run(tmp_path_factory, teacher_run):
  model_dir = tmp_path_factory.mktemp('t5x_decoder_only_gkd')
  EXPERIMENTS.run_t5x(
      'train',
      't5x_finetune',
      'gkd',
      f'MODEL_DIR="{model_dir}"',
      f'TEACHER_CHECKPOINT_PATH="{teacher_run}"',
      'LMBDA=1.0',
      'DIVERGENCE="jsd"',
      'BETA=0.9',
      'NUM_PARTITIONS=None',
      'MODEL_PARALLEL_SUBMESH=(1, 2)',
      *t5x_helpers.COMMON,
      devices=2,
  )
  return model_dir


def test_on_policy_gkd_trains_under_t5x_with_model_parallelism(gkd_run):
  scalars = event_files.read_scalars(str(gkd_run / 'train'))
  assert [step for step, _ in scalars['loss']] == list(range(1, 7))
  assert np.all(np.isfinite([value for _, value in scalars['loss']]))
  assert {value for _, value in scalars['lmbda']} == {1.0}
  assert {value for _, value in scalars['on_policy_fraction']} == {1.0}
  assert all(1 <= value <= 32 for _, value in scalars['sample_length'])
  # T5X's train_eval (eval_fn) and seqio infer_eval (predict_batch_with_aux) ran.
  train_eval = event_files.read_scalars(str(gkd_run / 'training_eval' / TASK))
  assert [step for step, _ in train_eval['loss']] == [6]
  metrics = [
      json.loads(line) for line in open(gkd_run / 'inference_eval' / f'{TASK}-metrics.jsonl')
  ]
  assert [m['step'] for m in metrics] == [6] and 0.0 <= metrics[0]['accuracy'] <= 100.0


def test_teacher_comes_from_its_run_and_is_sharded_like_the_student(gkd_run, teacher_run):
  state = t5x_helpers.state_tree(gkd_run / 'checkpoint_6')
  teacher = t5x_helpers.state_tree(teacher_run / 'checkpoint_6')['target']
  runs.assert_trees_equal(state['flax_mutables']['teacher'], teacher)
  assert 'decoder' in teacher and 'encoder' not in teacher
  metadata = ocp.PyTreeCheckpointer().metadata(gkd_run / 'checkpoint_6' / 'state')
  tree = metadata.item_metadata.tree
  for part in (tree['flax_mutables']['teacher'], tree['target']):
    kernel = part['decoder']['layers_0']['mlp']['wi_0']['kernel']
    assert tuple(kernel.sharding.partition_spec) == (None, 'model')


def test_t5x_infer_scores_the_targets_with_the_student(gkd_run, tmp_path):
  EXPERIMENTS.run_t5x(
      'infer',
      't5x_infer',
      'gkd',
      f'CHECKPOINT_PATH="{gkd_run / "checkpoint_6"}"',
      f'INFER_OUTPUT_DIR="{tmp_path}"',
      'INFER_MODE="score"',
  )
  scores = [
      json.loads(line)['score'] for line in open(tmp_path / f'{TASK}-score.jsonl-00000-of-00001')
  ]
  assert len(scores) == 1000 and all(np.isfinite(scores)) and all(s < 0 for s in scores)
