"""The paper's seqio tasks (XSum, WMT, GSM8K, FLAN / MMLU / BBH), offline.

TFDS sources are mocked (`tfds.testing.mock_data`: random text in the builder's features) and
JSON lines sources are small files in a tmp dir; every task is registered a second time with
seqio's test SentencePiece model, since the default T5 vocabulary lives on GCS. seqio asks TFDS
for split sizes to decide on in-memory caching, which mocked builders lack, hence
`try_in_mem_cache=False`.
"""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from gkd_t5x import metrics
import gkd_t5x.tasks  # noqa: F401  (registers the seqio tasks)
from gkd_t5x.tasks import common
from gkd_t5x.tasks import flan
from gkd_t5x.tasks import gsm8k
from gkd_t5x.tasks import wmt
from gkd_t5x.tasks import xsum

TEST_VOCABULARY = seqio.SentencePieceVocabulary(
    os.path.join(
        os.path.dirname(seqio.__file__), 'test_data', 'sentencepiece', 'sentencepiece.model'
    )
)
MODEL_FEATURES = (
    'encoder_input_tokens',
    'decoder_target_tokens',
    'decoder_input_tokens',
    'decoder_loss_weights',
)
NUM_EXAMPLES = 8

xsum.register_xsum('test_xsum', TEST_VOCABULARY)
xsum.register_xsum('test_xsum_train3', TEST_VOCABULARY, num_train=3)
wmt.register_wmt_ende('test_wmt', TEST_VOCABULARY)
gsm8k.register_gsm8k('test_gsm8k', TEST_VOCABULARY)


def mocked_tfds():
  return tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE)


def task_examples(name, split, lengths):
  """The task's preprocessed examples, as numpy dicts (inside a TFDS mock where needed)."""
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split=split, shuffle=False, try_in_mem_cache=False
  )
  return list(dataset.as_numpy_iterator())


def model_batch(name, split, lengths):
  """One batch of all examples through `EncDecFeatureConverter(pack=False)`."""
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split=split, shuffle=False, try_in_mem_cache=False
  )
  converted = seqio.EncDecFeatureConverter(pack=False)(dataset, lengths)
  return next(converted.batch(NUM_EXAMPLES).as_numpy_iterator())


def check_model_batch(batch, lengths, batch_size=NUM_EXAMPLES):
  assert set(batch) == set(MODEL_FEATURES)
  for feature in MODEL_FEATURES:
    length = lengths['inputs'] if feature.startswith('encoder') else lengths['targets']
    assert batch[feature].shape == (batch_size, length), feature
    assert batch[feature].dtype == np.int32, feature
  # Every example ends with EOS (id 1) inside its length, and padding (0) follows it.
  for feature in ('encoder_input_tokens', 'decoder_target_tokens'):
    for row in batch[feature]:
      eos = np.flatnonzero(row == 1)
      assert eos.size and not row[eos[0] + 1 :].any(), feature
  np.testing.assert_array_equal(batch['decoder_loss_weights'], batch['decoder_target_tokens'] > 0)


def decoded(vocabulary, ids):
  return vocabulary.decode([int(i) for i in ids if i > 1])


# ---------------------------------------------------------------------------------------------
# TFDS tasks.


@pytest.mark.parametrize(
    'name,split,lengths,prefix',
    [
        ('test_xsum', 'validation', xsum.XSUM_FEATURE_LENGTHS, 'summarize: '),
        ('test_wmt', 'validation', wmt.WMT_FEATURE_LENGTHS, 'translate English to German: '),
        ('test_gsm8k', 'test', gsm8k.GSM8K_FEATURE_LENGTHS, 'Q: There are 15 trees in the grove.'),
    ],
    ids=['xsum', 'wmt', 'gsm8k'],
)
def test_tfds_task_batches(name, split, lengths, prefix):
  with mocked_tfds():
    examples = task_examples(name, split, lengths)
    batch = model_batch(name, split, lengths)
  assert len(examples) == NUM_EXAMPLES
  for example in examples:
    assert example['inputs_pretokenized'].decode().startswith(prefix)
    # The tokens are those of the pretokenized strings (the random mock text is short enough
    # that nothing is trimmed).
    assert decoded(TEST_VOCABULARY, example['targets']) == (
        TEST_VOCABULARY.decode(TEST_VOCABULARY.encode(example['targets_pretokenized'].decode()))
    )
  check_model_batch(batch, lengths)


