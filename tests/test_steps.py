"""The on-policy testbed's knobs on step-by-step targets (tasks/steps.py), their seqio
preprocessors, and the arithmetic metrics that read corrections."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import seqio

from gkd_t5x.tasks import arithmetic
from gkd_t5x.tasks import steps

CHAIN5 = arithmetic.generate_splits(**arithmetic.ARITHMETIC_CHAIN5)['validation']
SUM3 = arithmetic.generate_splits(**arithmetic.ARITHMETIC_SUM3_2DIGIT)['validation']
ROOT = pathlib.Path(__file__).resolve().parents[1]
SLIPPED_STEP = re.compile(r'(-?\d+)([-+])(\d+)=(-?\d+)!(-?\d+)')


@pytest.mark.parametrize('kind', steps.SLIP_KINDS)
def test_slips_are_wrong_values_followed_by_the_right_ones(kind):
  config = steps.SlipConfig(rate=0.3, kind=kind, max_offset=9)
  rng = np.random.default_rng(0)
  num_steps = num_slips = 0
  for _, target in CHAIN5:
    slipped = steps.inject_slips_text(target, rng, config)
    # Removing the slips gives the target back: every later step and the answer are unchanged.
    assert steps.remove_slips(slipped) == target
    num_steps += target.count(';')
    for a, op, b, wrong, right in SLIPPED_STEP.findall(slipped):
      num_slips += 1
      assert int(right) == arithmetic.apply_operator(op, int(a), int(b))
      assert int(wrong) != int(right)
      if kind == 'offset':
        assert 1 <= abs(int(wrong) - int(right)) <= 9
      else:  # one digit replaced, the sign and the digit count kept
        assert len(wrong) == len(right) and (wrong[0] == '-') == (right[0] == '-')
        assert sum(x != y for x, y in zip(wrong, right)) == 1 and not re.match(r'-?0\d', wrong)
  # 4000 steps: the share of slipped steps is within 4 standard deviations of the rate.
  assert abs(num_slips / num_steps - 0.3) < 4 * np.sqrt(0.3 * 0.7 / num_steps)


def test_commuted_steps_keep_every_value_and_the_answer():
  rng = np.random.default_rng(0)
  num_commutable = num_commuted = 0
  for _, target in SUM3:
    commuted = steps.commute_steps_text(target, rng, 0.5)
    values = lambda text: re.findall(r'=(-?\d+)', text)
    assert values(commuted) == values(target) and commuted.split('#')[1] == target.split('#')[1]
    for before, after in zip(target.split(';')[:-1], commuted.split(';')[:-1]):
      a, b = re.match(r'(\d+)\+(\d+)=', before).groups()
      num_commutable += 1
      if after != before:
        num_commuted += 1
        assert after.startswith(f'{b}+{a}=')
  assert abs(num_commuted / num_commutable - 0.5) < 4 * np.sqrt(0.25 / num_commutable)
  # A negative running result stays first, and '-' steps never commute.
  chain = '12-85=-73;-73+40=-33;-33+7=-26;#-26'
  assert steps.commute_steps_text(chain, rng, 1.0) == chain


def test_a_commute_rate_outside_the_unit_interval_fails_at_registration():
  with pytest.raises(ValueError, match='commute_rate must be'):
    arithmetic.register_arithmetic_task(
        'never_registered', commute_rate=1.5, **arithmetic.ARITHMETIC_SUM3_2DIGIT
    )
  assert 'never_registered' not in seqio.TaskRegistry.names()


def test_slip_config_names_the_setting_and_its_allowed_values():
  for kwargs, message in [
      ({'rate': 0.0}, 'rate must be in'),
      ({'kind': 'typo'}, 'kind must be'),
      ({'marker': '#'}, 'marker must be'),
      ({'max_offset': 0}, 'max_offset'),
  ]:
    with pytest.raises(ValueError, match=message):
      steps.SlipConfig(**kwargs)


def test_slip_tasks_are_deterministic_per_seed_and_fit_their_lengths():
  task = seqio.get_mixture_or_task('arithmetic_chain5_slips30')
  lengths = arithmetic.ARITHMETIC_CHAIN5_SLIPS_FEATURE_LENGTHS

  def first(seed, count=200):
    dataset = task.get_dataset(lengths, split='train', shuffle=True, seed=seed)
    return [
        (ex['targets_pretokenized'].decode(), len(ex['targets']))
        for ex in dataset.take(count).as_numpy_iterator()
    ]

  once, again, other = first(3), first(3), first(4)
  assert once == again and once != other
  assert 0.15 < np.mean([target.count('!') / target.count(';') for target, _ in once]) < 0.45
  assert all(
      target.endswith(f'#{target.split("#")[1]}') and length == len(target) + 1
      for target, length in once
  )
  # The longest any problem can get: every step slipped to a wrong value one byte longer.
  longest = max(
      len(steps.remove_slips(t)) + sum(len(v) + 2 for v in re.findall(r'=(-?\d+)', t))
      for _, t in arithmetic.generate_splits(**arithmetic.ARITHMETIC_CHAIN5)['train']
  )
  assert longest + 1 <= lengths['targets']


def test_step_accuracy_and_self_correction_by_hand():
  target = '85+63=148;148+51=199;#199'
  predictions = [
      '85+63=149!148;148+51=199;#199',  # a slip, corrected: every step right
      '85+63=149;149+51=200;#200',  # a slip carried on: both steps lost
      '85+63=148!148;148+51=199;#199',
  ]  # a right step "corrected" anyway
  assert arithmetic.step_accuracy([target] * 3, predictions) == {
      'step_accuracy': pytest.approx(100 * (1 + 0 + 1) / 3)
  }
  got = arithmetic.self_correction([target] * 3, predictions)
  # Errors: '=149' twice (once corrected); right steps: 199, 149+51=200, 148 and 199.
  assert got == {
      'correction_rate': pytest.approx(200 / 3),
      'self_correction_rate': 50.0,
      'false_correction_rate': 25.0,
  }
  assert np.isnan(arithmetic.self_correction([target], [target])['self_correction_rate'])


def test_step_order_counts_steps_not_begun_with_the_running_result():
  target = '85+63=148;148+51=199;#199'
  predictions = [
      '63+85=148;51+148=199;#199',  # both steps commuted
      '85+63=149!148;51+148=199;#199',  # the corrected value is the running result
      '85+63=148;148+51=199;#199',  # the target's order
      '63+63=126;#126',
  ]  # begun in the other order, not finished (and wrong)
  assert arithmetic.step_order([target] * 4, predictions) == {
      'commuted_step_rate': pytest.approx(100 * 3 / 7),
      'reordered_step_rate': pytest.approx(100 * 4 / 7),
      'reordered_step_accuracy': pytest.approx(100 * 4 / 4),
  }
  wrong = arithmetic.step_order([target], ['63+63=127;#127'])
  assert (wrong['reordered_step_rate'], wrong['reordered_step_accuracy']) == (100.0, 0.0)
  # commute_steps_text writes the order that step_order reads.
  rng = np.random.default_rng(0)
  assert (
      arithmetic.step_order([target], [steps.commute_steps_text(target, rng, 1.0)])[
          'commuted_step_rate'
      ]
      == 100.0
  )
  empty = arithmetic.step_order([target], [''])
  assert all(np.isnan(value) for value in empty.values())


def test_slipped_values_carry_no_loss_weight():
  vocabulary = seqio.ByteVocabulary()
  text = '74+17=11!91;91-89=2;#2'
  ids = np.asarray(vocabulary.encode(text) + [1])
  weights = steps.slipped_value_weights(ids, vocabulary.encode('=')[0], vocabulary.encode('!')[0])
  assert ''.join(map(str, weights)) == '1' * 6 + '00' + '1' * (len(text) - 8) + '1'


def test_the_feature_converter_reads_a_tasks_loss_weights():
  """A slip task's wrong values get decoder_loss_weights 0; a task without loss weights gets
  exactly seqio's features."""
  from gkd_t5x import feature_converters

  lengths = arithmetic.ARITHMETIC_CHAIN5_SLIPS_FEATURE_LENGTHS
  vocabulary = seqio.ByteVocabulary()
  slipped = seqio.get_mixture_or_task('arithmetic_chain5_slips30').get_dataset(
      lengths, split='validation', shuffle=False
  )
  for example in feature_converters.EncDecFeatureConverter(pack=False)(slipped, lengths).take(50):
    tokens = example['decoder_target_tokens'].numpy()
    weights = example['decoder_loss_weights'].numpy()
    text = vocabulary.decode(tokens.tolist())
    masked = ''.join(ch for ch, w in zip(text, weights) if not w)
    assert masked == ''.join(re.findall(r'=(-?\d+)!', text))
    assert weights[len(text)] == 1 and not weights[len(text) + 1 :].any()  # EOS, then padding
  clean = seqio.get_mixture_or_task('arithmetic_chain5').get_dataset(
      lengths, split='validation', shuffle=False
  )
  ours = feature_converters.EncDecFeatureConverter(pack=False)(clean, lengths)
  theirs = seqio.EncDecFeatureConverter(pack=False)(clean, lengths)
  for a, b in zip(ours.take(20).as_numpy_iterator(), theirs.take(20).as_numpy_iterator()):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  with pytest.raises(ValueError, match='cannot be packed'):
    feature_converters.EncDecFeatureConverter(pack=True)(slipped, lengths)


