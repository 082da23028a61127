r"""A sweep spec (format: launch/sweeps/README.md) as frozen values; parsing one validates it.

`load(path)` or `parse(data)` gives a `Spec`, or raises `SpecError` listing every problem of the
JSON, each with the field it is in ('axes[0].values[1].label: duplicate label ...'). A key left
out takes the default of its dataclass field, the one place where that default is written; the
two defaults that depend on the rest of the spec (a plot's evaluation and a quality-diversity
plot's evaluations) are set by the parser.
"""

import dataclasses
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from launch import REPO_ROOT

# {root}, {seed} and {ref:NAME} in binding values and checkpoint paths.
TEMPLATE = re.compile(r'\{(root|seed|ref:[^{}]*)\}')
SAFE_NAME = re.compile(r'[A-Za-z0-9._-]+')
IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')

TOP_KEYS = (
    'name',
    'figure',
    'runner',
    'gin_files',
    'bindings',
    'references',
    'axes',
    'seeds',
    'evaluations',
    'plot',
)
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
    'tradeoff': (
        ('x_metric', 'y_metric', 'points', 'baseline'),
        ('series', 'references', 'evaluation'),
        ('points', 'series'),
    ),
}
PLOT_COMMON_KEYS = ('kind', 'name', 'title', 'xlabel', 'ylabel')


@dataclasses.dataclass(frozen=True)
class Runner:
  """How a spec's trainer and evaluator start: `python -m <module> --gin_file=<run file> ...`."""

  name: str
  train_module: str
  train_gin: str
  eval_module: str
  eval_gin: str


RUNNERS = {
    runner.name: runner
    for runner in (
        Runner(
            'gkd_t5x', 'gkd_t5x.train', 'gin/runs/train.gin', 'gkd_t5x.eval', 'gin/runs/eval.gin'
        ),
        Runner(
            't5x', 't5x.train', 'gin/runs/t5x_finetune.gin', 't5x.eval', 'gin/runs/t5x_eval.gin'
        ),
    )
}


class SpecError(ValueError):
  """A spec that cannot run; the message names the offending field."""


@dataclasses.dataclass(frozen=True)
class Reference:
  """A run without axes, run before the axis runs: a training, or an existing checkpoint."""

  name: str
  gin_files: Tuple[str, ...] = ()  # its experiment files (the spec's do not apply)
  bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  seeded: bool = False  # one run per seed, or one with the experiment's seed
  checkpoint: Optional[str] = None  # evaluated, never trained; may hold {root} and {ref:NAME}


@dataclasses.dataclass(frozen=True)
class AxisValue:
  label: str  # the figure's label; its file-name form names directories
  bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  gin_files: Tuple[str, ...] = ()  # parsed after the spec's, in axis order


@dataclasses.dataclass(frozen=True)
class Axis:
  name: str
  values: Tuple[AxisValue, ...]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  label: str
  bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  num_samples: int = 1  # K > 1: K evaluations with RANDOM_SEED 0..K-1


