"""Step-by-step targets and the knobs of the on-policy testbed, as seqio preprocessors.

A step-by-step target is a worked solution `step;step;...;#answer` whose steps read
`a<op>b=value` (the arithmetic tasks' targets: '85+63=148;148+51=199;#199'). Two preprocessors
change how a task writes its targets, each a knob of where on-policy data matters
(shared/design.md):

  inject_slips    recoverability: with probability `rate` a step's value is first written
                  wrong, then corrected after a marker: '85+63=149!148;'. A teacher trained on
                  such data knows how to recover from a slip; the fixed data that supervised
                  methods train on stays clean, so only on-policy steps show a student its own
                  slips, labelled by a teacher that corrects them.
  commute_steps   target entropy: each commutative step 'a+b=c' is written 'b+a=c' with
                  probability `rate`, so an input has several valid outputs (2^steps forms of
                  one answer) and the teacher's next-token distribution is not one-hot.

`mask_slipped_values` (after tokenizing) gives the wrong values of slips loss weight 0 through
the task feature 'targets_loss_weights' (`gkd_t5x.feature_converters.EncDecFeatureConverter`
reads it), so
that a model trained on slipped data learns the corrections but not the slips.

Both draw from a per-example seed (`seqio.map_over_dataset(num_seeds=1)`), so a task's stream
is deterministic in seqio's seed and differs between epochs. The text transformations are pure
functions of (text, numpy Generator), tested on their own.
"""

import dataclasses
import re
from typing import Dict, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

SLIP_KINDS = ('digit', 'offset')
# A step 'a<op>b=value': the first operand may be a negative running result, the second is an
# operand of the problem.
_STEP = r'(?P<a>-?\d+)(?P<op>[-+*])(?P<b>\d+)=(?P<value>-?\d+)'
_STEP_RE = re.compile(_STEP)
_COMMUTATIVE = ('+', '*')


def step_pattern(marker: str) -> 're.Pattern':
  """A step as a model may write it, 'a<op>b=value' or 'a<op>b=value<marker>corrected': groups
  a, op, b, value and corrected (None without a correction)."""
  return re.compile(_STEP + f'(?:{re.escape(marker)}(?P<corrected>-?\\d+))?')


@dataclasses.dataclass(frozen=True)
class SlipConfig:
  """How slips are written into step-by-step targets.

  Attributes:
    rate: probability that a step's value is written wrong first, in (0, 1].
    marker: the text between the wrong value and its correction; must not be a digit, '-',
      ';', '=' or '#', and no target may contain it.
    kind: how a wrong value is drawn from the right one: 'digit' (one digit replaced by another,
      keeping the sign and the number of digits) or 'offset' (the value plus a nonzero offset in
      [-max_offset, max_offset]).
    max_offset: the largest offset of kind 'offset'.
    learn_slips: whether the wrong values are labels too. False (the default) gives them loss
      weight 0 (`mask_slipped_values`): a model trained on the task sees slips in its context
      and learns to correct them, but never learns to make them (an expert that knows the
      recovery, not a copy of a noisy writer).
  """

  rate: float = 0.3
  marker: str = '!'
  kind: str = 'digit'
  max_offset: int = 9
  learn_slips: bool = False

  def __post_init__(self):
    if not 0.0 < self.rate <= 1.0:
      raise ValueError(f'SlipConfig.rate must be in (0, 1], got {self.rate}.')
    if not self.marker or re.search(r'[\d\-;=#]', self.marker):
      raise ValueError(
          f'SlipConfig.marker must be non-empty text without digits, "-", ";", "=" '
          f'or "#", got {self.marker!r}.'
      )
    if self.kind not in SLIP_KINDS:
      raise ValueError(f'SlipConfig.kind must be one of {SLIP_KINDS}, got {self.kind!r}.')
    if self.max_offset < 1:
      raise ValueError(f'SlipConfig.max_offset must be >= 1, got {self.max_offset}.')


def wrong_value(value: int, rng: np.random.Generator, config: SlipConfig) -> int:
  """A value other than `value`, drawn as `config.kind` says."""
  if config.kind == 'offset':
    offset = int(rng.integers(1, config.max_offset + 1)) * (1 if rng.random() < 0.5 else -1)
    return value + offset
  sign, digits = ('-', str(value)[1:]) if value < 0 else ('', str(value))
  position = int(rng.integers(len(digits)))
  # No leading zero, and no '-0': the wrong value keeps the right one's sign and digit count.
  lowest = 1 if position == 0 and (len(digits) > 1 or sign) else 0
  choices = [d for d in '0123456789'[lowest:] if d != digits[position]]
  digits = digits[:position] + choices[int(rng.integers(len(choices)))] + digits[position + 1 :]
  return int(sign + digits)


