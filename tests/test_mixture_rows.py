"""Several teachers in the runners: the batch layout from a mixture's rates (`mixture_rows`), its
refusals, a restart that restores every teacher, and the gin example end to end.

The mixture is the registered `arithmetic_sum3_2digit_chain5` (the two offline arithmetic tasks
at equal rates); a row's task shows in its inputs: a sum has 2 operators, a chain 4.
"""

import json
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import runs
import seqio
import tiny

from gkd_t5x import data
from gkd_t5x import feature_converters
from gkd_t5x import mixture_rows
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import teachers
from gkd_t5x import train
from gkd_t5x.tasks import arithmetic  # noqa: F401  (registers the tasks and the mixture)

MIXTURE = 'arithmetic_sum3_2digit_chain5'
LENGTHS = {'inputs': 16, 'targets': 56}
VOCAB_SIZE = 384
VOCABULARY = seqio.ByteVocabulary()
# The test-size teacher of tests/testdata/tiny_arithmetic.gin (ARITHMETIC_TEACHER).
TEACHER_CONFIG = network.T5Config(
    vocab_size=VOCAB_SIZE,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_activations=('gelu', 'linear'),
    dropout_rate=0.0,
    logits_via_embedding=False,
)


def two_teachers(paths=(None, None), module=None):
  module = module or network.Transformer(TEACHER_CONFIG)
  return {
      'sum3': teachers.Teacher(module, paths[0], ['arithmetic_sum3_2digit']),
      'chain5': teachers.Teacher(module, paths[1], ['arithmetic_chain5'], temperature=2.0),
  }


def dataset_config(batch_size):
  return data.DatasetConfig(MIXTURE, LENGTHS, 'train', batch_size, shuffle=True, seed=0)


def operators(inputs_BxI):
  """[B] the number of operators in each row's inputs."""
  text = [VOCABULARY.decode(row.tolist()) for row in inputs_BxI]
  return np.array([sum(text_row.count(op) for op in '+-') for text_row in text])


def test_each_teacher_gets_its_share_of_every_block():
  plan = mixture_rows.plan(two_teachers(), MIXTURE, 8, blocks=2)
  assert plan.routing == teachers.Routing(('sum3', 'chain5'), (2, 2), 2)
  assert plan.teacher_of('arithmetic_chain5') == 'chain5'
  dataset = mixture_rows.get_dataset(
      dataset_config(8), feature_converters.EncDecFeatureConverter(pack=False), plan
  )
  first, second = list(dataset.take(2).as_numpy_iterator())
  # Blocks of 4 rows: 2 sums, then 2 chains.
  np.testing.assert_array_equal(operators(first['encoder_input_tokens']), [2, 2, 4, 4] * 2)
  resumed = mixture_rows.get_dataset(
      dataset_config(8), feature_converters.EncDecFeatureConverter(pack=False), plan, start_batch=1
  )
  for name, value in next(resumed.as_numpy_iterator()).items():
    np.testing.assert_array_equal(value, second[name], err_msg=name)


def test_a_mixture_name_stands_for_its_tasks():
  module = network.Transformer(TEACHER_CONFIG)
  both = {'both': teachers.Teacher(module, None, [MIXTURE])}
  plan = mixture_rows.plan(both, MIXTURE, 6)
  assert plan.routing == teachers.Routing(('both',), (6,))
  assert dict(plan.tasks['both']) == {'arithmetic_sum3_2digit': 1.0, 'arithmetic_chain5': 1.0}


def test_refusals_name_the_setting_and_the_allowed_values():
  module = network.Transformer(TEACHER_CONFIG)
  with pytest.raises(ValueError, match=r"tasks \['arithmetic_chain5'\] have no teacher; add each"):
    mixture_rows.plan({'sum3': two_teachers()['sum3']}, MIXTURE, 8)
  with pytest.raises(ValueError, match=r'BATCH_SIZE = 3 .* rows: each must be a positive multiple'):
    mixture_rows.plan(two_teachers(), MIXTURE, 3)
  with pytest.raises(ValueError, match='multiple of 8 .the data shards.'):
    mixture_rows.plan(two_teachers(), MIXTURE, 8, blocks=8)
  twice = dict(two_teachers(), again=teachers.Teacher(module, None, ['arithmetic_chain5']))
  with pytest.raises(ValueError, match="'arithmetic_chain5' has two teachers"):
    mixture_rows.plan(twice, MIXTURE, 8)


