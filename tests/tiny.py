"""Tiny T5 networks (encoder-decoder and decoder-only) and encoder-decoder batches that the
unit tests share, and pytrees by path.

The networks trace and run in seconds on a CPU; the batch maker derives what the model
features add to the token arrays (shifted decoder inputs, loss weights), as seqio's
encoder-decoder feature converter does.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gkd_t5x import decoder_only
from gkd_t5x import network
from gkd_t5x import objective


def t5_config(
    vocab_size: int, emb_dim: int = 8, layers: int = 1, mlp_dim: Optional[int] = None
) -> network.T5Config:
  """T5 1.1 with 2 heads of 4, `layers` encoder and decoder layers, an MLP of 2 x `emb_dim`
  (unless `mlp_dim` is given) and no dropout."""
  return network.T5Config(
      vocab_size=vocab_size,
      emb_dim=emb_dim,
      num_heads=2,
      num_encoder_layers=layers,
      num_decoder_layers=layers,
      head_dim=4,
      mlp_dim=mlp_dim or 2 * emb_dim,
      dropout_rate=0.0,
  )


def transformer(
    vocab_size: int, emb_dim: int = 8, layers: int = 1, mlp_dim: Optional[int] = None
) -> network.Transformer:
  """The `network.Transformer` of `t5_config`."""
  return network.Transformer(t5_config(vocab_size, emb_dim, layers, mlp_dim))


def decoder_only_transformer(
    vocab_size: int, emb_dim: int = 8, layers: int = 1
) -> decoder_only.DecoderOnlyTransformer:
  """A prefix-LM `decoder_only.DecoderOnlyTransformer` of the same shape as `t5_config`'s
  layers (2 heads of 4, an MLP of 2 x `emb_dim`, no dropout), `layers` deep."""
  return decoder_only.DecoderOnlyTransformer(
      decoder_only.DecoderOnlyConfig(
          vocab_size=vocab_size,
          emb_dim=emb_dim,
          num_heads=2,
          num_layers=layers,
          head_dim=4,
          mlp_dim=2 * emb_dim,
          mlp_activations=('gelu', 'linear'),
          dropout_rate=0.0,
      )
  )


def encdec_batch(inputs: np.ndarray, targets: np.ndarray) -> Dict[str, jnp.ndarray]:
  """The model features of `inputs` [B, I] and `targets` [B, L] (EOS 1, then padding 0):
  decoder inputs [B, L] are the targets shifted right behind a 0 (`objective.shift_right`),
  and every non-padding target position has loss weight 1."""
  return {
      'encoder_input_tokens': jnp.asarray(inputs),
      'decoder_target_tokens': jnp.asarray(targets),
      'decoder_input_tokens': objective.shift_right(jnp.asarray(targets)),
      'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32),
  }


def flat(tree) -> Dict[str, np.ndarray]:
  """{path as `jax.tree_util.keystr` writes it, e.g. "['decoder']['layers_0']": leaf as a
  NumPy array} of a pytree (params, checkpoints)."""
  return {
      jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
