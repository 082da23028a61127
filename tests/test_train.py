"""The standalone trainer end to end: `python -m gkd_t5x.train` on the offline arithmetic task.

Each run is a real subprocess with the project's gin files (gin/runs/train.gin and an
experiment of gin/experiments/arithmetic/) and the test-sized overrides of
tests/testdata/tiny_arithmetic.gin. Results are read back from what a user would read: the
TensorBoard event files, the eval JSON lines and the orbax checkpoints.
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import runs

from gkd_t5x import event_files

EXPERIMENTS = runs.ENCODER_DECODER
teacher_dir = EXPERIMENTS.trained('teacher')
sft_dir = EXPERIMENTS.trained('student_sft')


def gkd_bindings(teacher_dir, sft_dir, *extra):
  return runs.distillation_bindings(
      teacher_dir,
      sft_dir,
      'LMBDA=0.5',
      'DIVERGENCE="jsd"',
      'BETA=0.5',
      'train.train.diagnostics_period=4',
      *extra,
  )


@pytest.fixture(scope='module')
def gkd_run(tmp_path_factory, teacher_dir, sft_dir):
  """A 12-step mixed GKD run (lambda 0.5, JSD(0.5)), evaluated every 4 steps, its dynamics
  measured every 4 steps (the other tests that reuse its bindings check them too: resumed,
  and in two processes of 4 devices); its console output in stdout.txt."""
  model_dir = tmp_path_factory.mktemp('gkd')
  bindings = gkd_bindings(
      teacher_dir, sft_dir, 'TRAIN_STEPS=12', 'CHECKPOINT_PERIOD=4', 'EVAL_PERIOD=4'
  )
  result = EXPERIMENTS.train(model_dir, 'gkd', *bindings)
  (model_dir / 'stdout.txt').write_text(result.stdout)
  return model_dir, bindings


def test_gkd_run_writes_metrics_checkpoints_and_predictions(gkd_run):
  model_dir, _ = gkd_run
  scalars = runs.train_scalars(model_dir)
  assert [step for step, _ in scalars['loss']] == list(range(1, 13))
  assert all(np.isfinite(value) for _, value in scalars['loss'])
  on_policy = [value for _, value in scalars['on_policy_fraction']]
  assert set(on_policy) <= {0.0, 1.0} and 0 < sum(on_policy) < 12  # a coin per step
  assert all(value == 0.5 for _, value in scalars['lmbda'])
  # Every step's 8 examples read, none too long, empty or not UTF-8 (example_checks).
  assert [value for _, value in scalars['data/examples']] == [8.0] * 12
  for name in ('too_long', 'empty_target', 'invalid_utf8', 'skipped'):
    assert [value for _, value in scalars[f'data/{name}']] == [0.0] * 12, name
  eval_scalars = event_files.read_scalars(os.path.join(model_dir, 'eval'))
  accuracy = eval_scalars['inference/arithmetic_sum3_2digit/accuracy']
  assert [step for step, _ in accuracy] == [4, 8, 12]
  assert all(0.0 <= value <= 100.0 for _, value in accuracy)
  assert 'validation/loss' in eval_scalars
  # The divergence on the student's own samples, beside the one on the targets.
  assert all(value > 0 for _, value in eval_scalars['validation/on_policy_divergence'])
  lines = [json.loads(line) for line in open(os.path.join(model_dir, 'eval_metrics.jsonl'))]
  assert [line['step'] for line in lines] == [4, 8, 12]
  predictions = [json.loads(line) for line in open(os.path.join(model_dir, 'predictions_12.jsonl'))]
  assert len(predictions) == 16
  assert predictions[0]['input'].endswith('=') and '#' in predictions[0]['target']
  # keep = 5 of checkpoints every 4 steps.
  assert sorted(p.name for p in model_dir.glob('checkpoint_*')) == [
      'checkpoint_12',
      'checkpoint_4',
      'checkpoint_8',
  ]


def test_gkd_run_measures_its_training_dynamics(gkd_run):
  """The diagnostics before steps 0, 4 and 8, the update's size at every step, the probe kept
  in MODEL_DIR; the console's evaluation line without the rates clean targets cannot have."""
  model_dir, _ = gkd_run
  scalars = runs.train_scalars(model_dir)
  for name in ('grad_noise_fraction', 'probe_divergence', 'weight_after_first_error'):
    assert [step for step, _ in scalars[name]] == [0, 4, 8], name
  assert all(value >= 0 for _, value in scalars['grad_noise_fraction'])
  assert all(value > 0 for _, value in scalars['probe_divergence'])
  for name in ('samples_with_error', 'weight_after_first_error', 'divergence_after_first_error'):
    assert all(0 <= value <= 1 for _, value in scalars[name]), name
  for name in ('update_norm', 'update_grad_ratio'):
    assert [step for step, _ in scalars[name]] == list(range(1, 13))
    assert all(value > 0 for _, value in scalars[name])
  assert (model_dir / 'diagnostics_probe.npz').exists()
  eval_lines = [
      line for line in (model_dir / 'stdout.txt').read_text().splitlines() if 'eval at' in line
  ]
  assert len(eval_lines) == 3 and all('step_accuracy' in line for line in eval_lines)
  assert not any('correction_rate' in line or 'reordered' in line for line in eval_lines)
  # TensorBoard keeps them.
  eval_scalars = event_files.read_scalars(os.path.join(model_dir, 'eval'))
  assert 'inference/arithmetic_sum3_2digit/correction_rate' in eval_scalars


