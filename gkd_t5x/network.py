"""T5 1.1 encoder-decoder, parameter-compatible with T5X's `t5x/examples/t5/network.py`.

The module tree (`token_embedder`, `encoder/{relpos_bias, layers_i, encoder_norm}`,
`decoder/{relpos_bias, layers_i, decoder_norm, logits_dense}`), parameter names, shapes and
logical axes equal T5X's, so a T5X checkpoint of that network is a valid `params` tree here.

Besides the teacher-forced `__call__` (T5X's signature), the network exposes the pieces that
GKD needs: `encode`, `decode` on given encodings, and KV-cached autoregressive decoding through
`init_cache` + `decode_step`, whose signature is the `decoding.TokensToLogits` contract once the
params are bound. Decoder self-attention keys/values are cached per step; the encoder's keys and
values for cross-attention are projected once in `init_cache`.

Shape letters: B batch, I input length, L target length, E embedding, V vocabulary.
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

import gin
from gkd_t5x import layers

Array = jnp.ndarray
Cache = Dict[str, Any]

# T5's relative position buckets (shared by every T5 1.1 size).
RELPOS_NUM_BUCKETS = 32
RELPOS_MAX_DISTANCE = 128


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 1.1 network (the fields of T5X's `network.T5Config`).

  `dtype` is the activation dtype (a name like 'bfloat16' or a dtype); parameters are always
  float32.
  """

  vocab_size: int
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  dtype: Any = 'float32'

  def __post_init__(self):
    activations, dtype = layers.check_network_config(
        self,
        (
            'vocab_size',
            'emb_dim',
            'num_heads',
            'num_encoder_layers',
            'num_decoder_layers',
            'head_dim',
            'mlp_dim',
        ),
    )
    object.__setattr__(self, 'mlp_activations', activations)
    object.__setattr__(self, 'dtype', dtype)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block with residuals."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    """[B, I, E] with [B, H, I, I] bias -> [B, I, E]."""
    cfg = self.config
    dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(x)
    y = layers.MultiHeadDotProductAttention(
        cfg.num_heads,
        cfg.head_dim,
        cfg.emb_dim,
        cfg.dropout_rate,
        cfg.float32_attention_logits,
        cfg.dtype,
        name='attention',
    )(y, y, bias, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
    y = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, name='mlp')(
        y, deterministic
    )
    x = x + dropout(y, deterministic=deterministic)
    return layers.with_sharding_constraint(x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP block with residuals.

  Without `cache` it is the teacher-forced layer over a whole target sequence; with `cache`
  (this layer's entry of `Transformer.init_cache`) it processes one token at `position`.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    attention = lambda: layers.MultiHeadDotProductAttention(
        cfg.num_heads,
        cfg.head_dim,
        cfg.emb_dim,
        cfg.dropout_rate,
        cfg.float32_attention_logits,
        cfg.dtype,
    )
    self.pre_self_attention_layer_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.self_attention = attention()
    self.pre_cross_attention_layer_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.encoder_decoder_attention = attention()
    self.pre_mlp_layer_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.mlp = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))

  def cross_kv(self, encoded: Array) -> Tuple[Array, Array]:
    """[B, I, E] encodings -> cross-attention keys and values, each [B, H, I, D]."""
    return self.encoder_decoder_attention.project_kv(encoded)

  def __call__(
      self,
      x: Array,
      self_bias: Array,
      cross_bias: Array,
      deterministic: bool,
      encoded: Optional[Array] = None,
      cache: Optional[Cache] = None,
      position: Optional[Array] = None,
  ) -> Tuple[Array, Optional[Cache]]:
    """One decoder layer.

    Args:
      x: [B, L, E] (teacher-forced) or [B, 1, E] (decoding step).
      self_bias: broadcastable to [B, H, L, L] (or [B, H, 1, L_max] when decoding).
      cross_bias: broadcastable to [B, H, L, I].
      deterministic: disables dropout.
      encoded: [B, I, E] encoder output; needed unless `cache` holds the cross keys/values.
      cache: {'self_key', 'self_value': [B, H, L_max, D], 'cross_key', 'cross_value':
        [B, H, I, D]} when decoding one step.
      position: int32 scalar, the position of the token in `x` when decoding.

    Returns:
      ([B, L, E] outputs, the updated cache or None).
    """
    y = self.pre_self_attention_layer_norm(x)
    if cache is None:
      y = self.self_attention(y, y, self_bias, deterministic)
      cross_key, cross_value = self.cross_kv(encoded)
    else:
      step_key, step_value = self.self_attention.project_kv(y)
      cache = dict(cache)
      for name, step in (('self_key', step_key), ('self_value', step_value)):
        cache[name] = update_position(cache[name], step, position)
      y = self.self_attention.attend(
          y, cache['self_key'], cache['self_value'], self_bias, deterministic
      )
      cross_key, cross_value = cache['cross_key'], cache['cross_value']
    x = x + self.dropout(y, deterministic=deterministic)
    y = self.pre_cross_attention_layer_norm(x)
    y = self.encoder_decoder_attention.attend(y, cross_key, cross_value, cross_bias, deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    y = self.pre_mlp_layer_norm(x)
    y = self.mlp(y, deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    return layers.with_sharding_constraint(x, ('batch', 'length', 'embed')), cache


def update_position(buffer_BxHxLxD: Array, step_BxHx1xD: Array, position: Array) -> Array:
  """Writes one step's keys or values into the cache at `position` along the length axis."""
  return lax.dynamic_update_slice_in_dim(
      buffer_BxHxLxD, step_BxHx1xD.astype(buffer_BxHxLxD.dtype), position, axis=2
  )


