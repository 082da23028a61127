"""GKDDecoderOnlyModel: seqio's prefix-LM rows as prompt + continuation, against references
computed on the rows themselves (T5X's teacher-forced pass of a DecoderOnlyModel).

The batches come from the real feature converter (`feature_converters.PrefixLMFeatureConverter`,
seqio's) on examples with inputs and targets of different lengths.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax
import seqio
import tensorflow as tf
import tiny

import gin
from gkd_t5x import decoder_only
from gkd_t5x import divergences
from gkd_t5x import feature_converters
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import rewards

VOCAB = 16
I, L = 5, 6
LENGTHS = {'inputs': I, 'targets': L}
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)


STUDENT = tiny.decoder_only_transformer(VOCAB, 8, 1)
TEACHER = tiny.decoder_only_transformer(VOCAB, 16, 2)


def make_model(teacher=TEACHER, bidirectional=True, lengths=LENGTHS, **gkd):
  return models.GKDDecoderOnlyModel(
      STUDENT,
      teacher,
      VOCABULARY,
      gkd=objective.GKDConfig(**gkd),
      inputs_bidirectional_attention=bidirectional,
      task_feature_lengths=lengths,
  )


def prefix_lm_features(examples):
  """The converter's features of [(inputs, targets)] token lists, as one batch."""
  dataset = tf.data.Dataset.from_generator(
      lambda: ({'inputs': x, 'targets': y} for x, y in examples),
      output_signature={
          'inputs': tf.TensorSpec([None], tf.int32),
          'targets': tf.TensorSpec([None], tf.int32),
      },
  )
  rows = list(
      feature_converters.PrefixLMFeatureConverter(pack=False)(dataset, LENGTHS).as_numpy_iterator()
  )
  return {name: jnp.asarray(np.stack([row[name] for row in rows])) for name in rows[0]}


def make_examples(seed=0):
  """Inputs of 5, 2, 1 and 3 tokens; targets of 3, 6 (no EOS: cut at L), 2 and 5."""
  rng = np.random.RandomState(seed)
  tokens = lambda n: rng.randint(2, VOCAB, n).tolist()
  return [
      (tokens(5), tokens(2) + [1]),
      (tokens(2), tokens(6)),
      (tokens(1), tokens(1) + [1]),
      (tokens(3), tokens(4) + [1]),
  ]


B = len(make_examples())


@pytest.fixture(scope='module')
def variables():
  shapes = {name: (B, I + L) for name in ('decoder_input_tokens', 'decoder_target_tokens')}
  return make_model().get_initial_variables(jax.random.PRNGKey(0), shapes)


def teacher_of(variables):
  return {'teacher': variables['teacher']}


def row_logits(module, params, batch, bidirectional=True):
  """[B, T, V] logits of the prefix-LM rows, as T5X's DecoderOnlyModel computes them."""
  return module.apply(
      {'params': params},
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      decoder_causal_attention=(batch['decoder_causal_attention'] if bidirectional else None),
      enable_dropout=False,
  )


def test_split_gives_left_padded_inputs_and_the_targets_with_their_weights():
  examples = make_examples()
  features = models.split_prefix_lm_batch(prefix_lm_features(examples), I, L)
  for row, (inputs, targets) in enumerate(examples):
    want_inputs = [0] * (I - len(inputs)) + inputs
    want_targets = targets[:L] + [0] * (L - len(targets[:L]))
    np.testing.assert_array_equal(features['encoder_input_tokens'][row], want_inputs)
    np.testing.assert_array_equal(features['decoder_target_tokens'][row], want_targets)
    np.testing.assert_array_equal(
        features['decoder_loss_weights'][row], np.asarray(want_targets) > 0
    )
  # A padding row (an evaluation split's last batch) has no inputs and no target.
  padded = {name: jnp.zeros_like(value) for name, value in prefix_lm_features(examples).items()}
  empty = models.split_prefix_lm_batch(padded, I, L)
  assert all(not np.any(value) for value in empty.values())


