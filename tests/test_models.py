"""GKDModel's inference methods and the rewards, against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy.special import log_softmax as scipy_log_softmax
import seqio

from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import rewards

VOCAB = 20
B, I, L = 3, 5, 6
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
STUDENT = network.Transformer(network.T5Config(
    vocab_size=VOCAB, emb_dim=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
    head_dim=4, mlp_dim=16, dropout_rate=0.0))


def make_model(**kwargs):
  return models.GKDModel(STUDENT, None, VOCABULARY, VOCABULARY,
                         gkd=objective.GKDConfig(divergence='cross_entropy', lmbda=0.0),
                         **kwargs)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.RandomState(0)
  targets = rng.randint(2, VOCAB, (B, L))
  targets[0, 3:] = [1, 0, 0]
  batch = {'encoder_input_tokens': jnp.asarray(rng.randint(2, VOCAB, (B, I))),
           'decoder_target_tokens': jnp.asarray(targets),
           'decoder_input_tokens': jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
           'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32)}
  shapes = {name: value.shape for name, value in batch.items()}
  params = make_model().get_initial_variables(jax.random.PRNGKey(0), shapes)['params']
  return params, batch


def teacher_forced_log_probs(params, batch, targets):
  logits = STUDENT.apply({'params': params}, batch['encoder_input_tokens'],
                         np.pad(targets, ((0, 0), (1, 0)))[:, :-1], targets,
                         enable_dropout=False)
  return np.take_along_axis(scipy_log_softmax(np.asarray(logits, np.float64), -1),
                            np.asarray(targets)[..., None], -1)[..., 0]


def test_score_batch_is_the_sequence_log_likelihood(setup):
  params, batch = setup
  got = make_model().score_batch(params, batch)
  token = teacher_forced_log_probs(params, batch, batch['decoder_target_tokens'])
  want = np.sum(token * np.asarray(batch['decoder_loss_weights']), -1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_greedy_prediction_scores_its_own_tokens(setup):
  params, batch = setup
  tokens, aux = jax.jit(make_model().predict_batch_with_aux)(params, batch)
  assert tokens.shape == (B, L)
  token = teacher_forced_log_probs(params, batch, jnp.where(tokens > 0, tokens, 1))
  weights = np.cumsum(np.asarray(tokens) == 1, -1) - (np.asarray(tokens) == 1) == 0
  np.testing.assert_allclose(np.asarray(aux['scores']), np.sum(token * weights, -1), rtol=1e-4)


def test_beam_search_is_at_least_as_likely_as_greedy(setup):
  params, batch = setup
  greedy = make_model().predict_batch_with_aux(params, batch)[1]['scores']
  _, aux = make_model(decode_method='beam', beam_size=4, beam_alpha=0.0).predict_batch_with_aux(
      params, batch)
  assert np.all(np.asarray(aux['scores']) >= np.asarray(greedy) - 1e-4)
  all_tokens, all_aux = make_model(decode_method='beam', beam_size=4).predict_batch_with_aux(
      params, batch, return_all_decodes=True, num_decodes=4)
  assert all_tokens.shape == (B, 4, L) and all_aux['scores'].shape == (B, 4)


def test_sampling_needs_an_explicit_rng_and_depends_on_it(setup):
  params, batch = setup
  model = make_model(decode_method='sample', decode_temperature=5.0)
  with pytest.raises(ValueError, match='explicit rng'):
    model.predict_batch_with_aux(params, batch)
  first = model.predict_batch(params, batch, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(first, model.predict_batch(params, batch, jax.random.PRNGKey(1)))
  assert not np.array_equal(first, model.predict_batch(params, batch, jax.random.PRNGKey(2)))


def test_eval_fn_is_deterministic_and_uses_the_targets(setup):
  params, batch = setup
  model = make_model()
  loss, metrics = model.eval_fn(params, batch)
  train_loss, _ = model.loss_fn(params, batch, jax.random.PRNGKey(9))
  assert float(loss) == pytest.approx(float(train_loss), rel=1e-6)
  assert float(metrics['on_policy_fraction'].compute()) == 0.0


def test_exact_match_reward_compares_up_to_eos():
  samples = jnp.asarray([[5, 6, 1, 0], [5, 6, 1, 0], [5, 7, 1, 0]])
  sample_weights = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
  targets = jnp.asarray([[5, 6, 1], [5, 6, 6], [5, 6, 1]])
  target_weights = jnp.asarray([[1, 1, 1], [1, 1, 1], [1, 1, 1]], jnp.float32)
  got = jax.jit(rewards.ExactMatchReward())(None, samples, sample_weights, targets,
                                            target_weights)
  np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 0.0])


def test_rouge_reward_runs_on_the_host_inside_jit():
  vocabulary = seqio.ByteVocabulary()
  encode = lambda s: list(vocabulary.encode(s)) + [1]
  predictions = ['the cat sat on the mat', 'a dog']
  references = ['the cat sat on a mat', 'a dog']
  width = max(len(encode(s)) for s in predictions + references)
  to_array = lambda strings: jnp.asarray([encode(s) + [0] * (width - len(encode(s)))
                                          for s in strings])
  samples, targets = to_array(predictions), to_array(references)
  reward = rewards.rouge_reward(vocabulary, 'rouge2')
  got = jax.jit(lambda s, t: reward(t, s, (s > 0).astype(jnp.float32), t,
                                    (t > 0).astype(jnp.float32)))(samples, targets)
  scorer = rouge_scorer.RougeScorer(['rouge2'], use_stemmer=True)
  want = [scorer.score(r, p)['rouge2'].fmeasure for p, r in zip(predictions, references)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  assert want[1] == 1.0 and 0 < want[0] < 1
