"""Faults injected for real into the standalone trainer: preemption (SIGTERM), a kill during a
checkpoint write, non-finite values.

Each run is `python -m gkd_t5x.train` in a subprocess (SFT on the arithmetic task, tests/testdata
sizes, no evaluation); signals are sent at the moment a run prints a step or orbax has a step's
temporary directory on disk. An uninterrupted run of the same command is the reference.
"""

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import runs
import tiny

from gkd_t5x import faults
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import partitioning
from gkd_t5x import preemption
from gkd_t5x import trainer
from gkd_t5x import vocabularies

EXPERIMENTS = runs.ENCODER_DECODER
STEPS = 30
TMP_SUFFIX = '.orbax-checkpoint-tmp'
# No evaluation; checkpoints only where a test asks for them (and at the end).
BINDINGS = (f'TRAIN_STEPS={STEPS}', 'CHECKPOINT_PERIOD=100', runs.NO_EVALUATION)


def start(model_dir, *bindings, extra_flags=()):
  """The SFT run of BINDINGS (+ `bindings`) as a running subprocess: stdout piped, stderr to a
  file (a pipe nobody reads would fill and block the run)."""
  stderr = tempfile.TemporaryFile('w+')
  process = subprocess.Popen(
      EXPERIMENTS.train_argv(
          model_dir, 'student_sft', *BINDINGS, *bindings, extra_flags=extra_flags
      ),
      cwd=runs.ROOT,
      env=runs.environment(),
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
  )
  process.stderr_file = stderr
  return process


def finish(process, timeout=300):
  """Waits for the process; returns (its stdout's rest, its stderr)."""
  stdout, _ = process.communicate(timeout=timeout)
  process.stderr_file.seek(0)
  return stdout, process.stderr_file.read()


def wait_for_line(process, pattern):
  """Reads the process's stdout until a line matches `pattern`; returns the match."""
  for line in process.stdout:
    if match := re.search(pattern, line):
      return match
  raise AssertionError(f'the run ended without printing {pattern!r}: {finish(process)[1][-3000:]}')


