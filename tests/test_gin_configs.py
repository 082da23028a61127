"""The gin files of gin/models and gin/methods parse and build the configs they document.

Each case parses real gin files into a cleared gin config, evaluates the macros a run file
would use (T5_1_1_<SIZE>, GKD) and checks the built `network.T5Config` / `objective.GKDConfig`
against the public T5 1.1 hyperparameters and the paper's method settings. Each method also
goes through `GKDModel.loss_fn` and `eval_fn` with the tiny model as student and teacher,
traced with `jax.eval_shape` (shapes only, no compute), so a config the objective rejects, or
a binding that leaks into the evaluation config, fails here.
"""

import ast
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tiny

import gin
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import rewards

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / 'gin'
MODEL_FILES = {path.stem: path for path in sorted((GIN_DIR / 'models').glob('t5_1_1_*.gin'))}
METHOD_FILES = {path.stem: path for path in sorted((GIN_DIR / 'methods').glob('*.gin'))}

# (emb_dim, encoder = decoder layers, num_heads, head_dim, mlp_dim, dtype) of each size file:
# the public T5 1.1 hyperparameters, and the CPU-sized tiny net.
SIZES = {
    't5_1_1_tiny': (64, 2, 4, 16, 128, jnp.float32),
    't5_1_1_small': (512, 8, 6, 64, 1024, jnp.bfloat16),
    't5_1_1_base': (768, 12, 12, 64, 2048, jnp.bfloat16),
    't5_1_1_large': (1024, 24, 16, 64, 2816, jnp.bfloat16),
    't5_1_1_xl': (2048, 24, 32, 64, 5120, jnp.bfloat16),
    't5_1_1_xxl': (4096, 24, 64, 64, 10240, jnp.bfloat16),
}

# The GKDConfig fields each method file fixes (lmbda as its constant start value).
METHODS = {
    'sft': dict(divergence='cross_entropy', lmbda=0.0, fixed_data='targets', alpha=1.0),
    'supervised_kd': dict(divergence='forward_kl', lmbda=0.0, fixed_data='targets', alpha=1.0),
    'seqkd': dict(
        divergence='cross_entropy',
        lmbda=0.0,
        fixed_data='teacher_samples',
        teacher_sampling_temperature=0.0,
        alpha=1.0,
    ),
    'imitkd': dict(divergence='forward_kl', lmbda=0.5, fixed_data='targets', alpha=1.0),
    'fdistill': dict(
        divergence='total_variation', lmbda=0.5, fixed_data='teacher_samples', alpha=1.0
    ),
    'gkd': dict(divergence='forward_kl', lmbda=1.0, fixed_data='targets', alpha=1.0),
    'rl_gkd': dict(divergence='jsd', beta=0.9, lmbda=1.0, fixed_data='targets', alpha=0.5),
    'sampled_reverse_kl': dict(
        divergence='sampled_reverse_kl', lmbda=1.0, fixed_data='targets', alpha=1.0
    ),
}

# Small shapes for the traced steps; the vocabulary is shrunk so tracing stays cheap.
VOCAB_SIZE, BATCH, INPUT_LENGTH, TARGET_LENGTH = 384, 4, 8, 6


@pytest.fixture(autouse=True)
def clean_gin_config():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(files, bindings=()):
  """Parses gin files (a run file would define DROPOUT_RATE) plus extra bindings."""
  gin.parse_config_files_and_bindings(
      [str(path) for path in files], ['DROPOUT_RATE = 0.0', *bindings]
  )


def _macro(name):
  """The value of gin macro `name`, calling the configurable it references, if any."""
  value = gin.query_parameter('%' + name)
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()
  return value


def _gkd_config_fields(config):
  fields = {
      name: getattr(config, name)
      for name in ('divergence', 'beta', 'fixed_data', 'alpha', 'teacher_sampling_temperature')
  }
  fields['lmbda'] = config.lmbda.start
  return fields


def test_every_gin_file_has_a_case():
  assert set(MODEL_FILES) == set(SIZES)
  assert set(METHOD_FILES) == set(METHODS)


