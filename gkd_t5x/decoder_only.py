"""Decoder-only Transformer (a T5-style prefix LM), parameter-compatible with T5X's
`t5x/examples/decoder_only/network.py`.

The module tree (`decoder/{token_embedder, relpos_bias, layers_i, decoder_norm,
logits_dense}`, each `layers_i` holding `pre_self_attention_layer_norm`, `self_attention`,
`pre_mlp_layer_norm` and `mlp`), parameter names, shapes and logical axes equal T5X's, so a
T5X checkpoint of that network is a valid `params` tree here. It is built on the layers of our
encoder-decoder (`gkd_t5x.layers`); one relative position bias table is shared by all layers
and always buckets unidirectionally, as in T5X, also where the prompt attends bidirectionally.

Besides the teacher-forced `__call__` (T5X's signature, prefix-LM masks included), the network
exposes KV-cached decoding as GKD drives it: `init_cache`, then `prefill` runs the prompt in one
pass, then `decode_step` (the `decoding.TokensToLogits` contract once the params are bound)
continues it one token at a time, e.g. inside `decoding.temperature_sample`.

Padding convention of `prefill`: prompts are LEFT-padded, row b's n_b prompt tokens filling
columns P - n_b .. P - 1 of the [B, P] prompt, so that every row's continuation starts at column
P and a sampled continuation y [B, L] is appended by concatenation. Only relative positions
enter attention, so a left-padded row gives the logits of the unpadded one. Its teacher-forced
twin is the [B, P + L - 1] row `concat(prompt, y[:, :-1])` fed to `__call__` with
`decoder_target_tokens` nonzero exactly on its non-padding columns (T5X's prefill passes such a
validity mask too, since the start token 0 at a prompt's first column is not padding) and, for
a prefix LM, `decoder_causal_attention` marking the prompt columns: its logits at columns
P - 1 + t are `decode_step`'s at position t.

Shape letters: B batch, L sequence length, P prompt width, L_max cache length, E embedding,
H heads, D head dim, V vocabulary.
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

import gin
from gkd_t5x import layers
from gkd_t5x import network

Array = jnp.ndarray
Cache = Dict[str, Any]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
  """Hyperparameters of a decoder-only network (the fields of T5X's decoder_only
  `TransformerConfig`, with its defaults).

  `dtype` is the activation dtype (a name like 'bfloat16' or a dtype); parameters are always
  float32. `mlp_activations` are drawn from the activations `layers.MlpBlock` implements; a
  single one gives T5X's `mlp/wi`, several a gated unit with `mlp/wi_0`, `mlp/wi_1`, ...
  """

  vocab_size: int
  emb_dim: int = 512
  num_heads: int = 8
  num_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  dtype: Any = 'float32'

  def __post_init__(self):
    activations, dtype = layers.check_network_config(
        self, ('vocab_size', 'emb_dim', 'num_heads', 'num_layers', 'head_dim', 'mlp_dim')
    )
    object.__setattr__(self, 'mlp_activations', activations)
    object.__setattr__(self, 'dtype', dtype)


def write_columns(buffer_BxHxLxD: Array, new_BxHxQxD: Array, columns_B: Array) -> Array:
  """Writes row b's Q new keys or values into its cache row from column `columns_B[b]`."""
  write = lambda row, new, column: lax.dynamic_update_slice_in_dim(row, new, column, axis=1)
  return jax.vmap(write)(buffer_BxHxLxD, new_BxHxQxD.astype(buffer_BxHxLxD.dtype), columns_B)


