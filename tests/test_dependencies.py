"""What a fresh install needs: every module imports, every imported distribution is named in
setup.py, and the core (model, objective, train step, step-time benchmark) runs where
TensorFlow, seqio and clu are not installed, as on the accelerator machines."""

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Not on PyPI: installed by hand for the T5X integration, which is the only code importing them.
NOT_ON_PYPI = {'t5x', 'airio', 'jestimator'}
# The data, evaluation and metric layers' packages, absent from the accelerator machines.
NOT_IN_CORE = (
    'tensorflow',
    'tensorflow_datasets',
    'tensorboard',
    'seqio',
    'clu',
    'rouge_score',
    'sacrebleu',
    't5x',
)


def _package_modules(package: str, directory: pathlib.Path):
  return [
      f'{package}.{path.stem}' for path in sorted(directory.glob('*.py')) if path.stem != '__init__'
  ]


# The modules that run only under T5X's own scripts.
T5X_MODULES = ('gkd_t5x.t5x_integration', 'gkd_t5x.t5x_preemption')


def test_every_module_imports():
  modules = (
      ['gkd_t5x', 'gkd_t5x.tasks']
      + _package_modules('gkd_t5x', ROOT / 'gkd_t5x')
      + _package_modules('gkd_t5x.tasks', ROOT / 'tasks')
      + _package_modules('launch', ROOT / 'launch')
  )
  for name in modules:
    if name in T5X_MODULES and importlib.util.find_spec('t5x') is None:
      continue  # they need t5x, which is not on PyPI
    importlib.import_module(name)


def _imported_top_level_names(paths):
  names = set()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        names.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split('.')[0])
  return names


def _required_distributions(extra=None):
  """Normalized names of setup.py's requirements (of `extra`, or the install's), read from its
  source: an installed gkd_t5x's metadata may be another checkout's or older than this one."""
  requirements = {}
  for node in ast.walk(ast.parse((ROOT / 'setup.py').read_text())):
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'INSTALL_REQUIRES':
      requirements[None] = ast.literal_eval(node.value)
    elif isinstance(node, ast.keyword) and node.arg == 'extras_require':
      requirements.update(ast.literal_eval(node.value))
  return {
      _normalize(re.match(r'[A-Za-z0-9_.\-]+', requirement).group(0))
      for requirement in requirements[extra]
  }


def _normalize(name):
  return re.sub(r'[-_.]+', '-', name).lower()


@pytest.mark.parametrize(
    'layer,directories,extras',
    [
        (
            'the project',
            [
                'gkd_t5x',
                'tasks',
                'launch',
                'benchmarks/step_time.py',
                'benchmarks/divergence_memory.py',
                'benchmarks/fit_table.py',
            ],
            (),
        ),
        ('the benchmark against TRL', ['benchmarks/compare_trl.py'], ('bench',)),
        # Tests of the benchmark against TRL skip where the bench extra is not installed.
        ('the tests', ['tests'], ('test', 'bench')),
    ],
)
def test_every_imported_distribution_is_named_in_setup_py(layer, directories, extras):
  paths = [
      path
      for entry in directories
      for path in ((ROOT / entry).rglob('*.py') if (ROOT / entry).is_dir() else [ROOT / entry])
  ]
  local = {path.stem for path in ROOT.rglob('*.py')} | {'gkd_t5x', 'tasks', 'launch', 'benchmarks'}
  third_party = (
      _imported_top_level_names(paths) - set(sys.stdlib_module_names) - local - NOT_ON_PYPI
  )
  required = _required_distributions().union(*map(_required_distributions, extras))
  distributions = importlib.metadata.packages_distributions()
  missing = {}
  for name in sorted(third_party):
    owners = {_normalize(d) for d in distributions.get(name, [name])}
    if not owners & required:
      missing[name] = sorted(owners)
  assert (
      not missing
  ), f'{layer} import modules whose distributions setup.py does not name: {missing}'


# Run before anything else in the subprocess: importing a module of NOT_IN_CORE raises, as it
# would where the package is not installed.
_BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {blocked!r}:
      raise ImportError(f'No module named {{name!r}} (blocked: not installed on accelerators)')
sys.meta_path.insert(0, Absent())
sys.argv = ['benchmarks/step_time.py', '--config', 'tiny', '--steps', '1', '--warmup', '0']
import runpy
runpy.run_path('benchmarks/step_time.py', run_name='__main__')
import gkd_t5x.objective, gkd_t5x.models, gkd_t5x.trainer, gkd_t5x.calculator
import gkd_t5x.diagnostics, gkd_t5x.fit
print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({blocked!r})))
"""


def test_core_and_benchmark_run_without_tensorflow_seqio_or_clu():
  script = _BLOCKER.format(blocked=NOT_IN_CORE)
  result = subprocess.run(
      [sys.executable, '-c', script],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  figures = json.loads(lines[0])
  assert figures['config'] == 'tiny'
  for key in ('step_lambda1_s', 'step_lambda0_s', 'sample_s', 'teacher_forward_s'):
    assert figures[key] > 0
  assert lines[-1] == 'LOADED []'
