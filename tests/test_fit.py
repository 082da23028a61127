"""`gkd_t5x.fit` on the tiny arithmetic run: its steps compiled by libtpu for TPU slices.

Skipped only where libtpu (the `tpu-compile` extra, which CI installs) is missing.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gkd_t5x import costs
from gkd_t5x import fit
from gkd_t5x import topologies

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None, reason='libtpu (the tpu-compile extra)'
)
TINY = ['gin/experiments/arithmetic/gkd.gin', 'tests/testdata/tiny_arithmetic.gin']
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def spec():
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  yield fit.load_run(TINY, [])
  fit.gin.clear_config()


def _train(spec, topology, *, batch_size, num_partitions):
  _, chip, _ = topologies.parse(topology)
  return fit.check(
      spec,
      topologies.devices(topology),
      chip,
      batch_size=batch_size,
      num_partitions=num_partitions,
      with_eval=False,
  )


@pytest.fixture(scope='module')
def line(spec):
  """The command's JSON line for the tiny run on a v5e 2x2 slice, two-way model parallel."""
  return json.loads(json.dumps(fit.run(TINY, [], topology='v5e:2x2', num_partitions='2')))


def test_json_line_has_its_fields(line):
  assert line['fits'] and not line['refused']
  assert line['devices'] == 4 and line['mesh'] == {'data': 2, 'model': 2}
  assert set(line['memory_bytes']) == {'train', 'eval_loss', 'eval_predict'}
  for memory in line['memory_bytes'].values():
    assert (
        memory['peak'] == memory['argument'] + memory['output'] + memory['temp'] - memory['alias']
    )
  assert line['margin_bytes'] == line['hbm_bytes_per_device'] - max(
      memory['peak'] for memory in line['memory_bytes'].values()
  )
  assert line['flops']['xla_train'] > 0
  assert line['flops']['analytic']['step_lambda1'] > line['flops']['analytic']['step_lambda0']
  roofline = line['roofline']
  assert roofline['step_s'] == max(roofline['compute_s'], roofline['memory_s'])
  assert roofline['target_tokens_per_s'] == pytest.approx(8 * 32 / roofline['step_s'])
  assert set(line['compile_s']) == set(line['memory_bytes'])
  assert 'FITS' in fit.table(line)


def test_teacher_is_sharded_over_the_model_axis(line):
  teacher = line['teacher_bytes']
  # Layer norms and relative position biases are replicated: a little over half.
  assert teacher['total'] / 2 <= teacher['per_device'] < 0.55 * teacher['total']


def test_two_teachers_each_count_on_their_rows(line):
  """The tiny run with both arithmetic teachers (of the same tiny size), each scoring half of
  the mixture's rows: both teachers' params count, sharded like one, and their forward passes
  on half the batch each add up to one teacher's on all of it."""
  files = [
      TINY[0],
      'gin/experiments/arithmetic/mixture.gin',
      'gin/experiments/arithmetic/two_teachers.gin',
      TINY[1],
  ]
  run = fit.load_run(files, [])
  teachers, lengths = run.model.teachers, run.task_feature_lengths
  two = json.loads(json.dumps(fit.run(files, [], topology='v5e:2x2', num_partitions='2')))
  assert two['fits'] and two['mesh'] == line['mesh']
  assert two['teacher_bytes']['total'] == 2 * line['teacher_bytes']['total']
  assert two['teacher_bytes']['per_device'] == 2 * line['teacher_bytes']['per_device']
  assert two['hbm_bytes']['analytic']['teacher'] == 2 * line['hbm_bytes']['analytic']['teacher']
  config = teachers['sum3'].module.config
  assert teachers['chain5'].module.config == config
  whole = costs.matmul_flops(config, 8, lengths['inputs'], lengths['targets'])
  assert two['flops']['analytic']['teacher_forward'] == whole['encode'] + whole['decode']


def test_another_generation_compiles(spec, line):
  other = _train(spec, 'v4:2x2x1', batch_size=8, num_partitions=2)
  assert other['fits'] and other['mesh'] == {'data': 2, 'model': 2}
  assert other['hbm_bytes_per_device'] == 2 * line['hbm_bytes_per_device']  # 32 vs 16 GiB


def test_memory_grows_with_the_batch(spec, line):
  large = _train(spec, 'v5e:2x2', batch_size=2048, num_partitions=2)['memory_bytes']['train']
  small = line['memory_bytes']['train']  # batch 8
  assert large['argument'] > small['argument']  # the batch's tokens
  assert large['peak'] > 2 * small['peak']  # 24.2 MB against 9.0 MB when written


def test_a_batch_that_cannot_fit_is_refused(spec):
  report = _train(spec, 'v5e:2x2', batch_size=2**19, num_partitions=2)
  assert not report['fits']
  assert report['refused']['train'].startswith('libtpu: HLO temporaries need')
  assert report['memory_bytes']['train']['peak'] > report['hbm_bytes_per_device']
  assert 'DOES NOT FIT' in fit.table(
      dict(report, topology='v5e:2x2', num_slices=1, devices=4, device_kind='TPU v5 lite')
  )


def test_largest_batch_doubles_then_halves():
  assert fit.largest_batch(lambda b: b <= 48, start=8, quantum=2) == 32
  assert fit.largest_batch(lambda b: b <= 5, start=32, quantum=2) == 4
  assert fit.largest_batch(lambda b: False, start=32, quantum=2) is None
  assert fit.partition_choices(16) == [1, 2, 4, 8, 16]


def test_bad_topology_and_missing_libtpu_get_one_line(monkeypatch):
  result = subprocess.run(
      [sys.executable, '-m', 'gkd_t5x.fit', f'--gin_file={TINY[0]}', '--topology=v9:2x2'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert 'known: v3:2x2' in result.stderr and 'v5e:4x4' in result.stderr
  monkeypatch.setattr(topologies.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(RuntimeError, match=r'pip install -e "\.\[tpu-compile\]"'):
    topologies.devices('v5e:2x2')
