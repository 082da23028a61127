"""What the paper's seqio tasks share: the default vocabulary, features, registration, and a
data source of JSON lines files (FLAN, MMLU, BBH and SeqKD data).

Every task of `xsum`, `wmt`, `gsm8k` and `flan` has string 'inputs' and 'targets', tokenized with
one vocabulary and ending with EOS (`seqio.preprocessors.append_eos_after_trim` trims a longer
text to the feature length minus one, then appends EOS). Each module's `register_*` function
takes the vocabulary, so that tests register the same task with seqio's small test model; the
module registers its tasks at import with `DEFAULT_VOCABULARY`.
"""

import json
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

T5_SENTENCEPIECE_MODEL = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
# T5's 32k SentencePiece vocabulary with 100 sentinels, that of the T5 1.1 and FLAN-T5
# checkpoints. seqio reads the model file on first use, so importing touches no network or GCS.
DEFAULT_VOCABULARY = seqio.SentencePieceVocabulary(T5_SENTENCEPIECE_MODEL, extra_ids=100)

# The preprocessors after a task's own, which only map raw examples to 'inputs' and 'targets'.
TOKENIZE_AND_APPEND_EOS = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim)


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  """'inputs' and 'targets', both of `vocabulary` and ending with EOS."""
  if not isinstance(vocabulary, seqio.Vocabulary):
    raise ValueError(f'vocabulary must be a seqio.Vocabulary, got {type(vocabulary).__name__}.')
  return {
      'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True),
      'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def to_str(text: Union[str, bytes], **unused_kwargs) -> str:
  """seqio postprocess_fn: metric fns get `str`, also where a caller hands over raw bytes."""
  del unused_kwargs  # `example`, `is_target`: targets and predictions are treated alike.
  if isinstance(text, bytes):
    # A text that is not UTF-8 (kept by `example_checks`) is scored with U+FFFD in its place.
    return text.decode('utf-8', errors='replace')
  return text


def _register_once(
    registry: Any, kind: str, name: str, config: Mapping[str, Any], make: Callable[[], Any]
) -> Any:
  """`registry`'s provider `name` if it was registered with an equal `config`, else `make()`
  (which registers it) tagged with `config`; ValueError if `name` has another config."""
  if name in registry.names():
    provider = registry.get(name)
    registered = getattr(provider, '_gkd_config', None)
    if registered != config:
      raise ValueError(
          f'{kind} {name!r} is already registered with another configuration '
          f'({registered}); requested {dict(config)}.'
      )
    return provider
  provider = make()
  provider._gkd_config = dict(config)
  return provider


def register_task_once(
    name: str, config: Mapping[str, Any], make_task: Callable[[], seqio.Task]
) -> seqio.Task:
  """Registers and returns `make_task()`, a task named `name`, or the task registered as `name`.

  `config` is what determines the task (data, preprocessing, vocabulary). Registering `name`
  again with an equal config returns the registered task, so that reloading a module is
  harmless; with another config, or over a task registered elsewhere, raises ValueError.
  """

  def make():
    task = make_task()
    seqio.TaskRegistry.add_provider(name, task)
    return task

  return _register_once(seqio.TaskRegistry, 'Task', name, config, make)


def register_mixture_once(name: str, task_names: Sequence[str]) -> seqio.Mixture:
  """Registers and returns the equal-rate mixture `name` of `task_names`, or the registered one.

  Raises ValueError where `name` is registered with other tasks or by someone else.
  """
  return _register_once(
      seqio.MixtureRegistry,
      'Mixture',
      name,
      {'tasks': tuple(task_names)},
      lambda: seqio.MixtureRegistry.add(name, list(task_names), default_rate=1.0),
  )


def tfds_task(
    name: str,
    *,
    tfds_name: str,
    splits: Any,
    preprocessor: Callable,
    vocabulary: seqio.Vocabulary,
    metric_fns: Sequence[Callable],
) -> seqio.Task:
  """A task of TFDS `tfds_name` whose `preprocessor` maps raw examples to 'inputs' and
  'targets' strings, which are then tokenized with `vocabulary` and end with EOS."""
  return seqio.Task(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
      preprocessors=[preprocessor, *TOKENIZE_AND_APPEND_EOS],
      output_features=output_features(vocabulary),
      postprocess_fn=to_str,
      metric_fns=list(metric_fns),
  )


def _examples_of_file(path: bytes) -> Iterator[Dict[str, str]]:
  path = path.decode('utf-8')
  with tf.io.gfile.GFile(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        example = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{line_number} is not JSON: {e}.') from e
      if not (
          isinstance(example, dict)
          and isinstance(example.get('inputs'), str)
          and isinstance(example.get('targets'), str)
      ):
        raise ValueError(
            f'{path}:{line_number} must be an object with string "inputs" and '
            f'"targets", got {line[:200]!r}.'
        )
      yield {'inputs': example['inputs'], 'targets': example['targets']}


def read_jsonl(path: tf.Tensor) -> tf.data.Dataset:
  """The examples {'inputs': tf.string, 'targets': tf.string} of one JSON lines file.

  Args:
    path: a scalar tf.string, the file (as `seqio.FileDataSource` passes its files).
  """
  return tf.data.Dataset.from_generator(
      _examples_of_file,
      args=(path,),
      output_signature={
          'inputs': tf.TensorSpec([], tf.string),
          'targets': tf.TensorSpec([], tf.string),
      },
  )


class JsonlDataSource(seqio.FileDataSource):
  """JSON lines files `<data_dir>/<subdir>/<split>*.jsonl`, found when they are read.

  Where `data_dir` is None, the directory is the environment variable `env_var` at the time the
  files are listed (each `get_dataset`), so registering never needs the files or the variable.
  """

  def __init__(self, *, data_dir: Optional[str], env_var: str, subdir: str, splits: Sequence[str]):
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
      raise ValueError(
          f'data_dir must be None (read ${env_var}) or a non-empty path, got {data_dir!r}.'
      )
    self._data_dir = data_dir
    self._env_var = env_var
    self._subdir = subdir
    shown_dir = data_dir if data_dir is not None else f'${env_var}'
    super().__init__(
        read_file_fn=read_jsonl,
        # What repr() shows; `list_shards` resolves the directory itself.
        split_to_filepattern={
            split: os.path.join(shown_dir, subdir, f'{split}*.jsonl') for split in splits
        },
    )

  def file_pattern(self, split: str) -> str:
    """The glob pattern of the files of `split`, with the directory resolved now."""
    if split not in self.splits:
      raise ValueError(f'split must be one of {tuple(self.splits)}, got {split!r}.')
    data_dir = self._data_dir if self._data_dir is not None else os.environ.get(self._env_var)
    if not data_dir:
      raise ValueError(
          f'The environment variable {self._env_var} is not set: set it to the '
          f'directory of the JSON lines files, or pass data_dir when registering.'
      )
    return os.path.join(data_dir, self._subdir, f'{split}*.jsonl')

  def list_shards(self, split: str) -> Sequence[str]:
    pattern = self.file_pattern(split)
    # tf.io.gfile directly rather than seqio.utils.list_files, which caches each pattern's
    # listing for the life of the process, so files written after a failed read stayed unseen.
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
      raise ValueError(f'No JSON lines file matches {pattern} (split {split!r}).')
    return files
