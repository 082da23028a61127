"""WMT14 English-to-German translation on TFDS, as T5's `wmt_t2t_ende_v003`.

Examples of TFDS `wmt_t2t_translate/de-en:1.0.0` (the Tensor2Tensor WMT data: train europarl_v7
+ commoncrawl + newscommentary_v13, validation newstest2013, test newstest2014):

  inputs:  'translate English to German: ' + en
  targets: de

the preprocessing of T5's `wmt_t2t_ende_v003` (`t5.data.preprocessors.translate`), whose name the
task keeps since the paper names it. Feature lengths `WMT_FEATURE_LENGTHS` (Table A.3): 80 and
80 tokens, EOS included. Metric (`gkd_t5x.metrics.bleu`): 'bleu', sacrebleu corpus BLEU with the
13a tokenizer; the paper reports it on 'validation' with beam search.

Registered at import, with `common.DEFAULT_VOCABULARY`:
  wmt_t2t_ende_v003
"""

import seqio
import tensorflow as tf

from gkd_t5x import metrics
from gkd_t5x.tasks import common

WMT_TFDS_NAME = 'wmt_t2t_translate/de-en:1.0.0'
WMT_FEATURE_LENGTHS = {'inputs': 80, 'targets': 80}
WMT_PREFIX = 'translate English to German: '
SPLITS = ('train', 'validation', 'test')


@seqio.map_over_dataset
def translate_en_to_de(example):
  """{'en', 'de'} -> {'inputs': 'translate English to German: ' + en, 'targets': de}."""
  return {
      'inputs': tf.strings.join([WMT_PREFIX, example['en']]),
      'targets': example['de'],
  }


def register_wmt_ende(name: str, vocabulary: seqio.Vocabulary) -> seqio.Task:
  """Registers (once) and returns the WMT en-de task `name` with 'inputs'/'targets' of
  `vocabulary`; splits 'train', 'validation', 'test'."""
  config = {'tfds_name': WMT_TFDS_NAME, 'splits': SPLITS, 'vocabulary': vocabulary}
  return common.register_task_once(
      name,
      config,
      lambda: common.tfds_task(
          name,
          tfds_name=WMT_TFDS_NAME,
          splits=SPLITS,
          preprocessor=translate_en_to_de,
          vocabulary=vocabulary,
          metric_fns=[metrics.bleu],
      ),
  )


register_wmt_ende('wmt_t2t_ende_v003', common.DEFAULT_VOCABULARY)
