r"""Runs the small-scale reproduction of the paper (launch/sweeps/reproduction/) and draws it.

    python launch/reproduce.py [--root results/runs] [--out results/figures] [--workers 2]
        [--specs DIR] [--only REGEX] [--print] [--figures-only]

One command for every figure panel of a directory of sweep specs (launch/sweeps/README.md):
  1. merges the runs of all specs into one plan (`plan.merge`; the specs in file name order,
     so a file name prefix sets which runs come first): a training whose command equals an
     earlier one's up to its MODEL_DIR (once the earlier run directories it reads are renamed
     to their first copies) is trained once, and the later run directory is a symbolic link
     to the first; so the SFT students are trained once for every spec that starts from them,
     and e.g. Fig. 4's on-policy students are the grid's. Evaluations are merged the same way.
  2. runs the jobs (one training or one evaluation each) on `--workers` long-lived worker
     processes (`runners.run_jobs`), with JAX's persistent compilation cache under
     <root>/jax_cache; resumable: a training with <MODEL_DIR>/DONE and an evaluation with its
     metrics are skipped, and an interrupted training resumes from its own checkpoint. One
     line per finished job: [i/N] job, its time, elapsed, ETA. A failed job stops the
     scheduling; its log is <MODEL_DIR>/logs/<job>.log.
  3. draws every spec's figure and CSV (launch/figures.py) into --out, and writes
     <out>/tables.md: every point's mean +- std over seeds, and its difference to the spec's
     baseline in units of their pooled standard deviation (`results.effect_size`).
"""

import argparse
import glob
import os
import sys
from typing import Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:
  # Run as `python launch/reproduce.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from launch import REPO_ROOT
from launch import figures
from launch import plan
from launch import results
from launch import runners
from launch import spec as spec_lib

DEFAULT_SPECS = os.path.join(REPO_ROOT, 'launch', 'sweeps', 'reproduction')


def draw(specs: Sequence[Tuple[str, spec_lib.Spec]], root: str, out: str) -> int:
  """Every spec's figure and CSV, then tables.md; the worst exit status of figures.py."""
  status = 0
  for path, _ in specs:
    status = max(status, figures.main([path, '--root', root, '--out', out]))
  with open(os.path.join(out, 'tables.md'), 'w') as f:
    f.write(
        '# Tables (written by launch/reproduce.py)\n\n'
        + results.tables([spec for _, spec in specs], out)
    )
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description='The small-scale reproduction, end to end.')
  parser.add_argument('--specs', default=DEFAULT_SPECS, help='a directory of sweep specs')
  parser.add_argument(
      '--root',
      default=os.path.join(REPO_ROOT, 'results', 'runs'),
      help='where the runs go (not committed)',
  )
  parser.add_argument(
      '--out',
      default=os.path.join(REPO_ROOT, 'results', 'figures'),
      help='where the figures, CSVs and tables.md go',
  )
  parser.add_argument('--workers', type=int, default=2, help='worker processes (CPU cores)')
  parser.add_argument('--only', help='regex on job names; the trainings they read are kept')
  parser.add_argument('--print', action='store_true', help='print the merged jobs and stop')
  parser.add_argument('--figures-only', action='store_true', help='only draw from the runs')
  args = parser.parse_args(argv)
  root, out = os.path.abspath(args.root), os.path.abspath(args.out)
  paths = sorted(glob.glob(os.path.join(args.specs, '*.json')))
  if not paths:
    print(f'error: no *.json spec in {args.specs}', file=sys.stderr)
    return 2
  try:
    specs = [(path, spec_lib.load(path)) for path in paths]
    merged = plan.merge([spec for _, spec in specs], root)
  except ValueError as e:  # a bad spec, or two evaluations writing into one directory
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.only:
    merged = plan.Plan(
        plan.select(merged.jobs, args.only, key=lambda job: job.output_dir), merged.links
    )
  if args.print:
    for job in merged.jobs:
      print(f'{job.name}\n  {" ".join(job.command.argv(sys.executable))}')
    for alias, target in merged.links.items():
      print(f'link {alias} -> {target}')
    return 0
  if not args.figures_only:
    status = runners.run_jobs(merged, args.workers, os.path.join(root, 'jax_cache'))
    if status:
      return status
  return draw(specs, root, out)


if __name__ == '__main__':
  sys.exit(main())
