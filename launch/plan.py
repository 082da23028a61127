r"""A spec's runs and their commands as values, and the merged plan of several specs.

`expand(spec, root)` gives the runs of a spec in the order they run: its references first, in
the spec's order, then the cartesian product of its axes, seed-major (every point of seed 0,
then of seed 1, ...: a partly finished sweep already has one seed of every point). A run is
one training command (none for a checkpoint reference), then one evaluation command per
evaluation of the spec, or K commands with RANDOM_SEED 0..K-1 for one with `num_samples` K.

    <root>/<name>/<axis>_<label>__<axis>_<label>/seed_<k>    MODEL_DIR of an axis run
    <root>/<name>/ref_<NAME>[/seed_<k>]                      a reference (seeded or not)
    <MODEL_DIR>/eval_<label>[/sample_<i>]                    EVAL_OUTPUT_DIR of an evaluation

Bindings are gin literals; the order on the command line is MODEL_DIR, RANDOM_SEED (seeded
runs), the spec's bindings, the axis values' bindings, then the overrides (later wins).
Evaluations get the run's bindings without MODEL_DIR, then CHECKPOINT_PATH, EVAL_OUTPUT_DIR,
the evaluation's bindings and the overrides again. Gin files: the runner's run file, the
spec's (or the reference's), the axis values', then the extra ones. Templates in binding values:
{root}, {seed}, {ref:NAME} (the model directory of reference NAME, of the same seed when that
reference is seeded, or the checkpoint of a checkpoint reference); a checkpoint reference's path
takes {root} and {ref:NAME} too.

A `Command` is a value, made an argv only where a process starts (`Command.argv`). The run
directories in its bindings are parts of their own (`Text`), so `merge` can rename the
directories a run reads to the first copies of theirs and then compare whole commands: that is
how several specs' identical runs become one job.
"""

import dataclasses
import itertools
import operator
import os
import posixpath
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from launch.spec import TEMPLATE
from launch.spec import Axis
from launch.spec import AxisValue
from launch.spec import Spec
from launch.spec import SpecError
from launch.spec import safe

STEP_DIR = re.compile(r'checkpoint_\d+')


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run's MODEL_DIR, where a path or a binding names it."""

  path: str


@dataclasses.dataclass(frozen=True)
class Text:
  """A path or a gin literal, with the run directories it names kept as parts of their own, so
  that merging runs renames a directory, never a substring that reads like one."""

  parts: Tuple[Union[str, RunDir], ...]
  gin_string: bool = False  # rendered as a gin string literal: quoted, with \ and ' escaped

  def __str__(self) -> str:
    text = ''.join(part if isinstance(part, str) else part.path for part in self.parts)
    if self.gin_string:
      return "'" + text.replace('\\', '\\\\').replace("'", "\\'") + "'"
    return text

  def below(self, *names: str) -> 'Text':
    """The path `names` below this one."""
    return Text(self.parts + (posixpath.join('/', *names),), self.gin_string)

  def renamed(self, links: Mapping[str, str]) -> 'Text':
    """The run directories that `links` maps replaced by theirs."""
    return Text(
        tuple(
            RunDir(links.get(part.path, part.path)) if isinstance(part, RunDir) else part
            for part in self.parts
        ),
        self.gin_string,
    )


def _literal(text: str) -> Text:
  return Text((text,))


def _run_dir(path: str) -> Text:
  return Text((RunDir(path),))


