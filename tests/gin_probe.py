r"""The gin probe: parses configs as an entry point would and describes what it gets.

    python tests/gin_probe.py < request.json     (what `probe` runs)

The request is {'configs': [{'runner': 'gkd_t5x' or 't5x', 'kind': 'train' or 'eval', 'files':
[gin files, the run file first], 'bindings': [[NAME, VALUE], ...], 'extra_files': [...],
'partial': bool}]}; the answer, one line 'RESULTS <JSON>', holds per config {'ok', 'required'
(parameters left at %gin.REQUIRED), 'error'} and `describe`'s fields: the GKDConfig ('gkd'),
student and teacher widths, decoding, data, steps and learning rates. All configs are parsed in
one subprocess, one after another with gin's (global) configuration cleared in between, so that
TensorFlow, JAX and T5X are imported once. For T5X's runner the probe imports `t5x.train` (and
`t5x.eval`) and points `sys.modules['__main__']` at the script of the run file it parses, as
`python -m t5x.<kind>` would have it, so that `train_script.train` / `eval_script.evaluate` are
T5X's real functions and every binding is checked against their signatures.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Sequence

import gin

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRY = {
    'gkd_t5x': {'train': 'gkd_t5x.train.train', 'eval': 'gkd_t5x.eval.evaluate'},
    't5x': {'train': 'train_script.train', 'eval': 'eval_script.evaluate'},
}


def probe(configs: Sequence[Mapping[str, Any]], timeout: int = 600) -> List[Dict[str, Any]]:
  """Parses `configs` (the module docstring says how) in one subprocess; one result each."""
  request = {
      'configs': [dict(config, extra_files=config.get('extra_files', [])) for config in configs]
  }
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  process = subprocess.run(
      [sys.executable, __file__],
      cwd=ROOT,
      input=json.dumps(request),
      capture_output=True,
      text=True,
      env=env,
      timeout=timeout,
      check=False,
  )
  lines = [line for line in process.stdout.splitlines() if line.startswith('RESULTS ')]
  assert process.returncode == 0 and lines, process.stderr[-5000:]
  results = json.loads(lines[-1][len('RESULTS ') :])
  assert len(results) == len(configs)
  return results


def required_in(value, path, found, depth=0):
  """Paths under `value` still at %gin.REQUIRED (gin passes it through macros silently)."""
  if value is gin.REQUIRED:
    found.append(path)
  elif depth > 5 or isinstance(value, type):
    return
  elif type(value) in (list, tuple):
    for i, item in enumerate(value):
      required_in(item, f'{path}[{i}]', found, depth + 1)
  elif type(value) is dict:
    for key, item in value.items():
      required_in(item, f'{path}.{key}', found, depth + 1)
  elif dataclasses.is_dataclass(value):
    for field in dataclasses.fields(value):
      required_in(getattr(value, field.name, None), f'{path}.{field.name}', found, depth + 1)
  elif type(value).__module__.startswith(('gkd_t5x.', 't5x.')) and hasattr(value, '__dict__'):
    for key, item in vars(value).items():
      required_in(item, f'{path}.{key}', found, depth + 1)


def macro(name):
  value = gin.query_parameter('%' + name)
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  return value


def registered(name):
  import seqio  # TensorFlow: in the subprocess only

  return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


def size(config):
  return None if config is None else config.emb_dim


def describe(runner, kind, got):
  """What the entry point would receive, as JSON."""
  out = {}
  model = got['model']
  gkd = model.gkd
  out['gkd'] = dict(
      divergence=gkd.divergence,
      beta=gkd.beta,
      lmbda=gkd.lmbda.start,
      fixed_data=gkd.fixed_data,
      teacher_temperature=gkd.teacher_temperature,
      alpha=gkd.alpha,
  )
  out['student'] = size(model.module.config)
  out['teacher'] = size(model.teacher_module.config) if model.teacher_module else None
  out['dropout'] = model.module.config.dropout_rate
  out['decode'] = dict(
      method=model.decode_method,
      temperature=model.decode_temperature,
      beam_size=model.beam_size,
      beam_alpha=model.beam_alpha,
      calculator=model.calculator,
  )
  if kind == 'train':
    data, evaluation = got['train_dataset_cfg'], got.get(
        'eval_dataset_cfg', got.get('infer_eval_dataset_cfg')
    )
    out['steps'] = got['total_steps']
    out['relative_steps'] = got.get('relative_steps')
    if runner == 't5x':
      restore = got['checkpoint_cfg'].restore
      out['initial'], out['restore_mode'] = restore.path, restore.mode
      initializer = gin.get_bindings('t5x_integration.TeacherTrainStateInitializer')
      out['teacher_path'] = initializer['teacher_checkpoint_path']
      out['reward_path'] = initializer['reward_checkpoint_path']
    else:
      out['initial'] = got['initial_checkpoint_path']
      out['teacher_path'] = got['teacher_checkpoint_path']
      out['reward_path'] = got['reward_checkpoint_path']
    schedule = gin.query_parameter('optimizers.adafactor.learning_rate').scoped_configurable_fn()
    warmup, lr = macro('WARMUP_STEPS'), macro('LEARNING_RATE')
    out['lr'] = lr
    out['lr_at'] = {
        step: float(schedule(step)) for step in (0, warmup // 2, warmup, 35000, out['steps'] - 1)
    }
  else:
    data = evaluation = got['dataset_cfg']
    if runner == 't5x':
      restore = got['restore_checkpoint_cfg']
      out['checkpoint'], out['restore_mode'] = restore.path, restore.mode
    else:
      out['checkpoint'] = got['checkpoint_path']
  out['task'] = data.mixture_or_task_name
  out['train_task'] = macro('MIXTURE_OR_TASK_NAME')
  # A training run that does not evaluate (eval_dataset_cfg None) still names the task its
  # evaluations read: the macro the run files bind every evaluation's task to.
  out['eval_task'] = (
      macro('EVAL_MIXTURE_OR_TASK_NAME') if evaluation is None else evaluation.mixture_or_task_name
  )
  out['registered'] = registered(out['task']) and registered(out['eval_task'])
  out['batch'] = data.batch_size
  out['lengths'] = dict(data.task_feature_lengths)
  out['eval_split'] = None if evaluation is None else evaluation.split
  return out


def main() -> None:
  # The repository's gkd_t5x and tasks, wherever the package is installed from.
  sys.path.insert(0, str(ROOT))
  from gkd_t5x import gin_utils
  from gkd_t5x import tasks  # noqa: F401  (registers the seqio tasks)

  request = json.load(sys.stdin)
  search, scripts = {'gkd_t5x': []}, {}
  if any(config['runner'] == 't5x' for config in request['configs']):
    import t5x
    import t5x.eval
    import t5x.train

    scripts = {'train': t5x.train, 'eval': t5x.eval}
    # T5X's train.py adds the directory above its package to the gin search path.
    search['t5x'] = [os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__)))]
  results = []
  for config in request['configs']:
    runner, kind = config['runner'], config['kind']
    files = [*config['files'], *config['extra_files']]
    bindings = [f'{key} = {value}' for key, value in config['bindings']]
    partial = config.get('partial', False)
    try:
      if runner == 't5x':
        sys.modules['__main__'] = scripts[kind]  # as `python -m t5x.<kind>` would have it
      gin.clear_config()
      # An include-only file (a base.gin without a method or task) or an overlay is not a
      # complete config: parsed (every binding names a known parameter), not finalized.
      gin_utils.parse_gin(files, bindings, search_paths=search[runner], finalize=not partial)
      if partial:
        results.append(dict(ok=True, required=[]))
        continue
      got = gin.get_bindings(ENTRY[runner][kind])
      required = []
      for name, value in got.items():
        required_in(value, name, required)
      result = dict(ok=True, required=required)
      if runner == 't5x' and kind == 'train':
        teacher = gin.get_bindings('t5x_integration.TeacherTrainStateInitializer')
        required_in(teacher['teacher_checkpoint_path'], 'teacher_checkpoint_path', required)
      result.update(describe(runner, kind, got))
    except Exception as e:
      result = dict(ok=False, error=f'{type(e).__name__}: {e}'[-3000:])
    results.append(result)
  print('RESULTS ' + json.dumps(results))


if __name__ == '__main__':
  main()
