"""Chain-of-thought arithmetic: a seqio task generated from a seed, with no downloads.

Each example is one problem over non-negative integer operands, evaluated strictly left to right
(no operator precedence), and a worked solution with one step per operator:

  inputs:  '47+385+92='
  targets: '47+385=432;432+92=524;#524'

Every step is `a<op>b=c;` where `a` is the running result (negative results are written with a
leading '-', e.g. '3-50=-47;-47+8=-39;#-39'), and the final answer follows the last '#'.
Difficulty is a task parameter: the number of terms, the largest operand (operands are uniform
in [0, max_value]) and the operators, a subset of '+', '-', '*'.

Splits. The problems of one (num_terms, max_value, operators, seed) come from a single
deterministic stream of distinct problems: the first `num_validation` of them are 'validation',
the next `num_test` are 'test' and the next `num_train` are 'train'. The three splits therefore
never share a problem, and validation/test do not depend on `num_train` or `train_fraction`.
`train_fraction` keeps the first fraction of the train problems (data-efficiency experiments).

Metrics. `final_answer_accuracy` compares the integer after the last '#' of prediction and target
(a prediction without '#', or with an unparsable answer, is wrong); `sequence_accuracy` is the
exact match of the whole string; `step_accuracy` and `self_correction` read the steps (below).
All are in percent.

Features. 'inputs' and 'targets' are tokenized with `seqio.ByteVocabulary()` (one id per UTF-8
byte, offset by 3: pad 0, EOS 1, unk 2; vocab size 259) and end with EOS, i.e. 1-D int32 arrays
of length len(string) + 1 before padding; `*_FEATURE_LENGTHS` below hold lengths that fit every
example of a registered task, EOS included, so that `append_eos_after_trim` never trims.

Registered at import:
  arithmetic_sum3             3 terms in [0, 999], '+', 50k train / 1k validation / 1k test.
  arithmetic_sum3_train5pct   the same with the first 5% (2,500) of the train problems.
  arithmetic_sum3_train25pct  the same with the first 25% (12,500) of the train problems.
  arithmetic_sum3_2digit      3 terms in [0, 99], '+', 50k / 1k / 1k: the quickstart's task, which
                              CPU-sized models learn in minutes (copying and carrying over
                              three-digit operands takes a T5 far longer: its cross-attention
                              has no position information, so aligning digits is learned slowly).
  arithmetic_sum3_2digit_train5pct, _train25pct  its 5% / 25% data fractions.
  arithmetic_chain5           5 terms in [0, 99], '+' and '-', 50k / 1k / 1k: a longer chain in
                              which one early mistake spoils every later step and the answer.
  arithmetic_sum3_2digit_slips{10,30}, arithmetic_chain5_slips{10,30}
                              the same problems with 10% / 30% of the steps slipped and corrected
                              ('74+17=11!91;', `steps.inject_slips`): the data of a teacher that
                              corrects slips (the on-policy testbed's recoverability knob).
  arithmetic_sum3_2digit_chain5
                              a mixture (not a task): arithmetic_sum3_2digit and
                              arithmetic_chain5 at equal rates, for two teachers in one run.
  arithmetic_sum3_2digit_commute50
                              the same sums with each step's operands swapped half of the time
                              ('63+85=148;51+148=199;#199'): four valid solutions a problem (the
                              testbed's target-entropy knob).

Metrics (all tasks): 'accuracy' and 'sequence_accuracy' above; 'step_accuracy', partial credit
per step value; 'correction_rate', 'self_correction_rate' and 'false_correction_rate', how a
prediction handles its own arithmetic errors with the slip marker '!' (`self_correction`);
'commuted_step_rate', 'reordered_step_rate' and 'reordered_step_accuracy', how often a prediction
writes a step in another order than the ground truth's and whether it finishes it (`step_order`).
"""

import functools
import itertools
import os
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from gkd_t5x.tasks import common
from gkd_t5x.tasks import steps

