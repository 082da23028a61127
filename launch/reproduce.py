r"""Runs the small-scale reproduction of the paper (launch/sweeps/reproduction/) and draws it.

    python launch/reproduce.py [--root results/runs] [--out results/figures] [--workers 2]
        [--specs DIR] [--only REGEX] [--print] [--figures-only]

One command for every figure panel of a directory of sweep specs (launch/sweeps/README.md):
  1. expands each spec (`sweep.expand`; the specs in file name order, so a file name prefix
     sets which runs come first), then merges the runs of all specs: a training whose
     command equals an earlier one's up to its MODEL_DIR (after the earlier run directories it
     reads are renamed to their first copy) is trained once, and the later run directory is a
     symbolic link to the first; so the SFT students are trained once for every spec that
     starts from them, and e.g. Fig. 4's on-policy students are the grid's. Evaluations are
     merged the same way.
  2. runs the jobs (one training or one evaluation each) on `--workers` long-lived worker
     processes, each job in-process from its command line (`gin_utils.parse_gin`, then
     `train.train()` or `eval.evaluate()`), a job once the trainings it reads are done;
     resumable: a training with <MODEL_DIR>/TRAINED and an evaluation with its metrics are
     skipped, and an interrupted training resumes from its own checkpoint. Each worker runs
     XLA and TensorFlow on one thread (tiny models gain little from a second one, and two
     workers use both cores) and JAX's persistent compilation cache under <root>/jax_cache,
     so runs that differ only in seed or settings that are values compile once.
     One line per finished job: [i/N] job, its time, elapsed, ETA. A failed job stops the
     scheduling; its log is <MODEL_DIR>/logs/<job>.log.
  3. draws every spec's figure and CSV (`launch/figures.py`) into --out, and writes
     <out>/tables.md: every point's mean +- std over seeds, and its difference to the spec's
     baseline in units of their pooled standard deviation (`effect_sizes`).
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import glob
import math
import multiprocessing
import os
import re
import sys
import threading
import time
import traceback
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:
  # Run as `python launch/reproduce.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from launch import figures
from launch import sweep

DEFAULT_SPECS = os.path.join(sweep.REPO_ROOT, 'launch', 'sweeps', 'reproduction')
TRAINED = 'TRAINED'
ENTRY_POINTS = {'gkd_t5x.train': ('gkd_t5x.train', 'train'),
                'gkd_t5x.eval': ('gkd_t5x.eval', 'evaluate')}


@dataclasses.dataclass
class Job:
  """One command of the merged plan."""
  name: str                   # '<run name>: train' or '<run name>: eval <label>'
  kind: str                   # 'train' or 'eval'
  argv: List[str]
  output_dir: str             # MODEL_DIR (train) or EVAL_OUTPUT_DIR (eval)
  log: str                    # the job's log file
  needs: List[str]            # output_dirs of the trainings it reads

  def done(self) -> bool:
    if self.kind == 'train':
      return os.path.exists(os.path.join(self.output_dir, TRAINED))
    return sweep.eval_finished(self.output_dir)


@dataclasses.dataclass
class Plan:
  jobs: List[Job]
  links: Dict[str, str]       # run directory -> the directory of the identical first run


def _parse_argv(argv: Sequence[str]) -> Tuple[str, List[str], Dict[str, str]]:
  """(module, gin files, bindings) of a `python -m module --gin_file=... --gin.K=V` line."""
  module = argv[argv.index('-m') + 1]
  files, bindings = [], {}
  for arg in argv[argv.index('-m') + 2:]:
    if arg.startswith('--gin_file='):
      files.append(arg[len('--gin_file='):])
    elif arg.startswith('--gin.'):
      key, _, value = arg[len('--gin.'):].partition('=')
      bindings[key] = value
    else:
      raise ValueError(f'unexpected argument {arg!r} in {argv}')
  return module, files, bindings


def _rename(value: str, links: Mapping[str, str]) -> str:
  # Paths sit in gin strings: rename only whole directories, quoted or followed by '/'.
  for alias, target in links.items():
    value = value.replace(f"'{alias}'", f"'{target}'").replace(f"'{alias}/", f"'{target}/")
  return value


def plan(specs: Sequence[Mapping], root: str, python: str = sys.executable) -> Plan:
  """The merged jobs of `specs` under `root`, in spec order (see the module docstring)."""
  links: Dict[str, str] = {}
  trained: Dict[tuple, str] = {}      # training key -> its first MODEL_DIR
  evaluated: Dict[tuple, str] = {}    # evaluation key -> its first EVAL_OUTPUT_DIR
  jobs: List[Job] = []
  train_dirs = set()
  for spec in specs:
    runs = sweep.expand(spec, root, python=python)
    by_name = {run.name: run for run in runs}
    for run in runs:
      needs = [links.get(by_name[name].model_dir, by_name[name].model_dir)
               for name in run.needs]
      needs = [need for need in needs if need in train_dirs]  # not checkpoint references
      train_dir = links.get(run.model_dir, run.model_dir)
      for command in run.commands:
        argv = [_rename(arg, links) for arg in command.argv]
        module, files, bindings = _parse_argv(argv)
        if command.kind == 'train':
          key = (module, tuple(files),
                 tuple(sorted((k, v) for k, v in bindings.items() if k != 'MODEL_DIR')))
          if key in trained:
            links[run.model_dir] = train_dir = trained[key]
            continue
          trained[key] = run.model_dir
          train_dirs.add(run.model_dir)
          jobs.append(Job(f'{run.name}: train', 'train', argv, run.model_dir,
                          os.path.join(run.model_dir, 'logs', 'train.log'), needs))
        else:
          output_dir = _rename(f"'{command.output_dir}'", links)[1:-1]
          key = (module, tuple(files), tuple(sorted(bindings.items())))
          if key in evaluated:
            continue
          if output_dir in evaluated.values():
            raise ValueError(f'{run.name}: evaluation {command.log_name!r} writes to '
                             f'{output_dir}, where another evaluation of the same run (in '
                             'another spec, with other settings) writes: give it its own label.')
          evaluated[key] = output_dir
          own = [train_dir] if train_dir in train_dirs else []
          jobs.append(Job(f'{run.name}: {command.log_name.replace("_", " ", 1)}', 'eval', argv,
                          output_dir, os.path.join(train_dir, 'logs', f'{command.log_name}.log'),
                          list(dict.fromkeys(needs + own))))
  return Plan(jobs, links)


# --------------------------------------------------------------------------------- workers


def _exit_with_parent(parent: int) -> None:
  # A worker whose driver is gone (killed, interrupted) stops at once instead of finishing its
  # job, so that no orphan writes into run directories the next driver schedules afresh.
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)  # pylint: disable=protected-access


def _init_worker(cache_dir: str) -> None:
  """Runs once per worker process, before JAX or TensorFlow is imported."""
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_multi_thread_eigen=false'
                             ' intra_op_parallelism_threads=1').strip()
  for name in ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS', 'OMP_NUM_THREADS'):
    os.environ[name] = '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  import gkd_t5x.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


@contextlib.contextmanager
def _output_to(path: str):
  """Sends this process's stdout and stderr (Python, absl and C++ alike) to `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with open(path, 'a') as log:
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
      yield
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])


