r"""Runs the sweep of one figure panel from a JSON spec (format: launch/sweeps/README.md).

    python launch/sweep.py SPEC.json --root DIR [--mode print|local|pod] [--only REGEX]
        [--seeds 0,1] [--set NAME=VALUE ...] [--gin_file EXTRA.gin ...] [--python PYTHON]
        [--tpu NAME --zone ZONE [--project P] [--repo_dir PATH] [--dry-run]]

A spec expands into runs (`expand`): its references first (an SFT student to start from, an
existing teacher checkpoint to evaluate, ...), in the spec's order, then the cartesian product
of its axes, seed-major (every point of seed 0, then of seed 1, ...: a partly finished sweep
already has one seed of every point). A run is one training command (none for a checkpoint
reference), then one evaluation command per spec evaluation, or K commands with RANDOM_SEED
0..K-1 for an evaluation with `num_samples` K. Directories:

    <root>/<name>/<axis>_<label>__<axis>_<label>/seed_<k>    MODEL_DIR of an axis run
    <root>/<name>/ref_<NAME>[/seed_<k>]                      a reference (seeded or not)
    <MODEL_DIR>/eval_<label>[/sample_<i>]                    EVAL_OUTPUT_DIR of an evaluation
    <MODEL_DIR>/DONE, <MODEL_DIR>/logs/                      local mode: finished marker, logs

Bindings are gin literals; the order on the command line is MODEL_DIR, RANDOM_SEED (seeded
runs), the spec's bindings, the axis values' bindings, then --set (later wins). Evaluations get
the run's bindings without MODEL_DIR, then CHECKPOINT_PATH, EVAL_OUTPUT_DIR, the evaluation's
bindings and --set again. Gin files: the runner's run file, the spec's (or the reference's),
the axis values', then --gin_file. Templates in binding values: {root}, {seed}, {ref:NAME}
(the model directory of reference NAME, of the same seed when that reference is seeded, or
the checkpoint of a checkpoint reference). A checkpoint reference's path takes {root} and
{ref:NAME} too: {ref:student_sft} evaluates a trained reference under other gin files.

Modes:
  print  the exact commands, shell-quoted, one per line, in the order they would run.
  local  runs them one after another from the repository root, one progress line per run
         ([i/N] name, time, elapsed, ETA); skips a run whose MODEL_DIR has DONE (written once
         its training and evaluations succeed) and an evaluation whose output directory has
         its metrics; stops at the first failure with the command and its stderr's tail.
  pod    each command through launch/tpu_pod.py on every worker of a TPU pod slice, one
         after another (the standalone trainer gets --multiprocess); nothing is skipped here,
         but a restarted training resumes from its own latest checkpoint.

Importable: `load_spec`, `validate`, `expand` -> [Run], `read_metric` / `run_metric` (a run's
final value of a metric by its short name) and `eval_finished`, used by launch/figures.py and
tests/test_launch.py.
"""

import argparse
import dataclasses
import glob
import itertools
import json
import os
import posixpath
import re
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:
  # Run as `python launch/sweep.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from launch import tpu_pod

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPLATE = re.compile(r'\{(root|seed|ref:[^{}]*)\}')
SAFE_NAME = re.compile(r'[A-Za-z0-9._-]+')
IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
STEP_DIR = re.compile(r'checkpoint_\d+')

TOP_KEYS = ('name', 'figure', 'runner', 'gin_files', 'bindings', 'references', 'axes', 'seeds',
            'evaluations', 'plot')
REFERENCE_KEYS = ('gin_files', 'bindings', 'seeded', 'checkpoint')
AXIS_KEYS = ('name', 'values')
VALUE_KEYS = ('label', 'bindings', 'gin_files')
EVALUATION_KEYS = ('label', 'bindings', 'num_samples')

# Per plot kind: (required keys, optional keys, the keys that name axes). Every plot also takes
# 'kind', 'name' (file suffix when "plot" is a list), 'title', 'xlabel' and 'ylabel'.
PLOT_KINDS = {
    'heatmap': (('metric', 'rows', 'columns'), ('baseline', 'evaluation'), ('rows', 'columns')),
    'bars': (('metric', 'x'), ('group', 'references', 'evaluation'), ('x', 'group')),
    'lines': (('metric', 'x'), ('series', 'references', 'evaluation', 'log_x'), ('x', 'series')),
    'quality_diversity': (('metric', 'series'), ('evaluations', 'references'), ('series',)),
    'tradeoff': (('x_metric', 'y_metric', 'points', 'baseline'),
                 ('series', 'references', 'evaluation'), ('points', 'series')),
}
PLOT_COMMON_KEYS = ('kind', 'name', 'title', 'xlabel', 'ylabel')


@dataclasses.dataclass(frozen=True)
class Runner:
  """How one trainer is started: `python -m <module> --gin_file=<run file> ...`."""
  train_module: str
  train_gin: str
  eval_module: str
  eval_gin: str


