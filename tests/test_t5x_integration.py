"""The GKD model as a T5X model, and the teacher in T5X's train state (in-process).

Skipped where t5x is not installed (it is not on PyPI; see the README).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

pytest.importorskip('t5x.models')

from t5x import checkpoints as t5x_checkpoints
from t5x import models as t5x_models
from t5x import optimizers as t5x_optimizers
from t5x import partitioning as t5x_partitioning
from t5x import train_state as t5x_train_state
import tiny

from gkd_t5x import checkpoints
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import t5x_integration

VOCAB = 32
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
SHAPES = {
    'encoder_input_tokens': (2, 5),
    'decoder_input_tokens': (2, 4),
    'decoder_target_tokens': (2, 4),
    'decoder_loss_weights': (2, 4),
}


def make_model(teacher=True):
  gkd = (
      objective.GKDConfig(lmbda=0.5)
      if teacher
      else objective.GKDConfig(divergence='cross_entropy', lmbda=0.0)
  )
  teacher_module = tiny.transformer(VOCAB, 16, mlp_dim=16) if teacher else None
  return models.GKDModel(
      tiny.transformer(VOCAB, 8, mlp_dim=16),
      teacher_module,
      VOCABULARY,
      VOCABULARY,
      optimizer_def=t5x_optimizers.OptaxWrapper(optax.adam(1e-3)),
      gkd=gkd,
  )


def make_initializer(model, teacher_checkpoint_path):
  return t5x_integration.TeacherTrainStateInitializer(
      optimizer_def=model.optimizer_def,
      init_fn=model.get_initial_variables,
      input_shapes=SHAPES,
      partitioner=t5x_partitioning.PjitPartitioner(num_partitions=1),
      teacher_checkpoint_path=teacher_checkpoint_path,
  )


def write_t5x_teacher(directory):
  """A teacher written by T5X's msgpack + tensorstore `Checkpointer`; returns its params."""
  variables = tiny.transformer(VOCAB, 16, mlp_dim=16).init(
      jax.random.PRNGKey(7),
      *(
          jnp.ones(SHAPES[name], jnp.int32)
          for name in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
      ),
      enable_dropout=False,
  )
  state = t5x_train_state.InferenceState.create(flax.core.freeze(variables))
  t5x_checkpoints.Checkpointer(
      state, t5x_partitioning.PjitPartitioner(num_partitions=1), str(directory)
  ).save(state)
  return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables['params']))


def test_gkd_model_is_a_t5x_encoder_decoder_model():
  model = make_model()
  assert isinstance(model, t5x_models.EncoderDecoderModel)
  assert issubclass(model.FEATURE_CONVERTER_CLS, seqio.EncDecFeatureConverter)
  assert model.input_vocabulary is VOCABULARY and model.output_vocabulary is VOCABULARY
  params = model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)['params']
  rng = np.random.RandomState(0)
  batch = {name: jnp.asarray(rng.randint(2, VOCAB, shape)) for name, shape in SHAPES.items()}
  logits = model._compute_logits(params, batch)
  want = model.module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      enable_dropout=False,
  )
  np.testing.assert_allclose(logits, want, rtol=1e-6)


def test_from_scratch_state_holds_the_checkpoint_teacher_outside_the_optimizer(tmp_path):
  teacher = write_t5x_teacher(tmp_path / 'teacher')
  model = make_model()
  state = make_initializer(model, str(tmp_path / 'teacher')).from_scratch(jax.random.PRNGKey(0))
  restored = state.flax_mutables[models.TEACHER_COLLECTION]
  jax.tree_util.tree_map(np.testing.assert_array_equal, flax.core.unfreeze(restored), teacher)
  assert 'teacher' not in str(jax.tree_util.tree_structure(state.param_states))
  # The student is the model's own random init.
  assert state.params['token_embedder']['embedding'].shape == (VOCAB, 8)


def test_teacher_path_is_checked_before_anything_is_initialized(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='TEACHER_CHECKPOINT_PATH is None'):
    make_initializer(make_model(), None)
  with pytest.raises(checkpoints.CheckpointError, match='does not exist'):
    make_initializer(make_model(), str(tmp_path / 'missing'))
  # A model without teacher (SFT) needs no teacher path.
  state = make_initializer(make_model(teacher=False), None).from_scratch(jax.random.PRNGKey(0))
  assert not state.flax_mutables


def test_initial_checkpoint_never_supplies_the_teacher_unless_resuming():
  ckpt = {'target': {'w': 1}, 'flax_mutables': {'teacher': {'w': 2}, 'other': {'w': 3}}}
  skipped = t5x_integration.skip_teacher_of_initial_checkpoint(ckpt, {})
  assert skipped == {'target': {'w': 1}, 'flax_mutables': {'other': {'w': 3}}}
  assert ckpt['flax_mutables']['teacher'] == {'w': 2}  # the input is not modified
  assert t5x_integration.skip_teacher_of_initial_checkpoint(ckpt, {}, is_resuming=True) is ckpt
  student_only = {'target': {'w': 1}}
  assert t5x_integration.skip_teacher_of_initial_checkpoint(student_only, {}) is student_only
