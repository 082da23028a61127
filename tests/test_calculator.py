"""The calculator: exact expression evaluation, corrected annotations, and calculator-assisted
decoding (forced annotation results inside the jitted decoding loop)."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tiny

from gkd_t5x import calculator
from gkd_t5x import decoding
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective

VOCABULARY = seqio.ByteVocabulary()
V = 384  # the byte vocabulary's 259 ids padded, as the arithmetic models pad it
L = 16


def scripted_model(scripts):
  """A decoder that, at step t, puts nearly all mass on the t-th token of its row's script
  (then EOS), whatever it was fed: forced tokens shift nothing in the script."""
  ids = np.ones((len(scripts), L + 1), np.int32)  # EOS after the script
  for row, text in enumerate(scripts):
    encoded = VOCABULARY.encode(text)
    ids[row, : len(encoded)] = encoded
  logits_BxLxV = jax.nn.one_hot(ids, V) * 30.0 - 15.0

  def tokens_to_logits(tokens_Bx1, cache, position):
    del tokens_Bx1
    return logits_BxLxV[:, position], cache

  return tokens_to_logits, jnp.zeros((len(scripts), 1))


def decode(scripts, forcing, **kwargs):
  tokens_to_logits, cache = scripted_model(scripts)
  out = jax.jit(
      lambda c: decoding.greedy_decode(
          tokens_to_logits,
          c,
          batch_size=len(scripts),
          max_decode_length=L,
          forcing=forcing,
          **kwargs,
      )
  )(cache)
  texts = [VOCABULARY.decode([int(i) for i in row if i > 1]) for row in np.asarray(out.tokens)]
  return texts, out


def test_calculator_corrects_the_result_the_model_would_write():
  scripts = ['<<2*3=7>>x', 'no annotation', '<<(9-1)/4=1>>', '<<a=5>>']
  forcing = calculator.calculator_forcing(VOCABULARY, V)
  texts, out = decode(scripts, forcing)
  # The bad expression 'a' is left to the model, as is text without annotations.
  assert texts == ['<<2*3=6>>x', 'no annotation', '<<(9-1)/4=2>>', '<<a=5>>']
  without, _ = decode(scripts, None)
  assert without == scripts
  # A forced token counts with the model's log probability of it: the forced '6' has logit
  # -15 against +15 for the scripted '7', so row 0 pays about -30 for it.
  log_probs = np.asarray(out.log_probs)
  assert log_probs[0] < -29.0 and abs(log_probs[1]) < 1e-3


def test_forcing_works_when_sampling_and_with_a_pure_jax_rule():
  trigger = jnp.zeros((V,), bool).at[VOCABULARY.encode('=')[0]].set(True)
  forced = jnp.asarray(VOCABULARY.encode('42') + [0], jnp.int32)

  def rule(tokens_BxL, step, ask_B):
    del tokens_BxL, step
    return jnp.where(ask_B[:, None], forced[None, :], 0)

  forcing = decoding.TokenForcing(trigger_ids=trigger, fn=rule, max_forced=3)
  tokens_to_logits, cache = scripted_model(['x=99;', 'y'])
  out = decoding.temperature_sample(
      tokens_to_logits,
      cache,
      rng=jax.random.PRNGKey(0),
      batch_size=2,
      max_decode_length=L,
      forcing=forcing,
  )
  texts = [VOCABULARY.decode([int(i) for i in row if i > 1]) for row in np.asarray(out.tokens)]
  assert texts == ['x=42;', 'y']


def test_model_decodes_with_the_calculator_and_rejects_it_for_beam_search():
  config = tiny.t5_config(V)
  gkd = objective.GKDConfig(divergence='cross_entropy', lmbda=0.0)
  with pytest.raises(ValueError, match='calculator.*not "beam"'):
    models.GKDModel(
        network.Transformer(config),
        None,
        VOCABULARY,
        VOCABULARY,
        gkd=gkd,
        decode_method='beam',
        calculator=True,
    )
  model = models.GKDModel(
      network.Transformer(config), None, VOCABULARY, VOCABULARY, gkd=gkd, calculator=True
  )
  shapes = {
      'encoder_input_tokens': (2, 6),
      'decoder_input_tokens': (2, 8),
      'decoder_target_tokens': (2, 8),
  }
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)['params']
  batch = {name: jnp.full(shape, 5, jnp.int32) for name, shape in shapes.items()}
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  assert tokens.shape == (2, 8) and aux['scores'].shape == (2,)


@pytest.mark.parametrize(
    'text,corrected',
    [
        ('He has <<2*3=7>>7 eggs.', 'He has <<2*3=6>>7 eggs.'),
        ('<<48/2=23>>', '<<48/2=24>>'),
        ('<<10/4=2>>', '<<10/4=2.5>>'),
        ('<<10/3=3>>', '<<10/3=3.333333>>'),
        ('<<(3+5)*2=13>>', '<<(3+5)*2=16>>'),
        ('<<2+3*4=20>>', '<<2+3*4=14>>'),
        ('<<-2**2=4>>', '<<-2**2=-4>>'),
        ('<<7//2=3.5>> <<7%3=0>> <<2**10=0>>', '<<7//2=3>> <<7%3=1>> <<2**10=1024>>'),
        ('<<0.1*3=0.31>>', '<<0.1*3=0.3>>'),
        ('<<1,000*3=300>>', '<<1,000*3=3000>>'),
        ('<<5-8=3>>', '<<5-8=-3>>'),
        # Text outside annotations, and correct annotations, are untouched.
        ('24 is 48/2 = <<48/2=24>>24. #### 24', '24 is 48/2 = <<48/2=24>>24. #### 24'),
    ],
)
def test_calculator_corrects_annotations(text, corrected):
  assert calculator.calculator(text) == corrected


@pytest.mark.parametrize(
    'expression',
    [
        '__import__("os").system("echo hacked")',
        'x*2',
        'len("abc")',
        '(1).__class__',
        '[1, 2][0]',
        '1 if 1 else 2',
        '2 < 3',
        'True + 1',
        '"a" * 3',
        '1 / 0',
        '2 ** 10 ** 10',
        '(-8) ** 0.5',
        '+3',
        '3 +',
        '',
    ],
)
def test_evaluate_expression_rejects_anything_but_arithmetic(expression):
  with pytest.raises(ValueError):
    calculator.evaluate_expression(expression)
  # The calculator leaves such annotations as they are.
  annotation = f'<<{expression}=1>>'
  if '=' not in expression and '<' not in expression:
    assert calculator.calculator(annotation) == annotation


def test_evaluate_expression_is_exact():
  assert calculator.evaluate_expression('0.1 + 0.2') == fractions.Fraction(3, 10)
  assert calculator.evaluate_expression('1/3 * 3') == 1
  assert calculator.evaluate_expression('2 ** -2') == fractions.Fraction(1, 4)
  assert calculator.format_result(fractions.Fraction(-1, 3)) == '-0.333333'
  assert calculator.format_result(fractions.Fraction(2, 3)) == '0.666667'
  assert calculator.format_result(2**0.5) == '1.414214'


def test_complete_calculator_annotation():
  assert calculator.complete_calculator_annotation('She sold 48/2 = <<48/2=') == '24>>'
  assert calculator.complete_calculator_annotation('<<24+48=') == '72>>'
  assert calculator.complete_calculator_annotation('So <<(1+2)/4=') == '0.75>>'
  # Not right after the '=' of an open annotation.
  assert calculator.complete_calculator_annotation('She sold 48/2 = <<48/2=24>>') is None
  assert calculator.complete_calculator_annotation('She sold 48/2 =') is None
  assert calculator.complete_calculator_annotation('<<48/2=2') is None
  assert calculator.complete_calculator_annotation('<<48/2') is None
  # Not an expression the calculator takes.
  assert calculator.complete_calculator_annotation('<<open("f")=') is None
  assert calculator.complete_calculator_annotation('<<1/0=') is None
