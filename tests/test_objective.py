"""The GKD objective through `GKDModel.loss_fn`: Algorithm 1's coin, the methods as configs,
stop-gradient through sampling, RL + GKD, and early failure on bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import log_softmax as scipy_log_softmax
import seqio
import tiny

from gkd_t5x import decoding
from gkd_t5x import divergences
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import rewards

VOCAB = 16
B, I, L = 4, 5, 6
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)


STUDENT = tiny.transformer(VOCAB, 8, 1)
TEACHER = tiny.transformer(VOCAB, 16, 2)


def make_model(teacher=TEACHER, **gkd):
  return models.GKDModel(STUDENT, teacher, VOCABULARY, VOCABULARY, gkd=objective.GKDConfig(**gkd))


def make_batch(seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, VOCAB, (B, L))
  targets[0, 2:] = [1, 0, 0, 0]
  targets[1, 4:] = [1, 0]
  return tiny.encdec_batch(rng.randint(2, VOCAB, (B, I)), targets)


@pytest.fixture(scope='module')
def variables():
  shapes = {
      'encoder_input_tokens': (B, I),
      'decoder_input_tokens': (B, L),
      'decoder_target_tokens': (B, L),
  }
  return make_model().get_initial_variables(jax.random.PRNGKey(0), shapes)


def teacher_of(variables):
  return {'teacher': variables['teacher']}


def test_initial_variables_hold_a_frozen_teacher_collection(variables):
  assert set(variables) == {'params', 'params_axes', 'teacher', 'teacher_axes'}
  assert variables['teacher']['encoder']['layers_1']['attention']['query']['kernel'].shape == (
      16,
      8,
  )
  assert 'layers_1' not in variables['params']['encoder']


def test_lambda_half_is_on_policy_half_the_time(variables):
  """Algorithm 1: one coin per step, on-policy with probability lambda (1000 steps)."""
  model = make_model(lmbda=0.5, divergence='jsd', beta=0.5)
  batch = make_batch()
  keys = jax.random.split(jax.random.PRNGKey(1), 1000)
  on_policy = jax.jit(
      lambda keys: jax.lax.map(
          lambda key: model.loss_fn(variables['params'], batch, key, teacher_of(variables))[1][0][
              'on_policy_fraction'
          ].compute(),
          keys,
      )
  )(keys)
  assert set(np.unique(np.asarray(on_policy))) == {0.0, 1.0}
  assert abs(float(np.mean(on_policy)) - 0.5) < 0.05


def test_constant_lambda_picks_the_branch_at_trace_time(variables):
  """lambda = 0 compiles no sampler (no while loop) and lambda = 1 no coin (no conditional)."""
  batch = make_batch()

  def hlo(model):
    fn = lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(0), teacher_of(variables))[0]
    return jax.jit(jax.grad(fn)).lower(variables['params']).as_text()

  supervised, on_policy, mixed = (hlo(make_model(lmbda=value)) for value in (0.0, 1.0, 0.5))
  assert 'while' not in supervised
  assert 'while' in on_policy and 'conditional' not in on_policy and 'case' not in on_policy
  assert 'while' in mixed and ('conditional' in mixed or 'case' in mixed)


def test_sft_is_token_cross_entropy_and_needs_no_teacher(variables):
  batch = make_batch()
  model = make_model(teacher=None, divergence='cross_entropy', lmbda=0.0)
  loss, metrics = model.loss_fn(variables['params'], batch, jax.random.PRNGKey(0))
  logits = STUDENT.apply(
      {'params': variables['params']},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      enable_dropout=False,
  )
  log_q = scipy_log_softmax(np.asarray(logits, np.float64), axis=-1)
  targets, weights = np.asarray(batch['decoder_target_tokens']), np.asarray(
      batch['decoder_loss_weights']
  )
  token_nll = -np.take_along_axis(log_q, targets[..., None], -1)[..., 0]
  want = np.mean(np.sum(token_nll * weights, -1) / np.sum(weights, -1))  # Eq. 2, then batch.
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics['on_policy_fraction'].compute()) == 0.0


def test_supervised_kd_is_forward_kl_on_targets(variables):
  batch = make_batch()
  model = make_model(lmbda=0.0, divergence='forward_kl')
  loss, (metrics, mutables) = model.loss_fn(
      variables['params'], batch, jax.random.PRNGKey(0), teacher_of(variables)
  )
  apply = lambda module, params: module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      enable_dropout=False,
  )
  per_position = divergences.forward_kl(
      apply(TEACHER, variables['teacher']), apply(STUDENT, variables['params'])
  )
  want = divergences.batch_mean(
      *divergences.sequence_mean(per_position, batch['decoder_loss_weights'])
  )
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert mutables is not None and mutables['teacher'] is variables['teacher']
  assert 0.0 <= float(metrics['token_agreement'].compute()) <= 1.0


def test_chunked_divergence_leaves_loss_fn_unchanged(variables):
  """`GKDConfig.divergence_chunk_length` of 4 (of 6 target positions, so the last chunk
  overlaps the one before) gives the same loss, metrics and parameter gradients."""
  batch = make_batch()
  batch['decoder_loss_weights'] = batch['decoder_loss_weights'].at[2].set(0.0)  # A padding row.

  @jax.jit
  def steps(params):
    return [
        jax.value_and_grad(
            make_model(
                lmbda=0.0, divergence='jsd', beta=0.9, divergence_chunk_length=chunk_length
            ).loss_fn,
            has_aux=True,
        )(params, batch, jax.random.PRNGKey(0), teacher_of(variables))
        for chunk_length in (None, 4)
    ]

  ((want, (want_metrics, _)), want_grads), ((loss, (metrics, _)), grads) = steps(
      variables['params']
  )
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert metrics.keys() == want_metrics.keys()
  for name, metric in metrics.items():
    np.testing.assert_allclose(
        metric.compute(), want_metrics[name].compute(), rtol=1e-6, err_msg=name
    )
  jax.tree_util.tree_map(
      lambda grad, want_grad: np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8),
      grads,
      want_grads,
  )


def on_policy_samples(variables, batch, key, temperature=1.0):
  """The student samples gkd_loss draws for step key `key` (its documented rng split)."""
  _, _, sample_rng = jax.random.split(key, 3)
  student = models.bind(STUDENT, variables['params'])
  inputs = batch['encoder_input_tokens']
  return objective.sample_sequences(
      student,
      student.read_prompt(inputs),
      rng=sample_rng,
      batch_size=B,
      length=L,
      max_decode_length=L,
      temperature=temperature,
  )


def test_on_policy_gradient_equals_fixed_data_gradient_on_the_same_samples(variables):
  """No gradient flows through sampling: the on-policy gradient equals the supervised gradient
  on the very sequences the student sampled."""
  batch, key = make_batch(), jax.random.PRNGKey(3)
  samples = on_policy_samples(variables, batch, key)
  assert float(jnp.sum(samples.weights)) > 0
  fixed_batch = dict(
      batch,
      decoder_target_tokens=samples.tokens,
      decoder_input_tokens=objective.shift_right(samples.tokens),
      decoder_loss_weights=samples.weights,
  )
  grad = lambda model, b: jax.grad(lambda p: model.loss_fn(p, b, key, teacher_of(variables))[0])(
      variables['params']
  )
  on_policy = grad(make_model(lmbda=1.0, divergence='reverse_kl'), batch)
  fixed = grad(make_model(lmbda=0.0, divergence='reverse_kl'), fixed_batch)
  for a, b in zip(jax.tree_util.tree_leaves(on_policy), jax.tree_util.tree_leaves(fixed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_sample_weights_stop_at_the_first_eos(variables):
  samples = on_policy_samples(variables, make_batch(), jax.random.PRNGKey(4), temperature=3.0)
  tokens, weights = np.asarray(samples.tokens), np.asarray(samples.weights)
  assert not np.any(tokens[:, :] == 0) or np.all(weights[tokens == 0] == 0)
  for row_tokens, row_weights in zip(tokens, weights):
    eos = np.flatnonzero(row_tokens == 1)
    end = eos[0] + 1 if len(eos) else L
    np.testing.assert_array_equal(row_weights, (np.arange(L) < end).astype(np.float32))


def test_seqkd_trains_on_teacher_samples(variables):
  """SeqKD (teacher samples at temperature 0) = cross-entropy on the teacher's greedy output."""
  batch = make_batch()
  model = make_model(
      lmbda=0.0,
      divergence='cross_entropy',
      fixed_data='teacher_samples',
      teacher_sampling_temperature=0.0,
  )
  loss, _ = model.loss_fn(variables['params'], batch, jax.random.PRNGKey(5), teacher_of(variables))
  teacher = models.bind(TEACHER, variables['teacher'])
  cache, decode_step = teacher.start_sampling(teacher.read_prompt(batch['encoder_input_tokens']), L)
  greedy = decoding.greedy_decode(
      lambda t, c, p: (lambda lg, c: (lg.at[:, 0].set(-1e9), c))(*decode_step(t, c, p)),
      cache,
      batch_size=B,
      max_decode_length=L,
  )
  sft = make_model(teacher=None, lmbda=0.0, divergence='cross_entropy')
  want, _ = sft.loss_fn(
      variables['params'],
      dict(
          batch,
          decoder_target_tokens=greedy.tokens,
          decoder_input_tokens=objective.shift_right(greedy.tokens),
          decoder_loss_weights=greedy.weights,
      ),
      jax.random.PRNGKey(5),
  )
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


