r"""Runs commands: one after another here or on a TPU pod slice, or as jobs on local workers.

  run_local  a sweep's runs in order, each command a process started from the repository
             root, its output in <MODEL_DIR>/logs/<command>.{out,err}; stops at the first
             failure with the command and its stderr's tail.
  run_pod    each command through launch/tpu_pod.py on every worker of a TPU pod slice, one
             after another; nothing is skipped, but a restarted training resumes from its own
             latest checkpoint.
  run_jobs   a merged plan's jobs (launch/reproduce.py) on long-lived worker processes, each
             job in-process from its command (`gin_utils.parse_gin`, then `train.train()` or
             `eval.evaluate()`), a job once the trainings it reads are done, its output in its
             log; a failed job stops the scheduling, a killed worker only its own job (and
             those that need it). Each worker runs XLA and TensorFlow on one
             thread (tiny models gain little from a second one, and two workers use both
             cores) and JAX's persistent compilation cache, so runs that differ only in seed
             or settings that are values compile once.

A SIGTERM to the driver (run_local, run_jobs) is passed on to the runs in progress; a training
saves its checkpoint and exits (`gkd_t5x.preemption`), and the driver reports those runs as
interrupted, marks none of them done, and exits with the trainer's preemption code (75). A
driver killed outright (SIGKILL) takes its runs with it: run_local's runs get SIGTERM from the
kernel (Linux's parent-death signal) and save as above, run_jobs' workers exit at once.

What is done is skipped (`finished`): a training whose MODEL_DIR has the marker DONE, an
evaluation whose output directory has its metrics. An interrupted training resumes from its own
checkpoint. One progress line per run or job (`Progress`): [i/N] name, its time, the time
elapsed and an ETA.
"""

import concurrent.futures
import contextlib
import ctypes
import functools
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from gkd_t5x import preemption
from launch import REPO_ROOT
from launch import results
from launch import tpu_pod
from launch.plan import Command
from launch.plan import Job
from launch.plan import Plan
from launch.plan import Run

# In a MODEL_DIR: its training finished. run_jobs writes it after the training, run_local once
# the whole run (training and evaluations) succeeded.
DONE = 'DONE'
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Loaded here, not in the forked child, where loading could wait on a lock held at the fork.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith('linux') else None
# What became of a job on a worker, beside DONE.
FAILED, INTERRUPTED = 'FAILED', 'INTERRUPTED'
# What launch/reproduce.py wrote instead of DONE before run_jobs and run_local shared one
# marker: the reproduction's run directories of that time are trained, not to be run again.
_TRAINED_BEFORE = 'TRAINED'
ENTRY_POINTS = {
    'gkd_t5x.train': ('gkd_t5x.train', 'train'),
    'gkd_t5x.eval': ('gkd_t5x.eval', 'evaluate'),
}


def finished(command: Command) -> bool:
  """Whether a training's MODEL_DIR has DONE, or an evaluation's directory its metrics."""
  if command.kind == 'train':
    return any(
        os.path.exists(os.path.join(command.output_dir, marker))
        for marker in (DONE, _TRAINED_BEFORE)
    )
  return results.eval_finished(command.output_dir)


