"""`GKDConfig.divergence_chunk_length`: the divergence term and the RL term's log-likelihood
computed over sequence chunks equal the unchunked ones (loss, statistics and gradient), the
setting is validated and reachable through gin, and the compiled step holds less memory
(through `GKDModel.loss_fn`: test_objective.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gin
from gkd_t5x import objective
from gkd_t5x import rewards

B, L, V = 4, 10, 16
# 2 divides L, 3 leaves a tail (the last chunk overlaps the one before), 16 > L is one chunk.
CHUNK_LENGTHS = (2, 3, 16)
DIVERGENCES = (
    dict(divergence='forward_kl'),
    dict(divergence='reverse_kl'),
    dict(divergence='jsd', beta=0.1),
    dict(divergence='jsd', beta=0.5),
    dict(divergence='jsd', beta=0.9),
    dict(divergence='total_variation'),
    dict(divergence='cross_entropy', lmbda=0.0),
)


def _sequences_and_logits():
  """[B, L] tokens and weights (a fully weighted row, a fractionally weighted one with a
  padded tail, a padding row, one weighted at a single position) and [B, L, V] logits."""
  rng = np.random.RandomState(0)
  tokens = rng.randint(2, V, (B, L))
  weights = np.zeros((B, L), np.float32)
  weights[0] = 1.0
  weights[1, :7] = rng.uniform(0.1, 1.0, 7)
  weights[3, 8] = 1.0
  student, teacher = (3.0 * rng.randn(B, L, V).astype(np.float32) for _ in range(2))
  sequences = objective.Sequences(jnp.asarray(tokens, jnp.int32), jnp.asarray(weights))
  return sequences, jnp.asarray(student), jnp.asarray(teacher)


def _term_and_grad(config, sequences, student_logits, teacher_logits):
  """(divergence, stats) of `divergence_term` and its gradient w.r.t. the student's logits
  (gkd_loss stops the teacher's)."""
  teacher_logits = None if config.divergence == 'cross_entropy' else teacher_logits
  term = lambda student: objective.divergence_term(config, sequences, student, teacher_logits)
  (value, stats), grad = jax.value_and_grad(term, has_aux=True)(student_logits)
  return value, stats, grad


@pytest.mark.parametrize('settings', DIVERGENCES, ids=lambda s: '-'.join(map(str, s.values())))
def test_chunked_divergence_term_equals_the_unchunked_one(settings):
  """Loss, statistics and the gradient w.r.t. the student's logits, every chunk length, to 1e-6
  in float32."""
  sequences, student_logits, teacher_logits = _sequences_and_logits()

  @jax.jit
  def all_chunk_lengths(student_logits, teacher_logits):
    return [
        _term_and_grad(
            objective.GKDConfig(**settings, divergence_chunk_length=chunk_length),
            sequences,
            student_logits,
            teacher_logits,
        )
        for chunk_length in (None,) + CHUNK_LENGTHS
    ]

  (want, want_stats, want_grad), *chunked = all_chunk_lengths(student_logits, teacher_logits)
  assert float(jnp.max(jnp.abs(want_grad))) > 1e-3  # A gradient that could differ.
  for chunk_length, (value, stats, grad) in zip(CHUNK_LENGTHS, chunked):
    err = f'chunk length {chunk_length}'
    np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=err)
    assert stats.keys() == want_stats.keys()
    for name in stats:
      np.testing.assert_allclose(stats[name], want_stats[name], rtol=1e-6, err_msg=err)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7, err_msg=err)


def test_the_default_is_unchunked():
  """None keeps today's graph: no loop in the lowered divergence term."""
  sequences, student_logits, teacher_logits = _sequences_and_logits()
  lowered = lambda config: (
      jax.jit(lambda s, t: objective.divergence_term(config, sequences, s, t)[0])
      .lower(student_logits, teacher_logits)
      .as_text()
  )
  assert objective.GKDConfig().divergence_chunk_length is None
  assert 'while' not in lowered(objective.GKDConfig())
  assert 'while' in lowered(objective.GKDConfig(divergence_chunk_length=4))


@pytest.mark.parametrize('chunk_length', [0, -3, 2.5, True, '64'])
def test_a_bad_chunk_length_names_the_setting(chunk_length):
  with pytest.raises(
      ValueError, match=r'GKDConfig\.divergence_chunk_length must be a positive int'
  ):
    objective.GKDConfig(divergence_chunk_length=chunk_length)


def test_the_gsm8k_gin_comment_sets_the_chunk_length():
  """The commented binding in the GSM8K base file, uncommented, reaches the method's config."""
  with open('gin/experiments/gsm8k/base.gin') as f:
    (binding,) = re.findall(
        r'^# (gkd/objective\.GKDConfig\.divergence_chunk_length = \d+)$', f.read(), flags=re.M
    )
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(['gin/methods/gkd.gin'], [binding])
    config = gin.query_parameter('%GKD').scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert config.divergence_chunk_length == 64


def test_chunks_shrink_the_compiled_steps_memory():
  """value_and_grad of the JSD term (with its statistics) at B=4, L=256, V=8192: chunks of 32
  positions need a fraction of the unchunked step's temporary buffers."""
  batch_size, length, vocab = 4, 256, 8192
  logits = jax.ShapeDtypeStruct((batch_size, length, vocab), jnp.float32)
  sequences = objective.Sequences(
      jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
      jax.ShapeDtypeStruct((batch_size, length), jnp.float32),
  )

  def temp_bytes(chunk_length):
    config = objective.GKDConfig(divergence='jsd', divergence_chunk_length=chunk_length)
    term = lambda student, teacher, sequences: objective.divergence_term(
        config, sequences, student, jax.lax.stop_gradient(teacher)
    )
    compiled = (
        jax.jit(jax.value_and_grad(term, has_aux=True)).lower(logits, logits, sequences).compile()
    )
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip(f'memory_analysis() is None on the {jax.default_backend()} backend')
    return analysis.temp_size_in_bytes

  unchunked, chunked = temp_bytes(None), temp_bytes(32)
  logits_bytes = batch_size * length * vocab * 4
  assert unchunked >= 2 * logits_bytes, (unchunked, logits_bytes)
  assert chunked < unchunked / 4, (chunked, unchunked)
  assert chunked < logits_bytes, (chunked, logits_bytes)


def test_chunked_rl_term_equals_the_unchunked_one():
  """Eq. 5's REINFORCE term (alpha < 1) sums the samples' log-likelihoods over the same chunks:
  pg_loss and its gradient w.r.t. the student's logits, every chunk length, to 1e-6."""
  sequences, student_logits, _ = _sequences_and_logits()
  targets = objective.Sequences(sequences.tokens.at[0, 0].add(1), sequences.weights)
  inputs = jnp.zeros((B, 3), jnp.int32)
  real_B = jnp.any(targets.weights > 0, axis=-1)

  def pg_loss_and_grad(chunk_length):
    config = objective.GKDConfig(
        divergence='jsd',
        alpha=0.5,
        reward=rewards.ExactMatchReward(),
        divergence_chunk_length=chunk_length,
    )
    term = lambda student: objective.rl_term(config, inputs, targets, sequences, student, real_B)
    return jax.value_and_grad(term, has_aux=True)(student_logits)

  (want, _), want_grad = pg_loss_and_grad(None)
  assert float(jnp.max(jnp.abs(want_grad))) > 1e-3  # rewards differ, so a gradient flows
  for chunk_length in CHUNK_LENGTHS:
    (value, _), grad = pg_loss_and_grad(chunk_length)
    np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=f'chunk length {chunk_length}')
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)
