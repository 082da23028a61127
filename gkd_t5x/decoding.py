"""Autoregressive decoding: temperature / top-k / top-p sampling, greedy, beam search.

A decoder is driven through one callable, `TokensToLogits`, that feeds one token per row and returns
the next-token logits with an updated cache. The decoder input at step t is the output of step t - 1
(`decoder_start_id` at t = 0), so the outputs y_0 .. y_{L-1} line up with teacher-forced targets.

All functions are pure and `jax.jit`-able when the decoding settings (lengths, temperature, top_k,
top_p, beam size, alpha, ids) are static Python values; each loop is a `lax.while_loop` that stops
as soon as every row has ended.

Randomness: `temperature_sample` takes one key of its own and uses `jax.random.fold_in(rng, t)` at
step t. A caller that needs other randomness in the same step (the GKD objective: dropout, the
lambda coin, sampling) splits its step rng first and passes only the sampling key here, never a key
it uses elsewhere:

  dropout_rng, coin_rng, sample_rng = jax.random.split(step_rng, 3)
  sample = temperature_sample(..., rng=sample_rng, ...)

Since the key of step t depends only on (rng, t), a KV-cached decoder and one that recomputes the
whole prefix at every step sample the same tokens.

Forced tokens (`TokenForcing`): a sampler may be told, after some tokens, which tokens to emit next
whatever the model prefers, e.g. a calculator that writes the result of an arithmetic annotation the
model opened (Cobbe et al. 2021). The forced tokens are fed back to the model like its own, so the
cache and what follows see them.

Shape letters: as in the README, plus F forced tokens, N beam-search candidates per row (at most
2K), k the `top_k` tokens kept, BK batch x beams flattened into one axis.
"""

import math
import numbers
from typing import Any, Callable, Optional, Tuple

import flax
import jax
from jax import lax
import jax.numpy as jnp

PyTree = Any

# (tokens_Bx1 int32, cache, position int32 scalar) -> (logits_BxV float32, new_cache).
# Every cache leaf has the batch as its leading axis, so that beam search can repeat it to B * K
# rows and gather it by beam parent.
TokensToLogits = Callable[[jnp.ndarray, PyTree, jnp.ndarray], Tuple[jnp.ndarray, PyTree]]


@flax.struct.dataclass
class SampleOutput:
  """Result of `temperature_sample` and `greedy_decode`.

  Attributes:
    tokens: [B, L] int32 outputs y_0 .. y_{L-1}; `pad_id` after a row's first EOS.
    weights: [B, L] float32; 1.0 up to and including the first EOS, 0.0 after it (1.0 everywhere in
      a row without EOS).
    lengths: [B] int32, `weights.sum(-1)`.
    reached_eos: [B] bool, whether the row emitted EOS.
    log_probs: [B] float32, sum over weighted positions of log p(y_t) under the distribution sampled
      from (after temperature, top-k and top-p); for greedy decoding, under the temperature-1
      softmax.
  """

  tokens: jnp.ndarray
  weights: jnp.ndarray
  lengths: jnp.ndarray
  reached_eos: jnp.ndarray
  log_probs: jnp.ndarray


@flax.struct.dataclass
class BeamSearchOutput:
  """Result of `beam_search`, best hypothesis first.

  Attributes:
    tokens: [B, K, L] int32 hypotheses; `pad_id` after the first EOS.
    scores: [B, K] float32 length-penalized log probabilities, log p(y) / ((5 + |y|) / 6) ** alpha,
      in decreasing order; -inf in slots left empty because fewer than K distinct hypotheses exist.
    weights: [B, K, L] float32; 1.0 up to and including the first EOS, 0.0 after it (and 0.0
      everywhere in empty slots).
  """

  tokens: jnp.ndarray
  scores: jnp.ndarray
  weights: jnp.ndarray


# (tokens_BxL int32 so far, step int32 scalar, ask_B bool) -> forced_BxF int32.
ForcedTokensFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


