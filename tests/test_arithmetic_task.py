"""The arithmetic seqio task: worked targets, determinism, disjoint splits, seqio, metrics."""

import math
import re

import numpy as np
import pytest
import seqio

import gkd_t5x.tasks  # noqa: F401  (registers the seqio tasks)
from gkd_t5x.tasks import arithmetic

SUM3 = arithmetic.ARITHMETIC_SUM3
CHAIN5 = arithmetic.ARITHMETIC_CHAIN5
STEP_RE = re.compile(r'(-?\d+)([-+*])(\d+)=(-?\d+)')


def left_to_right(problem):
  """Independent evaluator of 'a<op>b<op>c...=' with no operator precedence."""
  assert problem.endswith('=')
  tokens = re.findall(r'\d+|[-+*]', problem[:-1])
  acc = int(tokens[0])
  for op, b in zip(tokens[1::2], tokens[2::2]):
    acc = eval(f'({acc}){op}{b}')
  return acc


def check_example(inputs, targets, num_terms):
  *steps, answer = targets.split(';')
  assert len(steps) == num_terms - 1, targets
  assert answer.startswith('#')
  operands = re.findall(r'\d+', inputs)
  ops = re.findall(r'[-+*]', inputs)
  acc = int(operands[0])
  for i, step in enumerate(steps):
    match = STEP_RE.fullmatch(step)
    assert match, step
    a, op, b, c = match.groups()
    # Each step starts from the previous result and takes the next operand and operator.
    assert (int(a), op, b) == (acc, ops[i], operands[i + 1]), (inputs, targets)
    assert eval(f'({a}){op}{b}') == int(c), step
    acc = int(c)
  assert int(answer[1:]) == acc == left_to_right(inputs), (inputs, targets)


@pytest.mark.parametrize('config', [SUM3, CHAIN5], ids=['sum3', 'chain5'])
def test_targets_are_correct_worked_solutions(config):
  splits = arithmetic.generate_splits(**config)
  for inputs, targets in splits['validation']:
    check_example(inputs, targets, config['num_terms'])
  for inputs, targets in splits['train'][:2000]:
    check_example(inputs, targets, config['num_terms'])


def test_format_example_multiplication_and_negatives():
  assert arithmetic.format_example([47, 385, 92], '++') == (
      '47+385+92=',
      '47+385=432;432+92=524;#524',
  )
  # Left to right, no precedence: (2 + 3) * 4.
  assert arithmetic.format_example([2, 3, 4], ['+', '*']) == ('2+3*4=', '2+3=5;5*4=20;#20')
  assert arithmetic.format_example([3, 50, 8], ['-', '+']) == ('3-50+8=', '3-50=-47;-47+8=-39;#-39')
  splits = arithmetic.generate_splits(
      num_terms=4,
      max_value=20,
      operators=('+', '-', '*'),
      num_train=300,
      num_validation=100,
      num_test=100,
      seed=3,
  )
  for inputs, targets in splits['validation'] + splits['train']:
    check_example(inputs, targets, 4)
  used = set(''.join(inputs for inputs, _ in splits['train']))
  assert {'+', '-', '*'} <= used


def test_deterministic_and_seed_dependent():
  small = dict(num_terms=3, max_value=999, num_train=500, num_validation=100, num_test=100)
  first = arithmetic.generate_splits(**small, seed=0)
  arithmetic.unique_problems.cache_clear()
  again = arithmetic.generate_splits(**small, seed=0)
  assert first == again
  other = arithmetic.generate_splits(**small, seed=1)
  for split in arithmetic.SPLITS:
    assert first[split] != other[split]
  assert not set(first['validation']) & set(other['validation'])


@pytest.mark.parametrize('config', [SUM3, CHAIN5], ids=['sum3', 'chain5'])
def test_splits_disjoint_and_sized(config):
  splits = arithmetic.generate_splits(**config)
  sizes = {split: len(examples) for split, examples in splits.items()}
  assert sizes == {
      'train': config['num_train'],
      'validation': config['num_validation'],
      'test': config['num_test'],
  }
  problems = {split: {inputs for inputs, _ in examples} for split, examples in splits.items()}
  # No duplicate within a split either.
  assert {split: len(p) for split, p in problems.items()} == sizes
  assert not problems['train'] & problems['validation']
  assert not problems['train'] & problems['test']
  assert not problems['validation'] & problems['test']


