"""XSum summarization (Narayan et al. 2018) on TFDS, and its data-efficiency subsets (Fig. 3).

Examples of TFDS `xsum:1.1.0` (BBC articles with their one-sentence summaries):

  inputs:  'summarize: ' + document
  targets: summary

Feature lengths `XSUM_FEATURE_LENGTHS` (the paper's Table A.1): inputs 1024, targets 64 tokens,
EOS included; longer documents are cut at the end. Metrics (`gkd_t5x.metrics.rouge`): 'rouge1',
'rouge2' and 'rougeLsum', mean F-measure in percent; the paper reports ROUGE-2 on 'validation'.

Preparing the TFDS dataset needs XSum's `xsum-extracts-from-downloads.tar.gz` in TFDS's manual
directory (made by the XSum repository's download scripts, see TFDS's `xsum` page); the tasks
then read the prepared dataset from the TFDS data directory (`TFDS_DATA_DIR`, or
`seqio.set_tfds_data_dir_override`).

Data efficiency. `xsum_train1k`, `xsum_train10k` and `xsum_train50k` train on the first 1,000,
10,000 and 50,000 train examples (0.5%, 5% and 25% of 204,045); their validation and test splits
are XSum's. The subsets are TFDS slices 'train[:N]' of the prepared train split, whose order is
TFDS's fixed generation-time shuffle (examples are ordered by a hash of their key, the same on
every machine and run), not the archive's order: a deterministic random sample, with no seed of
ours, and nested (1K within 10K within 50K).

Registered at import, with `common.DEFAULT_VOCABULARY`:
  xsum, xsum_train1k, xsum_train10k, xsum_train50k
"""

from typing import Optional

import seqio
import tensorflow as tf

from gkd_t5x import metrics
from gkd_t5x.tasks import common

XSUM_TFDS_NAME = 'xsum:1.1.0'
XSUM_FEATURE_LENGTHS = {'inputs': 1024, 'targets': 64}
XSUM_PREFIX = 'summarize: '
SPLITS = ('train', 'validation', 'test')
# Task name -> number of train examples (Fig. 3's 0.5%, 5% and 25% of the train split).
TRAIN_SUBSETS = {'xsum_train1k': 1000, 'xsum_train10k': 10000, 'xsum_train50k': 50000}


@seqio.map_over_dataset
def summarize(example):
  """{'document', 'summary'} -> {'inputs': 'summarize: ' + document, 'targets': summary}."""
  return {
      'inputs': tf.strings.join([XSUM_PREFIX, example['document']]),
      'targets': example['summary'],
  }


def register_xsum(
    name: str, vocabulary: seqio.Vocabulary, *, num_train: Optional[int] = None
) -> seqio.Task:
  """Registers (once) and returns the XSum task `name`.

  Args:
    name: the seqio task name.
    vocabulary: the vocabulary of 'inputs' and 'targets'.
    num_train: None for the whole train split, else the first `num_train` (> 0) examples of
      TFDS's train order (see the module docstring).

  Returns:
    The task; splits 'train', 'validation', 'test'.
  """
  if num_train is not None and (not isinstance(num_train, int) or num_train <= 0):
    raise ValueError(f'num_train must be None or an integer > 0, got {num_train!r}.')
  splits = {split: split for split in SPLITS}
  if num_train is not None:
    splits['train'] = f'train[:{num_train}]'
  config = {'tfds_name': XSUM_TFDS_NAME, 'splits': splits, 'vocabulary': vocabulary}
  return common.register_task_once(
      name,
      config,
      lambda: common.tfds_task(
          name,
          tfds_name=XSUM_TFDS_NAME,
          splits=splits,
          preprocessor=summarize,
          vocabulary=vocabulary,
          metric_fns=[metrics.rouge],
      ),
  )


register_xsum('xsum', common.DEFAULT_VOCABULARY)
for _name, _num_train in TRAIN_SUBSETS.items():
  register_xsum(_name, common.DEFAULT_VOCABULARY, num_train=_num_train)
