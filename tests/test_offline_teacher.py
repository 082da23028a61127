"""The offline teacher: `gkd_t5x.offline_teacher` writes the shipped arithmetic teacher's top-k
over a few training examples (sharded, resumable); the task of `gkd_t5x.tasks.offline_teacher`
reads them back through both families' feature converters; supervised KD from them has the
online top-k teacher's loss and no teacher params in its compiled step; mismatched settings are
refused in one line."""

import os

import jax
import numpy as np
import pytest
import seqio
import tiny

from gkd_t5x import data
from gkd_t5x import feature_converters
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import offline_teacher
from gkd_t5x.tasks import offline_teacher as offline_tasks

TEACHER_CHECKPOINT = os.path.join(
    os.path.dirname(__file__), '..', 'launch', 'checkpoints', 'arithmetic_sum3_2digit_teacher'
)
TASK = 'arithmetic_sum3_2digit'
LENGTHS = {'inputs': 16, 'targets': 32}
K, VOCAB_SIZE, NUM_EXAMPLES, BATCH = 8, 384, 24, 8
VOCABULARY = seqio.ByteVocabulary()


def teacher_network():
  """The shipped teacher's network (gin/experiments/arithmetic/base.gin)."""
  return network.Transformer(
      network.T5Config(
          vocab_size=VOCAB_SIZE,
          emb_dim=128,
          num_heads=4,
          num_encoder_layers=2,
          num_decoder_layers=2,
          head_dim=32,
          mlp_dim=256,
          mlp_activations=('gelu', 'linear'),
          dropout_rate=0.0,
          logits_via_embedding=False,
      )
  )


def dataset_cfg(task=TASK, split='train'):
  return data.DatasetConfig(
      mixture_or_task_name=task,
      task_feature_lengths=LENGTHS,
      split=split,
      batch_size=BATCH,
      shuffle=False,
      module='gkd_t5x.tasks',
  )


def write(output_dir):
  sft = objective.GKDConfig(divergence='cross_entropy', lmbda=0.0)
  model = models.GKDModel(teacher_network(), None, VOCABULARY, VOCABULARY, gkd=sft)
  return offline_teacher.write_offline_teacher(
      model=model,
      checkpoint_path=TEACHER_CHECKPOINT,
      dataset_cfg=dataset_cfg(),
      output_dir=output_dir,
      top_k=K,
      examples_per_shard=16,
      num_examples=NUM_EXAMPLES,
  )


def register(data_dir, **changes):
  settings = dict(base_task=TASK, top_k=K, vocab_size=VOCAB_SIZE, task_feature_lengths=LENGTHS)
  settings.update(changes)
  return offline_tasks.offline_teacher_task('offline_teacher_test', data_dir, **settings)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = os.fspath(tmp_path_factory.mktemp('offline_teacher'))
  assert write(directory) == {'written': 2, 'skipped': 0}
  return directory


def first_batch(task, converter):
  dataset = seqio.get_dataset(
      task,
      task_feature_lengths=LENGTHS,
      dataset_split='train',
      shuffle=False,
      feature_converter=converter,
  )
  return next(dataset.batch(BATCH).as_numpy_iterator())


def test_written_shards_resume_and_read_back(data_dir):
  """A rerun writes nothing; a lost shard is written again, the same bytes; the task serves
  the base task's examples in order with [L, k] top-k, log-probs sorted and mass <= 1."""
  assert write(data_dir) == {'written': 0, 'skipped': 2}
  shard = offline_tasks.shard_path(data_dir, 'train', 1)
  with open(shard, 'rb') as f:
    before = f.read()
  os.remove(shard)
  assert write(data_dir) == {'written': 1, 'skipped': 1}
  with open(shard, 'rb') as f:
    assert f.read() == before
  converter = feature_converters.EncDecFeatureConverter(pack=False)
  batch = first_batch(register(data_dir), converter)
  base = first_batch(TASK, converter)
  np.testing.assert_array_equal(batch['decoder_target_tokens'], base['decoder_target_tokens'])
  np.testing.assert_array_equal(batch['encoder_input_tokens'], base['encoder_input_tokens'])
  log_probs = batch['teacher_top_k_log_probs']
  assert log_probs.shape == batch['teacher_top_k_ids'].shape == (BATCH, LENGTHS['targets'], K)
  real = batch['decoder_target_tokens'] > 0
  assert np.all(np.diff(log_probs, axis=-1)[real] <= 0)
  mass = np.exp(log_probs).sum(-1) + np.exp(batch['teacher_tail_log_prob'])
  np.testing.assert_allclose(mass[real], 1.0, rtol=1e-5)


def _student_and_variables():
  student = tiny.transformer(VOCAB_SIZE, emb_dim=16)
  model = models.GKDModel(student, teacher_network(), VOCABULARY, VOCABULARY)
  shapes = {
      'encoder_input_tokens': (BATCH, 16),
      'decoder_input_tokens': (BATCH, 32),
      'decoder_target_tokens': (BATCH, 32),
  }
  variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  teacher = checkpoint_params(model, shapes)
  return student, variables['params'], teacher