@dataclasses.dataclass(frozen=True)
class Plot:
  """One figure of a panel. Which keys each kind takes: PLOT_KINDS."""

  kind: str
  name: Optional[str] = None  # the file suffix, in a list of plots; None for one plot
  title: Optional[str] = None
  xlabel: Optional[str] = None
  ylabel: Optional[str] = None
  metric: Optional[str] = None
  x_metric: Optional[str] = None
  y_metric: Optional[str] = None
  rows: Optional[str] = None  # rows ... points: axis names
  columns: Optional[str] = None
  x: Optional[str] = None
  group: Optional[str] = None
  series: Optional[str] = None
  points: Optional[str] = None
  baseline: Optional[str] = None  # a reference
  references: Tuple[str, ...] = ()
  log_x: bool = False
  # The evaluation shown: the spec's first unless given; None for the trainer's own.
  evaluation: Optional[str] = None
  # quality_diversity: the sampled evaluations on its curves, every one unless given.
  evaluations: Tuple[str, ...] = ()

  @property
  def metrics(self) -> List[str]:
    return [m for m in (self.metric, self.x_metric, self.y_metric) if m is not None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spec:
  """One figure panel's sweep."""

  name: str
  figure: Optional[str] = None  # what the panel reproduces (the default plot title)
  runner: Runner = RUNNERS['gkd_t5x']
  gin_files: Tuple[str, ...] = ()
  bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  references: Mapping[str, Reference] = dataclasses.field(default_factory=dict)  # in run order
  axes: Tuple[Axis, ...]
  seeds: Tuple[int, ...] = (0,)
  evaluations: Tuple[Evaluation, ...] = ()
  plots: Tuple[Plot, ...]  # "plot": one plot, or a list of named ones


def safe(label: str) -> str:
  """`label` as a file name: runs of other characters become '_' ('JSD(0.1)' -> 'JSD_0.1')."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or '_'


def load(path: str) -> Spec:
  """The spec in the JSON file `path`."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SpecError(f'{path}: cannot read the spec: {e}') from e
  return parse(data, source=path)


def parse_seeds(text: str) -> Tuple[int, ...]:
  """A command line's '--seeds 0,1' -> (0, 1)."""
  try:
    return tuple(int(s) for s in text.split(',') if s.strip())
  except ValueError as e:
    raise SpecError(f'--seeds {text!r}: expected comma-separated integers') from e


def parse_overrides(items: Sequence[str]) -> Dict[str, str]:
  """A command line's ['NAME=VALUE', ...] -> {NAME: VALUE} (a gin literal, kept as written)."""
  overrides = {}
  for item in items:
    name, separator, value = item.partition('=')
    if not separator or not name.strip() or not value.strip():
      raise SpecError(
          f'--set {item!r}: expected NAME=VALUE with a gin literal, e.g. '
          'TRAIN_STEPS=20 or DIVERGENCE="\'jsd\'"'
      )
    overrides[name.strip()] = value.strip()
  return overrides


def parse(data: Any, repo_dir: str = REPO_ROOT, source: str = 'spec') -> Spec:
  """The spec of `data` (a spec's JSON); gin files are looked up under `repo_dir`.

  Raises:
    SpecError: listing every problem, each with the field it is in.
  """
  if not isinstance(data, Mapping):
    raise SpecError(f'{source}: a spec is a JSON object.')
  errors = _Errors(repo_dir)
  errors.keys('', data, TOP_KEYS, required=('name', 'axes', 'plot'))
  given: Dict[str, Any] = {key: data[key] for key in ('name', 'figure') if key in data}
  if 'name' in data and (
      not isinstance(data['name'], str) or not SAFE_NAME.fullmatch(data['name'])
  ):
    errors.add(
        'name', f'must be a file name of letters, digits, ".", "_", "-"; got {data["name"]!r}'
    )
  if 'runner' in data:
    if isinstance(data['runner'], str) and data['runner'] in RUNNERS:
      given['runner'] = RUNNERS[data['runner']]
    else:
      errors.add('runner', f'must be one of {sorted(RUNNERS)}; got {data["runner"]!r}')
  if 'gin_files' in data:
    given['gin_files'] = errors.gin_files('gin_files', data['gin_files'])
  if 'bindings' in data:
    given['bindings'] = errors.bindings('bindings', data['bindings'])
  if 'references' in data:
    given['references'] = _references(errors, data['references'], bool(data.get('evaluations')))
  # The names that templates and plots may use, also of references with problems of their own.
  names = list(data['references']) if isinstance(data.get('references'), Mapping) else []
  errors.known_references('bindings', given.get('bindings', {}), names)
  given['axes'] = _axes(errors, data.get('axes'), names)
  _check_experiment_files(errors, bool(data.get('gin_files')), given['axes'])
  if 'seeds' in data:
    given['seeds'] = _seeds(errors, data['seeds'])
  if 'evaluations' in data:
    given['evaluations'] = _evaluations(errors, data['evaluations'], names)
  if 'plot' in data:
    given['plots'] = _plots(
        errors, data['plot'], given['axes'], names, given.get('evaluations', ())
    )
  errors.raise_if_any(data['name'] if isinstance(data.get('name'), str) else source)
  return Spec(**given)


def _references(errors: '_Errors', data: Any, evaluated: bool) -> Dict[str, Reference]:
  """`evaluated`: whether the spec has evaluations (all that a checkpoint reference runs)."""
  if not isinstance(data, Mapping):
    errors.add('references', 'must be an object {NAME: reference}')
    return {}
  references: Dict[str, Reference] = {}
  for name, ref in data.items():
    field = f'references.{name}'
    if not IDENTIFIER.fullmatch(name):
      errors.add(field, 'a reference name is an identifier (letters, digits, "_")')
    if not isinstance(ref, Mapping):
      errors.add(field, 'must be an object')
      continue
    errors.keys(field, ref, REFERENCE_KEYS)
    given: Dict[str, Any] = {}
    if 'seeded' in ref:
      if isinstance(ref['seeded'], bool):
        given['seeded'] = ref['seeded']
      else:
        errors.add(f'{field}.seeded', f'must be true or false; got {ref["seeded"]!r}')
    if 'checkpoint' in ref:
      if isinstance(ref['checkpoint'], str) and ref['checkpoint']:
        given['checkpoint'] = ref['checkpoint']
      else:
        errors.add(f'{field}.checkpoint', 'must be a checkpoint path')
      if ref.get('seeded'):
        errors.add(f'{field}.seeded', 'a checkpoint reference is not trained, so has no seeds')
      if not evaluated:
        errors.add(
            f'{field}.checkpoint',
            'a checkpoint reference is only evaluated: the spec needs "evaluations"',
        )
    if not ref.get('gin_files'):
      errors.add(f'{field}.gin_files', 'a reference needs its experiment file(s)')
    given['gin_files'] = errors.gin_files(f'{field}.gin_files', ref.get('gin_files', []))
    if 'bindings' in ref:
      given['bindings'] = errors.bindings(f'{field}.bindings', ref['bindings'])
    reference = Reference(name=name, **given)
    _check_reference_templates(errors, field, reference, references)
    references[name] = reference
  return references


def _check_reference_templates(
    errors: '_Errors', field: str, reference: Reference, earlier: Mapping[str, Reference]
) -> None:
  """A reference reads only references listed before it, and seeds only when seeded."""
  templated = [(f'{field}.bindings.{key}', value) for key, value in reference.bindings.items()]
  if reference.checkpoint is not None:
    templated.append((f'{field}.checkpoint', reference.checkpoint))
  for where, value in templated:
    for template in TEMPLATE.findall(value):
      if template == 'seed' and not reference.seeded:
        errors.add(where, '{seed} in an unseeded reference')
      elif template.startswith('ref:') and template[4:] not in earlier:
        errors.add(
            where,
            f'{{{template}}}: a reference may only use '
            f'references listed before it ({list(earlier)})',
        )
      elif template.startswith('ref:') and earlier[template[4:]].seeded and not reference.seeded:
        errors.add(where, f'{{{template}}} is seeded; an unseeded reference cannot use it')


def _axes(errors: '_Errors', data: Any, references: Sequence[str]) -> Tuple[Axis, ...]:
  if not isinstance(data, list) or not data:
    errors.add('axes', 'must be a non-empty list of axes')
    return ()
  axes, names = [], set()
  for i, axis in enumerate(data):
    field = f'axes[{i}]'
    if not isinstance(axis, Mapping):
      errors.add(field, 'must be an object')
      continue
    errors.keys(field, axis, AXIS_KEYS, required=AXIS_KEYS)
    name = axis.get('name')
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
      errors.add(f'{field}.name', f'an axis name is an identifier; got {name!r}')
    elif name in names:
      errors.add(f'{field}.name', f'duplicate axis {name!r}')
    else:
      names.add(name)
    axes.append(Axis(name, _axis_values(errors, f'{field}.values', axis.get('values'), references)))
  return tuple(axes)


def _axis_values(
    errors: '_Errors', field: str, data: Any, references: Sequence[str]
) -> Tuple[AxisValue, ...]:
  items = _labelled(errors, field, data, VALUE_KEYS, references, non_empty=True)
  return tuple(AxisValue(item.get('label'), **given) for _, item, given in items)


def _labelled(
    errors: '_Errors',
    field: str,
    data: Any,
    keys: Sequence[str],
    references: Sequence[str],
    *,
    non_empty: bool,
) -> List[Tuple[str, Mapping, Dict[str, Any]]]:
  """A list of labelled objects (axis values, evaluations): (field, object, the settings they
  share, validated: `gin_files` where `keys` allows them, `bindings` naming known references)
  of each object that is one."""
  if not isinstance(data, list) or (non_empty and not data):
    errors.add(field, 'must be a non-empty list' if non_empty else 'must be a list')
    return []
  errors.labels(field, [item.get('label') if isinstance(item, Mapping) else None for item in data])
  items = []
  for i, item in enumerate(data):
    item_field = f'{field}[{i}]'
    if not isinstance(item, Mapping):
      errors.add(item_field, 'must be an object')
      continue
    errors.keys(item_field, item, keys, required=('label',))
    given: Dict[str, Any] = {}
    if 'gin_files' in keys and 'gin_files' in item:
      given['gin_files'] = errors.gin_files(f'{item_field}.gin_files', item['gin_files'])
    if 'bindings' in item:
      given['bindings'] = errors.bindings(f'{item_field}.bindings', item['bindings'])
      errors.known_references(f'{item_field}.bindings', given['bindings'], references)
    items.append((item_field, item, given))
  return items


def _check_experiment_files(errors: '_Errors', spec_files: bool, axes: Sequence[Axis]) -> None:
  """Every run needs an experiment file: the spec's, or one of every value of an axis."""
  if (
      axes
      and not spec_files
      and not any(axis.values and all(value.gin_files for value in axis.values) for axis in axes)
  ):
    errors.add(
        'gin_files',
        'every run needs an experiment file: give "gin_files" to the spec, '
        'or to every value of one axis',
    )


def _seeds(errors: '_Errors', data: Any) -> Tuple[int, ...]:
  if (
      not isinstance(data, list)
      or not data
      or len(set(map(repr, data))) != len(data)
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in data)
  ):
    errors.add('seeds', f'must be a non-empty list of distinct integers >= 0; got {data!r}')
    return ()
  return tuple(data)


