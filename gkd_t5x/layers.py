"""Building blocks of the T5 1.1 network, parameter-compatible with T5X's example layers.

Module names, parameter names, parameter shapes and logical axis names follow
`t5x/examples/t5/layers.py`, so a T5X checkpoint of that network loads into this one unchanged.
Parameters are created with `flax.linen.partitioning.param_with_axes`, which records their
logical axes in the `params_axes` collection that T5X's partitioner (and ours) reads.

Two things differ from T5X on purpose, neither of which touches the parameters:
- attention is split into `project_kv` and `attend`, so that the decoder can project the
  encoder's keys and values once per sequence instead of at every decoding step;
- the key/value cache is an explicit argument (a pytree with the batch as leading axis) rather
  than a mutable `cache` collection, so decoding code can repeat and gather it for beam search.

Shape letters (README, Conventions): B batch, Q query length, K key length, E embedding, H heads,
D head dim, M mlp dim, V vocabulary.
"""

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
DType = Any

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

# Added to attention logits where attention is not allowed; finite so a fully masked row stays
# a uniform (NaN-free) softmax, as in T5X.
MASK_BIAS = -1e10


class DenseGeneral(nn.Module):
  """Linear map over one or more trailing axes, without bias.

  As in T5X, the kernel is stored as a float32 matrix [prod(inputs.shape[axis]), prod(features)]
  (logical axes `kernel_axes`, e.g. ('embed', 'joined_kv') for the attention projections) and
  reshaped to [*inputs.shape[axis], *features] for the contraction; activations are computed in
  `dtype`.

  Attributes:
    features: output feature shape.
    axis: input axes to contract.
    kernel_axes: logical axis names of the stored (2-d) kernel.
    init_scale: variance scale of the fan-in initializer.
    init_distribution: distribution of `nn.initializers.variance_scaling`.
    dtype: activation dtype.
  """

  features: Union[int, Tuple[int, ...]]
  axis: Union[int, Tuple[int, ...]] = -1
  kernel_axes: Tuple[str, ...] = ()
  init_scale: float = 1.0
  init_distribution: str = 'truncated_normal'
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    init = nn.initializers.variance_scaling(self.init_scale, 'fan_in', self.init_distribution)
    kernel = param_with_axes(
        'kernel',
        init,
        (int(np.prod(in_shape)), int(np.prod(features))),
        jnp.float32,
        axes=self.kernel_axes,
    )
    kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    return lax.dot_general(inputs, kernel, ((axis, tuple(range(len(axis)))), ((), ())))


class Embed(nn.Module):
  """Token embedding table [V, E] (logical axes `vocab`, `embed`), shared with the output layer
  when `logits_via_embedding` is set."""

  num_embeddings: int
  features: int
  dtype: DType = jnp.float32

  def setup(self):
    self.embedding = param_with_axes(
        'embedding',
        nn.initializers.normal(stddev=1.0),
        (self.num_embeddings, self.features),
        jnp.float32,
        axes=('vocab', 'embed'),
    )

  def __call__(self, tokens: Array) -> Array:
    """[...] int tokens -> [..., E] embeddings (a gather; T5X's one-hot matmul gives the same)."""
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'Embed takes integer token ids, got dtype {tokens.dtype}.')
    return jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)

  def attend(self, query: Array) -> Array:
    """[..., E] -> [..., V]: dot product with every embedding."""
    query = jnp.asarray(query, self.dtype)
    return jnp.dot(query, jnp.asarray(self.embedding, self.dtype).T)


class LayerNorm(nn.Module):
  """T5 layer norm: RMS normalization with a learned scale and no centering or bias."""

  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean_square = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean_square + self.epsilon), self.dtype)
    scale = param_with_axes(
        'scale', nn.initializers.ones, (x.shape[-1],), jnp.float32, axes=('embed',)
    )
    return y * jnp.asarray(scale, self.dtype)


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """T5's bucketing of `key_position - query_position` into `num_buckets` int32 buckets.

  Exact buckets for small distances, log-spaced ones up to `max_distance`, beyond which all
  distances share the last bucket. Bidirectional bucketing gives half the buckets to keys after
  the query; unidirectional bucketing maps every later key to bucket 0.
  """
  bucket = jnp.zeros_like(relative_position, dtype=jnp.int32)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
  if_large = max_exact + (
      log_ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, if_large)