RUNNERS = {
    'gkd_t5x': Runner('gkd_t5x.train', 'gin/runs/train.gin', 'gkd_t5x.eval', 'gin/runs/eval.gin'),
    't5x': Runner('t5x.train', 'gin/runs/t5x_finetune.gin', 't5x.eval', 'gin/runs/t5x_eval.gin'),
}


class SpecError(ValueError):
  """A spec that cannot run; the message names the offending field."""


@dataclasses.dataclass
class Command:
  kind: str                 # 'train' or 'eval'
  argv: List[str]
  output_dir: str           # MODEL_DIR (train) or EVAL_OUTPUT_DIR (eval)
  log_name: str             # <MODEL_DIR>/logs/<log_name>.{out,err} in local mode


@dataclasses.dataclass
class Run:
  """One training (or one evaluated checkpoint) of a sweep, with its commands."""
  name: str                 # '<spec>/<point>/seed_<k>', relative to the root
  point: str                # '<axis>_<label>__...' or 'ref_<NAME>': the seeds' common dir
  reference: Optional[str]  # the reference's name; None for an axis run
  labels: Dict[str, str]    # axis name -> label ({} for a reference)
  seed: Optional[int]       # None for an unseeded reference
  model_dir: str            # where its outputs go
  checkpoint: str           # what its evaluations (and {ref:NAME}) read
  gin_files: List[str]      # experiment files (without the run file)
  bindings: Dict[str, str]  # resolved training bindings, in command-line order
  eval_dirs: Dict[str, List[str]]  # evaluation label -> its output dir(s), one per sample
  commands: List[Command]
  needs: List[str]          # names of the reference runs it reads


# ------------------------------------------------------------------------------- the spec