@flax.struct.dataclass
class TokenForcing:
  """Tokens a sampler must emit next, decided from what a row has emitted so far.

  After step t emits token y_t in a row that has nothing pending and has not ended, and
  `trigger_ids[y_t]` is True, `fn(tokens_BxL, t, ask_B)` is called (only when some row asks, so a
  host callback runs rarely) and returns, for each asking row, up to F tokens to emit at steps
  t + 1, t + 2, ...; 0 (pad) ends a row's list. Forced tokens count towards `log_probs` with the
  model's probability of them.

  Attributes:
    trigger_ids: [V] bool, the tokens after which `fn` is asked.
    fn: a `ForcedTokensFn` returning [B, F] int32 (rows that did not ask are ignored); may be a
      `jax.pure_callback`.
    max_forced: F, static.
  """

  trigger_ids: jnp.ndarray
  fn: ForcedTokensFn = flax.struct.field(pytree_node=False)
  max_forced: int = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class _SampleState:
  step: jnp.ndarray  # int32 scalar: steps run so far.
  tokens_BxL: jnp.ndarray
  ended_B: jnp.ndarray
  log_probs_B: jnp.ndarray
  cache: PyTree
  forced_BxF: jnp.ndarray  # tokens still to force, left-aligned, 0-padded.


@flax.struct.dataclass
class _BeamState:
  step: jnp.ndarray  # int32 scalar: steps run so far.
  live_logprobs_BxK: jnp.ndarray
  live_seqs_BxKxL: jnp.ndarray
  finished_scores_BxK: jnp.ndarray
  finished_seqs_BxKxL: jnp.ndarray
  cache: PyTree


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')