def _mark_done(model_dir: str) -> None:
  with open(os.path.join(model_dir, DONE), 'w') as f:
    f.write(time.strftime('%Y-%m-%d %H:%M:%S\n'))


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """'[i/N] name' lines: a finished job's time, the time elapsed, and an ETA from the mean time
  of the finished jobs of each kind (the skipped ones are not timed), over the workers."""

  def __init__(self, total: int, workers: int = 1, done: int = 0):
    self.total, self.workers, self.count = total, workers, done
    self.start = time.monotonic()
    self.durations: Dict[str, List[float]] = {}

  def skipped(self, name: str) -> None:
    print(f'{self._next(name)}: done already', flush=True)

  def begin(self, name: str) -> None:
    """Starts the line of a job that runs alone, for `done` or `failed` to end."""
    print(f'{self._next(name)} ...', end=' ', flush=True)

  def done(
      self,
      kind: str,
      seconds: float,
      pending: Sequence[str],
      running: Sequence[str] = (),
      name: Optional[str] = None,
  ) -> None:
    """A finished job of `kind`, with the kinds of the jobs `pending` and `running` (counted
    half done) for the ETA; with `name`, on a line of its own."""
    self.durations.setdefault(kind, []).append(seconds)
    left = sum(map(self._mean, pending)) + sum(map(self._mean, running)) / 2
    head = '' if name is None else f'{self._next(name)} '
    print(
        f'{head}done in {format_duration(seconds)}; elapsed '
        f'{format_duration(time.monotonic() - self.start)}, '
        f'ETA {format_duration(left / self.workers)}',
        flush=True,
    )

  def interrupted(self, name: Optional[str] = None) -> None:
    """Ends a begun line, or with `name` is a line of its own: a run stopped by SIGTERM."""
    head = 'INTERRUPTED' if name is None else f'{self._next(name)}: INTERRUPTED'
    print(f'{head} (SIGTERM; rerun to resume it)', flush=True)

  def failed(self, name: Optional[str] = None, seconds: float = 0.0, log: str = '') -> None:
    """Ends a begun line, or with `name` is a line of its own with the job's time and log."""
    if name is None:
      print('FAILED', flush=True)
    else:
      print(f'{self._next(name)}: FAILED after {format_duration(seconds)}; log: {log}', flush=True)

  def _next(self, name: str) -> str:
    self.count += 1
    return f'[{self.count}/{self.total}] {name}'

  def _mean(self, kind: str) -> float:
    values = self.durations.get(kind) or [v for vs in self.durations.values() for v in vs]
    return sum(values) / len(values) if values else 0.0


@contextlib.contextmanager
def _sigterm_passed_on(children: Callable[[], Iterable[int]]):
  """While inside, a SIGTERM to this process is sent on to the processes `children()` names
  (pids) instead of ending it; yields the `threading.Event` that says one came."""
  received = threading.Event()

  def pass_on(signum, frame):
    del frame
    received.set()
    for pid in children():
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)

  previous = signal.signal(signal.SIGTERM, pass_on)
  try:
    yield received
  finally:
    signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------- one by one


def run_local(runs: Sequence[Run], python: str, cwd: str = REPO_ROOT, tail_lines: int = 40) -> int:
  """Runs the commands that are not finished, in order; returns the exit status
  (`preemption.EXIT_CODE` after a SIGTERM, which the running command gets too)."""
  running: List[subprocess.Popen] = []
  with _sigterm_passed_on(lambda: [process.pid for process in running]) as interrupted:
    return _run_in_order(runs, python, cwd, tail_lines, running, interrupted)


def _run_in_order(
    runs: Sequence[Run],
    python: str,
    cwd: str,
    tail_lines: int,
    running: List[subprocess.Popen],
    interrupted: threading.Event,
) -> int:
  """run_local's loop; `running` holds the command in progress for the SIGTERM handler."""
  progress = Progress(len(runs))
  for index, run in enumerate(runs, 1):
    pending = [command for command in run.commands if not finished(command)]
    if not pending:
      progress.skipped(run.name)
      continue
    started = time.monotonic()
    progress.begin(run.name)
    # realpath: a run directory may be a link to the same run of another sweep, which that
    # sweep has not made yet (makedirs cannot go through a dangling link).
    logs = os.path.join(os.path.realpath(run.model_dir), 'logs')
    os.makedirs(logs, exist_ok=True)
    for command in pending:
      argv = command.argv(python)
      out, err = (os.path.join(logs, f'{command.log_name}.{ext}') for ext in ('out', 'err'))
      with open(out, 'w') as stdout, open(err, 'w') as stderr:
        running.append(
            subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=stdout,
                stderr=stderr,
                # The driver runs no other thread that could hold a lock across the fork.
                preexec_fn=functools.partial(_terminate_with, os.getpid()),  # noqa: PLW1509
            )
        )
        status = running[0].wait()
        running.clear()
      if interrupted.is_set() or status == preemption.EXIT_CODE:
        progress.interrupted()
        return preemption.EXIT_CODE
      if status != 0:
        progress.failed()
        with open(err) as f:
          tail = f.read().splitlines()[-tail_lines:]
        print(
            f'\n{run.name}: {command.kind} failed (exit status {status}):\n'
            f'  {tpu_pod.shell_join(argv)}\nlast lines of {err}:\n' + '\n'.join(tail),
            file=sys.stderr,
        )
        return status
    _mark_done(run.model_dir)
    progress.done('run', time.monotonic() - started, ['run'] * (len(runs) - index))
  return 0