def safe(label: str) -> str:
  """`label` as a file name: runs of other characters become '_' ('JSD(0.1)' -> 'JSD_0.1')."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or '_'


def point_name(axes: Sequence[Mapping], labels: Mapping[str, str]) -> str:
  """The directory of an axis point: '<axis>_<label>' of every axis, joined by '__'."""
  return '__'.join(f'{axis["name"]}_{safe(labels[axis["name"]])}' for axis in axes)


def load_spec(path: str) -> dict:
  """The spec in `path`, validated."""
  try:
    with open(path) as f:
      spec = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SpecError(f'{path}: cannot read the spec: {e}') from e
  validate(spec, source=path)
  return spec


def validate(spec: Mapping, repo_dir: str = REPO_ROOT, source: str = 'spec') -> None:
  """Raises SpecError listing every problem of `spec`, each with the field it is in."""
  errors = _Errors()
  if not isinstance(spec, Mapping):
    raise SpecError(f'{source}: a spec is a JSON object.')
  errors.keys('', spec, TOP_KEYS, required=('name', 'axes', 'plot'))
  name = spec.get('name')
  if 'name' in spec and (not isinstance(name, str) or not SAFE_NAME.fullmatch(name)):
    errors.add('name', f'must be a file name of letters, digits, ".", "_", "-"; got {name!r}')
  if spec.get('runner', 'gkd_t5x') not in RUNNERS:
    errors.add('runner', f'must be one of {sorted(RUNNERS)}; got {spec.get("runner")!r}')
  errors.gin_files('gin_files', spec.get('gin_files', []), repo_dir)
  errors.bindings('bindings', spec.get('bindings', {}))

  references = spec.get('references', {})
  if not isinstance(references, Mapping):
    errors.add('references', 'must be an object {NAME: reference}')
    references = {}
  seeded_refs, earlier = set(), []
  for ref_name, ref in references.items():
    field = f'references.{ref_name}'
    if not IDENTIFIER.fullmatch(ref_name):
      errors.add(field, 'a reference name is an identifier (letters, digits, "_")')
    if not isinstance(ref, Mapping):
      errors.add(field, 'must be an object')
      continue
    errors.keys(field, ref, REFERENCE_KEYS)
    seeded = ref.get('seeded', False)
    if not isinstance(seeded, bool):
      errors.add(f'{field}.seeded', f'must be true or false; got {seeded!r}')
    if 'checkpoint' in ref:
      if not isinstance(ref['checkpoint'], str) or not ref['checkpoint']:
        errors.add(f'{field}.checkpoint', 'must be a checkpoint path')
      if seeded:
        errors.add(f'{field}.seeded', 'a checkpoint reference is not trained, so has no seeds')
      if not spec.get('evaluations'):
        errors.add(f'{field}.checkpoint', 'a checkpoint reference is only evaluated: the spec '
                   'needs "evaluations"')
    if not ref.get('gin_files'):
      errors.add(f'{field}.gin_files', 'a reference needs its experiment file(s)')
    errors.gin_files(f'{field}.gin_files', ref.get('gin_files', []), repo_dir)
    errors.bindings(f'{field}.bindings', ref.get('bindings', {}))
    templated = [(f'{field}.bindings.{key}', value)
                 for key, value in _strings(ref.get('bindings', {}))]
    if isinstance(ref.get('checkpoint'), str):
      templated.append((f'{field}.checkpoint', ref['checkpoint']))
    for where, value in templated:
      for template in TEMPLATE.findall(value):
        if template == 'seed' and not seeded:
          errors.add(where, '{seed} in an unseeded reference')
        elif template.startswith('ref:') and template[4:] not in earlier:
          errors.add(where, f'{{{template}}}: a reference may only use '
                     f'references listed before it ({earlier})')
        elif template.startswith('ref:') and template[4:] in seeded_refs and not seeded:
          errors.add(where, f'{{{template}}} is seeded; an unseeded '
                     'reference cannot use it')
    earlier.append(ref_name)
    if seeded is True:
      seeded_refs.add(ref_name)

  axes = spec.get('axes', [])
  if not isinstance(axes, list) or not axes:
    errors.add('axes', 'must be a non-empty list of axes')
    axes = []
  axis_names = set()
  for i, axis in enumerate(axes):
    field = f'axes[{i}]'
    if not isinstance(axis, Mapping):
      errors.add(field, 'must be an object')
      continue
    errors.keys(field, axis, AXIS_KEYS, required=AXIS_KEYS)
    axis_name = axis.get('name')
    if not isinstance(axis_name, str) or not IDENTIFIER.fullmatch(axis_name):
      errors.add(f'{field}.name', f'an axis name is an identifier; got {axis_name!r}')
    elif axis_name in axis_names:
      errors.add(f'{field}.name', f'duplicate axis {axis_name!r}')
    axis_names.add(axis_name)
    values = axis.get('values')
    if not isinstance(values, list) or not values:
      errors.add(f'{field}.values', 'must be a non-empty list')
      continue
    labels = [value.get('label') if isinstance(value, Mapping) else None for value in values]
    errors.labels(f'{field}.values', labels)
    for j, value in enumerate(values):
      value_field = f'{field}.values[{j}]'
      if not isinstance(value, Mapping):
        errors.add(value_field, 'must be an object')
        continue
      errors.keys(value_field, value, VALUE_KEYS, required=('label',))
      errors.gin_files(f'{value_field}.gin_files', value.get('gin_files', []), repo_dir)
      errors.bindings(f'{value_field}.bindings', value.get('bindings', {}))
  if axes and not spec.get('gin_files') and not any(
      isinstance(axis, Mapping) and axis.get('values') and all(
          isinstance(value, Mapping) and value.get('gin_files') for value in axis['values'])
      for axis in axes):
    errors.add('gin_files', 'every run needs an experiment file: give "gin_files" to the spec, '
               'or to every value of one axis')

  seeds = spec.get('seeds', [0])
  if (not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
    errors.add('seeds', f'must be a non-empty list of distinct integers >= 0; got {seeds!r}')

  evaluations = spec.get('evaluations', [])
  if not isinstance(evaluations, list):
    errors.add('evaluations', 'must be a list')
    evaluations = []
  errors.labels('evaluations', [e.get('label') if isinstance(e, Mapping) else None
                                for e in evaluations])
  for i, evaluation in enumerate(evaluations):
    field = f'evaluations[{i}]'
    if not isinstance(evaluation, Mapping):
      errors.add(field, 'must be an object')
      continue
    errors.keys(field, evaluation, EVALUATION_KEYS, required=('label',))
    errors.bindings(f'{field}.bindings', evaluation.get('bindings', {}))
    samples = evaluation.get('num_samples', 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
      errors.add(f'{field}.num_samples', f'must be an integer >= 1; got {samples!r}')

  # {ref:NAME} must name a reference, wherever it appears outside the references.
  binding_fields = [('bindings', spec.get('bindings', {}))]
  binding_fields += [(f'axes[{i}].values[{j}].bindings', value.get('bindings', {}))
                     for i, axis in enumerate(axes) if isinstance(axis, Mapping)
                     for j, value in enumerate(axis.get('values') or [])
                     if isinstance(value, Mapping)]
  binding_fields += [(f'evaluations[{i}].bindings', e.get('bindings', {}))
                     for i, e in enumerate(evaluations) if isinstance(e, Mapping)]
  for field, bindings in binding_fields:
    for key, value in _strings(bindings):
      for template in TEMPLATE.findall(value):
        if template.startswith('ref:') and template[4:] not in references:
          errors.add(f'{field}.{key}', f'{{{template}}}: no reference {template[4:]!r} '
                     f'(references: {sorted(references)})')

  plots = spec.get('plot')
  if isinstance(plots, list):
    if not plots:
      errors.add('plot', 'must be a plot object or a non-empty list of them')
    names = [p.get('name') if isinstance(p, Mapping) else None for p in plots]
    if any(not isinstance(n, str) or not SAFE_NAME.fullmatch(n) for n in names):
      errors.add('plot', 'each plot of a list needs a "name" (a file-name suffix)')
    elif len(set(names)) != len(names):
      errors.add('plot', f'duplicate plot names {names}')
    for i, plot in enumerate(plots):
      _validate_plot(errors, f'plot[{i}]', plot, spec, axes, references, evaluations)
  elif 'plot' in spec:
    _validate_plot(errors, 'plot', plots, spec, axes, references, evaluations)
  errors.raise_if_any(spec.get('name', source) if isinstance(spec.get('name'), str) else source)


def _validate_plot(errors, field, plot, spec, axes, references, evaluations) -> None:
  if not isinstance(plot, Mapping):
    errors.add(field, 'must be an object')
    return
  kind = plot.get('kind')
  if kind not in PLOT_KINDS:
    errors.add(f'{field}.kind', f'unknown plot kind {kind!r}; one of {sorted(PLOT_KINDS)}')
    return
  required, optional, axis_keys = PLOT_KINDS[kind]
  errors.keys(field, plot, PLOT_COMMON_KEYS + required + optional, required=required)
  axes_by_name = {a.get('name'): a for a in axes if isinstance(a, Mapping)}
  used = set()
  for key in axis_keys:
    if key in plot:
      if plot[key] not in axes_by_name:
        errors.add(f'{field}.{key}', f'no axis {plot[key]!r} (axes: {sorted(axes_by_name)})')
      used.add(plot[key])
  for axis_name, axis in axes_by_name.items():
    if axis_name not in used and len(axis.get('values') or []) > 1:
      errors.add(field, f'axis {axis_name!r} has several values but the {kind} plot does not '
                 f'use it (its axis keys: {list(axis_keys)}); its points would overlap')
  if kind == 'lines' and plot.get('x') in axes_by_name:
    for value in axes_by_name[plot['x']].get('values') or []:
      try:
        float(value['label'])
      except (KeyError, TypeError, ValueError):
        errors.add(f'{field}.x', f'a lines plot needs numeric labels on axis {plot["x"]!r}; '
                   f'got {value.get("label")!r}')
  if not isinstance(plot.get('log_x', False), bool):
    errors.add(f'{field}.log_x', f'must be true or false; got {plot["log_x"]!r}')
  if plot.get('rows') is not None and plot.get('rows') == plot.get('columns'):
    errors.add(f'{field}.columns', 'rows and columns must be different axes')
  if not isinstance(plot.get('references', []), list):
    errors.add(f'{field}.references', 'must be a list of reference names')
    return
  refs = ([plot['baseline']] if 'baseline' in plot else []) + plot.get('references', [])
  for ref in refs:
    if ref not in references:
      errors.add(f'{field}.baseline' if ref == plot.get('baseline') else f'{field}.references',
                 f'no reference {ref!r} (references: {sorted(references)})')
  labels = [e.get('label') for e in evaluations if isinstance(e, Mapping)]
  if 'evaluation' in plot and plot['evaluation'] not in labels:
    errors.add(f'{field}.evaluation', f'no evaluation {plot["evaluation"]!r} (evaluations: '
               f'{labels}; without evaluations the trainer\'s final evaluation is used)')
  if kind == 'quality_diversity':
    sampled = {e.get('label') for e in evaluations
               if isinstance(e, Mapping) and isinstance(e.get('num_samples', 1), int)
               and e.get('num_samples', 1) >= 2}
    chosen = plot.get('evaluations', sorted(sampled))
    if not isinstance(chosen, list):
      errors.add(f'{field}.evaluations', 'must be a list of evaluation labels')
      chosen = []
    elif not chosen:
      errors.add(f'{field}.evaluations', 'Self-BLEU needs evaluations with num_samples >= 2')
    for label in chosen:
      if label not in sampled:
        errors.add(f'{field}.evaluations', f'{label!r} is not an evaluation with '
                   'num_samples >= 2 (Self-BLEU compares several samples per input)')
  for key in ('metric', 'x_metric', 'y_metric'):
    if key in plot and (not isinstance(plot[key], str) or not plot[key]):
      errors.add(f'{field}.{key}', 'must be a metric name, e.g. "accuracy"')


class _Errors:
  """Collects validation problems, each as '<field>: <problem>'."""

  def __init__(self):
    self.messages: List[str] = []

  def add(self, field: str, problem: str) -> None:
    self.messages.append(f'{field}: {problem}')

  def keys(self, field, mapping, allowed, required=()) -> None:
    for key in mapping:
      if key not in allowed:
        self.add(f'{field}.{key}' if field else key,
                 f'unknown key (allowed: {", ".join(allowed)})')
    for key in required:
      if key not in mapping:
        self.add(f'{field}.{key}' if field else key, 'missing')

  def gin_files(self, field, files, repo_dir) -> None:
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
      self.add(field, 'must be a list of gin file paths')
      return
    for path in files:
      if not os.path.isfile(os.path.join(repo_dir, path)):
        self.add(field, f'no gin file {path!r} (relative to {repo_dir})')

  def bindings(self, field, bindings) -> None:
    if not isinstance(bindings, Mapping):
      self.add(field, 'must be an object {NAME: "gin literal"}')
      return
    for key, value in bindings.items():
      if not isinstance(value, str):
        self.add(f'{field}.{key}', f'must be a string holding a gin literal, e.g. "0.5" or '
                 f'"\'jsd\'"; got {value!r}')

  def labels(self, field, labels) -> None:
    seen = {}
    for i, label in enumerate(labels):
      if not isinstance(label, str) or not label:
        self.add(f'{field}[{i}].label', f'must be a non-empty string; got {label!r}')
      elif label in seen:
        self.add(f'{field}[{i}].label', f'duplicate label {label!r}')
      elif safe(label) in seen.values():
        self.add(f'{field}[{i}].label', f'{label!r} gives the same directory name '
                 f'{safe(label)!r} as another label')
      else:
        seen[label] = safe(label)

  def raise_if_any(self, source: str) -> None:
    if self.messages:
      raise SpecError(f'{source}: invalid spec:\n  ' + '\n  '.join(self.messages))


def _strings(bindings) -> Iterable[Tuple[str, str]]:
  if isinstance(bindings, Mapping):
    yield from ((k, v) for k, v in bindings.items() if isinstance(v, str))


# ------------------------------------------------------------------------------- expansion


def parse_overrides(items: Sequence[str]) -> Dict[str, str]:
  """['NAME=VALUE', ...] -> {NAME: VALUE} (the value is a gin literal, kept as written)."""
  overrides = {}
  for item in items:
    name, separator, value = item.partition('=')
    if not separator or not name.strip() or not value.strip():
      raise SpecError(f'--set {item!r}: expected NAME=VALUE with a gin literal, e.g. '
                      'TRAIN_STEPS=20 or DIVERGENCE="\'jsd\'"')
    overrides[name.strip()] = value.strip()
  return overrides


def _join(root: str, *parts: str) -> str:
  # posixpath keeps gs:// roots intact.
  return posixpath.join(root, *parts)


def expand(spec: Mapping, root: str, *, seeds: Optional[Sequence[int]] = None,
           overrides: Optional[Mapping[str, str]] = None,
           extra_gin_files: Sequence[str] = (), python: str = 'python',
           multiprocess: bool = False, repo_dir: str = REPO_ROOT) -> List[Run]:
  """The runs of `spec` under `root`, in the order they run: references, then axis points.

  Args:
    spec: a spec (validated here).
    root: the sweep's output root (a path or a gs:// URL), as it will appear in the commands.
    seeds: replaces the spec's seeds (seeded references included).
    overrides: bindings added to every run and evaluation, after all others (--set).
    extra_gin_files: gin files parsed after every run's experiment files (--gin_file).
    python: the interpreter of the commands (tests give a stand-in here).
    multiprocess: start the standalone trainer with --multiprocess (TPU pod slices).
    repo_dir: where relative gin file paths are checked.
  """
  validate(spec, repo_dir)
  overrides = dict(overrides or {})
  runner = RUNNERS[spec.get('runner', 'gkd_t5x')]
  seeds = list(spec.get('seeds', [0]) if seeds is None else seeds)
  if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
    raise SpecError(f'--seeds: give distinct seeds >= 0; got {seeds}')
  base = _join(root, spec['name'])
  evaluations = spec.get('evaluations', [])
  # Reference name -> {seed (None when unseeded): the path {ref:NAME} stands for}.
  ref_paths: Dict[str, Dict[Optional[int], str]] = {}
  ref_runs: Dict[str, Dict[Optional[int], str]] = {}
  runs = []

  def build(*, point, reference, labels, seed, model_dir, checkpoint, gin_files, bindings,
            trained):
    """One run; `bindings` are (name, value, the field it comes from) in spec order."""
    needs: List[str] = []

    def resolve(value: str, field: str) -> str:
      def substitute(match):
        key = match.group(1)
        if key == 'root':
          return root
        if key == 'seed':
          if seed is None:
            raise SpecError(f'{field}: {{seed}} in unseeded run {point}')
          return str(seed)
        paths = ref_paths[key[4:]]
        if None in paths:
          needs.append(ref_runs[key[4:]][None])
          return paths[None]
        if seed not in paths:
          raise SpecError(f'{field}: {{{key}}} is seeded, so unseeded run {point} cannot use it')
        needs.append(ref_runs[key[4:]][seed])
        return paths[seed]
      return TEMPLATE.sub(substitute, value)

    if reference is not None and not trained:
      checkpoint = resolve(checkpoint, f'references.{reference}.checkpoint')
    train_bindings = {'MODEL_DIR': _gin_string(model_dir)}
    if seed is not None:
      train_bindings['RANDOM_SEED'] = str(seed)
    for key, value, field in bindings:
      _bind(train_bindings, key, resolve(value, f'{field}.{key}'))
    for key, value in overrides.items():
      _bind(train_bindings, key, value)
    name = posixpath.join(spec['name'], point, *([f'seed_{seed}'] if seed is not None else []))
    files = list(gin_files) + list(extra_gin_files)
    commands, eval_dirs = [], {}
    if trained:
      argv = [python, '-m', runner.train_module, f'--gin_file={runner.train_gin}',
              *[f'--gin_file={f}' for f in files], *_gin_flags(train_bindings)]
      if multiprocess and runner.train_module == 'gkd_t5x.train':
        argv.append('--multiprocess')
      commands.append(Command('train', argv, model_dir, 'train'))
    for i, evaluation in enumerate(evaluations):
      label = evaluation['label']
      eval_dir = _join(model_dir, f'eval_{safe(label)}')
      samples = evaluation.get('num_samples', 1)
      eval_dirs[label] = []
      for sample in range(samples):
        output_dir = _join(eval_dir, f'sample_{sample}') if samples > 1 else eval_dir
        eval_bindings = {k: v for k, v in train_bindings.items() if k != 'MODEL_DIR'}
        _bind(eval_bindings, 'CHECKPOINT_PATH', _gin_string(checkpoint))
        _bind(eval_bindings, 'EVAL_OUTPUT_DIR', _gin_string(output_dir))
        if runner.eval_module == 't5x.eval' and not STEP_DIR.fullmatch(
            posixpath.basename(checkpoint.rstrip('/'))):
          # T5X's evaluator restores one 'specific' step by default; 'latest' takes a run dir.
          _bind(eval_bindings, 'utils.RestoreCheckpointConfig.mode', "'latest'")
        for key, value in evaluation.get('bindings', {}).items():
          _bind(eval_bindings, key, resolve(value, f'evaluations[{i}].bindings.{key}'))
        for key, value in overrides.items():
          _bind(eval_bindings, key, value)
        if samples > 1:
          _bind(eval_bindings, 'RANDOM_SEED', str(sample))
        argv = [python, '-m', runner.eval_module, f'--gin_file={runner.eval_gin}',
                *[f'--gin_file={f}' for f in files], *_gin_flags(eval_bindings)]
        log_name = f'eval_{safe(label)}' + (f'_sample_{sample}' if samples > 1 else '')
        commands.append(Command('eval', argv, output_dir, log_name))
        eval_dirs[label].append(output_dir)
    return Run(name=name, point=point, reference=reference, labels=dict(labels), seed=seed,
               model_dir=model_dir, checkpoint=checkpoint, gin_files=files,
               bindings=train_bindings, eval_dirs=eval_dirs, commands=commands,
               needs=list(dict.fromkeys(needs)))

  for ref_name, ref in spec.get('references', {}).items():
    point = f'ref_{ref_name}'
    ref_paths[ref_name], ref_runs[ref_name] = {}, {}
    bindings = [(key, value, f'references.{ref_name}.bindings')
                for key, value in ref.get('bindings', {}).items()]
    for seed in (seeds if ref.get('seeded', False) else [None]):
      model_dir = _join(base, point, *([f'seed_{seed}'] if seed is not None else []))
      checkpoint = ref.get('checkpoint', model_dir)
      if not TEMPLATE.search(checkpoint):  # known already: its own evaluations may name it
        ref_paths[ref_name][seed] = checkpoint
        ref_runs[ref_name][seed] = posixpath.join(
            spec['name'], point, *([f'seed_{seed}'] if seed is not None else []))
      run = build(point=point, reference=ref_name, labels={}, seed=seed, model_dir=model_dir,
                  checkpoint=checkpoint, gin_files=ref['gin_files'], bindings=bindings,
                  trained='checkpoint' not in ref)
      ref_paths[ref_name][seed] = run.checkpoint
      ref_runs[ref_name][seed] = run.name
      runs.append(run)

  axes = spec['axes']
  for seed in seeds:
    for combination in itertools.product(*[enumerate(axis['values']) for axis in axes]):
      labels = {axis['name']: value['label'] for axis, (_, value) in zip(axes, combination)}
      point = point_name(axes, labels)
      gin_files = list(spec.get('gin_files', []))
      bindings = [(key, value, 'bindings') for key, value in spec.get('bindings', {}).items()]
      for axis_index, (value_index, value) in enumerate(combination):
        gin_files += value.get('gin_files', [])
        bindings += [(key, v, f'axes[{axis_index}].values[{value_index}].bindings')
                     for key, v in value.get('bindings', {}).items()]
      model_dir = _join(base, point, f'seed_{seed}')
      runs.append(build(point=point, reference=None, labels=labels, seed=seed,
                        model_dir=model_dir, checkpoint=model_dir, gin_files=gin_files,
                        bindings=bindings, trained=True))
  return runs


def _bind(bindings: Dict[str, str], key: str, value: str) -> None:
  # A binding set again moves to the end, so the command line reads in order of precedence.
  bindings.pop(key, None)
  bindings[key] = value


def _gin_string(path: str) -> str:
  return "'" + path.replace('\\', '\\\\').replace("'", "\\'") + "'"


def _gin_flags(bindings: Mapping[str, str]) -> List[str]:
  return [f'--gin.{key}={value}' for key, value in bindings.items()]


def select(runs: Sequence[Run], pattern: str) -> List[Run]:
  """The runs whose name matches `pattern` (re.search), with the references they read."""
  regex = re.compile(pattern)
  by_name = {run.name: run for run in runs}
  wanted = {run.name for run in runs if regex.search(run.name)}
  frontier = list(wanted)
  while frontier:
    for needed in by_name[frontier.pop()].needs:
      if needed not in wanted:
        wanted.add(needed)
        frontier.append(needed)
  return [run for run in runs if run.name in wanted]


# ------------------------------------------------------------------------------- results


def eval_finished(output_dir: str) -> bool:
  """Whether an evaluation wrote its metrics (gkd_t5x.eval's metrics.json, or T5X's)."""
  return (_exists(_join(output_dir, 'metrics.json'))
          or bool(_glob(_join(output_dir, 'inference_eval', '*-metrics.jsonl'))))


def read_metric(directory: str, metric: str) -> Optional[float]:
  """The final value of `metric` written in `directory`, or None where nothing has it.

  `metric` is a short name ('accuracy') or a full one ('inference/<task>/accuracy',
  'test/loss'); a short name prefers the inference metric over a loss metric of that name.
  Looks in order at: metrics.json (gkd_t5x.eval), eval_metrics.jsonl (the standalone
  trainer's evaluations), inference_eval/<task>-metrics.jsonl (T5X's train and eval), and
  the eval/ TensorBoard event files; the first that has the metric gives its last step.

  Raises:
    ValueError: the short name matches several metrics (two tasks, say).
  """
  path = _join(directory, 'metrics.json')
  if _exists(path):
    value = _match(json.loads(_read(path))['metrics'], metric, path)
    if value is not None:
      return value
  path = _join(directory, 'eval_metrics.jsonl')
  if _exists(path):
    records = [json.loads(line) for line in _read(path).splitlines() if line.strip()]
    if records:
      value = _match(max(records, key=lambda r: r['step'])['metrics'], metric, path)
      if value is not None:
        return value
  found = []
  for path in sorted(_glob(_join(directory, 'inference_eval', '*-metrics.jsonl'))):
    records = [json.loads(line) for line in _read(path).splitlines() if line.strip()]
    records = [r for r in records if _match(r, metric, path) is not None]
    if records:
      found.append((path, _match(max(records, key=lambda r: r['step']), metric, path)))
  if len(found) > 1:
    raise ValueError(f'{directory}: metric {metric!r} is in several tasks: '
                     f'{[path for path, _ in found]}')
  if found:
    return found[0][1]
  event_dir = _join(directory, 'eval')
  if _glob(_join(event_dir, 'events.out.tfevents.*')):
    from gkd_t5x import event_files  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    scalars = event_files.read_scalars(event_dir)
    return _match({tag: values[-1][1] for tag, values in scalars.items()}, metric, event_dir)
  return None


def run_metric(run: Run, metric: str, evaluation: Optional[str] = None) -> Optional[float]:
  """A run's final `metric`: of its evaluation `evaluation` (the mean over the samples of a
  sampled one), or with None of its trainer's final evaluation. None if any part is missing."""
  directories = run.eval_dirs[evaluation] if evaluation is not None else [run.model_dir]
  values = [read_metric(directory, metric) for directory in directories]
  if not values or any(value is None for value in values):
    return None
  return sum(values) / len(values)


