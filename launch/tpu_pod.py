r"""Runs one command on every worker of a TPU pod slice, from the repository on each worker.

    python launch/tpu_pod.py --tpu NAME --zone ZONE [--project P] [--repo_dir ~/gkd_t5x]
        [--dry-run] -- python -m t5x.train --gin_file=... --gin.MODEL_DIR="'gs://...'"
    python launch/tpu_pod.py --tpu NAME --zone ZONE [--project P] [--repo_dir ...] --setup
        [--dry-run]

builds (`pod_command`) and runs

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE [--project=P] --worker=all \
        --command="cd <repo_dir> && <command>"

with the command's arguments shell-quoted, so a gin string literal such as
--gin.MODEL_DIR="'gs://b/run'" reaches the worker's trainer as written. gcloud starts it on all
workers at once and returns when all have finished (a pod job needs every host). `--setup`
runs the install commands of the README's "TPU pods with T5X" section (`SETUP_COMMANDS`:
the project with its t5x extra, t5x / airio / jestimator at the tested commits without their
dependencies, and the TPU runtime of the pinned jax) on all workers, from the repository, which
must already be on every worker at --repo_dir (copied or cloned). `--dry-run` prints the gcloud
command instead of running it. launch/sweep.py --mode pod sends each run through here.
"""

import argparse
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

# The README's install commands ("TPU pods with T5X"; tests/test_launch.py checks they agree).
SETUP_COMMANDS = (
    ('pip', 'install', '-e', '.[t5x]'),
    (
        'pip',
        'install',
        '--no-deps',
        'git+https://github.com/google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16',
        'git+https://github.com/google/airio@69897df7d9a427b947a9f7bb4164c7782b43e601',
        'git+https://github.com/google-research/jestimator@326824a477feef6d92e6f44175000907a72899ca',
    ),
    (
        'pip',
        'install',
        'jax[tpu]==0.10.2',
        '-f',
        'https://storage.googleapis.com/jax-releases/libtpu_releases.html',
    ),
)


def shell_quote(arg: str) -> str:
  """`arg` for a POSIX shell, readably: --gin.X="'v'" rather than shlex's '--gin.X='"'"'v'"'"''."""
  quoted = shlex.quote(arg)
  if quoted == arg:
    return arg
  flag, separator, value = arg.partition('=')
  if (
      separator
      and flag.startswith('-')
      and shlex.quote(flag) == flag
      and not any(c in value for c in '"$`\\!\n')
  ):
    return f'{flag}="{value}"'
  return quoted


def shell_join(argv: Sequence[str]) -> str:
  """The command line of `argv` (shlex.split gives `argv` back)."""
  return ' '.join(shell_quote(arg) for arg in argv)


def _cd(repo_dir: str) -> str:
  # A leading ~ must stay unquoted for the worker's shell to expand it.
  if repo_dir == '~':
    return 'cd ~'
  if repo_dir.startswith('~/'):
    return 'cd ~/' + shlex.quote(repo_dir[2:])
  return 'cd ' + shlex.quote(repo_dir)


def pod_command(
    tpu: str, zone: str, command: str, *, project: Optional[str] = None, repo_dir: str = '~/gkd_t5x'
) -> List[str]:
  """The gcloud argv that runs `command` (a shell command line) on all workers of `tpu`."""
  argv = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu, f'--zone={zone}']
  if project:
    argv.append(f'--project={project}')
  argv += ['--worker=all', f'--command={_cd(repo_dir)} && {command}']
  return argv


def setup_command() -> str:
  """The install commands as one shell command line."""
  return ' && '.join(shell_join(command) for command in SETUP_COMMANDS)


def run_on_pod(
    tpu: str, zone: str, command: str, *, project: Optional[str] = None, repo_dir: str = '~/gkd_t5x'
) -> int:
  """Runs `command` on all workers; returns gcloud's exit status."""
  argv = pod_command(tpu, zone, command, project=project, repo_dir=repo_dir)
  try:
    return subprocess.run(argv, check=False).returncode
  except FileNotFoundError:
    print(
        'error: gcloud is not installed (https://cloud.google.com/sdk/docs/install).',
        file=sys.stderr,
    )
    return 127


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description='Runs a command on all workers of a TPU pod slice.',
      usage='%(prog)s --tpu NAME --zone ZONE [--project P] [--repo_dir DIR] [--dry-run] '
      '(--setup | -- COMMAND ...)',
  )
  parser.add_argument('--tpu', required=True, help='the TPU VM name')
  parser.add_argument('--zone', required=True, help='its zone, e.g. us-central2-b')
  parser.add_argument('--project', help="its project (default: gcloud's configured one)")
  parser.add_argument(
      '--repo_dir', default='~/gkd_t5x', help='the repository on every worker (default ~/gkd_t5x)'
  )
  parser.add_argument('--dry-run', action='store_true', help='print the gcloud command only')
  parser.add_argument(
      '--setup', action='store_true', help="run the README's install commands on every worker"
  )
  parser.add_argument(
      'command', nargs=argparse.REMAINDER, help='after --: the command to run on every worker'
  )
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if args.setup == bool(command):
    parser.error('give either --setup or a command after --')
  line = setup_command() if args.setup else shell_join(command)
  if args.dry_run:
    print(
        shell_join(
            pod_command(args.tpu, args.zone, line, project=args.project, repo_dir=args.repo_dir)
        )
    )
    return 0
  return run_on_pod(args.tpu, args.zone, line, project=args.project, repo_dir=args.repo_dir)


if __name__ == '__main__':
  sys.exit(main())