def _terminate_with(driver: int) -> None:
  """In a run's process before it starts: SIGTERM once `driver` dies, even by SIGKILL
  (Linux's parent-death signal), so that the run saves a checkpoint and exits as preempted
  instead of training on as an orphan beside the run a rerun driver starts in its directory."""
  if _LIBC is None:
    return
  _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  if os.getppid() != driver:  # it died before the signal was armed
    os.kill(os.getpid(), signal.SIGTERM)


def run_pod(
    runs: Sequence[Run],
    *,
    python: str,
    tpu: str,
    zone: str,
    project: Optional[str],
    repo_dir: str,
    dry_run: bool,
) -> int:
  """Runs every command on all workers of the pod slice, one after another; `dry_run` prints
  the gcloud commands instead."""
  progress = Progress(len(runs))
  for index, run in enumerate(runs, 1):
    lines = [tpu_pod.shell_join(command.argv(python)) for command in run.commands]
    if dry_run:
      for line in lines:
        print(
            tpu_pod.shell_join(
                tpu_pod.pod_command(tpu, zone, line, project=project, repo_dir=repo_dir)
            )
        )
      continue
    started = time.monotonic()
    progress.begin(run.name)
    for command, line in zip(run.commands, lines):
      status = tpu_pod.run_on_pod(tpu, zone, line, project=project, repo_dir=repo_dir)
      if status != 0:
        progress.failed()
        print(
            f'\n{run.name}: {command.kind} failed on the pod (exit status {status}):\n  {line}',
            file=sys.stderr,
        )
        return status
    progress.done('run', time.monotonic() - started, ['run'] * (len(runs) - index))
  return 0


# ------------------------------------------------------------------------------- workers


def _exit_with_parent(parent: int) -> None:
  # A worker whose driver is gone (killed, interrupted) stops at once instead of finishing its
  # job, so that no orphan writes into run directories the next driver schedules afresh.
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)


class _InterruptedError(Exception):
  """SIGTERM reached a worker outside a training's loop (which saves and raises its own)."""


def _raise_interrupted(signum, frame) -> None:
  del signum, frame
  raise _InterruptedError('SIGTERM')


def _init_worker(cache_dir: str) -> None:
  """Runs once per worker process, before JAX or TensorFlow is imported."""
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
  signal.signal(signal.SIGTERM, _raise_interrupted)
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false'
      ' intra_op_parallelism_threads=1'
  ).strip()
  for name in ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS', 'OMP_NUM_THREADS'):
    os.environ[name] = '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax

  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  import gkd_t5x.tasks  # noqa: F401


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


def _execute(job: Job) -> Tuple[str, float]:
  """Runs one job in this worker; (DONE, FAILED or INTERRUPTED, seconds). Its output goes to
  job.log."""
  import gin
  from gkd_t5x import gin_utils

  started = time.monotonic()
  command = job.command
  with _output_to(job.log):
    try:
      gin.clear_config()
      gin_utils.parse_gin(
          list(command.gin_files),
          [f'{key} = {value}' for key, value in command.gin_bindings().items()],
      )
      module_name, function = ENTRY_POINTS[command.module]
      getattr(importlib.import_module(module_name), function)()
      if job.kind == 'train':
        _mark_done(job.output_dir)
      return DONE, time.monotonic() - started
    except (preemption.PreemptionError, _InterruptedError) as error:
      print(f'Interrupted: {error}', flush=True)
      return INTERRUPTED, time.monotonic() - started
    except Exception:  # reported, then the scheduler stops
      traceback.print_exc()
      return FAILED, time.monotonic() - started


def link_merged_runs(links: Mapping[str, str]) -> None:
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
      raise RuntimeError(
          f'{alias} and {target} both hold a run of the same training; remove one of them.'
      )


