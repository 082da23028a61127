"""Several teachers in one step (`gkd_t5x.teachers`): a mixed batch against each teacher alone.

Two tiny teachers of different sizes score their own rows of one batch. References: the same
model with one `teacher_module`, the row's own teacher, on the same batch with every other row's
loss weight set to 0 (so sampling keys, shapes and the student are those of the mixed step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tiny

from gkd_t5x import costs
from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import teachers

VOCAB = 16
I, L = 5, 6
B = 6
VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
# Teacher 'a' gets rows 0-1, 'b' rows 2-5 (one block: parts 1 and 2 of three units of 2 rows).
ROUTING = teachers.Routing(('a', 'b'), (1, 2))
ROWS = {'a': [0, 1], 'b': [2, 3, 4, 5]}
TEMPERATURES = {'a': 0.5, 'b': 2.0}

ARCHITECTURES = {
    'encoder_decoder': dict(
        student=tiny.transformer(VOCAB, 8, 1),
        teachers={'a': tiny.transformer(VOCAB, 16, 2), 'b': tiny.transformer(VOCAB, 8, 1, 32)},
    ),
    'decoder_only': dict(
        student=tiny.decoder_only_transformer(VOCAB, 8, 1),
        teachers={
            'a': tiny.decoder_only_transformer(VOCAB, 16, 2),
            'b': tiny.decoder_only_transformer(VOCAB, 8, 1),
        },
    ),
}


def make_model(architecture, teacher_modules=None, teacher_module=None, **gkd):
  """A GKD model of `architecture` with `teachers` {name: module} or one `teacher_module`."""
  parts = ARCHITECTURES[architecture]
  several = None
  if teacher_modules is not None:
    several = {
        name: teachers.Teacher(module, None, [f'task_{name}'], temperature=TEMPERATURES[name])
        for name, module in teacher_modules.items()
    }
  config = objective.GKDConfig(**gkd)
  if architecture == 'encoder_decoder':
    return models.GKDModel(
        parts['student'], teacher_module, VOCABULARY, VOCABULARY, gkd=config, teachers=several
    )
  return models.GKDDecoderOnlyModel(
      parts['student'],
      teacher_module,
      VOCABULARY,
      gkd=config,
      task_feature_lengths={'inputs': I, 'targets': L},
      teachers=several,
  )


def make_batch(architecture, seed=0):
  """[B] rows of model features with inputs and targets of several lengths (EOS 1, padding 0)."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(1, L, B)
  inputs = rng.randint(2, VOCAB, (B, I)) * (np.arange(I) < rng.randint(1, I + 1, (B, 1)))
  targets = rng.randint(2, VOCAB, (B, L)) * (np.arange(L) < lengths[:, None])
  targets[np.arange(B), lengths] = 1
  if architecture == 'encoder_decoder':
    return tiny.encdec_batch(inputs, targets)
  return prefix_lm_batch(inputs, targets)


def prefix_lm_batch(inputs, targets):
  """seqio's prefix-LM features of right-padded inputs [B, I] and targets [B, L]."""
  rows = np.zeros((B, I + L), np.int32)
  causal = np.zeros((B, I + L), np.int32)
  weights = np.zeros((B, I + L), np.float32)
  for b in range(B):
    x, y = inputs[b][inputs[b] > 0], targets[b][targets[b] > 0]
    rows[b, : len(x) + len(y)] = np.concatenate([x, y])
    causal[b, : len(x) + 1] = 1
    weights[b, len(x) : len(x) + len(y)] = 1
  return {
      'decoder_target_tokens': jnp.asarray(rows),
      'decoder_input_tokens': objective.shift_right(jnp.asarray(rows)),
      'decoder_causal_attention': jnp.asarray(causal),
      'decoder_loss_weights': jnp.asarray(weights),
  }


def only_row(batch, row):
  """The batch with every loss weight outside `row` set to 0."""
  keep = (np.arange(B) == row)[:, None]
  return dict(batch, decoder_loss_weights=batch['decoder_loss_weights'] * keep)


@pytest.fixture(scope='module', params=sorted(ARCHITECTURES))
def setup(request):
  architecture = request.param
  modules = ARCHITECTURES[architecture]['teachers']
  mixed = make_model(architecture, modules, lmbda=0.5).with_routing(ROUTING)
  batch = make_batch(architecture)
  shapes = {name: value.shape for name, value in batch.items()}
  variables = mixed.get_initial_variables(jax.random.PRNGKey(0), shapes)
  return architecture, mixed, batch, variables


def loss_and_grad(model, frozen, rng):
  """jit(params, batch) -> (loss, gradient) of `model`'s training step."""
  return jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, rng, frozen)[0]))