OPERATORS = ('+', '-', '*')
SPLITS = ('train', 'validation', 'test')
# A generated example: (inputs string, targets string).
Example = Tuple[str, str]

# Longest generated strings (bytes, without EOS) over all splits, measured with
# `max_lengths(generate_splits(...))` and checked by tests/test_arithmetic_task.py:
#   arithmetic_sum3:   inputs 12 ('999+999+999='), targets 32 ('999+999=1998;1998+999=2997;#2997',
#                      reached by many problems), so targets need 33 with EOS and 32 would trim.
#   arithmetic_chain5: inputs 15, targets 53 (e.g. '10-99=-89;-89-99=-188;-188-99=-287;
#                      -287-99=-386;#-386', the longest any 5-term +/- problem over [0, 99] gives).
# Lengths with EOS, rounded up to a multiple of 8.
ARITHMETIC_SUM3_FEATURE_LENGTHS = {'inputs': 16, 'targets': 40}
#   arithmetic_sum3_2digit: inputs 9 ('99+99+99='), targets 25 ('99+99=198;198+99=297;#297').
ARITHMETIC_SUM3_2DIGIT_FEATURE_LENGTHS = {'inputs': 16, 'targets': 32}
ARITHMETIC_CHAIN5_FEATURE_LENGTHS = {'inputs': 16, 'targets': 56}
# With slips (`steps.inject_slips`) every step may add a wrong value and the marker: up to 4 + 1
# bytes a step ('-188' and '!'), 2 steps for sum3_2digit (25 + 10), 4 for chain5 (53 + 20).
ARITHMETIC_SUM3_2DIGIT_SLIPS_FEATURE_LENGTHS = {'inputs': 16, 'targets': 40}
ARITHMETIC_CHAIN5_SLIPS_FEATURE_LENGTHS = {'inputs': 16, 'targets': 80}

# Problems are drawn from the stream in chunks of a fixed size (not one that depends on the
# requested count), so that a split is a prefix-stable function of the seed alone.
_CHUNK = 8192


def apply_operator(op: str, a: int, b: int) -> int:
  """a op b for op in '+', '-', '*'."""
  if op == '+':
    return a + b
  if op == '-':
    return a - b
  return a * b


def format_example(operands: Sequence[int], ops: Sequence[str]) -> Example:
  """The (inputs, targets) strings of one problem, solved left to right.

  Args:
    operands: the num_terms integer operands.
    ops: the num_terms - 1 operators, each one of OPERATORS; ops[i] sits between operands[i]
      and operands[i + 1].

  Returns:
    ('a0<op0>a1<op1>...=', 'a0<op0>a1=r1;r1<op1>a2=r2;...;#answer').
  """
  if len(ops) != len(operands) - 1:
    raise ValueError(
        f'need len(ops) == len(operands) - 1, got {len(ops)} ops for {len(operands)} operands.'
    )
  problem = [str(operands[0])]
  steps = []
  acc = int(operands[0])
  for op, b in zip(ops, operands[1:]):
    b = int(b)
    result = apply_operator(op, acc, b)
    problem.append(f'{op}{b}')
    steps.append(f'{acc}{op}{b}={result};')
    acc = result
  return ''.join(problem) + '=', ''.join(steps) + f'#{acc}'