def run_jobs(plan: Plan, workers: int, cache_dir: str) -> int:
  """Runs the jobs that are not finished on `workers` processes; returns 0, 1 after a failed
  job, or `preemption.EXIT_CODE` after a SIGTERM (passed on to the workers)."""
  link_merged_runs(plan.links)
  pending = [job for job in plan.jobs if not finished(job.command)]
  done = {job.output_dir for job in plan.jobs if finished(job.command)}
  total, skipped = len(plan.jobs), len(plan.jobs) - len(pending)
  print(
      f'{total} jobs ({sum(j.kind == "train" for j in plan.jobs)} trainings), '
      f'{skipped} done already; {workers} workers.',
      flush=True,
  )
  progress = Progress(total, workers, done=skipped)
  context = multiprocessing.get_context('spawn')
  workers_alive = lambda: [process.pid for process in multiprocessing.active_children()]
  # One single-process pool per worker: a worker that dies breaks its own pool only, and the
  # jobs on the others go on.
  make_pool = lambda: concurrent.futures.ProcessPoolExecutor(
      1, mp_context=context, initializer=_init_worker, initargs=(cache_dir,)
  )
  try:
    with _sigterm_passed_on(workers_alive) as interrupted:
      with contextlib.ExitStack() as stack:
        pools = [stack.enter_context(make_pool()) for _ in range(workers)]
        failed = _schedule(pools, make_pool, stack, pending, done, progress, interrupted)
  except RuntimeError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if interrupted.is_set():
    return preemption.EXIT_CODE
  if failed is None:
    return 0
  with open(failed.log) as f:
    tail = f.read().splitlines()[-30:]
  print(f'\n{failed.name} failed; the end of {failed.log}:\n' + '\n'.join(tail), file=sys.stderr)
  return 1


def _schedule(
    pools: List[concurrent.futures.Executor],
    make_pool: Callable[[], concurrent.futures.Executor],
    stack: contextlib.ExitStack,
    pending: List[Job],
    done: Set[str],
    progress: Progress,
    interrupted: threading.Event,
) -> Optional[Job]:
  """Runs the `pending` jobs on `pools` (one worker each), each job once the trainings it needs
  are `done`, until one fails or `interrupted` is set; returns the first that failed, or None.

  A job whose worker died (killed: its pool breaks) is reported by name and not marked done;
  its pool is replaced and the other jobs go on, except those that need its training, which
  wait for a rerun. The first such job is returned as failed once nothing else can run.

  Raises:
    RuntimeError: jobs wait for trainings that no job makes.
  """
  running: Dict[concurrent.futures.Future, Tuple[Job, int]] = {}
  failed, died = None, None
  while (pending and failed is None and not interrupted.is_set()) or running:
    free = [index for index in range(len(pools)) if index not in {i for _, i in running.values()}]
    while failed is None and not interrupted.is_set() and free:
      ready = next((job for job in pending if all(n in done for n in job.needs)), None)
      if ready is None:
        break
      pending.remove(ready)
      index = free.pop(0)
      running[pools[index].submit(_execute, ready)] = (ready, index)
    if not running:
      if interrupted.is_set() or died is not None:
        break
      missing = sorted({n for job in pending for n in job.needs} - done)
      raise RuntimeError(f'{len(pending)} jobs wait for trainings that no job makes: {missing}')
    completed, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in completed:
      job, index = running.pop(future)
      try:
        outcome, seconds = future.result()
      except concurrent.futures.process.BrokenProcessPool:
        print(f'{job.name}: its worker process died (killed?); a rerun retries it.', flush=True)
        died = died or job
        pools[index] = stack.enter_context(make_pool())
        progress.failed(job.name, 0.0, job.log)
        continue
      if outcome == INTERRUPTED:
        progress.interrupted(job.name)
        continue
      if outcome == FAILED:
        failed = failed or job
        progress.failed(job.name, seconds, job.log)
        continue
      done.add(job.output_dir)
      progress.done(
          job.kind,
          seconds,
          [j.kind for j in pending],
          [j.kind for j, _ in running.values()],
          name=job.name,
      )
  return failed or died