def checkpoint_params(model, shapes):
  """The shipped teacher's params, restored into the shapes of `model`'s teacher."""
  from gkd_t5x import checkpoints

  abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
      ),
      abstract['teacher'],
  )
  return checkpoints.restore_params(TEACHER_CHECKPOINT, abstract, setting='TEACHER')


def test_offline_kd_loss_equals_the_online_top_k_loss_without_teacher_params(data_dir):
  """Supervised KD (forward KL, lambda = 0) on the stored top-k has the loss and gradient of the
  online teacher's top-k on the same batch, and its compiled step takes no teacher params: its
  arguments are smaller by at least the teacher's bytes."""
  batch = first_batch(register(data_dir), feature_converters.EncDecFeatureConverter(pack=False))
  student, params, teacher_params = _student_and_variables()
  top_k = dict(divergence='forward_kl', lmbda=0.0, teacher_top_k=K)
  online = models.GKDModel(
      student, teacher_network(), VOCABULARY, VOCABULARY, gkd=objective.GKDConfig(**top_k)
  )
  offline = models.GKDModel(
      student, None, VOCABULARY, VOCABULARY, gkd=objective.GKDConfig(**top_k, offline_teacher=True)
  )
  online_batch = {
      name: value for name, value in batch.items() if name not in objective.OFFLINE_TEACHER_FEATURES
  }
  rng = jax.random.PRNGKey(1)
  online_step = jax.jit(jax.value_and_grad(lambda p, b, t: online.loss_fn(p, b, rng, t)[0]))
  offline_step = jax.jit(jax.value_and_grad(lambda p, b: offline.loss_fn(p, b, rng)[0]))
  want, want_grad = online_step(params, online_batch, {'teacher': teacher_params})
  got, got_grad = offline_step(params, batch)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(got_grad), jax.tree_util.tree_leaves(want_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  teacher_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(teacher_params))
  online_args = (
      online_step.lower(params, online_batch, {'teacher': teacher_params})
      .compile()
      .memory_analysis()
      .argument_size_in_bytes
  )
  offline_args = (
      offline_step.lower(params, batch).compile().memory_analysis().argument_size_in_bytes
  )
  assert online_args - offline_args >= teacher_bytes - sum(
      np.asarray(batch[name]).nbytes for name in objective.OFFLINE_TEACHER_FEATURES
  )


def test_prefix_lm_features_carry_the_same_top_k(data_dir):
  """The decoder-only model's objective features of the task hold the same targets and top-k
  as the encoder-decoder's (aligned with the targets, not the prefix-LM row)."""
  task = register(data_dir)
  encdec = first_batch(task, feature_converters.EncDecFeatureConverter(pack=False))
  prefix_lm = first_batch(task, feature_converters.PrefixLMFeatureConverter(pack=False))
  model = models.GKDDecoderOnlyModel(
      tiny.decoder_only_transformer(VOCAB_SIZE),
      None,
      VOCABULARY,
      gkd=objective.GKDConfig(lmbda=0.0, teacher_top_k=K, offline_teacher=True),
      task_feature_lengths=LENGTHS,
  )
  features = model.objective_batch(prefix_lm)
  np.testing.assert_array_equal(features['decoder_target_tokens'], encdec['decoder_target_tokens'])
  for name in objective.OFFLINE_TEACHER_FEATURES:
    np.testing.assert_array_equal(features[name], encdec[name])


@pytest.mark.parametrize(
    'changes,stored',
    [
        (dict(vocab_size=512), 'vocab_size = 384'),
        (dict(task_feature_lengths={'inputs': 16, 'targets': 64}), 'task_feature_lengths'),
        (dict(base_task='arithmetic_chain5'), "base_task = 'arithmetic_sum3_2digit'"),
        (dict(top_k=16), 'top_k = 8'),
        (dict(teacher_temperature=0.1), 'teacher_temperature = 1.0'),
    ],
)
def test_mismatched_settings_are_refused_in_one_line(data_dir, changes, stored):
  with pytest.raises(ValueError, match='offline teacher') as error:
    register(data_dir, **changes)
  # One line (gin appends the configurable's name on a line of its own).
  assert stored in str(error.value).splitlines()[0]


def test_a_directory_of_other_settings_is_refused(data_dir):
  with pytest.raises(ValueError, match='written with other settings'):
    offline_teacher._write_info(data_dir, {'top_k': 4})


def test_a_teacher_network_beside_an_offline_teacher_is_refused():
  offline = objective.GKDConfig(lmbda=0.0, teacher_top_k=K, offline_teacher=True)
  with pytest.raises(ValueError, match='takes no teacher network'):
    models.GKDModel(
        tiny.transformer(VOCAB_SIZE), teacher_network(), VOCABULARY, VOCABULARY, gkd=offline
    )
