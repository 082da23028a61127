"""Sequence rewards r(y) for RL + GKD (paper Eq. 5).

A reward maps a batch of sampled sequences to one float32 score per sequence:

  reward(inputs [B, I] int32, samples [B, L] int32, sample_weights [B, L] float32,
         targets [B, T] int32, target_weights [B, T] float32) -> [B] float32

Token-level rewards (`ExactMatchReward`) are jittable and run on the accelerator. String rewards
(`StringReward`, e.g. `metrics.rouge_reward`) decode the tokens with the task's vocabulary and
score the strings on the host through `jax.pure_callback`, so they also run inside the jitted
train step. This module imports no text library: the objective takes its `Reward` interface.

Model rewards (`EntailmentReward`, the paper's RLEF reward of Fig. 5) score with a frozen network
of their own. They carry that network as `module` and take its params through `bind(params)`,
which returns the reward function above: `models.GKDModel` initializes the params as the
variable collection 'reward_model', the trainers restore them from REWARD_CHECKPOINT_PATH and
pass them into the step beside the teacher's, sharded by the same logical axis rules.
"""

import functools
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import gin
from gkd_t5x import network
from gkd_t5x import vocabularies

Array = jnp.ndarray
StringScoreFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[float]]


class Reward(Protocol):
  """The reward interface (see the module docstring for shapes)."""

  def __call__(
      self,
      inputs: Array,
      samples: Array,
      sample_weights: Array,
      targets: Array,
      target_weights: Array,
  ) -> Array:
    ...


@gin.configurable
class ExactMatchReward:
  """1.0 where the sample (up to and including its first EOS) equals the target, else 0.0."""

  def __call__(self, inputs, samples, sample_weights, targets, target_weights):
    del inputs
    length = max(samples.shape[1], targets.shape[1])
    pad = lambda x, w: (jnp.pad(jnp.where(w > 0, x, 0), ((0, 0), (0, length - x.shape[1]))))
    return jnp.all(pad(samples, sample_weights) == pad(targets, target_weights), axis=-1).astype(
        jnp.float32
    )


def _decode_rows(
    vocabulary: vocabularies.Vocabulary, tokens: np.ndarray, weights: np.ndarray
) -> list:
  # Only the weighted tokens belong to the sequence; the vocabulary stops at EOS by itself.
  return [
      vocabulary.decode([int(t) for t, w in zip(row, row_w) if w > 0])
      for row, row_w in zip(tokens, weights)
  ]


@gin.configurable
class StringReward:
  """A host-side reward over decoded strings: score_fn(inputs, predictions, targets) -> [B].

  Attributes:
    vocabulary: the vocabulary of inputs and outputs.
    score_fn: takes lists of input, prediction and target strings, returns one float each.
  """

  def __init__(self, vocabulary: vocabularies.Vocabulary, score_fn: StringScoreFn):
    self.vocabulary = vocabulary
    self.score_fn = score_fn

  def _host_scores(self, inputs, samples, sample_weights, targets, target_weights):
    inputs, samples, sample_weights, targets, target_weights = map(
        np.asarray, (inputs, samples, sample_weights, targets, target_weights)
    )
    input_strings = _decode_rows(self.vocabulary, inputs, inputs > 0)
    predictions = _decode_rows(self.vocabulary, samples, sample_weights)
    references = _decode_rows(self.vocabulary, targets, target_weights)
    scores = np.asarray(self.score_fn(input_strings, predictions, references), np.float32)
    if scores.shape != (len(predictions),):
      raise ValueError(
          f'score_fn must return one score per sequence ({len(predictions)}), '
          f'got shape {scores.shape}.'
      )
    return scores

  def __call__(self, inputs, samples, sample_weights, targets, target_weights):
    result_shape = jax.ShapeDtypeStruct((samples.shape[0],), jnp.float32)
    return jax.pure_callback(
        self._host_scores,
        result_shape,
        inputs,
        samples,
        sample_weights,
        targets,
        target_weights,
        vmap_method='sequential',
    )


@gin.configurable
def string_exact_match_reward(
    vocabulary: vocabularies.Vocabulary, normalize: Optional[Callable[[str], str]] = None
) -> StringReward:
  """1.0 where normalize(prediction) == normalize(target) (identity by default)."""
  normalize = normalize or (lambda s: s)

  def score(inputs, predictions, references):
    del inputs
    return [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)]

  return StringReward(vocabulary, score)


def pack_rows(segments: Sequence[Array], length: int) -> Array:
  """[B, length] int32: each row's non-padding tokens of `segments`, in order, left-aligned.

  Args:
    segments: [B, S_i] int token arrays, 0 = padding (anywhere in a row).
    length: the output length; a row longer than it loses its last tokens.

  Returns:
    The rows of concat(segments) without their padding, padded with 0 to `length`.
  """
  tokens = jnp.concatenate([jnp.asarray(s, jnp.int32) for s in segments], axis=1)
  keep = tokens > 0
  position = jnp.cumsum(keep, axis=1) - 1
  # Dropped tokens go to an extra column that is cut off.
  position = jnp.where(keep & (position < length), position, length)
  rows = jnp.arange(tokens.shape[0])[:, None]
  packed = jnp.zeros((tokens.shape[0], length + 1), jnp.int32).at[rows, position].set(tokens)
  return packed[:, :length]


