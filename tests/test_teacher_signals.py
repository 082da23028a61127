"""The teacher's signal in its other forms: top-k log-probs with a tail bucket
(`GKDConfig.teacher_top_k`) against a float64 reference, and the sampled-token reverse-KL
estimator (divergence 'sampled_reverse_kl'), whose expected gradient is checked by exact
enumeration against the token-level (discount 0) and sequence-level (discount 1) reverse KL."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax as np_log_softmax
from scipy.special import logsumexp as np_logsumexp
import test_divergences as reference

from gkd_t5x import divergences
from gkd_t5x import objective

CASES = reference.CASES
B, L, V = 3, 5, 12


def np_top_k_reference(name, beta, teacher, student, k):
  """The divergence between the k + 1 buckets in float64 numpy: the teacher's k likeliest
  tokens (sorted with numpy, not lax.top_k) and the tail, its mass a logsumexp of the rest."""
  log_p = np_log_softmax(teacher.astype(np.float64), -1)
  log_q = np_log_softmax(student.astype(np.float64), -1)
  order = np.argsort(-log_p, axis=-1, kind='stable')
  top, rest = order[..., :k], order[..., k:]

  def buckets(log_probs):
    tail = np_logsumexp(np.take_along_axis(log_probs, rest, -1), -1) if k < V else -1e30
    tail = np.broadcast_to(tail, log_probs.shape[:-1])[..., None]
    return np.concatenate([np.take_along_axis(log_probs, top, -1), tail], -1)

  return reference.np_reference(name, buckets(log_p), buckets(log_q), beta)


@pytest.mark.parametrize('name,beta', CASES)
def test_top_k_matches_float64_reference_and_grows_to_the_exact_divergence(name, beta):
  """Every divergence over k + 1 buckets: the float64 formula at each k, non-decreasing in k
  (the buckets refine: data processing), and at k = V the exact divergence to 1e-6."""
  teacher, student = reference.random_logits(1, (B, L, V), 3.0)
  fn = divergences.get_divergence(name, beta)
  exact = np.asarray(fn(teacher, student))
  previous = np.zeros_like(exact)
  for k in (1, 2, 4, 8, V - 1, V):
    got = np.asarray(
        fn(*divergences.top_k_buckets(divergences.teacher_top_k(teacher, k=k), student))
    )
    np.testing.assert_allclose(
        got, np_top_k_reference(name, beta, teacher, student, k), rtol=2e-5, atol=1e-6
    )
    assert np.all(got >= previous - 1e-6), k
    previous = got
  np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-7)


def test_tail_bucket_is_exact_when_the_top_k_mass_is_almost_one():
  """A teacher with 1 - 1e-12 of its mass on one token: its tail log-prob is log(1e-12) (a
  logsumexp of the rest, no 1 - mass cancellation), and logits of magnitude 1e4 stay finite."""
  logits = np.zeros((1, V), np.float32)
  logits[0, 3] = np.log(1e-12**-1 * (V - 1))  # P(3) = 1 / (1 + 1e-12)
  top = divergences.teacher_top_k(jnp.asarray(logits), k=1)
  np.testing.assert_allclose(top.tail_log_prob, np.log(1e-12), rtol=1e-5)
  huge = reference.random_logits(2, (B, L, V), 1e4)
  for name, beta in CASES:
    fn = divergences.get_divergence(name, beta)
    value, grad = jax.value_and_grad(
        lambda s, fn=fn: jnp.sum(
            fn(*divergences.top_k_buckets(divergences.teacher_top_k(huge[0], k=3), s))
        )
    )(huge[1])
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name


def _sequences(seed=0):
  rng = np.random.RandomState(seed)
  weights = np.ones((B, L), np.float32)
  weights[1, 3:] = 0.0
  return objective.Sequences(
      jnp.asarray(rng.randint(1, V, (B, L)), jnp.int32), jnp.asarray(weights)
  )


@pytest.mark.parametrize('chunk_length', [None, 2])
def test_top_k_divergence_term_through_the_objective(chunk_length):
  """`divergence_term` with teacher_top_k (whole or chunked) equals the per-position bucket
  divergence averaged as Eq. 2, and with k = V the exact term (value and gradient)."""
  sequences = _sequences()
  teacher, student = (jnp.asarray(x) for x in reference.random_logits(3, (B, L, V), 3.0))

  def term(settings, student):
    config = objective.GKDConfig(
        divergence='jsd', beta=0.9, divergence_chunk_length=chunk_length, **settings
    )
    signal = objective.teacher_signal(config, {}, sequences.tokens, lambda: teacher)
    return objective.divergence_term(config, sequences, student, signal)[0]

  exact, exact_grad = jax.value_and_grad(lambda s: term({}, s))(student)
  full, full_grad = jax.value_and_grad(lambda s: term(dict(teacher_top_k=V), s))(student)
  np.testing.assert_allclose(full, exact, rtol=1e-6)
  np.testing.assert_allclose(full_grad, exact_grad, rtol=1e-5, atol=1e-7)
  per_position = np_top_k_reference('jsd', 0.9, np.asarray(teacher), np.asarray(student), 4)
  weights = np.asarray(sequences.weights)
  want = np.mean(np.sum(per_position * weights, -1) / np.sum(weights, -1))
  np.testing.assert_allclose(term(dict(teacher_top_k=4), student), want, rtol=1e-5)


def _sampled_config(discount, chunk_length=None):
  return objective.GKDConfig(
      divergence='sampled_reverse_kl', discount=discount, divergence_chunk_length=chunk_length
  )


def _sampled_term(config, tokens, weights, student_logits, teacher_logits):
  sequences = objective.Sequences(tokens, weights)
  signal = objective.teacher_signal(config, {}, tokens, lambda: teacher_logits)
  return objective.divergence_term(config, sequences, student_logits, signal)[0]


def np_sampling_log_probs(logits):
  """float64 log-probs of the distribution on-policy samples come from: without the pad id 0."""
  logits = np.array(logits, np.float64)
  logits[..., 0] = -np.inf
  return np_log_softmax(logits, -1)


@pytest.mark.parametrize('chunk_length', [None, 2])
def test_sampled_estimator_at_discount_0_is_unbiased_for_the_token_level_reverse_kl(chunk_length):
  """Logits that do not depend on the sampled tokens (prefixes fixed): the expectation over
  y_t ~ Q_t at every position (Q_t without the pad id, as sampled), by enumerating the
  vocabulary, of the estimator's gradient equals the gradient of the token-level reverse KL
  KL(Q_t || P_t) averaged as Eq. 2 (float64 closed form)."""
  teacher, student = reference.random_logits(4, (B, L, V), 2.0)
  weights = np.asarray(_sequences().weights)
  config = _sampled_config(0.0, chunk_length)
  grad = jax.jit(
      jax.grad(lambda s, tokens: _sampled_term(config, tokens, jnp.asarray(weights), s, teacher))
  )
  log_q = np_sampling_log_probs(student)
  log_p = np_log_softmax(teacher.astype(np.float64), -1)
  q = np.exp(log_q)
  expected = np.zeros((B, L, V))
  for v in range(1, V):  # Every position samples v; position t's gradient depends on y_t only.
    expected += q[..., v : v + 1] * np.asarray(grad(student, jnp.full((B, L), v, jnp.int32)))
  # d/dz KL(Q || P) = Q * (log Q - log P - KL), each position weighted w_t / (L_y B).
  log_q = np.where(q > 0, log_q, 0.0)  # the pad id: Q = 0, no term
  kl = np.sum(q * (log_q - log_p), -1, keepdims=True)
  scale = (weights / np.sum(weights, -1, keepdims=True) / B)[..., None]
  want = scale * q * (log_q - log_p - kl)
  np.testing.assert_allclose(expected, want, rtol=1e-4, atol=1e-7)


def test_sampled_estimator_at_discount_1_is_unbiased_for_the_sequence_level_reverse_kl():
  """A tiny autoregressive model (tokens 1..3 besides the pad id 0, length 3: logits a table
  indexed by the prefix) whose 27 sequences are enumerated: E_{y ~ Q}[grad of the estimator] =
  grad KL(Q(y) || P(y)) / 3 (Eq. 2's 1 / L_y), the reference differentiated in float64 from the
  sequence probabilities."""
  vocab, length = 4, 3
  num_prefixes = 1 + 3 + 3**2
  rng = np.random.RandomState(5)
  student_table, teacher_table = (rng.randn(num_prefixes, vocab) * 1.5 for _ in range(2))
  sequences = 1 + np.array(list(itertools.product(range(3), repeat=length)))  # [27, 3]
  # Prefix index of each position: () -> 0, (a) -> a, (a, b) -> 1 + 3 + 3 (a - 1) + (b - 1).
  prefix = np.stack(
      [
          np.zeros(len(sequences), int),
          sequences[:, 0],
          1 + 3 * sequences[:, 0] + sequences[:, 1] - 1,
      ],
      axis=1,
  )

  def sequence_log_probs(table, sampled):  # [27] log Q(y) (sampled: without the pad id)
    logits = table[prefix]
    logits = jnp.where(jnp.arange(vocab) == 0, -jnp.inf, logits) if sampled else logits
    log_probs = jax.nn.log_softmax(logits, -1)
    tokens = jnp.asarray(sequences)[..., None]
    return jnp.sum(jnp.take_along_axis(log_probs, tokens, -1)[..., 0], -1)

  with jax.enable_x64(True):
    s64, t64 = jnp.asarray(student_table), jnp.asarray(teacher_table)

    def seq_kl(s):
      log_q = sequence_log_probs(s, True)
      return jnp.sum(jnp.exp(log_q) * (log_q - sequence_log_probs(t64, False)))

    want = np.asarray(jax.grad(seq_kl)(s64)) / length
    q = np.exp(np.asarray(sequence_log_probs(s64, True)))

  config = _sampled_config(1.0)
  tokens = jnp.asarray(sequences, jnp.int32)[:, None, :]  # 27 batches of one sequence
  ones = jnp.ones((1, length), jnp.float32)
  teacher32 = jnp.asarray(teacher_table, jnp.float32)

  def one_sequence(table, tokens_1xL, prefix_L):
    return _sampled_term(config, tokens_1xL, ones, table[prefix_L][None], teacher32[prefix_L][None])

  grads = jax.vmap(jax.grad(one_sequence), in_axes=(None, 0, 0))(
      jnp.asarray(student_table, jnp.float32), tokens, jnp.asarray(prefix)
  )
  np.testing.assert_allclose(
      np.einsum('n,npv->pv', q, np.asarray(grads)), want, rtol=1e-4, atol=1e-6
  )


def test_sampled_estimator_value_is_the_per_token_reverse_kl_estimate():
  """Its value: mean_t (log Q(y_t) - log P(y_t)) per sequence (Q as sampled, without the pad
  id), averaged over the batch."""
  sequences = _sequences()
  teacher, student = (jnp.asarray(x) for x in reference.random_logits(6, (B, L, V), 2.0))
  value = _sampled_term(_sampled_config(0.5), sequences.tokens, sequences.weights, student, teacher)
  take = lambda log_probs: np.take_along_axis(
      log_probs, np.asarray(sequences.tokens)[..., None], -1
  )[..., 0]
  estimate = take(np_sampling_log_probs(student)) - take(
      np_log_softmax(np.asarray(teacher, np.float64), -1)
  )
  weights = np.asarray(sequences.weights)
  want = np.mean(np.sum(estimate * weights, -1) / np.sum(weights, -1))
  np.testing.assert_allclose(value, want, rtol=1e-5)


@pytest.mark.parametrize(
    'settings,message',
    [
        (dict(divergence='sampled_reverse_kl', lmbda=0.5), 'needs lmbda = 1'),
        (dict(divergence='sampled_reverse_kl', sampling_temperature=0.7), 'sampling_temperature'),
        (dict(divergence='sampled_reverse_kl', sampling_top_k=5), 'sampling_top_k'),
        (dict(divergence='sampled_reverse_kl', discount=1.5), 'discount must be in'),
        (dict(divergence='sampled_reverse_kl', teacher_top_k=8), 'teacher_top_k works with'),
        (dict(divergence='cross_entropy', lmbda=0.0, teacher_top_k=8), 'teacher_top_k works with'),
        (dict(teacher_top_k=0), 'teacher_top_k must be a positive int'),
        (dict(offline_teacher=True, lmbda=0.0), 'offline_teacher'),
        (dict(offline_teacher=True, teacher_top_k=8, lmbda=1.0), 'offline_teacher'),
    ],
)
def test_bad_settings_are_refused(settings, message):
  with pytest.raises(ValueError, match=message):
    objective.GKDConfig(**settings)


def test_top_k_larger_than_the_vocabulary_is_refused():
  with pytest.raises(ValueError, match=r'teacher_top_k must be in \[1, 12\]'):
    divergences.teacher_top_k(jnp.zeros((2, V)), k=V + 1)