def _evaluations(errors: '_Errors', data: Any, references: Sequence[str]) -> Tuple[Evaluation, ...]:
  evaluations = []
  for field, item, given in _labelled(
      errors, 'evaluations', data, EVALUATION_KEYS, references, non_empty=False
  ):
    if 'num_samples' in item:
      samples = item['num_samples']
      if isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1:
        given['num_samples'] = samples
      else:
        errors.add(f'{field}.num_samples', f'must be an integer >= 1; got {samples!r}')
    evaluations.append(Evaluation(item.get('label'), **given))
  return tuple(evaluations)


def _plots(
    errors: '_Errors',
    data: Any,
    axes: Sequence[Axis],
    references: Sequence[str],
    evaluations: Sequence[Evaluation],
) -> Tuple[Plot, ...]:
  if not isinstance(data, list):
    plot = _plot(errors, 'plot', data, axes, references, evaluations)
    # One plot is drawn into <name>.png: a name of its own is no file suffix.
    return (dataclasses.replace(plot, name=None),) if plot else ()
  if not data:
    errors.add('plot', 'must be a plot object or a non-empty list of them')
  names = [p.get('name') if isinstance(p, Mapping) else None for p in data]
  if any(not isinstance(n, str) or not SAFE_NAME.fullmatch(n) for n in names):
    errors.add('plot', 'each plot of a list needs a "name" (a file-name suffix)')
  elif len(set(names)) != len(names):
    errors.add('plot', f'duplicate plot names {names}')
  plots = [
      _plot(errors, f'plot[{i}]', plot, axes, references, evaluations)
      for i, plot in enumerate(data)
  ]
  return tuple(plot for plot in plots if plot)


