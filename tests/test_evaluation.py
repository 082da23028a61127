"""`python -m gkd_t5x.eval` on a split that is not a multiple of the batch size: the padding
rows of the last batch count in no statistic."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEACHER = 'launch/checkpoints/arithmetic_sum3_2digit_teacher'
NUM_EXAMPLES = 20


def evaluate(output_dir, batch_size):
  command = [
      sys.executable,
      '-m',
      'gkd_t5x.eval',
      '--gin_file=gin/runs/eval.gin',
      '--gin_file=gin/experiments/arithmetic/teacher.gin',
      f'--gin.CHECKPOINT_PATH="{TEACHER}"',
      f'--gin.EVAL_OUTPUT_DIR="{output_dir}"',
      f'--gin.EVAL_NUM_EXAMPLES={NUM_EXAMPLES}',
      f'--gin.EVAL_BATCH_SIZE={batch_size}',
  ]
  result = subprocess.run(
      command,
      cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  with open(output_dir / 'metrics.json') as f:
    metrics = json.load(f)['metrics']
  with open(output_dir / 'predictions.jsonl') as f:
    records = [json.loads(line) for line in f]
  return metrics, records


@pytest.fixture(scope='module')
def unpadded(tmp_path_factory):
  """The 20 examples in one batch of 20: no padding row."""
  return evaluate(tmp_path_factory.mktemp('unpadded'), NUM_EXAMPLES)


@pytest.mark.parametrize('batch_size', [8, 200])
def test_padding_rows_count_in_no_statistic(unpadded, tmp_path, batch_size):
  metrics, records = evaluate(tmp_path, batch_size)
  want, want_records = unpadded
  assert metrics['test/num_sequences'] == NUM_EXAMPLES
  assert len(records) == NUM_EXAMPLES and records == want_records
  # Byte vocabulary: one token per byte of the target, and its EOS.
  target_length = np.mean([len(r['target'].encode('utf-8')) + 1 for r in records])
  np.testing.assert_allclose(metrics['test/sequence_length'], target_length, rtol=1e-6)
  assert metrics['test/eos_rate'] == 1.0
  assert metrics.keys() == want.keys()
  for name, value in want.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