class DecoderOnlyLayer(nn.Module):
  """Pre-norm self-attention + MLP block with residuals (T5X's decoder_only `DecoderLayer`).

  Without `cache` it attends over its own inputs; with `cache` (this layer's entry of
  `DecoderOnlyTransformer.init_cache`) it first writes its inputs' keys and values into the
  cache and attends over the whole cache.
  """

  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    self.pre_self_attention_layer_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.self_attention = layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, cfg.emb_dim, cfg.dropout_rate, dtype=cfg.dtype
    )
    self.pre_mlp_layer_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.mlp = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))

  def __call__(
      self,
      x: Array,
      bias: Array,
      deterministic: bool,
      cache: Optional[Cache] = None,
      columns: Optional[Array] = None,
  ) -> Tuple[Array, Optional[Cache]]:
    """One layer.

    Args:
      x: [B, Q, E] inputs (Q = L teacher-forced, P in prefill, 1 in a decoding step).
      bias: broadcastable to [B, H, Q, Q] without `cache`, [B, H, Q, L_max] with it.
      deterministic: disables dropout.
      cache: {'key', 'value': [B, H, L_max, D]}, or None.
      columns: [B] int32, the cache column of row b's first input, with `cache`.

    Returns:
      ([B, Q, E] outputs, the updated cache or None).
    """
    y = self.pre_self_attention_layer_norm(x)
    if cache is None:
      y = self.self_attention(y, y, bias, deterministic)
    else:
      key, value = self.self_attention.project_kv(y)
      cache = {
          'key': write_columns(cache['key'], key, columns),
          'value': write_columns(cache['value'], value, columns),
      }
      y = self.self_attention.attend(y, cache['key'], cache['value'], bias, deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    y = self.mlp(self.pre_mlp_layer_norm(x), deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    return layers.with_sharding_constraint(x, ('batch', 'length', 'embed')), cache


class Decoder(nn.Module):
  """Token embedding, relative-position self-attention layers, final norm and the output
  projection (`logits_dense`, or the embedding when `logits_via_embedding`): the `decoder`
  scope of T5X's decoder_only network.

  Callers give the attention masks as additive biases; the relative position biases are added
  here.
  """

  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.relpos_bias = layers.RelativePositionBiases(
        network.RELPOS_NUM_BUCKETS,
        network.RELPOS_MAX_DISTANCE,
        cfg.num_heads,
        bidirectional=False,
        dtype=cfg.dtype,
    )
    self.layers = [DecoderOnlyLayer(cfg) for _ in range(cfg.num_layers)]
    self.decoder_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.DenseGeneral(
          cfg.vocab_size, kernel_axes=('embed', 'vocab'), dtype=jnp.float32
      )

  def _embed(self, tokens: Array, deterministic: bool) -> Array:
    y = self.token_embedder(tokens.astype(jnp.int32))
    return self.dropout(y, deterministic=deterministic).astype(self.config.dtype)

  def _logits(self, y: Array, deterministic: bool) -> Array:
    """[B, Q, E] -> [B, Q, V] float32 logits."""
    y = self.dropout(self.decoder_norm(y), deterministic=deterministic)
    if self.config.logits_via_embedding:
      # As T5X: the shared table is attended in float32 (for stable logits even with bfloat16
      # activations) and rescaled so that its unit-variance rows give unit-scale logits.
      table_VxE = jnp.asarray(self.token_embedder.embedding, jnp.float32)
      logits = jnp.dot(y.astype(jnp.float32), table_VxE.T) / jnp.sqrt(y.shape[-1])
    else:
      logits = self.logits_dense(y)
    return layers.with_sharding_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))

  def __call__(self, tokens_BxL: Array, mask_bias: Array, deterministic: bool) -> Array:
    """Teacher-forced: [B, L] tokens with [B, 1, L, L] mask bias -> [B, L, V] logits."""
    positions = jnp.arange(tokens_BxL.shape[1])
    bias = mask_bias + self.relpos_bias(positions, positions)
    y = self._embed(tokens_BxL, deterministic)
    for layer in self.layers:
      y, _ = layer(y, bias, deterministic)
    return self._logits(y, deterministic)

  def _cached(
      self, tokens_BxQ: Array, bias: Array, cache: Cache, columns_B: Array
  ) -> Tuple[Array, Cache]:
    """Q tokens per row written from cache column `columns_B` -> ([B, Q, E], layer caches)."""
    y = self._embed(tokens_BxQ, True)
    new_cache = {}
    for index, layer in enumerate(self.layers):
      name = f'layers_{index}'
      y, new_cache[name] = layer(y, bias, True, cache=cache[name], columns=columns_B)
    return y, new_cache

  def prefill(self, tokens_BxP: Array, mask_bias: Array, cache: Cache) -> Tuple[Array, Cache]:
    """Prompt columns 0 .. P - 1 with [B, 1, P, L_max] mask bias -> ([B, V] logits of column
    P - 1, layer caches)."""
    width, max_length = tokens_BxP.shape[1], cache['layers_0']['key'].shape[2]
    bias = mask_bias + self.relpos_bias(jnp.arange(width), jnp.arange(max_length))
    columns_B = jnp.zeros(tokens_BxP.shape[:1], jnp.int32)
    y, new_cache = self._cached(tokens_BxP, bias, cache, columns_B)
    return self._logits(y[:, -1:], True)[:, 0], new_cache

  def step(
      self, tokens_Bx1: Array, columns_B: Array, mask_bias: Array, cache: Cache
  ) -> Tuple[Array, Cache]:
    """One token per row at cache column `columns_B` with [B, 1, 1, L_max] mask bias ->
    ([B, V] logits, layer caches)."""
    max_length = cache['layers_0']['key'].shape[2]
    # The batch stands in for the query axis, as each row's query sits at its own column.
    relpos_1xHxBxL = self.relpos_bias(columns_B, jnp.arange(max_length))
    bias = mask_bias + jnp.transpose(relpos_1xHxBxL, (2, 1, 0, 3))
    y, new_cache = self._cached(tokens_Bx1, bias, cache, columns_B)
    return self._logits(y, True)[:, 0], new_cache


