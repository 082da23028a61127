"""seqio datasets for the standalone trainer: task lookup, per-host sharding, global batches.

A `DatasetConfig` (T5X's fields and gin names) says which task, split, feature lengths and
global batch size. `get_dataset` turns it into a `tf.data.Dataset` of global batches of model
features (the model's feature converter, `feature_converters.EncDecFeatureConverter`);
`make_global_batch` keeps this host's rows of a global batch and assembles every host's rows
into one `jax.Array` per feature, split over the mesh's `data` axis.

Every host reads the same global stream and keeps its own rows, instead of reading a shard of
the data (`seqio.ShardInfo`) as T5X does. It costs each host the preprocessing of the whole
batch (small next to a distillation step, which runs two models and a sampler), and buys
batches that do not depend on the number of hosts: a run gives the same result on one host
or several, and after a restart on a different topology.

Resuming: a training dataset is deterministic given its seed (shuffle and preprocessing are
seeded), so the trainer resumes at step s by skipping the batches it has consumed
(`start_batch`); the checkpoint records that number.
"""

import dataclasses
import difflib
import importlib
from typing import Mapping, Optional

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

import gin
from gkd_t5x import example_checks
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
        f"(here {config.module!r}; this project's are in gkd_t5x.tasks)."
    )
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
    raise ValueError(
        f'TASK_FEATURE_LENGTHS has features {sorted(lengths)}, but task '
        f'{config.mixture_or_task_name!r} has features {sorted(features)}.'
    )
  for feature, length in lengths.items():
    if not isinstance(length, int) or length < 1:
      raise ValueError(f'TASK_FEATURE_LENGTHS[{feature!r}] must be a positive int, got {length!r}.')
  if config.split not in task.splits:
    raise ValueError(
        f'Task {config.mixture_or_task_name!r} has no split {config.split!r}; '
        f'its splits are {sorted(task.splits)}.'
    )
  if config.batch_size < 1 or config.batch_size % num_data_shards:
    raise ValueError(
        f'BATCH_SIZE = {config.batch_size} must be a positive multiple of the '
        f"number of data shards ({num_data_shards}: the mesh's data axis)."
    )
  return task


def get_dataset(
    config: DatasetConfig,
    feature_converter: seqio.FeatureConverter,
    *,
    repeat: bool,
    start_batch: int = 0,
    drop_remainder: bool = True,
    checks: Optional[example_checks.ExampleChecks] = None,
) -> tf.data.Dataset:
  """This host's batches of model features.

  Args:
    config: the dataset config.
    feature_converter: converts task features (inputs, targets) to model features.
    repeat: repeat the split forever (training).
    start_batch: number of batches to skip, i.e. those consumed before a resume.
    drop_remainder: drop a last, smaller batch (training); evaluation pads it instead.
    checks: what to do with examples too long, with empty targets or text that is not UTF-8
      (`example_checks`); the batches then carry their counts (`EXAMPLE_COUNTS`). None:
      seqio's own behaviour (trimmed, kept), uncounted.

  Returns:
    A dataset of dicts of [batch_size, length] int32 arrays (the global batch).
  """
  provider = validate(config)
  dataset = get_examples(
      provider, config, feature_converter, num_epochs=None if repeat else 1, checks=checks
  )
  dataset = dataset.batch(config.batch_size, drop_remainder=drop_remainder)
  if start_batch:
    dataset = dataset.skip(start_batch)
  return dataset.prefetch(tf.data.AUTOTUNE)


def get_examples(
    provider: seqio.DatasetProviderBase,
    config: DatasetConfig,
    feature_converter: seqio.FeatureConverter,
    *,
    num_epochs: Optional[int],
    checks: Optional[example_checks.ExampleChecks],
) -> tf.data.Dataset:
  """`provider`'s examples as model features, one by one, checked where `checks` says how.

  Args:
    provider: the config's task or mixture, or a part of it (`mixture_rows`).
    config: its split, feature lengths, shuffling, seed and cache.
    feature_converter: converts task features (inputs, targets) to model features.
    num_epochs: the times to read the split; None: forever.
    checks: as `get_dataset`'s.
  """
  lengths = dict(config.task_feature_lengths)
  dataset = seqio.get_dataset(
      provider,
      # No lengths: the checks see every feature whole, its EOS included.
      task_feature_lengths=lengths if checks is None else dict.fromkeys(lengths),
      dataset_split=config.split,
      shuffle=config.shuffle,
      num_epochs=num_epochs,
      feature_converter=seqio.PassThroughFeatureConverter(),
      use_cached=config.use_cached,
      seed=config.seed,
      trim_output_features=checks is None,
  )
  if checks is not None:
    dataset = example_checks.check_examples(
        dataset,
        checks,
        output_features=provider.output_features,
        task_feature_lengths=lengths,
        task_name=provider.name,
    )
    if config.pack:  # a packed row holds several examples: their counts have no row to ride
      logging.warning('Packed training data: the example checks apply, uncounted.')
      dataset = dataset.map(example_checks.drop_counts)
  return feature_converter(dataset, lengths)


def make_global_batch(batch: Batch, mesh: jax.sharding.Mesh) -> Mapping[str, jax.Array]:
  """One array per feature, split over `data`, from the global numpy batch [B, ...].

  Each host passes the whole batch and contributes its own rows: process p holds rows
  [p B / P, (p + 1) B / P), the data shards of its devices (`partitioning.make_mesh` orders
  devices by process).
  """
  sharding = partitioning.batch_sharding(mesh)
  rows = len(next(iter(batch.values()))) // jax.process_count()
  start = jax.process_index() * rows
  return {
      name: jax.make_array_from_process_local_data(
          sharding, np.asarray(value)[start : start + rows], np.shape(value)
      )
      for name, value in batch.items()
  }


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads every feature's rows with zeros up to `batch_size` (a last, short eval batch)."""

  def pad(value):
    value = np.asarray(value)
    return np.pad(value, [(0, batch_size - value.shape[0])] + [(0, 0)] * (value.ndim - 1))

  return {name: pad(value) for name, value in batch.items()}
