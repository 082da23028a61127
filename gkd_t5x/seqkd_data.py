r"""SeqKD data: decodes the teacher once over a task's inputs and keeps its outputs as targets.

    python -m gkd_t5x.seqkd_data --gin_file=gin/runs/seqkd_data.gin \
        --gin_file=gin/experiments/arithmetic/teacher.gin \
        --gin.CHECKPOINT_PATH="'launch/checkpoints/arithmetic_sum3_2digit_teacher'" \
        --gin.SEQKD_DATA_DIR="'/tmp/seqkd_arithmetic'"

SeqKD (Kim & Rush 2016) fine-tunes the student on the teacher's outputs. The teacher's decoding
costs one pass over the training inputs instead of one per step (the `gin/methods/seqkd.gin`
objective samples the teacher inside every step). The experiment file names the teacher as
its model (the teacher's own SFT experiment), with the decoding its gin sets (greedy by
default). The command runs `gkd_t5x.eval` on EVAL_SPLIT (default 'train') and writes, in
SEQKD_DATA_DIR:

    <split>.jsonl     {"inputs": the task's input text, "targets": the teacher's output}
    seqkd_task.json   {"base_task", "split", "num_examples", "checkpoint"}
    teacher_decode/   the evaluation's metrics.json and predictions.jsonl

`gkd_t5x.tasks.seqkd` registers the directory as a seqio task with the base task's features
and metrics (`register_seqkd_task`, or the GKD_SEQKD_TASKS variable at import); a run trains
on it with the SFT method and evaluates on the base task (EVAL_MIXTURE_OR_TASK_NAME).
"""

import json
import os

import jax

import gin
from gkd_t5x import gin_utils
from gkd_t5x.tasks import seqkd as seqkd_tasks


def write_data_dir(data_dir: str, metrics_file: str, predictions_file: str) -> str:
  """Turns an evaluation's outputs into SeqKD data; returns the written JSON lines file.

  Args:
    data_dir: the SeqKD data directory.
    metrics_file: the evaluation's metrics.json ({'checkpoint', 'split', 'metrics': {
      'inference/<task>/<metric>': value}}).
    predictions_file: its predictions.jsonl ({'input', 'target', 'prediction'} per line).
  """
  with open(metrics_file) as f:
    result = json.load(f)
  task_names = {name.split('/')[1] for name in result['metrics'] if name.startswith('inference/')}
  if len(task_names) != 1:
    raise ValueError(
        f'{metrics_file} must hold the inference metrics of one task, found '
        f'{sorted(task_names)}.'
    )
  split = result['split']
  data_file = os.path.join(data_dir, f'{split}.jsonl')
  num_examples = 0
  with open(predictions_file) as source, open(data_file, 'w') as sink:
    for line in source:
      record = json.loads(line)
      sink.write(json.dumps({'inputs': record['input'], 'targets': record['prediction']}) + '\n')
      num_examples += 1
  with open(os.path.join(data_dir, seqkd_tasks.TASK_FILE), 'w') as f:
    json.dump(
        {
            'base_task': task_names.pop(),
            'split': split,
            'num_examples': num_examples,
            'checkpoint': result['checkpoint'],
        },
        f,
        indent=2,
    )
  return data_file


@gin.configurable
def write_seqkd_data(data_dir: str = gin.REQUIRED) -> str:
  """Decodes the gin-configured model (the teacher) over its task's EVAL_SPLIT into `data_dir`
  (gin: SEQKD_DATA_DIR); returns the JSON lines file."""
  from gkd_t5x import eval as eval_lib

  decode_dir = os.path.join(data_dir, 'teacher_decode')
  eval_lib.evaluate(output_dir=decode_dir)
  if jax.process_index() != 0:
    return ''
  return write_data_dir(
      data_dir,
      os.path.join(decode_dir, 'metrics.json'),
      os.path.join(decode_dir, 'predictions.jsonl'),
  )


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  # The gin files configure the imported module's function, not this __main__ copy's.
  # The configurables gin binds live in the importable module, not in `__main__`.
  from gkd_t5x import seqkd_data as seqkd_lib  # noqa: PLW0406

  print(seqkd_lib.write_seqkd_data(), flush=True)


if __name__ == '__main__':
  gin_utils.run(main)