def decoder_mask(
    decoder_target_tokens: Array,
    decoder_causal_attention: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
) -> Array:
  """T5X's decoder-only self-attention mask: [B, L] arrays -> [B, 1, L, L] bool.

  Causal, except that positions marked in `decoder_causal_attention` (a prefix LM's inputs)
  also see each other; columns whose target is 0 (padding) attend nowhere and are seen by none;
  packed segments stay apart.
  """
  length = decoder_target_tokens.shape[1]
  allowed = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
  if decoder_causal_attention is not None:
    inputs = decoder_causal_attention > 0
    allowed = allowed | (inputs[:, None, :, None] & inputs[:, None, None, :])
  valid = decoder_target_tokens > 0
  return allowed & layers.attention_mask(valid, valid, decoder_segment_ids, decoder_segment_ids)


class DecoderOnlyTransformer(nn.Module):
  """Decoder-only Transformer (T5X's decoder_only `DecoderWrapper`).

  Methods (call through `module.apply(variables, ..., method=DecoderOnlyTransformer.<name>)`):
    __call__: teacher-forced logits, T5X's signature.
    init_cache / prefill / decode_step: KV-cached decoding after a left-padded prompt.

  The cache (every leaf batch-leading, so beam search can repeat and gather it):
    'layers_i': {'key', 'value': [B, H, L_max, D]};
    'first_column': [B] int32, the first non-padding prompt column (P - n_b);
    'last_prompt_column': [B] int32, the last prompt column (P - 1), position 0's column;
    'last_prompt_token': [B] int32, the token there.
  """

  config: DecoderOnlyConfig

  def setup(self):
    self.decoder = Decoder(self.config)

  def __call__(
      self,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      decoder_segment_ids: Optional[Array] = None,
      decoder_positions: Optional[Array] = None,
      decoder_causal_attention: Optional[Array] = None,
      *,
      enable_dropout: bool = True,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
      prefill: Optional[bool] = None,
      prefill_lengths: Optional[Array] = None,
  ) -> Array:
    """Teacher-forced [B, L, V] float32 logits (T5X's signature).

    Args:
      decoder_input_tokens: [B, L] int tokens (T5X: targets shifted right, 0 first).
      decoder_target_tokens: [B, L]; only `> 0` is read: columns with 0 are padding.
      decoder_segment_ids: [B, L] packing segments, or None.
      decoder_positions: accepted for T5X and unused (as in T5X): relative attention with
        segment masks gives packed examples the logits of unpacked ones.
      decoder_causal_attention: [B, L], nonzero on a prefix LM's input columns, which then
        attend to each other in both directions; None for a causal LM.
      enable_dropout: enables dropout.
      decode, max_decode_length, prefill, prefill_lengths: T5X's mutable-cache decoding,
        refused (decode with `init_cache`, `prefill` and `decode_step`) so that no caller
        silently gets teacher-forced logits.

    Returns:
      [B, L, V] float32 logits.
    """
    del decoder_positions, max_decode_length, prefill_lengths
    if decode or prefill:
      raise ValueError(
          'DecoderOnlyTransformer.__call__ is teacher-forced; decode with '
          'init_cache, prefill and decode_step.'
      )
    mask = decoder_mask(decoder_target_tokens, decoder_causal_attention, decoder_segment_ids)
    return self.decoder(
        decoder_input_tokens,
        layers.mask_to_bias(mask, self.config.dtype),
        deterministic=not enable_dropout,
    )

  def init_cache(self, batch_size: int, max_length: int) -> Cache:
    """An empty cache of `max_length` columns (L_max >= P + the decoding steps - 1).

    It reads no parameters (it may be called on the unbound module). Used without `prefill` it
    decodes after the one-token prompt [0] (T5X's start token).
    """
    cfg = self.config
    zeros = jnp.zeros((batch_size, cfg.num_heads, max_length, cfg.head_dim), cfg.dtype)
    cache = {
        name: jnp.zeros((batch_size,), jnp.int32)
        for name in ('first_column', 'last_prompt_column', 'last_prompt_token')
    }
    for index in range(cfg.num_layers):
      cache[f'layers_{index}'] = {'key': zeros, 'value': zeros}
    return cache

  def prefill(
      self,
      prompt_tokens: Array,
      prompt_lengths: Array,
      cache: Cache,
      *,
      inputs_bidirectional_attention: bool = False,
  ) -> Tuple[Array, Cache]:
    """Runs the left-padded prompts in one pass and fills the cache with their keys/values.

    Args:
      prompt_tokens: [B, P] int tokens, row b's prompt in columns P - n_b .. P - 1 (T5X: a
        start token 0, then the inputs); padding columns hold any token id (e.g. 0) and are
        masked out.
      prompt_lengths: [B] int n_b in [1, P], counting the start token.
      cache: from `init_cache`, with L_max >= P + the decoding steps - 1.
      inputs_bidirectional_attention: prompt columns attend to each other in both directions
        (a prefix LM, T5X's `DecoderOnlyModel` flag of that name); False: causal.

    Returns:
      ([B, V] float32 logits of column P - 1, i.e. of the first continuation token, cache).
    """
    batch, width = prompt_tokens.shape
    max_length = cache['layers_0']['key'].shape[2]
    if width > max_length:
      raise ValueError(
          f'prefill: the prompt width P = {width} exceeds the cache length '
          f'L_max = {max_length}; make the cache with init_cache(batch_size, '
          'P + decoding steps - 1) or more.'
      )
    first_B = width - jnp.asarray(prompt_lengths, jnp.int32)
    keys = jnp.arange(max_length)
    allowed = ((keys >= first_B[:, None]) & (keys < width))[:, None, None, :]
    if not inputs_bidirectional_attention:
      allowed = allowed & (keys[None, :] <= jnp.arange(width)[:, None])
    logits_BxV, layer_caches = self.decoder.prefill(
        prompt_tokens, layers.mask_to_bias(allowed, self.config.dtype), cache
    )
    prompt = {
        'first_column': first_B,
        'last_prompt_column': jnp.full((batch,), width - 1, jnp.int32),
        'last_prompt_token': prompt_tokens[:, -1].astype(jnp.int32),
    }
    return logits_BxV, {**cache, **layer_caches, **prompt}

  def decode_step(self, tokens_Bx1: Array, cache: Cache, position: Array) -> Tuple[Array, Cache]:
    """One autoregressive step: the `decoding.TokensToLogits` contract.

    Position t feeds its token at cache column P - 1 + t. At position 0 that is the last
    prompt column, so the step re-feeds the cached last prompt token whatever `tokens_Bx1`
    holds (a sampler's start token): its logits are `prefill`'s (as T5X, which also recomputes
    that column) and outputs y_0, y_1, .. line up as in encoder-decoder decoding.

    Args:
      tokens_Bx1: [B, 1] int32, the output of position t - 1 (ignored at t = 0).
      cache: from `prefill` (or `init_cache`) or the previous step.
      position: int32 scalar t.

    Returns:
      ([B, V] float32 logits of output t, updated cache).
    """
    position = jnp.asarray(position, jnp.int32)
    tokens_Bx1 = jnp.where(position == 0, cache['last_prompt_token'][:, None], tokens_Bx1)
    columns_B = cache['last_prompt_column'] + position
    keys = jnp.arange(cache['layers_0']['key'].shape[2])
    allowed = (keys >= cache['first_column'][:, None]) & (keys <= columns_B[:, None])
    logits_BxV, layer_caches = self.decoder.step(
        tokens_Bx1,
        columns_B,
        layers.mask_to_bias(allowed[:, None, None, :], self.config.dtype),
        cache,
    )
    return logits_BxV, {**cache, **layer_caches}
