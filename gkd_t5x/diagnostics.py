"""What repeated steps do to a student: measurements of the training dynamics.

On-policy training can make a student worse than its start while every single step is right
(the loss, its gradient and the sampler are each tested against references). What is left to
measure is the dynamics, and `Diagnostics` measures them every `period` steps, on the step's
own batch and keys, so on the very samples that step trains on (issue 23, results/README.md):

  grad_noise_fraction        r = ||g_A - g_B||^2 / ||g_A + g_B||^2 of the gradients of the
                             batch's two halves A and B. With g_H = G + e_H, independent noise
                             of covariance S per half, E||g_A - g_B||^2 = 2 tr S and
                             E||g_A + g_B||^2 = 4 ||G||^2 + 2 tr S, so r estimates
                             tr S_full / (||G||^2 + tr S_full): the share of the full batch
                             gradient's expected squared norm that is noise (0: none, 1: all;
                             one measurement can exceed 1 where the halves' gradients point
                             apart, noise outweighing the signal).
  probe_divergence           the objective's divergence (Eq. 2, batch mean) on a fixed probe
                             set: the student's own samples, at the sampling temperature, of
                             the inputs of the run's first batch, drawn at its first step and
                             kept in MODEL_DIR/diagnostics_probe.npz. DAgger's argument (the
                             teacher labels the states the student visits) says it should not
                             rise under forward KL on-policy.
  samples_with_error         with a task hook (`FirstErrorFn`): the share of the step's
                             on-policy samples that contain an error,
  weight_after_first_error   the share of their Eq. 2 loss weight (1 / L_y per position) on
                             positions after each sample's first error,
  divergence_after_first_error  and the share of their divergence there.

The trainer also reports, every step, `update_norm` and `update_grad_ratio` (the optimizer's
update against the gradient; `trainer.make_train_step`).

Shape letters: B batch, I input length, L target length.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from gkd_t5x import divergences
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import partitioning
from gkd_t5x import trainer

PyTree = Any
Batch = Mapping[str, jax.Array]

# (input text, sample text up to its EOS) -> index of the sample's first wrong character, or
# None: where the sample leaves every right continuation of the input (a task's own notion).
FirstErrorFn = Callable[[str, str], Optional[int]]

PROBE_FILE = 'diagnostics_probe.npz'


@dataclasses.dataclass(frozen=True)
class Probe:
  """Fixed sequences to score the student on: inputs [B, I] int32 and `objective.Sequences`
  [B, L] (tokens int32, weights float32), in the objective's features."""

  inputs: np.ndarray
  sequences: objective.Sequences

  def save(self, path: str) -> None:
    with open(path, 'wb') as f:
      np.savez(f, inputs=self.inputs, tokens=self.sequences.tokens, weights=self.sequences.weights)

  @classmethod
  def load(cls, path: str) -> 'Probe':
    with np.load(path) as arrays:
      sequences = objective.Sequences(arrays['tokens'], arrays['weights'])
      return cls(arrays['inputs'], sequences)


def mask_rows(batch: Batch, keep_B: jax.Array) -> Batch:
  """The batch with the loss weights of the rows where `keep_B` [B] bool is False set to 0: such
  rows count in nothing (their on-policy samples are drawn, then weighted 0)."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
  return dict(batch, decoder_loss_weights=weights * keep_B[:, None].astype(weights.dtype))


def gradient_noise_fraction(loss_fn: Callable[[Batch], jax.Array], batch: Batch) -> jax.Array:
  """r = ||g_A - g_B||^2 / ||g_A + g_B||^2 (module docstring) of the gradients of `loss_fn` (a
  batch -> scalar loss, differentiable in params it closes over, returning gradients) on the
  first and the second half of the batch's rows."""
  rows_B = jnp.arange(batch['decoder_target_tokens'].shape[0])
  half = rows_B.shape[0] // 2
  grads_a = loss_fn(mask_rows(batch, rows_B < half))
  grads_b = loss_fn(mask_rows(batch, rows_B >= half))
  difference = optax.global_norm(jax.tree_util.tree_map(jnp.subtract, grads_a, grads_b))
  total = optax.global_norm(jax.tree_util.tree_map(jnp.add, grads_a, grads_b))
  return difference**2 / jnp.maximum(total**2, 1e-30)