def _check_args(
    num_terms: int,
    max_value: int,
    operators: Sequence[str],
    num_train: int,
    num_validation: int,
    num_test: int,
    train_fraction: float,
) -> Tuple[str, ...]:
  """Validates the task parameters; returns `operators` as a tuple."""
  if isinstance(operators, str):
    # A string would be iterated character by character: '+-' is almost surely a typo for
    # ('+', '-'), and '+' happens to work only by accident.
    raise ValueError(
        f'operators must be a tuple of operators among {OPERATORS}, got the string '
        f'{operators!r}.'
    )
  operators = tuple(operators)
  if not isinstance(num_terms, (int, np.integer)) or num_terms < 2:
    raise ValueError(f'num_terms must be an integer >= 2, got {num_terms!r}.')
  if not isinstance(max_value, (int, np.integer)) or max_value < 1:
    raise ValueError(f'max_value must be an integer >= 1, got {max_value!r}.')
  if not operators or any(op not in OPERATORS for op in operators):
    raise ValueError(f'operators must be a non-empty subset of {OPERATORS}, got {operators!r}.')
  if len(set(operators)) != len(operators):
    raise ValueError(f'operators must not repeat an operator, got {operators!r}.')
  for name, value in (
      ('num_train', num_train),
      ('num_validation', num_validation),
      ('num_test', num_test),
  ):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f'{name} must be an integer > 0, got {value!r}.')
  if not 0.0 < train_fraction <= 1.0:
    raise ValueError(f'train_fraction must be in (0, 1], got {train_fraction!r}.')
  # Distinct problems: (max_value + 1) ** num_terms operand tuples times the operator choices.
  num_distinct = (max_value + 1) ** num_terms * len(operators) ** (num_terms - 1)
  total = num_train + num_validation + num_test
  if total > num_distinct:
    raise ValueError(
        f'num_train + num_validation + num_test = {total} exceeds the {num_distinct} distinct '
        f'problems of num_terms={num_terms}, max_value={max_value}, operators={operators}.'
    )
  return operators


@functools.lru_cache(maxsize=16)
def unique_problems(
    num_terms: int, max_value: int, operators: Tuple[str, ...], total: int, seed: int
) -> Tuple[Example, ...]:
  """The first `total` distinct problems of the seed's stream, in order of first appearance."""
  rng = np.random.default_rng(seed)
  seen = set()
  examples = []
  while len(examples) < total:
    operands = rng.integers(0, max_value + 1, size=(_CHUNK, num_terms)).tolist()
    op_ids = rng.integers(0, len(operators), size=(_CHUNK, num_terms - 1)).tolist()
    for row, row_ops in zip(operands, op_ids):
      example = format_example(row, [operators[i] for i in row_ops])
      # The problem string determines the operands and operators (operands are non-negative),
      # so deduping on it dedupes problems.
      if example[0] in seen:
        continue
      seen.add(example[0])
      examples.append(example)
      if len(examples) == total:
        break
  return tuple(examples)


def num_train_kept(num_train: int, train_fraction: float) -> int:
  """How many train problems `train_fraction` keeps: round(num_train * fraction), at least 1."""
  return max(1, min(num_train, int(round(num_train * train_fraction))))


def generate_splits(
    *,
    num_terms: int,
    max_value: int,
    operators: Sequence[str] = ('+',),
    num_train: int,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    train_fraction: float = 1.0,
) -> Dict[str, Tuple[Example, ...]]:
  """The examples of every split, deterministic in the arguments.

  Args:
    num_terms: operands per problem, >= 2.
    max_value: operands are drawn uniformly from [0, max_value], max_value >= 1.
    operators: a subset of OPERATORS; each operator slot is drawn uniformly from it.
    num_train: train problems before `train_fraction`, > 0.
    num_validation: validation problems, > 0.
    num_test: test problems, > 0.
    seed: seed of the problem stream.
    train_fraction: keep the first `num_train_kept(num_train, train_fraction)` train problems;
      in (0, 1].

  Returns:
    {'train': ..., 'validation': ..., 'test': ...}, each a tuple of (inputs, targets) strings;
    no problem is in two splits.
  """
  operators = _check_args(
      num_terms, max_value, operators, num_train, num_validation, num_test, train_fraction
  )
  examples = unique_problems(
      int(num_terms),
      int(max_value),
      operators,
      int(num_train + num_validation + num_test),
      int(seed),
  )
  train_start = num_validation + num_test
  return {
      'validation': examples[:num_validation],
      'test': examples[num_validation:train_start],
      'train': examples[train_start : train_start + num_train_kept(num_train, train_fraction)],
  }


