r"""Offline teacher: the teacher's top-k log-probs over a task's targets, computed once and stored.

    python -m gkd_t5x.offline_teacher --gin_file=gin/runs/offline_teacher.gin \
        --gin_file=gin/experiments/arithmetic/teacher.gin \
        --gin.CHECKPOINT_PATH="'launch/checkpoints/arithmetic_sum3_2digit_teacher'" \
        --gin.OFFLINE_TEACHER_DIR="'/tmp/offline_teacher'" --gin.TEACHER_TOP_K=8

As `gkd_t5x.seqkd_data`, the experiment file names the teacher as its model (the teacher's own
SFT experiment). The teacher scores the targets of EVAL_SPLIT (default 'train') teacher-forced
and keeps, at every target position, its top-k log-probs at TEACHER_TEMPERATURE and the log-prob
of the rest (`divergences.teacher_top_k`). OFFLINE_TEACHER_DIR gets:

    offline_teacher.json        {base_task, split, top_k, teacher_temperature, vocab_size,
                                 task_feature_lengths, examples_per_shard, checkpoint}
    <split>.tfrecord-<s:05d>    tf.train.Examples of examples [s E, (s + 1) E), E =
                                 examples_per_shard: 'inputs', 'targets' (int64 ids, as the
                                 task's preprocessors give them, targets cut at their length),
                                 'teacher_top_k_ids' (int64) and 'teacher_top_k_log_probs'
                                 (float) [n_targets * k] row-major, 'teacher_tail_log_prob'
                                 (float) [n_targets]

Host h of n writes the shards s with s % n == h, each through a temporary file renamed when
complete, and skips the shards that exist: a killed command, run again, does only the rest. Each
host runs the teacher on its own devices (the teacher must fit one host). The task of
`gkd_t5x.tasks.offline_teacher` reads the directory back for supervised KD without a teacher
network (`GKDConfig.offline_teacher`).
"""

import json
import os
from typing import Dict, Iterator, Mapping, Optional

import jax
import numpy as np
import optax
import seqio
import tensorflow as tf

import gin
from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import divergences
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import partitioning
from gkd_t5x import run_setup
from gkd_t5x.tasks import offline_teacher as offline_tasks


def _top_k_fn(model: models.GKDModelBase, top_k: int, temperature: float):
  """jit(params, model batch) -> (inputs [B, I], targets [B, L], TopK [B, L, k]) of the model's
  own network (the teacher's experiment: its `module`)."""

  def top_k_of(params, batch):
    features = model.objective_batch(batch)
    targets = features['decoder_target_tokens']
    policy = model.policy(model.module, params)
    prompt = policy.read_prompt(features['encoder_input_tokens'])
    logits = policy.logits(prompt, objective.shift_right(targets), targets)
    top = divergences.teacher_top_k(logits, k=top_k, temperature=temperature)
    return features['encoder_input_tokens'], targets, top

  return jax.jit(top_k_of)


