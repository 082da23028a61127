"""The T5 1.1 network: T5X parameter layout, cached decoding, packing, dtypes, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from gkd_t5x import decoding
from gkd_t5x import network

VOCAB = 50


def make_config(**overrides):
  values = dict(
      vocab_size=VOCAB,
      emb_dim=16,
      num_heads=2,
      num_encoder_layers=2,
      num_decoder_layers=2,
      head_dim=8,
      mlp_dim=24,
      dropout_rate=0.0,
  )
  values.update(overrides)
  return network.T5Config(**values)


def make_batch(seed=0, batch=3, input_length=7, target_length=6):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(2, VOCAB, (batch, input_length))
  inputs[0, 4:] = 0  # Padded inputs.
  targets = rng.randint(2, VOCAB, (batch, target_length))
  targets[1, 3] = 1  # EOS, then padding.
  targets[1, 4:] = 0
  decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  return jnp.asarray(inputs), jnp.asarray(decoder_inputs), jnp.asarray(targets)


def init(module, inputs, decoder_inputs, targets, seed=0):
  return module.init(
      jax.random.PRNGKey(seed), inputs, decoder_inputs, targets, enable_dropout=False
  )


def test_parameter_tree_follows_t5x_names_shapes_and_axes():
  module = network.Transformer(make_config())
  variables = init(module, *make_batch())
  params = tiny.flat(variables['params'])
  assert params["['token_embedder']['embedding']"].shape == (VOCAB, 16)
  assert params["['encoder']['relpos_bias']['rel_embedding']"].shape == (2, 32)
  assert params["['decoder']['relpos_bias']['rel_embedding']"].shape == (2, 32)
  # T5X stores the attention kernels as matrices over the joined heads x head_dim axis.
  assert params["['encoder']['layers_1']['attention']['query']['kernel']"].shape == (16, 16)
  assert params["['encoder']['layers_0']['attention']['out']['kernel']"].shape == (16, 16)
  assert params["['encoder']['layers_0']['mlp']['wi_0']['kernel']"].shape == (16, 24)
  assert params["['encoder']['layers_0']['mlp']['wi_1']['kernel']"].shape == (16, 24)
  assert params["['encoder']['layers_0']['mlp']['wo']['kernel']"].shape == (24, 16)
  assert params["['decoder']['layers_1']['encoder_decoder_attention']['key']['kernel']"].shape == (
      16,
      16,
  )
  assert params["['decoder']['logits_dense']['kernel']"].shape == (16, VOCAB)
  for name in (
      'pre_self_attention_layer_norm',
      'pre_cross_attention_layer_norm',
      'pre_mlp_layer_norm',
  ):
    assert params[f"['decoder']['layers_0']['{name}']['scale']"].shape == (16,)
  assert params["['encoder']['encoder_norm']['scale']"].shape == (16,)
  assert params["['decoder']['decoder_norm']['scale']"].shape == (16,)
  assert len(params) == 1 + 2 * (1 + 1) + 2 * 9 + 2 * 14 + 1
  assert all(leaf.dtype == jnp.float32 for leaf in params.values())

  axes = variables['params_axes']
  names = lambda *path: lookup(axes, path).names
  assert names('token_embedder', 'embedding_axes') == ('vocab', 'embed')
  assert names('decoder', 'layers_0', 'self_attention', 'query', 'kernel_axes') == (
      'embed',
      'joined_kv',
  )
  assert names('decoder', 'layers_0', 'self_attention', 'out', 'kernel_axes') == (
      'joined_kv',
      'embed',
  )
  assert names('encoder', 'layers_0', 'mlp', 'wi_0', 'kernel_axes') == ('embed', 'mlp')
  assert names('encoder', 'layers_0', 'mlp', 'wo', 'kernel_axes') == ('mlp', 'embed')
  assert names('decoder', 'logits_dense', 'kernel_axes') == ('embed', 'vocab')
  assert names('encoder', 'relpos_bias', 'rel_embedding_axes') == ('heads', 'relpos_buckets')
  assert names('encoder', 'encoder_norm', 'scale_axes') == ('embed',)


def lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize('logits_via_embedding', [False, True])
def test_cached_decoding_equals_teacher_forced_logits(logits_via_embedding):
  module = network.Transformer(make_config(logits_via_embedding=logits_via_embedding))
  inputs, decoder_inputs, targets = make_batch()
  variables = init(module, inputs, decoder_inputs, targets)
  # Full targets (no padding), so every teacher-forced position sees what the cache sees.
  targets = jnp.where(targets > 0, targets, 5)
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  full = module.apply(variables, inputs, decoder_inputs, targets, enable_dropout=False)
  encoded = module.apply(variables, inputs, enable_dropout=False, method=module.encode)
  cache = module.apply(variables, encoded, inputs, targets.shape[1], method=module.init_cache)
  step_fn = jax.jit(
      lambda tokens, cache, position: module.apply(
          variables, tokens, cache, position, method=module.decode_step
      )
  )
  steps = []
  for position in range(targets.shape[1]):
    logits, cache = step_fn(decoder_inputs[:, position : position + 1], cache, position)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), rtol=1e-5, atol=1e-5)


def test_logits_via_embedding_shares_the_table():
  config = make_config(logits_via_embedding=True)
  module = network.Transformer(config)
  batch = make_batch()
  variables = init(module, *batch)
  assert 'logits_dense' not in variables['params']['decoder']
  logits = module.apply(variables, *batch, enable_dropout=False)
  assert logits.shape == (3, 6, VOCAB) and logits.dtype == jnp.float32


def test_packed_examples_equal_unpacked_ones():
  """Two examples packed into one row with segment ids give each one's unpacked logits."""
  module = network.Transformer(make_config())
  a_in, b_in = np.array([5, 6, 7]), np.array([8, 9, 10, 11])
  a_out, b_out = np.array([12, 13, 1]), np.array([14, 1])

  def unpacked(inputs, targets):
    inputs, targets = jnp.asarray(inputs[None]), jnp.asarray(targets[None])
    return inputs, jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1], targets

  variables = init(module, *unpacked(a_in, a_out))
  packed_inputs = jnp.asarray([np.concatenate([a_in, b_in, [0]])])
  packed_targets = jnp.asarray([np.concatenate([a_out, b_out, [0]])])
  packed_decoder_inputs = jnp.asarray([[0, 12, 13, 0, 14, 0]])
  encoder_segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
  decoder_segments = jnp.asarray([[1, 1, 1, 2, 2, 0]])
  packed = module.apply(
      variables,
      packed_inputs,
      packed_decoder_inputs,
      packed_targets,
      encoder_segments,
      decoder_segments,
      enable_dropout=False,
  )
  logits_a = module.apply(variables, *unpacked(a_in, a_out), enable_dropout=False)
  logits_b = module.apply(variables, *unpacked(b_in, b_out), enable_dropout=False)
  np.testing.assert_allclose(packed[0, :3], logits_a[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 3:5], logits_b[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_activations_keep_float32_params_and_logits():
  batch = make_batch()
  module32 = network.Transformer(make_config())
  module16 = network.Transformer(make_config(dtype='bfloat16'))
  variables = init(module16, *batch)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables['params']))
  logits16 = module16.apply(variables, *batch, enable_dropout=False)
  logits32 = module32.apply(variables, *batch, enable_dropout=False)
  assert logits16.dtype == jnp.float32
  valid = np.asarray(batch[2]) > 0
  # bfloat16 keeps ~3 significant digits; the logits stay close to the float32 ones.
  np.testing.assert_allclose(
      np.asarray(logits16)[valid],
      np.asarray(logits32)[valid],
      atol=0.1 * float(jnp.abs(logits32).max()),
  )


