"""Prints a markdown table of the metrics.json files that `gkd_t5x.eval` wrote.

    python launch/results_table.py EVAL_ROOT NAME [NAME ...]

Reads EVAL_ROOT/NAME/metrics.json for each NAME, in the order given.
"""

import json
import os
import sys


def main(root, names):
  rows = []
  for name in names:
    with open(os.path.join(root, name, 'metrics.json')) as f:
      result = json.load(f)
    metrics = result['metrics']
    accuracy = next(v for k, v in metrics.items() if k.endswith('/accuracy'))
    sequence = next(v for k, v in metrics.items() if k.endswith('/sequence_accuracy'))
    rows.append((name, accuracy, sequence, result['checkpoint']))
  split = result['split']
  print(f'\n| model | answer accuracy ({split}, %) | exact sequence (%) | checkpoint |')
  print('| --- | --- | --- | --- |')
  for name, accuracy, sequence, checkpoint in rows:
    print(f'| {name} | {accuracy:.1f} | {sequence:.1f} | {checkpoint} |')


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