def _plot(
    errors: '_Errors',
    field: str,
    data: Any,
    axes: Sequence[Axis],
    references: Sequence[str],
    evaluations: Sequence[Evaluation],
) -> Optional[Plot]:
  if not isinstance(data, Mapping):
    errors.add(field, 'must be an object')
    return None
  kind = data.get('kind')
  if not isinstance(kind, str) or kind not in PLOT_KINDS:
    errors.add(f'{field}.kind', f'unknown plot kind {kind!r}; one of {sorted(PLOT_KINDS)}')
    return None
  required, optional, _ = PLOT_KINDS[kind]
  errors.keys(field, data, PLOT_COMMON_KEYS + required + optional, required=required)
  _check_plot_axes(errors, field, data, axes)
  if not isinstance(data.get('log_x', False), bool):
    errors.add(f'{field}.log_x', f'must be true or false; got {data["log_x"]!r}')
  if data.get('rows') is not None and data.get('rows') == data.get('columns'):
    errors.add(f'{field}.columns', 'rows and columns must be different axes')
  if not isinstance(data.get('references', []), list):
    errors.add(f'{field}.references', 'must be a list of reference names')
    return None
  _check_plot_runs(errors, field, data, references, evaluations)
  for key in ('metric', 'x_metric', 'y_metric'):
    if key in data and (not isinstance(data[key], str) or not data[key]):
      errors.add(f'{field}.{key}', 'must be a metric name, e.g. "accuracy"')
  given = {key: data[key] for key in PLOT_COMMON_KEYS + required + optional if key in data}
  given['references'] = tuple(data.get('references', ()))
  given['evaluation'] = data.get('evaluation', evaluations[0].label if evaluations else None)
  if kind == 'quality_diversity':
    given['evaluations'] = tuple(data.get('evaluations', _sampled(evaluations)))
  return Plot(**given)


