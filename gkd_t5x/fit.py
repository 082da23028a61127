r"""Will it fit? A run's train and evaluation steps compiled for a TPU slice, on a CPU host.

    python -m gkd_t5x.fit --gin_file=gin/experiments/xsum/gkd.gin --topology=v5e:4x4 \
        [--num_slices=N] [--batch_size=N|max] [--num_partitions=N|search] [--gin.NAME=VALUE]

The gin files are the trainer's (gin/runs/fit.gin is parsed first; gin/runs/train.gin may be
given too). The command builds the step `gkd_t5x.train` runs (`trainer.make_layout`,
`trainer.jit_train_step`: the same logical axis rules, NUM_PARTITIONS, shardings and donation)
and the evaluation steps (`eval_steps.jit_eval_steps`, at EVAL_BATCH_SIZE), from abstract
params, optimizer state and batch, so nothing is allocated, and compiles them with libtpu for
the slice's devices (`topologies`). It prints one JSON line, then a table:

  memory          per device (one per chip; two per v3 chip): XLA's argument, output, temp,
                  alias bytes and total = argument + output + temp - alias, of the train step
                  and of the evaluation steps; the device's HBM and the margin left
  fits            every step's total within the HBM
  teacher_bytes   the teacher's params in all and per device (sharded, not replicated)
  flops, hbm_bytes   per step over all devices: XLA's count (`cost_analysis`, per device x
                  devices; a while loop's body counted once) and the analytic count
                  (`costs`: every decoding step counted) of the on-policy (lambda = 1) step
  roofline        the analytic counts over the slice's peak bfloat16 FLOP/s and HBM bandwidth:
                  a lower bound on the step time, and the target tokens (B x L) per second it
                  allows
  compile_s       seconds to compile each step

`--batch_size max` searches the largest global batch that fits; `--num_partitions search`
the NUM_PARTITIONS of highest roofline throughput that fits. A run that does not fit exits
with status 1 after saying which settings would change that and what each gives.

Several teachers (`GKDModel.teachers`) each score their tasks' rows of the training batch, laid
out over the data shards as the trainer lays them out (`mixture_rows.plan`, from
MIXTURE_OR_TASK_NAME's rates); the evaluation steps are compiled with the largest teacher
scoring every row, as an evaluation batch holds one task. Their params all count as the
teacher's, and the analytic FLOPs count each teacher's forward pass on its rows.

The paper's vocabulary (a SentencePiece file on GCS) is replaced by token ids of its size,
and GSM8K's calculator (text forcing in decoding) is left out: the step's shapes are the same.
"""

import dataclasses
import json
import math
import re
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import optax

import gin
from gkd_t5x import costs
from gkd_t5x import eval_steps
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import partitioning
from gkd_t5x import teachers
from gkd_t5x import topologies
from gkd_t5x import trainer
from gkd_t5x import vocabularies

