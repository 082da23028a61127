"""Offline-teacher tasks: a task's examples with the teacher's stored top-k log-probs.

`python -m gkd_t5x.offline_teacher` writes a directory of tf.train.Examples (its docstring has
the format); `offline_teacher_task(name, data_dir, ...)` registers it as a seqio task
(`seqio.TFExampleDataSource`, one split) with the base task's output features, postprocessing
and metrics, and returns its name, so that a gin file sets

    MIXTURE_OR_TASK_NAME = @offline_teacher_task()

under either runner. It first checks the stored settings against the run's: base task, top-k,
teacher temperature, vocabulary size and feature lengths, each mismatch refused in one line.
Each example carries, beside 'inputs' and 'targets', the features of
`objective.OFFLINE_TEACHER_FEATURES` ([n_targets, k] ids and log-probs, [n_targets] tail), which
the models' feature converters pass through padded to the targets' length.
"""

import json
import os
from typing import Dict, Mapping, Tuple

import seqio
import tensorflow as tf

import gin
from gkd_t5x import objective
from gkd_t5x.tasks import common

INFO_FILE = 'offline_teacher.json'  # what gkd_t5x.offline_teacher writes beside the shards
IDS, LOG_PROBS, TAIL = objective.OFFLINE_TEACHER_FEATURES
_REGISTERED: Dict[str, Mapping[str, object]] = {}  # task name -> its stored settings


def shard_path(data_dir: str, split: str, shard: int) -> str:
  return os.path.join(data_dir, f'{split}.tfrecord-{shard:05d}')


def _feature_description() -> Dict[str, tf.io.FixedLenSequenceFeature]:
  sequence = lambda dtype: tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)
  return {
      'inputs': sequence(tf.int64),
      'targets': sequence(tf.int64),
      IDS: sequence(tf.int64),
      LOG_PROBS: sequence(tf.float32),
      TAIL: sequence(tf.float32),
  }


def unflatten_top_k(dataset: tf.data.Dataset, top_k: int) -> tf.data.Dataset:
  """Preprocessor: int32 'inputs' and 'targets', the top-k ids and log-probs as [n, k], with n
  the targets' length (an example whose stored top-k rows differ from it fails)."""

  def unflatten(example):
    targets = tf.cast(example['targets'], tf.int32)
    n = tf.shape(targets)[0]
    tail = tf.debugging.assert_equal(
        tf.shape(example[TAIL])[0],
        n,
        message='offline teacher: stored top-k rows differ from the targets length',
    )
    with tf.control_dependencies([tail]):
      return {
          'inputs': tf.cast(example['inputs'], tf.int32),
          'targets': targets,
          IDS: tf.reshape(tf.cast(example[IDS], tf.int32), [n, top_k]),
          LOG_PROBS: tf.reshape(example[LOG_PROBS], [n, top_k]),
          TAIL: tf.identity(example[TAIL]),
      }

  return dataset.map(unflatten, num_parallel_calls=tf.data.AUTOTUNE)


def _read_info(data_dir: str) -> Mapping[str, object]:
  path = os.path.join(data_dir, INFO_FILE)
  if not tf.io.gfile.exists(path):
    raise ValueError(
        f'offline teacher: {path} does not exist; write it with `python -m '
        'gkd_t5x.offline_teacher` first.'
    )
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


@gin.configurable
def offline_teacher_task(
    name: str = gin.REQUIRED,
    data_dir: str = gin.REQUIRED,
    *,
    base_task: str = gin.REQUIRED,
    top_k: int = gin.REQUIRED,
    teacher_temperature: float = 1.0,
    vocab_size: int = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
) -> str:
  """Registers (once) the offline-teacher task `name` of `data_dir` and returns `name`.

  The keyword arguments are the run's settings (the student's vocab_size, its TEACHER_TOP_K,
  TEACHER_TEMPERATURE, TASK_FEATURE_LENGTHS): any that differs from the stored one is refused.
  """
  info = _read_info(data_dir)
  want = dict(
      base_task=base_task,
      top_k=top_k,
      teacher_temperature=teacher_temperature,
      vocab_size=vocab_size,
      task_feature_lengths=dict(task_feature_lengths),
  )
  for key, value in want.items():
    if info[key] != value:
      raise ValueError(
          f'offline teacher {data_dir}: stored {key} = {info[key]!r}, but this run has '
          f'{value!r}; write the teacher for these settings.'
      )
  base = seqio.get_mixture_or_task(base_task)
  split = info['split']
  pattern = os.path.join(data_dir, f'{split}.tfrecord-*')
  _REGISTERED[name] = info
  common.register_task_once(
      name,
      {'data_dir': data_dir, **want},
      lambda: seqio.Task(
          name,
          source=seqio.TFExampleDataSource({split: pattern}, _feature_description()),
          preprocessors=[lambda dataset: unflatten_top_k(dataset, top_k)],
          output_features=base.output_features,
          postprocess_fn=base.postprocessor,
          metric_fns=list(base.metric_fns),
      ),
  )
  return name


def batch_shapes(task_name: str, batch_size: int) -> Dict[str, Tuple[int, ...]]:
  """The offline teacher's model features of `task_name` ({} for any other task): [B, L, k]
  ids and log-probs, [B, L] tail, L the stored targets length."""
  info = _REGISTERED.get(task_name)
  if info is None:
    return {}
  length, k = info['task_feature_lengths']['targets'], info['top_k']
  return {
      IDS: (batch_size, length, k),
      LOG_PROBS: (batch_size, length, k),
      TAIL: (batch_size, length),
  }