@pytest.mark.parametrize('size', sorted(SIZES))
def test_model_file_builds_its_size(size):
  _parse([MODEL_FILES[size]], ['DROPOUT_RATE = 0.1'])
  config = _macro(size.upper())
  emb_dim, num_layers, num_heads, head_dim, mlp_dim, dtype = SIZES[size]
  assert isinstance(config, network.T5Config)
  assert (
      config.emb_dim,
      config.num_encoder_layers,
      config.num_decoder_layers,
      config.num_heads,
      config.head_dim,
      config.mlp_dim,
  ) == (emb_dim, num_layers, num_layers, num_heads, head_dim, mlp_dim)
  assert config.dtype == jnp.dtype(dtype)
  assert config.vocab_size == 32128
  assert config.mlp_activations == ('gelu', 'linear')
  assert not config.logits_via_embedding
  assert config.dropout_rate == 0.1  # %DROPOUT_RATE, defined by the run


def test_small_has_the_published_parameter_count():
  """google/t5-v1_1-small has 76,961,152 parameters: the file's hyperparameters are T5 1.1's."""
  _parse([MODEL_FILES['t5_1_1_small']])
  module = network.Transformer(_macro('T5_1_1_SMALL'))
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  variables = jax.eval_shape(
      lambda key, x: module.init(key, x, x, x, enable_dropout=False), jax.random.PRNGKey(0), tokens
  )
  sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(variables['params'])]
  assert sum(sizes) == 76_961_152


def test_student_and_teacher_of_different_sizes_in_one_config():
  _parse(
      [MODEL_FILES['t5_1_1_small'], MODEL_FILES['t5_1_1_xl']],
      [
          'STUDENT_CONFIG = %T5_1_1_SMALL',
          'TEACHER_CONFIG = %T5_1_1_XL',
          # A scoped override reaches its own size only.
          't5_1_1_small/network.T5Config.dtype = "float32"',
      ],
  )
  student, teacher = _macro('STUDENT_CONFIG'), _macro('TEACHER_CONFIG')
  assert (student.emb_dim, student.num_encoder_layers, student.dtype) == (512, 8, jnp.float32)
  assert (teacher.emb_dim, teacher.num_encoder_layers, teacher.dtype) == (2048, 24, jnp.bfloat16)
  assert student.vocab_size == teacher.vocab_size


def _tiny_model(gkd_config):
  """A GKDModel of tiny student and teacher (none for SFT) from the parsed gin config."""
  vocabulary = seqio.PassThroughVocabulary(VOCAB_SIZE, eos_id=1)
  student = network.Transformer(_macro('STUDENT_CONFIG'))
  teacher = network.Transformer(_macro('TEACHER_CONFIG')) if gkd_config.needs_teacher else None
  return models.GKDModel(student, teacher, vocabulary, vocabulary, gkd=gkd_config)


def _batch():
  targets = np.full((BATCH, TARGET_LENGTH), 5)
  targets[:, -1] = 1
  return tiny.encdec_batch(np.full((BATCH, INPUT_LENGTH), 7), targets)


@functools.lru_cache(maxsize=None)
def _param_shapes(config):
  """Shapes of the params of a `network.Transformer(config)`, traced once per config."""
  module = network.Transformer(config)
  inputs = jax.ShapeDtypeStruct((BATCH, INPUT_LENGTH), jnp.int32)
  targets = jax.ShapeDtypeStruct((BATCH, TARGET_LENGTH), jnp.int32)
  return jax.eval_shape(
      lambda key, x, y: module.init(key, x, y, y, enable_dropout=False)['params'],
      jax.random.PRNGKey(0),
      inputs,
      targets,
  )


def _trace_steps(model):
  """Shapes of the (loss, aux) of a train step and of an eval step, traced only."""
  params = _param_shapes(model.module.config)
  mutables = (
      {models.TEACHER_COLLECTION: _param_shapes(model.teacher_module.config)}
      if model.teacher_module is not None
      else None
  )
  train = jax.eval_shape(
      lambda p, m: model.loss_fn(p, _batch(), jax.random.PRNGKey(1), m), params, mutables
  )
  evaluation = jax.eval_shape(lambda p, m: model.eval_fn(p, _batch(), m), params, mutables)
  return train, evaluation


