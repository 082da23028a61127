"""Training examples a run cannot take as they are: too long, with an empty target, not UTF-8.

seqio trims a feature longer than the task's lengths without a word, keeps an example whose
target is empty, and tokenizes whatever bytes a text holds. `ExampleChecks` (gin) makes each
case a setting of the trainer's input pipeline, and `check_examples` applies it to a task's
untrimmed examples, before the model's feature converter:

  | case                              | modes (default first)        |
  | --------------------------------- | ---------------------------- |
  | a feature longer than its length  | 'truncate', 'skip', 'refuse' |
  | a target with no token but EOS    | 'skip', 'keep', 'refuse'     |
  | a `*_pretokenized` text not UTF-8 | 'keep', 'skip', 'refuse'     |

'truncate' cuts as seqio does (to the length, the EOS kept last); 'keep' for text that is not
UTF-8 trains on the vocabulary's tokens of its bytes (evaluation shows such bytes as U+FFFD);
'refuse' stops the run with one line naming the case, the task and the example's text.

Nothing is dropped silently. Every kept example carries `EXAMPLE_COUNTS`: itself and the
examples skipped just before it, counted by case. The trainer sums them over the batches it
consumes and writes the sums of each logging period as its `data/*` metrics, so they are exact
for the steps taken, equal on every host (each reads the global batch), and equal for a resumed
run and an uninterrupted one (a count kept in the pipeline would include its read-ahead).
"""

import dataclasses
import re
from typing import Dict, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

import gin
from gkd_t5x import feature_converters

TOO_LONG_MODES = ('truncate', 'skip', 'refuse')
EMPTY_TARGET_MODES = ('skip', 'keep', 'refuse')
INVALID_UTF8_MODES = ('keep', 'skip', 'refuse')
# The batch feature of counts, [batch, len(COUNTED)] int32, and what each column counts.
EXAMPLE_COUNTS = feature_converters.EXAMPLE_COUNTS
COUNTED = ('examples', 'too_long', 'empty_target', 'invalid_utf8', 'skipped')
_REFUSED = 'ExampleChecks refused an example: '


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExampleChecks:
  """What the trainer's input pipeline does with each kind of example it cannot take as is.

  Attributes:
    too_long: an example with a feature longer than TASK_FEATURE_LENGTHS (its EOS included):
      one of TOO_LONG_MODES.
    empty_target: an example whose 'targets' hold no token but EOS: one of EMPTY_TARGET_MODES.
    invalid_utf8: an example with a `*_pretokenized` text that is not UTF-8: one of
      INVALID_UTF8_MODES.
  """

  too_long: str = 'truncate'
  empty_target: str = 'skip'
  invalid_utf8: str = 'keep'

  def __post_init__(self):
    for name, modes in (
        ('too_long', TOO_LONG_MODES),
        ('empty_target', EMPTY_TARGET_MODES),
        ('invalid_utf8', INVALID_UTF8_MODES),
    ):
      if getattr(self, name) not in modes:
        raise ValueError(
            f'ExampleChecks.{name} must be one of {modes}, got {getattr(self, name)!r}.'
        )