def _execute(job: Job) -> Tuple[bool, float]:
  """Runs one job in this worker; (succeeded, seconds). Its output goes to job.log."""
  import importlib  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from gkd_t5x import gin_utils  # pylint: disable=g-import-not-at-top
  started = time.monotonic()
  module, files, bindings = _parse_argv(job.argv)
  with _output_to(job.log):
    try:
      gin.clear_config()
      gin_utils.parse_gin(files, [f'{key} = {value}' for key, value in bindings.items()])
      module_name, function = ENTRY_POINTS[module]
      getattr(importlib.import_module(module_name), function)()
      if job.kind == 'train':
        with open(os.path.join(job.output_dir, TRAINED), 'w') as f:
          f.write(time.strftime('%Y-%m-%d %H:%M:%S\n'))
      return True, time.monotonic() - started
    except Exception:  # pylint: disable=broad-except  # reported, then the scheduler stops
      traceback.print_exc()
      return False, time.monotonic() - started


# ------------------------------------------------------------------------------ scheduling


def _link(links: Mapping[str, str]) -> None:
  """Makes every merged run directory a link to its first copy.

  Run directories left by an earlier order of the specs are mended first: a first copy that is
  now a link is removed, and a trained directory that is now a later copy moves to the first
  copy's place.
  """
  real = lambda path: os.path.isdir(path) and not os.path.islink(path)
  for target in set(links.values()):
    if os.path.islink(target):
      os.unlink(target)
  for alias, target in links.items():
    if real(alias) and not os.path.lexists(target):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(alias, target)
  for alias, target in links.items():
    relative = os.path.relpath(target, os.path.dirname(alias))
    if os.path.islink(alias) and os.readlink(alias) != relative:
      os.unlink(alias)
    if not os.path.lexists(alias):
      os.makedirs(os.path.dirname(alias), exist_ok=True)
      os.symlink(relative, alias)
    elif not os.path.islink(alias):
      raise RuntimeError(f'{alias} and {target} both hold a run of the same training; remove '
                         'one of them.')


