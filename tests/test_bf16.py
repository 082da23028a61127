"""T5X's mixed precision, as gin/models/t5_1_1_*.gin run it (T5Config.dtype = 'bfloat16'):
activations in bfloat16, params, gradients, the logits and the divergence in float32. The GKD
loss and its gradients stay close to float32's on the same params and sequences.

Tolerance: bfloat16 keeps 8 significand bits, a relative rounding error of up to 2^-8 (0.4%)
per operation; the float32 logits layer and log-softmax add none. Measured here (seed 0), the
bfloat16 loss is within 0.03% of float32's on the targets and 0.004% on the student's samples,
and its gradients have a cosine similarity of 0.9999 to float32's (a relative L2 error of 1.2%).
LOSS_RTOL, five per-operation roundings (about the operations on one path through a layer:
norm, projection, attention, MLP, logits), is 60x the measured error; GRAD_COSINE leaves 100x
the measured gap.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from gkd_t5x import divergences
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import vocabularies

VOCAB = 64
B, I, L = 4, 6, 8
LOSS_RTOL = 2e-2
GRAD_COSINE = 0.99


def make_model(dtype: str) -> models.GKDModel:
  """A tiny student and a teacher twice its width, with activations in `dtype`; supervised
  (lambda = 0) JSD(0.5), so that the step trains on the batch's sequences."""
  config = lambda emb_dim: dataclasses.replace(tiny.t5_config(VOCAB, emb_dim, 1), dtype=dtype)
  vocabulary = vocabularies.TokenIdVocabulary(VOCAB)
  return models.GKDModel(
      network.Transformer(config(16)),
      network.Transformer(config(32)),
      vocabulary,
      vocabulary,
      gkd=objective.GKDConfig(divergence='jsd', beta=0.5, lmbda=0.0),
  )


@functools.lru_cache(maxsize=None)
def step_fn(dtype: str):
  """The jitted (loss, metrics), grads of a step; one compilation per dtype."""
  return jax.jit(jax.value_and_grad(make_model(dtype).loss_fn, has_aux=True))


@pytest.fixture(scope='module')
def setup():
  """float32 variables, and two batches on the same inputs: the data's targets, and the float32
  student's own samples (the sequences an on-policy step trains on; sampled once, so that both
  dtypes score the same ones)."""
  rng = np.random.default_rng(0)
  batch = tiny.encdec_batch(rng.integers(2, VOCAB, (B, I)), rng.integers(2, VOCAB, (B, L)))
  model = make_model('float32')
  shapes = {name: value.shape for name, value in batch.items()}
  # Jitted: one compilation is faster than running the initialization and the sampler op by op.
  variables = jax.jit(functools.partial(model.get_initial_variables, input_shapes=shapes))(
      jax.random.PRNGKey(0)
  )

  @jax.jit
  def sample(params, inputs):
    student = model.policy(model.module, params)
    return objective.sample_sequences(
        student,
        student.read_prompt(inputs),
        rng=jax.random.PRNGKey(1),
        batch_size=B,
        length=L,
        max_decode_length=L,
        temperature=1.0,
        eos_id=1,
    )

  samples = sample(variables['params'], batch['encoder_input_tokens'])
  on_policy = dict(
      batch,
      decoder_target_tokens=samples.tokens,
      decoder_input_tokens=objective.shift_right(samples.tokens),
      decoder_loss_weights=samples.weights,
  )
  return variables, {'targets': batch, 'student_samples': on_policy}


def run_step(dtype, variables, batch):
  (loss, _), grads = step_fn(dtype)(
      variables['params'],
      batch,
      jax.random.PRNGKey(2),
      {models.TEACHER_COLLECTION: variables[models.TEACHER_COLLECTION]},
  )
  return loss, grads


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize('sequences', ['targets', 'student_samples'])
def test_bfloat16_loss_and_gradients_match_float32(setup, sequences):
  variables, batches = setup
  loss32, grads32 = run_step('float32', variables, batches[sequences])
  loss16, grads16 = run_step('bfloat16', variables, batches[sequences])
  assert loss16.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(grads16)} == {jnp.dtype(jnp.float32)}
  assert float(loss16) == pytest.approx(float(loss32), rel=LOSS_RTOL)
  g32, g16 = flat(grads32), flat(grads16)
  assert np.dot(g32, g16) / (np.linalg.norm(g32) * np.linalg.norm(g16)) > GRAD_COSINE


def test_bfloat16_runs_the_activations_and_only_them_in_bfloat16(setup):
  variables, batches = setup
  jaxpr = lambda dtype: str(
      jax.make_jaxpr(make_model(dtype).loss_fn)(
          variables['params'],
          batches['targets'],
          jax.random.PRNGKey(2),
          {models.TEACHER_COLLECTION: variables[models.TEACHER_COLLECTION]},
      )
  )
  assert 'bf16[' in jaxpr('bfloat16') and 'bf16[' not in jaxpr('float32')
  # The params stay float32, converted where an activation meets them.
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_the_divergence_of_bfloat16_logits_is_computed_in_float32():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, VOCAB)) * 4
  teacher, student = logits[0].astype(jnp.bfloat16), logits[1].astype(jnp.bfloat16)
  got = divergences.generalized_jsd(teacher, student, beta=0.5)
  want = divergences.generalized_jsd(
      teacher.astype(jnp.float32), student.astype(jnp.float32), beta=0.5
  )
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
