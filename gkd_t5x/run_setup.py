"""What the trainer (`gkd_t5x.train`) and the evaluator (`gkd_t5x.eval`) share: a run's mesh
and layout, its frozen networks, and the files an evaluation writes.

`build_run` checks the data against the mesh and every checkpoint path before anything is
compiled, then derives the layout; `restore_frozen` restores the teacher and a model reward's
classifier into their shardings; `write_results` writes an evaluation where
`launch/results.read_metric` reads it.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional

from clu import metric_writers
from etils import epath
import jax
import optax

from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import mixture_rows
from gkd_t5x import models
from gkd_t5x import partitioning
from gkd_t5x import trainer
from gkd_t5x.tasks import offline_teacher as offline_tasks

PyTree = Any


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """A run's layout and its checkpoints.

  Attributes:
    layout: shapes and shardings of the state, the frozen networks and the batch.
    step_dirs: {gin setting: the `checkpoint_<step>` directory it names} of each path given.
    model: the model, with several teachers routed to their rows (`mixture_plan`).
    mixture_plan: with several teachers, each one's tasks and rows of a batch; else None.
  """

  layout: trainer.StateLayout
  step_dirs: Mapping[str, epath.Path]
  model: models.GKDModelBase
  mixture_plan: Optional[mixture_rows.Plan] = None


def build_run(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    dataset_cfg: data.DatasetConfig,
    *,
    model_partitions: int,
    rules: partitioning.LogicalAxisRules,
    pack: bool,
    checkpoint_paths: Mapping[str, Optional[str]],
) -> RunSetup:
  """The ('data', 'model') mesh and the layout of `model` on batches of `dataset_cfg`.

  Args:
    model: the GKD model, encoder-decoder or decoder-only.
    optimizer: whose state the layout holds (`optax.identity()` for none).
    dataset_cfg: the batch size (B) and task feature lengths; the batch is [B, length] per
      model feature.
    model_partitions: devices per model replica (the mesh's `model` axis).
    rules: the logical -> mesh axis rules.
    pack: whether the feature converter packs (the model feature lengths depend on it).
    checkpoint_paths: {gin setting: path or None}; each path given must name a checkpoint,
      checked here so that a wrong one fails before compilation (several teachers' paths are
      added here).
  """
  mesh = partitioning.make_mesh(model_partitions)
  data_shards = mesh.shape[partitioning.DATA_AXIS]
  data.validate(dataset_cfg, data_shards)
  mixture_plan = None
  if model.teachers is not None:
    mixture_plan = mixture_rows.plan(
        model.teachers, dataset_cfg.mixture_or_task_name, dataset_cfg.batch_size, blocks=data_shards
    )
    model = model.with_routing(mixture_plan.routing)
  step_dirs = {
      setting: checkpoints.resolve_step_dir(path, setting)
      for setting, path in {**checkpoint_paths, **teacher_checkpoint_paths(model)}.items()
      if path
  }
  converter = model.FEATURE_CONVERTER_CLS(pack=pack)
  lengths = converter.get_model_feature_lengths(dict(dataset_cfg.task_feature_lengths))
  batch_shapes = {name: (dataset_cfg.batch_size, length) for name, length in lengths.items()}
  # A task with an offline teacher adds its stored top-k (`GKDConfig.offline_teacher`).
  batch_shapes.update(
      offline_tasks.batch_shapes(dataset_cfg.mixture_or_task_name, dataset_cfg.batch_size)
  )
  layout = trainer.make_layout(model, optimizer, mesh, rules, batch_shapes)
  return RunSetup(layout, step_dirs, model, mixture_plan)


def teacher_checkpoint_paths(model: models.GKDModelBase) -> Dict[str, Optional[str]]:
  """{the gin setting of each of several teachers' checkpoint paths: the path}; {} for one."""
  return {
      _teacher_setting(name): teacher.checkpoint_path
      for name, teacher in (model.teachers or {}).items()
  }


def _teacher_setting(name: str) -> str:
  return f'teachers[{name!r}].checkpoint_path'


def restore_frozen(
    layout: trainer.StateLayout,
    teacher_checkpoint_path: Optional[str],
    reward_checkpoint_path: Optional[str],
    *,
    model: Optional[models.GKDModelBase] = None,
) -> Dict[str, PyTree]:
  """The frozen networks the model has and a path is given for ({'teacher': params,
  'reward_model': params}, each in its `layout.frozen_shardings`); the caller decides which
  of them a run requires. With several teachers (`model.teachers`), 'teacher' holds
  {name: params}, each restored from its own `Teacher.checkpoint_path`."""
  paths = {
      models.TEACHER_COLLECTION: teacher_checkpoint_path,
      models.REWARD_MODEL_COLLECTION: reward_checkpoint_path,
  }
  frozen = {
      name: checkpoints.restore_params(
          paths[name], abstract, setting=models.FROZEN_COLLECTIONS[name]
      )
      for name, abstract in layout.abstract_frozen.items()
      if paths[name]
  }
  if model is not None and model.teachers is not None:
    abstract = layout.abstract_frozen[models.TEACHER_COLLECTION]
    frozen[models.TEACHER_COLLECTION] = {
        name: checkpoints.restore_params(
            teacher.checkpoint_path, abstract[name], setting=_teacher_setting(name)
        )
        for name, teacher in model.teachers.items()
    }
  return frozen


def write_results(
    directory: str,
    step: int,
    metrics: Mapping[str, float],
    records: List[Mapping[str, Any]],
    *,
    writer: metric_writers.MetricWriter,
    summary: Optional[Mapping[str, Any]] = None,
) -> None:
  """Writes one evaluation: its metrics as TensorBoard scalars through `writer` (every host),
  and, on host 0, its metrics and predictions as JSON in `directory`.

  A run that evaluates as it trains (`summary` None) keeps every evaluation: it appends
  {'step', 'metrics'} to eval_metrics.jsonl and writes predictions_<step>.jsonl. A single
  evaluation (`summary`: {'checkpoint', 'split'}, say) writes metrics.json (the summary and
  'metrics') and predictions.jsonl. `launch/results.read_metric` reads both.

  Args:
    directory: the run's (or the evaluation's) output directory.
    step: the evaluated checkpoint's step.
    metrics: {'<split>/<loss metric>' or 'inference/<task>/<metric>': value}.
    records: the predictions, one JSON line each ({'index', 'input', 'target', 'prediction'}).
    writer: TensorBoard writer of `directory` (or its eval/ folder).
    summary: the single evaluation's description; None: one of a training run's.
  """
  writer.write_scalars(step, metrics)
  writer.flush()
  if jax.process_index() != 0:
    return
  os.makedirs(directory, exist_ok=True)
  if summary is None:
    with open(os.path.join(directory, 'eval_metrics.jsonl'), 'a') as f:
      f.write(json.dumps({'step': step, 'metrics': metrics}) + '\n')
    predictions_file = f'predictions_{step}.jsonl'
  else:
    with open(os.path.join(directory, 'metrics.json'), 'w') as f:
      json.dump(dict(summary, metrics=metrics), f, indent=2)
    predictions_file = 'predictions.jsonl'
  with open(os.path.join(directory, predictions_file), 'w') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')
