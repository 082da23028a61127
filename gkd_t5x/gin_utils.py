"""T5X's gin command line for this project's entry points.

    python -m gkd_t5x.train --gin_file=gin/runs/train.gin --gin_file=EXPERIMENT.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.LMBDA=0.5 --gin_bindings="BETA = 0.9"

`--gin_file` and `--gin_bindings` repeat; `--gin.NAME=VALUE` is `--gin_bindings='NAME = VALUE'`
(T5X's `gin_utils.rewrite_gin_args`); files are looked up in `--gin_search_paths`, then in the
current directory and in this project's root, so `include 'gin/models/...'` works from
anywhere.
"""

import json
import os
import pathlib
import sys
from typing import Any, Callable, List, Optional, Sequence

from absl import app
from absl import flags

import gin

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_multi_string('gin_file', [], 'Gin files to parse, in order.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings, applied after the files.')
flags.DEFINE_list('gin_search_paths', [], 'Directories in which gin files are looked up.')


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
  """Turns every `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  rewritten = []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, separator, value = arg[len('--gin.') :].partition('=')
      if not separator:
        raise ValueError(f'{arg!r}: a --gin. flag needs a value, e.g. --gin.LMBDA=0.5.')
      arg = f'--gin_bindings={name} = {value}'
    rewritten.append(arg)
  return rewritten


def parse_gin(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    finalize: bool = True,
) -> None:
  """Parses files then bindings, with the search paths and the project root registered.

  Raises:
    ValueError: no gin file was given.
  """
  if not gin_files:
    raise ValueError(
        'Give at least one --gin_file (for example gin/runs/train.gin with an experiment file).'
    )
  for path in [*search_paths, os.getcwd(), str(PROJECT_ROOT)]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(gin_files, gin_bindings, finalize_config=finalize)


def run(main, argv: Optional[Sequence[str]] = None) -> None:
  """absl's `app.run(main)` with the `--gin.` flags rewritten first."""
  app.run(main, argv=rewrite_gin_args(argv if argv is not None else sys.argv))


def run_printing_json(fn: Callable[[], Any]) -> None:
  """Runs a script whose run file binds `fn` (as T5X's scripts do, through
  `import __main__`), and prints what it returns as one JSON line."""

  def main(argv):
    if len(argv) > 1:
      raise ValueError(f'Unexpected arguments: {argv[1:]}')
    configured = gin.configurable(fn)
    parse_gin_flags()
    print(json.dumps(configured()), flush=True)

  run(main)


def parse_gin_flags() -> None:
  """Parses the gin flags of the command line (call inside `main`)."""
  parse_gin(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths)