def test_sft_params_start_the_distillation_run(sft_dir, teacher_dir, tmp_path):
  """One step at a negligible learning rate from INITIAL_CHECKPOINT_PATH keeps its params."""
  EXPERIMENTS.assert_distillation_starts_from(teacher_dir, sft_dir, tmp_path, sft_step=6)


def test_sigkill_then_resume_equals_uninterrupted_run(gkd_run, tmp_path):
  """Killed after its step-4 checkpoint (during the evaluation that follows it), restarted:
  the final params and every logged metric, before the kill and after the restart, equal the
  uninterrupted run's (the same seed gives the same run)."""
  model_dir, bindings = gkd_run
  process = subprocess.Popen(
      EXPERIMENTS.train_argv(tmp_path, 'gkd', *bindings),
      cwd=runs.ROOT,
      env=runs.environment(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not (tmp_path / 'checkpoint_4' / 'state').exists():
    assert process.poll() is None, 'the run ended before its first checkpoint'
    assert time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (tmp_path / 'checkpoint_12').exists(), 'the run finished before it was killed'
  EXPERIMENTS.train(tmp_path, 'gkd', *bindings)
  runs.assert_trees_equal(runs.final_params(tmp_path, 12), runs.final_params(model_dir, 12))
  resumed, reference = runs.train_scalars(tmp_path), runs.train_scalars(model_dir)
  for tag, values in reference.items():
    assert resumed[tag] == values, tag


def losses(model_dir):
  return np.array([value for _, value in runs.train_scalars(model_dir)['loss']])


def test_vocabulary_that_model_parallelism_cannot_split(tmp_path):
  result = subprocess.run(
      EXPERIMENTS.train_argv(
          tmp_path, 'student_sft', 'ARITHMETIC_VOCAB_SIZE=259', 'NUM_PARTITIONS=2'
      ),
      cwd=runs.ROOT,
      env=runs.environment(8),
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode != 0
  assert "is split 2 ways over mesh axes ('model',), which does not divide 259" in result.stderr


def test_two_processes_of_four_devices_give_the_loss_of_one(gkd_run, tmp_path):
  """Two local processes joined by jax.distributed, 4 CPU devices each, on a 4x2 mesh (data
  parallel 4, model parallel 2, so both axes span the processes' devices): the same losses as
  one device."""
  model_dir, bindings = gkd_run
  port = runs.free_port()
  processes = [
      subprocess.Popen(
          EXPERIMENTS.train_argv(
              tmp_path,
              'gkd',
              *bindings,
              'NUM_PARTITIONS=2',
              runs.NO_EVALUATION,
              extra_flags=runs.distributed_flags(port, index),
          ),
          cwd=runs.ROOT,
          env=runs.environment(4),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for index in range(2)
  ]
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-4000:]
  assert "mesh {'data': 4, 'model': 2}" in outputs[0][0]
  np.testing.assert_allclose(losses(tmp_path), losses(model_dir), rtol=1e-5, atol=1e-6)
