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
from typing import Dict, Optional, Sequence

if __name__ == '__main__' and not __package__:
  # Run as `python launch/sweep.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from launch import REPO_ROOT
from launch import plan
from launch import results
from launch import runners
from launch import spec as spec_lib
from launch import tpu_pod


def parse_overrides(items: Sequence[str]) -> Dict[str, str]:
  """['NAME=VALUE', ...] -> {NAME: VALUE} (the value is a gin literal, kept as written)."""
  overrides = {}
  for item in items:
    name, separator, value = item.partition('=')
    if not separator or not name.strip() or not value.strip():
      raise spec_lib.SpecError(f'--set {item!r}: expected NAME=VALUE with a gin literal, e.g. '
                               'TRAIN_STEPS=20 or DIVERGENCE="\'jsd\'"')
    overrides[name.strip()] = value.strip()
  return overrides


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description='Runs the sweep of one figure panel (spec format: launch/sweeps/README.md).')
  parser.add_argument('spec', help='the sweep spec (JSON)')
  parser.add_argument('--root', required=True, help='output root (a directory or gs:// URL)')
  parser.add_argument('--mode', choices=('print', 'local', 'pod'), default='print')
  parser.add_argument('--only', help='regex on run names (<spec>/<point>/seed_<k>); the '
                      'references the chosen runs read are kept')
  parser.add_argument('--seeds', help='comma-separated seeds replacing the spec\'s, e.g. 0,1')
  parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                      help='a gin binding for every run and evaluation, after all others')
  parser.add_argument('--gin_file', action='append', default=[],
                      help='a gin file parsed after every run\'s experiment files')
  parser.add_argument('--python', help='interpreter of the commands (default: this one in '
                      'local mode, "python" otherwise)')
  parser.add_argument('--tpu', help='pod mode: the TPU VM name')
  parser.add_argument('--zone', help='pod mode: its zone')
  parser.add_argument('--project', help='pod mode: its project (default: gcloud\'s)')
  parser.add_argument('--repo_dir', default='~/gkd_t5x',
                      help='pod mode: the repository on every worker')
  parser.add_argument('--dry-run', action='store_true',
                      help='pod mode: print the gcloud commands instead of running them')
  return parser


def _runs(args: argparse.Namespace) -> Sequence[plan.Run]:
  """The runs the command line asks for; raises SpecError on bad input."""
  spec = spec_lib.load(args.spec)
  seeds = None
  if args.seeds is not None:
    try:
      seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError as e:
      raise spec_lib.SpecError(
          f'--seeds {args.seeds!r}: expected comma-separated integers') from e
  for path in args.gin_file:
    if not os.path.isfile(os.path.join(REPO_ROOT, path)):
      raise spec_lib.SpecError(f'--gin_file: no gin file {path!r} (relative to {REPO_ROOT})')
  if args.mode == 'pod' and not (args.tpu and args.zone):
    raise spec_lib.SpecError('--mode pod needs --tpu and --zone.')
  # The commands run from the repository root, so relative roots would move.
  root = args.root if args.mode == 'pod' or results.is_url(args.root) else os.path.abspath(
      args.root)
  runs = plan.expand(spec, root, seeds=seeds, overrides=parse_overrides(args.set),
                     extra_gin_files=args.gin_file, multiprocess=args.mode == 'pod')
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
      print('error: local mode writes its markers and logs on this machine; give a local '
            '--root', file=sys.stderr)
      return 2
    return runners.run_local(runs, python)
  return runners.run_pod(runs, python=python, tpu=args.tpu, zone=args.zone,
                         project=args.project, repo_dir=args.repo_dir, dry_run=args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
