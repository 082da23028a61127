"""Token-level divergences between teacher and student next-token distributions.

P is the teacher distribution p_T(. | y_<n, x), Q the student's p_S(. | y_<n, x), both over the
vocabulary at one position. Every divergence takes logits of shape `[..., vocab]` and returns
per-position values of shape `logits.shape[:-1]`, computed in log space in at least float32, so
that logits of magnitude 1e4 and vocabularies of 32k+ stay finite.

`teacher_top_k` keeps the teacher's k likeliest tokens and one tail bucket for the rest of its
mass (`TopK`); `top_k_buckets` puts the student's distribution on the same k + 1 buckets, so that
any divergence above compares two distributions over them. `sampled_reverse_kl_advantages` is
the per-token advantage of the sampled-token reverse-KL estimator, from the two models'
log-probabilities of the sampled tokens only.

`sequence_mean` reduces per-position values to the paper's sequence discrepancy (Eq. 2),
`batch_mean` then averages over the sequences of a batch. `chunked_sequence_sum` computes such
weighted sums over chunks of the sequence, so that long targets never hold float32
[B, L, V] intermediates.

The logits must be finite: a -inf logit (a token masked out of the vocabulary) would turn the
0 * log 0 terms into NaN.
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jnp.ndarray
DivergenceFn = Callable[..., Array]
PyTree = Any


def _log_probs(logits: Array, temperature: float) -> Array:
  """log softmax(logits / temperature), computed in at least float32."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  return jax.nn.log_softmax(logits.astype(dtype) / temperature, axis=-1)


def _check(
    teacher_logits: Array,
    student_logits: Array,
    teacher_temperature: float,
    student_temperature: float,
) -> None:
  if teacher_logits.shape != student_logits.shape:
    raise ValueError(
        'teacher_logits and student_logits must have the same shape [..., vocab]; got '
        f'{teacher_logits.shape} and {student_logits.shape} (do teacher and student share a '
        'vocabulary?)'
    )
  for name, value in (
      ('teacher_temperature', teacher_temperature),
      ('student_temperature', student_temperature),
  ):
    if not value > 0:
      raise ValueError(f'{name} must be > 0, got {value}.')


def _check_beta(beta: float) -> None:
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f'beta must be in [0, 1], got {beta}.')


