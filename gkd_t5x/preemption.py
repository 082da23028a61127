"""Preemption: a SIGTERM makes the run save at a step every host agrees on, then exit.

TPU maintenance events and preemptible capacity send SIGTERM and kill the process a while
later. The trainer asks `Watch.reached_sync_point(step)` after every step:

  - several processes (`jax.distributed`): JAX's preemption sync manager, whose
    notifier catches SIGTERM on any host; `multihost_utils.reached_preemption_sync_point`
    answers True on every host at the same step (one past the largest step any host had
    reached when the notice spread), the protocol orbax's `CheckpointManager.should_save` uses;
  - one process: there is nobody to agree with, so a Python SIGTERM handler sets a flag and
    the next step is the sync point.

The trainer then saves that step, prints one line and exits with `EXIT_CODE` (sysexits'
EX_TEMPFAIL, 75: "temporary failure, retry"), which launch scripts tell apart from success (0)
and failure (1, or a signal's 128 + n).
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

EXIT_CODE = os.EX_TEMPFAIL


class PreemptionError(Exception):
  """Raised after the preemption checkpoint is written: the run should exit with EXIT_CODE."""

  def __init__(self, step: int, model_dir: str):
    super().__init__(
        f'Preempted (SIGTERM): saved the checkpoint of step {step} in {model_dir}; exiting '
        f'with code {EXIT_CODE} (rerun the same command to resume).'
    )
    self.step = step


class Watch:
  """Whether this step is the preemption sync point. A context manager: the single-process
  SIGTERM handler is installed on entry and the previous one put back on exit."""

  def __init__(self):
    self._multihost = jax.process_count() > 1
    self._notice = threading.Event()
    self._previous = None

  def __enter__(self) -> 'Watch':
    if not self._multihost:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if not self._multihost:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving at the next step, then exiting.')
    self._notice.set()

  def reached_sync_point(self, step: int) -> bool:
    """True at the step where every host saves and exits; call it after every step."""
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()
