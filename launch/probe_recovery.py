r"""Does a model know the recovery? Its probability of the slip marker after wrong and right
step values, under teacher forcing.

    python launch/probe_recovery.py --gin_file=gin/runs/probe_recovery.gin \
      --gin_file=gin/experiments/arithmetic/chain5_slip_teacher.gin \
      --gin.CHECKPOINT_PATH="'<run or step dir>'" [--gin.PROBE_TASK="'arithmetic_chain5_slips30'"]

The model reads the targets of a slip task (`gkd_t5x.tasks.steps`: '74+17=11!91;...') on
EVAL_SPLIT. After every step value the next target token is the marker (the value was wrong)
or ';' (it was right); the model's probability of the marker there says whether it detects a
wrong value (detection, 1 at best) and whether it cries wolf after a right one (false alarms,
0 at best). A teacher meant to correct a student's slips needs both: on-policy distillation
passes its false alarms to the student along with its corrections. Prints one JSON line.
"""

from typing import Any, Dict, Optional

import jax
import numpy as np
import optax

from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import partitioning
from gkd_t5x import trainer
from gkd_t5x.tasks import steps


def marker_probabilities(
    log_probs_BxLxV: np.ndarray,
    targets_BxL: np.ndarray,
    *,
    marker_id: int,
    separator_id: int,
    digit_ids: np.ndarray,
) -> Dict[str, np.ndarray]:
  """The marker's probability at each position that follows a step value (a digit) and holds
  the marker ('after_wrong') or the step separator ('after_right')."""
  after_value = np.zeros(targets_BxL.shape, bool)
  after_value[:, 1:] = np.isin(targets_BxL[:, :-1], digit_ids)
  marker_probability = np.exp(log_probs_BxLxV[..., marker_id])
  return {
      'after_wrong': marker_probability[after_value & (targets_BxL == marker_id)],
      'after_right': marker_probability[after_value & (targets_BxL == separator_id)],
  }


def probe(
    *,
    model: models.GKDModel,
    checkpoint_path: str,
    dataset_cfg: data.DatasetConfig,
    num_examples: Optional[int] = None,
    marker: str = '!',
) -> Dict[str, Any]:
  """Teacher-forced marker probabilities of the checkpoint's student network on the first
  `num_examples` (None: all) examples of `dataset_cfg`."""
  mesh = partitioning.make_mesh(1)
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  lengths = converter.get_model_feature_lengths(dict(dataset_cfg.task_feature_lengths))
  shapes = {name: (dataset_cfg.batch_size, length) for name, length in lengths.items()}
  layout = trainer.make_layout(
      model, optax.identity(), mesh, partitioning.standard_logical_axis_rules(), shapes
  )
  params = checkpoints.restore_params(
      checkpoint_path, layout.abstract_state['target'], setting='CHECKPOINT_PATH'
  )
  token_id = lambda text: steps.single_token_id(model.output_vocabulary, text)
  token_ids = dict(
      marker_id=token_id(marker),
      separator_id=token_id(';'),
      digit_ids=np.asarray([token_id(digit) for digit in '0123456789']),
  )
  log_probs_fn = jax.jit(
      lambda p, b: jax.nn.log_softmax(
          model.module.apply(
              {'params': p},
              b['encoder_input_tokens'],
              b['decoder_input_tokens'],
              b['decoder_target_tokens'],
              enable_dropout=False,
          )
      )
  )
  found = {'after_wrong': [], 'after_right': []}
  dataset = data.get_dataset(dataset_cfg, converter, repeat=False, drop_remainder=False)
  if num_examples is not None:
    dataset = dataset.unbatch().take(num_examples).batch(dataset_cfg.batch_size)
  for batch in dataset.as_numpy_iterator():
    log_probs = np.asarray(log_probs_fn(params, batch))
    for name, values in marker_probabilities(
        log_probs, batch['decoder_target_tokens'], **token_ids
    ).items():
      found[name].append(values)
  found = {name: np.concatenate(values) for name, values in found.items()}
  return {
      'checkpoint': checkpoint_path,
      'task': dataset_cfg.mixture_or_task_name,
      'split': dataset_cfg.split,
      'detection': float(np.mean(found['after_wrong'])),
      'detection_over_half': float(np.mean(found['after_wrong'] > 0.5)),
      'false_alarm': float(np.mean(found['after_right'])),
      'false_alarm_over_half': float(np.mean(found['after_right'] > 0.5)),
      'num_wrong_values': int(found['after_wrong'].size),
      'num_right_values': int(found['after_right'].size),
  }


if __name__ == '__main__':
  # The run file binds `probe_script.probe` (`import __main__`).
  gin_utils.run_printing_json(probe)