def test_xsum_and_wmt_map_the_tfds_fields():
  with mocked_tfds():
    raw_xsum = list(tfds.load(xsum.XSUM_TFDS_NAME, split='validation').as_numpy_iterator())
    xsum_examples = task_examples('test_xsum', 'validation', xsum.XSUM_FEATURE_LENGTHS)
    raw_wmt = list(tfds.load(wmt.WMT_TFDS_NAME, split='validation').as_numpy_iterator())
    wmt_examples = task_examples('test_wmt', 'validation', wmt.WMT_FEATURE_LENGTHS)
  for raw, example in zip(raw_xsum, xsum_examples, strict=True):
    assert example['inputs_pretokenized'] == b'summarize: ' + raw['document']
    assert example['targets_pretokenized'] == raw['summary']
  for raw, example in zip(raw_wmt, wmt_examples, strict=True):
    assert example['inputs_pretokenized'] == b'translate English to German: ' + raw['en']
    assert example['targets_pretokenized'] == raw['de']


# The four exemplars of Wei et al. (2022), as the paper's A.5 prints them.
WEI_ET_AL_PROMPT = (
    'Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. '
    'After they are done, there will be 21 trees. How many trees did the grove workers plant '
    'today?\n'
    'A: There are 15 trees originally. Then there were 21 trees after some more were planted. '
    'So there must have been 21 - 15 = 6. The answer is 6.\n\n'
    'Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the '
    'parking lot?\n'
    'A: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n'
    'Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces of '
    'chocolate do they have left in total?\n'
    'A: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = '
    '74. After eating 35, they had 74 - 35 = 39. The answer is 39.\n\n'
    'Q: Jason had 20 lollipops. He gave Dan some lollipops. Now Jason has 12 lollipops. How '
    'many lollipops did Jason give to Denny?\n'
    'A: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave '
    'Denny 20 - 12 = 8. The answer is 8.\n\n'
)


def test_gsm8k_inputs_are_the_4shot_prompt_then_the_question():
  assert gsm8k.COT_PROMPT == WEI_ET_AL_PROMPT
  assert gsm8k.format_question('How many?') == WEI_ET_AL_PROMPT + 'Q: How many?\nA:'
  with mocked_tfds():
    raw = list(tfds.load(gsm8k.GSM8K_TFDS_NAME, split='test').as_numpy_iterator())
    examples = task_examples('test_gsm8k', 'test', gsm8k.GSM8K_FEATURE_LENGTHS)
  for raw_example, example in zip(raw, examples, strict=True):
    assert example['inputs_pretokenized'].decode() == gsm8k.format_question(
        raw_example['question'].decode()
    )
    # Targets are GSM8K's whole answer field, calculator annotations and '#### N' included.
    assert example['targets_pretokenized'] == raw_example['answer']


def test_xsum_subsets_slice_only_the_train_split():
  requested = []

  def as_dataset_fn(self, split, **unused_kwargs):
    del self
    requested.append(split)
    return tf.data.Dataset.from_tensor_slices(
        {'document': ['a document'] * 3, 'summary': ['a summary'] * 3}
    )

  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ('train', 'validation', 'test'):
      task_examples('test_xsum_train3', split, xsum.XSUM_FEATURE_LENGTHS)
      task_examples('test_xsum', split, xsum.XSUM_FEATURE_LENGTHS)
  assert requested == ['train[:3]', 'train', 'validation', 'validation', 'test', 'test']
  assert xsum.TRAIN_SUBSETS == {
      'xsum_train1k': 1000,
      'xsum_train10k': 10000,
      'xsum_train50k': 50000,
  }


def test_registered_tasks_use_the_default_vocabulary_and_paper_metrics():
  expected = {
      'xsum': [metrics.rouge],
      'xsum_train1k': [metrics.rouge],
      'xsum_train10k': [metrics.rouge],
      'xsum_train50k': [metrics.rouge],
      'wmt_t2t_ende_v003': [metrics.bleu],
      'gsm8k': [metrics.gsm8k_accuracy, metrics.gsm8k_calculator_accuracy],
      'flan2021': [],
      'mmlu_abstract_algebra': [metrics.exact_match],
      'bbh_word_sorting': [metrics.exact_match],
  }
  for name, metric_fns in expected.items():
    task = seqio.get_mixture_or_task(name)
    assert list(task.metric_fns) == metric_fns, name
    for feature in ('inputs', 'targets'):
      assert task.output_features[feature].vocabulary == common.DEFAULT_VOCABULARY
      assert task.output_features[feature].add_eos
  # Registration read nothing: the SentencePiece model is loaded on first use only.
  assert common.DEFAULT_VOCABULARY._model is None