def max_lengths(splits: Mapping[str, Sequence[Example]]) -> Dict[str, int]:
  """Longest 'inputs' and 'targets' over all splits, in UTF-8 bytes without EOS."""
  examples = [ex for split in splits.values() for ex in split]
  return {
      'inputs': max(len(inputs.encode('utf-8')) for inputs, _ in examples),
      'targets': max(len(targets.encode('utf-8')) for _, targets in examples),
  }


# ---------------------------------------------------------------------------------------------
# Metrics.

_ANSWER_RE = re.compile(r'-?\d+')


def parse_final_answer(text: str) -> Optional[int]:
  """The integer after the last '#' of `text`, or None if there is no '#' or it is unparsable."""
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  _, hash_sign, answer = text.rpartition('#')
  answer = answer.strip()
  if not hash_sign or not _ANSWER_RE.fullmatch(answer):
    return None
  return int(answer)


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f'targets and predictions must have the same length, got {len(targets)} '
        f'and {len(predictions)}.'
    )


def final_answer_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions whose final answer (after the last '#') equals the target's.

  The worked steps are ignored: a right answer reached by wrong steps counts. A prediction with
  no '#' or an answer that is not an integer is wrong. NaN for empty inputs.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {'accuracy': float('nan')}
  correct = 0
  for target, prediction in zip(targets, predictions):
    answer = parse_final_answer(prediction)
    correct += answer is not None and answer == parse_final_answer(target)
  return {'accuracy': 100.0 * correct / len(targets)}


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions that equal their target exactly (steps and answer). NaN if empty."""
  _check_lengths(targets, predictions)
  if not targets:
    return {'sequence_accuracy': float('nan')}
  correct = sum(_to_str(t) == _to_str(p) for t, p in zip(targets, predictions))
  return {'sequence_accuracy': 100.0 * correct / len(targets)}


def _final_value(step: re.Match) -> str:
  """The value a step of `steps.step_pattern` ends with: its correction where it has one."""
  return step['corrected'] or step['value']


def _percent(part: int, whole: int) -> float:
  """100 part / whole; NaN for a share of nothing."""
  return 100.0 * part / whole if whole else float('nan')


def _step_values(text: str, marker: str) -> Sequence[int]:
  """The values the steps of `text` end with: the corrected value where a slip was corrected."""
  return [int(_final_value(step)) for step in steps.step_pattern(marker).finditer(text)]


def step_accuracy(
    targets: Sequence[str], predictions: Sequence[str], *, marker: str = '!'
) -> Dict[str, float]:
  """Partial credit: the percent of the target's step values that the prediction has at the
  same step (after its corrections), averaged over examples. A prediction that goes wrong at
  step k and carries the wrong value on loses the steps from k on; one that recovers loses at
  most one. NaN if empty."""
  _check_lengths(targets, predictions)
  if not targets:
    return {'step_accuracy': float('nan')}
  scores = []
  for target, prediction in zip(targets, predictions):
    want = _step_values(_to_str(target), marker)
    got = _step_values(_to_str(prediction), marker)
    scores.append(sum(g == w for g, w in zip(got, want)) / max(len(want), 1))
  return {'step_accuracy': 100.0 * float(np.mean(scores))}


def self_correction(
    targets: Sequence[str], predictions: Sequence[str], *, marker: str = '!'
) -> Dict[str, float]:
  """How predictions handle their own arithmetic errors, step by step. Each step
  'a<op>b=first[<marker>corrected]' is judged against a<op>b as written, so an error counts
  where it is made, not again in the steps that inherit it:

    correction_rate        percent of predictions that write a correction (the marker);
    self_correction_rate   percent of erroneous steps (first != a<op>b) followed by the right
                           correction (NaN without erroneous steps);
    false_correction_rate  percent of right steps "corrected" anyway (NaN without right steps).
  """
  _check_lengths(targets, predictions)
  errors = fixed = right = spoiled = corrected_rows = 0
  for prediction in predictions:
    prediction = _to_str(prediction)
    corrected_rows += marker in prediction
    for step in steps.step_pattern(marker).finditer(prediction):
      truth = apply_operator(step['op'], int(step['a']), int(step['b']))
      corrected = step['corrected']
      if int(step['value']) != truth:
        errors += 1
        fixed += corrected is not None and int(corrected) == truth
      else:
        right += 1
        spoiled += corrected is not None
  return {
      'correction_rate': _percent(corrected_rows, len(predictions)),
      'self_correction_rate': _percent(fixed, errors),
      'false_correction_rate': _percent(spoiled, right),
  }


def step_order(
    targets: Sequence[str], predictions: Sequence[str], *, marker: str = '!'
) -> Dict[str, float]:
  """How much of a teacher's choice of order a model writes (`steps.commute_steps`, the
  target-entropy knob), and whether it can finish what it starts. A step is in order when its
  first operand is the running result (in the first step, the problem's first term, which the
  target's first step carries first):

    commuted_step_rate       percent of the predictions' steps written with the running result
                             second ('51+148=' after '...=148;');
    reordered_step_rate      percent of steps that do not start with the running result
                             (commuted ones, and ones begun in the other order and not finished);
    reordered_step_accuracy  percent of those whose value is right for the operands as written
                             (NaN without any).

  NaN rates without steps."""
  _check_lengths(targets, predictions)
  commuted = reordered = reordered_right = total = 0
  pattern = steps.step_pattern(marker)
  for target, prediction in zip(targets, predictions):
    first = pattern.search(_to_str(target))
    running = first['a'] if first else None
    for step in pattern.finditer(_to_str(prediction)):
      total += 1
      if step['a'] != running:
        reordered += 1
        commuted += step['b'] == running
        reordered_right += int(_final_value(step)) == apply_operator(
            step['op'], int(step['a']), int(step['b'])
        )
      running = _final_value(step)
  return {
      'commuted_step_rate': _percent(commuted, total),
      'reordered_step_rate': _percent(reordered, total),
      'reordered_step_accuracy': _percent(reordered_right, reordered),
  }


_PROBLEM_RE = re.compile(r'(?P<first>\d+)(?P<rest>(?:[-+*]\d+)*)=')


def right_solutions(inputs: str) -> Sequence[str]:
  """Every right worked solution of a problem ('85+63+51='): its target, with each commutative
  step of non-negative operands also in the other order ('63+85=148;...', as
  `steps.commute_steps_text` writes it)."""
  match = _PROBLEM_RE.fullmatch(inputs.strip())
  if match is None:
    raise ValueError(f'not an arithmetic problem: {inputs!r}.')
  acc = int(match['first'])
  step_options, answer = [], acc
  for op, b in re.findall(r'([-+*])(\d+)', match['rest']):
    value = apply_operator(op, acc, int(b))
    options = {f'{acc}{op}{b}={value};'}
    if op in ('+', '*') and acc >= 0:
      options.add(f'{b}{op}{acc}={value};')
    step_options.append(sorted(options))
    acc = answer = value
  return [''.join(chosen) + f'#{answer}' for chosen in itertools.product(*step_options)]


def first_error(inputs: str, sample: str) -> Optional[int]:
  """The index of the first character where `sample` (a model's output, without EOS) leaves
  every right solution of the problem `inputs` (`right_solutions`), or None where it is one:
  the task hook of `diagnostics.FirstErrorFn`. A wrong digit, a step begun with a wrong operand
  and a slip (even one corrected later) are errors where they are written; an output that stops
  early errs at its end."""
  solutions = right_solutions(inputs)
  if sample in solutions:
    return None
  return max(len(os.path.commonprefix([sample, solution])) for solution in solutions)


def _to_str(text, **unused_kwargs) -> str:
  """seqio postprocess_fn: metric fns get `str`, also where a caller hands over raw bytes."""
  del unused_kwargs  # `example`, `is_target`: targets and predictions are treated alike.
  if isinstance(text, bytes):
    return text.decode('utf-8')
  return text


# ---------------------------------------------------------------------------------------------
# Registration.


def register_arithmetic_task(
    name: str,
    *,
    num_terms: int,
    max_value: int,
    operators: Sequence[str] = ('+',),
    num_train: int,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    train_fraction: float = 1.0,
    shuffle_whole_split: bool = False,
    slips: Optional[steps.SlipConfig] = None,
    commute_rate: Optional[float] = None,
) -> seqio.Task:
  """Registers (once) and returns the seqio task `name`.

  Args:
    name: the task's name.
    num_terms, max_value, operators, num_train, num_validation, num_test, seed, train_fraction:
      as in `generate_splits`.
    shuffle_whole_split: when seqio reads the task shuffled, permute the whole split (a new
      permutation each epoch, from seqio's seed) before seqio's own shuffle. seqio shuffles
      through a buffer of 1,000 examples, so without this a shuffled read starts with the
      first problems of the stream: a task that keeps a train fraction then reads the same
      examples as the full task until it runs out of them (a data-efficiency comparison shorter
      than one epoch of the fraction compares identical streams).
    slips: write slips and their corrections into the targets of every split
      (`steps.inject_slips`; the recoverability knob). The metrics read corrections with its
      marker.
    commute_rate: write each commutative step ('+', '*') of non-negative operands with its
      operands swapped with this probability, in (0, 1] (`steps.commute_steps`; the
      target-entropy knob).

  Returns:
    The task. Registering the same name again with identical arguments returns the registered
    task (so that reloading this module is harmless); with different arguments, or over a task
    that this function did not register, it raises ValueError.
  """
  operators = _check_args(
      num_terms, max_value, operators, num_train, num_validation, num_test, train_fraction
  )
  split_config = dict(
      num_terms=int(num_terms),
      max_value=int(max_value),
      operators=operators,
      num_train=int(num_train),
      num_validation=int(num_validation),
      num_test=int(num_test),
      seed=int(seed),
      train_fraction=float(train_fraction),
  )
  if commute_rate is not None and not 0.0 < commute_rate <= 1.0:
    raise ValueError(f'commute_rate must be None or in (0, 1], got {commute_rate!r}.')
  config = dict(
      split_config,
      shuffle_whole_split=bool(shuffle_whole_split),
      slips=slips,
      commute_rate=commute_rate,
  )
  if name in seqio.TaskRegistry.names():
    task = seqio.TaskRegistry.get(name)
    registered = getattr(task, '_gkd_arithmetic_config', None)
    if registered == config:
      return task
    raise ValueError(
        f'Task {name!r} is already registered with a different configuration '
        f'({registered}); requested {config}.'
    )

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    # The whole split is one in-memory "file" in the fixed stream order; seqio's shuffle (with
    # `seed`) mixes it through its bounded buffer, after the whole-split permutation if asked.
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
    examples = generate_splits(**split_config)[split]
    inputs, targets = zip(*examples)
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            'inputs': tf.constant(inputs, dtype=tf.string),
            'targets': tf.constant(targets, dtype=tf.string),
        }
    )
    if shuffle_files and shuffle_whole_split:
      dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    return dataset

  vocabulary = seqio.ByteVocabulary()
  # A clean task's predictions may hold corrections too (a student taught by a teacher that
  # corrects): read them with the default marker.
  marker = (slips or steps.SlipConfig()).marker
  task = seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn=dataset_fn,
          splits=SPLITS,
          num_input_examples={
              'train': num_train_kept(num_train, train_fraction),
              'validation': int(num_validation),
              'test': int(num_test),
          },
      ),
      preprocessors=[
          *([functools.partial(steps.commute_steps, rate=commute_rate)] if commute_rate else []),
          *([functools.partial(steps.inject_slips, config=slips)] if slips else []),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
          *(
              [functools.partial(steps.mask_slipped_values, marker=slips.marker)]
              if slips and not slips.learn_slips
              else []
          ),
      ],
      output_features={
          'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True),
          'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True),
      },
      postprocess_fn=_to_str,
      metric_fns=[
          final_answer_accuracy,
          sequence_accuracy,
          functools.partial(step_accuracy, marker=marker),
          functools.partial(self_correction, marker=marker),
          functools.partial(step_order, marker=marker),
      ],
  )
  task._gkd_arithmetic_config = config
  return task


ARITHMETIC_SUM3 = dict(
    num_terms=3,
    max_value=999,
    operators=('+',),
    num_train=50000,
    num_validation=1000,
    num_test=1000,
    seed=0,
)
ARITHMETIC_SUM3_2DIGIT = dict(
    num_terms=3,
    max_value=99,
    operators=('+',),
    num_train=50000,
    num_validation=1000,
    num_test=1000,
    seed=0,
)
ARITHMETIC_CHAIN5 = dict(
    num_terms=5,
    max_value=99,
    operators=('+', '-'),
    num_train=50000,
    num_validation=1000,
    num_test=1000,
    seed=0,
)

register_arithmetic_task('arithmetic_sum3', **ARITHMETIC_SUM3)
register_arithmetic_task('arithmetic_sum3_train5pct', train_fraction=0.05, **ARITHMETIC_SUM3)
register_arithmetic_task('arithmetic_sum3_train25pct', train_fraction=0.25, **ARITHMETIC_SUM3)
register_arithmetic_task('arithmetic_sum3_2digit', **ARITHMETIC_SUM3_2DIGIT)
register_arithmetic_task(
    'arithmetic_sum3_2digit_train5pct', train_fraction=0.05, **ARITHMETIC_SUM3_2DIGIT
)
register_arithmetic_task(
    'arithmetic_sum3_2digit_train25pct', train_fraction=0.25, **ARITHMETIC_SUM3_2DIGIT
)
# The chain5 tasks, the second task of the small-scale reproduction (results/README.md), permute
# their whole train split when shuffled; the sum3 tasks keep seqio's buffered shuffle, with
# which the reproduction's first task was trained.
register_arithmetic_task('arithmetic_chain5', shuffle_whole_split=True, **ARITHMETIC_CHAIN5)
register_arithmetic_task(
    'arithmetic_chain5_train5pct',
    train_fraction=0.05,
    shuffle_whole_split=True,
    **ARITHMETIC_CHAIN5,
)
register_arithmetic_task(
    'arithmetic_chain5_train25pct',
    train_fraction=0.25,
    shuffle_whole_split=True,
    **ARITHMETIC_CHAIN5,
)
# The on-policy testbed's recoverability knob (tasks/steps.py): the same problems with a share of
# the steps written wrong and corrected after '!', the data a teacher that corrects slips is
# trained on (and the "teacher's kind of data" of the off-policy control). The clean tasks above
# are what the students' ground truth and evaluation read.
# The target-entropy knob: every step of a sum written with its operands in either order, so a
# problem has four valid solutions and the teacher's next-token distribution is not one-hot.
register_arithmetic_task(
    'arithmetic_sum3_2digit_commute50', commute_rate=0.5, **ARITHMETIC_SUM3_2DIGIT
)
for _rate in (10, 30):
  register_arithmetic_task(
      f'arithmetic_sum3_2digit_slips{_rate}',
      slips=steps.SlipConfig(rate=_rate / 100),
      **ARITHMETIC_SUM3_2DIGIT,
  )
  register_arithmetic_task(
      f'arithmetic_chain5_slips{_rate}',
      shuffle_whole_split=True,
      slips=steps.SlipConfig(rate=_rate / 100),
      **ARITHMETIC_CHAIN5,
  )
# Two tasks, two teachers (gkd_t5x.teachers, gin/experiments/arithmetic/two_teachers.gin): the
# sums and the chains at equal rates, each task scored by the teacher trained on it.
common.register_mixture_once(
    'arithmetic_sum3_2digit_chain5', ['arithmetic_sum3_2digit', 'arithmetic_chain5']
)