def _match(metrics: Mapping[str, float], metric: str, where: str) -> Optional[float]:
  if metric in metrics:
    return float(metrics[metric])
  matches = sorted(key for key in metrics if key.endswith('/' + metric))
  inference = [key for key in matches if key.startswith('inference/')]
  matches = inference or matches
  if len(matches) > 1:
    raise ValueError(f'{where}: metric {metric!r} is ambiguous: {matches}; give the full name')
  return float(metrics[matches[0]]) if matches else None


def _is_url(path: str) -> bool:
  return '://' in path


def _exists(path: str) -> bool:
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _glob(pattern: str) -> List[str]:
  if _is_url(pattern):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.glob(pattern)
  return glob.glob(pattern)


def _read(path: str) -> str:
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path) as f:
    return f.read()


# ------------------------------------------------------------------------------- modes


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """'[i/N] name' lines with elapsed time and an ETA from the runs that ran (not skipped)."""

  def __init__(self, total: int):
    self.total, self.start, self.durations = total, time.monotonic(), []

  def begin(self, index: int, name: str) -> float:
    print(f'[{index}/{self.total}] {name} ...', end=' ', flush=True)
    return time.monotonic()

  def end(self, index: int, started: float, status: str = 'done') -> None:
    duration = time.monotonic() - started
    self.durations.append(duration)
    remaining = self.total - index
    eta = sum(self.durations) / len(self.durations) * remaining
    print(f'{status} in {format_duration(duration)}; elapsed '
          f'{format_duration(time.monotonic() - self.start)}, ETA {format_duration(eta)}',
          flush=True)


