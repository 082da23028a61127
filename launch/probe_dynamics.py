r"""Why does on-policy training move a student the way it does? Two probes of one checkpoint.

    python launch/probe_dynamics.py --gin_file=gin/runs/probe_dynamics.gin \
      --gin_file=gin/experiments/arithmetic/gkd.gin \
      --gin.CHECKPOINT_PATH="'<student run or step dir>'" \
      --gin.TEACHER_CHECKPOINT_PATH="'<teacher>'" [--gin.STUDENT_CONFIG=...]

The student samples once, at the objective's sampling temperature, from the inputs of the first
training batches (NUM_PROBE_BATCHES of BATCH_SIZE); then, on those frozen samples:

* **Descent check.** From a fresh optimizer state (as a distillation run starts), one AdamW
  update at each of RATES (global-norm clipping as the experiment sets it), then the objective's
  divergence on the same samples again. A step that raises the loss it was computed on is a
  step too large for this student: Adam's first update is lr * g / |g| per parameter (a sign
  step), whatever the gradient's size. The same check on the batch's targets (supervised KD's
  loss) and, without a teacher signal, on their cross-entropy (SFT's) tells whether on-policy
  samples are special.
* **Label probe.** With the task's hook (`diagnostics.FirstErrorFn`, `train.first_error_fn` in
  the experiment's gin), each sample's first error: whether the teacher's likeliest token at
  that position would have continued a right solution (what DAgger's argument needs), and the
  teacher's confidence, entropy and agreement with the sampled token before and after it (the
  labels the student learns on its own wrong and half-made prefixes).

Prints one JSON line.
"""

import functools
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import diagnostics
from gkd_t5x import divergences
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import optimizers
from gkd_t5x import partitioning
from gkd_t5x import trainer


def descent_check(
    loss_fn, params, rates: Sequence[float], max_grad_norm: Optional[float]
) -> Dict[str, Any]:
  """{'loss', 'grad_norm', 'after': {rate: loss after one fresh AdamW update at rate}} of a
  params -> scalar loss."""
  loss, grads = jax.value_and_grad(loss_fn)(params)
  after = {}
  for rate in rates:
    optimizer = optimizers.make_optimizer(optimizers.adamw(rate), max_grad_norm=max_grad_norm)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    after[f'{rate:g}'] = float(loss_fn(optax.apply_updates(params, updates)))
  return {'loss': float(loss), 'grad_norm': float(optax.global_norm(grads)), 'after': after}


def label_probe(
    first_error_fn: diagnostics.FirstErrorFn,
    vocabulary: Any,
    inputs_BxI: np.ndarray,
    sequences: objective.Sequences,
    teacher_logits_BxLxV: np.ndarray,
) -> Dict[str, float]:
  """The teacher's labels around each sample's first error (module docstring)."""
  tokens_BxL, weights_BxL = (np.asarray(x) for x in sequences)
  first_error_B = diagnostics.first_error_positions(
      first_error_fn, vocabulary, inputs_BxI, tokens_BxL, weights_BxL
  )
  length = tokens_BxL.shape[1]
  log_probs = jax.nn.log_softmax(teacher_logits_BxLxV, axis=-1)
  argmax_BxL = np.asarray(jnp.argmax(log_probs, axis=-1))
  confidence_BxL = np.exp(np.asarray(jnp.max(log_probs, axis=-1)))
  entropy_BxL = np.asarray(divergences.entropy(teacher_logits_BxLxV))
  positions_BxL = np.arange(length)[None, :]
  real = weights_BxL > 0
  before = real & (positions_BxL < first_error_B[:, None])
  after = real & (positions_BxL > first_error_B[:, None])
  right_at_error = []
  for row in np.flatnonzero(first_error_B < length):
    prefix = tokens_BxL[row, : first_error_B[row]].tolist() + [
        int(argmax_BxL[row, first_error_B[row]])
    ]
    inputs = [int(i) for i in inputs_BxI[row] if i > 0]
    text = diagnostics.text(vocabulary, prefix)
    error = first_error_fn(diagnostics.text(vocabulary, inputs), text)
    right_at_error.append(error is None or error >= len(text))
  agrees = argmax_BxL == tokens_BxL
  mean = lambda values, where: float(values[where].mean()) if where.any() else float('nan')
  return {
      'num_samples': int(real.any(axis=1).sum()),
      'samples_with_error': float(np.mean(first_error_B[real.any(axis=1)] < length)),
      'teacher_right_at_error': float(np.mean(right_at_error)) if right_at_error else float('nan'),
      'positions_after_error': float(after.sum() / max(real.sum(), 1)),
      **{
          f'teacher_{name}_{side}_error': mean(values, where)
          for name, values in (
              ('confidence', confidence_BxL),
              ('entropy', entropy_BxL),
              ('agrees_with_sample', agrees),
          )
          for side, where in (('before', before), ('after', after))
      },
  }


