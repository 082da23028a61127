"""Parameters exchange with T5X's T5 1.1 example network and give the same logits.

Skipped where t5x is not installed (it is not on PyPI; see the README).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gkd_t5x import network

t5x_network = pytest.importorskip('t5x.examples.t5.network')

CONFIG = dict(
    vocab_size=40,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=3,
    head_dim=8,
    mlp_dim=24,
    mlp_activations=('gelu', 'linear'),
    dropout_rate=0.0,
)


def batch():
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, 40, (2, 9))
  inputs[1, 6:] = 0
  targets = rng.randint(2, 40, (2, 5))
  targets[0, 3:] = [1, 0]
  decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  return tuple(map(jnp.asarray, (inputs, decoder_inputs, targets)))


@pytest.mark.parametrize('logits_via_embedding', [False, True])
def test_t5x_params_give_equal_logits_both_ways(logits_via_embedding):
  ours = network.Transformer(network.T5Config(**CONFIG, logits_via_embedding=logits_via_embedding))
  theirs = t5x_network.Transformer(
      t5x_network.T5Config(**CONFIG, logits_via_embedding=logits_via_embedding)
  )
  args = batch()
  t5x_variables = theirs.init(jax.random.PRNGKey(0), *args, enable_dropout=False)
  our_variables = ours.init(jax.random.PRNGKey(1), *args, enable_dropout=False)
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: x.shape, tree)
  assert shapes(t5x_variables['params']) == shapes(our_variables['params'])
  assert jax.tree_util.tree_map(
      lambda a: a.names, t5x_variables['params_axes']
  ) == jax.tree_util.tree_map(lambda a: a.names, our_variables['params_axes'])
  valid = np.asarray(args[2]) > 0
  for params in (t5x_variables['params'], our_variables['params']):
    ours_logits = ours.apply({'params': params}, *args, enable_dropout=False)
    theirs_logits = theirs.apply({'params': params}, *args, enable_dropout=False)
    np.testing.assert_allclose(
        np.asarray(ours_logits)[valid], np.asarray(theirs_logits)[valid], rtol=1e-5, atol=1e-5
    )