@pytest.mark.parametrize('method', sorted(METHODS))
def test_method_file_builds_its_config_and_step(method):
  _parse(
      [MODEL_FILES['t5_1_1_tiny'], METHOD_FILES[method]],
      [
          'STUDENT_CONFIG = %T5_1_1_TINY',
          'TEACHER_CONFIG = %T5_1_1_TINY',
          f't5_1_1_tiny/network.T5Config.vocab_size = {VOCAB_SIZE}',
      ],
  )
  config = _macro('GKD')
  assert isinstance(config, objective.GKDConfig)
  fields = _gkd_config_fields(config)
  assert {name: fields[name] for name in METHODS[method]} == METHODS[method]
  assert config.lmbda.is_constant
  assert config.sampling_temperature == 1.0  # the paper samples the student at temperature 1
  if method == 'rl_gkd':
    assert isinstance(config.reward, rewards.ExactMatchReward)

  # The method's bindings are scoped: a GKDConfig built in code (as eval_fn does) sees none.
  plain = objective.GKDConfig(divergence='forward_kl', lmbda=0.0)
  assert (plain.alpha, plain.fixed_data, plain.reward) == (1.0, 'targets', None)

  (loss, aux), (eval_loss, eval_metrics) = _trace_steps(_tiny_model(config))
  metrics = aux if method == 'sft' else aux[0]  # with a teacher, aux is (metrics, mutables)
  assert loss.shape == eval_loss.shape == ()
  assert ('reward' in metrics) == (method == 'rl_gkd')
  # Cross-entropy (SFT, SeqKD) computes no teacher logits, hence no teacher agreement; the
  # sampled-token estimator uses the teacher's log-prob of each token only.
  assert ('token_agreement' in metrics) == (
      config.divergence not in ('cross_entropy', 'sampled_reverse_kl')
  )
  assert 'loss' in eval_metrics


def test_gkd_sweep_macros_override_the_defaults():
  _parse([METHOD_FILES['gkd']], ['LMBDA = 0.5', "DIVERGENCE = 'jsd'", 'BETA = 0.9'])
  fields = _gkd_config_fields(_macro('GKD'))
  assert (fields['lmbda'], fields['divergence'], fields['beta']) == (0.5, 'jsd', 0.9)


def test_rl_gkd_alpha_macro_and_scoped_field_override():
  _parse(
      [METHOD_FILES['rl_gkd']],
      ['ALPHA = 0.05', 'gkd/objective.GKDConfig.teacher_temperature = 0.1'],
  )
  config = _macro('GKD')
  assert (config.alpha, config.teacher_temperature, config.beta) == (0.05, 0.1, 0.9)


def test_imitkd_schedule_from_its_comment():
  """The non-increasing schedule shown in imitkd.gin's comment binds and decays 1 -> 0.5."""
  text = METHOD_FILES['imitkd'].read_text()
  bindings = [
      line
      for line in re.findall(r'^#\s+(\S+ = .+)$', text, flags=re.MULTILINE)
      if 'LambdaSchedule' in line
  ]
  assert len(bindings) == 4
  _parse([METHOD_FILES['imitkd']], bindings)
  schedule = _macro('GKD').lmbda
  assert isinstance(schedule, objective.LambdaSchedule) and not schedule.is_constant
  values = [float(schedule(jnp.asarray(step))) for step in (0, 5_000, 10_000, 40_000)]
  assert values == pytest.approx([1.0, 0.75, 0.5, 0.5])


# ------------------------------------------------------------------------ decoder-only models

DECODER_ONLY_FILES = {
    path.stem: path for path in sorted((GIN_DIR / 'models').glob('decoder_only_*.gin'))
}
# (emb_dim, layers, num_heads, head_dim, mlp_dim) of T5X's decoder-only sizes
# (t5x/examples/decoder_only/models/*.gin), and the parameter count of each.
DECODER_ONLY_SIZES = {
    'decoder_only_base': ((768, 12, 12, 64, 2048), 109_628_544),
    'decoder_only_large': ((1024, 24, 16, 64, 2816), 341_231_104),
    'decoder_only_xl': ((2048, 24, 32, 64, 5120), 1_223_527_424),
    'decoder_only_xxl': ((4096, 24, 64, 64, 10240), 4_762_310_656),
}