def test_train_fraction_keeps_a_prefix():
  full = arithmetic.generate_splits(**SUM3)
  for fraction, expected in ((0.05, 2500), (0.25, 12500)):
    part = arithmetic.generate_splits(**SUM3, train_fraction=fraction)
    assert len(part['train']) == expected
    assert part['train'] == full['train'][:expected]
    assert part['validation'] == full['validation']
    assert part['test'] == full['test']
  # Validation and test do not depend on num_train either.
  fewer = arithmetic.generate_splits(**dict(SUM3, num_train=10))
  assert fewer['validation'] == full['validation'] and fewer['test'] == full['test']
  assert fewer['train'] == full['train'][:10]


@pytest.mark.parametrize(
    'config,lengths',
    [
        (SUM3, arithmetic.ARITHMETIC_SUM3_FEATURE_LENGTHS),
        (arithmetic.ARITHMETIC_SUM3_2DIGIT, arithmetic.ARITHMETIC_SUM3_2DIGIT_FEATURE_LENGTHS),
        (CHAIN5, arithmetic.ARITHMETIC_CHAIN5_FEATURE_LENGTHS),
    ],
    ids=['sum3', 'sum3_2digit', 'chain5'],
)
def test_feature_lengths_fit_every_split(config, lengths):
  measured = arithmetic.max_lengths(arithmetic.generate_splits(**config))
  for key in ('inputs', 'targets'):
    assert measured[key] + 1 <= lengths[key]  # + EOS
    assert lengths[key] % 8 == 0


def test_registered_tasks():
  names = seqio.TaskRegistry.names()
  for name in (
      'arithmetic_sum3',
      'arithmetic_sum3_train5pct',
      'arithmetic_sum3_train25pct',
      'arithmetic_sum3_2digit',
      'arithmetic_sum3_2digit_train5pct',
      'arithmetic_sum3_2digit_train25pct',
      'arithmetic_chain5',
      'arithmetic_chain5_train5pct',
      'arithmetic_chain5_train25pct',
  ):
    assert name in names
  source = seqio.get_mixture_or_task('arithmetic_sum3_train5pct').source
  assert source.num_input_examples('train') == 2500
  assert source.num_input_examples('validation') == 1000
  # Registering again with identical arguments is a no-op; with others it is an error.
  task = seqio.get_mixture_or_task('arithmetic_sum3')
  assert arithmetic.register_arithmetic_task('arithmetic_sum3', **SUM3) is task
  with pytest.raises(ValueError, match='already registered'):
    arithmetic.register_arithmetic_task('arithmetic_sum3', **dict(SUM3, seed=1))


@pytest.mark.parametrize(
    'name,lengths,config',
    [
        ('arithmetic_sum3', arithmetic.ARITHMETIC_SUM3_FEATURE_LENGTHS, SUM3),
        ('arithmetic_chain5', arithmetic.ARITHMETIC_CHAIN5_FEATURE_LENGTHS, CHAIN5),
    ],
    ids=['sum3', 'chain5'],
)
def test_seqio_dataset_round_trips(name, lengths, config):
  task = seqio.get_mixture_or_task(name)
  vocabulary = task.output_features['targets'].vocabulary
  assert isinstance(vocabulary, seqio.ByteVocabulary) and vocabulary.vocab_size == 259
  assert vocabulary.eos_id == 1
  ds = task.get_dataset(lengths, split='validation', shuffle=False)
  expected = arithmetic.generate_splits(**config)['validation']
  count = 0
  for ex, (inputs, targets) in zip(ds.as_numpy_iterator(), expected):
    for key, text in (('inputs', inputs), ('targets', targets)):
      ids = ex[key].tolist()
      assert ids[-1] == 1 and 1 not in ids[:-1]
      assert len(ids) == len(text) + 1 <= lengths[key]
      assert vocabulary.decode(ids[:-1]) == text
      assert ex[f'{key}_pretokenized'].decode() == text
    count += 1
  assert count == len(expected) == 1000


