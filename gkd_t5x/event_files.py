"""Reads the scalars of TensorBoard event files (written by clu's metric writers).

The trainer writes MODEL_DIR/train and MODEL_DIR/eval event files (T5X's writes MODEL_DIR/train,
MODEL_DIR/training_eval/<task> and MODEL_DIR/inference_eval); tests, sweeps and figure scripts
read them back here, the same numbers TensorBoard shows. Text summaries (T5X's gin config) are
skipped.
"""

import collections
import glob
import os
from typing import Dict, List, Tuple

import tensorflow as tf


def read_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
  """{tag: [(step, value), ...] sorted by step} of every event file in `log_dir`."""
  scalars = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(log_dir, 'events.out.tfevents.*'))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField('tensor'):
          if value.tensor.dtype == tf.string.as_datatype_enum:
            continue
          number = float(tf.make_ndarray(value.tensor))
        else:
          number = float(value.simple_value)
        # A resumed run rewrites the steps after its checkpoint: the last write wins.
        scalars[value.tag][event.step] = number
  return {tag: sorted(values.items()) for tag, values in scalars.items()}