def _t5x_decoder_only_sizes(size):
  """T5X's own TransformerConfig values for a size, read off its installed gin files (base.gin,
  then the size's overrides), or None where they are not installed."""
  try:
    import t5x
  except ImportError:
    return None
  directory = pathlib.Path(t5x.__file__).parent / 'examples' / 'decoder_only' / 'models'
  if not (directory / 'base.gin').is_file():
    return None
  values = {}
  for name in ('base', size):
    text = (directory / f'{name}.gin').read_text()
    block = text.split('network.TransformerConfig:')[-1]
    values.update(re.findall(r'^\s+(\w+) = ([^#\n]+?)\s*(?:#.*)?$', block, flags=re.MULTILINE))
  return values


def test_every_decoder_only_size_file_has_a_case():
  assert set(DECODER_ONLY_FILES) == set(DECODER_ONLY_SIZES)


@pytest.mark.parametrize('size', sorted(DECODER_ONLY_SIZES))
def test_decoder_only_size_file_builds_t5x_sizes(size):
  from gkd_t5x import decoder_only

  _parse([DECODER_ONLY_FILES[size]], ['DROPOUT_RATE = 0.1'])
  config = _macro(size.upper())
  assert isinstance(config, decoder_only.DecoderOnlyConfig)
  (emb_dim, num_layers, num_heads, head_dim, mlp_dim), num_params = DECODER_ONLY_SIZES[size]
  got = (config.emb_dim, config.num_layers, config.num_heads, config.head_dim, config.mlp_dim)
  assert got == (emb_dim, num_layers, num_heads, head_dim, mlp_dim)
  assert (config.vocab_size, config.dtype, config.mlp_activations) == (
      32128,
      jnp.dtype('bfloat16'),
      ('gelu', 'linear'),
  )
  assert config.logits_via_embedding and config.dropout_rate == 0.1
  module = decoder_only.DecoderOnlyTransformer(config)
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  variables = jax.eval_shape(
      lambda key, x: module.init(key, x, x, enable_dropout=False), jax.random.PRNGKey(0), tokens
  )
  assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables['params'])) == num_params
  theirs = _t5x_decoder_only_sizes(size.split('_')[-1])
  if theirs is not None:
    fields = ('emb_dim', 'num_layers', 'num_heads', 'head_dim', 'mlp_dim', 'vocab_size')
    assert {name: int(theirs[name]) for name in fields} == {
        name: getattr(config, name) for name in fields
    }
    assert {
        name: ast.literal_eval(theirs[name])
        for name in ('dtype', 'mlp_activations', 'logits_via_embedding')
    } == {
        'dtype': 'bfloat16',
        'mlp_activations': config.mlp_activations,
        'logits_via_embedding': True,
    }


def test_decoder_only_model_file_builds_the_model(tmp_path):
  # A vocabulary of the model's size in place of the T5 SentencePiece model (read from GCS).
  vocabulary = tmp_path / 'vocabulary.gin'
  vocabulary.write_text(
      'from __gin__ import dynamic_registration\nimport seqio\n'
      'VOCABULARY = @seqio.PassThroughVocabulary()\n'
      'seqio.PassThroughVocabulary.size = 32128\n'
  )
  _parse(
      [
          GIN_DIR / 'models' / 'gkd_decoder_only_model.gin',
          DECODER_ONLY_FILES['decoder_only_base'],
          DECODER_ONLY_FILES['decoder_only_xl'],
          METHOD_FILES['gkd'],
          vocabulary,
      ],
      [
          'STUDENT_CONFIG = %DECODER_ONLY_BASE',
          'TEACHER_CONFIG = %DECODER_ONLY_XL',
          "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 6}",
      ],
  )
  model = _macro('MODEL')
  assert isinstance(model, models.GKDDecoderOnlyModel)
  assert (model.module.config.emb_dim, model.teacher_module.config.emb_dim) == (768, 2048)
  assert model.inputs_bidirectional_attention
  assert model.split_widths(14) == (8, 6)
  assert model.gkd.lmbda.start == 1.0