def test_seqio_other_splits_and_shuffle():
  task = seqio.get_mixture_or_task('arithmetic_sum3')
  lengths = arithmetic.ARITHMETIC_SUM3_FEATURE_LENGTHS
  test_ds = list(task.get_dataset(lengths, split='test', shuffle=False).as_numpy_iterator())
  assert len(test_ds) == 1000
  shuffled = task.get_dataset(lengths, split='test', shuffle=True, seed=7).as_numpy_iterator()
  first = [ex['inputs_pretokenized'] for ex in shuffled]
  assert sorted(first) == sorted(ex['inputs_pretokenized'] for ex in test_ds)
  train = task.get_dataset(lengths, split='train', shuffle=False).take(3).as_numpy_iterator()
  expected = arithmetic.generate_splits(**SUM3)['train'][:3]
  assert [ex['targets_pretokenized'].decode() for ex in train] == [t for _, t in expected]


def _first_train_positions(name, lengths, config, count=200):
  """Positions in the full train stream of the first `count` examples of a shuffled read."""
  position = {
      inputs: i for i, (inputs, _) in enumerate(arithmetic.generate_splits(**config)['train'])
  }
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split='train', shuffle=True, seed=3)
  return [position[ex['inputs_pretokenized'].decode()] for ex in ds.take(count).as_numpy_iterator()]


def test_whole_split_shuffle_reaches_the_whole_split():
  # seqio's buffered shuffle (the sum3 tasks) starts within the first buffer of the stream, so
  # a fraction task reads what the full task reads; chain5 permutes the whole split first.
  buffered = _first_train_positions(
      'arithmetic_sum3', arithmetic.ARITHMETIC_SUM3_FEATURE_LENGTHS, SUM3
  )
  assert max(buffered) < 1000 + 200
  lengths = arithmetic.ARITHMETIC_CHAIN5_FEATURE_LENGTHS
  full = _first_train_positions('arithmetic_chain5', lengths, CHAIN5)
  quarter = _first_train_positions('arithmetic_chain5_train25pct', lengths, CHAIN5)
  assert max(full) > 25000  # P(all 200 in the first half) = 2 ** -200
  assert max(quarter) < 12500 < max(full)
  assert len(set(full)) == len(full)


def test_metric_fns_through_seqio_postprocess():
  task = seqio.get_mixture_or_task('arithmetic_sum3')
  targets = [task.postprocess_fn(t, is_target=True) for t in (b'1+2=3;#3', b'4+5=9;#9')]
  predictions = [task.postprocess_fn(p, is_target=False) for p in ('1+2=3;#3', '4+5=8;#8')]
  results = {}
  for metric_fn in task.metric_fns:
    results.update(metric_fn(targets, predictions))
  # No step is written in another order: the share of those that are right is undefined.
  assert np.isnan(results.pop('reordered_step_accuracy'))
  assert results == {
      'accuracy': 50.0,
      'sequence_accuracy': 50.0,
      'step_accuracy': 50.0,
      'correction_rate': 0.0,
      'self_correction_rate': 0.0,
      'false_correction_rate': 0.0,
      'commuted_step_rate': 0.0,
      'reordered_step_rate': 0.0,
  }