def run_local(runs: Sequence[Run], cwd: str = REPO_ROOT, tail_lines: int = 40) -> int:
  """Runs the commands in order (see the module docstring); returns the exit status."""
  progress = Progress(len(runs))
  for index, run in enumerate(runs, 1):
    if os.path.exists(os.path.join(run.model_dir, 'DONE')):
      print(f'[{index}/{len(runs)}] {run.name}: done already', flush=True)
      continue
    started = progress.begin(index, run.name)
    logs = os.path.join(run.model_dir, 'logs')
    os.makedirs(logs, exist_ok=True)
    for command in run.commands:
      if command.kind == 'eval' and eval_finished(command.output_dir):
        continue
      out, err = (os.path.join(logs, f'{command.log_name}.{ext}') for ext in ('out', 'err'))
      with open(out, 'w') as stdout, open(err, 'w') as stderr:
        status = subprocess.run(command.argv, cwd=cwd, stdout=stdout, stderr=stderr).returncode
      if status != 0:
        print('FAILED', flush=True)
        with open(err) as f:
          tail = f.read().splitlines()[-tail_lines:]
        print(f'\n{run.name}: {command.kind} failed (exit status {status}):\n'
              f'  {tpu_pod.shell_join(command.argv)}\nlast lines of {err}:\n' + '\n'.join(tail),
              file=sys.stderr)
        return status
    with open(os.path.join(run.model_dir, 'DONE'), 'w') as f:
      f.write(time.strftime('%Y-%m-%d %H:%M:%S\n'))
    progress.end(index, started)
  return 0