class Encoder(nn.Module):
  """Token embedding (shared), relative-position self-attention layers and a final norm."""

  config: T5Config
  shared_embedding: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = layers.RelativePositionBiases(
        RELPOS_NUM_BUCKETS, RELPOS_MAX_DISTANCE, cfg.num_heads, bidirectional=True, dtype=cfg.dtype
    )
    self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers)]
    self.encoder_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))

  def __call__(self, tokens: Array, mask_bias: Array, deterministic: bool) -> Array:
    """[B, I] tokens with [B, 1, I, I] mask bias -> [B, I, E] encodings."""
    length = tokens.shape[1]
    positions = jnp.arange(length)
    bias = mask_bias + self.relpos_bias(positions, positions)
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = self.dropout(x, deterministic=deterministic).astype(self.config.dtype)
    for layer in self.layers:
      x = layer(x, bias, deterministic)
    x = self.encoder_norm(x)
    return self.dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Token embedding (shared), causal self-attention + cross-attention layers, final norm and
  the output projection (`logits_dense`, or the embedding when `logits_via_embedding`)."""

  config: T5Config
  shared_embedding: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = layers.RelativePositionBiases(
        RELPOS_NUM_BUCKETS, RELPOS_MAX_DISTANCE, cfg.num_heads, bidirectional=False, dtype=cfg.dtype
    )
    self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.decoder_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.DenseGeneral(
          cfg.vocab_size, kernel_axes=('embed', 'vocab'), dtype=jnp.float32
      )

  def cross_kv(self, encoded: Array) -> Sequence[Tuple[Array, Array]]:
    return [layer.cross_kv(encoded) for layer in self.layers]

  def _logits(self, y: Array, deterministic: bool) -> Array:
    y = self.decoder_norm(y)
    y = self.dropout(y, deterministic=deterministic)
    if self.config.logits_via_embedding:
      # Shared input/output embedding: rescale, as T5 does, so the logits keep unit scale.
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(y.dtype)
    else:
      logits = self.logits_dense(y)
    return layers.with_sharding_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))

  def __call__(
      self,
      tokens: Array,
      encoded: Array,
      self_mask_bias: Array,
      cross_mask_bias: Array,
      deterministic: bool,
  ) -> Array:
    """Teacher-forced decoder: [B, L] input tokens -> [B, L, V] float32 logits."""
    positions = jnp.arange(tokens.shape[1])
    self_bias = self_mask_bias + self.relpos_bias(positions, positions)
    y = self.shared_embedding(tokens.astype(jnp.int32))
    y = self.dropout(y, deterministic=deterministic).astype(self.config.dtype)
    for layer in self.layers:
      y, _ = layer(y, self_bias, cross_mask_bias, deterministic, encoded=encoded)
    return self._logits(y, deterministic)

  def step(self, tokens_Bx1: Array, cache: Cache, position: Array) -> Tuple[Array, Cache]:
    """One cached decoding step: [B, 1] tokens at `position` -> ([B, V] logits, cache)."""
    max_length = cache['layers_0']['self_key'].shape[2]
    key_positions = jnp.arange(max_length)
    causal = layers.mask_to_bias(key_positions <= position, self.config.dtype)
    self_bias = causal[None, None, None, :] + self.relpos_bias(position[None], key_positions)
    y = self.shared_embedding(tokens_Bx1.astype(jnp.int32)).astype(self.config.dtype)
    new_cache = {'cross_mask_bias': cache['cross_mask_bias']}
    for index, layer in enumerate(self.layers):
      name = f'layers_{index}'
      y, new_cache[name] = layer(
          y, self_bias, cache['cross_mask_bias'], True, cache=cache[name], position=position
      )
    return self._logits(y, True)[:, 0], new_cache


class Transformer(nn.Module):
  """T5 1.1 encoder-decoder (T5X's `Transformer`).

  Methods (call through `module.apply(variables, ..., method=Transformer.<name>)`):
    __call__: teacher-forced logits from tokens, T5X's signature.
    encode: encoder output.
    decode: teacher-forced logits from an encoder output.
    init_cache / decode_step: KV-cached autoregressive decoding.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(
      self,
      encoder_input_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      enable_dropout: bool = True,
  ) -> Array:
    """[B, I] int tokens (0 = padding) -> [B, I, E] encodings.

    `encoder_segment_ids` [B, I] keeps packed examples from attending to each other.
    """
    valid = encoder_input_tokens > 0
    mask = layers.attention_mask(valid, valid, encoder_segment_ids, encoder_segment_ids)
    return self.encoder(
        encoder_input_tokens,
        layers.mask_to_bias(mask, self.config.dtype),
        deterministic=not enable_dropout,
    )

  def decode(
      self,
      encoded: Array,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      decoder_segment_ids: Optional[Array] = None,
      enable_dropout: bool = True,
  ) -> Array:
    """Teacher-forced logits of every target position.

    Args:
      encoded: [B, I, E] output of `encode`.
      encoder_input_tokens: [B, I] (for the cross-attention padding mask).
      decoder_input_tokens: [B, L] targets shifted right (0 = decoder start).
      decoder_target_tokens: [B, L] targets (0 = padding: such positions attend nowhere).
      encoder_segment_ids, decoder_segment_ids: [B, I], [B, L] packing segments, or None.
      enable_dropout: enables dropout.

    Returns:
      [B, L, V] float32 logits.
    """
    length = decoder_target_tokens.shape[1]
    target_valid = decoder_target_tokens > 0
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
    self_mask = causal & layers.attention_mask(
        target_valid, target_valid, decoder_segment_ids, decoder_segment_ids
    )
    cross_mask = layers.attention_mask(
        target_valid, encoder_input_tokens > 0, decoder_segment_ids, encoder_segment_ids
    )
    dtype = self.config.dtype
    return self.decoder(
        decoder_input_tokens,
        encoded,
        layers.mask_to_bias(self_mask, dtype),
        layers.mask_to_bias(cross_mask, dtype),
        deterministic=not enable_dropout,
    )

  def __call__(
      self,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      decoder_segment_ids: Optional[Array] = None,
      encoder_positions: Optional[Array] = None,
      decoder_positions: Optional[Array] = None,
      *,
      enable_dropout: bool = True,
      decode: bool = False,
  ) -> Array:
    """Teacher-forced [B, L, V] float32 logits (T5X's signature).

    Positions are accepted for T5X compatibility and unused: relative attention with segment
    masks gives packed examples the same result as unpacked ones. For autoregressive decoding
    use `init_cache` and `decode_step` (`decode=True` is refused so no caller silently gets
    teacher-forced logits).
    """
    del encoder_positions, decoder_positions
    if decode:
      raise ValueError(
          'Transformer.__call__ is teacher-forced; decode with init_cache and decode_step.'
      )
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids,
        decoder_segment_ids,
        enable_dropout,
    )

  def init_cache(
      self, encoded: Array, encoder_input_tokens: Array, max_decode_length: int
  ) -> Cache:
    """The decoding cache for `decode_step`, every leaf batch-leading.

    Args:
      encoded: [B, I, E] output of `encode`.
      encoder_input_tokens: [B, I] (for the cross-attention padding mask).
      max_decode_length: L_max, the number of decoding steps the cache holds.

    Returns:
      {'cross_mask_bias': [B, 1, 1, I], 'layers_i': {'self_key', 'self_value':
       [B, H, L_max, D] zeros, 'cross_key', 'cross_value': [B, H, I, D]}}.
    """
    cfg = self.config
    batch = encoded.shape[0]
    cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
    cache = {'cross_mask_bias': layers.mask_to_bias(cross_mask, cfg.dtype)}
    zeros = jnp.zeros((batch, cfg.num_heads, max_decode_length, cfg.head_dim), cfg.dtype)
    for index, (key, value) in enumerate(self.decoder.cross_kv(encoded)):
      cache[f'layers_{index}'] = {
          'self_key': zeros,
          'self_value': zeros,
          'cross_key': key,
          'cross_value': value,
      }
    return cache

  def decode_step(self, tokens_Bx1: Array, cache: Cache, position: Array) -> Tuple[Array, Cache]:
    """One autoregressive step: the `decoding.TokensToLogits` contract.

    Args:
      tokens_Bx1: [B, 1] int32 previous tokens (0 = decoder start at position 0).
      cache: from `init_cache` or the previous step.
      position: int32 scalar position of `tokens_Bx1` in the output.

    Returns:
      ([B, V] float32 logits of the next token, updated cache).
    """
    return self.decoder.step(tokens_Bx1, cache, jnp.asarray(position, jnp.int32))
