"""The decoder-only network: T5X's decoder_only parameter layout and logits, cached decoding after
left-padded prompts of different lengths, prefix-LM attention, config checks.

The comparisons with T5X skip where `t5x.examples.decoder_only.network` is not importable (t5x
is not on PyPI, and some installs lack that example).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

import gin
from gkd_t5x import decoder_only
from gkd_t5x import decoding

VOCAB = 40
CONFIG = dict(
    vocab_size=VOCAB,
    emb_dim=16,
    num_heads=2,
    num_layers=2,
    head_dim=8,
    mlp_dim=24,
    dropout_rate=0.0,
)
# (logits_via_embedding, mlp_activations): T5X's default, and the shared table with T5 1.1's
# gated MLP.
VARIANTS = [(False, ('relu',)), (True, ('gelu', 'linear'))]


def make_module(**overrides):
  return decoder_only.DecoderOnlyTransformer(
      decoder_only.DecoderOnlyConfig(**{**CONFIG, **overrides})
  )


def init(module, seed=0, length=6):
  tokens = jnp.ones((2, length), jnp.int32)
  return module.init(jax.random.PRNGKey(seed), tokens, tokens, enable_dropout=False)


def t5x_module(logits_via_embedding, mlp_activations):
  t5x_network = pytest.importorskip('t5x.examples.decoder_only.network')
  return t5x_network.DecoderWrapper(
      t5x_network.TransformerConfig(
          **CONFIG, logits_via_embedding=logits_via_embedding, mlp_activations=mlp_activations
      )
  )


def packed_prefix_lm_batch():
  """Row 0: T5X's packed prefix-LM example; row 1: one prefix-LM example, then padding."""
  targets = np.array([[6, 7, 8, 3, 4, 5, 0, 0], [9, 4, 6, 1, 3, 9, 1, 0]])
  inputs = np.array([[0, 6, 7, 0, 3, 4, 0, 0], [0, 9, 4, 6, 1, 3, 9, 1]])
  segments = np.array([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]])
  causal_attention = np.array([[1, 1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
  return tuple(map(jnp.asarray, (inputs, targets, segments, causal_attention)))


def axis_names(variables):
  return jax.tree_util.tree_map(lambda axes: axes.names, variables['params_axes'])


# ------------------------------------------------------------------------ T5X compatibility


@pytest.mark.parametrize('logits_via_embedding,mlp_activations', VARIANTS)
def test_param_tree_names_shapes_and_axes_equal_t5x(logits_via_embedding, mlp_activations):
  theirs = t5x_module(logits_via_embedding, mlp_activations)
  ours = make_module(logits_via_embedding=logits_via_embedding, mlp_activations=mlp_activations)
  tokens = jnp.ones((2, 6), jnp.int32)
  t5x_variables = theirs.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)
  our_variables = init(ours)
  shapes = lambda variables: {
      name: (leaf.shape, leaf.dtype) for name, leaf in tiny.flat(variables['params']).items()
  }
  assert shapes(our_variables) == shapes(t5x_variables)
  assert axis_names(our_variables) == axis_names(t5x_variables)
  assert set(our_variables) == set(t5x_variables) == {'params', 'params_axes'}


@pytest.mark.parametrize('logits_via_embedding,mlp_activations', VARIANTS)
def test_t5x_params_give_equal_logits_both_ways(logits_via_embedding, mlp_activations):
  theirs = t5x_module(logits_via_embedding, mlp_activations)
  ours = make_module(logits_via_embedding=logits_via_embedding, mlp_activations=mlp_activations)
  inputs, targets, segments, causal_attention = packed_prefix_lm_batch()
  t5x_params = theirs.init(jax.random.PRNGKey(0), inputs, targets, enable_dropout=False)['params']
  our_params = init(ours, seed=1)['params']
  valid = np.asarray(targets) > 0
  for params in (t5x_params, our_params):
    for kwargs in (
        dict(decoder_segment_ids=segments, decoder_causal_attention=causal_attention),
        dict(decoder_segment_ids=segments),
        {},
    ):
      apply = lambda module, params=params, kwargs=kwargs: np.asarray(
          module.apply({'params': params}, inputs, targets, enable_dropout=False, **kwargs)
      )
      np.testing.assert_allclose(apply(ours)[valid], apply(theirs)[valid], rtol=1e-5, atol=1e-5)


def test_parameter_tree_follows_t5x_layout():
  """The layout the T5X comparisons check, stated here too for where T5X is absent."""
  variables = init(make_module(mlp_activations=('gelu', 'linear')))
  params = tiny.flat(variables['params'])
  prefix = "['decoder']"
  expected = {
      "['token_embedder']['embedding']": (VOCAB, 16),
      "['relpos_bias']['rel_embedding']": (2, 32),
      "['decoder_norm']['scale']": (16,),
      "['logits_dense']['kernel']": (16, VOCAB),
  }
  for index in range(2):
    layer = f"['layers_{index}']"
    expected.update(
        {
            f"{layer}['pre_self_attention_layer_norm']['scale']": (16,),
            f"{layer}['pre_mlp_layer_norm']['scale']": (16,),
            f"{layer}['mlp']['wi_0']['kernel']": (16, 24),
            f"{layer}['mlp']['wi_1']['kernel']": (16, 24),
            f"{layer}['mlp']['wo']['kernel']": (24, 16),
        }
    )
    for name in ('query', 'key', 'value', 'out'):
      expected[f"{layer}['self_attention']['{name}']['kernel']"] = (16, 16)
  assert {name: leaf.shape for name, leaf in params.items()} == {
      prefix + name: shape for name, shape in expected.items()
  }
  assert all(leaf.dtype == jnp.float32 for leaf in params.values())
  axes = variables['params_axes']['decoder']
  names = lambda *path: functools.reduce(lambda tree, key: tree[key], path, axes).names
  assert names('layers_0', 'self_attention', 'query', 'kernel_axes') == ('embed', 'joined_kv')
  assert names('layers_1', 'self_attention', 'out', 'kernel_axes') == ('joined_kv', 'embed')
  assert names('layers_0', 'mlp', 'wi_1', 'kernel_axes') == ('embed', 'mlp')
  assert names('layers_0', 'mlp', 'wo', 'kernel_axes') == ('mlp', 'embed')
  assert names('token_embedder', 'embedding_axes') == ('vocab', 'embed')
  assert names('relpos_bias', 'rel_embedding_axes') == ('heads', 'relpos_buckets')
  assert names('decoder_norm', 'scale_axes') == ('embed',)
  assert names('logits_dense', 'kernel_axes') == ('embed', 'vocab')


# ------------------------------------------------------------------------- cached decoding


def left_padded_prompts(lengths, width, seed=0):
  """[B, P] prompts: row b is a start token 0 then n_b - 1 tokens, in its last n_b columns."""
  rng = np.random.RandomState(seed)
  prompts = np.zeros((len(lengths), width), np.int32)
  for row, length in enumerate(lengths):
    prompts[row, width - length + 1 :] = rng.randint(2, VOCAB, length - 1)
  return jnp.asarray(prompts), jnp.asarray(lengths, jnp.int32)


def teacher_forced_twin(module, params, prompts, lengths, continuation, bidirectional):
  """[B, P + T - 1, V] logits of concat(prompts, continuation[:, :-1]), the teacher-forced twin
  of decoding after `prompts` (see decoder_only's docstring)."""
  tokens = jnp.concatenate([prompts, continuation[:, :-1]], axis=1)
  width = prompts.shape[1]
  columns = jnp.arange(tokens.shape[1])
  valid = columns[None, :] >= (width - lengths)[:, None]
  causal_attention = (valid & (columns < width)).astype(jnp.int32) if bidirectional else None
  return module.apply(
      {'params': params},
      tokens,
      valid.astype(jnp.int32),
      decoder_causal_attention=causal_attention,
      enable_dropout=False,
  )


def cached_logits(module, params, prompts, lengths, continuation, bidirectional):
  """([B, V] prefill logits, [B, T, V] decode_step logits fed `continuation`)."""
  variables = {'params': params}
  steps = continuation.shape[1]
  cache = module.init_cache(prompts.shape[0], prompts.shape[1] + steps - 1)
  prefill_logits, cache = module.apply(
      variables,
      prompts,
      lengths,
      cache,
      inputs_bidirectional_attention=bidirectional,
      method=module.prefill,
  )
  step = jax.jit(functools.partial(module.apply, variables, method=module.decode_step))
  # At position 0 the step must ignore its token (a sampler's start token): feed junk.
  previous = jnp.full((prompts.shape[0], 1), 7, jnp.int32)
  logits = []
  for position in range(steps):
    logits_BxV, cache = step(previous, cache, position)
    logits.append(logits_BxV)
    previous = continuation[:, position : position + 1]
  return prefill_logits, jnp.stack(logits, axis=1)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_cached_decoding_equals_teacher_forced_with_variable_prompts(bidirectional):
  module = make_module(logits_via_embedding=bidirectional)
  params = init(module)['params']
  width, steps = 5, 4
  prompts, lengths = left_padded_prompts([1, 3, 5], width)
  continuation = jnp.asarray(np.random.RandomState(1).randint(2, VOCAB, (3, steps)))
  prefill_logits, step_logits = cached_logits(
      module, params, prompts, lengths, continuation, bidirectional
  )
  np.testing.assert_allclose(prefill_logits, step_logits[:, 0], rtol=1e-5, atol=1e-5)
  twin = teacher_forced_twin(module, params, prompts, lengths, continuation, bidirectional)
  np.testing.assert_allclose(step_logits, twin[:, width - 1 :], rtol=1e-5, atol=1e-5)
  # Left padding gives each row the logits it has alone, unpadded.
  for row, length in enumerate(np.asarray(lengths)):
    alone = teacher_forced_twin(
        module,
        params,
        prompts[row : row + 1, width - length :],
        lengths[row : row + 1],
        continuation[row : row + 1],
        bidirectional,
    )
    np.testing.assert_allclose(step_logits[row], alone[0, length - 1 :], rtol=1e-5, atol=1e-5)


def test_prompt_attention_differs_between_prefix_lm_and_causal_prefill():
  module = make_module()
  params = init(module)['params']
  prompts, lengths = left_padded_prompts([4, 5], 5)
  continuation = jnp.full((2, 2), 3, jnp.int32)
  prefix_lm, _ = cached_logits(module, params, prompts, lengths, continuation, True)
  causal, _ = cached_logits(module, params, prompts, lengths, continuation, False)
  assert np.abs(np.asarray(prefix_lm - causal)).max() > 1e-3


def test_init_cache_alone_decodes_after_the_start_token():
  module = make_module()
  params = init(module)['params']
  continuation = jnp.asarray([[5, 9, 2], [11, 3, 8]])
  prompts, lengths = jnp.zeros((2, 1), jnp.int32), jnp.ones((2,), jnp.int32)
  _, prefilled = cached_logits(module, params, prompts, lengths, continuation, False)
  cache = module.init_cache(2, 3)
  step = functools.partial(module.apply, {'params': params}, method=module.decode_step)
  previous = jnp.zeros((2, 1), jnp.int32)
  for position in range(3):
    logits, cache = step(previous, cache, position)
    np.testing.assert_allclose(logits, prefilled[:, position], rtol=1e-5, atol=1e-5)
    previous = continuation[:, position : position + 1]


def test_temperature_sample_continues_prefilled_prompts():
  """Greedy sampling after prefill picks the argmax of the teacher-forced twin at each step."""
  module = make_module()
  params = init(module, seed=3)['params']
  width, steps = 4, 5
  prompts, lengths = left_padded_prompts([2, 4, 3], width, seed=2)
  cache = module.init_cache(3, width + steps - 1)
  _, cache = module.apply(
      {'params': params},
      prompts,
      lengths,
      cache,
      inputs_bidirectional_attention=True,
      method=module.prefill,
  )
  step = functools.partial(module.apply, {'params': params}, method=module.decode_step)
  out = jax.jit(
      lambda cache: decoding.temperature_sample(
          step, cache, rng=None, batch_size=3, max_decode_length=steps, temperature=0.0, eos_id=-1
      )
  )(cache)
  twin = teacher_forced_twin(module, params, prompts, lengths, out.tokens, True)
  np.testing.assert_array_equal(out.tokens, np.argmax(twin[:, width - 1 :], axis=-1))


# ------------------------------------------------------------------------ prefix-LM attention


def test_prompt_sees_later_prompt_tokens_but_never_the_continuation():
  """Row 0 is a prefix LM row (prompt columns 0..3); row 1 + c changes token c of it."""
  module = make_module()
  params = init(module, seed=4)['params']
  length, width = 8, 4
  base = np.random.RandomState(5).randint(2, VOCAB, length)
  rows = np.tile(base, (length + 1, 1))
  for column in range(length):
    rows[1 + column, column] = 2 + (base[column] - 1) % (VOCAB - 2)  # Another valid token.
  causal_attention = np.tile(np.arange(length) < width, (length + 1, 1)).astype(np.int32)
  apply = lambda attention: np.asarray(
      module.apply(
          {'params': params},
          jnp.asarray(rows),
          jnp.ones_like(rows),
          decoder_causal_attention=attention,
          enable_dropout=False,
      )
  )
  prefix_lm, causal = apply(jnp.asarray(causal_attention)), apply(None)
  for column in range(length):
    changed = np.abs(prefix_lm[1 + column] - prefix_lm[0]).max(axis=-1) > 1e-6
    # A changed token reaches its own and every later column; a prompt token also reaches
    # every prompt column before it, a continuation token no column before it.
    first_reached = 0 if column < width else column
    assert not changed[:first_reached].any(), column
    assert changed[first_reached:].all(), column
    changed_causal = np.abs(causal[1 + column] - causal[0]).max(axis=-1) > 1e-6
    assert not changed_causal[:column].any() and changed_causal[column:].all(), column


# ------------------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('vocab_size', 0, 'DecoderOnlyConfig.vocab_size must be a positive int, got 0'),
        ('num_layers', 2.0, 'DecoderOnlyConfig.num_layers must be a positive int, got 2.0'),
        ('num_heads', True, 'DecoderOnlyConfig.num_heads must be a positive int, got True'),
        ('dropout_rate', 1.0, 'DecoderOnlyConfig.dropout_rate must be in [0, 1), got 1.0'),
        (
            'mlp_activations',
            ('swish',),
            (
                'DecoderOnlyConfig.mlp_activations must be a non-empty sequence of '
                "['gelu', 'linear', 'relu'], got ('swish',)"
            ),
        ),
        ('mlp_activations', (), 'DecoderOnlyConfig.mlp_activations must be a non-empty sequence'),
        ('mlp_activations', 'relu', "sequence of names, e.g. ('relu',), got the string 'relu'"),
        ('logits_via_embedding', 'yes', 'DecoderOnlyConfig.logits_via_embedding must be a bool'),
        (
            'dtype',
            'int32',
            (
                "DecoderOnlyConfig.dtype must be one of ['float32', 'bfloat16', "
                "'float16'], got 'int32'"
            ),
        ),
        ('dtype', 'fp33', 'DecoderOnlyConfig.dtype must be one of'),
    ],
)
def test_bad_config_values_fail_with_a_clear_message(field, value, message):
  with pytest.raises(ValueError) as error:
    decoder_only.DecoderOnlyConfig(**{**CONFIG, field: value})
  assert message in str(error.value)