def _check_cache(initial_cache: PyTree, batch_size: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(initial_cache):
    shape = jnp.shape(leaf)
    if not shape or shape[0] != batch_size:
      raise ValueError(
          'initial_cache: every leaf must have the batch (batch_size='
          f'{batch_size}) as its leading axis; leaf '
          f'{jax.tree_util.keystr(path)} has shape {shape}.'
      )


def _check_logits(logits: jnp.ndarray, rows: int) -> jnp.ndarray:
  if logits.ndim != 2 or logits.shape[0] != rows:
    raise ValueError(
        f'tokens_to_logits must return logits of shape [{rows}, V], got {logits.shape}.'
    )
  # Networks may compute in bfloat16; sampling and scores are in float32.
  return logits.astype(jnp.float32)


def _previous_tokens(outputs: jnp.ndarray, step: jnp.ndarray, decoder_start_id: int) -> jnp.ndarray:
  """[..., L] int32 outputs so far -> [...] int32 decoder inputs of `step`."""
  prev = lax.dynamic_index_in_dim(outputs, jnp.maximum(step - 1, 0), axis=-1, keepdims=False)
  return jnp.where(step == 0, decoder_start_id, prev).astype(jnp.int32)


def weights_through_first_eos(tokens: jnp.ndarray, eos_id: int) -> jnp.ndarray:
  """[..., L] int32 -> [..., L] float32: 1.0 up to and including the first EOS."""
  is_eos = tokens == eos_id
  eos_strictly_before = jnp.cumsum(is_eos, axis=-1) - is_eos
  return (eos_strictly_before == 0).astype(jnp.float32)


def _filter_logits(logits_BxV: jnp.ndarray, top_k: int, top_p: float) -> jnp.ndarray:
  """Sets logits outside the top-k, then outside the nucleus, to -inf.

  The nucleus is taken on the distribution renormalized over the top-k tokens: the smallest set of
  most likely tokens whose probability reaches top_p (the most likely token is always kept).

  Args:
    logits_BxV: [B, V] float32, already divided by the temperature.
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: nucleus mass in (0, 1]; 1.0 keeps all.

  Returns:
    [B, V] float32 logits, -inf outside the kept set.
  """
  vocab_size = logits_BxV.shape[-1]
  if (top_k == 0 or top_k >= vocab_size) and top_p == 1.0:
    return logits_BxV
  k = min(top_k, vocab_size) if top_k > 0 else vocab_size
  sorted_logits_Bxk, sorted_idx_Bxk = lax.top_k(logits_BxV, k)
  keep_Bxk = jnp.ones(sorted_logits_Bxk.shape, bool)
  if top_p < 1.0:
    probs_Bxk = jax.nn.softmax(sorted_logits_Bxk, axis=-1)
    mass_before_Bxk = jnp.cumsum(probs_Bxk, axis=-1) - probs_Bxk
    keep_Bxk = mass_before_Bxk < top_p
  # Scatter by index rather than thresholding on a value, so that ties at the boundary cannot let
  # more than k tokens through.
  rows_Bx1 = jnp.arange(logits_BxV.shape[0])[:, None]
  keep_BxV = jnp.zeros(logits_BxV.shape, bool).at[rows_Bx1, sorted_idx_Bxk].set(keep_Bxk)
  return jnp.where(keep_BxV, logits_BxV, -jnp.inf)


def temperature_sample(
    tokens_to_logits: TokensToLogits,
    initial_cache: PyTree,
    *,
    rng: Optional[jax.Array],
    batch_size: int,
    max_decode_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
    forcing: Optional[TokenForcing] = None,
) -> SampleOutput:
  """Samples y ~ p(. | x) one token at a time, with temperature, top-k and top-p.

  At step t the logits are divided by `temperature`, restricted to the `top_k` most likely tokens,
  then to the nucleus of mass `top_p` of what is left, and y_t is drawn with key
  `jax.random.fold_in(rng, t)`. After a row's first EOS its tokens are `pad_id`; the loop ends when
  every row has emitted EOS or after `max_decode_length` steps.

  Args:
    tokens_to_logits: the decoding step, see `TokensToLogits`; called with [B, 1] int32 tokens and
      returns [B, V] logits.
    initial_cache: pytree whose leaves all have leading axis B.
    rng: PRNG key used only for sampling (see the module docstring on how to split a step rng); may
      be None only when temperature == 0.
    batch_size: B.
    max_decode_length: L, the number of output positions.
    temperature: static float >= 0; 0.0 means greedy (argmax) decoding, where top_k and top_p have
      no effect.
    top_k: static int >= 0; 0 turns top-k off.
    top_p: static float in (0, 1]; 1.0 turns nucleus sampling off.
    eos_id: end-of-sequence id.
    pad_id: id written after a row's first EOS.
    decoder_start_id: decoder input at step 0.
    forcing: tokens emitted instead of the model's after trigger tokens (see `TokenForcing`); its
      ids must not be `pad_id`.

  Returns:
    SampleOutput with tokens [B, L] int32, weights [B, L] float32, lengths [B] int32,
    reached_eos [B] bool and log_probs [B] float32.
  """
  _check_int('batch_size', batch_size, 1)
  _check_int('max_decode_length', max_decode_length, 1)
  _check_int('top_k', top_k, 0)
  if not (isinstance(temperature, numbers.Real) and 0.0 <= temperature < math.inf):
    raise ValueError(
        f'temperature must be a static finite float >= 0 (0.0: greedy), got {temperature!r}.'
    )
  if not (isinstance(top_p, numbers.Real) and 0.0 < top_p <= 1.0):
    raise ValueError(f'top_p must be a static float in (0, 1], got {top_p!r}.')
  greedy = temperature == 0.0
  if rng is None and not greedy:
    raise ValueError('rng: a PRNG key is required when temperature > 0.')
  _check_cache(initial_cache, batch_size)

  def step_fn(state: _SampleState) -> _SampleState:
    t = state.step
    inputs_Bx1 = _previous_tokens(state.tokens_BxL, t, decoder_start_id)[:, None]
    logits_BxV, cache = tokens_to_logits(inputs_Bx1, state.cache, t)
    logits_BxV = _check_logits(logits_BxV, batch_size)
    if greedy:
      token_B = jnp.argmax(logits_BxV, axis=-1)
      logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    else:
      logits_BxV = _filter_logits(logits_BxV / temperature, top_k, top_p)
      token_B = jax.random.categorical(jax.random.fold_in(rng, t), logits_BxV)
      logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    pending_B = state.forced_BxF[:, 0] != pad_id
    token_B = jnp.where(pending_B, state.forced_BxF[:, 0], token_B)
    token_logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
    token_B = jnp.where(state.ended_B, pad_id, token_B).astype(jnp.int32)
    tokens_BxL = lax.dynamic_update_index_in_dim(state.tokens_BxL, token_B, t, axis=1)
    forced_BxF = jnp.concatenate(
        [state.forced_BxF[:, 1:], jnp.full_like(state.forced_BxF[:, :1], pad_id)], axis=1
    )
    if forcing is not None:
      ask_B = ~pending_B & ~state.ended_B & forcing.trigger_ids[token_B]
      new_BxF = lax.cond(
          jnp.any(ask_B),
          lambda: forcing.fn(tokens_BxL, t, ask_B).astype(jnp.int32),
          lambda: jnp.full_like(forced_BxF, pad_id),
      )
      forced_BxF = jnp.where(ask_B[:, None], new_BxF, forced_BxF)
    return _SampleState(
        step=t + 1,
        tokens_BxL=tokens_BxL,
        ended_B=state.ended_B | (token_B == eos_id),
        log_probs_B=state.log_probs_B + jnp.where(state.ended_B, 0.0, token_logp_B),
        cache=cache,
        forced_BxF=forced_BxF,
    )

  def not_done(state: _SampleState) -> jnp.ndarray:
    return (state.step < max_decode_length) & ~jnp.all(state.ended_B)

  state = lax.while_loop(
      not_done,
      step_fn,
      _SampleState(
          step=jnp.array(0, jnp.int32),
          tokens_BxL=jnp.full((batch_size, max_decode_length), pad_id, jnp.int32),
          ended_B=jnp.zeros((batch_size,), bool),
          log_probs_B=jnp.zeros((batch_size,), jnp.float32),
          cache=initial_cache,
          forced_BxF=jnp.full(
              (batch_size, forcing.max_forced if forcing else 1), pad_id, jnp.int32
          ),
      ),
  )
  weights_BxL = weights_through_first_eos(state.tokens_BxL, eos_id)
  return SampleOutput(
      tokens=state.tokens_BxL,
      weights=weights_BxL,
      lengths=weights_BxL.sum(axis=-1).astype(jnp.int32),
      reached_eos=state.ended_B,
      log_probs=state.log_probs_B,
  )


def greedy_decode(
    tokens_to_logits: TokensToLogits,
    initial_cache: PyTree,
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
    forcing: Optional[TokenForcing] = None,
) -> SampleOutput:
  """Argmax decoding: `temperature_sample` at temperature 0.0 (see there)."""
  return temperature_sample(
      tokens_to_logits,
      initial_cache,
      rng=None,
      batch_size=batch_size,
      max_decode_length=max_decode_length,
      temperature=0.0,
      eos_id=eos_id,
      pad_id=pad_id,
      decoder_start_id=decoder_start_id,
      forcing=forcing,
  )


def _length_penalty(alpha: float, length: Any) -> Any:
  """Wu et al. (2016), arXiv:1609.08144: ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    tokens_to_logits: TokensToLogits,
    initial_cache: PyTree,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_length: int,
    alpha: float = 0.6,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
) -> BeamSearchOutput:
  """Beam search for the K hypotheses of highest length-penalized log prob.

  A hypothesis y is scored log p(y) / ((5 + |y|) / 6) ** alpha, |y| counting its EOS; a hypothesis
  that reaches `max_decode_length` without EOS is scored at that length. As in T5X, each step
  extends the K live beams, keeps the top 2K candidates, and moves those ending in EOS to a separate
  finished set; cache rows follow their beam's parent. As in fairseq and Hugging Face, a candidate
  may finish only if it ranks among the top K of the step, so that beam_size=1 with alpha=0 is
  greedy decoding. The loop stops once no live beam can beat the worst finished hypothesis in any
  row.

  Args:
    tokens_to_logits: the decoding step, see `TokensToLogits`; called with [B * K, 1] int32 tokens
      (row b * K + k is beam k of example b).
    initial_cache: pytree whose leaves all have leading axis B; repeated to B * K rows.
    batch_size: B.
    beam_size: K.
    max_decode_length: L, the number of output positions.
    alpha: static float >= 0, length penalty exponent; 0.0 ranks by log prob.
    eos_id: end-of-sequence id.
    pad_id: id written after a hypothesis' EOS.
    decoder_start_id: decoder input at step 0.

  Returns:
    BeamSearchOutput with tokens [B, K, L] int32, scores [B, K] float32 and weights [B, K, L]
    float32, best hypothesis first.
  """
  _check_int('batch_size', batch_size, 1)
  _check_int('beam_size', beam_size, 1)
  _check_int('max_decode_length', max_decode_length, 1)
  if not (isinstance(alpha, numbers.Real) and 0.0 <= alpha < math.inf):
    raise ValueError(f'alpha must be a static finite float >= 0, got {alpha!r}.')
  _check_cache(initial_cache, batch_size)
  b, k, l = batch_size, beam_size, max_decode_length
  # Log probs only fall and, for alpha >= 0, the penalty only grows with length, so
  # log p / penalty(L) bounds every score a live beam can still reach.
  max_penalty = _length_penalty(alpha, l)

  def step_fn(state: _BeamState) -> _BeamState:
    t = state.step
    inputs_BxK = _previous_tokens(state.live_seqs_BxKxL, t, decoder_start_id)
    logits_BKxV, cache = tokens_to_logits(inputs_BxK.reshape(b * k, 1), state.cache, t)
    logits_BKxV = _check_logits(logits_BKxV, b * k)
    v = logits_BKxV.shape[-1]
    cand_BxKxV = state.live_logprobs_BxK[..., None] + jax.nn.log_softmax(
        logits_BKxV, axis=-1
    ).reshape(b, k, v)
    n = min(2 * k, k * v)
    top_logprobs_BxN, flat_BxN = lax.top_k(cand_BxKxV.reshape(b, k * v), n)
    parent_BxN, token_BxN = flat_BxN // v, flat_BxN % v
    seqs_BxNxL = jnp.take_along_axis(state.live_seqs_BxKxL, parent_BxN[..., None], axis=1)
    seqs_BxNxL = jnp.where(jnp.arange(l) == t, token_BxN[..., None], seqs_BxNxL)
    is_eos_BxN = token_BxN == eos_id

    # Live: the best K candidates without EOS. At most K of the 2K candidates end in EOS (one per
    # beam), so K remain.
    live_logprobs_BxK, live_pos_BxK = lax.top_k(
        jnp.where(is_eos_BxN, -jnp.inf, top_logprobs_BxN), k
    )
    live_seqs_BxKxL = jnp.take_along_axis(seqs_BxNxL, live_pos_BxK[..., None], axis=1)
    live_parent_BxK = jnp.take_along_axis(parent_BxN, live_pos_BxK, axis=1)

    # Finished: merge the new hypotheses with the old and keep the best K. At the last step every
    # candidate ends (truncated at L).
    ends_BxN = (
        (is_eos_BxN | (t == l - 1))
        & (jnp.arange(n) < k)
        & (top_logprobs_BxN > -jnp.inf)  # Excludes the empty initial beams.
    )
    new_scores_BxN = jnp.where(ends_BxN, top_logprobs_BxN / _length_penalty(alpha, t + 1), -jnp.inf)
    finished_scores_BxK, finished_pos_BxK = lax.top_k(
        jnp.concatenate([state.finished_scores_BxK, new_scores_BxN], axis=1), k
    )
    finished_seqs_BxKxL = jnp.take_along_axis(
        jnp.concatenate([state.finished_seqs_BxKxL, seqs_BxNxL], axis=1),
        finished_pos_BxK[..., None],
        axis=1,
    )

    rows_BK = (jnp.arange(b)[:, None] * k + live_parent_BxK).reshape(b * k)
    return _BeamState(
        step=t + 1,
        live_logprobs_BxK=live_logprobs_BxK,
        live_seqs_BxKxL=live_seqs_BxKxL,
        finished_scores_BxK=finished_scores_BxK,
        finished_seqs_BxKxL=finished_seqs_BxKxL,
        cache=jax.tree.map(lambda x: jnp.take(x, rows_BK, axis=0), cache),
    )

  def not_done(state: _BeamState) -> jnp.ndarray:
    best_reachable_B = jnp.max(state.live_logprobs_BxK, axis=-1) / max_penalty
    # An empty finished slot (-inf) keeps a row going while it has a live beam.
    worst_finished_B = jnp.min(state.finished_scores_BxK, axis=-1)
    return (state.step < l) & ~jnp.all(worst_finished_B >= best_reachable_B)

  # Beams of a row start identical: only beam 0 is live, so that the first step does not yield K
  # copies of each candidate.
  first_beam_only_K = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32)
  state = lax.while_loop(
      not_done,
      step_fn,
      _BeamState(
          step=jnp.array(0, jnp.int32),
          live_logprobs_BxK=jnp.broadcast_to(first_beam_only_K, (b, k)),
          live_seqs_BxKxL=jnp.full((b, k, l), pad_id, jnp.int32),
          finished_scores_BxK=jnp.full((b, k), -jnp.inf, jnp.float32),
          finished_seqs_BxKxL=jnp.full((b, k, l), pad_id, jnp.int32),
          cache=jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), initial_cache),
      ),
  )
  filled_BxK = state.finished_scores_BxK > -jnp.inf
  return BeamSearchOutput(
      tokens=state.finished_seqs_BxKxL,
      scores=state.finished_scores_BxK,
      weights=weights_through_first_eos(state.finished_seqs_BxKxL, eos_id) * filled_BxK[..., None],
  )