def _example(inputs: np.ndarray, targets: np.ndarray, top: divergences.TopK) -> bytes:
  """One serialized tf.train.Example of a row: its non-padding inputs, its targets (up to the
  last non-padding one) and their top-k, flattened row-major."""
  n = int(np.max(np.nonzero(targets)[0], initial=-1)) + 1
  int64 = lambda values: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  floats = lambda values: tf.train.Feature(float_list=tf.train.FloatList(value=values))
  feature = {
      'inputs': int64(inputs[inputs > 0].tolist()),
      'targets': int64(targets[:n].tolist()),
      'teacher_top_k_ids': int64(top.ids[:n].reshape(-1).tolist()),
      'teacher_top_k_log_probs': floats(top.log_probs[:n].reshape(-1).tolist()),
      'teacher_tail_log_prob': floats(top.tail_log_prob[:n].tolist()),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _shards(dataset: tf.data.Dataset, examples_per_shard: int, batch_size: int) -> Iterator[tuple]:
  """(shard index, [batches of model features]) in order, `examples_per_shard` rows each."""
  for shard, rows in enumerate(dataset.batch(examples_per_shard).as_numpy_iterator()):
    num_rows = len(next(iter(rows.values())))
    yield shard, [
        {name: value[start : start + batch_size] for name, value in rows.items()}
        for start in range(0, num_rows, batch_size)
    ]


def _write_info(output_dir: str, info: Mapping[str, object]) -> None:
  """Writes offline_teacher.json, or refuses a directory written with other settings."""
  path = os.path.join(output_dir, offline_tasks.INFO_FILE)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      old = json.load(f)
    if old != info:
      changed = sorted(key for key in set(old) | set(info) if old.get(key) != info.get(key))
      raise ValueError(
          f'{output_dir} holds an offline teacher written with other settings ({changed}); '
          'use a new OFFLINE_TEACHER_DIR.'
      )
    return
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(info, f, indent=2)


@gin.configurable
def write_offline_teacher(
    *,
    model: models.GKDModelBase,
    checkpoint_path: str,
    dataset_cfg: data.DatasetConfig,
    output_dir: str,
    top_k: int,
    teacher_temperature: float = 1.0,
    examples_per_shard: int = 4096,
    num_examples: Optional[int] = None,
) -> Dict[str, int]:
  """Writes the top-k of the gin-configured model (the teacher) over its task's split.

  Args:
    model: the teacher's experiment model (gin: MODEL); its `module` is the teacher.
    checkpoint_path: the teacher's checkpoint (gin: CHECKPOINT_PATH).
    dataset_cfg: task, split (gin: EVAL_SPLIT), feature lengths, batch size.
    output_dir: the data directory (gin: OFFLINE_TEACHER_DIR).
    top_k: k (gin: TEACHER_TOP_K).
    teacher_temperature: the teacher's softmax temperature (gin: TEACHER_TEMPERATURE); the
      distillation run must use the same.
    examples_per_shard: examples per file, the unit of resumption.
    num_examples: the split's first examples only (None: all).

  Returns:
    {'written': shards written now, 'skipped': shards that existed} of this host.
  """
  setup = run_setup.build_run(
      model,
      optax.identity(),
      dataset_cfg,
      model_partitions=1,
      rules=partitioning.standard_logical_axis_rules(),
      pack=False,
      checkpoint_paths={'CHECKPOINT_PATH': checkpoint_path},
  )
  params = checkpoints.restore_params(
      checkpoint_path, setup.layout.abstract_state['target'], setting='CHECKPOINT_PATH'
  )
  params = jax.device_put(jax.device_get(params), jax.local_devices()[0])
  info = dict(
      base_task=dataset_cfg.mixture_or_task_name,
      split=dataset_cfg.split,
      top_k=top_k,
      teacher_temperature=teacher_temperature,
      vocab_size=model.module.config.vocab_size,
      task_feature_lengths=dict(dataset_cfg.task_feature_lengths),
      examples_per_shard=examples_per_shard,
      checkpoint=os.fspath(setup.step_dirs['CHECKPOINT_PATH']),
  )
  tf.io.gfile.makedirs(output_dir)
  _write_info(output_dir, info)
  dataset = seqio.get_dataset(
      dataset_cfg.mixture_or_task_name,
      task_feature_lengths=dict(dataset_cfg.task_feature_lengths),
      dataset_split=dataset_cfg.split,
      shuffle=False,
      num_epochs=1,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
      use_cached=dataset_cfg.use_cached,
  )
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  top_k_fn = _top_k_fn(model, top_k, teacher_temperature)
  counts = dict(written=0, skipped=0)
  for shard, batches in _shards(dataset, examples_per_shard, dataset_cfg.batch_size):
    if shard % jax.process_count() != jax.process_index():
      continue
    path = offline_tasks.shard_path(output_dir, dataset_cfg.split, shard)
    if tf.io.gfile.exists(path):
      counts['skipped'] += 1
      continue
    with tf.io.TFRecordWriter(path + '.tmp') as writer:
      for batch in batches:
        inputs, targets, top = jax.device_get(top_k_fn(params, batch))
        for row in range(len(targets)):
          row_top = divergences.TopK(*(np.asarray(value[row]) for value in top))
          writer.write(_example(np.asarray(inputs[row]), np.asarray(targets[row]), row_top))
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
    counts['written'] += 1
  return counts


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  # The configurables gin binds live in the importable module, not in `__main__`.
  from gkd_t5x import offline_teacher as offline_lib  # noqa: PLW0406

  print(offline_lib.write_offline_teacher(), flush=True)


if __name__ == '__main__':
  gin_utils.run(main)
