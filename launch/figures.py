r"""Draws one figure panel from the results of its sweep (launch/sweep.py), in the paper's layout.

    python launch/figures.py SPEC.json --root DIR --out DIR [--seeds 0,1] [--strict]

Reads every run of the spec (references included; launch/plan.py): for each evaluation of the
spec (or, without evaluations, the trainer's final evaluation) the plot's metric(s), by short
name (launch/results.py: metrics.json, eval_metrics.jsonl, T5X's inference_eval or the eval/
event files), the mean over the samples of a sampled evaluation, and for an evaluation with
num_samples >= 2 the Self-BLEU of its samples (`gkd_t5x.metrics.self_bleu` over the
predictions.jsonl of each sample, aligned by line). Aggregates over seeds: mean, sample
standard deviation (ddof = 1; 0 for one seed) and the count.

Writes <out>/<name>.csv, one row per (point, evaluation, metric): point (its directory name),
one column per axis (empty for a reference), reference, evaluation, metric, mean, std,
n_seeds, then seed_<k> for each seed; and <out>/<name>.png (<out>/<name>_<plot name>.png for
each plot when "plot" is a list), drawn by plot kind (launch/plots.py). Missing results are
listed on stderr and left out of the figure (--strict: exit status 1 instead); an exit status
of 2 is a bad spec or a root without any result.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

if __name__ == '__main__' and not __package__:
  # Run as `python launch/figures.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from launch import plan
from launch import plots
from launch import results
from launch import spec as spec_lib


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description="Draws a sweep's figure panel and its CSV.")
  parser.add_argument('spec', help='the sweep spec (JSON)')
  parser.add_argument('--root', required=True, help="the sweep's output root")
  parser.add_argument('--out', required=True, help='where <name>.csv and .png go')
  parser.add_argument('--seeds', help="comma-separated seeds replacing the spec's")
  parser.add_argument('--strict', action='store_true', help='fail on any missing result')
  args = parser.parse_args(argv)
  try:
    spec = spec_lib.load(args.spec)
    seeds = list(spec_lib.parse_seeds(args.seeds) if args.seeds else spec.seeds)
    root = args.root if results.is_url(args.root) else os.path.abspath(args.root)
    runs = plan.expand(spec, root, seeds=seeds)
    stats, missing = results.collect(spec, runs)
  except ValueError as e:  # a bad spec, an ambiguous metric, samples that do not align
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not any(stat.ok for stat in stats.values()):
    print(f'error: no results of {spec.name} under {root}', file=sys.stderr)
    return 2
  if missing:
    print(
        f'{len(missing)} results missing' + (':' if args.strict else ' (left out of the figure):'),
        file=sys.stderr,
    )
    for line in missing:
      print(f'  {line}', file=sys.stderr)
    if args.strict:
      return 1
  os.makedirs(args.out, exist_ok=True)
  written = [os.path.join(args.out, f'{spec.name}.csv')]
  results.write_csv(written[0], spec, runs, stats, seeds)
  for plot in spec.plots:
    name = spec.name + (f'_{plot.name}' if plot.name else '')
    written.append(os.path.join(args.out, f'{name}.png'))
    plots.draw(written[-1], plots.Panel(spec, plot, stats))
  print('wrote ' + ', '.join(written))
  return 0


if __name__ == '__main__':
  sys.exit(main())