def test_registration_is_idempotent_and_rejects_conflicts():
  assert xsum.register_xsum('xsum', common.DEFAULT_VOCABULARY) is (
      seqio.get_mixture_or_task('xsum')
  )
  with pytest.raises(ValueError, match="'xsum' is already registered"):
    xsum.register_xsum('xsum', TEST_VOCABULARY)
  with pytest.raises(ValueError, match="'xsum_train1k' is already registered"):
    xsum.register_xsum('xsum_train1k', common.DEFAULT_VOCABULARY, num_train=5)
  with pytest.raises(ValueError, match='num_train must be None or an integer > 0'):
    xsum.register_xsum('test_xsum_bad', TEST_VOCABULARY, num_train=0)
  with pytest.raises(ValueError, match='vocabulary must be a seqio.Vocabulary'):
    wmt.register_wmt_ende('test_wmt_bad', 'cc_all.32000')


# ---------------------------------------------------------------------------------------------
# JSON lines tasks.


def write_jsonl(path, examples):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    for inputs, targets in examples:
      f.write(json.dumps({'inputs': inputs, 'targets': targets, 'source': 'test'}) + '\n')


def test_flan2021_reads_sharded_jsonl_from_the_environment_variable(tmp_path, monkeypatch):
  examples = [
      (f'Instruction {i}: answer the question.', f'answer {i}') for i in range(NUM_EXAMPLES)
  ]
  write_jsonl(str(tmp_path / 'train-00000-of-00002.jsonl'), examples[:5])
  write_jsonl(str(tmp_path / 'train-00001-of-00002.jsonl'), examples[5:])
  flan.register_flan2021('test_flan2021_env', TEST_VOCABULARY)
  monkeypatch.setenv(flan.FLAN2021_DIR_ENV, str(tmp_path))
  read = task_examples('test_flan2021_env', 'train', flan.FLAN_FEATURE_LENGTHS)
  assert sorted(
      (ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode()) for ex in read
  ) == sorted(examples)
  check_model_batch(
      model_batch('test_flan2021_env', 'train', flan.FLAN_FEATURE_LENGTHS),
      flan.FLAN_FEATURE_LENGTHS,
  )

  monkeypatch.delenv(flan.FLAN2021_DIR_ENV)
  with pytest.raises(ValueError, match=f'environment variable {flan.FLAN2021_DIR_ENV} is not'):
    task_examples('test_flan2021_env', 'train', flan.FLAN_FEATURE_LENGTHS)


def test_jsonl_errors_name_the_problem(tmp_path):
  flan.register_flan2021('test_flan2021_dir', TEST_VOCABULARY, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='No JSON lines file matches .*validation'):
    task_examples('test_flan2021_dir', 'validation', flan.FLAN_FEATURE_LENGTHS)
  with open(tmp_path / 'train.jsonl', 'w') as f:
    f.write('{"inputs": "x", "targets": "y"}\n{"inputs": "x"}\n')
  with pytest.raises(tf.errors.OpError, match=r'train.jsonl:2 must be an object with string'):
    task_examples('test_flan2021_dir', 'train', flan.FLAN_FEATURE_LENGTHS)
  with pytest.raises(ValueError, match='data_dir must be None'):
    flan.register_flan2021('test_flan2021_bad', TEST_VOCABULARY, data_dir='')


