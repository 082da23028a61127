"""Token-level divergences between teacher and student next-token distributions.

P is the teacher distribution p_T(. | y_<n, x), Q the student's p_S(. | y_<n, x), both over the
vocabulary at one position. Every divergence takes logits of shape `[..., vocab]` and returns
per-position values of shape `logits.shape[:-1]`, computed in log space in at least float32, so
that logits of magnitude 1e4 and vocabularies of 32k+ stay finite.

`sequence_mean` reduces per-position values to the paper's sequence discrepancy (Eq. 2),
`batch_mean` then averages over the sequences of a batch. `chunked_sequence_sum` computes such
weighted sums over chunks of the sequence, so that long targets never hold float32
[B, L, V] intermediates.

The logits must be finite: a -inf logit (a token masked out of the vocabulary) would turn the
0 * log 0 terms into NaN.
"""

from typing import Any, Callable, Optional, Tuple

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
  if targets.shape != student_logits.shape[:-1]:
    raise ValueError(
        f'targets shape {targets.shape} must equal student_logits.shape[:-1] = '
        f'{student_logits.shape[:-1]}.'
    )
  log_q = _log_probs(student_logits, student_temperature)
  return -jnp.take_along_axis(log_q, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


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