@gin.configurable
class EntailmentReward:
  """r(y) = p_C(target | premise: x hypothesis: y) under a frozen T5 classifier C.

  The reward of RL from entailment feedback (RLEF; Roit et al., 2023; the paper's Fig. 5): an
  NLI classifier, a T5X encoder-decoder trained to answer a fixed target string (e.g. '1' or
  'entailment') when the hypothesis follows from the premise, reads the student's input x as
  premise and its sample y as hypothesis; the reward is the probability of the target string,
  exp(sum_t log p_C(target_t | target_<t, input)), in [0, 1]. The classifier shares the
  student's vocabulary (token ids pass through unchanged). The premise is cut so that the
  prefixes and the whole hypothesis fit in `input_length` tokens.

  Attributes:
    module: the classifier `network.Transformer` (its params: `bind`).
    vocabulary: the vocabulary of student and classifier.
    target: the string whose probability is the reward.
    premise_prefix, hypothesis_prefix: the classifier's input format.
    input_length: the classifier's encoder length.
  """

  def __init__(
      self,
      module: network.Transformer,
      vocabulary: vocabularies.Vocabulary,
      target: str = '1',
      premise_prefix: str = 'premise: ',
      hypothesis_prefix: str = ' hypothesis: ',
      input_length: int = 1024,
  ):
    self.module = module
    self.vocabulary = vocabulary
    self.input_length = int(input_length)
    self.target = target
    self.premise_prefix = premise_prefix
    self.hypothesis_prefix = hypothesis_prefix

  @functools.cached_property
  def _tokens(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Encoded on first use, so that building the reward (gin, config checks) reads no
    # vocabulary file.
    if self.module.config.vocab_size < self.vocabulary.vocab_size:
      raise ValueError(
          f"EntailmentReward: the classifier's T5Config.vocab_size = "
          f"{self.module.config.vocab_size} is smaller than the vocabulary's "
          f"{self.vocabulary.vocab_size} tokens; it must share the student's "
          'vocabulary.'
      )
    encode = lambda text: np.asarray(self.vocabulary.encode(text), np.int32).reshape(-1)
    target = np.concatenate([encode(self.target), [self.vocabulary.eos_id]]).astype(np.int32)
    premise_prefix, hypothesis_prefix = encode(self.premise_prefix), encode(self.hypothesis_prefix)
    if len(target) < 2:
      raise ValueError(f'EntailmentReward.target {self.target!r} encodes to no token.')
    if self.input_length - len(premise_prefix) - len(hypothesis_prefix) < 2:
      raise ValueError(
          f'EntailmentReward.input_length = {self.input_length} leaves no room for '
          'premise and hypothesis after the prefixes.'
      )
    return premise_prefix, hypothesis_prefix, target

  def input_shapes(self, batch_size: int = 1) -> Dict[str, Tuple[int, int]]:
    """The classifier's feature shapes, for initializing its params."""
    target = (batch_size, len(self._tokens[2]))
    return {
        'encoder_input_tokens': (batch_size, self.input_length),
        'decoder_input_tokens': target,
        'decoder_target_tokens': target,
    }

  def classifier_inputs(self, inputs: Array, samples: Array, sample_weights: Array) -> Array:
    """[B, input_length] 'premise: x hypothesis: y' tokens of inputs [B, I] and samples [B, L]."""
    batch = inputs.shape[0]
    premise_prefix, hypothesis_prefix, _ = self._tokens
    hypothesis = jnp.where(sample_weights > 0, samples, 0)
    room = (
        self.input_length
        - len(premise_prefix)
        - len(hypothesis_prefix)
        - jnp.sum(hypothesis > 0, axis=1, keepdims=True)
    )
    premise = jnp.where((inputs > 0) & (jnp.cumsum(inputs > 0, axis=1) <= room), inputs, 0)
    prefix = lambda tokens: jnp.broadcast_to(jnp.asarray(tokens), (batch, len(tokens)))
    return pack_rows(
        [prefix(premise_prefix), premise, prefix(hypothesis_prefix), hypothesis], self.input_length
    )

  def score(
      self,
      params: Any,
      inputs: Array,
      samples: Array,
      sample_weights: Array,
      targets: Array,
      target_weights: Array,
  ) -> Array:
    """[B] float32 probability of the target string (the `Reward` signature after params)."""
    del targets, target_weights
    classifier_inputs = self.classifier_inputs(inputs, samples, sample_weights)
    target_tokens = self._tokens[2]
    target = jnp.broadcast_to(jnp.asarray(target_tokens), (inputs.shape[0], len(target_tokens)))
    decoder_inputs = jnp.pad(target, ((0, 0), (1, 0)))[:, :-1]
    logits = self.module.apply(
        {'params': params}, classifier_inputs, decoder_inputs, target, enable_dropout=False
    )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
    return jax.lax.stop_gradient(jnp.exp(jnp.sum(token_log_probs, axis=-1)))

  def bind(self, params: Any) -> Reward:
    """The reward with the classifier's params filled in."""
    return functools.partial(self.score, params)