def _sampled(evaluations: Sequence[Evaluation]) -> List[str]:
  """The labels of the evaluations with several samples, which Self-BLEU compares."""
  return [e.label for e in evaluations if e.num_samples >= 2]


def _check_plot_axes(errors: '_Errors', field: str, data: Mapping, axes: Sequence[Axis]) -> None:
  """The plot's axis keys name axes, and every axis with several values is one of them."""
  kind = data['kind']
  axis_keys = PLOT_KINDS[kind][2]
  by_name = {axis.name: axis for axis in axes}
  used = set()
  for key in axis_keys:
    if key in data:
      if data[key] not in by_name:
        errors.add(f'{field}.{key}', f'no axis {data[key]!r} (axes: {sorted(by_name)})')
      used.add(data[key])
  for name, axis in by_name.items():
    if name not in used and len(axis.values) > 1:
      errors.add(
          field,
          f'axis {name!r} has several values but the {kind} plot does not '
          f'use it (its axis keys: {list(axis_keys)}); its points would overlap',
      )
  if kind == 'lines' and data.get('x') in by_name:
    for value in by_name[data['x']].values:
      try:
        float(value.label)
      except (TypeError, ValueError):
        errors.add(
            f'{field}.x',
            f'a lines plot needs numeric labels on axis {data["x"]!r}; got {value.label!r}',
        )


