"""The GKD model under real T5X: `python -m t5x.train`, `t5x.eval` and `t5x.infer`.

The runs use the project's gin files unchanged (gin/runs/t5x_*.gin and an experiment of
gin/experiments/arithmetic/) with the test-sized overrides of tests/testdata/tiny_arithmetic.gin:

  1. T5X trains the teacher (the teacher experiment, SFT) and writes an orbax checkpoint.
  2. Its params are rewritten by T5X's legacy `Checkpointer` in the msgpack + tensorstore
     format of the public T5 1.1 / FLAN-T5 checkpoints.
  3. T5X runs mixed GKD (lambda and the divergence swept on the command line) on 4 simulated
     devices with 2-way model parallelism, the teacher restored from that checkpoint.
  4. The run resumes from its own checkpoint; `t5x.eval` and `t5x.infer` read its checkpoint.

Skipped where t5x is not installed (it is not on PyPI; see the README).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import runs
import tiny

pytest.importorskip('t5x.train')

import flax
import jax
import orbax.checkpoint as ocp
from t5x import checkpoints as t5x_checkpoints
from t5x import partitioning
from t5x import train_state as t5x_train_state

from gkd_t5x import checkpoints
from gkd_t5x import event_files

EXPERIMENTS = runs.ENCODER_DECODER
TASK = 'arithmetic_sum3_2digit'
# tiny_arithmetic.gin trains 6 steps and checkpoints every 3; T5X needs the eval period to be a
# multiple of the checkpoint period.
COMMON = ('EVAL_PERIOD=6',)


def state_tree(step_dir):
  """A T5X orbax checkpoint's state as NumPy arrays (it may come from more devices)."""
  path = os.path.join(step_dir, 'state')
  metadata = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata
  )
  return ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(restore_args=restore_args)
  )


@pytest.fixture(scope='module')
def t5x_teacher_run(tmp_path_factory):
  """A teacher trained by T5X: its run directory of orbax checkpoints."""
  run_dir = tmp_path_factory.mktemp('t5x_teacher')
  EXPERIMENTS.run_t5x('train', 't5x_finetune', 'teacher', f'MODEL_DIR="{run_dir}"', *COMMON)
  return run_dir


@pytest.fixture(scope='module')
def teacher_params(tmp_path_factory, t5x_teacher_run):
  """The T5X teacher's params rewritten by T5X's legacy `Checkpointer` in the msgpack +
  tensorstore format; returns (params, legacy checkpoint directory)."""
  params = state_tree(t5x_teacher_run / 'checkpoint_6')['target']
  legacy_dir = tmp_path_factory.mktemp('legacy_teacher')
  axes = jax.tree_util.tree_map(
      lambda x: flax.linen.partitioning.AxisMetadata(names=(None,) * np.ndim(x)), params
  )
  state = t5x_train_state.InferenceState.create(
      flax.core.freeze({'params': params, 'params_axes': axes})
  )
  t5x_checkpoints.Checkpointer(
      state, partitioning.PjitPartitioner(num_partitions=1), str(legacy_dir)
  ).save(state)
  assert (legacy_dir / 'checkpoint_0' / 'checkpoint').is_file()
  assert not (legacy_dir / 'checkpoint_0' / 'state').exists()
  return params, legacy_dir


def test_both_t5x_formats_restore_the_same_params(t5x_teacher_run, teacher_params):
  params, legacy_dir = teacher_params
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), params
  )
  for path in (t5x_teacher_run, legacy_dir):  # a model directory: its latest step
    restored = checkpoints.restore_params(str(path), abstract, setting='TEACHER_CHECKPOINT_PATH')
    runs.assert_trees_equal(restored, params)


def gkd_bindings(model_dir, teacher_dir, *extra):
  return (
      f'MODEL_DIR="{model_dir}"',
      f'TEACHER_CHECKPOINT_PATH="{teacher_dir}"',
      'LMBDA=0.5',
      'DIVERGENCE="jsd"',
      'BETA=0.9',
      'NUM_PARTITIONS=None',
      'MODEL_PARALLEL_SUBMESH=(1, 2)',
      *COMMON,
      *extra,
  )