def test_mmlu_and_bbh_tasks_and_mixtures(tmp_path):
  mmlu_dir, bbh_dir = tmp_path / 'mmlu', tmp_path / 'bbh'
  for subject in ('anatomy', 'virology'):
    write_jsonl(
        str(mmlu_dir / subject / 'test.jsonl'),
        [(f'{subject} question {i}\nAnswer:', 'ABCD'[i % 4]) for i in range(2)],
    )
  for subtask in (
      'logical_deduction_three_objects',
      'tracking_shuffled_objects_seven_objects',
      'word_sorting',
  ):
    write_jsonl(str(bbh_dir / subtask / 'test.jsonl'), [(f'Q: {subtask}?\nA:', 'True')])
  mmlu = flan.register_mmlu('test_mmlu', TEST_VOCABULARY, data_dir=str(mmlu_dir))
  bbh = flan.register_bbh('test_bbh', TEST_VOCABULARY, data_dir=str(bbh_dir))
  assert [task.name for task in mmlu.tasks] == [f'test_mmlu_{s}' for s in flan.MMLU_SUBJECTS]
  assert [task.name for task in bbh.tasks] == [f'test_bbh_{s}' for s in flan.BBH_SUBTASKS]
  assert [task.name for task in seqio.get_mixture_or_task('mmlu').tasks] == [
      f'mmlu_{s}' for s in flan.MMLU_SUBJECTS
  ]
  assert len(seqio.get_mixture_or_task('bbh').tasks) == 27

  anatomy = task_examples('test_mmlu_anatomy', 'test', flan.FLAN_FEATURE_LENGTHS)
  assert [(ex['inputs_pretokenized'], ex['targets_pretokenized']) for ex in anatomy] == [
      (b'anatomy question 0\nAnswer:', b'A'),
      (b'anatomy question 1\nAnswer:', b'B'),
  ]
  # A few tasks, each reading its own subdirectory (every read builds a tf.data pipeline of about
  # a second, so not all 84 tasks, nor the mixtures, which seqio composes from them).
  for subtask in (
      'logical_deduction_three_objects',
      'tracking_shuffled_objects_seven_objects',
      'word_sorting',
  ):
    (example,) = task_examples(f'test_bbh_{subtask}', 'test', flan.FLAN_FEATURE_LENGTHS)
    assert example['inputs_pretokenized'] == f'Q: {subtask}?\nA:'.encode()
  check_model_batch(
      model_batch('test_bbh_word_sorting', 'test', flan.FLAN_FEATURE_LENGTHS),
      flan.FLAN_FEATURE_LENGTHS,
      batch_size=1,
  )


def test_mmlu_and_bbh_lists():
  assert len(flan.MMLU_SUBJECTS) == len(set(flan.MMLU_SUBJECTS)) == 57
  assert {'abstract_algebra', 'high_school_government_and_politics', 'world_religions'} <= set(
      flan.MMLU_SUBJECTS
  )
  assert len(flan.BBH_TASKS) == 23
  assert len(flan.BBH_SUBTASKS) == len(set(flan.BBH_SUBTASKS)) == 27
  assert flan.BBH_TASKS['logical_deduction'] == (
      'logical_deduction_five_objects',
      'logical_deduction_seven_objects',
      'logical_deduction_three_objects',
  )
  assert [s for s in flan.BBH_SUBTASKS if s.startswith('tracking')] == [
      'tracking_shuffled_objects_five_objects',
      'tracking_shuffled_objects_seven_objects',
      'tracking_shuffled_objects_three_objects',
  ]


def test_benchmark_score_is_the_unweighted_mean_over_tasks():
  mmlu = {f'mmlu_{s}': 50.0 for s in flan.MMLU_SUBJECTS}
  mmlu['mmlu_anatomy'] = 100.0
  mmlu['mmlu'] = 0.0  # Other keys (here a mixture-level entry) are ignored.
  assert flan.benchmark_score('mmlu', mmlu) == pytest.approx((56 * 50 + 100) / 57)

  # 21 single-subtask tasks at 10; logical_deduction = mean(0, 30, 60) = 30; tracking = 10.
  bbh = {f'test_bbh_{s}': 10.0 for s in flan.BBH_SUBTASKS}
  bbh.update(
      {
          'test_bbh_logical_deduction_three_objects': 0.0,
          'test_bbh_logical_deduction_five_objects': 30.0,
          'test_bbh_logical_deduction_seven_objects': 60.0,
      }
  )
  assert flan.benchmark_score('bbh', bbh, prefix='test_bbh') == pytest.approx((22 * 10 + 30) / 23)
  # The per-subtask mean (27 subtasks) would differ: (24 * 10 + 90) / 27.
  assert flan.benchmark_score('bbh', bbh, prefix='test_bbh') != pytest.approx(330 / 27)

  del bbh['test_bbh_navigate']
  with pytest.raises(ValueError, match=r"lacks 1 bbh task\(s\): \['test_bbh_navigate'\]"):
    flan.benchmark_score('bbh', bbh, prefix='test_bbh')
  with pytest.raises(ValueError, match=r"benchmark must be one of \('mmlu', 'bbh'\)"):
    flan.benchmark_score('big_bench', mmlu)
