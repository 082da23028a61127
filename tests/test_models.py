"""GKDModel's inference methods and the rewards, against independent references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy.special import log_softmax as scipy_log_softmax
import seqio
import tiny

from gkd_t5x import metrics
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import rewards

VOCAB = 20
B, I, L = 3, 5, 6
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
STUDENT = tiny.transformer(VOCAB, 8, 1)


def make_model(**kwargs):
  return models.GKDModel(
      STUDENT,
      None,
      VOCABULARY,
      VOCABULARY,
      gkd=objective.GKDConfig(divergence='cross_entropy', lmbda=0.0),
      **kwargs,
  )


@pytest.fixture(scope='module')
def setup():
  rng = np.random.RandomState(0)
  targets = rng.randint(2, VOCAB, (B, L))
  targets[0, 3:] = [1, 0, 0]
  batch = tiny.encdec_batch(rng.randint(2, VOCAB, (B, I)), targets)
  shapes = {name: value.shape for name, value in batch.items()}
  params = make_model().get_initial_variables(jax.random.PRNGKey(0), shapes)['params']
  return params, batch


def teacher_forced_log_probs(params, batch, targets):
  logits = STUDENT.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
      targets,
      enable_dropout=False,
  )
  return np.take_along_axis(
      scipy_log_softmax(np.asarray(logits, np.float64), -1), np.asarray(targets)[..., None], -1
  )[..., 0]


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
      params, batch
  )
  assert np.all(np.asarray(aux['scores']) >= np.asarray(greedy) - 1e-4)
  all_tokens, all_aux = make_model(decode_method='beam', beam_size=4).predict_batch_with_aux(
      params, batch, return_all_decodes=True, num_decodes=4
  )
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
  got = jax.jit(rewards.ExactMatchReward())(None, samples, sample_weights, targets, target_weights)
  np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 0.0])


def test_rouge_reward_runs_on_the_host_inside_jit():
  vocabulary = seqio.ByteVocabulary()
  encode = lambda s: list(vocabulary.encode(s)) + [1]
  predictions = ['the cat sat on the mat', 'a dog']
  references = ['the cat sat on a mat', 'a dog']
  width = max(len(encode(s)) for s in predictions + references)
  to_array = lambda strings: jnp.asarray(
      [encode(s) + [0] * (width - len(encode(s))) for s in strings]
  )
  samples, targets = to_array(predictions), to_array(references)
  reward = metrics.rouge_reward(vocabulary, 'rouge2')
  got = jax.jit(
      lambda s, t: reward(t, s, (s > 0).astype(jnp.float32), t, (t > 0).astype(jnp.float32))
  )(samples, targets)
  scorer = rouge_scorer.RougeScorer(['rouge2'], use_stemmer=True)
  want = [scorer.score(r, p)['rouge2'].fmeasure for p, r in zip(predictions, references)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  assert want[1] == 1.0 and 0 < want[0] < 1


BYTES = seqio.ByteVocabulary()
CLASSIFIER = tiny.transformer(384, 8, 1)


def test_pack_rows_matches_a_python_reference():
  rng = np.random.RandomState(1)
  segments = [rng.randint(0, 4, (5, 3)), rng.randint(0, 4, (5, 6)), rng.randint(0, 4, (5, 2))]
  for length in (4, 11, 20):
    got = np.asarray(rewards.pack_rows([jnp.asarray(s) for s in segments], length))
    for row in range(5):
      tokens = [t for s in segments for t in s[row] if t > 0][:length]
      np.testing.assert_array_equal(got[row], tokens + [0] * (length - len(tokens)))


def test_entailment_reward_cuts_the_premise_so_the_hypothesis_fits():
  reward = rewards.EntailmentReward(
      CLASSIFIER, BYTES, target='1', premise_prefix='p:', hypothesis_prefix=' h:', input_length=12
  )
  encode = lambda s: list(BYTES.encode(s))
  inputs = jnp.asarray([encode('abcdefgh') + [0, 0], encode('ab') + [0] * 8])
  samples = jnp.asarray([encode('xyz') + [1, 0], encode('xy') + [1, 9, 9]])
  weights = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], jnp.float32)
  got = np.asarray(reward.classifier_inputs(inputs, samples, weights))
  # Row 0: 12 - 2 (p:) - 3 ( h:) - 4 (xyz + EOS) leaves 3 premise tokens.
  want0 = encode('p:abc h:xyz') + [1]
  want1 = encode('p:ab h:xy') + [1]
  np.testing.assert_array_equal(got[0], want0 + [0] * (12 - len(want0)))
  np.testing.assert_array_equal(got[1], want1 + [0] * (12 - len(want1)))


def test_entailment_reward_is_the_classifiers_probability_of_the_target():
  reward = rewards.EntailmentReward(CLASSIFIER, BYTES, target='yes', input_length=40)
  shapes = reward.input_shapes()
  params = CLASSIFIER.init(
      jax.random.PRNGKey(3),
      jnp.ones(shapes['encoder_input_tokens'], jnp.int32),
      jnp.ones(shapes['decoder_target_tokens'], jnp.int32),
      jnp.ones(shapes['decoder_target_tokens'], jnp.int32),
      enable_dropout=False,
  )['params']
  encode = lambda s: list(BYTES.encode(s))
  inputs = jnp.asarray([encode('the cat sat'), encode('a dog ran!!')])
  samples = jnp.asarray([encode('a cat') + [1], encode('dogs') + [1, 0]])
  weights = (samples > 0).astype(jnp.float32)
  got = np.asarray(jax.jit(reward.bind(params))(inputs, samples, weights, samples, weights))
  target = np.asarray([encode('yes') + [1]] * 2)
  classifier_inputs = np.asarray(reward.classifier_inputs(inputs, samples, weights))
  logits = CLASSIFIER.apply(
      {'params': params},
      classifier_inputs,
      np.pad(target, ((0, 0), (1, 0)))[:, :-1],
      target,
      enable_dropout=False,
  )
  token = np.take_along_axis(
      scipy_log_softmax(np.asarray(logits, np.float64), -1), target[..., None], -1
  )[..., 0]
  np.testing.assert_allclose(got, np.exp(token.sum(-1)), rtol=1e-5)
  assert np.all((got > 0) & (got < 1))


def test_a_model_reward_gets_its_params_from_the_reward_model_collection():
  reward = rewards.EntailmentReward(CLASSIFIER, BYTES, input_length=24)
  student = network.Transformer(dataclasses.replace(CLASSIFIER.config, emb_dim=4, head_dim=2))
  model = models.GKDModel(
      student,
      CLASSIFIER,
      BYTES,
      BYTES,
      gkd=objective.GKDConfig(divergence='jsd', beta=0.9, lmbda=1.0, alpha=0.5, reward=reward),
  )
  batch = {
      'encoder_input_tokens': jnp.asarray([list(BYTES.encode('12+3'))] * 2),
      'decoder_target_tokens': jnp.asarray([list(BYTES.encode('15')) + [1]] * 2),
  }
  batch['decoder_input_tokens'] = jnp.pad(batch['decoder_target_tokens'], ((0, 0), (1, 0)))[:, :-1]
  batch['decoder_loss_weights'] = (batch['decoder_target_tokens'] > 0).astype(jnp.float32)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {name: value.shape for name, value in batch.items()}
  )
  assert variables[models.REWARD_MODEL_COLLECTION]['token_embedder']['embedding'].shape == (384, 8)
  mutables = {name: variables[name] for name in models.FROZEN_COLLECTIONS}
  loss, (metrics, returned) = jax.jit(model.loss_fn)(
      variables['params'], batch, jax.random.PRNGKey(1), mutables
  )
  assert np.isfinite(float(loss)) and set(returned) == set(models.FROZEN_COLLECTIONS)
  assert 0.0 < float(metrics['reward'].compute()) < 1.0
  with pytest.raises(ValueError, match="flax_mutables\\['reward_model'\\]"):
    model.loss_fn(
        variables['params'],
        batch,
        jax.random.PRNGKey(1),
        {models.TEACHER_COLLECTION: variables[models.TEACHER_COLLECTION]},
    )


def test_step_averages_merge_as_clus_do():
  """`averages.Average` (the core's, no clu) merges and computes as `clu.metrics.Average`."""
  from clu import metrics as clu_metrics

  from gkd_t5x import averages

  values, counts = [2.0, 5.0, 1.0], [3, 1, 0]
  ours = [averages.weighted(averages.Average, v, c) for v, c in zip(values, counts)]
  theirs = [
      clu_metrics.Average.from_model_output(jnp.full((c,), v), mask=jnp.ones((c,)))
      for v, c in zip(values, counts)
  ]
  merged_ours = ours[0].merge(ours[1]).merge(ours[2])
  merged_theirs = theirs[0].merge(theirs[1]).merge(theirs[2])
  np.testing.assert_allclose(merged_ours.compute(), merged_theirs.compute())
  assert merged_ours.compute() == pytest.approx((2.0 * 3 + 5.0) / 4)
  assert averages.compute_merged([{'x': ours[2]}]) == {}  # count 0: no value


def distillation_model(divergence='forward_kl', lmbda=1.0):
  return models.GKDModel(
      STUDENT,
      STUDENT,
      VOCABULARY,
      VOCABULARY,
      gkd=objective.GKDConfig(divergence=divergence, lmbda=lmbda),
  )


@pytest.mark.parametrize('divergence', ['forward_kl', 'reverse_kl', 'jsd'])
def test_on_policy_divergence_is_what_an_on_policy_step_minimizes(setup, divergence):
  """With the step's key, the evaluation metric equals the lambda = 1 training loss; a
  lambda = 0 model reports the same value (it evaluates the student's samples, not the data),
  and a student equal to its teacher is at 0."""
  params, batch = setup
  teacher = jax.tree_util.tree_map(lambda x: x * 1.5, params)
  rng = jax.random.PRNGKey(3)
  on_policy = distillation_model(divergence).on_policy_eval_fn(
      params, batch, rng, {'teacher': teacher}
  )
  loss, _ = distillation_model(divergence).loss_fn(params, batch, rng, {'teacher': teacher})[:2]
  value = float(on_policy['on_policy_divergence'].compute())
  assert value > 0 and value == pytest.approx(float(loss), rel=1e-6)
  supervised = distillation_model(divergence, lmbda=0.0).on_policy_eval_fn(
      params, batch, rng, {'teacher': teacher}
  )
  assert float(supervised['on_policy_divergence'].compute()) == pytest.approx(value, rel=1e-6)
  itself = distillation_model(divergence).on_policy_eval_fn(params, batch, rng, {'teacher': params})
  assert float(itself['on_policy_divergence'].compute()) == pytest.approx(0.0, abs=1e-6)
  assert 0 < float(on_policy['on_policy_sample_length'].compute()) <= L
  # A student equal to its teacher is exactly as sure of the next token as the teacher.
  assert float(itself['on_policy_teacher_entropy'].compute()) == pytest.approx(
      float(itself['on_policy_student_entropy'].compute()), rel=1e-6
  )
  assert float(on_policy['on_policy_teacher_entropy'].compute()) > 0


def test_on_policy_divergence_needs_a_teacher_divergence(setup):
  params, batch = setup
  assert not make_model().has_on_policy_divergence
  with pytest.raises(ValueError, match='cross_entropy'):
    make_model().on_policy_eval_fn(params, batch, jax.random.PRNGKey(0))