@dataclasses.dataclass(frozen=True)
class Command:
  """One process: `python -m <module> --gin_file=<file> ... --gin.<KEY>=<VALUE> ... <flags>`."""

  kind: str  # 'train' or 'eval'
  module: str
  gin_files: Tuple[str, ...]  # the runner's run file first
  bindings: Tuple[Tuple[str, Text], ...]  # in command-line order: a later one wins
  output: Text  # MODEL_DIR (train) or EVAL_OUTPUT_DIR (eval)
  log_name: str  # its logs' name, e.g. 'train' or 'eval_T_1_sample_0'
  flags: Tuple[str, ...] = ()

  @property
  def output_dir(self) -> str:
    return str(self.output)

  def gin_bindings(self) -> Dict[str, str]:
    return {key: str(value) for key, value in self.bindings}

  def argv(self, python: str = 'python') -> List[str]:
    return [
        python,
        '-m',
        self.module,
        *[f'--gin_file={path}' for path in self.gin_files],
        *[f'--gin.{key}={value}' for key, value in self.gin_bindings().items()],
        *self.flags,
    ]

  def renamed(self, links: Mapping[str, str]) -> 'Command':
    """This command with the run directories that `links` maps replaced by theirs."""
    return dataclasses.replace(
        self,
        bindings=tuple((key, value.renamed(links)) for key, value in self.bindings),
        output=self.output.renamed(links),
    )

  def setting(self, *without: str) -> tuple:
    """What the process computes: equal for two commands whose bindings, but `without`, are
    the same in any order (and whose module, gin files and flags are the same)."""
    return (
        self.module,
        self.gin_files,
        self.flags,
        frozenset((key, str(value)) for key, value in self.bindings if key not in without),
    )


@dataclasses.dataclass(frozen=True)
class Run:
  """One training (or one evaluated checkpoint) of a sweep, with its commands."""

  name: str  # '<spec>/<point>/seed_<k>', relative to the root
  point: str  # '<axis>_<label>__...' or 'ref_<NAME>': the seeds' common dir
  reference: Optional[str]  # the reference's name; None for an axis run
  labels: Dict[str, str]  # axis name -> label ({} for a reference)
  seed: Optional[int]  # None for an unseeded reference
  model_dir: str  # where its outputs go
  checkpoint: str  # what its evaluations (and {ref:NAME}) read
  gin_files: List[str]  # experiment files (without the run file)
  bindings: Dict[str, str]  # resolved training bindings, in command-line order
  eval_dirs: Dict[str, List[str]]  # evaluation label -> its output dir(s), one per sample
  commands: List[Command]
  needs: List[str]  # names of the reference runs it reads


def point_name(axes: Sequence[Axis], labels: Mapping[str, str]) -> str:
  """The directory of an axis point: '<axis>_<label>' of every axis, joined by '__'."""
  return '__'.join(f'{axis.name}_{safe(labels[axis.name])}' for axis in axes)


def expand(
    spec: Spec,
    root: str,
    *,
    seeds: Optional[Sequence[int]] = None,
    overrides: Optional[Mapping[str, str]] = None,
    extra_gin_files: Sequence[str] = (),
    multiprocess: bool = False,
) -> List[Run]:
  """The runs of `spec` under `root`, in the order they run: references, then axis points.

  Args:
    spec: the sweep.
    root: the sweep's output root (a path or a gs:// URL), as it will appear in the commands.
    seeds: replaces the spec's seeds (seeded references included).
    overrides: bindings added to every run and evaluation, after all others (--set).
    extra_gin_files: gin files parsed after every run's experiment files (--gin_file).
    multiprocess: start the standalone trainer with --multiprocess (TPU pod slices).
  """
  seeds = list(spec.seeds if seeds is None else seeds)
  if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
    raise SpecError(f'--seeds: give distinct seeds >= 0; got {seeds}')
  expansion = _Expansion(spec, root, dict(overrides or {}), list(extra_gin_files), multiprocess)
  runs = []
  # A reference's runs come before the runs that read it: building one makes {ref:NAME} known.
  for name, reference in spec.references.items():
    for seed in (seeds if reference.seeded else [None]):
      runs.append(expansion.reference(name, seed))
  for seed in seeds:
    for values in itertools.product(*[enumerate(axis.values) for axis in spec.axes]):
      runs.append(expansion.point(values, seed))
  return runs