@pytest.fixture(scope='module')
def gkd_run(tmp_path_factory, teacher_params):
  _, legacy_dir = teacher_params
  model_dir = tmp_path_factory.mktemp('t5x_gkd')
  EXPERIMENTS.run_t5x(
      'train', 't5x_finetune', 'gkd', *gkd_bindings(model_dir, legacy_dir), devices=4
  )
  return model_dir


def test_gkd_trains_under_t5x_with_model_parallelism(gkd_run):
  scalars = event_files.read_scalars(str(gkd_run / 'train'))
  losses = [value for _, value in scalars['loss']]
  assert [step for step, _ in scalars['loss']] == list(range(1, 7))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  # The command line's sweep bindings reached the objective.
  assert {value for _, value in scalars['lmbda']} == {0.5}
  assert {value for _, value in scalars['on_policy_fraction']} <= {0.0, 1.0}
  # T5X's train_eval (eval_fn) and seqio infer_eval (predict_batch_with_aux) ran.
  train_eval = event_files.read_scalars(str(gkd_run / 'training_eval' / TASK))
  assert [step for step, _ in train_eval['loss']] == [6]
  metrics = [
      json.loads(line) for line in open(gkd_run / 'inference_eval' / f'{TASK}-metrics.jsonl')
  ]
  assert [m['step'] for m in metrics] == [6] and 0.0 <= metrics[0]['accuracy'] <= 100.0


def test_teacher_is_sharded_like_the_student_and_never_updated(gkd_run, teacher_params):
  params, _ = teacher_params
  step_dir = gkd_run / 'checkpoint_6'
  state = state_tree(step_dir)
  runs.assert_trees_equal(state['flax_mutables']['teacher'], params)
  # The optimizer holds the student's params only.
  assert not any('teacher' in key for key in tiny.flat(state['state']))
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / 'state').item_metadata.tree
  kernel = ['decoder', 'layers_0', 'mlp', 'wi_0', 'kernel']
  for tree in (metadata['flax_mutables']['teacher'], metadata['target']):
    for name in kernel:
      tree = tree[name]
    assert list(tree.sharding.shape) == [2, 2]
    assert tuple(tree.sharding.partition_spec) == (None, 'model')


def test_gkd_run_resumes_with_the_teacher_of_its_checkpoint(gkd_run, teacher_params):
  params, legacy_dir = teacher_params
  EXPERIMENTS.run_t5x(
      'train',
      't5x_finetune',
      'gkd',
      *gkd_bindings(gkd_run, legacy_dir, 'TRAIN_STEPS=9', 'EVAL_PERIOD=3'),
      devices=4,
  )
  steps = [step for step, _ in event_files.read_scalars(str(gkd_run / 'train'))['loss']]
  assert steps == list(range(1, 10))
  state = state_tree(gkd_run / 'checkpoint_9')
  runs.assert_trees_equal(state['flax_mutables']['teacher'], params)
  assert int(state['state']['step']) == 9


def test_t5x_eval_and_infer_read_the_gkd_checkpoint(gkd_run, tmp_path):
  checkpoint = f'CHECKPOINT_PATH="{gkd_run / "checkpoint_6"}"'
  EXPERIMENTS.run_t5x(
      'eval', 't5x_eval', 'gkd', checkpoint, f'EVAL_OUTPUT_DIR="{tmp_path / "eval"}"'
  )
  metrics = [
      json.loads(line)
      for line in open(tmp_path / 'eval' / 'inference_eval' / f'{TASK}-metrics.jsonl')
  ]
  assert metrics[0]['step'] == 6 and 'accuracy' in metrics[0]
  EXPERIMENTS.run_t5x(
      'infer',
      't5x_infer',
      'gkd',
      checkpoint,
      f'INFER_OUTPUT_DIR="{tmp_path / "score"}"',
      'INFER_MODE="score"',
  )
  scores = [
      json.loads(line)['score']
      for line in open(tmp_path / 'score' / f'{TASK}-score.jsonl-00000-of-00001')
  ]
  assert len(scores) == 1000 and all(np.isfinite(scores)) and all(s < 0 for s in scores)


