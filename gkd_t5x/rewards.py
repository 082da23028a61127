"""Sequence rewards r(y) for RL + GKD (paper Eq. 5).

A reward maps a batch of sampled sequences to one float32 score per sequence:

  reward(inputs [B, I] int32, samples [B, L] int32, sample_weights [B, L] float32,
         targets [B, T] int32, target_weights [B, T] float32) -> [B] float32

Token-level rewards (`ExactMatchReward`) are jittable and run on the accelerator. String rewards
(`StringReward`, e.g. `rouge_reward`) decode the tokens with a seqio vocabulary and score the
strings on the host through `jax.pure_callback`, so they also run inside the jitted train step.
"""

from typing import Callable, Optional, Protocol, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from rouge_score import rouge_scorer
import seqio

Array = jnp.ndarray
StringScoreFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[float]]


class Reward(Protocol):
  """The reward interface (see the module docstring for shapes)."""

  def __call__(self, inputs: Array, samples: Array, sample_weights: Array, targets: Array,
               target_weights: Array) -> Array:
    ...


@gin.configurable
class ExactMatchReward:
  """1.0 where the sample (up to and including its first EOS) equals the target, else 0.0."""

  def __call__(self, inputs, samples, sample_weights, targets, target_weights):
    del inputs
    length = max(samples.shape[1], targets.shape[1])
    pad = lambda x, w: (jnp.pad(jnp.where(w > 0, x, 0), ((0, 0), (0, length - x.shape[1]))))
    return jnp.all(pad(samples, sample_weights) == pad(targets, target_weights),
                   axis=-1).astype(jnp.float32)


def _decode_rows(vocabulary: seqio.Vocabulary, tokens: np.ndarray,
                 weights: np.ndarray) -> list:
  # Only the weighted tokens belong to the sequence; the vocabulary stops at EOS by itself.
  return [vocabulary.decode([int(t) for t, w in zip(row, row_w) if w > 0])
          for row, row_w in zip(tokens, weights)]


@gin.configurable
class StringReward:
  """A host-side reward over decoded strings: score_fn(inputs, predictions, targets) -> [B].

  Attributes:
    vocabulary: the seqio vocabulary of inputs and outputs.
    score_fn: takes lists of input, prediction and target strings, returns one float each.
  """

  def __init__(self, vocabulary: seqio.Vocabulary, score_fn: StringScoreFn):
    self.vocabulary = vocabulary
    self.score_fn = score_fn

  def _host_scores(self, inputs, samples, sample_weights, targets, target_weights):
    inputs, samples, sample_weights, targets, target_weights = map(
        np.asarray, (inputs, samples, sample_weights, targets, target_weights))
    input_strings = _decode_rows(self.vocabulary, inputs, inputs > 0)
    predictions = _decode_rows(self.vocabulary, samples, sample_weights)
    references = _decode_rows(self.vocabulary, targets, target_weights)
    scores = np.asarray(self.score_fn(input_strings, predictions, references), np.float32)
    if scores.shape != (len(predictions),):
      raise ValueError(f'score_fn must return one score per sequence ({len(predictions)}), '
                       f'got shape {scores.shape}.')
    return scores

  def __call__(self, inputs, samples, sample_weights, targets, target_weights):
    result_shape = jax.ShapeDtypeStruct((samples.shape[0],), jnp.float32)
    return jax.pure_callback(self._host_scores, result_shape, inputs, samples, sample_weights,
                             targets, target_weights, vmap_method='sequential')


@gin.configurable
def rouge_reward(vocabulary: seqio.Vocabulary, rouge_type: str = 'rouge2') -> StringReward:
  """F-measure of `rouge_type` ('rouge1', 'rouge2', 'rougeLsum', ...) against the target."""
  scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)

  def score(inputs, predictions, references):
    del inputs
    return [scorer.score(ref, pred)[rouge_type].fmeasure
            for pred, ref in zip(predictions, references)]

  return StringReward(vocabulary, score)


@gin.configurable
def string_exact_match_reward(vocabulary: seqio.Vocabulary,
                              normalize: Optional[Callable[[str], str]] = None) -> StringReward:
  """1.0 where normalize(prediction) == normalize(target) (identity by default)."""
  normalize = normalize or (lambda s: s)

  def score(inputs, predictions, references):
    del inputs
    return [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)]

  return StringReward(vocabulary, score)
