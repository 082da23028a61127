"""Evaluation of a student: validation loss and seqio inference metrics, sharded.

`Evaluator` runs, on one split of one task:
  - the loss: `GKDModel.eval_fn` (the divergence to the teacher on the targets, or the
    cross-entropy for a model without teacher) averaged over the split's sequences, and with
    a teacher the divergence on the student's own samples (`GKDModel.on_policy_eval_fn`);
  - inference: `GKDModel.predict_batch_with_aux` decodes every input, and `seqio.Evaluator`
    decodes the tokens, postprocesses them and applies the task's metric functions (for the
    arithmetic task, exact match of the final answer), as T5X's `infer_eval` does.

Every host reads the whole split and feeds its own rows of each global batch; outputs are
replicated, so every host holds all predictions and host 0 computes the metrics.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf

from gkd_t5x import averages
from gkd_t5x import data
from gkd_t5x import eval_steps
from gkd_t5x import mixture_rows
from gkd_t5x import partitioning
from gkd_t5x import teachers

PyTree = Any
# fold_in data of the on-policy divergence's key stream (no batch index reaches it).
_ON_POLICY_STREAM = 2**32 - 1


class Evaluator:
  """Loss and inference metrics of a GKD model (`models.GKDModelBase`) on one split of one task.

  Attributes:
    task_name: the evaluated task.
    split: the evaluated split.
  """

  def __init__(
      self,
      model,
      config: data.DatasetConfig,
      mesh: jax.sharding.Mesh,
      param_shardings: PyTree,
      frozen_shardings: PyTree,
      rules: partitioning.LogicalAxisRules,
      *,
      num_examples: Optional[int] = None,
      seed: int = 0,
      loss_prefix: Optional[str] = None,
  ):
    """Prepares the split's data and the jitted, sharded loss and decode functions.

    Args:
      model: the `GKDModel` or `GKDDecoderOnlyModel`.
      config: task, split, feature lengths and the global evaluation batch size.
      mesh, rules: the training mesh and logical axis rules.
      param_shardings, frozen_shardings: NamedShardings of the student params and of the
        frozen networks' flax mutables that `loss` and `infer` get ({'teacher': ...} for the
        distillation loss, {'reward_model': ...} for a model reward; {} for none).
      num_examples: evaluate on the split's first examples only (None: all of them).
      seed: key of decode_method='sample' decoding.
      loss_prefix: the loss metrics' prefix (default: the split's name).
    """
    data.validate(config, mesh.shape[partitioning.DATA_AXIS])
    self.task_name = config.mixture_or_task_name
    self.split = config.split
    self._loss_prefix = loss_prefix or config.split
    self._config = config
    self._mesh = mesh
    self._rules = rules
    self._rng = jax.random.PRNGKey(seed)
    # The on-policy divergence's samples: fixed keys, so that every evaluation of a run (and
    # of runs that differ only in their training) samples with the same randomness; a stream
    # apart from the decoding keys, which fold in the batch index.
    self._loss_rng = jax.random.fold_in(self._rng, _ON_POLICY_STREAM)
    converter = model.FEATURE_CONVERTER_CLS(pack=False)
    self._seqio_evaluator = seqio.Evaluator(
        mixture_or_task_name=config.mixture_or_task_name,
        feature_converter=converter,
        eval_split=config.split,
        sequence_length=dict(config.task_feature_lengths),
        num_examples=num_examples,
        use_cached=config.use_cached,
        async_compute_metrics=False,
    )
    self._scores_reward = eval_steps.scores_reward(model, frozen_shardings)
    with partitioning.activate(self._mesh, self._rules):
      self._loss_step, self._predict_step = eval_steps.jit_eval_steps(
          model, mesh, param_shardings, frozen_shardings
      )

  def _batches(self, dataset: tf.data.Dataset):
    """Yields (global numpy batch, number of real rows), the last batch padded with zeros."""
    batch_size = self._config.batch_size
    for batch in dataset.batch(batch_size).as_numpy_iterator():
      yield data.pad_batch(batch, batch_size), len(next(iter(batch.values())))

  def loss(self, params: PyTree, frozen: Mapping[str, PyTree]) -> Dict[str, float]:
    """The split's mean loss metrics, each real sequence weighted equally (the padding rows of
    the last batch count in none), and `num_sequences`, the number of sequences evaluated.

    With a teacher and a divergence (not SFT), also `on_policy_divergence` (with the sampled
    length and EOS rate): the divergence on the student's own samples of the split's inputs
    (`GKDModel.on_policy_eval_fn`), drawn with fixed keys.
    """
    dataset = self._seqio_evaluator.cached_model_datasets[self.task_name].map(
        lambda index, features: features
    )
    steps, num_sequences = [], 0
    with partitioning.activate(self._mesh, self._rules):
      for index, (batch, num_real) in enumerate(self._batches(dataset)):
        steps.append(
            self._loss_step(
                params,
                frozen,
                data.make_global_batch(batch, self._mesh),
                jax.random.fold_in(self._loss_rng, index),
            )
        )
        num_sequences += num_real
    values = averages.compute_merged(steps) if steps else {}
    return dict(values, num_sequences=float(num_sequences))

  def _predict(
      self, params: PyTree, frozen: Mapping[str, PyTree]
  ) -> Tuple[List[Tuple[int, Sequence[int]]], np.ndarray]:
    """Decodes the split: [(example index, predicted token ids)], seqio's `predict_fn` output
    for its enumerated split, and each example's reward [N] (zeros where none is scored)."""
    dataset = self._seqio_evaluator.cached_model_datasets[self.task_name]
    indexed = dataset.map(lambda index, features: dict(features, _index=index))
    predictions, rewards = [], []
    with partitioning.activate(self._mesh, self._rules):
      for step, (batch, num_real) in enumerate(self._batches(indexed)):
        indices = batch.pop('_index')[:num_real]
        tokens, reward = jax.device_get(
            self._predict_step(
                params,
                frozen,
                data.make_global_batch(batch, self._mesh),
                jax.random.fold_in(self._rng, step),
            )
        )
        predictions.extend(zip(indices.tolist(), np.asarray(tokens)[:num_real].tolist()))
        rewards.append(np.asarray(reward, np.float64)[:num_real])
    return predictions, np.concatenate(rewards) if rewards else np.zeros([0])

  def infer(
      self, params: PyTree, frozen: Optional[Mapping[str, PyTree]] = None
  ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """The task's metrics on the split, and the decoded predictions.

    Args:
      params: the student's params.
      frozen: the frozen networks of `frozen_shardings` ({} or None: none).

    Returns:
      ({metric name: value} (empty on hosts other than 0), [{'index', 'input', 'target',
      'prediction'}] of every example, in the split's order). With an objective reward that
      can be scored (no network, or its params in `frozen`), the metrics include 'reward':
      the mean reward of the predictions.
    """
    predictions, rewards = self._predict(params, frozen or {})
    # seqio gets the decoded split; it sorts by index, detokenizes and applies the metrics.
    metrics_future, outputs = self._seqio_evaluator.evaluate(
        compute_metrics=jax.process_index() == 0, predict_fn=lambda dataset: predictions
    )
    metrics = metrics_future.result() or {}
    task_metrics = dict(metrics.get(self.task_name, {}))
    if self._scores_reward and rewards.size and task_metrics:
      task_metrics['reward'] = float(np.sum(rewards)) / rewards.size
    task = seqio.get_mixture_or_task(self.task_name)
    vocabulary = task.output_features['targets'].vocabulary
    examples = self._seqio_evaluator.cached_task_datasets[self.task_name].as_numpy_iterator()
    outputs = outputs[self.task_name].get(seqio.metrics.ModelOutputType.PREDICTION, [])
    records = [
        {
            'index': index,
            'input': _text(example, 'inputs'),
            'target': _text(example, 'targets'),
            'prediction': vocabulary.decode(tokens),
        }
        for index, (tokens, example) in enumerate(zip(outputs, examples))
    ]
    return {name: _scalar(value) for name, value in task_metrics.items()}, records

  def evaluate(
      self, params: PyTree, frozen: Mapping[str, PyTree], *, with_loss: bool = True
  ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """`loss` (unless `with_loss` is False) and `infer`, their metrics named as T5X names them:
    ({'<split>/<loss metric>': value, 'inference/<task>/<metric>': value}, records)."""
    metrics = {}
    if with_loss:
      metrics.update(
          {
              f'{self._loss_prefix}/{name}': value
              for name, value in self.loss(params, frozen).items()
          }
      )
    inference_metrics, records = self.infer(params, frozen)
    metrics.update(
        {f'inference/{self.task_name}/{name}': value for name, value in inference_metrics.items()}
    )
    return metrics, records


class TaskEvaluators:
  """`Evaluator`s of each task of a mixture (of the task alone), as one: the arguments are
  `Evaluator`'s. A mixture's tasks are evaluated one by one, their loss metrics named
  '<split>/<task>/<metric>'; a model with several teachers scores each task with its own
  teacher (`mixture_rows.teacher_of_tasks`).
  """

  def __init__(self, model, config: data.DatasetConfig, *args, **kwargs):
    data.validate(config)
    self.split = config.split
    task_names = list(mixture_rows.task_rates(config.mixture_or_task_name))
    mixed = task_names != [config.mixture_or_task_name]
    self._task_key = 'task' if mixed else None
    owners = mixture_rows.teacher_of_tasks(model.teachers) if model.teachers else {}
    self._evaluators = [
        Evaluator(
            model.with_routing(teachers.Routing.single(owners[task])) if owners else model,
            dataclasses.replace(config, mixture_or_task_name=task),
            *args,
            loss_prefix=f'{config.split}/{task}' if mixed else None,
            **kwargs,
        )
        for task in task_names
    ]

  def evaluate(
      self, params: PyTree, frozen: Mapping[str, PyTree], *, with_loss: bool = True
  ) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """Every task's `Evaluator.evaluate`: (their metrics, their records, task by task)."""
    metrics, records = {}, []
    for evaluator in self._evaluators:
      task_metrics, task_records = evaluator.evaluate(params, frozen, with_loss=with_loss)
      metrics.update(task_metrics)
      if self._task_key:
        task_records = [dict(record, task=evaluator.task_name) for record in task_records]
      records.extend(task_records)
    return metrics, records


def _text(example: Mapping[str, Any], feature: str) -> str:
  value = example.get(f'{feature}_pretokenized', b'')
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def _scalar(value: Any) -> float:
  """A seqio metric value (a number or a `seqio.metrics.Scalar`) as a float."""
  return float(getattr(value, 'value', value))