def test_sigterm_makes_t5x_save_its_emergency_checkpoint_and_the_rerun_resumes(tmp_path):
  """gin/runs/t5x_finetune.gin's `PreemptibleTrainer`: after SIGTERM, the chunk of LOG_PERIOD
  (here 1) steps in progress ends, T5X saves that step and exits; the rerun goes on from it."""
  bindings = (f'MODEL_DIR="{tmp_path}"', 'CHECKPOINT_PERIOD=300', 'EVAL_PERIOD=300')
  log = tmp_path / 'stderr.txt'
  with open(log, 'w') as stderr:
    process = subprocess.Popen(
        EXPERIMENTS.argv('t5x.train', 't5x_finetune', 'teacher', 'TRAIN_STEPS=300', *bindings),
        cwd=runs.ROOT,
        env=runs.environment(),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    deadline = time.monotonic() + 600
    while 'BEGIN Train loop' not in log.read_text():
      assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
      time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
  text = log.read_text()
  assert process.returncode != 0 and 'Saving emergency checkpoint done.' in text, text[-3000:]
  saved = int(re.search(r'Preempted \(SIGTERM\): T5X saves step (\d+)', text).group(1))
  assert 0 < saved < 300 and (tmp_path / f'checkpoint_{saved}').is_dir()
  EXPERIMENTS.run_t5x('train', 't5x_finetune', 'teacher', f'TRAIN_STEPS={saved + 1}', *bindings)
  steps = [step for step, _ in event_files.read_scalars(str(tmp_path / 'train'))['loss']]
  assert steps == list(range(1, saved + 2))  # resumed at `saved`, not from the start


def test_two_teachers_under_t5x_each_restored_from_its_checkpoint_and_reported(tmp_path):
  """gin/runs/t5x_teachers.gin with the shipped sum3 and chain5 teachers (their own sizes: no
  tiny overrides) and a 2-step run: each teacher's params in T5X's checkpoint are its own
  checkpoint's, and the train metrics come per teacher."""
  runs.run(
      [
          sys.executable,
          '-m',
          't5x.train',
          '--gin_file=gin/runs/t5x_finetune.gin',
          '--gin_file=gin/experiments/arithmetic/gkd.gin',
          '--gin_file=gin/experiments/arithmetic/mixture.gin',
          '--gin_file=gin/experiments/arithmetic/two_teachers.gin',
          '--gin_file=gin/runs/t5x_teachers.gin',
          f'--gin.MODEL_DIR="{tmp_path}"',
          *[
              f'--gin.{binding}'
              for binding in (
                  'TRAIN_STEPS=2',
                  'BATCH_SIZE=8',
                  'EVAL_BATCH_SIZE=8',
                  'EVAL_PERIOD=2',
                  'CHECKPOINT_PERIOD=2',
                  'LOG_PERIOD=1',
                  'EVAL_NUM_EXAMPLES=8',
                  'INITIAL_CHECKPOINT_PATH=None',
              )
          ],
      ],
      timeout=900,
  )
  teachers = state_tree(tmp_path / 'checkpoint_2')['flax_mutables']['teacher']
  for name, task in (('sum3', 'arithmetic_sum3_2digit'), ('chain5', 'arithmetic_chain5')):
    shipped = runs.ROOT / 'launch' / 'checkpoints' / f'{task}_teacher' / 'checkpoint_4000'
    runs.assert_trees_equal(teachers[name], state_tree(shipped)['target'])
  scalars = event_files.read_scalars(str(tmp_path / 'train'))
  for metric in ('divergence', 'token_agreement', 'teacher_entropy', 'student_entropy'):
    assert {f'{metric}/sum3', f'{metric}/chain5'} <= set(scalars), metric