# A binding before resolution: (name, value with templates, the spec field it comes from).
_Binding = Tuple[str, str, str]


class _Expansion:
  """Builds the runs of one spec, and knows what {ref:NAME} stands for at each seed."""

  def __init__(
      self,
      spec: Spec,
      root: str,
      overrides: Dict[str, str],
      extra_gin_files: List[str],
      multiprocess: bool,
  ):
    self.spec, self.root, self.overrides = spec, root, overrides
    self.extra_gin_files, self.multiprocess = extra_gin_files, multiprocess
    # Reference name -> {seed (None when unseeded): (what {ref:NAME} stands for, run name)}.
    self.references: Dict[str, Dict[Optional[int], Tuple[Text, str]]] = {}

  def reference(self, name: str, seed: Optional[int]) -> Run:
    reference = self.spec.references[name]
    point, needs = f'ref_{name}', []
    if reference.checkpoint is None:
      checkpoint = _run_dir(self._model_dir(point, seed))
    else:
      checkpoint = self._resolve(
          reference.checkpoint, f'references.{name}.checkpoint', point, seed, needs
      )
    # Known before its evaluations are built: they may name it.
    self.references.setdefault(name, {})[seed] = (checkpoint, self._name(point, seed))
    bindings = [
        (key, value, f'references.{name}.bindings') for key, value in reference.bindings.items()
    ]
    return self._run(point, name, {}, seed, checkpoint, reference.gin_files, bindings, needs)

  def point(self, values: Sequence[Tuple[int, AxisValue]], seed: int) -> Run:
    """The run of one value per axis (each with its index in the axis) at `seed`."""
    labels = {axis.name: value.label for axis, (_, value) in zip(self.spec.axes, values)}
    point = point_name(self.spec.axes, labels)
    gin_files = list(self.spec.gin_files)
    bindings = [(key, value, 'bindings') for key, value in self.spec.bindings.items()]
    for axis_index, (value_index, value) in enumerate(values):
      gin_files += value.gin_files
      bindings += [
          (key, v, f'axes[{axis_index}].values[{value_index}].bindings')
          for key, v in value.bindings.items()
      ]
    checkpoint = _run_dir(self._model_dir(point, seed))
    return self._run(point, None, labels, seed, checkpoint, gin_files, bindings, [])

  def _run(
      self,
      point: str,
      reference: Optional[str],
      labels: Dict[str, str],
      seed: Optional[int],
      checkpoint: Text,
      gin_files: Sequence[str],
      bindings: Sequence[_Binding],
      needs: List[str],
  ) -> Run:
    model_dir = self._model_dir(point, seed)
    train_bindings = {'MODEL_DIR': Text((RunDir(model_dir),), gin_string=True)}
    if seed is not None:
      train_bindings['RANDOM_SEED'] = _literal(str(seed))
    for key, value, field in bindings:
      _bind(train_bindings, key, self._resolve(value, f'{field}.{key}', point, seed, needs))
    for key, value in self.overrides.items():
      _bind(train_bindings, key, _literal(value))
    files = list(gin_files) + self.extra_gin_files
    commands = []
    if reference is None or self.spec.references[reference].checkpoint is None:  # trained
      commands.append(self._train_command(files, train_bindings, model_dir))
    eval_dirs = {}
    for i, evaluation in enumerate(self.spec.evaluations):
      evaluations = [
          self._evaluation(
              i, sample, train_bindings, files, model_dir, checkpoint, point, seed, needs
          )
          for sample in range(evaluation.num_samples)
      ]
      eval_dirs[evaluation.label] = [command.output_dir for command in evaluations]
      commands += evaluations
    return Run(
        name=self._name(point, seed),
        point=point,
        reference=reference,
        labels=labels,
        seed=seed,
        model_dir=model_dir,
        checkpoint=str(checkpoint),
        gin_files=files,
        bindings={key: str(value) for key, value in train_bindings.items()},
        eval_dirs=eval_dirs,
        commands=commands,
        needs=list(dict.fromkeys(needs)),
    )

  def _train_command(
      self, files: Sequence[str], train_bindings: Mapping[str, Text], model_dir: str
  ) -> Command:
    runner = self.spec.runner
    # The standalone trainer's flag for running on every host of a pod slice.
    multiprocess = self.multiprocess and runner.train_module == 'gkd_t5x.train'
    return Command(
        'train',
        runner.train_module,
        (runner.train_gin, *files),
        tuple(train_bindings.items()),
        _run_dir(model_dir),
        'train',
        ('--multiprocess',) if multiprocess else (),
    )

  def _evaluation(
      self,
      index: int,
      sample: int,
      train_bindings: Mapping[str, Text],
      files: Sequence[str],
      model_dir: str,
      checkpoint: Text,
      point: str,
      seed: Optional[int],
      needs: List[str],
  ) -> Command:
    """Sample `sample` of the spec's evaluation `index` of one run."""
    evaluation, runner = self.spec.evaluations[index], self.spec.runner
    samples = evaluation.num_samples
    name = f'eval_{safe(evaluation.label)}'
    output = _run_dir(model_dir).below(name, *([f'sample_{sample}'] if samples > 1 else []))
    bindings = {key: value for key, value in train_bindings.items() if key != 'MODEL_DIR'}
    _bind(bindings, 'CHECKPOINT_PATH', dataclasses.replace(checkpoint, gin_string=True))
    _bind(bindings, 'EVAL_OUTPUT_DIR', dataclasses.replace(output, gin_string=True))
    if runner.eval_module == 't5x.eval' and not STEP_DIR.fullmatch(
        posixpath.basename(str(checkpoint).rstrip('/'))
    ):
      # T5X's evaluator restores one 'specific' step by default; 'latest' takes a run dir.
      _bind(bindings, 'utils.RestoreCheckpointConfig.mode', _literal("'latest'"))
    for key, value in evaluation.bindings.items():
      _bind(
          bindings,
          key,
          self._resolve(value, f'evaluations[{index}].bindings.{key}', point, seed, needs),
      )
    for key, value in self.overrides.items():
      _bind(bindings, key, _literal(value))
    if samples > 1:
      _bind(bindings, 'RANDOM_SEED', _literal(str(sample)))
    return Command(
        'eval',
        runner.eval_module,
        (runner.eval_gin, *files),
        tuple(bindings.items()),
        output,
        name + (f'_sample_{sample}' if samples > 1 else ''),
    )

  def _resolve(
      self, value: str, field: str, point: str, seed: Optional[int], needs: List[str]
  ) -> Text:
    """`value` with its templates replaced; the runs of the references it reads go to `needs`."""
    parts, end = [], 0
    for match in TEMPLATE.finditer(value):
      parts.append(value[end : match.start()])
      parts += self._template(match.group(1), field, point, seed, needs).parts
      end = match.end()
    parts.append(value[end:])
    return Text(tuple(part for part in parts if part != ''))

  def _template(
      self, key: str, field: str, point: str, seed: Optional[int], needs: List[str]
  ) -> Text:
    if key == 'root':
      return _literal(self.root)
    if key == 'seed':
      if seed is None:
        raise SpecError(f'{field}: {{seed}} in unseeded run {point}')
      return _literal(str(seed))
    known = self.references[key[4:]]
    if None not in known and seed not in known:
      raise SpecError(f'{field}: {{{key}}} is seeded, so unseeded run {point} cannot use it')
    path, run = known[None if None in known else seed]
    needs.append(run)
    return path

  def _model_dir(self, point: str, seed: Optional[int]) -> str:
    # posixpath keeps gs:// roots intact.
    return posixpath.join(self.root, self._name(point, seed))

  def _name(self, point: str, seed: Optional[int]) -> str:
    return posixpath.join(self.spec.name, point, *([f'seed_{seed}'] if seed is not None else []))


