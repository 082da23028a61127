"""Real runs for the end-to-end tests: trainer, evaluator and T5X commands, and what a user reads
back from them (TensorBoard scalars, orbax checkpoints).

Each architecture's arithmetic experiments (gin/experiments/arithmetic/<prefix><name>.gin) run
with the test-sized overrides of one file of tests/testdata/; `Experiments` builds their
commands and module-scoped fixtures of trained runs, so the encoder-decoder and decoder-only
tests share one scaffolding.
"""

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny

from gkd_t5x import event_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Progress figures that differ between identical runs.
TIMING_TAGS = frozenset({'steps_per_sec', 'eta_seconds'})


# A run whose evaluation no test reads: none at the end either (an evaluation compiles the
# decoding loop, about a third of a tiny run's time).
NO_EVALUATION = 'train.train.eval_dataset_cfg=None'


def environment(devices: int = 1) -> Dict[str, str]:
  """This process's environment (its XLA flags kept) with `devices` simulated CPU devices."""
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS=flags)


def free_port() -> int:
  """A TCP port free on localhost now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def distributed_flags(port: int, process_id: int, processes: int = 2) -> tuple:
  """The trainer's flags of process `process_id` of a local jax.distributed job."""
  return (
      f'--coordinator_address=localhost:{port}',
      f'--num_processes={processes}',
      f'--process_id={process_id}',
  )


def run(argv: Sequence[str], *, devices: int = 1, timeout: int = 600):
  """Runs `argv` from the repository root; fails the test with its stderr's tail if it fails."""
  result = subprocess.run(
      argv,
      cwd=ROOT,
      env=environment(devices),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-6000:]
  return result


@dataclasses.dataclass(frozen=True)
class Experiments:
  """The arithmetic experiments of one architecture at test size.

  Attributes:
    prefix: the experiment files' prefix: '' (encoder-decoder) or 'decoder_only_'.
    tiny_gin: the test-size overrides, relative to the repository root.
  """

  prefix: str
  tiny_gin: str

  def argv(
      self,
      module: str,
      run_file: str,
      experiment: str,
      *bindings: str,
      extra_flags: Sequence[str] = (),
  ) -> List[str]:
    """`python -m <module>` with gin/runs/<run_file>.gin, the experiment, the test sizes and
    `--gin.<binding>` for each binding."""
    return [
        sys.executable,
        '-m',
        module,
        f'--gin_file=gin/runs/{run_file}.gin',
        f'--gin_file=gin/experiments/arithmetic/{self.prefix}{experiment}.gin',
        f'--gin_file={ROOT / self.tiny_gin}',
        *[f'--gin.{binding}' for binding in bindings],
        *extra_flags,
    ]

  def train_argv(
      self, model_dir, experiment: str, *bindings: str, extra_flags: Sequence[str] = ()
  ) -> List[str]:
    """The standalone trainer's command for `experiment`, writing to `model_dir`."""
    return self.argv(
        'gkd_t5x.train',
        'train',
        experiment,
        f'MODEL_DIR="{model_dir}"',
        *bindings,
        extra_flags=extra_flags,
    )

  def train(self, model_dir, experiment: str, *bindings: str, devices: int = 1):
    return run(self.train_argv(model_dir, experiment, *bindings), devices=devices)

  def run_t5x(self, script: str, run_file: str, experiment: str, *bindings: str, devices: int = 1):
    """`python -m t5x.<script>` (train, eval, infer) with gin/runs/<run_file>.gin."""
    argv = self.argv(f't5x.{script}', run_file, experiment, *bindings)
    return run(argv, devices=devices, timeout=900)

  def assert_distillation_starts_from(self, teacher_dir, sft_dir, model_dir, sft_step: int):
    """One supervised-KD step at a negligible learning rate from INITIAL_CHECKPOINT_PATH =
    `sft_dir` keeps the SFT checkpoint's params (to 1e-6); returns them by path."""
    bindings = distillation_bindings(
        teacher_dir, sft_dir, 'TRAIN_STEPS=1', 'LEARNING_RATE=1e-30', NO_EVALUATION
    )
    self.train(model_dir, 'supervised_kd', *bindings)
    sft = tiny.flat(final_params(sft_dir, sft_step))
    distilled = tiny.flat(final_params(model_dir, 1))
    assert sft.keys() == distilled.keys()
    for key in sft:
      np.testing.assert_allclose(sft[key], distilled[key], atol=1e-6, err_msg=key)
    return sft

  def trained(self, experiment: str):
    """A module-scoped fixture: the directory of a finished `experiment` run (not evaluated)."""

    @pytest.fixture(scope='module')
    def fixture(tmp_path_factory):
      model_dir = tmp_path_factory.mktemp(f'{self.prefix}{experiment}')
      self.train(model_dir, experiment, NO_EVALUATION)
      return model_dir

    return fixture


ENCODER_DECODER = Experiments('', 'tests/testdata/tiny_arithmetic.gin')
DECODER_ONLY = Experiments('decoder_only_', 'tests/testdata/tiny_arithmetic_decoder_only.gin')


def distillation_bindings(teacher_dir, student_dir, *extra: str) -> tuple:
  """Bindings of a distillation run from a trained teacher and SFT student."""
  return (
      f'TEACHER_CHECKPOINT_PATH="{teacher_dir}"',
      f'INITIAL_CHECKPOINT_PATH="{student_dir}"',
      *extra,
  )


def train_scalars(model_dir) -> Dict[str, list]:
  """The training scalars a run logged, less its timing figures."""
  scalars = event_files.read_scalars(os.path.join(model_dir, 'train'))
  return {tag: values for tag, values in scalars.items() if tag not in TIMING_TAGS}


def final_params(model_dir, step: int):
  """The student params of the standalone trainer's checkpoint at `step`."""
  state = ocp.PyTreeCheckpointer().restore(os.path.join(model_dir, f'checkpoint_{step}', 'state'))
  return state['target']


def assert_trees_equal(a, b) -> None:
  flat_a, flat_b = tiny.flat(a), tiny.flat(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
