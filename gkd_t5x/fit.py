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

The paper's vocabulary (a SentencePiece file on GCS) is replaced by token ids of its size,
and GSM8K's calculator (text forcing in decoding) is left out: the step's shapes are the same.
"""

import dataclasses
import json
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import flags
import jax
import optax

import gin
from gkd_t5x import costs
from gkd_t5x import eval_steps
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import partitioning
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


@gin.configurable
def run_spec(
    *,
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    task_feature_lengths: Mapping[str, int],
    num_partitions: int = 1,
    eval_batch_size: Optional[int] = None,
) -> RunSpec:
  return RunSpec(
      model,
      optimizer,
      batch_size,
      dict(task_feature_lengths),
      num_partitions,
      eval_batch_size or batch_size,
  )


def load_run(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> RunSpec:
  """The run of these gin files and bindings, after gin/runs/fit.gin (gin's config is reset)."""
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin([FIT_GIN, *gin_files], gin_bindings, finalize=False)
  vocabulary = gin.query_parameter('VOCABULARY/macro.value')
  if getattr(vocabulary, 'configurable', None) and 'SentencePiece' in vocabulary.configurable.name:
    gin.bind_parameter('VOCABULARY/macro.value', vocabularies.TokenIdVocabulary(T5_VOCAB_SIZE))
    gin.bind_parameter('models.GKDModel.calculator', False)
  gin.finalize()
  # fit.gin binds the module `gkd_t5x.fit`, which is not `__main__` under `python -m`.
  from gkd_t5x import fit as fit_lib  # noqa: PLW0406

  return fit_lib.run_spec()


def _sharded_bytes(tree: Any) -> int:
  """Bytes of one device's shards of a tree of sharded `jax.ShapeDtypeStruct`s (the largest
  shard of each leaf)."""
  return sum(
      int(jax.numpy.prod(jax.numpy.array(leaf.sharding.shard_shape(leaf.shape))))
      * leaf.dtype.itemsize
      for leaf in jax.tree_util.tree_leaves(tree)
  )


def _analytic(spec: RunSpec, layout: trainer.StateLayout, batch_size: int) -> Dict[str, Any]:
  """Analytic FLOPs of both steps and HBM bytes of the on-policy one, over all devices."""
  model, lengths = spec.model, spec.task_feature_lengths
  shape = (batch_size, lengths['inputs'], lengths['targets'])
  decoder_only = not hasattr(model.module.config, 'num_encoder_layers')
  count = costs.decoder_only_matmul_flops if decoder_only else costs.matmul_flops
  teacher_flops = (
      count(model.teacher_module.config, *shape)
      if model.teacher_module is not None
      else {'encode': 0, 'decode': 0}
  )
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
  )
  return {'flops': costs.step_flops(count(config, *shape), teacher_flops), 'hbm_bytes': hbm}


def _compile(fn, args) -> Dict[str, Any]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      'memory': costs.memory_bytes(compiled),
      'xla_flops': float(cost.get('flops', 0.0)),
      'xla_bytes': float(cost.get('bytes accessed', 0.0)),
      'compile_s': time.perf_counter() - start,
  }


def check(
    spec: RunSpec,
    devices: Sequence[Any],
    chip: topologies.Chip,
    *,
    batch_size: int,
    num_partitions: int,
) -> Dict[str, Any]:
  """Compiles the run's train and evaluation steps on `devices`; returns the report's fields.

  Raises:
    ValueError: the batch or a model dimension does not split over the mesh.
  """
  mesh = partitioning.make_mesh(num_partitions, devices)
  data_parallel = mesh.shape[partitioning.DATA_AXIS]
  for name, size in (('BATCH_SIZE', batch_size), ('EVAL_BATCH_SIZE', spec.eval_batch_size)):
    if size % data_parallel:
      raise ValueError(
          f'{name} = {size} does not split over the {data_parallel} data-parallel replicas of '
          f'{len(devices)} devices with NUM_PARTITIONS = {num_partitions}.'
      )
  rules = partitioning.standard_logical_axis_rules()
  converter = spec.model.FEATURE_CONVERTER_CLS(pack=False)
  lengths = converter.get_model_feature_lengths(spec.task_feature_lengths)
  shapes = lambda size: {name: (size, length) for name, length in lengths.items()}
  layout = trainer.make_layout(spec.model, spec.optimizer, mesh, rules, shapes(batch_size))
  eval_layout = dataclasses.replace(layout, batch_shapes=shapes(spec.eval_batch_size))
  with partitioning.activate(mesh, rules):
    steps = {
        'train': _compile(
            trainer.jit_train_step(spec.model, spec.optimizer, layout),
            trainer.abstract_step_args(layout),
        )
    }
    _, frozen, batch, rng = trainer.abstract_step_args(eval_layout)
    loss_step, predict_step = eval_steps.jit_eval_steps(
        spec.model, mesh, layout.param_shardings, layout.frozen_shardings
    )
    for name, fn in (('eval_loss', loss_step), ('eval_predict', predict_step)):
      steps[name] = _compile(fn, (layout.abstract_state['target'], frozen, batch, rng))
  return _report(spec, layout, chip, steps, batch_size=batch_size, devices=len(devices))


def _report(spec, layout, chip, steps, *, batch_size, devices) -> Dict[str, Any]:
  """The JSON line's fields from the compiled steps' figures."""
  analytic = _analytic(spec, layout, batch_size)
  total = max(step['memory']['peak'] for step in steps.values())
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
      'fits': total <= chip.hbm_bytes,
      'teacher_bytes': {'total': costs.tree_bytes(teacher), 'per_device': _sharded_bytes(teacher)},
      'flops': {
          'xla_train': steps['train']['xla_flops'] * devices,
          'analytic': analytic['flops'],
      },
      'hbm_bytes': {
          'xla_train': steps['train']['xla_bytes'] * devices,
          'analytic': analytic['hbm_bytes'],
      },
      'roofline': dict(
          bound,
          target_tokens_per_s=batch_size * spec.task_feature_lengths['targets'] / bound['step_s'],
      ),
      'compile_s': {name: step['compile_s'] for name, step in steps.items()},
  }
