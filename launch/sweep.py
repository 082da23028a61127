r"""Runs the sweep of one figure panel from a JSON spec (format: launch/sweeps/README.md).

    python launch/sweep.py SPEC.json --root DIR [--mode print|local|pod] [--only REGEX]
        [--seeds 0,1] [--set NAME=VALUE ...] [--gin_file EXTRA.gin ...] [--python PYTHON]
        [--tpu NAME --zone ZONE [--project P] [--repo_dir PATH] [--dry-run]]

The spec's runs and their commands: launch/plan.py. Modes:
  print  the exact commands, shell-quoted, one per line, in the order they would run.
  local  runs them one after another from the repository root, one progress line per run
         ([i/N] name, time, elapsed, ETA); skips a training whose MODEL_DIR has DONE (written
         once the run's training and evaluations succeed) and an evaluation whose output
         directory has its metrics; stops at the first failure with the command and its
         stderr's tail. Logs: <MODEL_DIR>/logs/.
  pod    each command through launch/tpu_pod.py on every worker of a TPU pod slice, one
         after another (the standalone trainer gets --multiprocess); nothing is skipped here,
         but a restarted training resumes from its own latest checkpoint.
"""

import argparse
import os
import re
import sys
from typing import Optional, Sequence

if __name__ == '__main__' and not __package__:
  # Run as `python launch/sweep.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from launch import REPO_ROOT
from launch import plan
from launch import results
from launch import runners
from launch import spec as spec_lib
from launch import tpu_pod


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add = parser.add_argument
  add('spec', help='the sweep spec (JSON)')
  add('--root', required=True, help='output root (a directory or gs:// URL)')
  add('--mode', choices=('print', 'local', 'pod'), default='print')
  add('--only', help='regex on run names; the references the chosen runs read are kept')
  add('--seeds', help="comma-separated seeds replacing the spec's, e.g. 0,1")
  add('--set', action='append', default=[], metavar='NAME=VALUE', help='a gin binding, last')
  add('--gin_file', action='append', default=[], help='a gin file after the experiment files')
  add('--python', help='interpreter of the commands (default: this one in local mode)')
  add('--tpu', help='pod mode: the TPU VM name')
  add('--zone', help='pod mode: its zone')
  add('--project', help="pod mode: its project (default: gcloud's)")
  add('--repo_dir', default='~/gkd_t5x', help='pod mode: the repository on every worker')
  add('--dry-run', action='store_true', help='pod mode: print the gcloud commands only')
  return parser


def _runs(args: argparse.Namespace) -> Sequence[plan.Run]:
  """The runs the command line asks for; raises SpecError on bad input."""
  spec = spec_lib.load(args.spec)
  seeds = None if args.seeds is None else spec_lib.parse_seeds(args.seeds)
  for path in args.gin_file:
    if not os.path.isfile(os.path.join(REPO_ROOT, path)):
      raise spec_lib.SpecError(f'--gin_file: no gin file {path!r} (relative to {REPO_ROOT})')
  if args.mode == 'pod' and not (args.tpu and args.zone):
    raise spec_lib.SpecError('--mode pod needs --tpu and --zone.')
  # The commands run from the repository root, so relative roots would move.
  root = (
      args.root if args.mode == 'pod' or results.is_url(args.root) else os.path.abspath(args.root)
  )
  runs = plan.expand(
      spec,
      root,
      seeds=seeds,
      overrides=spec_lib.parse_overrides(args.set),
      extra_gin_files=args.gin_file,
      multiprocess=args.mode == 'pod',
  )
  if args.only:
    try:
      runs = plan.select(runs, args.only)
    except re.error as e:
      raise spec_lib.SpecError(f'--only {args.only!r}: {e}') from e
    if not runs:
      raise spec_lib.SpecError(f'--only {args.only!r} matches no run.')
  return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    runs = _runs(args)
  except spec_lib.SpecError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  python = args.python or (sys.executable if args.mode == 'local' else 'python')
  if args.mode == 'print':
    for run in runs:
      for command in run.commands:
        print(tpu_pod.shell_join(command.argv(python)))
    return 0
  if args.mode == 'local':
    if results.is_url(args.root):
      print(
          'error: local mode writes its markers and logs on this machine; give a local --root',
          file=sys.stderr,
      )
      return 2
    return runners.run_local(runs, python)
  return runners.run_pod(
      runs,
      python=python,
      tpu=args.tpu,
      zone=args.zone,
      project=args.project,
      repo_dir=args.repo_dir,
      dry_run=args.dry_run,
  )


if __name__ == '__main__':
  sys.exit(main())