def test_dropout_only_when_enabled():
  batch = make_batch()
  module = network.Transformer(make_config(dropout_rate=0.3))
  variables = init(module, *batch)
  apply = lambda seed, enable: module.apply(
      variables, *batch, enable_dropout=enable, rngs={'dropout': jax.random.PRNGKey(seed)}
  )
  np.testing.assert_array_equal(apply(0, False), apply(1, False))
  assert not np.allclose(apply(0, True), apply(1, True))
  np.testing.assert_array_equal(apply(2, True), apply(2, True))


def test_bad_config_fails_early():
  with pytest.raises(ValueError, match='T5Config.emb_dim'):
    network.T5Config(vocab_size=10, emb_dim=0)
  with pytest.raises(ValueError, match='dropout_rate'):
    network.T5Config(vocab_size=10, dropout_rate=1.5)
  with pytest.raises(ValueError, match=r'T5Config.mlp_activations must be a non-empty sequence'):
    make_config(mlp_activations=('gelu', 'swish'))
  with pytest.raises(ValueError, match='T5Config.num_heads must be a positive int, got True'):
    network.T5Config(vocab_size=10, num_heads=True)
  with pytest.raises(ValueError, match=r"T5Config.dtype must be one of \['float32'"):
    network.T5Config(vocab_size=10, dtype='int8')


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_cached_sampling_equals_uncached_step_by_step_decoding(temperature):
  """`decoding.temperature_sample` over the KV cache draws the same tokens as a loop that
  recomputes the teacher-forced logits of the whole prefix at every step (same fold_in keys)."""
  module = network.Transformer(make_config())
  inputs, decoder_inputs, targets = make_batch()
  variables = init(module, inputs, decoder_inputs, targets)
  length, rng = 6, jax.random.PRNGKey(7)
  encoded = module.apply(variables, inputs, enable_dropout=False, method=module.encode)
  cache = module.apply(variables, encoded, inputs, length, method=module.init_cache)
  step = lambda tokens, cache, position: module.apply(
      variables, tokens, cache, position, method=module.decode_step
  )
  cached = jax.jit(
      lambda cache: decoding.temperature_sample(
          step,
          cache,
          rng=rng,
          batch_size=3,
          max_decode_length=length,
          temperature=temperature,
          eos_id=1,
      )
  )(cache)

  forward = jax.jit(
      lambda prefix: module.apply(
          variables, inputs, prefix, jnp.ones_like(prefix), enable_dropout=False
      )
  )
  tokens = np.zeros((3, length), np.int32)
  for position in range(length):
    prefix = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    logits = forward(jnp.asarray(prefix))[:, position]
    if temperature == 0.0:
      tokens[:, position] = np.argmax(np.asarray(logits), -1)
    else:
      key = jax.random.fold_in(rng, position)
      tokens[:, position] = np.asarray(jax.random.categorical(key, logits / temperature))
  weights = np.asarray(cached.weights)
  np.testing.assert_array_equal(np.asarray(cached.tokens)[weights > 0], tokens[weights > 0])