@pytest.mark.parametrize('lmbda', [0.0, 1.0])
def test_each_row_gets_the_loss_and_gradient_of_its_own_teacher_alone(setup, lmbda):
  architecture, _, batch, variables = setup
  modules = ARCHITECTURES[architecture]['teachers']
  mixed = make_model(architecture, modules, lmbda=lmbda).with_routing(ROUTING)
  rng = jax.random.PRNGKey(3)
  params = variables['params']
  mixed_step = loss_and_grad(mixed, {'teacher': variables['teacher']}, rng)
  for name, rows in ROWS.items():
    # One teacher at its temperature: the mixed model's per-teacher temperature moved here.
    alone = make_model(
        architecture,
        teacher_module=modules[name],
        lmbda=lmbda,
        teacher_temperature=TEMPERATURES[name],
    )
    alone_step = loss_and_grad(alone, {'teacher': variables['teacher'][name]}, rng)
    for row in rows:
      masked = only_row(batch, row)
      want_loss, want_grad = alone_step(params, masked)
      got_loss, got_grad = mixed_step(params, masked)
      assert float(want_loss) > 0
      np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, err_msg=f'row {row}')
      for key, value in tiny.flat(want_grad).items():
        np.testing.assert_allclose(
            tiny.flat(got_grad)[key], value, rtol=1e-4, atol=1e-7, err_msg=f'row {row} {key}'
        )


def test_the_batch_loss_is_the_mean_of_the_teachers_rows_and_each_is_reported(setup):
  architecture, mixed, batch, variables = setup
  frozen = {'teacher': variables['teacher']}
  loss, (metrics, _) = mixed.loss_fn(variables['params'], batch, jax.random.PRNGKey(1), frozen)
  values = {name: float(metric.compute()) for name, metric in metrics.items()}
  want = sum(values[f'divergence/{name}'] * len(rows) for name, rows in ROWS.items()) / B
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  for stat in ('token_agreement', 'teacher_entropy', 'student_entropy', 'num_sequences'):
    assert {f'{stat}/a', f'{stat}/b'} <= set(values), sorted(values)
  assert values['num_sequences/a'] == 2 and values['num_sequences/b'] == 4
  evaluation = mixed.on_policy_eval_fn(variables['params'], batch, jax.random.PRNGKey(2), frozen)
  assert {'on_policy_divergence/a', 'on_policy_teacher_entropy/b'} <= set(evaluation)


def teacher_flops(model, params, batch, frozen):
  """XLA's FLOPs of the teacher's teacher-forced logits of the batch's targets alone."""
  features = model.objective_batch(batch)
  targets = features['decoder_target_tokens']

  def logits(frozen):
    teacher = model.teacher_policy(frozen)
    prompt = teacher.read_prompt(features['encoder_input_tokens'])
    return teacher.logits(prompt, objective.shift_right(targets), targets)

  return costs.xla_flops(jax.jit(logits).lower(frozen).compile())


def test_compiled_teacher_flops_follow_each_teachers_rows(setup):
  """The supervised step's FLOPs change between layouts exactly as the teachers' forward passes
  on their row counts do: a teacher runs over its own rows only."""
  architecture, _, batch, variables = setup
  modules = ARCHITECTURES[architecture]['teachers']
  params, frozen = variables['params'], {'teacher': variables['teacher']}
  step_flops, forward_flops = {}, {}
  for layout in ((1, 2), (2, 1)):
    model = make_model(architecture, modules, lmbda=0.0).with_routing(
        teachers.Routing(('a', 'b'), layout)
    )
    step = loss_and_grad(model, frozen, jax.random.PRNGKey(0))
    step_flops[layout] = costs.xla_flops(step.lower(params, batch).compile())
    forward_flops[layout] = teacher_flops(model, params, batch, frozen)
  per_row = {}
  for name in ('a', 'b'):
    alone = make_model(architecture, teacher_module=modules[name], lmbda=0.0)
    per_row[name] = teacher_flops(alone, params, batch, {'teacher': variables['teacher'][name]}) / B
  assert per_row['a'] > 2 * per_row['b']  # teachers of different sizes
  for (rows_a, rows_b), flops in forward_flops.items():
    want = 2 * rows_a * per_row['a'] + 2 * rows_b * per_row['b']
    np.testing.assert_allclose(flops, want, rtol=0.02)
  # In the whole step XLA fuses the teachers' pass with the loss, which trims a few percent.
  step_change = step_flops[(1, 2)] - step_flops[(2, 1)]
  np.testing.assert_allclose(step_change, 2 * (per_row['b'] - per_row['a']), rtol=0.08)


def test_refusals_name_the_setting():
  student = tiny.transformer(VOCAB, 8, 1)
  with pytest.raises(ValueError, match=r"teachers\['b'\] has vocab_size 32; it must be the stud"):
    models.GKDModel(
        student,
        None,
        VOCABULARY,
        VOCABULARY,
        teachers={
            'a': teachers.Teacher(tiny.transformer(VOCAB), None, ['x']),
            'b': teachers.Teacher(tiny.transformer(2 * VOCAB), None, ['y']),
        },
    )
  with pytest.raises(ValueError, match='teacher_module or teachers, not both'):
    models.GKDModel(
        student,
        tiny.transformer(VOCAB),
        VOCABULARY,
        VOCABULARY,
        teachers={'a': teachers.Teacher(tiny.transformer(VOCAB), None, ['x'])},
    )
  with pytest.raises(ValueError, match='DecoderOnlyConfig; this model takes teachers of its'):
    models.GKDModel(
        student,
        None,
        VOCABULARY,
        VOCABULARY,
        teachers={'a': teachers.Teacher(tiny.decoder_only_transformer(VOCAB), None, ['x'])},
    )
