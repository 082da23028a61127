"""seqio datasets for the standalone trainer: task lookup, per-host sharding, global batches.

A `DatasetConfig` (T5X's fields and gin names) says which task, split, feature lengths and
global batch size. `get_dataset` turns it into a per-host `tf.data.Dataset` of model features
(the task's feature converter, e.g. `seqio.EncDecFeatureConverter`) in batches of
`batch_size // process_count`, each host reading its own shard (`seqio.ShardInfo`).
`make_global_batch` assembles the hosts' numpy batches into one `jax.Array` per feature,
split over the mesh's `data` axis.

Resuming: a training dataset is deterministic given its seed (files, shuffle and
preprocessing are seeded), so the trainer resumes at step s by skipping the s batches it has
consumed (`start_batch`); the checkpoint records that number.
"""

import dataclasses
import difflib
import importlib
from typing import Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from gkd_t5x import partitioning

Batch = Mapping[str, np.ndarray]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which data to read, in T5X's `utils.DatasetConfig` terms.

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture (gin: MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {'inputs': I, 'targets': L} (gin: TASK_FEATURE_LENGTHS).
    split: the split to read, e.g. 'train' or 'validation'.
    batch_size: the global batch size, over all hosts (gin: BATCH_SIZE).
    shuffle: shuffle (training) or read in order (evaluation).
    seed: seed of shuffling and preprocessing; None is non-deterministic.
    pack: pack several examples into one row (segment ids), training only.
    use_cached: read a seqio cache made by `seqio_cache_tasks`.
    module: a module to import before the lookup, which registers the task
      (gin: MIXTURE_OR_TASK_MODULE).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: Optional[int] = 0
  pack: bool = False
  use_cached: bool = False
  module: Optional[str] = None


def get_task(config: DatasetConfig) -> seqio.Task:
  """The config's task or mixture, with an error that names close matches if unknown."""
  if config.module:
    importlib.import_module(config.module)
  name = config.mixture_or_task_name
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, known, n=5)
    raise ValueError(
        f'Unknown task or mixture MIXTURE_OR_TASK_NAME = {name!r}'
        + (f'; did you mean one of {close}?' if close else '.')
        + ' Registered tasks come from MIXTURE_OR_TASK_MODULE '
        f'(here {config.module!r}; this project\'s are in gkd_t5x.tasks).')
  return seqio.get_mixture_or_task(name)


def validate(config: DatasetConfig, num_data_shards: int = 1) -> seqio.Task:
  """Checks a config against its task and the mesh before any data is read.

  Args:
    config: the dataset config.
    num_data_shards: the number of batch shards (data-parallel size of the mesh, a multiple of
      the number of hosts); the global batch must split evenly over them.

  Returns:
    The task or mixture.
  """
  task = get_task(config)
  features = set(task.output_features)
  lengths = dict(config.task_feature_lengths)
  if set(lengths) != features:
    raise ValueError(f'TASK_FEATURE_LENGTHS has features {sorted(lengths)}, but task '
                     f'{config.mixture_or_task_name!r} has features {sorted(features)}.')
  for feature, length in lengths.items():
    if not isinstance(length, int) or length < 1:
      raise ValueError(f'TASK_FEATURE_LENGTHS[{feature!r}] must be a positive int, got '
                       f'{length!r}.')
  if config.split not in task.splits:
    raise ValueError(f'Task {config.mixture_or_task_name!r} has no split {config.split!r}; '
                     f'its splits are {sorted(task.splits)}.')
  if config.batch_size < 1 or config.batch_size % num_data_shards:
    raise ValueError(f'BATCH_SIZE = {config.batch_size} must be a positive multiple of the '
                     f'number of data shards ({num_data_shards}: the mesh\'s data axis).')
  return task


def get_dataset(config: DatasetConfig, feature_converter: seqio.FeatureConverter, *,
                repeat: bool, start_batch: int = 0,
                drop_remainder: bool = True) -> tf.data.Dataset:
  """This host's batches of model features.

  Args:
    config: the dataset config.
    feature_converter: converts task features (inputs, targets) to model features.
    repeat: repeat the split forever (training).
    start_batch: number of batches to skip, i.e. those consumed before a resume.
    drop_remainder: drop a last, smaller batch (training); evaluation pads it instead.

  Returns:
    A dataset of dicts of [batch_size // process_count, length] int32 arrays.
  """
  validate(config)
  shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
  dataset = seqio.get_dataset(
      config.mixture_or_task_name, task_feature_lengths=dict(config.task_feature_lengths),
      dataset_split=config.split, shuffle=config.shuffle, num_epochs=None if repeat else 1,
      feature_converter=feature_converter, shard_info=shard_info, use_cached=config.use_cached,
      seed=config.seed)
  dataset = dataset.batch(config.batch_size // jax.process_count(),
                          drop_remainder=drop_remainder)
  if start_batch:
    dataset = dataset.skip(start_batch)
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_global_batch(local_batch: Batch, mesh: jax.sharding.Mesh) -> Mapping[str, jax.Array]:
  """One global array per feature from every host's local rows, split over `data`."""
  sharding = partitioning.batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads every feature's rows with zeros up to `batch_size` (a last, short eval batch)."""
  def pad(value):
    value = np.asarray(value)
    return np.pad(value, [(0, batch_size - value.shape[0])] + [(0, 0)] * (value.ndim - 1))
  return {name: pad(value) for name, value in batch.items()}

