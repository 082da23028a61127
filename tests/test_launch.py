"""The launch tooling of the paper's figures, without any training.

* every spec of launch/sweeps/ expands (launch/plan.py) into the runs, directories,
  bindings and commands it promises, and its gin files and bindings parse (in one
  subprocess) into the GKD method and decoding each point names;
* a bad spec stops with a message naming the field;
* local mode runs a stand-in interpreter's commands in order, writes DONE, skips finished
  runs and evaluations, and stops at the first failure; pod mode and launch/tpu_pod.py
  quote the commands so that the worker's shell gives back the same arguments;
* launch/figures.py turns SYNTHETIC results (metrics.json, the trainer's JSON and
  TensorBoard event files, T5X's JSON lines) into the CSV of means and standard deviations
  computed here by hand, and a PNG for every plot kind.
"""

import copy
import csv
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
import types

import gin_probe
import pytest
from spec_labels import DIVERGENCES
from spec_labels import check_divergence
from spec_labels import check_method

import gkd_t5x
from launch import figures
from launch import plan
from launch import results
from launch import runners
from launch import spec as spec_lib
from launch import sweep
from launch import tpu_pod

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The CPU-sized panels, and the on-policy testbed's specs.
SPECS = sorted((ROOT / 'launch' / 'sweeps').glob('*.json')) + sorted(
    (ROOT / 'launch' / 'sweeps' / 'testbed').glob('*.json')
)
ALL_SPECS = sorted((ROOT / 'launch' / 'sweeps').rglob('*.json'))
TEACHER = 'launch/checkpoints/arithmetic_sum3_2digit_teacher'
GKD = 'gin/experiments/arithmetic/gkd.gin'
PNG_HEADER = b'\x89PNG\r\n\x1a\n'


def load(name):
  return spec_lib.load(str(ROOT / 'launch' / 'sweeps' / f'{name}.json'))


# ------------------------------------------------------------------------- shipped specs


def test_the_paper_panels_have_specs():
  names = {path.stem for path in SPECS}
  assert {'arithmetic_fig7_grid', 'arithmetic_fig8_lambda'} <= names
  for path in SPECS:
    assert json.loads(path.read_text())['name'] == path.stem


