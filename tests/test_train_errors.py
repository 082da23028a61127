"""Bad settings stop `train.train` with one clear error, before the train step is built.

Each case parses the real gin files (gin/runs/train.gin, an arithmetic experiment, the tiny
test overrides) plus one bad binding, and calls the trainer in-process with
`trainer.make_train_step` replaced by a function that fails the test: every error must come
before the step is compiled.
"""

import os
import pathlib
import subprocess
import sys

import jax
import orbax.checkpoint as ocp
import pytest

import gin
from gkd_t5x import checkpoints
from gkd_t5x import gin_utils
from gkd_t5x import models
from gkd_t5x import train as train_lib
from gkd_t5x import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'tests' / 'testdata' / 'tiny_arithmetic.gin')


@pytest.fixture(autouse=True)
def no_step_compilation(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('the train step was built: the error came too late')

  monkeypatch.setattr(trainer, 'make_train_step', fail)
  gin.clear_config()
  yield
  gin.clear_config()


def parse(experiment, *bindings):
  gin_utils.parse_gin(
      ['gin/runs/train.gin', f'gin/experiments/arithmetic/{experiment}.gin', TINY],
      list(bindings),
      finalize=False,
  )


def write_teacher_checkpoint(directory, experiment='supervised_kd', *bindings):
  """A step directory holding random teacher params of the experiment's teacher size."""
  parse(experiment, 'MODEL_DIR="unused"', *bindings)
  model = models.GKDModel()
  gin.clear_config()
  shapes = {
      name: (2, 8)
      for name in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
  }
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)['teacher']
  step_dir = os.path.join(directory, 'checkpoint_1')
  ocp.PyTreeCheckpointer().save(os.path.join(step_dir, 'state'), {'target': params})
  return step_dir


def train_with(tmp_path, experiment, *bindings):
  parse(experiment, f'MODEL_DIR="{tmp_path / "run"}"', *bindings)
  train_lib.train()


@pytest.fixture
def teacher_path(tmp_path):
  return write_teacher_checkpoint(str(tmp_path / 'teacher'))


@pytest.mark.parametrize(
    'bindings, message',
    [
        (['LMBDA=1.5'], r'lmbda must be in \[0, 1\]'),
        (['LMBDA=-0.1'], r'lmbda'),
        (['DIVERGENCE="jsd"', 'BETA=1.2'], r'beta'),
        (['DIVERGENCE="kl"'], r"divergence must be one of.*forward_kl.*'kl'"),
        (['gkd/objective.GKDConfig.alpha=-0.5'], r'alpha'),
        (['arithmetic_teacher/network.T5Config.vocab_size=300'], r'vocabularies differ'),
        (
            ['MIXTURE_OR_TASK_NAME="arithmetic_sum4"'],
            r'Unknown task.*did you mean.*arithmetic_sum3',
        ),
        (["TASK_FEATURE_LENGTHS={'inputs': 16}"], r'TASK_FEATURE_LENGTHS has features'),
        (
            ["TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 0}"],
            r'TASK_FEATURE_LENGTHS\[.targets.\]',
        ),
        (['gkd/objective.GKDConfig.max_decode_length=64'], r'max_decode_length = 64 exceeds'),
        (['BATCH_SIZE=0'], r'BATCH_SIZE'),
        (['NUM_PARTITIONS=2'], r'model_partitions \(2\) must be >= 1 and divide'),
    ],
)
def test_bad_setting(tmp_path, teacher_path, bindings, message):
  with pytest.raises(ValueError, match=message):
    train_with(tmp_path, 'gkd', f'TEACHER_CHECKPOINT_PATH="{teacher_path}"', *bindings)


def test_missing_teacher_checkpoint(tmp_path):
  with pytest.raises(ValueError, match='TEACHER_CHECKPOINT_PATH is not set'):
    train_with(tmp_path, 'gkd')
  gin.clear_config()
  with pytest.raises(
      checkpoints.CheckpointError, match="TEACHER_CHECKPOINT_PATH = '/no/such/dir' does not exist"
  ):
    train_with(tmp_path, 'gkd', 'TEACHER_CHECKPOINT_PATH="/no/such/dir"')


ENTAILMENT_REWARD = [
    'REWARD = @rewards.EntailmentReward()',
    'rewards.EntailmentReward.module = @reward_model/network.Transformer()',
    'reward_model/network.Transformer.config = %ARITHMETIC_STUDENT',
    'rewards.EntailmentReward.vocabulary = %VOCABULARY',
    'rewards.EntailmentReward.input_length = 48',
]


def test_model_reward_needs_its_checkpoint(tmp_path, teacher_path):
  """RL + GKD with an entailment classifier: REWARD_CHECKPOINT_PATH is required and checked."""
  gin_utils.parse_gin(
      ['gin/runs/train.gin', 'gin/experiments/arithmetic/gkd.gin', 'gin/methods/rl_gkd.gin', TINY],
      [
          f'MODEL_DIR="{tmp_path / "run"}"',
          f'TEACHER_CHECKPOINT_PATH="{teacher_path}"',
          *ENTAILMENT_REWARD,
      ],
      finalize=False,
  )
  with pytest.raises(ValueError, match='REWARD_CHECKPOINT_PATH is not set'):
    train_lib.train()
  gin.bind_parameter('train.train.reward_checkpoint_path', '/no/such/classifier')
  with pytest.raises(
      checkpoints.CheckpointError,
      match="REWARD_CHECKPOINT_PATH = '/no/such/classifier' does not exist",
  ):
    train_lib.train()


def test_missing_initial_checkpoint(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='INITIAL_CHECKPOINT_PATH'):
    train_with(tmp_path, 'student_sft', f'INITIAL_CHECKPOINT_PATH="{tmp_path}"')


def test_corrupt_teacher_checkpoint(tmp_path, teacher_path):
  for directory, _, files in os.walk(teacher_path):
    for name in files:
      with open(os.path.join(directory, name), 'wb') as f:
        f.write(b'not a checkpoint')
  with pytest.raises(
      checkpoints.CheckpointError, match='TEACHER_CHECKPOINT_PATH.*could not restore'
  ):
    train_with(tmp_path, 'gkd', f'TEACHER_CHECKPOINT_PATH="{teacher_path}"')


def test_teacher_checkpoint_of_another_size(tmp_path):
  """A checkpoint whose params do not fit the configured teacher."""
  other = write_teacher_checkpoint(
      str(tmp_path / 'other'), 'supervised_kd', 'arithmetic_teacher/network.T5Config.emb_dim=24'
  )
  with pytest.raises(checkpoints.CheckpointError, match='TEACHER_CHECKPOINT_PATH'):
    train_with(tmp_path, 'gkd', f'TEACHER_CHECKPOINT_PATH="{other}"')


def test_malformed_gin_fails_on_the_command_line(tmp_path):
  bad = tmp_path / 'bad.gin'
  bad.write_text('TRAIN_STEPS = = 3\n')
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'gkd_t5x.train',
          '--gin_file=gin/runs/train.gin',
          '--gin_file=gin/experiments/arithmetic/student_sft.gin',
          f'--gin_file={bad}',
          f'--gin.MODEL_DIR="{tmp_path / "run"}"',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      check=False,
  )
  assert result.returncode != 0
  assert 'bad.gin' in result.stderr and 'line 1' in result.stderr
  assert not (tmp_path / 'run').exists()
