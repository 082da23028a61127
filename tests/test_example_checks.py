"""Bad training examples (too long, empty target, text that is not UTF-8): each case's modes on
a task of five made-up examples, through `data.get_dataset` as the trainer reads it."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from gkd_t5x import data
from gkd_t5x import example_checks
from gkd_t5x import feature_converters
from gkd_t5x.tasks import common

TASK = 'example_checks_test'
LENGTHS = {'inputs': 8, 'targets': 8}
# (inputs, targets): clean, too long, empty target, not UTF-8, clean.
EXAMPLES = [
    (b'1+2=', b'3'),
    (b'11+22=', b'33+44+55=132'),
    (b'5+5=', b''),
    (b'\xff+1=', b'2'),
    (b'2+2=', b'4'),
]
VOCABULARY = seqio.ByteVocabulary()


def _source(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  inputs, targets = zip(*EXAMPLES)
  return tf.data.Dataset.from_tensor_slices({'inputs': list(inputs), 'targets': list(targets)})


if TASK not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(_source, splits=['train']),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=common.output_features(VOCABULARY),
  )


def read(checks, batch_size=1):
  """The batches' rows (inputs, targets) and the summed counts, reading the split once."""
  config = data.DatasetConfig(TASK, LENGTHS, 'train', batch_size=batch_size, shuffle=False)
  dataset = data.get_dataset(
      config,
      feature_converters.EncDecFeatureConverter(pack=False),
      repeat=False,
      drop_remainder=False,
      checks=checks,
  )
  rows, counts = [], np.zeros(len(example_checks.COUNTED), np.int64)
  for batch in dataset.as_numpy_iterator():
    counts += example_checks.pop_counts(batch)
    rows += list(
        zip(batch['encoder_input_tokens'].tolist(), batch['decoder_target_tokens'].tolist())
    )
  return rows, dict(zip(example_checks.COUNTED, counts.tolist()))


def test_defaults_truncate_as_seqio_skip_empty_keep_bytes_and_count_them():
  rows, counts = read(example_checks.ExampleChecks())
  seqio_rows, _ = read_unchecked()
  assert counts == dict(examples=5, too_long=1, empty_target=1, invalid_utf8=1, skipped=1)
  # Seqio's rows less the empty target, the long one cut as seqio cuts it (EOS last).
  assert rows == [row for index, row in enumerate(seqio_rows) if index != 2]
  assert rows[1][1][-1] == VOCABULARY.eos_id
  assert rows[2][0][0] == 0xFF + VOCABULARY._num_special_tokens  # the byte, kept


def read_unchecked():
  config = data.DatasetConfig(TASK, LENGTHS, 'train', batch_size=1, shuffle=False)
  dataset = data.get_dataset(
      config, feature_converters.EncDecFeatureConverter(pack=False), repeat=False
  )
  batches = list(dataset.as_numpy_iterator())
  assert all(example_checks.EXAMPLE_COUNTS not in batch for batch in batches)
  return [
      (b['encoder_input_tokens'][0].tolist(), b['decoder_target_tokens'][0].tolist())
      for b in batches
  ], None


def test_skip_every_case_keeps_the_clean_rows_and_counts_the_skipped():
  checks = example_checks.ExampleChecks(too_long='skip', empty_target='skip', invalid_utf8='skip')
  rows, counts = read(checks, batch_size=2)
  assert counts == dict(examples=5, too_long=1, empty_target=1, invalid_utf8=1, skipped=3)
  decoded = [VOCABULARY.decode([t for t in targets if t > 1]) for _, targets in rows]
  assert decoded == ['3', '4']


def test_keep_the_empty_target():
  _, counts = read(example_checks.ExampleChecks(empty_target='keep'))
  assert counts == dict(examples=5, too_long=1, empty_target=1, invalid_utf8=1, skipped=0)


@pytest.mark.parametrize(
    'checks, case, problem, text',
    [
        (
            example_checks.ExampleChecks(too_long='refuse'),
            'too_long',
            'is longer than TASK_FEATURE_LENGTHS inputs 8, targets 8',
            '11+22=',
        ),
        (
            example_checks.ExampleChecks(empty_target='refuse'),
            'empty_target',
            'has empty targets',
            '5+5=',
        ),
        (
            example_checks.ExampleChecks(invalid_utf8='refuse'),
            'invalid_utf8',
            'has text not UTF-8',
            '\ufffd+1=',
        ),
    ],
)
def test_refuse_stops_with_one_line_naming_the_case_and_the_task(checks, case, problem, text):
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    read(checks)
  line = example_checks.refusal_line(raised.value)
  assert line == (
      f'ExampleChecks refused an example: ExampleChecks.{case} = refuse: an example {problem}, '
      f'in task {TASK}; its text: {text}'
  )
  assert example_checks.refusal_line(ValueError('other')) is None


def test_unknown_mode_names_the_setting_and_its_modes():
  with pytest.raises(
      ValueError,
      match=r"ExampleChecks.too_long must be one of \('truncate', 'skip', 'refuse'\), got 'cut'",
  ):
    example_checks.ExampleChecks(too_long='cut')


def test_packed_rows_get_the_checks_without_counts():
  config = data.DatasetConfig(TASK, LENGTHS, 'train', batch_size=1, shuffle=False, pack=True)
  dataset = data.get_dataset(
      config,
      feature_converters.EncDecFeatureConverter(pack=True),
      repeat=False,
      drop_remainder=False,
      checks=example_checks.ExampleChecks(),
  )
  batches = list(dataset.as_numpy_iterator())
  assert batches and all(example_checks.EXAMPLE_COUNTS not in batch for batch in batches)


def test_evaluation_text_that_is_not_utf8_shows_replacement_characters():
  assert common.to_str(b'\xff1') == '\ufffd1'