def check_examples(
    dataset: tf.data.Dataset,
    checks: ExampleChecks,
    *,
    output_features: Mapping[str, seqio.Feature],
    task_feature_lengths: Mapping[str, int],
    task_name: str,
) -> tf.data.Dataset:
  """The examples to convert, checked, each with its `EXAMPLE_COUNTS` ([len(COUNTED)] int32).

  Args:
    dataset: a task's examples, untrimmed (seqio's with `trim_output_features=False` and no
      lengths), in order: the counts follow it (a `scan`).
    checks: what to do with each case.
    output_features: the task's features (their EOS ids and whether they end with one).
    task_feature_lengths: {'inputs': I, 'targets': L}.
    task_name: the task or mixture, named in a refusal.
  """
  lengths = dict(task_feature_lengths)

  def flags(example):
    too_long = tf.reduce_any([tf.size(example[name]) > length for name, length in lengths.items()])
    targets = example['targets']
    eos = output_features['targets'].vocabulary.eos_id
    empty = tf.reduce_all((targets == eos) | (targets == 0))
    texts = [value for name, value in example.items() if name.endswith('_pretokenized')]
    invalid = tf.reduce_any([_not_utf8(text) for text in texts]) if texts else tf.constant(False)
    shown = [_printable(text) for text in texts[:1]]  # the first text (inputs), as evidence
    too_long_case = 'is longer than TASK_FEATURE_LENGTHS ' + ', '.join(
        f'{name} {length}' for name, length in lengths.items()
    )
    for flag, mode, case in (
        (too_long, checks.too_long, f'too_long = refuse: an example {too_long_case}'),
        (empty, checks.empty_target, 'empty_target = refuse: an example has empty targets'),
        (invalid, checks.invalid_utf8, 'invalid_utf8 = refuse: an example has text not UTF-8'),
    ):
      if mode == 'refuse':
        message = f'{_REFUSED}ExampleChecks.{case}, in task {task_name}; its text: '
        tf.debugging.Assert(tf.logical_not(flag), [message, *shown])
    skip = (
        (too_long & (checks.too_long == 'skip'))
        | (empty & (checks.empty_target == 'skip'))
        | (invalid & (checks.invalid_utf8 == 'skip'))
    )
    counts = tf.cast(tf.stack([True, too_long, empty, invalid, skip]), tf.int32)
    return counts, skip

  def count(pending, example):
    counts, skip = flags(example)
    counts += pending
    return tf.where(skip, counts, tf.zeros_like(counts)), (example, counts, skip)

  def keep(example, counts, skip):
    del example, counts
    return tf.logical_not(skip)

  def finish(example, counts, skip):
    del skip
    example = dict(example, **{EXAMPLE_COUNTS: counts})
    if checks.too_long == 'truncate':
      example.update(_truncate(example, lengths, output_features))
    return example

  start = tf.zeros([len(COUNTED)], tf.int32)
  return dataset.scan(start, count).filter(keep).map(finish)


def _not_utf8(text: tf.Tensor) -> tf.Tensor:
  """Whether a scalar string is not valid UTF-8 (a replaced byte changes it)."""
  replaced = tf.strings.unicode_transcode(
      text, 'UTF-8', 'UTF-8', errors='replace', replacement_char=0xFFFD
  )
  return tf.not_equal(replaced, text)


def _printable(text: tf.Tensor) -> tf.Tensor:
  """A text's first 80 bytes, made UTF-8 (tf's error messages must be)."""
  return tf.strings.unicode_transcode(
      tf.strings.substr(text, 0, 80), 'UTF-8', 'UTF-8', errors='replace', replacement_char=0xFFFD
  )


def _truncate(
    example: Mapping[str, tf.Tensor],
    lengths: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
) -> Dict[str, tf.Tensor]:
  """The features cut to their lengths as seqio cuts them: a feature that ends with EOS keeps
  it last."""
  return {
      name: _cut(example[name], length, output_features[name]) for name, length in lengths.items()
  }


def _cut(value: tf.Tensor, length: int, feature: seqio.Feature) -> tf.Tensor:
  if not feature.add_eos:
    return value[:length]
  eos = tf.constant([feature.vocabulary.eos_id], value.dtype)
  return tf.cond(
      tf.size(value) > length, lambda: tf.concat([value[: length - 1], eos], 0), lambda: value
  )


def drop_counts(example: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The example without its `EXAMPLE_COUNTS`."""
  return {name: value for name, value in example.items() if name != EXAMPLE_COUNTS}


def pop_counts(batch: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
  """Removes `EXAMPLE_COUNTS` from a numpy batch; returns its sum over rows
  ([len(COUNTED)] int64), or None where the batch has none."""
  counts = batch.pop(EXAMPLE_COUNTS, None)
  return None if counts is None else np.asarray(counts, np.int64).sum(axis=0)


def metrics(counts: np.ndarray) -> Dict[str, int]:
  """`data/<case>` metrics from summed counts."""
  return {f'data/{name}': int(value) for name, value in zip(COUNTED, counts)}


def refusal_line(error: BaseException) -> Optional[str]:
  """The one-line error of an example the checks refused, from the input pipeline's error (a
  `tf.errors.InvalidArgumentError` whose message holds tf.Assert's "[message] [text]"), else
  None."""
  if not isinstance(error, tf.errors.InvalidArgumentError) or _REFUSED not in str(error):
    return None
  line = str(error)[str(error).index(_REFUSED) :].splitlines()[0]
  return re.sub(r'\] \[', '', line.split(' [[')[0]).rstrip(']')