def test_lambda_schedule_is_linear_and_clipped():
  schedule = objective.LambdaSchedule(start=1.0, end=0.0, transition_steps=10)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 20)], [1.0, 0.5, 0.0, 0.0])
  assert float(objective.LambdaSchedule(start=0.3)(None)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match='training step'):
    schedule(None)


def test_leave_one_out_baseline():
  config = objective.GKDConfig(
      alpha=0.5,
      reward=rewards.ExactMatchReward(),
      baseline='per_input_mean',
      num_samples_per_input=3,
  )
  rewards_ = jnp.asarray([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(
      np.asarray(objective.reward_baseline(config, rewards_)), [0.0, 0.5, 0.5, 0.5, 0.5, 1.0]
  )


def test_rl_term_raises_the_probability_of_a_rewarded_sequence(variables):
  """Eq. 5 with alpha = 0 (pure REINFORCE, exact-match reward on a one-token target):
  a few steps raise the student's probability of the rewarded token."""
  rewarded = 7
  targets = np.zeros((B, L), np.int32)
  targets[:, 0] = rewarded
  batch = dict(
      make_batch(),
      decoder_target_tokens=jnp.asarray(targets),
      decoder_input_tokens=jnp.zeros((B, L), jnp.int32),
      decoder_loss_weights=jnp.asarray(targets > 0, jnp.float32),
  )
  model = make_model(
      alpha=0.0,
      reward=rewards.ExactMatchReward(),
      baseline='per_input_mean',
      num_samples_per_input=8,
      max_decode_length=1,
      divergence='jsd',
      beta=0.9,
  )
  first_token_prob = lambda params: jnp.mean(
      jax.nn.softmax(
          STUDENT.apply(
              {'params': params},
              batch['encoder_input_tokens'],
              batch['decoder_input_tokens'],
              batch['decoder_target_tokens'],
              enable_dropout=False,
          )[:, 0]
      )[:, rewarded]
  )
  optimizer = optax.adam(0.05)

  @jax.jit
  def step(params, opt_state, key):
    grads, (metrics, _) = jax.grad(model.loss_fn, has_aux=True)(
        params, batch, key, teacher_of(variables)
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics['reward'].compute()

  params = variables['params']
  opt_state = optimizer.init(params)
  before = float(first_token_prob(params))
  for key in jax.random.split(jax.random.PRNGKey(6), 30):
    params, opt_state, _ = step(params, opt_state, key)
  after = float(first_token_prob(params))
  assert before < 0.2 and after > before + 0.3


@pytest.mark.parametrize(
    'settings,match',
    [
        (dict(lmbda=1.5), 'lmbda must be in'),
        (dict(lmbda=-0.1), 'lmbda must be in'),
        (dict(beta=2.0), 'beta must be in'),
        (dict(alpha=1.1), 'alpha must be in'),
        (dict(divergence='kl'), 'divergence must be one of'),
        (dict(divergence='cross_entropy', lmbda=0.5), 'needs lmbda = 0'),
        (dict(alpha=0.5), 'needs a reward'),
        (dict(alpha=0.5, reward=rewards.ExactMatchReward(), lmbda=0.5), 'needs lmbda = 1'),
        (dict(fixed_data='teacher'), 'fixed_data must be one of'),
        (dict(baseline='per_input_mean'), 'num_samples_per_input >= 2'),
        (dict(teacher_temperature=0.0), 'teacher_temperature must be > 0'),
    ],
)
def test_bad_settings_fail_at_construction(settings, match):
  with pytest.raises(ValueError, match=match):
    objective.GKDConfig(**settings)


def test_vocabulary_mismatch_and_missing_teacher_fail_at_construction():
  other = network.Transformer(
      network.T5Config(
          vocab_size=VOCAB + 1,
          emb_dim=8,
          num_heads=2,
          num_encoder_layers=1,
          num_decoder_layers=1,
          head_dim=4,
          mlp_dim=8,
      )
  )
  with pytest.raises(ValueError, match='vocabularies differ'):
    models.GKDModel(STUDENT, other, VOCABULARY, VOCABULARY)
  with pytest.raises(ValueError, match='needs a teacher'):
    models.GKDModel(STUDENT, None, VOCABULARY, VOCABULARY)
  with pytest.raises(ValueError, match='decode_method'):
    models.GKDModel(STUDENT, TEACHER, VOCABULARY, VOCABULARY, decode_method='nucleus')