def step_dirs(model_dir):
  return sorted(path.name for path in model_dir.iterdir() if path.name.startswith('checkpoint'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run."""
  model_dir = tmp_path_factory.mktemp('reference')
  EXPERIMENTS.train(model_dir, 'student_sft', *BINDINGS)
  return model_dir


def assert_resumed_run_equals(model_dir, reference, first_step):
  """The final params and every metric logged after `first_step` equal the reference run's."""
  runs.assert_trees_equal(runs.final_params(model_dir, STEPS), runs.final_params(reference, STEPS))
  resumed, expected = runs.train_scalars(model_dir), runs.train_scalars(reference)
  for tag, values in expected.items():
    assert [v for v in resumed[tag] if v[0] > first_step] == [
        v for v in values if v[0] > first_step
    ], tag


def test_sigterm_saves_the_next_step_exits_75_and_resumes_bit_identical(reference, tmp_path):
  process = start(tmp_path)
  wait_for_line(process, rf'^step 2/{STEPS}')
  process.send_signal(signal.SIGTERM)
  stdout, stderr = finish(process)
  assert process.returncode == preemption.EXIT_CODE, stderr[-3000:]
  lines = [line for line in stdout.splitlines() if line.startswith('Preempted')]
  assert len(lines) == 1, stdout
  saved = int(re.search(r'checkpoint of step (\d+)', lines[0]).group(1))
  assert 2 < saved < STEPS
  assert step_dirs(tmp_path) == [
      f'checkpoint_{saved}'
  ]  # not a periodic step: CHECKPOINT_PERIOD=100
  EXPERIMENTS.train(tmp_path, 'student_sft', *BINDINGS)
  assert_resumed_run_equals(tmp_path, reference, saved)


def sft_step():
  """A tiny SFT model's jitted train step, its step-0 state and a batch of 4 rows."""
  vocabulary = vocabularies.TokenIdVocabulary(vocab_size=32)
  gkd = objective.GKDConfig(divergence='cross_entropy', lmbda=0.0, fixed_data='targets')
  model = models.GKDModel(tiny.transformer(32), None, vocabulary, vocabulary, gkd=gkd)
  rng = np.random.RandomState(0)
  targets = rng.randint(2, 32, (4, 6))
  targets[:, -1] = 1
  batch = tiny.encdec_batch(rng.randint(2, 32, (4, 5)), targets)
  optimizer = optax.adam(1e-2)
  mesh = partitioning.make_mesh()
  shapes = {name: value.shape for name, value in batch.items()}
  layout = trainer.make_layout(
      model, optimizer, mesh, partitioning.standard_logical_axis_rules(), shapes
  )
  state = trainer.init_state(model, optimizer, layout, jax.random.PRNGKey(0))
  return trainer.make_train_step(model, optimizer, layout, jax.random.PRNGKey(1)), state, batch


def test_an_overflow_in_the_batch_skips_the_update_and_is_flagged():
  """A loss weight near float32's largest makes the weighted sums overflow (inf / inf)."""
  step, state, batch = sft_step()
  before = tiny.flat(jax.device_get(state))
  poisoned = dict(batch, decoder_loss_weights=batch['decoder_loss_weights'].at[0, 0].set(3e38))
  state, metrics = step(state, {}, poisoned)
  assert float(metrics['nonfinite'].total) == 1.0
  after = tiny.flat(jax.device_get(state))
  assert after.pop("['step']") == 1 and before.pop("['step']") == 0
  for key, value in before.items():  # params and optimizer state unchanged
    np.testing.assert_array_equal(after[key], value, err_msg=key)
  state, metrics = step(state, {}, batch)
  assert float(metrics['nonfinite'].total) == 0.0
  assert int(state['step']) == 2
  changed = tiny.flat(jax.device_get(state['target']))
  assert any(not np.array_equal(changed[k], before[f"['target']{k}"]) for k in changed)


def test_nonfinite_policy_rejects_unknown_modes():
  with pytest.raises(ValueError, match=r"mode must be one of \('stop', 'skip'\), got 'ignore'"):
    faults.NonFinitePolicy(mode='ignore')


def test_skipped_steps_are_counted_until_the_limit():
  """The host reads the step flags only at checks; the third skipped step is one too many."""
  steps = faults.NonFiniteSteps(faults.NonFinitePolicy(mode='skip', max_skipped_steps=2))
  for step, flag in [(1, 0.0), (2, 1.0), (3, 0.0), (4, 1.0)]:
    steps.add(step, jax.numpy.float32(flag))
  assert steps.check(last_checkpoint=None) == 2
  steps.add(5, jax.numpy.float32(0.0))
  assert steps.check(last_checkpoint=4) == 2
  steps.add(6, jax.numpy.float32(1.0))
  with pytest.raises(
      faults.NonFiniteError,
      match=(
          r'^3 non-finite steps were skipped, the last at step 6, more than '
          r'NonFinitePolicy.max_skipped_steps = 2; stopping, keeping the checkpoint of step 4.$'
      ),
  ):
    steps.check(last_checkpoint=4)


def write_nan_start(source_dir, step, destination):
  """A copy of `source_dir`'s step-`step` params with one NaN, as an initial checkpoint."""
  params = runs.final_params(source_dir, step)
  leaf_path, leaf = jax.tree_util.tree_flatten_with_path(params)[0][0]
  poisoned = np.array(leaf)
  poisoned.flat[0] = np.nan
  params = jax.tree_util.tree_map_with_path(
      lambda path, value: poisoned if path == leaf_path else value, params
  )
  ocp.PyTreeCheckpointer().save(destination / 'checkpoint_0' / 'state', {'target': params})
  return destination / 'checkpoint_0'


SKIP = ("faults.NonFinitePolicy.mode='skip'", 'faults.NonFinitePolicy.max_skipped_steps=2')


@pytest.mark.parametrize(
    'bindings, message, counted',
    [
        (
            ('CHECKPOINT_PERIOD=1',),
            (
                r'NonFiniteError: The training loss or gradients are not finite at step 1; '
                r"stopping \(NonFinitePolicy.mode = 'stop'\), keeping no checkpoint.$"
            ),
            [],
        ),
        (
            (*SKIP, 'CHECKPOINT_PERIOD=1'),
            r'The train state at step 1 holds a non-finite value; it is not saved',
            [1.0],
        ),
    ],
    ids=['stop', 'skip_but_never_save'],
)
def test_nan_params_stop_the_run_without_saving(reference, tmp_path, bindings, message, counted):
  """A NaN in the initial params: every step is non-finite; the policy decides when the run
  stops (with one line: no traceback), and nothing is saved."""
  start_dir = write_nan_start(reference, STEPS, tmp_path / 'start')
  process = start(tmp_path / 'run', f'INITIAL_CHECKPOINT_PATH="{start_dir}"', *bindings)
  _, stderr = finish(process)
  assert process.returncode == 1
  assert re.search(message, stderr.strip().splitlines()[-1]), stderr[-3000:]
  assert 'Traceback' not in stderr
  assert step_dirs(tmp_path / 'run') == []
  skipped = runs.train_scalars(tmp_path / 'run').get('nonfinite_steps_total', [])
  assert [value for _, value in skipped] == counted


def kill_during_a_checkpoint_write(model_dir, attempts=5):
  """SIGKILLs the run (checkpointing every step), once it has a complete step, the moment
  orbax has a later step's temporary directory on disk; returns that step, left partial."""
  for _ in range(attempts):
    process = start(model_dir, 'CHECKPOINT_PERIOD=1')
    partial = None
    while partial is None and process.poll() is None:
      names = step_dirs(model_dir)
      if any(TMP_SUFFIX not in name for name in names):  # a complete step to go back to
        partial = next((name for name in names if TMP_SUFFIX in name), None)
    process.kill()
    finish(process)
    if partial is not None and (model_dir / partial).exists():
      return int(re.match(r'checkpoint_(\d+)', partial).group(1))
  raise AssertionError(f'no kill landed during a checkpoint write in {attempts} attempts')


def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_step(reference, tmp_path):
  partial_step = kill_during_a_checkpoint_write(tmp_path)
  complete = [int(name.split('_')[1]) for name in step_dirs(tmp_path) if TMP_SUFFIX not in name]
  assert complete and max(complete) < partial_step
  process = start(tmp_path, 'CHECKPOINT_PERIOD=1')
  resumed_at = int(wait_for_line(process, r'steps (\d+) ->').group(1))
  _, stderr = finish(process)
  assert process.returncode == 0, stderr[-3000:]
  assert resumed_at == max(complete)
  # The partial step was written again, in full, and the partial directory is gone.
  assert not [name for name in step_dirs(tmp_path) if TMP_SUFFIX in name]
  assert (tmp_path / f'checkpoint_{STEPS}' / 'state').is_dir()
  assert_resumed_run_equals(tmp_path, reference, resumed_at)


def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
  """Two processes joined by jax.distributed; only process 1 gets SIGTERM. JAX's preemption
  sync manager spreads the notice: both save one agreed step and exit 75."""
  port = runs.free_port()
  processes = [
      start(tmp_path, extra_flags=runs.distributed_flags(port, index)) for index in range(2)
  ]
  wait_for_line(processes[0], rf'^step 2/{STEPS}')
  processes[1].send_signal(signal.SIGTERM)
  saved = set()
  for process in processes:
    stdout, stderr = finish(process)
    assert process.returncode == preemption.EXIT_CODE, stderr[-3000:]
    saved.update(int(step) for step in re.findall(r'^Preempted.* of step (\d+)', stdout, re.M))
  assert len(saved) == 1, saved
  assert step_dirs(tmp_path) == [f'checkpoint_{saved.pop()}']


def test_when_one_of_two_processes_dies_the_other_exits_in_bounded_time(tmp_path):
  """Process 1 is SIGKILLed mid-run; process 0 must not hang in the next collective."""
  port = runs.free_port()
  processes = [
      start(
          tmp_path,
          extra_flags=(*runs.distributed_flags(port, index), '--heartbeat_timeout_seconds=10'),
      )
      for index in range(2)
  ]
  wait_for_line(processes[0], rf'^step 2/{STEPS}')
  processes[1].kill()
  killed = time.monotonic()
  _, stderr = finish(processes[0], timeout=300)
  elapsed = time.monotonic() - killed
  finish(processes[1])
  assert processes[0].returncode != 0
  assert 'the JAX distributed service detected fatal errors' in stderr, stderr[-3000:]
  assert elapsed < 60, elapsed


def truncate_data_files(step_dir):
  """Cuts every array data file of an orbax step (its OCDBT databases' `d/` files, the
  process's and the merged one) to half its length."""
  for path in step_dir.glob('state/**/d/*'):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  return step_dir


@pytest.mark.parametrize(
    'experiments, bindings, damage, message',
    [
        (
            EXPERIMENTS,
            ('arithmetic_student/network.T5Config.emb_dim=16',),
            None,
            r"param \['decoder'\]\S* has shape \(8,?\S*\), the model expects \(16",
        ),
        (
            runs.DECODER_ONLY,
            (),
            None,
            r'param \[\S+ (is not in the checkpoint|has shape)',
        ),
        (EXPERIMENTS, (), truncate_data_files, r'could not restore params from .*checkpoint_30'),
    ],
    ids=['other_sizes', 'other_architecture', 'truncated'],
)
def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(
    reference, tmp_path, experiments, bindings, damage, message
):
  start_dir = reference / f'checkpoint_{STEPS}'
  if damage is not None:
    start_dir = damage(shutil.copytree(start_dir, tmp_path / start_dir.name))
  result = subprocess.run(
      experiments.train_argv(
          tmp_path / 'run', 'student_sft', f'INITIAL_CHECKPOINT_PATH="{start_dir}"', *bindings
      ),
      cwd=runs.ROOT,
      env=runs.environment(),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"CheckpointError: INITIAL_CHECKPOINT_PATH = '{start_dir}': "), last
  assert re.search(message, last), last
  assert 'Traceback' not in result.stderr


@pytest.fixture
def small_disk(tmp_path):
  """A 16 MiB tmpfs at tmp_path/disk (skips where mounting is not allowed)."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(disk)],
      capture_output=True,
      check=False,
  )
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs: {mounted.stderr.decode().strip()}')
  yield disk
  subprocess.run(['umount', '-l', str(disk)], check=False)


def fill(disk):
  """Writes zeros to `disk` until it is full."""
  with open(disk / 'filler', 'wb') as f:
    with contextlib.suppress(OSError):
      while True:
        f.write(b'\0' * (1 << 16))
        f.flush()


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(small_disk):
  """The disk fills after the step-5 checkpoint: a later write fails."""
  model_dir = small_disk / 'run'
  process = start(model_dir, 'CHECKPOINT_PERIOD=5', 'TRAIN_STEPS=500')
  while not (model_dir / 'checkpoint_5').is_dir():  # final: orbax renamed it
    assert process.poll() is None
  fill(small_disk)
  complete = [name for name in step_dirs(model_dir) if TMP_SUFFIX not in name]
  _, stderr = finish(process)
  assert process.returncode == 1
  # The trainer's line; orbax's writer threads may log their own errors after it.
  assert re.search(
      r'^No space left on device: a checkpoint or event file could not be written \(\w+\); '
      r'stopping. The checkpoints completed before are kept: free space and rerun to resume.$',
      stderr,
      re.M,
  ), stderr[-3000:]
  assert [name for name in step_dirs(model_dir) if TMP_SUFFIX not in name] == complete
  last = max(int(name.split('_')[1]) for name in complete)
  assert tiny.flat(runs.final_params(model_dir, last))
