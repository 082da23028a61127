"""Divergences against a float64 numpy reference, finite differences and their limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from gkd_t5x import divergences


def np_kl(log_p, log_q):
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def np_reference(name, teacher, student, beta=None, t_temp=1.0, s_temp=1.0):
  """The divergences in float64 numpy, written from their definitions (paper Eq. 1)."""
  log_p = np_log_softmax(teacher.astype(np.float64) / t_temp, axis=-1)
  log_q = np_log_softmax(student.astype(np.float64) / s_temp, axis=-1)
  if name == 'forward_kl':
    return np_kl(log_p, log_q)
  if name == 'reverse_kl':
    return np_kl(log_q, log_p)
  if name == 'total_variation':
    return 0.5 * np.sum(np.abs(np.exp(log_p) - np.exp(log_q)), axis=-1)
  m = beta * np.exp(log_p) + (1 - beta) * np.exp(log_q)
  with np.errstate(divide='ignore'):
    log_m = np.log(m)
  # Where m underflows to 0 in float64 both p and q are ~0 there too: those terms vanish.
  log_m = np.where(m > 0, log_m, 0.0)
  p, q = np.exp(log_p), np.exp(log_q)
  return beta * np.sum(np.where(p > 0, p * (log_p - log_m), 0.0), -1) + (1 - beta) * np.sum(
      np.where(q > 0, q * (log_q - log_m), 0.0), -1
  )


CASES = [
    ('forward_kl', None),
    ('reverse_kl', None),
    ('total_variation', None),
    ('jsd', 0.1),
    ('jsd', 0.5),
    ('jsd', 0.9),
]


def random_logits(seed, shape, scale):
  rng = np.random.RandomState(seed)
  return (rng.randn(*shape) * scale).astype(np.float32), (rng.randn(*shape) * scale).astype(
      np.float32
  )


@pytest.mark.parametrize('name,beta', CASES)
@pytest.mark.parametrize('scale', [1.0, 5.0])
def test_matches_float64_reference_on_random_logits(name, beta, scale):
  teacher, student = random_logits(0, (4, 7, 50), scale)
  fn = divergences.get_divergence(name, beta)
  got = np.asarray(fn(jnp.asarray(teacher), jnp.asarray(student)))
  want = np_reference(name, teacher, student, beta)
  assert got.shape == (4, 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name,beta', CASES)
def test_matches_reference_with_temperatures(name, beta):
  teacher, student = random_logits(1, (3, 40), 2.0)
  fn = divergences.get_divergence(name, beta)
  got = fn(
      jnp.asarray(teacher), jnp.asarray(student), teacher_temperature=0.1, student_temperature=2.0
  )
  want = np_reference(name, teacher, student, beta, t_temp=0.1, s_temp=2.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name,beta', CASES)
def test_extreme_logits_and_large_vocab_stay_finite_and_exact(name, beta):
  """Logits of magnitude 1e4 over a 32k vocabulary: finite and equal to the reference."""
  rng = np.random.RandomState(2)
  vocab = 32128
  teacher = (rng.randn(2, vocab) * 1e4).astype(np.float32)
  student = (rng.randn(2, vocab) * 1e4).astype(np.float32)
  teacher[0, 7] = 1e4  # A certain teacher token against a student that disagrees strongly.
  student[0, 7] = -1e4
  fn = divergences.get_divergence(name, beta)
  got = np.asarray(fn(jnp.asarray(teacher), jnp.asarray(student)))
  assert np.all(np.isfinite(got))
  want = np_reference(name, teacher, student, beta)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda s: fn(jnp.asarray(teacher), s).sum())(jnp.asarray(student))
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize('name,beta', CASES)
def test_zero_for_identical_distributions(name, beta):
  logits = jnp.asarray(random_logits(3, (5, 30), 3.0)[0])
  fn = divergences.get_divergence(name, beta)
  np.testing.assert_allclose(np.asarray(fn(logits, logits)), 0.0, atol=1e-6)


@pytest.mark.parametrize('name,beta', CASES)
def test_gradient_matches_finite_differences(name, beta):
  """d/d(student logits) of the summed divergence against central differences in float64."""
  teacher, student = random_logits(4, (2, 6), 1.5)
  fn = divergences.get_divergence(name, beta)
  with jax.enable_x64(True):
    t64, s64 = jnp.asarray(teacher, jnp.float64), jnp.asarray(student, jnp.float64)
    loss = lambda s: jnp.sum(fn(t64, s))
    grad = np.asarray(jax.grad(loss)(s64))
    eps = 1e-6
    numeric = np.zeros_like(grad)
    for index in np.ndindex(*student.shape):
      delta = np.zeros(student.shape)
      delta[index] = eps
      numeric[index] = (loss(s64 + delta) - loss(s64 - delta)) / (2 * eps)
  # TVD has kinks where p = q; random logits keep every coordinate away from them.
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_jsd_limits_approach_forward_and_reverse_kl():
  """JSD(beta) / beta -> KL(P || Q) as beta -> 0; JSD(beta) / (1 - beta) -> KL(Q || P) as
  beta -> 1 (paper Section 3.1, after Huszar 2015)."""
  teacher, student = random_logits(5, (3, 20), 1.0)
  with jax.enable_x64(True):
    t64, s64 = jnp.asarray(teacher, jnp.float64), jnp.asarray(student, jnp.float64)
    fkl = np.asarray(divergences.forward_kl(t64, s64))
    rkl = np.asarray(divergences.reverse_kl(t64, s64))
    errors_low, errors_high = [], []
    for beta in (1e-2, 1e-3, 1e-4):
      errors_low.append(
          np.max(np.abs(np.asarray(divergences.generalized_jsd(t64, s64, beta=beta)) / beta - fkl))
      )
      errors_high.append(
          np.max(
              np.abs(np.asarray(divergences.generalized_jsd(t64, s64, beta=1 - beta)) / beta - rkl)
          )
      )
  for errors in (errors_low, errors_high):
    assert errors[0] > errors[1] > errors[2]  # The error shrinks with beta's distance ...
    assert errors[2] < 1e-3 * np.max(fkl)  # ... and becomes negligible.


def test_jsd_endpoints_are_exactly_the_kls():
  teacher, student = map(jnp.asarray, random_logits(6, (4, 25), 2.0))
  np.testing.assert_array_equal(
      divergences.generalized_jsd(teacher, student, beta=0.0),
      divergences.forward_kl(teacher, student),
  )
  np.testing.assert_array_equal(
      divergences.generalized_jsd(teacher, student, beta=1.0),
      divergences.reverse_kl(teacher, student),
  )


def test_jsd_bounded_by_entropy_of_mixture_weights():
  """JSD(beta) <= H(beta) = -beta log beta - (1 - beta) log(1 - beta), even for disjoint
  supports, where the KLs blow up."""
  teacher = jnp.asarray([[50.0, -50.0, -50.0]])
  student = jnp.asarray([[-50.0, -50.0, 50.0]])
  for beta in (0.1, 0.5, 0.9):
    bound = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
    value = float(divergences.generalized_jsd(teacher, student, beta=beta)[0])
    np.testing.assert_allclose(value, bound, rtol=1e-5)


def test_token_cross_entropy_matches_reference():
  _, student = random_logits(7, (3, 5, 11), 2.0)
  targets = np.random.RandomState(8).randint(0, 11, (3, 5))
  got = divergences.token_cross_entropy(jnp.asarray(targets), jnp.asarray(student))
  log_q = np_log_softmax(student.astype(np.float64), -1)
  want = -np.take_along_axis(log_q, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_entropy_matches_scipy_and_its_bounds():
  _, logits = random_logits(9, (3, 5, 11), 3.0)
  for temperature in (1.0, 0.5, 2.0):
    got = divergences.entropy(jnp.asarray(logits), temperature=temperature)
    want = scipy_entropy(softmax(logits.astype(np.float64) / temperature, -1), axis=-1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  # 0 for a one-hot distribution, log(vocab) for a uniform one.
  np.testing.assert_allclose(
      np.asarray(divergences.entropy(jnp.array([[1e4, 0.0, 0.0], [0.0, 0.0, 0.0]]))),
      [0.0, np.log(3.0)],
      atol=1e-6,
  )
  with pytest.raises(ValueError, match='temperature must be > 0'):
    divergences.entropy(jnp.zeros((2, 3)), temperature=0.0)


def test_sequence_mean_is_eq2_and_masks_exactly():
  values = jnp.asarray([[1.0, 2.0, 3.0, np.nan], [4.0, np.inf, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]])
  weights = jnp.asarray([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  per_sequence, valid = divergences.sequence_mean(values, weights)
  np.testing.assert_array_equal(np.asarray(per_sequence), [2.0, 4.0, 0.0])
  np.testing.assert_array_equal(np.asarray(valid), [1.0, 1.0, 0.0])
  assert float(divergences.batch_mean(per_sequence, valid)) == 3.0


def test_masked_positions_give_zero_gradient():
  teacher, student = map(jnp.asarray, random_logits(9, (2, 4, 10), 1.0))
  # Padding positions may hold arbitrary (finite) logits; they must not reach the gradient.
  student = student.at[1, 3].set(1e4).at[0, 2:].set(-1e4)
  weights = jnp.asarray([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])

  def loss(s):
    per_position = divergences.generalized_jsd(teacher, s, beta=0.5)
    return divergences.batch_mean(*divergences.sequence_mean(per_position, weights))

  value, grad = jax.value_and_grad(loss)(student)
  assert np.isfinite(float(value))
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  assert np.all(grad[np.asarray(weights) == 0] == 0.0)
  assert np.all(np.abs(grad[np.asarray(weights) > 0]).sum(-1) > 0)


def test_bad_settings_fail_with_named_setting():
  logits = jnp.zeros((2, 5))
  with pytest.raises(ValueError, match='divergence must be one of'):
    divergences.get_divergence('kl_forward')
  with pytest.raises(ValueError, match='beta must be in'):
    divergences.get_divergence('jsd', 1.5)
  with pytest.raises(ValueError, match='teacher_temperature'):
    divergences.forward_kl(logits, logits, teacher_temperature=0.0)
  with pytest.raises(ValueError, match='same shape'):
    divergences.reverse_kl(jnp.zeros((2, 5)), jnp.zeros((2, 6)))