@pytest.mark.parametrize('path', SPECS, ids=lambda p: p.stem)
def test_every_spec_expands_into_its_runs(path, tmp_path, capsys):
  spec = spec_lib.load(str(path))
  runs = plan.expand(spec, str(tmp_path))
  references = spec.references
  seeds = spec.seeds
  points = math.prod(len(axis.values) for axis in spec.axes)
  num_refs = sum(len(seeds) if ref.seeded else 1 for ref in references.values())
  assert len(runs) == num_refs + points * len(seeds)
  # References first, in the spec's order; then the points, seed-major.
  assert [run.reference for run in runs[:num_refs]] == [
      name for name, ref in references.items() for _ in (seeds if ref.seeded else [None])
  ]
  assert [run.seed for run in runs[num_refs:]] == [s for s in seeds for _ in range(points)]
  assert len({run.model_dir for run in runs}) == len(runs)
  samples = sum(e.num_samples for e in spec.evaluations)
  for run in runs:
    trained = run.reference is None or references[run.reference].checkpoint is None
    assert [c.kind for c in run.commands] == ['train'] * trained + ['eval'] * samples
    assert run.model_dir == str(tmp_path / run.name)
    for command in run.commands:
      text = ' '.join(command.argv())
      assert not re.search(r'\{(root|seed|ref:)', text), text
      assert command.output_dir.startswith(run.model_dir)
      assert command.argv()[:3] == ['python', '-m', f'gkd_t5x.{command.kind}']
      assert command.argv()[3] == f'--gin_file=gin/runs/{command.kind}.gin'
  # Print mode: every command, one per line, in the runs' order.
  assert sweep.main([str(path), '--root', str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [shlex.split(line) for line in lines] == [
      command.argv() for run in runs for command in run.commands
  ]


@pytest.mark.parametrize(
    'path', ALL_SPECS, ids=lambda p: str(p.relative_to(ROOT / 'launch' / 'sweeps'))
)
def test_print_mode_prints_the_plan(path, capsys):
  """Every spec of launch/sweeps/, the paper's and the reproduction's too: print mode prints
  the commands of its runs as they render, in order."""
  runs = plan.expand(spec_lib.load(str(path)), '/r')
  assert sweep.main([str(path), '--root', '/r']) == 0
  assert capsys.readouterr().out.splitlines() == [
      tpu_pod.shell_join(command.argv()) for run in runs for command in run.commands
  ]


def test_fig7_grid_runs_and_bindings(tmp_path):
  runs = plan.expand(load('arithmetic_fig7_grid'), str(tmp_path))
  assert len(runs) == 2 + 15 * 3
  teacher, sft = runs[:2]
  base = tmp_path / 'arithmetic_fig7_grid'
  assert (teacher.reference, teacher.checkpoint, teacher.seed) == ('teacher', TEACHER, None)
  assert teacher.model_dir == str(base / 'ref_teacher')
  assert [c.kind for c in teacher.commands] == ['eval']
  assert teacher.commands[0].argv() == [
      'python',
      '-m',
      'gkd_t5x.eval',
      '--gin_file=gin/runs/eval.gin',
      '--gin_file=gin/experiments/arithmetic/teacher.gin',
      '--gin.EVAL_NUM_EXAMPLES=None',
      f"--gin.CHECKPOINT_PATH='{TEACHER}'",
      f"--gin.EVAL_OUTPUT_DIR='{base / 'ref_teacher' / 'eval_greedy'}'",
  ]
  assert sft.commands[0].argv() == [
      'python',
      '-m',
      'gkd_t5x.train',
      '--gin_file=gin/runs/train.gin',
      '--gin_file=gin/experiments/arithmetic/student_sft.gin',
      f"--gin.MODEL_DIR='{base / 'ref_student_sft'}'",
  ]
  grid = runs[2:]
  assert {(run.labels['lambda'], run.labels['divergence'], run.seed) for run in grid} == set(
      itertools.product(['1.0', '0.5', '0.0'], DIVERGENCES, [0, 1, 2])
  )
  run = next(
      r for r in grid if r.name == 'arithmetic_fig7_grid/lambda_0.5__divergence_JSD_0.9/seed_2'
  )
  model_dir = base / 'lambda_0.5__divergence_JSD_0.9' / 'seed_2'
  assert run.model_dir == str(model_dir)
  assert run.bindings == {
      'MODEL_DIR': f"'{model_dir}'",
      'RANDOM_SEED': '2',
      'INITIAL_CHECKPOINT_PATH': f"'{base / 'ref_student_sft'}'",
      'TEACHER_CHECKPOINT_PATH': f"'{TEACHER}'",
      'LMBDA': '0.5',
      'DIVERGENCE': "'jsd'",
      'BETA': '0.9',
  }
  assert run.needs == ['arithmetic_fig7_grid/ref_student_sft', 'arithmetic_fig7_grid/ref_teacher']
  train, evaluation = run.commands
  assert train.argv()[3:5] == ['--gin_file=gin/runs/train.gin', f'--gin_file={GKD}']
  assert evaluation.argv() == [
      'python',
      '-m',
      'gkd_t5x.eval',
      '--gin_file=gin/runs/eval.gin',
      f'--gin_file={GKD}',
      '--gin.RANDOM_SEED=2',
      f"--gin.INITIAL_CHECKPOINT_PATH='{base / 'ref_student_sft'}'",
      f"--gin.TEACHER_CHECKPOINT_PATH='{TEACHER}'",
      '--gin.LMBDA=0.5',
      "--gin.DIVERGENCE='jsd'",
      '--gin.BETA=0.9',
      f"--gin.CHECKPOINT_PATH='{model_dir}'",
      f"--gin.EVAL_OUTPUT_DIR='{model_dir / 'eval_greedy'}'",
  ]
  assert run.eval_dirs == {'greedy': [str(model_dir / 'eval_greedy')]}


def test_fig8_lambda_sweep(tmp_path):
  runs = plan.expand(load('arithmetic_fig8_lambda'), str(tmp_path))
  assert len(runs) == 2 + 5 * 2 * 3
  assert {(r.bindings['LMBDA'], r.bindings['DIVERGENCE']) for r in runs[2:]} == set(
      itertools.product(['0.0', '0.25', '0.5', '0.75', '1.0'], ["'forward_kl'", "'reverse_kl'"])
  )


def test_seeds_set_gin_file_and_only(tmp_path):
  spec = load('arithmetic_fig4_quality_diversity')
  runs = plan.expand(
      spec,
      str(tmp_path),
      seeds=[7],
      overrides={'TRAIN_STEPS': '20'},
      extra_gin_files=['tests/testdata/tiny_arithmetic.gin'],
  )
  assert len(runs) == 2 + 5
  run = runs[-1]
  assert run.name == 'arithmetic_fig4_quality_diversity/divergence_RKL/seed_7'
  assert list(run.bindings)[-1] == 'TRAIN_STEPS' and run.bindings['RANDOM_SEED'] == '7'
  assert run.gin_files == [GKD, 'tests/testdata/tiny_arithmetic.gin']
  # 4 temperatures x 4 samples, RANDOM_SEED 0..3 into sample_<i>; --set comes after the
  # evaluation's bindings, the sample's seed last.
  evals = [c for c in run.commands if c.kind == 'eval']
  assert len(evals) == 16
  assert evals[5].output_dir == os.path.join(run.model_dir, 'eval_T_0.3', 'sample_1')
  assert evals[5].argv()[-4:] == [
      "--gin.models.GKDModel.decode_method='sample'",
      '--gin.models.GKDModel.decode_temperature=0.3',
      '--gin.TRAIN_STEPS=20',
      '--gin.RANDOM_SEED=1',
  ]
  assert run.eval_dirs['T=1.0'] == [
      os.path.join(run.model_dir, 'eval_T_1.0', f'sample_{i}') for i in range(4)
  ]
  # --only keeps the references the chosen runs read.
  chosen = plan.select(plan.expand(spec, str(tmp_path)), r'divergence_RKL/seed_1$')
  assert [r.point for r in chosen] == ['ref_teacher', 'ref_student_sft', 'divergence_RKL']


def test_spec_gin_configs_build_the_named_methods(tmp_path):
  """Each distinct training and evaluation config of the shipped specs, parsed with the real
  gin files by the gin probe, builds the GKDConfig (and decoding) that its labels name."""
  configs, expected = {}, []
  for path in SPECS:
    spec = spec_lib.load(str(path))
    for run in plan.expand(spec, str(tmp_path), seeds=[0]):
      for command in run.commands:
        runner, kind = command.module.split('.')[0], command.kind
        config = dict(
            runner=runner,
            kind=kind,
            files=list(command.gin_files),
            bindings=list(command.gin_bindings().items()),
        )
        key = json.dumps(config)
        configs.setdefault(key, (len(configs), config))
        expected.append((path.stem, run, command, configs[key][0]))
  built = gin_probe.probe([config for _, config in configs.values()], timeout=300)
  for spec_name, run, command, index in expected:
    result, where = built[index], f'{spec_name} {run.name} {command.log_name}'
    assert result['ok'] and not result['required'], (where, result)
    # The training task (an evaluation's data is its eval task) and the objective.
    config = dict(result['gkd'], task=result['train_task'], eval_task=result['eval_task'])
    assert result['registered'], where
    if spec_name in TESTBED_TASKS:
      # Every model of a testbed spec is evaluated on the clean task; only the off-policy
      # control on the teacher's kind of data trains on that data.
      clean, teachers_kind = TESTBED_TASKS[spec_name]
      assert config['eval_task'] == clean, where
      trains_on = teachers_kind if run.labels.get('method') in TEACHERS_KIND_LABELS else clean
      if run.reference is None:
        assert config['task'] == trains_on, where
    if 'knob' in run.labels:
      # The knob study moves one knob from the sum3 base at a time: the task (and its clean
      # evaluation) only for the horizon, the student's size only for the capacity gap.
      knob = run.labels['knob']
      task = 'arithmetic_chain5' if knob == 'horizon' else 'arithmetic_sum3_2digit'
      assert (config['task'], config['eval_task']) == (task, task), where
      assert result['student'] == (32 if knob == 'capacity gap' else 64), where
    if run.reference is not None:
      assert (config['divergence'], config['lmbda']) == ('cross_entropy', 0.0), where
      continue
    labels = run.labels
    if 'method' in labels:
      check_method(config, labels['method'], where)
    if 'divergence' in labels:
      check_divergence(config, labels['divergence'], where)
    if 'lambda' in labels:
      assert config['lmbda'] == float(labels['lambda']), where
    if 'data_percent' in labels:
      assert (
          config['task']
          == {
              '5': 'arithmetic_sum3_2digit_train5pct',
              '25': 'arithmetic_sum3_2digit_train25pct',
              '100': 'arithmetic_sum3_2digit',
          }[labels['data_percent']]
      )
    if command.log_name.startswith('eval_T_'):
      temperature = float(command.log_name.split('_')[2])
      assert (result['decode']['method'], result['decode']['temperature']) == (
          'sample',
          temperature,
      ), where
    elif command.kind == 'eval':
      assert result['decode']['method'] == 'greedy', where


# The testbed's specs: (the clean task, the teacher's kind of data).
TESTBED_TASKS = {
    'recovery_positive_control': ('arithmetic_chain5', 'arithmetic_chain5_slips30'),
    'sum3_recovery_positive_control': ('arithmetic_sum3_2digit', 'arithmetic_sum3_2digit_slips30'),
    'sum3_entropy_positive_control': ('arithmetic_sum3_2digit', 'arithmetic_sum3_2digit_commute50'),
    'sum3_entropy_zero': ('arithmetic_sum3_2digit', 'arithmetic_sum3_2digit_commute50'),
    'sum3_entropy_cooled': ('arithmetic_sum3_2digit', 'arithmetic_sum3_2digit_commute50'),
}
TEACHERS_KIND_LABELS = (
    'Supervised KD (slips)',
    'Supervised KD (both orders)',
    'Supervised KD (both orders, RKL)',
)


def test_t5x_runner_commands(tmp_path):
  spec = synthetic_spec()
  spec['runner'] = 't5x'
  spec['references']['teacher']['checkpoint'] = f'{TEACHER}/checkpoint_4000'
  runs = plan.expand(spec_lib.parse(spec), 'gs://bucket/sweeps')
  teacher, student = runs[:2]
  assert teacher.commands[0].argv('python3')[:4] == [
      'python3',
      '-m',
      't5x.eval',
      '--gin_file=gin/runs/t5x_eval.gin',
  ]
  # A step directory is restored as it is; a run directory through T5X's 'latest' mode.
  assert not any('RestoreCheckpointConfig' in a for a in teacher.commands[0].argv())
  train, evaluation = student.commands[:2]
  assert train.argv('python3')[:4] == [
      'python3',
      '-m',
      't5x.train',
      '--gin_file=gin/runs/t5x_finetune.gin',
  ]
  assert "--gin.MODEL_DIR='gs://bucket/sweeps/synthetic/ref_student'" in train.argv()
  assert "--gin.utils.RestoreCheckpointConfig.mode='latest'" in evaluation.argv()


# ------------------------------------------------------------------------- validation


def synthetic_spec(**changes):
  """A small valid spec over real gin files: 2 x 2 points, 3 seeds, a checkpoint teacher."""
  spec = {
      'name': 'synthetic',
      'figure': 'a synthetic panel',
      'gin_files': [GKD],
      'bindings': {
          'INITIAL_CHECKPOINT_PATH': "'{ref:student}'",
          'TEACHER_CHECKPOINT_PATH': "'{ref:teacher}'",
      },
      'references': {
          'teacher': {
              'checkpoint': TEACHER,
              'gin_files': ['gin/experiments/arithmetic/teacher.gin'],
          },
          'student': {'gin_files': ['gin/experiments/arithmetic/student_sft.gin']},
      },
      'axes': [
          {
              'name': 'lam',
              'values': [
                  {'label': '0', 'bindings': {'LMBDA': '0.0'}},
                  {'label': '1', 'bindings': {'LMBDA': '1.0'}},
              ],
          },
          {
              'name': 'div',
              'values': [
                  {'label': 'FKL', 'bindings': {'DIVERGENCE': "'forward_kl'"}},
                  {'label': 'JSD(0.9)', 'bindings': {'DIVERGENCE': "'jsd'", 'BETA': '0.9'}},
              ],
          },
      ],
      'seeds': [0, 1, 2],
      'evaluations': [{'label': 'greedy', 'bindings': {}}],
      'plot': {
          'kind': 'heatmap',
          'metric': 'accuracy',
          'rows': 'lam',
          'columns': 'div',
          'baseline': 'student',
          'evaluation': 'greedy',
      },
  }
  spec.update(changes)
  return spec


def mutate(path, value):
  """A copy of the synthetic spec with the field at `path` (keys and indices) set."""
  spec = copy.deepcopy(synthetic_spec())
  node = spec
  for key in path[:-1]:
    node = node[key]
  if value is KeyError:
    del node[path[-1]]
  else:
    node[path[-1]] = value
  return spec


BAD_SPECS = {
    'unknown top key': (('sedes',), [0], 'sedes: unknown key'),
    'unknown value key': (
        ('axes', 0, 'values', 0, 'bindngs'),
        {},
        'axes[0].values[0].bindngs: unknown key',
    ),
    'unknown reference key': (
        ('references', 'student', 'seed'),
        1,
        'references.student.seed: unknown key',
    ),
    'unknown plot kind': (('plot', 'kind'), 'pie', "plot.kind: unknown plot kind 'pie'"),
    'plot axis missing': (('plot', 'rows'), 'lambda', "plot.rows: no axis 'lambda'"),
    'plot leaves out an axis': (('plot', 'columns'), KeyError, "plot: axis 'div' has several"),
    'unknown ref template': (
        ('bindings', 'INITIAL_CHECKPOINT_PATH'),
        "'{ref:sft}'",
        "bindings.INITIAL_CHECKPOINT_PATH: {ref:sft}: no reference 'sft'",
    ),
    'duplicate labels': (
        ('axes', 0, 'values', 1, 'label'),
        '0',
        "axes[0].values[1].label: duplicate label '0'",
    ),
    'labels with one directory': (
        ('axes', 1, 'values', 0, 'label'),
        'JSD_0.9',
        "axes[1].values[1].label: 'JSD(0.9)' gives the same directory",
    ),
    'missing gin file': (
        ('gin_files',),
        ['gin/experiments/arithmetic/nope.gin'],
        "gin_files: no gin file 'gin/experiments/arithmetic/nope.gin'",
    ),
    'missing value gin file': (
        ('axes', 0, 'values', 0, 'gin_files'),
        ['gin/methods/x.gin'],
        "axes[0].values[0].gin_files: no gin file 'gin/methods/x.gin'",
    ),
    'binding not a string': (
        ('axes', 0, 'values', 0, 'bindings', 'LMBDA'),
        0.0,
        'axes[0].values[0].bindings.LMBDA: must be a string',
    ),
    'unknown baseline': (('plot', 'baseline'), 'sft', "plot.baseline: no reference 'sft'"),
    'unknown plot evaluation': (('plot', 'evaluation'), 'T=1', 'plot.evaluation: no evaluation'),
    'bad seeds': (('seeds',), [0, 0], 'seeds: must be a non-empty list of distinct'),
    'unknown runner': (('runner',), 'pax', 'runner: must be one of'),
    'checkpoint without evaluations': (
        ('evaluations',),
        [],
        'references.teacher.checkpoint: a checkpoint reference',
    ),
    'seed in an unseeded reference': (
        ('references', 'student', 'bindings'),
        {'RANDOM_SEED': '{seed}'},
        'references.student.bindings.RANDOM_SEED: {seed}',
    ),
    'reference used before its definition': (
        ('references', 'student', 'bindings'),
        {'X': "'{ref:student}'"},
        'references.student.bindings.X: {ref:student}: a reference may only use',
    ),
    'bad sample count': (
        ('evaluations', 0, 'num_samples'),
        0,
        'evaluations[0].num_samples: must be an integer >= 1',
    ),
    'missing name': (('name',), KeyError, 'name: missing'),
}


@pytest.mark.parametrize('case', sorted(BAD_SPECS))
def test_bad_spec_names_the_field(case):
  path, value, message = BAD_SPECS[case]
  with pytest.raises(spec_lib.SpecError) as error:
    spec_lib.parse(mutate(path, value))
  assert message in str(error.value)


def test_plot_kind_specific_checks():
  lines = synthetic_spec(plot={'kind': 'lines', 'metric': 'accuracy', 'x': 'div', 'series': 'lam'})
  with pytest.raises(spec_lib.SpecError, match=r'plot.x: a lines plot needs numeric labels'):
    spec_lib.parse(lines)
  quality = synthetic_spec(
      plot={
          'kind': 'quality_diversity',
          'metric': 'accuracy',
          'series': 'div',
          'evaluations': ['greedy'],
      }
  )
  quality['axes'] = quality['axes'][1:]
  with pytest.raises(
      spec_lib.SpecError,
      match=r"plot.evaluations: 'greedy' is not an evaluation with num_samples >= 2",
  ):
    spec_lib.parse(quality)
  tradeoff = synthetic_spec(plot={'kind': 'tradeoff', 'x_metric': 'accuracy', 'points': 'lam'})
  with pytest.raises(spec_lib.SpecError) as error:
    spec_lib.parse(tradeoff)
  # Every problem is listed, not only the first.
  assert 'plot.y_metric: missing' in str(error.value)
  assert 'plot.baseline: missing' in str(error.value)
  assert "plot: axis 'div' has several values" in str(error.value)


def test_cli_rejects_bad_input_with_a_clear_message(tmp_path, capsys):
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(mutate(('plot', 'kind'), 'pie')))
  assert sweep.main([str(bad), '--root', str(tmp_path)]) == 2
  assert "plot.kind: unknown plot kind 'pie'" in capsys.readouterr().err
  good = tmp_path / 'good.json'
  good.write_text(json.dumps(synthetic_spec()))
  for argv, message in [
      (['--set', 'TRAIN_STEPS'], "--set 'TRAIN_STEPS': expected NAME=VALUE"),
      (['--seeds', 'a'], "--seeds 'a'"),
      (['--only', 'nothing'], "--only 'nothing' matches no run"),
      (['--gin_file', 'nope.gin'], "--gin_file: no gin file 'nope.gin'"),
      (['--mode', 'pod'], '--mode pod needs --tpu and --zone'),
  ]:
    assert sweep.main([str(good), '--root', str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
  result = subprocess.run(
      [sys.executable, 'launch/sweep.py', str(tmp_path / 'absent.json'), '--root', str(tmp_path)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 2 and 'absent.json: cannot read the spec' in result.stderr


# ------------------------------------------------------------------------- local and pod modes

FAKE_PYTHON = '''#!{python}
"""A stand-in for `python -m gkd_t5x.train|eval`: logs its call, writes what they would."""
import json, os, sys
module, flags = sys.argv[2], sys.argv[3:]
bindings = dict(arg[len('--gin.'):].split('=', 1) for arg in flags if arg.startswith('--gin.'))
bindings = {{key: value.strip("'") for key, value in bindings.items()}}
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps([module, bindings.get('MODEL_DIR') or bindings['EVAL_OUTPUT_DIR']]) + '\\n')
if os.environ.get('FAKE_FAIL') and os.environ['FAKE_FAIL'] in ' '.join(flags):
  sys.stderr.write('something broke\\n')
  sys.exit(3)
if os.environ.get('FAKE_HANG') and os.environ['FAKE_HANG'] in ' '.join(flags):
  import signal, time
  def preempted(signum, frame):  # as the trainer: save, then exit 75
    open(os.environ['FAKE_LOG'] + '.sigterm', 'w').close()
    sys.exit(75)
  signal.signal(signal.SIGTERM, preempted)
  open(os.environ['FAKE_LOG'] + '.running', 'w').close()
  time.sleep(300)
if module == 'gkd_t5x.train':
  os.makedirs(os.path.join(bindings['MODEL_DIR'], 'checkpoint_1'), exist_ok=True)
else:
  os.makedirs(bindings['EVAL_OUTPUT_DIR'], exist_ok=True)
  with open(os.path.join(bindings['EVAL_OUTPUT_DIR'], 'metrics.json'), 'w') as f:
    json.dump({{'checkpoint': bindings['CHECKPOINT_PATH'], 'split': 'test',
               'metrics': {{'inference/task/accuracy': 1.0}}}}, f)
'''


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
  path = tmp_path / 'fake_python'
  path.write_text(FAKE_PYTHON.format(python=sys.executable))
  path.chmod(0o755)
  log = tmp_path / 'calls.jsonl'
  monkeypatch.setenv('FAKE_LOG', str(log))

  def calls():
    if not log.exists():
      return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return lines

  return str(path), calls


def test_local_mode_runs_in_order_skips_done_and_stops_at_a_failure(
    tmp_path, fake_python, capsys, monkeypatch
):
  python, calls = fake_python
  spec = synthetic_spec(seeds=[0, 1])
  spec['axes'] = spec['axes'][:1]
  spec['plot'] = {'kind': 'bars', 'metric': 'accuracy', 'x': 'lam'}
  spec['evaluations'].append({'label': 'T=1', 'num_samples': 2, 'bindings': {}})
  spec_path = tmp_path / 'spec.json'
  spec_path.write_text(json.dumps(spec))
  root = tmp_path / 'root'
  argv = [str(spec_path), '--root', str(root), '--mode', 'local', '--python', python]
  base = root / 'synthetic'

  def expected(*dirs):
    return [
        item
        for d in dirs
        for item in (
            ([['gkd_t5x.train', str(base / d)]] if d != 'ref_teacher' else [])
            + [
                ['gkd_t5x.eval', str(base / d / 'eval_greedy')],
                ['gkd_t5x.eval', str(base / d / 'eval_T_1' / 'sample_0')],
                ['gkd_t5x.eval', str(base / d / 'eval_T_1' / 'sample_1')],
            ]
        )
    ]

  order = [
      'ref_teacher',
      'ref_student',
      'lam_0/seed_0',
      'lam_1/seed_0',
      'lam_0/seed_1',
      'lam_1/seed_1',
  ]
  assert sweep.main(argv) == 0
  assert calls() == expected(*order)
  out = capsys.readouterr().out
  assert re.search(
      r'^\[1/6\] synthetic/ref_teacher \.\.\. done in \S+; elapsed \S+, ETA \S+$', out, re.M
  ), out
  assert re.search(r'^\[6/6\] synthetic/lam_1/seed_1 \.\.\. done in .*ETA 0m00s$', out, re.M)
  assert all((base / d / 'DONE').is_file() for d in order)
  # Everything done: nothing runs again.
  assert sweep.main(argv) == 0
  assert calls() == []
  assert capsys.readouterr().out.count('done already') == 6
  # A run without DONE trains again (the trainer resumes by itself), but its finished
  # evaluations are skipped.
  (base / 'lam_1' / 'seed_0' / 'DONE').unlink()
  (base / 'lam_1' / 'seed_0' / 'eval_T_1' / 'sample_1' / 'metrics.json').unlink()
  assert sweep.main(argv) == 0
  assert calls() == [
      ['gkd_t5x.train', str(base / 'lam_1' / 'seed_0')],
      ['gkd_t5x.eval', str(base / 'lam_1' / 'seed_0' / 'eval_T_1' / 'sample_1')],
  ]
  capsys.readouterr()
  # The first failure stops the sweep with the command and its stderr.
  monkeypatch.setenv('FAKE_FAIL', 'lam_0/seed_1/eval_greedy')
  other = tmp_path / 'other'
  assert (
      sweep.main([str(spec_path), '--root', str(other), '--mode', 'local', '--python', python]) == 3
  )
  made = calls()
  assert made[-1] == ['gkd_t5x.eval', str(other / 'synthetic' / 'lam_0' / 'seed_1' / 'eval_greedy')]
  assert len(made) == len(expected(*order[:4])) + 2
  captured = capsys.readouterr()
  assert '[5/6] synthetic/lam_0/seed_1 ... FAILED' in captured.out
  assert 'synthetic/lam_0/seed_1: eval failed (exit status 3)' in captured.err
  assert f'--gin.EVAL_OUTPUT_DIR="\'{other}/synthetic/lam_0/seed_1/eval_greedy\'"' in captured.err
  assert 'something broke' in captured.err
  assert not (other / 'synthetic' / 'lam_0' / 'seed_1' / 'DONE').exists()


def one_axis_local_sweep(tmp_path, python):
  """The synthetic spec's first axis, seed 0, as a local sweep with the stand-in trainer:
  (sweep.py's argv, the spec's run root)."""
  spec = synthetic_spec(seeds=[0])
  spec['axes'] = spec['axes'][:1]
  spec['plot'] = {'kind': 'bars', 'metric': 'accuracy', 'x': 'lam'}
  spec_path = tmp_path / 'spec.json'
  spec_path.write_text(json.dumps(spec))
  root = tmp_path / 'root'
  argv = [str(spec_path), '--root', str(root), '--mode', 'local', '--python', python]
  return argv, root / 'synthetic'


def test_local_mode_runs_a_run_linked_to_another_sweeps_run_not_made_yet(tmp_path, fake_python):
  python, calls = fake_python
  argv, base = one_axis_local_sweep(tmp_path, python)
  shared = tmp_path / 'other_sweep' / 'lam_0' / 'seed_0'
  (base / 'lam_0').mkdir(parents=True)
  (base / 'lam_0' / 'seed_0').symlink_to(shared)
  assert sweep.main(argv) == 0
  assert ['gkd_t5x.train', str(base / 'lam_0' / 'seed_0')] in calls()
  assert (shared / 'DONE').is_file() and (shared / 'logs').is_dir()


def start_sweep_hanging_at(tmp_path, monkeypatch, python, run, stdout=subprocess.PIPE):
  """launch/sweep.py --mode local (the stand-in trainer) of a 3-run spec, in a process, once
  `run` hangs in training; returns the driver, its argv and the spec's run root."""
  argv, base = one_axis_local_sweep(tmp_path, python)
  monkeypatch.setenv('FAKE_HANG', run)
  driver = subprocess.Popen(
      [sys.executable, 'launch/sweep.py', *argv],
      cwd=ROOT,
      stdout=stdout,
      stderr=stdout,
      text=True,
  )
  running = pathlib.Path(os.environ['FAKE_LOG'] + '.running')
  deadline = time.monotonic() + 120
  while not running.exists():
    assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
    time.sleep(0.05)
  return driver, argv, base


def test_sigterm_to_the_local_sweep_reaches_its_run_which_is_reported_interrupted(
    tmp_path, fake_python, monkeypatch
):
  python, calls = fake_python
  driver, argv, base = start_sweep_hanging_at(tmp_path, monkeypatch, python, 'lam_1/seed_0')
  driver.send_signal(signal.SIGTERM)
  out, err = driver.communicate(timeout=60)
  assert driver.returncode == 75, err
  assert '[4/4] synthetic/lam_1/seed_0 ... INTERRUPTED (SIGTERM; rerun to resume it)' in out
  assert pathlib.Path(os.environ['FAKE_LOG'] + '.sigterm').exists()  # the run got it
  assert [
      (base / d / 'DONE').exists() for d in ('ref_student', 'lam_0/seed_0', 'lam_1/seed_0')
  ] == [
      True,
      True,
      False,
  ]
  # A rerun runs only the interrupted run.
  monkeypatch.delenv('FAKE_HANG')
  calls()
  assert sweep.main(argv) == 0
  assert [dir for _, dir in calls()][0] == str(base / 'lam_1' / 'seed_0')


def test_a_sigkilled_sweep_takes_its_run_with_it_and_the_rerun_does_only_what_is_missing(
    tmp_path, fake_python, monkeypatch
):
  python, calls = fake_python
  driver, argv, base = start_sweep_hanging_at(
      tmp_path, monkeypatch, python, 'lam_0/seed_0', stdout=subprocess.DEVNULL
  )
  sigterm = pathlib.Path(os.environ['FAKE_LOG'] + '.sigterm')
  deadline = time.monotonic() + 120
  driver.kill()
  driver.wait()
  while not sigterm.exists():  # the orphaned run got SIGTERM: it saves and exits
    assert time.monotonic() < deadline, 'the run outlived its driver without a SIGTERM'
    time.sleep(0.05)
  assert (base / 'ref_student' / 'DONE').exists()
  assert not (base / 'lam_0' / 'seed_0' / 'DONE').exists()
  monkeypatch.delenv('FAKE_HANG')
  calls()
  assert sweep.main(argv) == 0
  # Only the killed run and the one after it; the finished reference is not trained again.
  assert [dir for module, dir in calls() if module == 'gkd_t5x.train'] == [
      str(base / 'lam_0' / 'seed_0'),
      str(base / 'lam_1' / 'seed_0'),
  ]


def test_a_training_is_finished_by_its_marker_or_by_the_one_reproduce_wrote_before(tmp_path):
  train = plan.expand(spec_lib.parse(synthetic_spec()), str(tmp_path))[1].commands[0]
  assert train.kind == 'train' and not runners.finished(train)
  os.makedirs(train.output_dir)
  for marker in (runners.DONE, 'TRAINED'):
    path = os.path.join(train.output_dir, marker)
    pathlib.Path(path).write_text('')
    assert runners.finished(train)
    os.unlink(path)


def test_pod_mode_dry_run_sends_every_command_to_all_workers(tmp_path, capsys):
  spec_path = tmp_path / 'spec.json'
  spec_path.write_text(json.dumps(synthetic_spec()))
  runs = plan.expand(spec_lib.parse(synthetic_spec()), 'gs://b/sw', multiprocess=True)
  assert (
      sweep.main(
          [
              str(spec_path),
              '--root',
              'gs://b/sw',
              '--mode',
              'pod',
              '--tpu',
              'v4-32',
              '--zone',
              'us-central2-b',
              '--project',
              'proj',
              '--dry-run',
          ]
      )
      == 0
  )
  lines = capsys.readouterr().out.splitlines()
  commands = [c for run in runs for c in run.commands]
  assert len(lines) == len(commands)
  for line, command in zip(lines, commands):
    argv = shlex.split(line)
    assert argv[:8] == [
        'gcloud',
        'compute',
        'tpus',
        'tpu-vm',
        'ssh',
        'v4-32',
        '--zone=us-central2-b',
        '--project=proj',
    ]
    assert argv[8] == '--worker=all'
    cd, remote = argv[9][len('--command=') :].split(' && ', 1)
    assert cd == 'cd ~/gkd_t5x'
    assert shlex.split(remote) == command.argv()
    assert ('--multiprocess' in command.argv()) == (command.kind == 'train')


# ------------------------------------------------------------------------- tpu_pod


def test_pod_command_quotes_the_remote_command():
  argv = [
      'python',
      '-m',
      'gkd_t5x.train',
      "--gin.MODEL_DIR='gs://b/it s'",
      '--gin_bindings=A = "x"',
      "--gin.NAME=it's",
      '--gin.X=$HOME',
  ]
  command = tpu_pod.pod_command(
      'tpu-1', 'europe-west4-a', tpu_pod.shell_join(argv), repo_dir='/opt/my repo'
  )
  assert command[:7] == [
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'ssh',
      'tpu-1',
      '--zone=europe-west4-a',
  ]
  assert command[7] == '--worker=all'
  cd, remote = command[8][len('--command=') :].split(' && ', 1)
  assert shlex.split(cd) == ['cd', '/opt/my repo']
  assert shlex.split(remote) == argv
  # The readable form of a gin string literal, as in the README.
  assert tpu_pod.shell_quote("--gin.MODEL_DIR='/tmp/x'") == '--gin.MODEL_DIR="\'/tmp/x\'"'
  assert tpu_pod.shell_quote('--gin.X=$HOME') == "'--gin.X=$HOME'"


def test_tpu_pod_cli_dry_run_and_setup(capsys):
  assert (
      tpu_pod.main(
          [
              '--tpu',
              't',
              '--zone',
              'z',
              '--dry-run',
              '--',
              'python',
              '-m',
              't5x.train',
              "--gin.MODEL_DIR='gs://b/r'",
          ]
      )
      == 0
  )
  assert shlex.split(capsys.readouterr().out) == [
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'ssh',
      't',
      '--zone=z',
      '--worker=all',
      '--command=cd ~/gkd_t5x && python -m t5x.train --gin.MODEL_DIR="\'gs://b/r\'"',
  ]
  assert tpu_pod.main(['--tpu', 't', '--zone', 'z', '--setup', '--dry-run']) == 0
  remote = shlex.split(capsys.readouterr().out)[-1][len('--command=') :]
  assert [shlex.split(part) for part in remote.split(' && ')[1:]] == [
      list(c) for c in tpu_pod.SETUP_COMMANDS
  ]
  with pytest.raises(SystemExit):
    tpu_pod.main(['--tpu', 't', '--zone', 'z'])  # neither --setup nor a command


def test_setup_commands_are_the_readme_install_commands():
  readme = (ROOT / 'README.md').read_text()
  section = readme[readme.index('## TPU pods with T5X') :]
  block = re.search(r'\*\*Install\.\*\*.*?```bash\n(.*?)```', section, re.S).group(1)
  block = re.sub(r'\\\n\s*', ' ', block)
  commands = [shlex.split(line, comments=True) for line in block.splitlines()]
  assert [c for c in commands if c] == [list(c) for c in tpu_pod.SETUP_COMMANDS]


# ------------------------------------------------------------------------- results and figures


def write_eval(directory, metrics):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'metrics.json'), 'w') as f:
    json.dump(
        {
            'checkpoint': str(directory),
            'split': 'test',
            'metrics': {f'inference/arithmetic_sum3_2digit/{k}': v for k, v in metrics.items()},
        },
        f,
    )


def read_csv(path):
  with open(path) as f:
    return {(row['point'], row['evaluation'], row['metric']): row for row in csv.DictReader(f)}


def mean_std(values):
  mean = sum(values) / len(values)
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def run_figures(spec, root, out, *extra):
  spec_path = pathlib.Path(out) / f'{spec["name"]}.json'
  os.makedirs(out, exist_ok=True)
  spec_path.write_text(json.dumps(spec))
  return figures.main([str(spec_path), '--root', str(root), '--out', str(out), *extra])


def assert_png(path):
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == PNG_HEADER and len(data) > 5000


def test_read_metric_sources(tmp_path):
  write_eval(tmp_path / 'a', {'accuracy': 40.0})
  assert results.read_metric(str(tmp_path / 'a'), 'accuracy') == 40.0
  assert results.read_metric(str(tmp_path / 'a'), 'inference/arithmetic_sum3_2digit/accuracy') == 40
  assert results.read_metric(str(tmp_path / 'a'), 'bleu') is None
  assert results.read_metric(str(tmp_path / 'absent'), 'accuracy') is None
  # The trainer's JSON lines: the last step; a short name prefers the inference metric.
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'eval_metrics.jsonl').write_text(
      json.dumps(
          {'step': 10, 'metrics': {'validation/accuracy': 1.0, 'inference/t/accuracy': 70.0}}
      )
      + '\n'
      + json.dumps({'step': 5, 'metrics': {'inference/t/accuracy': 50.0}})
      + '\n'
  )
  assert results.read_metric(str(tmp_path / 'b'), 'accuracy') == 70.0
  assert results.read_metric(str(tmp_path / 'b'), 'validation/accuracy') == 1.0
  # T5X's inference_eval JSON lines; two tasks with the metric are ambiguous.
  (tmp_path / 'c' / 'inference_eval').mkdir(parents=True)
  (tmp_path / 'c' / 'inference_eval' / 'a-metrics.jsonl').write_text(
      '{"step": 3, "accuracy": 12.5}\n{"step": 6, "accuracy": 25.0}\n'
  )
  assert results.read_metric(str(tmp_path / 'c'), 'accuracy') == 25.0
  assert results.eval_finished(str(tmp_path / 'c')) and results.eval_finished(str(tmp_path / 'a'))
  assert not results.eval_finished(str(tmp_path / 'b'))
  (tmp_path / 'c' / 'inference_eval' / 'b-metrics.jsonl').write_text(
      '{"step": 6, "accuracy": 1.0}\n'
  )
  with pytest.raises(ValueError, match='several tasks'):
    results.read_metric(str(tmp_path / 'c'), 'accuracy')


# Synthetic accuracies of the 2 x 2 grid: (lam, div) -> one value per seed 0, 1, 2.
GRID = {
    ('0', 'FKL'): [50.0, 52.0, 54.0],
    ('0', 'JSD(0.9)'): [51.0, 55.0, 53.5],
    ('1', 'FKL'): [60.0, 61.0, 65.0],
    ('1', 'JSD(0.9)'): [10.0, 12.0, 17.0],
}


def test_heatmap_figure_from_eval_metrics(tmp_path, capsys):
  spec = synthetic_spec()
  root = tmp_path / 'root'
  for run in plan.expand(spec_lib.parse(spec), str(root)):
    if run.reference == 'student':
      write_eval(run.eval_dirs['greedy'][0], {'accuracy': 45.0})
    elif run.reference is None:
      value = GRID[(run.labels['lam'], run.labels['div'])][run.seed]
      if not (run.labels == {'lam': '0', 'div': 'FKL'} and run.seed == 2):  # missing
        write_eval(run.eval_dirs['greedy'][0], {'accuracy': value})
  out = tmp_path / 'out'
  assert run_figures(spec, root, out) == 0
  captured = capsys.readouterr()
  assert '2 results missing (left out of the figure):' in captured.err
  assert 'synthetic/lam_0__div_FKL/seed_2: accuracy (greedy)' in captured.err
  assert 'synthetic/ref_teacher: accuracy (greedy)' in captured.err
  rows = read_csv(out / 'synthetic.csv')
  for (lam, div), values in GRID.items():
    row = rows[(f'lam_{lam}__div_{spec_lib.safe(div)}', 'greedy', 'accuracy')]
    kept = values[:2] if (lam, div) == ('0', 'FKL') else values
    mean, std = mean_std(kept)
    assert (row['lam'], row['div'], row['reference']) == (lam, div, '')
    assert float(row['mean']) == pytest.approx(mean) and float(row['std']) == pytest.approx(std)
    assert int(row['n_seeds']) == len(kept)
    assert [row[f'seed_{s}'] for s in range(3)] == [
        repr(v) if i < len(kept) else '' for i, v in enumerate(values)
    ]
  assert float(rows[('lam_1__div_JSD_0.9', 'greedy', 'accuracy')]['std']) == pytest.approx(
      math.sqrt(13.0)
  )
  student = rows[('ref_student', 'greedy', 'accuracy')]
  assert (student['reference'], student['mean'], student['std'], student['n_seeds']) == (
      'student',
      '45.0',
      '0.0',
      '1',
  )
  assert rows[('ref_teacher', 'greedy', 'accuracy')]['n_seeds'] == '0'
  assert_png(out / 'synthetic.png')
  # --strict fails instead (here through the script's command line).
  result = subprocess.run(
      [
          sys.executable,
          'launch/figures.py',
          str(out / 'synthetic.json'),
          '--root',
          str(root),
          '--out',
          str(tmp_path / 'strict'),
          '--strict',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 1, result.stderr
  assert 'synthetic/lam_0__div_FKL/seed_2: accuracy (greedy)' in result.stderr
  assert not (tmp_path / 'strict' / 'synthetic.png').exists()
  # A root without any result is an error.
  assert run_figures(spec, tmp_path / 'empty', tmp_path / 'empty_out') == 2
  assert 'no results of synthetic' in capsys.readouterr().err


def test_bars_figure_from_the_trainers_own_evaluation(tmp_path):
  """Without evaluations, the metric comes from what the trainer wrote in MODEL_DIR: event
  files (one run), the trainer's JSON lines, or T5X's inference_eval JSON lines."""
  from clu import metric_writers

  spec = synthetic_spec(evaluations=[])
  del spec['references']['teacher']
  spec['bindings'] = {'INITIAL_CHECKPOINT_PATH': "'{ref:student}'"}
  spec['axes'] = [
      {
          'name': 'method',
          'values': [
              {'label': 'events', 'bindings': {}},
              {'label': 'trainer json', 'bindings': {}},
              {'label': 't5x', 'bindings': {}},
              {'label': 'undefined once', 'bindings': {}},
          ],
      }
  ]
  spec['seeds'] = [0, 1]
  spec['plot'] = {'kind': 'bars', 'metric': 'accuracy', 'x': 'method', 'references': ['student']}
  root = tmp_path / 'root'
  # A NaN metric (a rate over nothing) is left out of its point's mean, not reported missing.
  values = {
      'events': [30.0, 34.0],
      'trainer json': [40.0, 41.0],
      't5x': [20.0, 26.0],
      'undefined once': [float('nan'), 12.0],
  }
  tag = 'inference/arithmetic_sum3_2digit/accuracy'
  for run in plan.expand(spec_lib.parse(spec), str(root)):
    os.makedirs(run.model_dir)
    if run.reference:
      value = 33.0
    else:
      value = values[run.labels['method']][run.seed]
    method = run.labels.get('method', 'trainer json')
    if method == 'events':
      writer = metric_writers.create_default_writer(
          os.path.join(run.model_dir, 'eval'), asynchronous=False
      )
      writer.write_scalars(5, {tag: value - 10.0, 'validation/accuracy': 1.0})
      writer.write_scalars(10, {tag: value, 'validation/accuracy': 2.0})
      writer.close()
    elif method == 'trainer json':
      with open(os.path.join(run.model_dir, 'eval_metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'step': 10, 'metrics': {tag: value}}) + '\n')
    else:
      os.makedirs(os.path.join(run.model_dir, 'inference_eval'))
      with open(
          os.path.join(run.model_dir, 'inference_eval', 'arithmetic_sum3_2digit-metrics.jsonl'), 'w'
      ) as f:
        f.write(json.dumps({'step': 10, 'accuracy': value}) + '\n')
  out = tmp_path / 'out'
  assert run_figures(spec, root, out, '--strict') == 0
  rows = read_csv(out / 'synthetic.csv')
  for method, seeds in values.items():
    row = rows[(f'method_{spec_lib.safe(method)}', '', 'accuracy')]
    seeds = [seed for seed in seeds if not math.isnan(seed)]
    assert int(row['n_seeds']) == len(seeds)
    if len(seeds) == 1:
      assert float(row['mean']) == pytest.approx(seeds[0])
      continue
    mean, std = mean_std(seeds)
    assert float(row['mean']) == pytest.approx(mean) and float(row['std']) == pytest.approx(std)
  assert rows[('ref_student', '', 'accuracy')]['mean'] == '33.0'
  assert_png(out / 'synthetic.png')


def test_lines_and_tradeoff_figures(tmp_path):
  spec = synthetic_spec()
  spec['axes'][0]['values'].append({'label': '0.5', 'bindings': {'LMBDA': '0.5'}})
  spec['axes'][1]['values'] = spec['axes'][1]['values'][:1]
  spec['evaluations'].append({'label': 'T=1', 'bindings': {}})
  spec['plot'] = [
      {
          'name': 'lines',
          'kind': 'lines',
          'metric': 'accuracy',
          'x': 'lam',
          'series': 'div',
          'references': ['teacher', 'student'],
          'evaluation': 'T=1',
      },
      {
          'name': 'tradeoff',
          'kind': 'tradeoff',
          'x_metric': 'accuracy',
          'y_metric': 'sequence_accuracy',
          'points': 'lam',
          'baseline': 'student',
          'references': ['teacher'],
          'evaluation': 'greedy',
      },
      {
          'name': 'curves',
          'kind': 'tradeoff',
          'x_metric': 'accuracy',
          'y_metric': 'sequence_accuracy',
          'points': 'lam',
          'series': 'div',
          'baseline': 'student',
          'evaluation': 'greedy',
      },
  ]
  root = tmp_path / 'root'
  for run in plan.expand(spec_lib.parse(spec), str(root)):
    lam = float(run.labels.get('lam', 2.0))
    seed = run.seed or 0
    for label, offset in (('greedy', 0.0), ('T=1', -5.0)):
      write_eval(
          run.eval_dirs[label][0],
          {
              'accuracy': 50.0 + 10 * lam + seed + offset,
              'sequence_accuracy': 40.0 - 4 * lam + 2 * seed,
          },
      )
  out = tmp_path / 'out'
  assert run_figures(spec, root, out, '--strict') == 0
  rows = read_csv(out / 'synthetic.csv')
  # Seeds 0, 1, 2 add 0, 1, 2 (accuracy) and 0, 2, 4 (sequence accuracy).
  for lam in (0.0, 0.5, 1.0):
    point = f'lam_{lam:g}__div_FKL'
    row = rows[(point, 'T=1', 'accuracy')]
    assert float(row['mean']) == pytest.approx(50 + 10 * lam + 1 - 5)
    assert float(row['std']) == pytest.approx(1.0)
    row = rows[(point, 'greedy', 'sequence_accuracy')]
    assert float(row['mean']) == pytest.approx(40 - 4 * lam + 2)
    assert float(row['std']) == pytest.approx(2.0)
  assert float(rows[('ref_student', 'greedy', 'accuracy')]['mean']) == 70.0
  assert_png(out / 'synthetic_lines.png')
  assert_png(out / 'synthetic_tradeoff.png')
  assert_png(out / 'synthetic_curves.png')
  assert not (out / 'synthetic.png').exists()


def test_quality_diversity_figure_with_self_bleu(tmp_path, monkeypatch):
  """Self-BLEU comes from the K samples' predictions.jsonl, one list of K predictions per
  input; a stand-in self_bleu makes the numbers checkable by hand."""
  calls = []

  def fake_self_bleu(samples_per_input):
    calls.append(samples_per_input)
    # 100 x the fraction of inputs whose samples all agree.
    return 100.0 * sum(len(set(s)) == 1 for s in samples_per_input) / len(samples_per_input)

  fake_metrics = types.SimpleNamespace(self_bleu=fake_self_bleu)
  # `from gkd_t5x import metrics` reads the package attribute once the module was imported
  # (by another test in this worker), sys.modules otherwise: patch both.
  monkeypatch.setitem(sys.modules, 'gkd_t5x.metrics', fake_metrics)
  monkeypatch.setattr(gkd_t5x, 'metrics', fake_metrics, raising=False)
  spec = synthetic_spec()
  spec['axes'] = spec['axes'][1:]
  spec['evaluations'] = [
      {
          'label': f'T={t}',
          'num_samples': 2,
          'bindings': {
              'models.GKDModel.decode_method': "'sample'",
              'models.GKDModel.decode_temperature': t,
          },
      }
      for t in ('0.1', '1.0')
  ]
  spec['plot'] = {
      'kind': 'quality_diversity',
      'metric': 'accuracy',
      'series': 'div',
      'references': ['teacher'],
  }
  root = tmp_path / 'root'
  inputs = ['1+2+3=', '4+5+6=', '7+8+9=', '1+1+1=']
  for run in plan.expand(spec_lib.parse(spec), str(root)):
    for label, directories in run.eval_dirs.items():
      for sample, directory in enumerate(directories):
        write_eval(directory, {'accuracy': 60.0 + sample + (run.seed or 0)})
        # At T=0.1 the samples agree on every input; at T=1.0 sample 1 differs on the first
        # input, and for JSD(0.9) on the first three.
        differing = 0 if label == 'T=0.1' else 3 if run.labels.get('div') == 'JSD(0.9)' else 1
        with open(os.path.join(directory, 'predictions.jsonl'), 'w') as f:
          for i, text in enumerate(inputs):
            prediction = f'#{i}' + ('x' if sample == 1 and i < differing else '')
            f.write(json.dumps({'input': text, 'target': '#0', 'prediction': prediction}) + '\n')
  out = tmp_path / 'out'
  assert run_figures(spec, root, out, '--strict') == 0
  rows = read_csv(out / 'synthetic.csv')
  assert float(rows[('div_FKL', 'T=0.1', 'self_bleu')]['mean']) == 100.0
  assert float(rows[('div_FKL', 'T=1.0', 'self_bleu')]['mean']) == 75.0
  assert float(rows[('div_JSD_0.9', 'T=1.0', 'self_bleu')]['mean']) == 25.0
  assert float(rows[('ref_teacher', 'T=1.0', 'self_bleu')]['mean']) == 75.0
  # The accuracy of a sampled evaluation is the mean over its samples, then over seeds.
  row = rows[('div_FKL', 'T=1.0', 'accuracy')]
  assert float(row['mean']) == pytest.approx(61.5) and float(row['std']) == pytest.approx(1.0)
  assert [['#0', '#0x'], ['#1', '#1'], ['#2', '#2'], ['#3', '#3']] in calls
  assert_png(out / 'synthetic.png')


def test_self_bleu_of_real_samples(tmp_path):
  directories = []
  for sample in range(3):
    directory = tmp_path / f'sample_{sample}'
    directory.mkdir()
    (directory / 'predictions.jsonl').write_text(
        ''.join(
            json.dumps({'input': f'{i}', 'target': 't', 'prediction': f'12+{i}=1{i};#1{i}'}) + '\n'
            for i in range(5)
        )
    )
    directories.append(str(directory))
  assert results.self_bleu_of(directories) == pytest.approx(100.0)
  (tmp_path / 'sample_2' / 'predictions.jsonl').write_text(
      json.dumps({'input': 'other', 'target': 't', 'prediction': 'p'}) + '\n'
  )
  with pytest.raises(ValueError, match='cannot be aligned'):
    results.self_bleu_of(directories)
