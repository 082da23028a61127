"""SeqKD tasks: a task's inputs with the teacher's outputs as targets (`gkd_t5x.seqkd_data`).

`register_seqkd_task(name, data_dir)` registers the directory that `python -m
gkd_t5x.seqkd_data` wrote as a task with one split, the one decoded (normally 'train'), and
the base task's output features, postprocessing and metrics, so that its inputs are tokenized
exactly as the base task's. Evaluation reads the base task (EVAL_MIXTURE_OR_TASK_NAME).

At import, the variable GKD_SEQKD_TASKS registers tasks for runs that name them in gin:
`GKD_SEQKD_TASKS=arithmetic_seqkd=/tmp/seqkd_arithmetic,xsum_seqkd=gs://bucket/seqkd_xsum`.
"""

import json
import os

import seqio
import tensorflow as tf

from gkd_t5x.tasks import common

SEQKD_TASKS_ENV = 'GKD_SEQKD_TASKS'
TASK_FILE = 'seqkd_task.json'  # what gkd_t5x.seqkd_data writes beside the data


def register_seqkd_task(name: str, data_dir: str) -> seqio.Task:
  """Registers (once) and returns the SeqKD task `name` of the data in `data_dir`.

  Raises:
    ValueError: `data_dir` holds no SeqKD data, or its base task is not registered.
  """
  task_file = os.path.join(data_dir, TASK_FILE)
  if not tf.io.gfile.exists(task_file):
    raise ValueError(
        f'SeqKD task {name!r}: {task_file} does not exist; write the data with '
        '`python -m gkd_t5x.seqkd_data` first.'
    )
  with tf.io.gfile.GFile(task_file) as f:
    info = json.load(f)
  base = seqio.get_mixture_or_task(info['base_task'])
  if not isinstance(base, seqio.Task):
    raise ValueError(
        f'SeqKD task {name!r}: the base {info["base_task"]!r} is a mixture; '
        'decode each of its tasks into its own SeqKD task.'
    )
  split = info['split']
  config = {'data_dir': data_dir, 'base_task': base.name, 'split': split}
  return common.register_task_once(
      name,
      config,
      lambda: seqio.Task(
          name,
          source=common.JsonlDataSource(
              data_dir=data_dir, env_var=SEQKD_TASKS_ENV, subdir='', splits=(split,)
          ),
          preprocessors=list(common.TOKENIZE_AND_APPEND_EOS),
          output_features=base.output_features,
          postprocess_fn=base.postprocessor,
          metric_fns=list(base.metric_fns),
      ),
  )


def register_from_environment() -> None:
  """Registers the `name=data_dir` pairs of $GKD_SEQKD_TASKS (comma-separated)."""
  for item in filter(None, os.environ.get(SEQKD_TASKS_ENV, '').split(',')):
    name, separator, data_dir = item.partition('=')
    if not (separator and name.strip() and data_dir.strip()):
      raise ValueError(
          f'{SEQKD_TASKS_ENV} must be comma-separated name=data_dir pairs, got {item!r}.'
      )
    register_seqkd_task(name.strip(), data_dir.strip())


register_from_environment()