def test_final_answer_accuracy():
  fa = arithmetic.final_answer_accuracy
  sa = arithmetic.sequence_accuracy
  targets = ['1+2=3;#3', '4+5=9;#9']
  assert fa(targets, ['1+2=3;#3', '4+5=8;#8']) == {'accuracy': 50.0}
  # Right answer, wrong steps: counts for the answer, not for the whole sequence.
  wrong_steps = ['1+2=4;#3', '4+5=9;#9']
  assert fa(targets, wrong_steps) == {'accuracy': 100.0}
  assert sa(targets, wrong_steps) == {'sequence_accuracy': 50.0}
  # No '#', unparsable or empty answers are wrong; the last '#' counts; negatives parse.
  assert fa(targets, ['1+2=3;3', '4+5=9;#nine'])['accuracy'] == 0.0
  assert fa(targets, ['1+2=3;#', '4+5=9;#9#8'])['accuracy'] == 0.0
  assert fa(['3-5=-2;#-2'], ['#7;#-2'])['accuracy'] == 100.0
  assert fa(['3-5=-2;#-2'], ['3-5=2;#2'])['accuracy'] == 0.0
  assert arithmetic.parse_final_answer('a;#-12 ') == -12
  assert arithmetic.parse_final_answer('12') is None
  assert math.isnan(fa([], [])['accuracy'])
  with pytest.raises(ValueError, match='same length'):
    fa(targets, targets[:1])


@pytest.mark.parametrize(
    'override,argument',
    [
        (dict(num_terms=1), 'num_terms'),
        (dict(max_value=0), 'max_value'),
        (dict(operators=('+', '/')), 'operators'),
        (dict(operators=()), 'operators'),
        (dict(operators='+-'), 'operators'),
        (dict(num_train=0), 'num_train'),
        (dict(num_validation=-1), 'num_validation'),
        (dict(num_test=0), 'num_test'),
        (dict(train_fraction=0.0), 'train_fraction'),
        (dict(train_fraction=1.5), 'train_fraction'),
        (dict(num_terms=2, max_value=3, num_train=20), 'num_train'),  # only 16 distinct problems
    ],
)
def test_bad_arguments(override, argument):
  kwargs = dict(SUM3, **override)
  with pytest.raises(ValueError, match=argument):
    arithmetic.generate_splits(**kwargs)
  with pytest.raises(ValueError, match=argument):
    arithmetic.register_arithmetic_task('arithmetic_bad_args', **kwargs)
  assert 'arithmetic_bad_args' not in seqio.TaskRegistry.names()


def test_bad_operator_names_the_allowed_ones():
  with pytest.raises(ValueError, match=re.escape("('+', '-', '*')")):
    arithmetic.generate_splits(**dict(SUM3, operators=('/',)))


def test_unique_problems_are_distinct_and_extend_the_same_stream():
  first = arithmetic.unique_problems(3, 999, ('+',), 52000, 12345)
  assert len({problem for problem, _ in first}) == 52000
  # A shorter request is the start of the same stream, so splits never depend on `total`.
  assert arithmetic.unique_problems(3, 999, ('+',), 1000, 12345) == first[:1000]
  np.testing.assert_equal(len(arithmetic.generate_splits(**SUM3)['train']), 50000)


def test_right_solutions_allow_either_order_of_commutative_steps():
  assert sorted(arithmetic.right_solutions('85+63+51=')) == [
      '63+85=148;148+51=199;#199',
      '63+85=148;51+148=199;#199',
      '85+63=148;148+51=199;#199',
      '85+63=148;51+148=199;#199',
  ]
  # Subtraction keeps its order, and a negative running result stays first.
  assert arithmetic.right_solutions('12-85+40=') == ['12-85=-73;-73+40=-33;#-33']
  with pytest.raises(ValueError, match='not an arithmetic problem'):
    arithmetic.right_solutions('hello')


@pytest.mark.parametrize(
    'sample, error',
    [
        ('85+63=148;148+51=199;#199', None),
        ('63+85=148;51+148=199;#199', None),
        ('85+63=138;138+51=189;#189', 7),  # a wrong digit of the first value
        ('65+63=128;', 1),  # '6' begins the other order ('63+85='), '5' neither
        ('35+63=', 0),
        ('83+65=', 1),  # a step begun in the other order, then the first operand's digit
        ('85+63=148;148+51=199;#19', 24),  # stops early
        ('85+63=148;148+51=199;#1999', 25),  # goes on
        ('85+63=14!148;', 8),  # a slip is an error where it is written, corrected or not
    ],
)
def test_first_error_finds_where_a_sample_leaves_every_right_solution(sample, error):
  assert arithmetic.first_error('85+63+51=', sample) == error