@pytest.mark.parametrize('bidirectional', [True, False])
def test_policy_logits_are_the_rows_logits_at_the_target_columns(variables, bidirectional):
  batch = prefix_lm_features(make_examples())
  features = models.split_prefix_lm_batch(batch, I, L)
  policy = models.bind_decoder_only(
      STUDENT, variables['params'], inputs_bidirectional_attention=bidirectional
  )
  targets = features['decoder_target_tokens']
  got = policy.logits(
      policy.read_prompt(features['encoder_input_tokens']), objective.shift_right(targets), targets
  )
  assert got.shape == (B, L, VOCAB)
  want = row_logits(STUDENT, variables['params'], batch, bidirectional)
  num_inputs = np.sum(np.asarray(batch['decoder_causal_attention']), -1) - 1
  weights = np.asarray(features['decoder_loss_weights'])
  for row, start in enumerate(num_inputs):
    for t in np.flatnonzero(weights[row]):
      np.testing.assert_allclose(got[row, t], want[row, start + t], rtol=1e-5, atol=1e-5)


def add_to_teacher_forced_logits(delta):
  """Adds `delta` [B, P + L - 1, V] to every teacher-forced `decoder_only.Decoder` output."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, decoder_only.Decoder) and context.method_name == '__call__':
      return out + delta
    return out

  return nn.intercept_methods(interceptor)


@pytest.mark.parametrize(
    'divergence,lmbda', [('cross_entropy', 0.0), ('forward_kl', 0.0), ('jsd', 1.0)]
)
def test_prompt_positions_carry_zero_loss_and_zero_gradient(variables, divergence, lmbda):
  """The gradient with respect to the student's teacher-forced logits is zero at every prompt
  position (columns 0 .. P - 2 of the policy's pass) and not at the continuation's; on the
  targets, the loss is the row's divergence weighted by the converter's loss weights."""
  batch = prefix_lm_features(make_examples())
  teacher = None if divergence == 'cross_entropy' else TEACHER
  model = make_model(teacher=teacher, divergence=divergence, lmbda=lmbda, beta=0.9)
  mutables = teacher_of(variables) if teacher else None

  def loss(delta):
    with add_to_teacher_forced_logits(delta):
      out = model.loss_fn(variables['params'], batch, jax.random.PRNGKey(2), mutables)[0]
    return out

  # The teacher's logits get delta too, under stop_gradient: the gradient is the student's.
  grad = np.asarray(jax.grad(loss)(jnp.zeros((B, I + L, VOCAB))))
  assert np.all(grad[:, :I] == 0.0)
  assert np.all(np.abs(grad[:, I:]).sum(-1)[:, 0] > 0)  # every row's first target position
  if lmbda == 0.0:
    student = row_logits(STUDENT, variables['params'], batch)
    weights = batch['decoder_loss_weights']
    if divergence == 'cross_entropy':
      per_position = divergences.token_cross_entropy(batch['decoder_target_tokens'], student)
    else:
      per_position = divergences.forward_kl(
          row_logits(TEACHER, variables['teacher'], batch), student
      )
    want = divergences.batch_mean(*divergences.sequence_mean(per_position, weights))
    np.testing.assert_allclose(float(loss(jnp.zeros((B, I + L, VOCAB)))), float(want), rtol=1e-5)


def student_samples(variables, batch, key):
  """The student's continuations gkd_loss samples for step key `key` (its rng split)."""
  _, _, sample_rng = jax.random.split(key, 3)
  student = models.bind_decoder_only(
      STUDENT, variables['params'], inputs_bidirectional_attention=True
  )
  inputs = models.split_prefix_lm_batch(batch, I, L)['encoder_input_tokens']
  return objective.sample_sequences(
      student,
      student.read_prompt(inputs),
      rng=sample_rng,
      batch_size=B,
      length=L,
      max_decode_length=L,
      temperature=1.0,
  )


def test_on_policy_gradient_equals_fixed_data_gradient_on_the_same_samples(variables):
  """No gradient flows through sampling: lambda = 1 has the gradient of lambda = 0 on a batch
  whose targets are the very continuations the student sampled after each prompt."""
  examples, key = make_examples(), jax.random.PRNGKey(3)
  batch = prefix_lm_features(examples)
  samples = student_samples(variables, batch, key)
  tokens, weights = np.asarray(samples.tokens), np.asarray(samples.weights)
  assert weights.sum() > 0
  fixed_batch = prefix_lm_features(
      [(inputs, tokens[row][weights[row] > 0].tolist()) for row, (inputs, _) in enumerate(examples)]
  )
  grad = lambda model, b: jax.grad(lambda p: model.loss_fn(p, b, key, teacher_of(variables))[0])(
      variables['params']
  )
  on_policy = grad(make_model(lmbda=1.0, divergence='jsd', beta=0.9), batch)
  fixed = grad(make_model(lmbda=0.0, divergence='jsd', beta=0.9), fixed_batch)
  for a, b in zip(jax.tree_util.tree_leaves(on_policy), jax.tree_util.tree_leaves(fixed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_split_of_the_whole_row_gives_the_same_losses_and_predictions(variables):
  """Without task_feature_lengths (or with rows of other lengths) each row is split into a
  prompt and a continuation of T each: the same losses and predictions, at a larger cost."""
  batch = prefix_lm_features(make_examples())
  params, mutables = variables['params'], teacher_of(variables)
  split, whole = make_model(divergence='jsd'), make_model(divergence='jsd', lengths=None)
  assert whole.split_widths(I + L) == (I + L, I + L)
  for name in ('loss', 'token_agreement', 'num_sequences'):
    np.testing.assert_allclose(
        float(split.eval_fn(params, batch, mutables)[1][name].compute()),
        float(whole.eval_fn(params, batch, mutables)[1][name].compute()),
        rtol=1e-5,
    )
  short, long = split.predict_batch(params, batch), whole.predict_batch(params, batch)
  assert short.shape == (B, L) and long.shape == (B, I + L)
  np.testing.assert_array_equal(short, long[:, :L])


def test_greedy_predictions_and_scores_match_the_rows_log_likelihood(variables):
  batch = prefix_lm_features(make_examples())
  params = variables['params']
  model = make_model(teacher=None, divergence='cross_entropy', lmbda=0.0)
  log_probs = scipy_log_softmax(np.asarray(row_logits(STUDENT, params, batch), np.float64), -1)
  token = np.take_along_axis(log_probs, np.asarray(batch['decoder_target_tokens'])[..., None], -1)[
      ..., 0
  ]
  want = np.sum(token * np.asarray(batch['decoder_loss_weights']), -1)
  np.testing.assert_allclose(np.asarray(jax.jit(model.score_batch)(params, batch)), want, rtol=1e-5)
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  # The greedy continuation, put back into the rows as targets, scores what decoding said.
  examples = [
      (
          inputs,
          np.asarray(tokens[row])[: list(tokens[row]).index(1) + 1].tolist()
          if 1 in list(tokens[row])
          else np.asarray(tokens[row]).tolist(),
      )
      for row, (inputs, _) in enumerate(make_examples())
  ]
  np.testing.assert_allclose(
      np.asarray(model.score_batch(params, prefix_lm_features(examples))),
      np.asarray(aux['scores']),
      rtol=1e-4,
      atol=1e-5,
  )
  beam, _ = models.GKDDecoderOnlyModel(
      STUDENT,
      None,
      VOCABULARY,
      gkd=model.gkd,
      inputs_bidirectional_attention=True,
      task_feature_lengths=LENGTHS,
      decode_method='beam',
  ).predict_batch_with_aux(params, batch)
  assert beam.shape == (B, L)


METHOD_DIR = 'gin/methods'


@pytest.mark.parametrize(
    'method', ['sft', 'supervised_kd', 'seqkd', 'imitkd', 'fdistill', 'gkd', 'rl_gkd']
)
def test_every_method_runs_through_the_decoder_only_model(variables, method):
  """Each method file's GKDConfig traces through loss_fn, eval_fn and (with a teacher
  divergence) on_policy_eval_fn of the decoder-only model (shapes only)."""
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([f'{METHOD_DIR}/{method}.gin'], [])
    config = gin.query_parameter('%GKD').scoped_configurable_fn()
  finally:
    gin.clear_config()
  teacher = TEACHER if config.needs_teacher else None
  model = models.GKDDecoderOnlyModel(
      STUDENT,
      teacher,
      VOCABULARY,
      gkd=config,
      inputs_bidirectional_attention=True,
      task_feature_lengths=LENGTHS,
  )
  batch = prefix_lm_features(make_examples())
  mutables = teacher_of(variables) if teacher else None
  loss, aux = jax.eval_shape(
      lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1), mutables), variables['params']
  )
  metrics = aux[0] if teacher else aux
  assert loss.shape == () and ('reward' in metrics) == (method == 'rl_gkd')
  eval_loss, _ = jax.eval_shape(lambda p: model.eval_fn(p, batch, mutables), variables['params'])
  assert eval_loss.shape == ()
  if model.has_on_policy_divergence:
    on_policy = jax.eval_shape(
        lambda p: model.on_policy_eval_fn(p, batch, jax.random.PRNGKey(1), mutables),
        variables['params'],
    )
    assert on_policy['on_policy_divergence'].total.shape == ()


def test_rl_gkd_rewards_the_continuation_against_the_targets(variables):
  batch = prefix_lm_features(make_examples())
  model = make_model(
      divergence='jsd', beta=0.9, lmbda=1.0, alpha=0.5, reward=rewards.ExactMatchReward()
  )
  loss, (metrics, _) = jax.jit(model.loss_fn)(
      variables['params'], batch, jax.random.PRNGKey(0), teacher_of(variables)
  )
  assert np.isfinite(float(loss)) and 0.0 <= float(metrics['reward'].compute()) <= 1.0
  targets = models.split_prefix_lm_batch(batch, I, L)['decoder_target_tokens']
  np.testing.assert_array_equal(model.sequence_reward(batch, targets), np.ones(B))


def test_bad_models_fail_at_construction():
  with pytest.raises(ValueError, match='vocabularies differ'):
    models.GKDDecoderOnlyModel(
        STUDENT,
        decoder_only.DecoderOnlyTransformer(
            decoder_only.DecoderOnlyConfig(vocab_size=2 * VOCAB, emb_dim=8, num_layers=1)
        ),
        VOCABULARY,
        gkd=objective.GKDConfig(),
    )
  encoder_decoder = network.Transformer(network.T5Config(vocab_size=VOCAB))
  with pytest.raises(ValueError, match='teacher_module must be a decoder_only'):
    models.GKDDecoderOnlyModel(STUDENT, encoder_decoder, VOCABULARY, gkd=objective.GKDConfig())
  with pytest.raises(ValueError, match="'inputs' and 'targets'"):
    make_model(lengths={'targets': 4})


def test_packed_features_and_task_loss_weights_are_refused(variables):
  batch = dict(prefix_lm_features(make_examples()))
  batch['decoder_segment_ids'] = jnp.ones_like(batch['decoder_target_tokens'])
  with pytest.raises(ValueError, match='packed prefix-LM features'):
    make_model(divergence='jsd').eval_fn(variables['params'], batch, teacher_of(variables))
  dataset = tf.data.Dataset.from_tensors(
      {
          'inputs': tf.constant([3, 4]),
          'targets': tf.constant([5, 1]),
          feature_converters.TARGETS_LOSS_WEIGHTS: tf.constant([1, 1]),
      }
  )
  with pytest.raises(ValueError, match='own loss weights'):
    feature_converters.PrefixLMFeatureConverter(pack=False)(dataset, LENGTHS)