FIT_GIN = 'gin/runs/fit.gin'
# The SentencePiece vocabulary of gin/models/vocabulary.gin: 32000 pieces and 100 extra ids.
T5_VOCAB_SIZE = 32100
# What each suggestion binds when a run does not fit.
CHUNK_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What shapes a run's steps (gin: gin/runs/fit.gin's macros)."""

  model: models.GKDModelBase
  optimizer: optax.GradientTransformation
  batch_size: int
  task_feature_lengths: Mapping[str, int]
  num_partitions: int
  eval_batch_size: int
  mixture_or_task_name: Optional[str] = None


@gin.configurable
def run_spec(
    *,
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    task_feature_lengths: Mapping[str, int],
    num_partitions: int = 1,
    eval_batch_size: Optional[int] = None,
    mixture_or_task_name: Optional[str] = None,
) -> RunSpec:
  return RunSpec(
      model,
      optimizer,
      batch_size,
      dict(task_feature_lengths),
      num_partitions,
      eval_batch_size or batch_size,
      mixture_or_task_name,
  )


def load_run(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> RunSpec:
  """The run of these gin files and bindings, after gin/runs/fit.gin (gin's config is reset)."""
  gin.clear_config(clear_constants=True)
  # A gin file that names seqio imports TensorFlow, whose C++ logging is noise here.
  with topologies.quiet_stderr():
    gin_utils.parse_gin([FIT_GIN, *gin_files], gin_bindings, finalize=False)
  vocabulary = gin.query_parameter('VOCABULARY/macro.value')
  if getattr(vocabulary, 'configurable', None) and 'SentencePiece' in vocabulary.configurable.name:
    gin.bind_parameter('VOCABULARY/macro.value', vocabularies.TokenIdVocabulary(T5_VOCAB_SIZE))
    gin.bind_parameter('models.GKDModel.calculator', False)
  # fit.gin binds the module `gkd_t5x.fit`, which is not `__main__` under `python -m`.
  from gkd_t5x import fit as fit_lib  # noqa: PLW0406

  return fit_lib.run_spec()


def _sharded_bytes(tree: Any) -> int:
  """Bytes of one device's shards of a tree of sharded `jax.ShapeDtypeStruct`s (the largest
  shard of each leaf)."""
  return sum(
      math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
      for leaf in jax.tree_util.tree_leaves(tree)
  )


def _routed(spec: RunSpec, batch_size: int, data_shards: int) -> models.GKDModelBase:
  """The run's model with several teachers' rows laid out as the trainer lays them out over
  `data_shards`; the model itself with one teacher or none.

  Raises:
    ValueError: several teachers without MIXTURE_OR_TASK_NAME, or rows the mixture's rates
      cannot split (`mixture_rows.plan`).
  """
  if spec.model.teachers is None:
    return spec.model
  if not spec.mixture_or_task_name:
    raise ValueError(
        'Several teachers (GKDModel.teachers) score the rows of their tasks: MIXTURE_OR_TASK_NAME '
        'must name the training mixture.'
    )
  # Imported here: a mixture's rates are seqio's, and the fit check of one teacher must run
  # where TensorFlow and seqio are not installed (accelerator images).
  from gkd_t5x import mixture_rows  # pylint: disable=g-import-not-at-top

  plan = mixture_rows.plan(
      spec.model.teachers, spec.mixture_or_task_name, batch_size, blocks=data_shards
  )
  return spec.model.with_routing(plan.routing)


def _largest_teacher(model: models.GKDModelBase, layout: trainer.StateLayout) -> Optional[str]:
  """The name of the teacher with the most params, of several; None for one or none."""
  if model.teachers is None:
    return None
  params = layout.abstract_frozen[models.TEACHER_COLLECTION]  # {teacher name: its params}
  return max(sorted(params), key=lambda name: costs.tree_bytes(params[name]))


def _teacher_flops(model: models.GKDModelBase, count, batch_size: int, lengths) -> Dict[str, int]:
  """The teacher's forward FLOPs (`count` of `costs`): each of several teachers on its rows."""
  if model.teachers is not None:
    rows = model.routing.rows(batch_size)
    flops = [
        count(model.teachers[name].module.config, n, lengths['inputs'], lengths['targets'])
        for name, n in zip(model.routing.names, rows)
    ]
    return {part: sum(f[part] for f in flops) for part in ('encode', 'decode')}
  if model.teacher_module is not None:
    return count(model.teacher_module.config, batch_size, lengths['inputs'], lengths['targets'])
  return {'encode': 0, 'decode': 0}


def _analytic(
    spec: RunSpec, model: models.GKDModelBase, layout: trainer.StateLayout, batch_size: int
) -> Dict[str, Any]:
  """Analytic FLOPs of both steps and HBM bytes of the on-policy one, over all devices, of
  `model` (the run's, routed)."""
  lengths = spec.task_feature_lengths
  shape = (batch_size, lengths['inputs'], lengths['targets'])
  decoder_only = not hasattr(model.module.config, 'num_encoder_layers')
  count = costs.decoder_only_matmul_flops if decoder_only else costs.matmul_flops
  teacher_flops = _teacher_flops(model, count, batch_size, lengths)
  config = model.module.config
  hbm = costs.step_hbm_bytes(
      layout.abstract_state['target'],
      layout.abstract_frozen.get(models.TEACHER_COLLECTION, {}),
      num_layers=config.num_layers if decoder_only else config.num_decoder_layers,
      kv_width=config.num_heads * config.head_dim,
      batch=batch_size,
      input_length=lengths['inputs'],
      target_length=lengths['targets'],
      activation_bytes=jax.numpy.dtype(config.dtype).itemsize,
      replicas=layout.mesh.shape[partitioning.DATA_AXIS],
  )
  return {'flops': costs.step_flops(count(config, *shape), teacher_flops), 'hbm_bytes': hbm}


_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
# libtpu's refusal of a program that does not fit, e.g. "RESOURCE_EXHAUSTED: ... the total
# memory required for HLO temporaries (43.14G) exceeds available HBM (15.75G)."
_REFUSAL = re.compile(r'required for (.*?) \(([\d.]+)([KMGT])\) exceeds available HBM')


def _unfit(needed: int, what: str, available: int, compile_s: float = 0.0) -> Dict[str, Any]:
  """A step's figures when it does not fit: `needed` bytes of `what` as its temp and total."""
  memory = dict.fromkeys(('argument', 'output', 'alias'), None)
  return {
      'memory': dict(memory, temp=needed, peak=needed),
      'refused': f'{what} need {_gib(needed)} per device, of {_gib(available)}',
      'xla_flops': None,
      'xla_bytes': None,
      'compile_s': compile_s,
  }


def _compile(fn, args, available: int) -> Dict[str, Any]:
  """Compiles `fn` for `args`: XLA's memory (`costs.memory_bytes`) and per-device FLOPs and
  bytes accessed, and the compile time. A program libtpu refuses as too large for HBM gets the
  bytes it names as temp and total (`_unfit`; the rest unknown: None), against `available`."""
  start = time.perf_counter()
  try:
    compiled = fn.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    match = _REFUSAL.search(str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not match:
      raise
    needed = int(float(match.group(2)) * _UNITS[match.group(3)])
    return _unfit(needed, f'libtpu: {match.group(1)}', available, time.perf_counter() - start)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      'memory': costs.memory_bytes(compiled),
      'xla_flops': float(cost.get('flops', 0.0)),
      'xla_bytes': float(cost.get('bytes accessed', 0.0)),
      'compile_s': time.perf_counter() - start,
  }


def _feature_lengths(spec: RunSpec) -> Dict[str, int]:
  """{model feature: length} of the run's unpacked batches (the model's feature converter)."""
  converter = spec.model.FEATURE_CONVERTER_CLS(pack=False)
  return converter.get_model_feature_lengths(spec.task_feature_lengths)


# Layouts by (model, optimizer, devices, NUM_PARTITIONS): deriving the optimizer state's
# shardings compiles its init for the devices, and a search asks for the same layout often.
_LAYOUTS: Dict[Any, trainer.StateLayout] = {}


def _layout(spec: RunSpec, devices: Tuple[Any, ...], num_partitions: int) -> trainer.StateLayout:
  """The run's layout on a mesh of `devices` (its batch shapes: one row of each feature)."""
  key = (spec.model, spec.optimizer, devices, num_partitions)
  if key not in _LAYOUTS:
    mesh = partitioning.make_mesh(num_partitions, devices)
    rules = partitioning.standard_logical_axis_rules()
    shapes = {name: (1, length) for name, length in _feature_lengths(spec).items()}
    _LAYOUTS[key] = trainer.make_layout(spec.model, spec.optimizer, mesh, rules, shapes)
  return _LAYOUTS[key]


def check(
    spec: RunSpec,
    devices: Sequence[Any],
    chip: topologies.Chip,
    *,
    batch_size: int,
    num_partitions: int,
    with_eval: bool = True,
) -> Dict[str, Any]:
  """Compiles the run's train step (and with `with_eval` its evaluation steps) on `devices`;
  returns the report's fields.

  Raises:
    ValueError: the batch or a model dimension does not split over the mesh, or several
      teachers' rows over the data shards.
  """
  layout = _layout(spec, tuple(devices), num_partitions)
  mesh = layout.mesh
  data_parallel = mesh.shape[partitioning.DATA_AXIS]
  for name, size in (('BATCH_SIZE', batch_size), ('EVAL_BATCH_SIZE', spec.eval_batch_size)):
    if size % data_parallel:
      raise ValueError(
          f'{name} = {size} does not split over the {data_parallel} data-parallel replicas of '
          f'{len(devices)} devices with NUM_PARTITIONS = {num_partitions}.'
      )
  model = _routed(spec, batch_size, data_parallel)
  rules = layout.rules
  shapes = lambda size: {name: (size, length) for name, length in _feature_lengths(spec).items()}
  layout = dataclasses.replace(layout, batch_shapes=shapes(batch_size))
  eval_layout = dataclasses.replace(layout, batch_shapes=shapes(spec.eval_batch_size))
  resident = _sharded_bytes((layout.abstract_state, layout.abstract_frozen))
  if resident > chip.hbm_bytes:  # nothing to compile: the arguments alone do not fit
    steps = {'train': _unfit(resident, 'train state and frozen networks', chip.hbm_bytes)}
    return _report(spec, model, layout, chip, steps, batch_size=batch_size, devices=len(devices))
  with partitioning.activate(mesh, rules):
    steps = {
        'train': _compile(
            trainer.jit_train_step(model, spec.optimizer, layout),
            trainer.abstract_step_args(layout),
            chip.hbm_bytes,
        )
    }
    if with_eval:
      _, frozen, batch, rng = trainer.abstract_step_args(eval_layout)
      largest = _largest_teacher(spec.model, layout)
      eval_model = (
          spec.model.with_routing(teachers.Routing.single(largest)) if largest else spec.model
      )
      loss_step, predict_step = eval_steps.jit_eval_steps(
          eval_model, mesh, layout.param_shardings, layout.frozen_shardings
      )
      for name, fn in (('eval_loss', loss_step), ('eval_predict', predict_step)):
        args = (layout.abstract_state['target'], frozen, batch, rng)
        steps[name] = _compile(fn, args, chip.hbm_bytes)
  return _report(spec, model, layout, chip, steps, batch_size=batch_size, devices=len(devices))


def _report(spec, model, layout, chip, steps, *, batch_size, devices) -> Dict[str, Any]:
  """The JSON line's fields from the compiled steps' figures (`model`: the run's, routed)."""
  analytic = _analytic(spec, model, layout, batch_size)
  total = max(step['memory']['peak'] for step in steps.values())
  refused = {name: step['refused'] for name, step in steps.items() if 'refused' in step}
  bound = costs.roofline(
      analytic['flops']['step_lambda1'],
      analytic['hbm_bytes']['step_lambda1'],
      devices=devices,
      peak_flops=chip.peak_flops,
      hbm_bytes_per_s=chip.hbm_bytes_per_s,
  )
  teacher = layout.abstract_frozen.get(models.TEACHER_COLLECTION, {})
  return {
      'batch_size': batch_size,
      'eval_batch_size': spec.eval_batch_size,
      'num_partitions': layout.mesh.shape[partitioning.MODEL_AXIS],
      'mesh': dict(layout.mesh.shape),
      'memory_bytes': {name: step['memory'] for name, step in steps.items()},
      'hbm_bytes_per_device': chip.hbm_bytes,
      'margin_bytes': chip.hbm_bytes - total,
      'fits': total <= chip.hbm_bytes and not refused,
      'refused': refused,
      'teacher_bytes': {'total': costs.tree_bytes(teacher), 'per_device': _sharded_bytes(teacher)},
      'flops': {
          'xla_train': _times(steps['train']['xla_flops'], devices),
          'analytic': analytic['flops'],
      },
      'hbm_bytes': {
          'xla_train': _times(steps['train']['xla_bytes'], devices),
          'analytic': analytic['hbm_bytes'],
      },
      'roofline': dict(
          bound,
          target_tokens_per_s=batch_size * spec.task_feature_lengths['targets'] / bound['step_s'],
      ),
      'compile_s': {name: step['compile_s'] for name, step in steps.items()},
  }


def largest_batch(
    fits: Callable[[int], bool], start: int, quantum: int, limit: Optional[int] = None
) -> Optional[int]:
  """The largest batch of the form quantum x 2^k (at most `limit`) that `fits`, searched from
  `start` (rounded down to such a batch) by doubling while it fits, or halving while it does
  not; None when not even `quantum` fits."""
  batch = quantum * 2 ** max(0, (max(start, quantum) // quantum).bit_length() - 1)
  if fits(batch):
    while (limit is None or 2 * batch <= limit) and fits(2 * batch):
      batch *= 2
    return batch
  while batch > quantum:
    batch //= 2
    if fits(batch):
      return batch
  return None


def partition_choices(num_devices: int) -> List[int]:
  """NUM_PARTITIONS worth trying on `num_devices` devices: the powers of two that divide it."""
  return [2**k for k in range(num_devices.bit_length()) if num_devices % 2**k == 0]


def search_partitions(spec: RunSpec, devices, chip, *, batch_size: int) -> Dict[str, Any]:
  """The train step at each NUM_PARTITIONS of `partition_choices`: {'best': the one of highest
  roofline throughput that fits (None if none does), 'tried': {n: total bytes, or why not}}."""
  tried, best = {}, None
  for parts in partition_choices(len(devices)):
    try:
      report = check(
          spec, devices, chip, batch_size=batch_size, num_partitions=parts, with_eval=False
      )
    except ValueError as e:
      tried[parts] = str(e).split(':')[0]
      continue
    tried[parts] = report['memory_bytes']['train']['peak']
    speed = report['roofline']['target_tokens_per_s']
    if report['fits'] and (best is None or speed > best['roofline']['target_tokens_per_s']):
      best = report
  return {'best': best and best['num_partitions'], 'tried': tried}


def search_batch(
    spec: RunSpec,
    devices,
    chip,
    *,
    num_partitions: int,
    known_fit: Optional[int] = None,
    limit: Optional[int] = None,
) -> Dict[str, Any]:
  """The largest batch (data-parallel size x 2^k, at most `limit`) whose train step fits:
  {'best', 'tried': {batch: total bytes}}; `known_fit`, a batch known to fit, is not compiled
  again."""
  tried = {}

  def fits(batch_size):
    if batch_size == known_fit:
      return True
    report = check(
        spec, devices, chip, batch_size=batch_size, num_partitions=num_partitions, with_eval=False
    )
    tried[batch_size] = report['memory_bytes']['train']['peak']
    return report['fits']

  quantum = len(devices) // num_partitions
  return {'best': largest_batch(fits, spec.batch_size, quantum, limit), 'tried': tried}


def suggest(
    gin_files, gin_bindings, spec: RunSpec, devices, chip, *, batch_size, num_partitions
) -> Dict[str, Any]:
  """For a run that does not fit: what each change gives on its own ({setting: figures})."""
  options = {}
  if spec.model.gkd.divergence_chunk_length is None:
    binding = f'objective.GKDConfig.divergence_chunk_length = {CHUNK_LENGTH}'
    chunked = load_run(gin_files, [*gin_bindings, binding])
    report = check(
        chunked,
        devices,
        chip,
        batch_size=batch_size,
        num_partitions=num_partitions,
        with_eval=False,
    )
    options[f'--gin.{binding.replace(" = ", "=")}'] = {
        'fits': report['fits'],
        'train_total_bytes': report['memory_bytes']['train']['peak'],
    }
    load_run(gin_files, gin_bindings)  # gin's config back to the run's own
  partitions = search_partitions(spec, devices, chip, batch_size=batch_size)
  options['--num_partitions=search'] = partitions
  options['--batch_size=max'] = search_batch(spec, devices, chip, num_partitions=num_partitions)
  return options


def _times(count: Optional[float], devices: int) -> Optional[float]:
  return None if count is None else count * devices


def _gib(n: Optional[float]) -> str:
  """Bytes in GiB, or MiB below 1 GiB."""
  if n is None:
    return '?'
  return f'{n / topologies.GiB:.2f} GiB' if abs(n) >= topologies.GiB else f'{n / 2**20:.2f} MiB'


def _e(n: Optional[float], unit: float) -> str:
  return '?' if n is None else f'{n / unit:.1f}'


def table(line: Mapping[str, Any]) -> str:
  """The report as a few lines a person reads."""
  rows = [
      (
          f"{line['topology']} x {line['num_slices']} slice(s): {line['devices']} devices "
          f"({line['device_kind']}), mesh {line['mesh']}, batch {line['batch_size']}"
      ),
      (
          f"{'step':<13}{'arguments':>12}{'outputs':>12}{'temp':>12}{'aliased':>12}{'total':>12}"
          f"{'compile':>10}"
      ),
  ]
  for name, memory in line['memory_bytes'].items():
    rows.append(
        f'{name:<13}'
        + ''.join(f'{_gib(memory[part]):>12}' for part in ('argument', 'output', 'temp', 'alias'))
        + f"{_gib(memory['peak']):>12}{line['compile_s'][name]:>9.1f}s"
    )
  roofline = line['roofline']
  rows += [
      (
          f"HBM per device {_gib(line['hbm_bytes_per_device'])}, margin "
          f"{_gib(line['margin_bytes'])}: {'FITS' if line['fits'] else 'DOES NOT FIT'}"
      ),
      (
          f"teacher params {_gib(line['teacher_bytes']['total'])}, "
          f"{_gib(line['teacher_bytes']['per_device'])} per device"
      ),
      (
          f"on-policy step: {line['flops']['analytic']['step_lambda1'] / 1e12:.1f} TFLOP analytic "
          f"({_e(line['flops']['xla_train'], 1e12)} by XLA), "
          f"{line['hbm_bytes']['analytic']['step_lambda1'] / 1e9:.1f} GB HBM analytic "
          f"({_e(line['hbm_bytes']['xla_train'], 1e9)} by XLA)"
      ),
      (
          f"roofline: >= {roofline['step_s'] * 1e3:.1f} ms/step ({roofline['bound_by']}-bound), "
          f"<= {roofline['target_tokens_per_s']:,.0f} target tokens/s"
      ),
  ]
  for name, message in line['refused'].items():
    rows.append(f'{name}: {message}')
  for setting, figures in (line.get('suggestions') or {}).items():
    rows.append(f'would change it: {setting}: {json.dumps(figures)}')
  return '\n'.join(rows)


def run(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    *,
    topology: str,
    num_slices: int = 1,
    batch_size: str = '',
    num_partitions: str = '',
) -> Dict[str, Any]:
  """The JSON line of `python -m gkd_t5x.fit` (its flags as arguments; '' = the run's own)."""
  _, chip, _ = topologies.parse(topology)
  devices = topologies.devices(topology, num_slices)
  spec = load_run(gin_files, gin_bindings)
  for flag, value, allowed in (
      ('--batch_size', batch_size, 'max'),
      ('--num_partitions', num_partitions, 'search'),
  ):
    if value not in ('', allowed) and not (value.isdigit() and int(value) > 0):
      raise ValueError(f"{flag} must be a positive int, '{allowed}' or unset; got {value!r}.")
  parts = spec.num_partitions
  searches = {}
  if num_partitions == 'search':
    searches['num_partitions'] = search_partitions(spec, devices, chip, batch_size=spec.batch_size)
    parts = searches['num_partitions']['best'] or parts
  elif num_partitions:
    parts = int(num_partitions)
  batch = int(batch_size) if batch_size.isdigit() else spec.batch_size
  if batch_size == 'max':
    searches['batch_size'] = search_batch(spec, devices, chip, num_partitions=parts)
    batch = searches['batch_size']['best'] or batch
  line = check(spec, devices, chip, batch_size=batch, num_partitions=parts)
  if not line['fits']:
    line['suggestions'] = suggest(
        gin_files, gin_bindings, spec, devices, chip, batch_size=batch, num_partitions=parts
    )
  return {
      'topology': topology,
      'num_slices': num_slices,
      'devices': len(devices),
      'device_kind': devices[0].device_kind,
      'chip': dataclasses.asdict(chip),
      **line,
      'searches': searches,
      'gin_files': list(gin_files),
      'gin_bindings': list(gin_bindings),
      'versions': {'jax': jax.__version__, 'libtpu': _libtpu_version()},
  }


def _libtpu_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  return metadata.version('libtpu')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  topologies.prepare_host()
  try:
    line = run(
        FLAGS.gin_file,
        FLAGS.gin_bindings,
        topology=FLAGS.topology,
        num_slices=FLAGS.num_slices,
        batch_size=FLAGS.batch_size,
        num_partitions=FLAGS.num_partitions,
    )
  except (ValueError, RuntimeError) as e:
    print(f'gkd_t5x.fit: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(line), flush=True)
  print(table(line), flush=True)
  sys.exit(0 if line['fits'] else 1)


FLAGS = flags.FLAGS

if __name__ == '__main__':
  flags.DEFINE_string('topology', None, "A TPU slice, e.g. 'v5e:4x4' or 'v4:2x2x2'.")
  flags.DEFINE_integer('num_slices', 1, 'Slices joined over the data-center network.')
  flags.DEFINE_string('batch_size', '', "A global batch size, or 'max' (default: BATCH_SIZE).")
  flags.DEFINE_string(
      'num_partitions', '', "NUM_PARTITIONS, or 'search' (default: the run's NUM_PARTITIONS)."
  )
  flags.mark_flag_as_required('topology')
  gin_utils.run(main)