def probe(
    *,
    model: models.GKDModelBase,
    checkpoint_path: str,
    teacher_checkpoint_path: str,
    dataset_cfg: data.DatasetConfig,
    first_error_fn: Optional[diagnostics.FirstErrorFn] = None,
    rates: Sequence[float] = (1e-4, 3e-4, 1e-3, 2e-3),
    max_grad_norm: Optional[float] = 1.0,
    num_batches: int = 4,
    seed: int = 0,
) -> Dict[str, Any]:
  """The descent check and the label probe (module docstring) of a student checkpoint."""
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  lengths = converter.get_model_feature_lengths(dict(dataset_cfg.task_feature_lengths))
  shapes = {name: (dataset_cfg.batch_size, length) for name, length in lengths.items()}
  layout = trainer.make_layout(
      model,
      optax.identity(),
      partitioning.make_mesh(1),
      partitioning.standard_logical_axis_rules(),
      shapes,
  )
  params = checkpoints.restore_params(
      checkpoint_path, layout.abstract_state['target'], setting='CHECKPOINT_PATH'
  )
  teacher_params = checkpoints.restore_params(
      teacher_checkpoint_path,
      layout.abstract_frozen[models.TEACHER_COLLECTION],
      setting='TEACHER_CHECKPOINT_PATH',
  )
  config = model.gkd
  student_policy = functools.partial(model.policy, model.module)
  teacher = model.policy(model.teacher_module, teacher_params)
  batches = data.get_dataset(dataset_cfg, converter, repeat=False).take(num_batches)
  features = [model.objective_batch(batch) for batch in batches.as_numpy_iterator()]
  inputs = jnp.concatenate([f['encoder_input_tokens'] for f in features])
  targets = objective.Sequences(
      jnp.concatenate([f['decoder_target_tokens'] for f in features]),
      jnp.concatenate([f['decoder_loss_weights'] for f in features]).astype(jnp.float32),
  )
  student = student_policy(params)
  samples = objective.sample_sequences(
      student,
      student.read_prompt(inputs),
      rng=jax.random.PRNGKey(seed),
      batch_size=inputs.shape[0],
      length=targets.tokens.shape[1],
      max_decode_length=targets.tokens.shape[1],
      temperature=config.sampling_temperature,
      eos_id=model.output_vocabulary.eos_id,
  )

  def divergence(sequences, config, params):
    values = objective.score_sequences(config, student_policy(params), teacher, inputs, sequences)
    return diagnostics.sequence_divergence(values, sequences.weights)

  cross_entropy = objective.GKDConfig(divergence='cross_entropy', lmbda=0.0)
  result = {
      'checkpoint': checkpoint_path,
      'divergence': config.divergence,
      'num_samples': int(inputs.shape[0]),
      'descent': {
          name: descent_check(
              jax.jit(functools.partial(divergence, *args)), params, rates, max_grad_norm
          )
          for name, args in (
              ('on_policy_samples', (samples, config)),
              ('targets', (targets, config)),
              ('targets_cross_entropy', (targets, cross_entropy)),
          )
      },
  }
  if first_error_fn is not None:
    teacher_logits = teacher.logits(
        teacher.read_prompt(inputs), objective.shift_right(samples.tokens), samples.tokens
    )
    result['labels'] = label_probe(
        first_error_fn, model.output_vocabulary, np.asarray(inputs), samples, teacher_logits
    )
  return result


if __name__ == '__main__':
  # The run file binds `probe_script.probe` (`import __main__`).
  gin_utils.run_printing_json(probe)