def _kl_from_log_probs(log_p: Array, log_q: Array) -> Array:
  """KL(P || Q) = sum_c P(c) (log P(c) - log Q(c)) over the last axis."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def forward_kl(
    teacher_logits: Array,
    student_logits: Array,
    *,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
) -> Array:
  """Forward KL, KL(P || Q): mode-covering; supervised KD minimizes it (paper Eq. 3).

  Args:
    teacher_logits: [..., vocab] teacher logits (P).
    student_logits: [..., vocab] student logits (Q), same shape.
    teacher_temperature: softmax temperature of the teacher inside the loss.
    student_temperature: softmax temperature of the student inside the loss.

  Returns:
    [...] per-position KL(P || Q), float32 (float64 for float64 inputs).
  """
  _check(teacher_logits, student_logits, teacher_temperature, student_temperature)
  return _kl_from_log_probs(
      _log_probs(teacher_logits, teacher_temperature),
      _log_probs(student_logits, student_temperature),
  )


def reverse_kl(
    teacher_logits: Array,
    student_logits: Array,
    *,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
) -> Array:
  """Reverse KL, KL(Q || P): mode-seeking. Arguments and result as in `forward_kl`."""
  _check(teacher_logits, student_logits, teacher_temperature, student_temperature)
  return _kl_from_log_probs(
      _log_probs(student_logits, student_temperature),
      _log_probs(teacher_logits, teacher_temperature),
  )


def generalized_jsd(
    teacher_logits: Array,
    student_logits: Array,
    *,
    beta: float,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
) -> Array:
  """Generalized Jensen-Shannon divergence JSD(beta) of paper Eq. 1.

    JSD(beta)(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q,

  with log M = logsumexp(log beta + log P, log(1 - beta) + log Q). Near beta = 0 it behaves like
  beta * KL(P || Q) (forward-like, mode-covering), near beta = 1 like (1 - beta) * KL(Q || P)
  (reverse-like, mode-seeking). The formula is 0 at both ends, so by this project's convention
  beta = 0 is exactly forward KL and beta = 1 exactly reverse KL.

  Args:
    teacher_logits: [..., vocab] teacher logits (P).
    student_logits: [..., vocab] student logits (Q), same shape.
    beta: mixture weight of the teacher in M, a Python float in [0, 1].
    teacher_temperature: softmax temperature of the teacher inside the loss.
    student_temperature: softmax temperature of the student inside the loss.

  Returns:
    [...] per-position JSD(beta), float32 (float64 for float64 inputs).
  """
  _check_beta(beta)
  kwargs = dict(teacher_temperature=teacher_temperature, student_temperature=student_temperature)
  if beta == 0.0:
    return forward_kl(teacher_logits, student_logits, **kwargs)
  if beta == 1.0:
    return reverse_kl(teacher_logits, student_logits, **kwargs)
  _check(teacher_logits, student_logits, teacher_temperature, student_temperature)
  log_p = _log_probs(teacher_logits, teacher_temperature)
  log_q = _log_probs(student_logits, student_temperature)
  log_m = jnp.logaddexp(jnp.log(beta) + log_p, jnp.log1p(-beta) + log_q)
  return beta * _kl_from_log_probs(log_p, log_m) + (1.0 - beta) * _kl_from_log_probs(log_q, log_m)


def total_variation(
    teacher_logits: Array,
    student_logits: Array,
    *,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
) -> Array:
  """Total variation distance TVD(P, Q) = 1/2 sum_c |P(c) - Q(c)|, as f-distill uses it.

  Symmetric and bounded in [0, 1]. Arguments and result as in `forward_kl`.
  """
  _check(teacher_logits, student_logits, teacher_temperature, student_temperature)
  p = jnp.exp(_log_probs(teacher_logits, teacher_temperature))
  q = jnp.exp(_log_probs(student_logits, student_temperature))
  return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def token_cross_entropy(
    targets: Array, student_logits: Array, *, student_temperature: float = 1.0
) -> Array:
  """-log Q(target) at every position: the SFT / SeqKD loss (forward KL to a one-hot P).

  Args:
    targets: [...] int token ids.
    student_logits: [..., vocab] student logits (Q).
    student_temperature: softmax temperature of the student inside the loss.

  Returns:
    [...] per-position cross-entropy, float32 (float64 for float64 logits).
  """
  return -token_log_probs(targets, student_logits, temperature=student_temperature)


def token_log_probs(tokens: Array, logits: Array, *, temperature: float = 1.0) -> Array:
  """log softmax(logits / temperature)[token] at every position.

  Args:
    tokens: [...] int token ids.
    logits: [..., vocab] logits.
    temperature: softmax temperature.

  Returns:
    [...] per-position log-probabilities, float32 (float64 for float64 logits).
  """
  if tokens.shape != logits.shape[:-1]:
    raise ValueError(
        f'tokens shape {tokens.shape} must equal logits.shape[:-1] = {logits.shape[:-1]}.'
    )
  log_p = _log_probs(logits, temperature)
  return jnp.take_along_axis(log_p, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits: Array, *, temperature: float = 1.0) -> Array:
  """H(P) = -sum_c P(c) log P(c), P = softmax(logits / temperature): how unsure a model is of
  the next token (0 for a one-hot P, log(vocab) for a uniform one).

  Args:
    logits: [..., vocab] logits.
    temperature: softmax temperature (> 0).

  Returns:
    [...] per-position entropy in nats, float32 (float64 for float64 logits).
  """
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature}.')
  log_p = _log_probs(logits, temperature)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


DIVERGENCES = {
    'forward_kl': forward_kl,
    'reverse_kl': reverse_kl,
    'jsd': generalized_jsd,
    'total_variation': total_variation,
}


def get_divergence(name: str, beta: Optional[float] = None) -> DivergenceFn:
  """Looks up a divergence by name; `jsd` needs `beta` and is returned with it bound.

  Returns:
    fn(teacher_logits, student_logits, *, teacher_temperature, student_temperature) -> [...]
  """
  if name not in DIVERGENCES:
    raise ValueError(f'divergence must be one of {sorted(DIVERGENCES)}, got {name!r}.')
  fn = DIVERGENCES[name]
  if name == 'jsd':
    if beta is None:
      raise ValueError("divergence 'jsd' needs beta in [0, 1]; got beta=None.")
    _check_beta(beta)  # At lookup, so a bad beta fails before any tracing.

    def jsd(teacher_logits, student_logits, **kwargs):
      return generalized_jsd(teacher_logits, student_logits, beta=beta, **kwargs)

    return jsd
  return fn


# The log-probability of an empty tail bucket (k = V): finite, so that 0 * (log 0 - log 0) terms
# are exactly 0 rather than NaN, and far below any log-probability of float32 logits.
EMPTY_LOG_PROB = -1e30


class TopK(NamedTuple):
  """The teacher's top-k next-token log-probabilities and the log-probability of the rest.

  Attributes:
    ids: [..., k] int32 token ids, likeliest first.
    log_probs: [..., k] float32 log P(ids) at the loss's teacher temperature.
    tail_log_prob: [...] float32 log (1 - sum_j P(ids_j)), the tail bucket, computed as a
      logsumexp over the other tokens (exact also when the top-k mass is ~1);
      `EMPTY_LOG_PROB` when k = V.
  """

  ids: Array
  log_probs: Array
  tail_log_prob: Array

  def bucket_log_probs(self) -> Array:
    """[..., k + 1] the log-probs of the k tokens, then of the tail bucket."""
    return jnp.concatenate([self.log_probs, self.tail_log_prob[..., None]], axis=-1)


def _complement_log_prob(log_probs: Array, ids: Array) -> Array:
  """[...] log sum_{c not in ids} exp(log_probs[c]) of log_probs [..., V] and ids [..., k]:
  a logsumexp with the ids' entries set to `EMPTY_LOG_PROB`, so no 1 - mass cancels; about
  `EMPTY_LOG_PROB` (and a finite gradient) when the ids cover the vocabulary."""
  rest = jnp.put_along_axis(log_probs, ids, EMPTY_LOG_PROB, axis=-1, inplace=False)
  return jax.nn.logsumexp(rest, axis=-1)


def teacher_top_k(teacher_logits: Array, *, k: int, temperature: float = 1.0) -> TopK:
  """The teacher's top-k log-probs of softmax(teacher_logits / temperature) and its tail bucket.

  Args:
    teacher_logits: [..., V] teacher logits.
    k: how many tokens to keep, 1 <= k <= V.
    temperature: the teacher's softmax temperature inside the loss (> 0).

  Returns:
    `TopK` with ids and log_probs [..., k], tail_log_prob [...].
  """
  vocab = teacher_logits.shape[-1]
  if not 1 <= k <= vocab:
    raise ValueError(f'teacher_top_k must be in [1, {vocab}] (the vocabulary), got {k}.')
  if not temperature > 0:
    raise ValueError(f'teacher_temperature must be > 0, got {temperature}.')
  log_p = _log_probs(teacher_logits, temperature)
  top_log_probs, ids = jax.lax.top_k(log_p, k)
  return TopK(ids.astype(jnp.int32), top_log_probs, _complement_log_prob(log_p, ids))


def top_k_buckets(
    teacher: TopK, student_logits: Array, *, student_temperature: float = 1.0
) -> Tuple[Array, Array]:
  """P and Q on the k + 1 buckets of `teacher`: its k tokens, then the tail (all other tokens).

    P_k = (P(i_1), ..., P(i_k), 1 - sum_j P(i_j)),  Q_k = (Q(i_1), ..., Q(i_k), 1 - sum_j Q(i_j)).

  Every divergence of this module is an f-divergence, so D(P_k || Q_k) <= D(P || Q), growing
  with k (the buckets refine) to D(P || Q) at k = V (data processing). Pass the two results to
  a divergence as its logits (they are normalized log-probs, so its softmax leaves them as
  they are) at temperature 1: the temperatures are applied here.

  Args:
    teacher: `TopK` of the teacher, ids [..., k].
    student_logits: [..., V] student logits.
    student_temperature: the student's softmax temperature inside the loss (> 0).

  Returns:
    ([..., k + 1] log P_k, [..., k + 1] log Q_k), float32 (float64 for float64 inputs).
  """
  if teacher.ids.shape[:-1] != student_logits.shape[:-1]:
    raise ValueError(
        f'teacher top-k ids {teacher.ids.shape} and student logits {student_logits.shape} '
        'must share their leading [...] dimensions.'
    )
  log_q = _log_probs(student_logits, student_temperature)
  student_top = jnp.take_along_axis(log_q, teacher.ids, axis=-1)
  student_tail = _complement_log_prob(log_q, teacher.ids)
  student_buckets = jnp.concatenate([student_top, student_tail[..., None]], axis=-1)
  return teacher.bucket_log_probs().astype(log_q.dtype), student_buckets


def discounted_sum_to_go(values: Array, weights: Array, *, discount: float) -> Array:
  """G_t = sum_{u >= t} discount^(u - t) w_u v_u along each row (discount^0 = 1).

  Args:
    values: [B, L] per-position values.
    weights: [B, L] loss weights (positions of weight 0 add nothing).
    discount: gamma in [0, 1].

  Returns:
    [B, L] float32 discounted sums of the later weighted values.
  """
  if not 0.0 <= discount <= 1.0:
    raise ValueError(f'discount must be in [0, 1], got {discount}.')
  length = values.shape[-1]
  positions = jnp.arange(length)
  lag_LxL = positions[None, :] - positions[:, None]  # [t, u] = u - t
  later_LxL = jnp.where(lag_LxL >= 0, jnp.float32(discount) ** jnp.maximum(lag_LxL, 0), 0.0)
  weighted = jnp.where(weights > 0, values, 0.0) * weights
  return jnp.einsum('bu,tu->bt', weighted.astype(jnp.float32), later_LxL)


def sampled_reverse_kl_advantages(
    student_log_probs: Array, teacher_log_probs: Array, weights: Array, *, discount: float
) -> Array:
  """The sampled-token reverse-KL estimator's advantages, under stop_gradient:

    A_t = sum_{u >= t} gamma^(u - t) w_u r_u,   r_u = -(log p_S(y_u) - log p_T(y_u)).

  With y ~ p_S, -sum_t A_t grad log p_S(y_t | y_<t) estimates grad KL(p_S || p_T): at gamma = 0
  the token-level reverse KL at the sampled prefixes, at gamma = 1 the sequence-level one.

  Args:
    student_log_probs: [B, L] log p_S(y_t | y_<t, x) of the sampled tokens.
    teacher_log_probs: [B, L] log p_T(y_t | y_<t, x) of the same tokens.
    weights: [B, L] loss weights.
    discount: gamma in [0, 1].

  Returns:
    [B, L] float32 advantages, constants for differentiation.
  """
  rewards = -(student_log_probs - teacher_log_probs)
  return jax.lax.stop_gradient(discounted_sum_to_go(rewards, weights, discount=discount))


def weighted_sequence_sum(values: Array, weights: Array) -> Array:
  """sum_n w_n D_n over each row; positions of weight 0 contribute exactly 0 (also when their
  value is NaN or inf).

  Args:
    values: [batch, length] per-position divergence.
    weights: [batch, length] loss weights.

  Returns:
    [batch] weighted sums, in the dtype of `values`.
  """
  weights = weights.astype(values.dtype)
  return jnp.sum(jnp.where(weights > 0, values, 0.0) * weights, axis=-1)


def sequence_mean_of_sum(sum_B: Array, total_weight_B: Array) -> Tuple[Array, Array]:
  """`sequence_mean` from each row's weighted sum [B] and total weight [B]: sum / total weight,
  0 for a row without weight. Returns ([B] per-sequence mean, [B] float32 1.0 where the row has
  weight)."""
  has_tokens = total_weight_B > 0
  per_sequence = sum_B / jnp.where(has_tokens, total_weight_B, 1.0)
  return per_sequence, has_tokens.astype(jnp.float32)


def sequence_mean(values: Array, weights: Array) -> Tuple[Array, Array]:
  """Paper Eq. 2: D(p_T || p_S)(y | x) = (1 / L_y) sum_n D_n over the weighted positions of y.

  Positions of weight 0 contribute exactly 0 (also when their value is NaN or inf), and a row
  without any weighted position gets 0 rather than 0 / 0.

  Args:
    values: [batch, length] per-position divergence.
    weights: [batch, length] loss weights (1 on the tokens of y, 0 on padding).

  Returns:
    ([batch] per-sequence mean, [batch] float32 1.0 where the row has a weighted position).
  """
  if values.shape != weights.shape or values.ndim != 2:
    raise ValueError(
        f'values and weights must both be [batch, length]; got {values.shape} and '
        f'{weights.shape}.'
    )
  total_weight = jnp.sum(weights.astype(values.dtype), axis=-1)
  return sequence_mean_of_sum(weighted_sequence_sum(values, weights), total_weight)


def chunked_sequence_sum(
    sum_fn: Callable[[PyTree, Array], PyTree],
    arrays: PyTree,
    weights: Array,
    *,
    chunk_length: int,
) -> PyTree:
  """sum_k sum_fn(arrays[:, S_k], weights[:, S_k] * fresh_k) over chunks S_k of the sequence,
  holding one chunk's intermediates at a time.

  For a `sum_fn` that sums over positions terms that are 0 where the weight is 0 (such as
  `weighted_sequence_sum`), this equals sum_fn(arrays, weights) up to the order of the float
  additions. Chunk k covers the C = min(chunk_length, L) positions from min(kC, L - C): when C
  does not divide L, the last chunk ends at the sequence's end and overlaps the one before, and
  its positions already counted (before kC) get weight 0 (`fresh_k`). Nothing is padded, so no
  copy of the [B, L, V] arrays is made.

  A `lax.scan` runs over the chunks; its body is rematerialized (`jax.checkpoint`), so the
  backward pass saves no per-chunk residuals but recomputes each chunk's forward, and neither
  pass holds more than [B, C, ...] of `sum_fn`'s intermediates.

  Args:
    sum_fn: (chunk of `arrays` [B, C, ...], chunk weights [B, C]) -> a pytree of sums.
    arrays: a pytree of [B, L, ...] arrays (None leaves allowed), sliced along axis 1.
    weights: [B, L] loss weights.
    chunk_length: the positions per chunk, >= 1.

  Returns:
    the pytree `sum_fn` returns, summed over the chunks.
  """
  if chunk_length < 1:
    raise ValueError(f'chunk_length must be >= 1, got {chunk_length}.')
  length = weights.shape[1]
  size = min(chunk_length, length)
  positions_C = jnp.arange(size)

  @jax.checkpoint
  def chunk_sum(k: Array) -> PyTree:
    start = jnp.minimum(k * size, length - size)
    take = lambda array: jax.lax.dynamic_slice_in_dim(array, start, size, axis=1)
    fresh_C = start + positions_C >= k * size
    weights_BxC = jnp.where(fresh_C, take(weights), jnp.zeros((), weights.dtype))
    return sum_fn(jax.tree_util.tree_map(take, arrays), weights_BxC)

  def add_chunk(total: PyTree, k: Array) -> Tuple[PyTree, None]:
    return jax.tree_util.tree_map(jnp.add, total, chunk_sum(k)), None

  zeros = jax.tree_util.tree_map(
      lambda shape: jnp.zeros(shape.shape, shape.dtype), jax.eval_shape(chunk_sum, 0)
  )
  total, _ = jax.lax.scan(add_chunk, zeros, jnp.arange(-(-length // size)))
  return total


def batch_mean(per_sequence: Array, valid: Array) -> Array:
  """Mean of `per_sequence` [batch] over the rows where `valid` [batch] is 1 (0 if none)."""
  valid = valid.astype(per_sequence.dtype)
  return jnp.sum(per_sequence * valid) / jnp.maximum(jnp.sum(valid), 1.0)