def run_pod(runs: Sequence[Run], *, tpu: str, zone: str, project: Optional[str],
            repo_dir: str, dry_run: bool) -> int:
  """Runs every command on all workers of the pod slice, one after another."""
  progress = Progress(len(runs))
  for index, run in enumerate(runs, 1):
    if dry_run:
      for command in run.commands:
        print(tpu_pod.shell_join(tpu_pod.pod_command(tpu, zone, tpu_pod.shell_join(command.argv),
                                             project=project, repo_dir=repo_dir)))
      continue
    started = progress.begin(index, run.name)
    for command in run.commands:
      status = tpu_pod.run_on_pod(tpu, zone, tpu_pod.shell_join(command.argv), project=project,
                                  repo_dir=repo_dir)
      if status != 0:
        print('FAILED', flush=True)
        print(f'\n{run.name}: {command.kind} failed on the pod (exit status {status}):\n'
              f'  {tpu_pod.shell_join(command.argv)}', file=sys.stderr)
        return status
    progress.end(index, started)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description='Runs the sweep of one figure panel (spec format: launch/sweeps/README.md).')
  parser.add_argument('spec', help='the sweep spec (JSON)')
  parser.add_argument('--root', required=True, help='output root (a directory or gs:// URL)')
  parser.add_argument('--mode', choices=('print', 'local', 'pod'), default='print')
  parser.add_argument('--only', help='regex on run names (<spec>/<point>/seed_<k>); the '
                      'references the chosen runs read are kept')
  parser.add_argument('--seeds', help='comma-separated seeds replacing the spec\'s, e.g. 0,1')
  parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                      help='a gin binding for every run and evaluation, after all others')
  parser.add_argument('--gin_file', action='append', default=[],
                      help='a gin file parsed after every run\'s experiment files')
  parser.add_argument('--python', help='interpreter of the commands (default: this one in '
                      'local mode, "python" otherwise)')
  parser.add_argument('--tpu', help='pod mode: the TPU VM name')
  parser.add_argument('--zone', help='pod mode: its zone')
  parser.add_argument('--project', help='pod mode: its project (default: gcloud\'s)')
  parser.add_argument('--repo_dir', default='~/gkd_t5x',
                      help='pod mode: the repository on every worker')
  parser.add_argument('--dry-run', action='store_true',
                      help='pod mode: print the gcloud commands instead of running them')
  args = parser.parse_args(argv)
  try:
    spec = load_spec(args.spec)
    seeds = None
    if args.seeds is not None:
      try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
      except ValueError as e:
        raise SpecError(f'--seeds {args.seeds!r}: expected comma-separated integers') from e
    for path in args.gin_file:
      if not os.path.isfile(os.path.join(REPO_ROOT, path)):
        raise SpecError(f'--gin_file: no gin file {path!r} (relative to {REPO_ROOT})')
    if args.mode == 'pod' and not (args.tpu and args.zone):
      raise SpecError('--mode pod needs --tpu and --zone.')
    root = args.root
    if args.mode != 'pod' and not _is_url(root):
      # The commands run from the repository root, so relative roots would move.
      root = os.path.abspath(root)
    python = args.python or (sys.executable if args.mode == 'local' else 'python')
    runs = expand(spec, root, seeds=seeds, overrides=parse_overrides(args.set),
                  extra_gin_files=args.gin_file, python=python,
                  multiprocess=args.mode == 'pod')
    if args.only:
      try:
        runs = select(runs, args.only)
      except re.error as e:
        raise SpecError(f'--only {args.only!r}: {e}') from e
      if not runs:
        raise SpecError(f'--only {args.only!r} matches no run.')
  except SpecError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.mode == 'print':
    for run in runs:
      for command in run.commands:
        print(tpu_pod.shell_join(command.argv))
    return 0
  if args.mode == 'local':
    if _is_url(root):
      print('error: local mode writes its markers and logs on this machine; give a local '
            '--root', file=sys.stderr)
      return 2
    return run_local(runs)
  return run_pod(runs, tpu=args.tpu, zone=args.zone, project=args.project,
                 repo_dir=args.repo_dir, dry_run=args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
