"""benchmarks/step_time.py: its batch search, MFU peaks and T5 1.1 configurations, and one
bfloat16 run of the tiny configuration through `main` with the batch searched (on CPU, up to
--max_batch_size)."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import pathlib
import re

import jax
import pytest

from gkd_t5x import costs

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location('step_time', ROOT / 'benchmarks' / 'step_time.py')
step_time = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(step_time)

# Parameter counts of the public T5 1.1 checkpoints (77M, 248M and 2.85B in the paper's words).
T5_1_1_PARAMS = {'small': 76_961_152, 'base': 247_577_856, 'xl': 2_849_757_184}
# Maximum input and output lengths of the paper's runs (Tables A.1, A.2).
PAPER_LENGTHS = {'xsum': (1024, 64), 'gsm8k': (512, 320)}


def test_largest_fitting_batch_stops_at_the_memory_limit():
  tried = []

  def step_bytes(batch_size):
    tried.append(batch_size)
    return 100 + 10 * batch_size

  assert step_time.largest_fitting_batch(step_bytes, 200, None) == (
      8,
      {1: 110, 2: 120, 4: 140, 8: 180, 16: 260},
  )
  assert tried == [1, 2, 4, 8, 16]
  assert step_time.largest_fitting_batch(step_bytes, 180, None)[0] == 8  # the limit included
  assert step_time.largest_fitting_batch(step_bytes, 200, 4)[0] == 4


def test_largest_fitting_batch_without_a_limit_stops_at_the_cap():
  assert step_time.largest_fitting_batch(lambda b: b, None, 6) == (4, {1: 1, 2: 2, 4: 4})
  with pytest.raises(ValueError, match='memory limit or a maximum batch size'):
    step_time.largest_fitting_batch(lambda b: b, None, None)
  with pytest.raises(ValueError, match='A batch of 1 needs 110 bytes'):
    step_time.largest_fitting_batch(lambda b: 100 + 10 * b, 100, None)


def test_peak_flops_comes_from_the_flag_or_the_device_table():
  assert step_time.peak_flops('cpu', 'float32', 2.5) == (2.5e12, '--peak_tflops')
  assert step_time.peak_flops('NVIDIA H200', 'bfloat16', None)[0] == pytest.approx(989.4e12)
  # float32 dots run as TF32 on NVIDIA GPUs, as bfloat16 passes on TPUs.
  assert step_time.peak_flops('NVIDIA H200', 'float32', None)[0] == pytest.approx(494.7e12)
  assert step_time.peak_flops('TPU v4', 'float32', None)[0] == pytest.approx(275e12)
  peak, note = step_time.peak_flops('cpu', 'bfloat16', None)
  assert peak is None and '--peak_tflops' in note


@pytest.mark.parametrize('name', ['small', 'base', 'xl'])
def test_t5_1_1_sizes_are_the_gin_files(name):
  text = (ROOT / 'gin' / 'models' / f't5_1_1_{name}.gin').read_text()
  gin = {key: int(value) for key, value in re.findall(r'^  (\w+) = (\d+)', text, re.MULTILINE)}
  size = getattr(step_time, f'T5_1_1_{name.upper()}')
  assert gin['num_encoder_layers'] == gin['num_decoder_layers'] == size.num_layers
  for field in ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim'):
    assert gin[field] == getattr(size, field), field
  assert gin['vocab_size'] == step_time.T5_VOCAB_SIZE
  assert "dtype = 'bfloat16'" in text


def test_accelerator_configs_have_the_t5_1_1_sizes_and_their_flops():
  """Their params counted from `jax.eval_shape` (an XL teacher is never allocated)."""
  for name, bench in step_time.ACCELERATOR_BENCHES.items():
    _, student, _, task = name.split('_')
    model = step_time.make_model(bench, 1.0)
    # A batch of 1 stands for the searched one (None): the params do not depend on it.
    at_batch_1 = dataclasses.replace(bench, batch_size=1)
    variables = jax.eval_shape(step_time.variables_fn(model, at_batch_1))
    assert step_time.count_params(variables['params']) == T5_1_1_PARAMS[student], name
    assert step_time.count_params(variables['teacher']) == T5_1_1_PARAMS['xl'], name
    assert (bench.input_length, bench.target_length) == PAPER_LENGTHS[task], name
    assert bench.dtype == 'bfloat16' and bench.batch_size is None
    lengths = (32, bench.input_length, bench.target_length)
    flops = costs.step_flops(
        costs.matmul_flops(model.module.config, *lengths),
        costs.matmul_flops(model.teacher_module.config, *lengths),
    )
    assert flops['step_lambda1'] == flops['step_lambda0'] + flops['sample'] > 0


def test_main_runs_tiny_in_bfloat16_with_the_batch_searched():
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    step_time.main(
        ['--config', 'tiny', '--steps', '1', '--warmup', '0', '--dtype', 'bfloat16']
        + ['--batch_size', 'max', '--max_batch_size', '1']
    )
  figures = json.loads(stdout.getvalue())
  assert figures['config'] == 'tiny' and figures['dtype'] == 'bfloat16'
  assert figures['divergence_chunk_length'] is None
  assert figures['shapes']['batch'] == 1
  # CPU reports no memory limit: the cap ends the search, and the line says so.
  assert figures['device_memory_bytes'] is None
  assert figures['batch_search'] == {
      'memory_limit_bytes': None,
      'max_batch_size': 1,
      'peak_memory_bytes': {'1': figures['peak_memory_bytes']['lambda1']},
      'limited_by': 'max_batch_size',
  }
  for tag in ('lambda1', 'lambda0'):
    parts = figures['memory_analysis_bytes'][tag]
    assert (
        figures['peak_memory_bytes'][tag]
        == parts['argument'] + parts['output'] + parts['temp'] - parts['alias']
        > 0
    )
    # The step returns the student's gradients, not the teacher's params it was given.
    assert parts['output'] < 4 * figures['params_teacher'] < parts['argument']
  assert figures['tokens_sampled_per_s'] == pytest.approx(16 / figures['sample_s'])
  assert figures['peak_tflops'] is None and figures['mfu'] is None
  assert '--peak_tflops' in figures['mfu_note']
  assert figures['flops_jaxpr']['lambda1'] == figures['flops_analytic']['step_lambda1']