def test_config_is_gin_configurable_and_normalized():
  gin.parse_config(
      ['DecoderOnlyConfig.num_layers = 3', "DecoderOnlyConfig.mlp_activations = ['gelu', 'linear']"]
  )
  try:
    config = decoder_only.DecoderOnlyConfig(vocab_size=VOCAB, dtype='bfloat16')
  finally:
    gin.clear_config()
  assert config.num_layers == 3
  assert config.mlp_activations == ('gelu', 'linear')
  assert config.dtype == jnp.bfloat16


def test_teacher_forced_call_refuses_t5x_cache_decoding():
  module = make_module()
  variables = init(module)
  tokens = jnp.ones((2, 3), jnp.int32)
  for kwargs in (dict(decode=True), dict(prefill=True)):
    with pytest.raises(ValueError, match='decode with init_cache, prefill and decode_step'):
      module.apply(variables, tokens, tokens, enable_dropout=False, **kwargs)


def test_prefill_refuses_a_prompt_longer_than_the_cache():
  module = make_module()
  variables = init(module)
  with pytest.raises(ValueError, match='prompt width P = 4 exceeds the cache length'):
    module.apply(
        variables,
        jnp.ones((2, 4), jnp.int32),
        jnp.ones((2,), jnp.int32),
        module.init_cache(2, 3),
        method=module.prefill,
    )
