"""The training-dynamics diagnostics (`gkd_t5x.diagnostics`) against independent references:
the half-batch gradient noise against NumPy's per-row gradients, the error shares against
hand-counted weights, row masking against the half batch alone, and the first-error positions
through a byte vocabulary. The trainer's diagnostics end to end are in test_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tiny

from gkd_t5x import diagnostics
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x.tasks import arithmetic


def least_squares_batch(x_BxD, y_B):
  return {
      'x': jnp.asarray(x_BxD),
      'y': jnp.asarray(y_B),
      'decoder_target_tokens': jnp.ones((len(y_B), 1), jnp.int32),
      'decoder_loss_weights': jnp.ones((len(y_B), 1), jnp.float32),
  }


def least_squares_grads(w_D):
  """Gradient of the weighted mean squared error over the rows with weight."""

  def grads(batch):
    def loss(w):
      weights_B = batch['decoder_loss_weights'][:, 0]
      errors_B = batch['x'] @ w - batch['y']
      return jnp.sum(weights_B * errors_B**2) / jnp.sum(weights_B)

    return jax.grad(loss)(w_D)

  return grads


def test_gradient_noise_fraction_equals_the_per_row_formula():
  rng = np.random.default_rng(0)
  x_BxD, y_B, w_D = rng.normal(size=(8, 3)), rng.normal(size=8), rng.normal(size=3)
  measured = diagnostics.gradient_noise_fraction(
      least_squares_grads(jnp.asarray(w_D)), least_squares_batch(x_BxD, y_B)
  )
  per_row_BxD = 2 * (x_BxD @ w_D - y_B)[:, None] * x_BxD
  g_a, g_b = per_row_BxD[:4].mean(0), per_row_BxD[4:].mean(0)
  expected = np.sum((g_a - g_b) ** 2) / np.sum((g_a + g_b) ** 2)
  np.testing.assert_allclose(measured, expected, rtol=1e-5)


def test_gradient_noise_fraction_is_zero_without_noise_and_about_one_for_pure_noise():
  x_BxD = np.tile(np.array([[1.0, -2.0]]), (6, 1))
  noiseless = least_squares_batch(x_BxD, np.full(6, 0.5))
  grads = least_squares_grads(jnp.array([0.3, 0.1]))
  assert float(diagnostics.gradient_noise_fraction(grads, noiseless)) == pytest.approx(0.0)
  # At w = 0 the per-row gradients -2 y x have mean 0: g_A - g_B and g_A + g_B are independent
  # with one covariance, so r is F(D, D)-distributed around 1 (sd about 2 / sqrt(D) = 0.1).
  rng = np.random.default_rng(1)
  pure_noise = least_squares_batch(rng.normal(size=(64, 400)), rng.normal(size=64))
  r = float(diagnostics.gradient_noise_fraction(least_squares_grads(jnp.zeros(400)), pure_noise))
  assert r == pytest.approx(1.0, abs=0.3)


def test_error_shares_by_hand():
  # Row 0: 4 weighted positions, first error at 1; row 1: 2 positions, no error (L = 5).
  weights = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
  values = np.array([[0.1, 0.2, 0.3, 0.4, 9.0], [0.5, 0.5, 9.0, 9.0, 9.0]], np.float32)
  shares = diagnostics.error_shares(values, weights, np.array([1, 5]))
  assert shares['samples_with_error'] == 0.5
  # Eq. 2 gives each row weight 1: row 0's positions 2 and 3 (1/4 each) are after its error.
  assert shares['weight_after_first_error'] == pytest.approx(0.5 / 2)
  after = (0.3 + 0.4) / 4
  total = (0.1 + 0.2 + 0.3 + 0.4) / 4 + (0.5 + 0.5) / 2
  assert shares['divergence_after_first_error'] == pytest.approx(after / total)


def test_first_error_positions_through_a_byte_vocabulary():
  vocabulary = seqio.ByteVocabulary()
  inputs = vocabulary.encode('85+63+51=') + [1]
  samples = ['85+63=138;138+51=189;#189', '85+63=148;148+51=199;#199', '85+63=148;#148']
  length = 32
  tokens = np.zeros((3, length), np.int32)
  for row, sample in enumerate(samples):
    ids = vocabulary.encode(sample) + [1]
    tokens[row, : len(ids)] = ids
  weights = (tokens > 0).astype(np.float32)
  positions = diagnostics.first_error_positions(
      arithmetic.first_error,
      vocabulary,
      np.array([inputs] * 3),
      tokens,
      weights,
  )
  # The wrong '3' is token 7; a right sample has none (L); an early '#' is token 10.
  np.testing.assert_array_equal(positions, [7, length, 10])


def test_masked_rows_give_the_loss_of_the_other_half_alone():
  student, teacher = tiny.transformer(16), tiny.transformer(16, emb_dim=16)
  vocab = seqio.PassThroughVocabulary(size=16, eos_id=1)
  model = models.GKDModel(
      student, teacher, vocab, vocab, gkd=objective.GKDConfig(divergence='jsd', lmbda=0.0)
  )
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 16, size=(6, 5))
  targets[:, -1] = 1
  batch = tiny.encdec_batch(rng.integers(2, 16, size=(6, 4)), targets)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {name: value.shape for name, value in batch.items()}
  )
  frozen = {'teacher': variables['teacher']}
  keep_B = jnp.arange(6) >= 3
  masked, _ = model.loss_fn(
      variables['params'], diagnostics.mask_rows(batch, keep_B), jax.random.PRNGKey(1), frozen
  )
  half = {name: value[3:] for name, value in batch.items()}
  alone, _ = model.loss_fn(variables['params'], half, jax.random.PRNGKey(1), frozen)
  np.testing.assert_allclose(masked, alone, rtol=1e-6)


def test_probe_round_trips(tmp_path):
  probe = diagnostics.Probe(
      np.arange(6, dtype=np.int32).reshape(2, 3),
      objective.Sequences(np.ones((2, 4), np.int32), np.eye(2, 4, dtype=np.float32)),
  )
  probe.save(str(tmp_path / 'probe.npz'))
  loaded = diagnostics.Probe.load(str(tmp_path / 'probe.npz'))
  np.testing.assert_array_equal(loaded.inputs, probe.inputs)
  for got, want in zip(loaded.sequences, probe.sequences):
    np.testing.assert_array_equal(got, want)
