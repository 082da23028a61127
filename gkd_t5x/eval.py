r"""Evaluates a saved student: `python -m gkd_t5x.eval --gin_file=... --gin.NAME=VALUE`.

    python -m gkd_t5x.eval --gin_file=gin/runs/eval.gin \
        --gin_file=gin/experiments/arithmetic/gkd.gin \
        --gin.CHECKPOINT_PATH="'/tmp/gkd'" --gin.EVAL_OUTPUT_DIR="'/tmp/gkd/test_eval'" \
        --gin.TEACHER_CHECKPOINT_PATH="'/tmp/teacher'"

Restores the student's params from CHECKPOINT_PATH (a checkpoint step directory, or a run
directory whose latest step is used: this project's or a T5X orbax checkpoint) and, for a
model with a teacher, the teacher's from TEACHER_CHECKPOINT_PATH; then runs the task's seqio
metrics on EVAL_SPLIT (with the decoding the model's gin sets: greedy, sampling, beam) and the
loss. Writes metrics.json and predictions.jsonl (input, target, prediction: the infer output)
to EVAL_OUTPUT_DIR, and the metrics as TensorBoard scalars there.
"""

import os
from typing import Dict, Optional

from clu import metric_writers
import jax
import optax

import gin
from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import evaluation
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import partitioning
from gkd_t5x import run_setup


@gin.configurable
def evaluate(
    *,
    model: models.GKDModelBase,
    checkpoint_path: str,
    dataset_cfg: data.DatasetConfig,
    output_dir: str,
    teacher_checkpoint_path: Optional[str] = None,
    reward_checkpoint_path: Optional[str] = None,
    model_partitions: int = 1,
    num_examples: Optional[int] = None,
    random_seed: int = 0,
) -> Dict[str, float]:
  """Metrics of the checkpoint's student on one split, written to `output_dir`.

  Args:
    model: the GKD model, encoder-decoder or decoder-only (gin: MODEL).
    checkpoint_path: the student (gin: CHECKPOINT_PATH).
    dataset_cfg: task, split (gin: EVAL_SPLIT), lengths and batch size.
    output_dir: where metrics.json, predictions.jsonl and event files go (gin: EVAL_OUTPUT_DIR).
    teacher_checkpoint_path: the teacher, for the distillation loss; without it the loss of a
      model with a teacher is not computed.
    reward_checkpoint_path: a model reward's classifier; with it (or with a reward that needs
      no network, such as exact match) the predictions' mean reward is the metric 'reward'.
    model_partitions: devices per model replica.
    num_examples: the split's first examples only; None: all.
    random_seed: key of sampling decoders.

  Returns:
    {'<split>/<loss metric>': value, 'inference/<task>/<metric>': value}.
  """
  rules = partitioning.standard_logical_axis_rules()
  # No optimizer state is restored: optax.identity() has none.
  setup = run_setup.build_run(
      model,
      optax.identity(),
      dataset_cfg,
      model_partitions=model_partitions,
      rules=rules,
      pack=False,
      checkpoint_paths={'CHECKPOINT_PATH': checkpoint_path},
  )
  layout, step_dir, model = setup.layout, setup.step_dirs['CHECKPOINT_PATH'], setup.model
  params = checkpoints.restore_params(
      checkpoint_path, layout.abstract_state['target'], setting='CHECKPOINT_PATH'
  )
  # Each frozen network is optional here: the loss needs the teacher, the reward its model.
  frozen = run_setup.restore_frozen(
      layout, teacher_checkpoint_path, reward_checkpoint_path, model=model
  )
  evaluator = evaluation.TaskEvaluators(
      model,
      dataset_cfg,
      layout.mesh,
      layout.param_shardings,
      {name: layout.frozen_shardings[name] for name in frozen},
      rules,
      num_examples=num_examples,
      seed=random_seed,
  )
  has_teacher = models.TEACHER_COLLECTION in layout.abstract_frozen
  metrics, records = evaluator.evaluate(
      params, frozen, with_loss=models.TEACHER_COLLECTION in frozen or not has_teacher
  )
  writer = metric_writers.create_default_writer(output_dir, just_logging=jax.process_index() != 0)
  run_setup.write_results(
      output_dir,
      int(step_dir.name.rsplit('_', 1)[-1]),
      metrics,
      records,
      writer=writer,
      summary={'checkpoint': os.fspath(step_dir), 'split': evaluator.split},
  )
  writer.close()
  if jax.process_index() == 0:
    for name, value in sorted(metrics.items()):
      print(f'{name}: {value:.4f}', flush=True)
  return metrics


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  # The configurables gin binds live in the importable module, not in `__main__`.
  from gkd_t5x import eval as eval_lib  # noqa: PLW0406

  eval_lib.evaluate()


if __name__ == '__main__':
  gin_utils.run(main)