def _check_plot_runs(
    errors: '_Errors',
    field: str,
    data: Mapping,
    references: Sequence[str],
    evaluations: Sequence[Evaluation],
) -> None:
  """The references and evaluations that the plot names exist."""
  for ref in ([data['baseline']] if 'baseline' in data else []) + data.get('references', []):
    if ref not in references:
      errors.add(
          f'{field}.baseline' if ref == data.get('baseline') else f'{field}.references',
          f'no reference {ref!r} (references: {sorted(references)})',
      )
  labels = [e.label for e in evaluations]
  if 'evaluation' in data and data['evaluation'] not in labels:
    errors.add(
        f'{field}.evaluation',
        f'no evaluation {data["evaluation"]!r} (evaluations: '
        f"{labels}; without evaluations the trainer's final evaluation is used)",
    )
  if data['kind'] != 'quality_diversity':
    return
  sampled = _sampled(evaluations)
  chosen = data.get('evaluations', sampled)
  if not isinstance(chosen, list):
    errors.add(f'{field}.evaluations', 'must be a list of evaluation labels')
    chosen = []
  elif not chosen:
    errors.add(f'{field}.evaluations', 'Self-BLEU needs evaluations with num_samples >= 2')
  for label in chosen:
    if label not in sampled:
      errors.add(
          f'{field}.evaluations',
          f'{label!r} is not an evaluation with '
          'num_samples >= 2 (Self-BLEU compares several samples per input)',
      )


class _Errors:
  """Collects the problems of a spec, each as '<field>: <problem>'."""

  def __init__(self, repo_dir: str):
    self.repo_dir = repo_dir
    self.messages: List[str] = []

  def add(self, field: str, problem: str) -> None:
    self.messages.append(f'{field}: {problem}')

  def keys(
      self, field: str, mapping: Mapping, allowed: Sequence[str], required: Sequence[str] = ()
  ) -> None:
    for key in mapping:
      if key not in allowed:
        self.add(f'{field}.{key}' if field else key, f'unknown key (allowed: {", ".join(allowed)})')
    for key in required:
      if key not in mapping:
        self.add(f'{field}.{key}' if field else key, 'missing')

  def gin_files(self, field: str, files: Any) -> Tuple[str, ...]:
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
      self.add(field, 'must be a list of gin file paths')
      return ()
    for path in files:
      if not os.path.isfile(os.path.join(self.repo_dir, path)):
        self.add(field, f'no gin file {path!r} (relative to {self.repo_dir})')
    return tuple(files)

  def bindings(self, field: str, bindings: Any) -> Dict[str, str]:
    if not isinstance(bindings, Mapping):
      self.add(field, 'must be an object {NAME: "gin literal"}')
      return {}
    for key, value in bindings.items():
      if not isinstance(value, str):
        self.add(
            f'{field}.{key}',
            f'must be a string holding a gin literal, e.g. "0.5" or "\'jsd\'"; got {value!r}',
        )
    return {key: value for key, value in bindings.items() if isinstance(value, str)}

  def known_references(
      self, field: str, bindings: Mapping[str, str], references: Sequence[str]
  ) -> None:
    """{ref:NAME} outside the references names one of them."""
    for key, value in bindings.items():
      for template in TEMPLATE.findall(value):
        if template.startswith('ref:') and template[4:] not in references:
          self.add(
              f'{field}.{key}',
              f'{{{template}}}: no reference {template[4:]!r} '
              f'(references: {sorted(references)})',
          )

  def labels(self, field: str, labels: Iterable[Any]) -> None:
    seen: Dict[str, str] = {}
    for i, label in enumerate(labels):
      if not isinstance(label, str) or not label:
        self.add(f'{field}[{i}].label', f'must be a non-empty string; got {label!r}')
      elif label in seen:
        self.add(f'{field}[{i}].label', f'duplicate label {label!r}')
      elif safe(label) in seen.values():
        self.add(
            f'{field}[{i}].label',
            f'{label!r} gives the same directory name {safe(label)!r} as another label',
        )
      else:
        seen[label] = safe(label)

  def raise_if_any(self, source: str) -> None:
    if self.messages:
      raise SpecError(f'{source}: invalid spec:\n  ' + '\n  '.join(self.messages))