def _bind(bindings: Dict[str, Text], key: str, value: Text) -> None:
  # A binding set again moves to the end, so the command line reads in order of precedence.
  bindings.pop(key, None)
  bindings[key] = value


Item = TypeVar('Item')


def select(
    items: Sequence[Item], pattern: str, key: Callable[[Item], str] = operator.attrgetter('name')
) -> List[Item]:
  """The items (runs or jobs) whose name matches `pattern` (re.search), with every item they
  need, directly or not: an item's `needs` are the `key`s of others."""
  regex = re.compile(pattern)
  by_key = {key(item): item for item in items}
  wanted = {key(item) for item in items if regex.search(item.name)}
  frontier = list(wanted)
  while frontier:
    for needed in by_key[frontier.pop()].needs:
      if needed not in wanted:
        wanted.add(needed)
        frontier.append(needed)
  return [item for item in items if key(item) in wanted]


# ------------------------------------------------------------------------------- merging


@dataclasses.dataclass(frozen=True)
class Job:
  """One command of a merged plan."""

  name: str  # '<run name>: train' or '<run name>: eval <label>'
  command: Command  # with the run directories it reads renamed to their first copies
  log: str  # the job's log file
  needs: Tuple[str, ...]  # output directories of the trainings it reads

  @property
  def kind(self) -> str:
    return self.command.kind

  @property
  def output_dir(self) -> str:
    return self.command.output_dir