def test_marker_probabilities_read_the_positions_after_step_values():
  from launch import probe_recovery

  vocabulary = seqio.ByteVocabulary()
  targets = np.asarray([vocabulary.encode('1+2=4!3;3+1=4;#4')])
  marker, separator = vocabulary.encode('!')[0], vocabulary.encode(';')[0]
  log_probs = np.full(targets.shape + (300,), -50.0)
  log_probs[0, :, marker] = np.log(np.linspace(0.01, 0.99, targets.shape[1]))
  got = probe_recovery.marker_probabilities(
      log_probs,
      targets,
      marker_id=marker,
      separator_id=separator,
      digit_ids=np.asarray(vocabulary.encode('0123456789')),
  )
  positions = np.linspace(0.01, 0.99, targets.shape[1])
  # '!' after '4' (index 5); ';' after '3' (index 7) and after '4' (index 13); not '#4' or '+'.
  np.testing.assert_allclose(got['after_wrong'], positions[[5]])
  np.testing.assert_allclose(got['after_right'], positions[[7, 13]])


def test_probe_recovery_runs_on_a_shipped_teacher():
  """The shipped clean teacher never writes the marker: detection and false alarms near 0."""
  result = subprocess.run(
      [
          sys.executable,
          'launch/probe_recovery.py',
          '--gin_file=gin/runs/probe_recovery.gin',
          '--gin_file=gin/experiments/arithmetic/chain5_slip_teacher.gin',
          "--gin.CHECKPOINT_PATH='launch/checkpoints/arithmetic_chain5_teacher'",
          '--gin.EVAL_NUM_EXAMPLES=16',
          '--gin.EVAL_BATCH_SIZE=8',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['task'] == 'arithmetic_chain5_slips30' and figures['num_right_values'] > 0
  assert figures['detection'] < 0.01 and figures['false_alarm'] < 0.01


def test_the_commuted_task_has_several_solutions_of_one_answer():
  task = seqio.get_mixture_or_task('arithmetic_sum3_2digit_commute50')
  dataset = task.get_dataset(
      arithmetic.ARITHMETIC_SUM3_2DIGIT_FEATURE_LENGTHS, split='validation', shuffle=False
  )
  written = [ex['targets_pretokenized'].decode() for ex in dataset.take(200).as_numpy_iterator()]
  clean = [target for _, target in SUM3[:200]]
  assert [w.split('#')[1] for w in written] == [c.split('#')[1] for c in clean]
  assert 0.6 < np.mean([w != c for w, c in zip(written, clean)]) < 0.9  # 1 - 0.5^2 = 0.75
