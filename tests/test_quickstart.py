"""The README's first command, at a few steps: launch/quickstart.sh runs every stage with the
shipped teacher and prints the table of test accuracies."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quickstart(work_dir, **settings):
  """Runs launch/quickstart.sh into `work_dir` with this interpreter as PYTHON."""
  env = dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL='3', **settings)
  return subprocess.run(
      ['bash', 'launch/quickstart.sh', str(work_dir)],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )


def test_quickstart_runs_every_stage_and_prints_the_table(tmp_path):
  settings = dict(SFT_STEPS='4', DISTILL_STEPS='2', EVAL_EXAMPLES='16')
  result = quickstart(tmp_path, **settings)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = re.findall(r'^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| (\S+) \|$', result.stdout, re.M)
  assert [row[0] for row in rows] == ['teacher', 'student_sft', 'supervised_kd', 'gkd']
  for _, accuracy, sequence, _ in rows:
    assert 0.0 <= float(sequence) <= float(accuracy) <= 100.0
  assert 'launch/checkpoints/arithmetic_sum3_2digit_teacher/checkpoint_4000' in rows[0][3]
  for name in ('student_sft', 'supervised_kd', 'gkd'):
    assert (tmp_path / name / 'train').is_dir()
  # A second call finds every run and evaluation done and prints the same table.
  again = quickstart(tmp_path, **settings)
  assert again.returncode == 0 and again.stdout.count('done already') == 7
  assert re.findall(r'^\| .*\|$', again.stdout, re.M) == re.findall(
      r'^\| .*\|$', result.stdout, re.M
  )


def test_a_failing_stage_prints_its_command_log_and_last_lines(tmp_path):
  result = quickstart(tmp_path, SFT_STEPS='-1')
  assert result.returncode == 1
  log = tmp_path / 'logs' / 'student_sft.log'
  assert f'FAILED: {sys.executable} -m gkd_t5x.train' in result.stderr
  assert f'log: {log}; its last lines:' in result.stderr
  assert 'ValueError: TRAIN_STEPS must be >= 0, got -1.' in result.stderr