def run(plan_: Plan, workers: int, cache_dir: str) -> int:
  """Runs the jobs that are not done; returns 0, or 1 after a failed job."""
  _link(plan_.links)
  pending = [job for job in plan_.jobs if not job.done()]
  finished = {job.output_dir for job in plan_.jobs if job.done()}
  total, skipped = len(plan_.jobs), len(plan_.jobs) - len(pending)
  print(f'{total} jobs ({sum(j.kind == "train" for j in plan_.jobs)} trainings), '
        f'{skipped} done already; {workers} workers.', flush=True)
  durations: Dict[str, List[float]] = {'train': [], 'eval': []}
  start, count, failed = time.monotonic(), skipped, None
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=_init_worker,
                                              initargs=(cache_dir,)) as pool:
    running: Dict[concurrent.futures.Future, Job] = {}
    while (pending and failed is None) or running:
      while failed is None and len(running) < workers:
        ready = next((job for job in pending if all(n in finished for n in job.needs)), None)
        if ready is None:
          break
        pending.remove(ready)
        running[pool.submit(_execute, ready)] = ready
      if not running:
        missing = sorted({n for job in pending for n in job.needs} - finished)
        print(f'error: {len(pending)} jobs wait for trainings that no job makes: {missing}',
              file=sys.stderr)
        return 1
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        job = running.pop(future)
        ok, seconds = future.result()
        count += 1
        if not ok:
          failed = job
          print(f'[{count}/{total}] {job.name}: FAILED after {sweep.format_duration(seconds)}; '
                f'log: {job.log}', flush=True)
          continue
        finished.add(job.output_dir)
        durations[job.kind].append(seconds)
        left = sum(_mean(durations[j.kind], durations) for j in pending)
        left += sum(_mean(durations[j.kind], durations) for j in running.values()) / 2
        print(f'[{count}/{total}] {job.name} done in {sweep.format_duration(seconds)}; elapsed '
              f'{sweep.format_duration(time.monotonic() - start)}, '
              f'ETA {sweep.format_duration(left / workers)}', flush=True)
  if failed is not None:
    with open(failed.log) as f:
      tail = f.read().splitlines()[-30:]
    print(f'\n{failed.name} failed; the end of {failed.log}:\n' + '\n'.join(tail),
          file=sys.stderr)
    return 1
  return 0


def _mean(values: Sequence[float], durations: Mapping[str, Sequence[float]]) -> float:
  every = [v for kind in durations.values() for v in kind]
  return (sum(values) / len(values) if values else
          sum(every) / len(every) if every else 0.0)


# --------------------------------------------------------------------------------- tables


def effect_size(mean: float, std: float, n: int, base_mean: float, base_std: float,
                base_n: int) -> Optional[float]:
  """(mean - base_mean) / s_pooled, s_pooled^2 = ((n-1) std^2 + (m-1) base_std^2) / (n+m-2).

  The difference in standard deviations of a single seed (Cohen's d); None where the pooled
  deviation is 0 or undefined (fewer than 3 values in all).
  """
  if n + base_n <= 2:
    return None
  pooled = math.sqrt(((n - 1) * std ** 2 + (base_n - 1) * base_std ** 2) / (n + base_n - 2))
  return (mean - base_mean) / pooled if pooled > 0 else None


