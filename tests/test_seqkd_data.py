"""SeqKD data: the shipped teacher decodes arithmetic problems, a task serves its outputs, and a
student trains on them while it is evaluated on the real task."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import seqio

from gkd_t5x import event_files
from gkd_t5x.tasks import seqkd

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEACHER = 'launch/checkpoints/arithmetic_sum3_2digit_teacher'
BASE_TASK = 'arithmetic_sum3_2digit'
NUM = 16


def run(module, *args, env=None):
  result = subprocess.run(
      [sys.executable, '-m', module, *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', **(env or {})),
      check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('seqkd')
  run(
      'gkd_t5x.seqkd_data',
      '--gin_file=gin/runs/seqkd_data.gin',
      '--gin_file=gin/experiments/arithmetic/teacher.gin',
      f'--gin.CHECKPOINT_PATH="{TEACHER}"',
      f'--gin.SEQKD_DATA_DIR="{directory}"',
      f'--gin.EVAL_NUM_EXAMPLES={NUM}',
      f'--gin.EVAL_BATCH_SIZE={NUM}',
  )
  return directory


def test_teacher_outputs_become_the_targets(data_dir):
  info = json.loads((data_dir / 'seqkd_task.json').read_text())
  assert info['base_task'] == BASE_TASK and info['split'] == 'train'
  assert info['num_examples'] == NUM
  lines = [json.loads(line) for line in open(data_dir / 'train.jsonl')]
  base = (
      seqio.get_mixture_or_task(BASE_TASK)
      .get_dataset({'inputs': 16, 'targets': 32}, split='train', shuffle=False)
      .take(NUM)
  )
  base = [
      (ex['inputs_pretokenized'].numpy().decode(), ex['targets_pretokenized'].numpy().decode())
      for ex in base
  ]
  assert [line['inputs'] for line in lines] == [inputs for inputs, _ in base]
  predictions = [
      json.loads(line)['prediction']
      for line in open(data_dir / 'teacher_decode' / 'predictions.jsonl')
  ]
  assert [line['targets'] for line in lines] == predictions
  # The shipped teacher solves 95% of the test problems: its outputs are mostly the truth.
  assert sum(line['targets'] == target for line, (_, target) in zip(lines, base)) >= NUM - 4


def test_registered_task_tokenizes_like_its_base(data_dir):
  task = seqkd.register_seqkd_task('test_arithmetic_seqkd', str(data_dir))
  base = seqio.get_mixture_or_task(BASE_TASK)
  assert task.splits == ('train',)
  assert task.output_features == base.output_features
  assert task.metric_fns == base.metric_fns
  lines = [json.loads(line) for line in open(data_dir / 'train.jsonl')]
  examples = list(
      task.get_dataset(
          {'inputs': 16, 'targets': 32}, split='train', shuffle=False
      ).as_numpy_iterator()
  )
  vocabulary = base.output_features['targets'].vocabulary
  for example, line in zip(examples, lines):
    np.testing.assert_array_equal(
        example['targets'], vocabulary.encode(line['targets']) + [vocabulary.eos_id]
    )
  assert seqkd.register_seqkd_task('test_arithmetic_seqkd', str(data_dir)) is task


def test_student_trains_on_teacher_outputs_and_is_evaluated_on_the_truth(data_dir, tmp_path):
  run(
      'gkd_t5x.train',
      '--gin_file=gin/runs/train.gin',
      '--gin_file=gin/experiments/arithmetic/student_sft.gin',
      '--gin_file=tests/testdata/tiny_arithmetic.gin',
      f'--gin.MODEL_DIR="{tmp_path}"',
      '--gin.MIXTURE_OR_TASK_NAME="arithmetic_seqkd"',
      f'--gin.EVAL_MIXTURE_OR_TASK_NAME="{BASE_TASK}"',
      '--gin.TRAIN_STEPS=2',
      env={seqkd.SEQKD_TASKS_ENV: f'arithmetic_seqkd={data_dir}'},
  )
  scalars = event_files.read_scalars(str(tmp_path / 'eval'))
  assert f'inference/{BASE_TASK}/accuracy' in scalars


def test_bad_seqkd_settings(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match='seqkd_task.json does not exist'):
    seqkd.register_seqkd_task('missing', str(tmp_path))
  monkeypatch.setenv(seqkd.SEQKD_TASKS_ENV, 'no_equals_sign')
  with pytest.raises(ValueError, match='GKD_SEQKD_TASKS must be comma-separated name=data_dir'):
    seqkd.register_from_environment()