def inject_slips_text(target: str, rng: np.random.Generator, config: SlipConfig) -> str:
  """`target` with each step's value slipped and corrected with probability `config.rate`.

  '85+63=148;148+51=199;#199' -> e.g. '85+63=149!148;148+51=199;#199'. Only the steps' values
  slip; the steps keep their right values after the marker, so every later step and the
  answer are unchanged: `remove_slips(result, marker) == target`.
  """

  def slip(match: re.Match) -> str:
    if rng.random() >= config.rate:
      return match.group(0)
    value = int(match.group('value'))
    lhs = f'{match.group("a")}{match.group("op")}{match.group("b")}'
    return f'{lhs}={wrong_value(value, rng, config)}{config.marker}{value}'

  return _STEP_RE.sub(slip, target)


def remove_slips(text: str, marker: str = '!') -> str:
  """`text` without its slips: every 'wrong<marker>' before a corrected value is dropped."""
  return re.sub(r'-?\d+' + re.escape(marker), '', text)


def commute_steps_text(target: str, rng: np.random.Generator, rate: float) -> str:
  """`target` with each commutative step 'a+b=c' (or 'a*b=c') of non-negative operands written
  'b+a=c' with probability `rate`; values and answer are unchanged. The first operand of a step
  after the first is the running result, so a commuted step carries it second."""

  def commute(match: re.Match) -> str:
    a, op, b = match.group('a', 'op', 'b')
    # A negative running result is left first: '40+-73' is no form the tasks write.
    if op not in _COMMUTATIVE or a.startswith('-') or rng.random() >= rate:
      return match.group(0)
    return f'{b}{op}{a}={match.group("value")}'

  return _STEP_RE.sub(commute, target)


def _seeded_rng(seed: np.ndarray) -> np.random.Generator:
  return np.random.default_rng([int(s) & 0xFFFFFFFF for s in np.asarray(seed).ravel()])


def _map_targets(dataset: tf.data.Dataset, text_fn) -> tf.data.Dataset:
  """Applies text_fn(target str, rng) -> str to the 'targets' of every example."""

  @seqio.map_over_dataset(num_seeds=1)
  def apply(features: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    def host(target: bytes, seed: np.ndarray) -> bytes:
      return text_fn(target.decode('utf-8'), _seeded_rng(seed)).encode('utf-8')

    targets = tf.numpy_function(host, [features['targets'], seed], tf.string, stateful=False)
    targets.set_shape([])
    return dict(features, targets=targets)

  return apply(dataset)


def inject_slips(dataset: tf.data.Dataset, config: Optional[SlipConfig] = None) -> tf.data.Dataset:
  """seqio preprocessor (on string 'targets', before tokenizing): `inject_slips_text` with a
  per-example seed."""
  config = config or SlipConfig()
  return _map_targets(dataset, lambda target, rng: inject_slips_text(target, rng, config))


def commute_steps(dataset: tf.data.Dataset, rate: float = 0.5) -> tf.data.Dataset:
  """seqio preprocessor (on string 'targets', before tokenizing): `commute_steps_text` with a
  per-example seed."""
  if not 0.0 < rate <= 1.0:
    raise ValueError(f'commute_steps rate must be in (0, 1], got {rate}.')
  return _map_targets(dataset, lambda target, rng: commute_steps_text(target, rng, rate))


def slipped_value_weights(ids: np.ndarray, equals_id: int, marker_id: int) -> np.ndarray:
  """[L] int32: 0 on the tokens of each wrong value (between a step's '=' and the marker that
  follows it), 1 elsewhere."""
  weights = np.ones(ids.shape, np.int32)
  start = None
  for index, token in enumerate(ids.tolist()):
    if token == equals_id:
      start = index + 1
    elif token == marker_id and start is not None:
      weights[start:index] = 0
      start = None
  return weights


def single_token_id(vocabulary: seqio.Vocabulary, text: str) -> int:
  """The id of `text`, which must be one token of `vocabulary` (ValueError otherwise)."""
  ids = list(vocabulary.encode(text))
  if len(ids) != 1:
    raise ValueError(f'{text!r} must be one token of the vocabulary of the targets, got ids {ids}.')
  return ids[0]


def mask_slipped_values(
    dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature], marker: str = '!'
) -> tf.data.Dataset:
  """seqio preprocessor (on tokenized 'targets'): adds 'targets_loss_weights', 0 on the tokens of
  each slip's wrong value (`slipped_value_weights`)."""
  vocabulary = output_features['targets'].vocabulary
  equals_id, marker_id = single_token_id(vocabulary, '='), single_token_id(vocabulary, marker)

  def add_weights(features):
    weights = tf.numpy_function(
        lambda ids: slipped_value_weights(ids, equals_id, marker_id),
        [features['targets']],
        tf.int32,
        stateful=False,
    )
    weights.set_shape(features['targets'].shape)
    return dict(features, targets_loss_weights=weights)

  return dataset.map(add_weights, num_parallel_calls=tf.data.experimental.AUTOTUNE)