def tables(specs: Sequence[Mapping], out: str) -> str:
  """Markdown tables from the CSVs that figures.py wrote into `out`."""
  import csv  # pylint: disable=g-import-not-at-top
  lines = []
  for spec in specs:
    path = os.path.join(out, f'{spec["name"]}.csv')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = list(csv.DictReader(f))
    plots = figures._plots(spec)  # pylint: disable=protected-access
    baseline = next((p.get('baseline') for _, p in plots if p.get('baseline')), None)
    lines += [f'### {spec["name"]}', '', spec.get('figure', ''), '']
    axes = [axis['name'] for axis in spec['axes']]
    lines.append('| ' + ' | '.join(['point', 'evaluation', 'metric', 'mean ± std', 'n',
                                    f'Δ vs {baseline or "-"}', 'Δ / pooled std']) + ' |')
    lines.append('|' + ' --- |' * 7)
    base = {(r['evaluation'], r['metric']): r for r in rows if r['reference'] == baseline}
    base_any = {r['metric']: r for r in rows if r['reference'] == baseline}
    for r in rows:
      if not r['mean']:
        continue
      label = r['reference'] and f'[{r["reference"]}]' or ', '.join(r[a] for a in axes)
      mean, std, n = float(r['mean']), float(r['std'] or 0), int(r['n_seeds'])
      delta = effect = ''
      b = base.get((r['evaluation'], r['metric'])) or base_any.get(r['metric'])
      if b is not None and b is not r and b['mean']:
        diff = mean - float(b['mean'])
        size = effect_size(mean, std, n, float(b['mean']), float(b['std'] or 0),
                           int(b['n_seeds']))
        delta = f'{diff:+.2f}'
        effect = '' if size is None else f'{size:+.1f}'
      lines.append(f'| {label} | {r["evaluation"] or "final"} | {r["metric"]} | '
                   f'{mean:.2f} ± {std:.2f} | {n} | {delta} | {effect} |')
    lines.append('')
  return '\n'.join(lines)


def draw(specs: Sequence[Tuple[str, Mapping]], root: str, out: str) -> int:
  status = 0
  for path, _ in specs:
    status = max(status, figures.main([path, '--root', root, '--out', out]))
  with open(os.path.join(out, 'tables.md'), 'w') as f:
    f.write('# Tables (written by launch/reproduce.py)\n\n'
            + tables([spec for _, spec in specs], out))
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description='The small-scale reproduction, end to end.')
  parser.add_argument('--specs', default=DEFAULT_SPECS, help='a directory of sweep specs')
  parser.add_argument('--root', default=os.path.join(sweep.REPO_ROOT, 'results', 'runs'),
                      help='where the runs go (not committed)')
  parser.add_argument('--out', default=os.path.join(sweep.REPO_ROOT, 'results', 'figures'),
                      help='where the figures, CSVs and tables.md go')
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
    specs = [(path, sweep.load_spec(path)) for path in paths]
    plan_ = plan([spec for _, spec in specs], root)
  except (sweep.SpecError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.only:
    wanted = {job.output_dir for job in plan_.jobs if re.search(args.only, job.name)}
    frontier = list(wanted)
    by_dir = {job.output_dir: job for job in plan_.jobs}
    while frontier:
      for need in by_dir[frontier.pop()].needs:
        if need not in wanted:
          wanted.add(need)
          frontier.append(need)
    plan_ = Plan([job for job in plan_.jobs if job.output_dir in wanted], plan_.links)
  if args.print:
    for job in plan_.jobs:
      print(f'{job.name}\n  {" ".join(job.argv)}')
    for alias, target in plan_.links.items():
      print(f'link {alias} -> {target}')
    return 0
  if not args.figures_only:
    status = run(plan_, args.workers, os.path.join(root, 'jax_cache'))
    if status:
      return status
  return draw(specs, root, out)


if __name__ == '__main__':
  sys.exit(main())