@dataclasses.dataclass(frozen=True)
class Plan:
  jobs: List[Job]
  links: Dict[str, str]  # run directory -> the directory of the identical first run


def merge(specs: Sequence[Spec], root: str) -> Plan:
  """The jobs of `specs` under `root`, in spec order, each distinct training and evaluation
  once.

  A training whose command equals an earlier one's up to its MODEL_DIR, once the run
  directories it reads are renamed to their first copies, is that earlier training: its run
  directory becomes a link to the earlier one's. An evaluation equal to an earlier one is
  that one.

  Raises:
    ValueError: two different evaluations write into one directory.
  """
  links: Dict[str, str] = {}
  trained: Dict[tuple, str] = {}  # a training's setting -> its first MODEL_DIR
  evaluated: Dict[tuple, str] = {}  # an evaluation's setting -> its first EVAL_OUTPUT_DIR
  jobs: List[Job] = []
  for spec in specs:
    runs = expand(spec, root)
    model_dirs = {run.name: run.model_dir for run in runs}
    for run in runs:
      needs = [links.get(model_dirs[name], model_dirs[name]) for name in run.needs]
      needs = [need for need in needs if need in trained.values()]  # not checkpoint references
      for command in run.commands:
        # Renamed one by one: a training merged here renames its own evaluations.
        command = command.renamed(links)
        if command.kind == 'train':
          setting = command.setting('MODEL_DIR')
          if setting in trained:
            links[run.model_dir] = trained[setting]
            continue
          trained[setting] = run.model_dir
          jobs.append(
              Job(
                  f'{run.name}: train',
                  command,
                  os.path.join(run.model_dir, 'logs', 'train.log'),
                  tuple(needs),
              )
          )
          continue
        if command.setting() in evaluated:
          continue
        if command.output_dir in evaluated.values():
          raise ValueError(
              f'{run.name}: evaluation {command.log_name!r} writes to '
              f'{command.output_dir}, where another evaluation of the same run (in '
              'another spec, with other settings) writes: give it its own label.'
          )
        evaluated[command.setting()] = command.output_dir
        train_dir = links.get(run.model_dir, run.model_dir)
        own = [train_dir] if train_dir in trained.values() else []
        jobs.append(
            Job(
                f'{run.name}: {command.log_name.replace("_", " ", 1)}',
                command,
                os.path.join(train_dir, 'logs', f'{command.log_name}.log'),
                tuple(dict.fromkeys(needs + own)),
            )
        )
  return Plan(jobs, links)
