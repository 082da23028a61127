"""The feature converters of the GKD models: seqio's encoder-decoder features, with a task's own
loss weights (`GKDModel`), and seqio's prefix-LM features (`GKDDecoderOnlyModel`).

It imports seqio and TensorFlow but registers no gin configurable, so that T5X's trainer can
look them up (`FEATURE_CONVERTER_CLS`) after gin has locked its configuration.
"""

from typing import Mapping

import seqio
import tensorflow as tf

from gkd_t5x import objective

# A task feature, aligned with 'targets', that weights each target token's loss (0: the token
# is context, not a label), e.g. the slipped values of a teacher that corrects slips
# (`gkd_t5x.tasks.steps.mask_slipped_values`).
TARGETS_LOSS_WEIGHTS = 'targets_loss_weights'
# The input pipeline's counts of the examples behind each row ([n] int32, `gkd_t5x.example_checks`),
# carried to the trainer's batch.
EXAMPLE_COUNTS = 'example_counts'


class _PassExtraFeatures:
  """Passes the features that ride along with an example through seqio's conversion, where the
  dataset has them (seqio's passthrough features, set anew for each dataset: the models
  construct their converters with `pack` only):
    - an offline teacher's (`objective.OFFLINE_TEACHER_FEATURES`, aligned with 'targets', from
      `gkd_t5x.tasks.offline_teacher`), padded to the targets' length;
    - the input pipeline's counts of checked examples (`EXAMPLE_COUNTS`).
  """

  def __call__(
      self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    lengths = dict(task_feature_lengths)
    lengths.update(
        {
            name: task_feature_lengths['targets']
            for name in objective.OFFLINE_TEACHER_FEATURES
            if name in ds.element_spec
        }
    )
    if EXAMPLE_COUNTS in ds.element_spec:
      lengths[EXAMPLE_COUNTS] = ds.element_spec[EXAMPLE_COUNTS].shape[0]
    extra = [name for name in lengths if name not in task_feature_lengths]
    if extra and self.pack:
      raise ValueError(f'Examples with {extra} cannot be packed: set pack=False.')
    self._passthrough_features = {
        name: seqio.FeatureConverter.FeatureSpec(
            dtype=ds.element_spec[name].dtype, rank=ds.element_spec[name].shape.rank
        )
        for name in extra
    }
    return super().__call__(ds, lengths)


class EncDecFeatureConverter(_PassExtraFeatures, seqio.EncDecFeatureConverter):
  """seqio's encoder-decoder features, with the task's own loss weights where it has them.

  A task whose examples carry `TARGETS_LOSS_WEIGHTS` ([targets length] int32, 0 or 1) gets
  them, times the non-padding mask, as 'decoder_loss_weights'; any other task gets seqio's
  features unchanged. Packing does not take loss weights.
  """

  def _convert_features(
      self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    if TARGETS_LOSS_WEIGHTS not in ds.element_spec:
      return super()._convert_features(ds, task_feature_lengths)
    if self.pack:
      raise ValueError(f'A task with {TARGETS_LOSS_WEIGHTS!r} cannot be packed: set pack=False.')
    lengths = dict(task_feature_lengths)
    lengths[TARGETS_LOSS_WEIGHTS] = lengths['targets']
    ds = self._pack_or_pad(ds, lengths)

    def convert(features):
      converted = dict(self._convert_example(features))
      converted['decoder_loss_weights'] *= tf.cast(
          features[TARGETS_LOSS_WEIGHTS], converted['decoder_loss_weights'].dtype
      )
      return converted

    return ds.map(convert, num_parallel_calls=tf.data.experimental.AUTOTUNE)


class PrefixLMFeatureConverter(_PassExtraFeatures, seqio.PrefixLMFeatureConverter):
  """seqio's prefix-LM features: each row the inputs then the targets.

  A task with its own loss weights (`TARGETS_LOSS_WEIGHTS`) is refused: seqio's converter would
  drop them and put loss on every target token.
  """

  def _convert_features(
      self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    if TARGETS_LOSS_WEIGHTS in ds.element_spec:
      raise ValueError(
          f'A task with {TARGETS_LOSS_WEIGHTS!r} (its own loss weights) is not '
          'supported by the prefix-LM features of GKDDecoderOnlyModel; use an '
          'encoder-decoder GKDModel.'
      )
    return super()._convert_features(ds, task_feature_lengths)