def save_teacher(directory, seed):
  """A random teacher of TEACHER_CONFIG saved as this project's checkpoint; returns its dir."""
  shapes = {'encoder_input_tokens': (1, 16), 'decoder_input_tokens': (1, 56)}
  variables = network.Transformer(TEACHER_CONFIG).init(
      jax.random.PRNGKey(seed),
      np.ones(shapes['encoder_input_tokens'], np.int32),
      np.ones(shapes['decoder_input_tokens'], np.int32),
      np.ones(shapes['decoder_input_tokens'], np.int32),
      enable_dropout=False,
  )
  ocp.PyTreeCheckpointer().save(
      os.path.join(directory, 'checkpoint_0', 'state'), {'target': variables['params']}
  )
  return str(directory)


@pytest.fixture(scope='module')
def teacher_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('teachers')
  return save_teacher(root / 'sum3', 1), save_teacher(root / 'chain5', 2)


def train_in_process(model_dir, teacher_dirs, total_steps):
  model = models.GKDModel(
      tiny.transformer(VOCAB_SIZE, 8, 1),
      None,
      VOCABULARY,
      VOCABULARY,
      gkd=objective.GKDConfig(lmbda=1.0),
      teachers=two_teachers(teacher_dirs),
  )
  train.train(
      model=model,
      model_dir=str(model_dir),
      train_dataset_cfg=dataset_config(4),
      total_steps=total_steps,
      optimizer=optax.adam(1e-2),
      checkpoint_period=1,
      log_period=1,
      async_checkpointing=False,
      diagnostics_period=None,
  )


def test_a_restart_resumes_with_every_teacher_restored(tmp_path, teacher_dirs):
  """Stopped after step 2 and restarted, the run ends as an uninterrupted one: the same params
  and, at step 3, each teacher's divergence and entropy on the student's samples."""
  train_in_process(tmp_path / 'whole', teacher_dirs, 3)
  train_in_process(tmp_path / 'parts', teacher_dirs, 2)
  train_in_process(tmp_path / 'parts', teacher_dirs, 3)
  runs.assert_trees_equal(
      runs.final_params(tmp_path / 'whole', 3), runs.final_params(tmp_path / 'parts', 3)
  )
  whole, parts = runs.train_scalars(tmp_path / 'whole'), runs.train_scalars(tmp_path / 'parts')
  for teacher in ('sum3', 'chain5'):
    for stat in ('divergence', 'teacher_entropy'):
      tag = f'{stat}/{teacher}'
      assert whole[tag][-1] == parts[tag][-1], tag
  # The two random teachers differ: a teacher restored in the other's place would show.
  assert whole['teacher_entropy/sum3'][-1][1] != whole['teacher_entropy/chain5'][-1][1]


def test_the_gin_example_trains_and_evaluates_each_task_with_its_teacher(tmp_path, teacher_dirs):
  model_dir = tmp_path / 'two_teachers'
  argv = runs.ENCODER_DECODER.train_argv(
      model_dir,
      'gkd',
      'TRAIN_STEPS=2',
      f'SUM3_TEACHER_CHECKPOINT_PATH="{teacher_dirs[0]}"',
      f'CHAIN5_TEACHER_CHECKPOINT_PATH="{teacher_dirs[1]}"',
      extra_flags=[
          '--gin_file=gin/experiments/arithmetic/mixture.gin',
          '--gin_file=gin/experiments/arithmetic/two_teachers.gin',
      ],
  )
  runs.run(argv)
  scalars = runs.train_scalars(model_dir)
  for teacher in ('sum3', 'chain5'):
    assert [step for step, _ in scalars[f'num_sequences/{teacher}']] == [1, 2]
    assert {value for _, value in scalars[f'num_sequences/{teacher}']} == {4.0}
  with open(model_dir / 'eval_metrics.jsonl') as f:
    evaluation = json.loads(f.readlines()[-1])['metrics']
  for task in ('arithmetic_sum3_2digit', 'arithmetic_chain5'):
    assert evaluation[f'validation/{task}/num_sequences'] == 16
    assert f'validation/{task}/on_policy_divergence' in evaluation
    assert f'inference/{task}/accuracy' in evaluation