def sequence_divergence(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Eq. 2's per-sequence mean of per-position values [B, L], then the batch mean: a scalar."""
  per_sequence, valid = divergences.sequence_mean(values, weights)
  return divergences.batch_mean(per_sequence, valid)


def error_shares(
    values: np.ndarray, weights: np.ndarray, first_error_B: np.ndarray
) -> Dict[str, float]:
  """samples_with_error, weight_after_first_error and divergence_after_first_error (module
  docstring) of per-position divergences and weights [B, L] of samples whose first error is at
  position first_error_B [B] (L where there is none)."""
  length = weights.shape[1]
  has_tokens_B = weights.sum(axis=1) > 0
  share_BxL = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
  after_BxL = np.arange(length)[None, :] > first_error_B[:, None]
  mass_BxL = share_BxL * values
  return {
      'samples_with_error': float(np.mean(first_error_B[has_tokens_B] < length)),
      'weight_after_first_error': float(
          (share_BxL * after_BxL).sum() / max(share_BxL.sum(), 1e-30)
      ),
      'divergence_after_first_error': float(
          (mass_BxL * after_BxL).sum() / max(mass_BxL.sum(), 1e-30)
      ),
  }


def first_error_positions(
    first_error_fn: FirstErrorFn,
    vocabulary: Any,
    inputs_BxI: np.ndarray,
    tokens_BxL: np.ndarray,
    weights_BxL: np.ndarray,
) -> np.ndarray:
  """[B] int: the token index of each sample's first error (`first_error_fn` on the decoded
  texts), L where it has none. Character positions map to tokens through each token's own
  decoded piece, exactly so for byte vocabularies."""
  length = tokens_BxL.shape[1]
  positions = np.full(tokens_BxL.shape[0], length)
  for row, (inputs, tokens, weights) in enumerate(zip(inputs_BxI, tokens_BxL, weights_BxL)):
    ids = [int(token) for token, weight in zip(tokens, weights) if weight > 0]
    pieces = [text(vocabulary, [token]) for token in ids]
    error = first_error_fn(text(vocabulary, [int(i) for i in inputs if i > 0]), ''.join(pieces))
    if error is not None:
      ends = np.cumsum([len(piece) for piece in pieces])
      positions[row] = int(np.searchsorted(ends, error, side='right'))
  return positions


def text(vocabulary: Any, ids: Sequence[int]) -> str:
  """The decoded text of token ids (ids joined by spaces for a vocabulary of bare ids)."""
  decoded = vocabulary.decode(ids)
  return decoded if isinstance(decoded, str) else ' '.join(map(str, decoded))


class Diagnostics:
  """The measurements of the module docstring, jitted once for a run's layout.

  Args:
    model: the GKD model.
    layout: the run's shardings.
    seed_rng: the run's key: at step s the step key is fold_in(seed_rng, s), the train step's.
    first_error_fn: the task's hook, or None (no error shares).
  """

  def __init__(
      self,
      model: models.GKDModelBase,
      layout: trainer.StateLayout,
      seed_rng: jax.Array,
      first_error_fn: Optional[FirstErrorFn] = None,
  ):
    self._model = model
    self._first_error_fn = first_error_fn
    self._seed_rng = seed_rng
    self._has_teacher = model.has_teacher and model.gkd.needs_teacher
    replicated = partitioning.replicated(layout.mesh)
    shardings = (
        layout.param_shardings,
        layout.frozen_shardings,
        trainer.batch_shardings(layout),
        replicated,
    )
    self._measure = jax.jit(
        self._measure_fn,
        in_shardings=(*shardings, replicated, replicated),
        out_shardings=replicated,
    )
    self._sample = jax.jit(self._sample_fn, in_shardings=shardings, out_shardings=replicated)

  def _policies(self, params: PyTree, frozen: PyTree):
    model = self._model
    teacher = model.teacher_policy(frozen) if self._has_teacher else None
    return model.policy(model.module, params), teacher

  def _sample_fn(self, params, frozen, batch, rng) -> Dict[str, jax.Array]:
    """The student's on-policy samples of the batch's inputs with the step key `rng` (the
    step's own samples when it is on-policy), and the divergence at each of their positions."""
    config = self._model.gkd
    student, teacher = self._policies(params, frozen)
    features = self._model.objective_batch(batch)
    inputs = features['encoder_input_tokens']
    batch_size, length = features['decoder_target_tokens'].shape
    sequences = objective.sample_sequences(
        student,
        student.read_prompt(inputs),
        rng=objective.step_keys(rng)[2],
        batch_size=batch_size,
        length=length,
        max_decode_length=config.max_decode_length or length,
        temperature=config.sampling_temperature,
        top_k=config.sampling_top_k,
        top_p=config.sampling_top_p,
        eos_id=self._model.output_vocabulary.eos_id,
    )
    real_B = jnp.any(features['decoder_loss_weights'] > 0, axis=-1)
    weights = sequences.weights * real_B[:, None]
    values = (
        objective.score_sequences(config, student, teacher, inputs, sequences)
        if teacher is not None
        else jnp.zeros_like(weights)
    )
    return dict(inputs=inputs, tokens=sequences.tokens, weights=weights, values=values)

  def _measure_fn(self, params, frozen, batch, rng, step, probe) -> Dict[str, jax.Array]:
    model = self._model

    def loss_grads(batch):
      loss = lambda params: model.loss_fn(params, batch, rng, frozen, step=step)[0]
      return jax.grad(loss)(params)

    measured = {'grad_noise_fraction': gradient_noise_fraction(loss_grads, batch)}
    if probe is not None:
      student, teacher = self._policies(params, frozen)
      inputs, sequences = probe
      values = objective.score_sequences(model.gkd, student, teacher, inputs, sequences)
      measured['probe_divergence'] = sequence_divergence(values, sequences.weights)
    return measured

  def make_probe(self, params: PyTree, frozen: PyTree, batch: Batch, step: int) -> Probe:
    """The probe set: the student's samples of the batch's inputs at `step`."""
    rng = jax.random.fold_in(self._seed_rng, step)
    sampled = jax.device_get(self._sample(params, frozen, batch, rng))
    return Probe(sampled['inputs'], objective.Sequences(sampled['tokens'], sampled['weights']))

  def __call__(
      self, params: PyTree, frozen: PyTree, batch: Batch, step: int, probe: Optional[Probe]
  ) -> Dict[str, float]:
    """The measurements (module docstring) before step `step` trains on `batch`."""
    rng = jax.random.fold_in(self._seed_rng, step)
    probe_arrays = None
    if probe is not None and self._has_teacher:
      probe_arrays = (
          jnp.asarray(probe.inputs),
          jax.tree_util.tree_map(jnp.asarray, probe.sequences),
      )
    values = {
        name: float(value)
        for name, value in jax.device_get(
            self._measure(params, frozen, batch, rng, jnp.asarray(step, jnp.int32), probe_arrays)
        ).items()
    }
    if self._first_error_fn is not None and self._model.gkd.may_be_on_policy:
      sampled = jax.device_get(self._sample(params, frozen, batch, rng))
      first_error_B = first_error_positions(
          self._first_error_fn,
          self._model.output_vocabulary,
          sampled['inputs'],
          sampled['tokens'],
          sampled['weights'],
      )
      values.update(error_shares(sampled['values'], sampled['weights'], first_error_B))
    return values


def load_or_make_probe(
    diagnostics: Diagnostics,
    model_dir: str,
    params: PyTree,
    frozen: PyTree,
    batch: Batch,
    step: int,
) -> Probe:
  """The run's probe: read from MODEL_DIR (a resumed run), else drawn now and saved by host 0.

  Host 0 decides for every host, so that all of them draw (a collective computation) or none.
  """
  path = os.path.join(model_dir, PROBE_FILE)
  if multihost_utils.broadcast_one_to_all(np.asarray(os.path.exists(path))):
    return Probe.load(path)
  probe = diagnostics.make_probe(params, frozen, batch, step)
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    # Written whole or not at all: a run killed while writing draws its probe again.
    probe.save(path + '.tmp')
    os.replace(path + '.tmp', path)
  return probe