class RelativePositionBiases(nn.Module):
  """Learned per-head attention bias of T5, indexed by the bucket of the relative position.

  The table `rel_embedding` is [H, num_buckets] with logical axes (`heads`, `relpos_buckets`).
  """

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """[Q] and [K] int positions -> [1, H, Q, K] bias."""
    table = param_with_axes(
        'rel_embedding',
        nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
        (self.num_heads, self.num_buckets),
        jnp.float32,
        axes=('heads', 'relpos_buckets'),
    )
    buckets_QxK = relative_position_bucket(
        key_positions[None, :] - query_positions[:, None],
        self.bidirectional,
        self.num_buckets,
        self.max_distance,
    )
    bias_HxQxK = jnp.take(jnp.asarray(table, self.dtype), buckets_QxK, axis=1)
    return bias_HxQxK[None]


def mask_to_bias(mask: Array, dtype: DType) -> Array:
  """Boolean attention mask -> additive bias (0 where allowed, MASK_BIAS where not)."""
  return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(MASK_BIAS, dtype))


def attention_mask(
    query_valid: Array,
    key_valid: Array,
    query_segment_ids: Optional[Array] = None,
    key_segment_ids: Optional[Array] = None,
) -> Array:
  """[B, Q] and [B, K] validity (and optional segment ids) -> [B, 1, Q, K] boolean mask."""
  mask = query_valid[:, None, :, None] & key_valid[:, None, None, :]
  if query_segment_ids is not None:
    mask &= query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :]
  return mask


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head dot-product attention of T5 (no logit scaling: it is folded into the query
  initializer, as in T5 and T5X).

  Attributes:
    num_heads: H.
    head_dim: D.
    emb_dim: E, the output width.
    dropout_rate: dropout on the attention probabilities.
    float32_logits: compute the query-key logits in float32 (for bfloat16 activations).
    dtype: activation dtype.
  """

  num_heads: int
  head_dim: int
  emb_dim: int
  dropout_rate: float = 0.0
  float32_logits: bool = False
  dtype: DType = jnp.float32

  def setup(self):
    projection = functools.partial(
        DenseGeneral,
        features=(self.num_heads, self.head_dim),
        kernel_axes=('embed', 'joined_kv'),
        init_distribution='normal',
        dtype=self.dtype,
    )
    # T5 scales the query initializer by 1/sqrt(D) instead of scaling the logits.
    self.query = projection(init_scale=1.0 / self.head_dim)
    self.key = projection()
    self.value = projection()
    self.out = DenseGeneral(
        features=self.emb_dim,
        axis=(-2, -1),
        kernel_axes=('joined_kv', 'embed'),
        init_distribution='normal',
        dtype=self.dtype,
    )

  def project_kv(self, inputs_kv: Array) -> Tuple[Array, Array]:
    """[B, K, E] -> keys and values, each [B, H, K, D].

    Heads-major, the layout the attention dots read without a transpose (batch and heads are
    their batch dimensions): decoding caches keep keys and values so, and a decoding step would
    otherwise transpose the whole cache at every token.
    """
    heads_major = lambda x: with_sharding_constraint(
        jnp.swapaxes(x, 1, 2), ('batch', 'heads', 'length', 'kv')
    )
    return heads_major(self.key(inputs_kv)), heads_major(self.value(inputs_kv))

  def attend(
      self, inputs_q: Array, key: Array, value: Array, bias: Optional[Array], deterministic: bool
  ) -> Array:
    """Attention of `inputs_q` [B, Q, E] over projected `key`, `value` [B, H, K, D].

    Args:
      inputs_q: [B, Q, E] queries before projection.
      key: [B, H, K, D], as `project_kv` makes them.
      value: [B, H, K, D].
      bias: additive bias broadcastable to [B, H, Q, K] (masks and position biases), or None.
      deterministic: disables dropout.

    Returns:
      [B, Q, E].
    """
    query = with_sharding_constraint(self.query(inputs_q), ('batch', 'length', 'heads', 'kv'))
    if self.float32_logits:
      query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    logits_BxHxQxK = jnp.einsum('bqhd,bhkd->bhqk', query, key)
    if bias is not None:
      logits_BxHxQxK = logits_BxHxQxK + bias.astype(logits_BxHxQxK.dtype)
    weights = jax.nn.softmax(logits_BxHxQxK.astype(jnp.float32)).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0.0:
      keep_prob = 1.0 - self.dropout_rate
      # One dropout pattern for every query position, as T5X's broadcast dropout.
      dropout_shape = weights.shape[:-2] + (1,) + weights.shape[-1:]
      keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, dropout_shape)
      weights = weights * (keep.astype(self.dtype) / jnp.asarray(keep_prob, self.dtype))
    attended_BxQxHxD = jnp.einsum('bhqk,bhkd->bqhd', weights, value.astype(self.dtype))
    return self.out(attended_BxQxHxD)

  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array,
      bias: Optional[Array] = None,
      deterministic: bool = True,
  ) -> Array:
    """[B, Q, E] queries over [B, K, E] keys/values -> [B, Q, E]."""
    key, value = self.project_kv(inputs_kv)
    return self.attend(inputs_q, key, value, bias, deterministic)


_ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu, 'linear': lambda x: x}
ACTIVATION_DTYPES = ('float32', 'bfloat16', 'float16')


def check_network_config(config: Any, positive_ints: Sequence[str]) -> Tuple[Tuple[str, ...], Any]:
  """Validates the fields `network.T5Config` and `decoder_only.DecoderOnlyConfig` share.

  Each message names `<Config>.<field>` and the allowed values. Bools are not sizes, though
  Python counts them as ints.

  Returns:
    (mlp_activations as a tuple, dtype as a `jnp.dtype`), the normalized values to store.
  """
  owner = type(config).__name__
  for name in positive_ints:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{owner}.{name} must be a positive int, got {value!r}.')
  if not 0.0 <= config.dropout_rate < 1.0:
    raise ValueError(f'{owner}.dropout_rate must be in [0, 1), got {config.dropout_rate!r}.')
  if isinstance(config.mlp_activations, str):
    raise ValueError(
        f"{owner}.mlp_activations must be a sequence of names, e.g. ('relu',), got the string "
        f'{config.mlp_activations!r}.'
    )
  allowed = sorted(_ACTIVATIONS)
  activations = tuple(config.mlp_activations)
  if not activations or any(name not in allowed for name in activations):
    raise ValueError(
        f'{owner}.mlp_activations must be a non-empty sequence of {allowed}, got '
        f'{config.mlp_activations!r}.'
    )
  if not isinstance(config.logits_via_embedding, bool):
    raise ValueError(
        f'{owner}.logits_via_embedding must be a bool, got {config.logits_via_embedding!r}.'
    )
  try:
    dtype = jnp.dtype(config.dtype)
  except TypeError:
    dtype = None
  if dtype is None or dtype.name not in ACTIVATION_DTYPES:
    raise ValueError(
        f'{owner}.dtype must be one of {list(ACTIVATION_DTYPES)}, got {config.dtype!r}.'
    )
  return activations, dtype


class MlpBlock(nn.Module):
  """T5 feed-forward block; with several activations (T5 1.1: ('gelu', 'linear')) their outputs
  are multiplied (a gated linear unit) and the input projections are named wi_0, wi_1, ..."""

  mlp_dim: int
  activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    """[B, Q, E] -> [B, Q, E]."""
    for name in self.activations:
      if name not in _ACTIVATIONS:
        raise ValueError(
            f'mlp_activations must be drawn from {sorted(_ACTIVATIONS)}, got {name!r}.'
        )
    hidden = None
    for index, name in enumerate(self.activations):
      dense_name = 'wi' if len(self.activations) == 1 else f'wi_{index}'
      x = DenseGeneral(
          self.mlp_dim, kernel_axes=('embed', 'mlp'), dtype=self.dtype, name=dense_name
      )(inputs)
      x = _ACTIVATIONS[name](x)
      hidden = x if hidden is None else hidden * x
    hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic
    )
    hidden = with_sharding_constraint(hidden, ('batch', 'length', 'mlp'))
    return DenseGeneral(
        inputs.shape[-1], kernel_axes=('mlp', 'embed'), dtype=self.dtype, name='wo'
    )(hidden)
