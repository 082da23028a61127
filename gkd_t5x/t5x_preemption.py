"""Preemption under `t5x/train.py`: SIGTERM into T5X's own emergency checkpoint.

T5X's train loop saves an emergency checkpoint, waits for it, and re-raises when a `train()`
call of its trainer raises `t5x.trainer.PreemptionError`; nothing in open-source T5X raises it.
`preemptible_trainer` (gin/runs/t5x_finetune.gin binds it as `trainer_cls`) builds T5X's
trainer, its gin settings included, and makes its `train()` raise that error at the preemption
sync point (`gkd_t5x.preemption.Watch`: JAX's preemption sync manager across hosts, a SIGTERM
flag in one process).

T5X runs its steps in chunks of `stats_period` steps (one `train()` call each; this project's
T5X runs set it to LOG_PERIOD), so the sync point is a chunk's end: every host finishes the
chunk in progress, T5X saves that step on all of them and the process exits with T5X's
traceback and status 1. The chunk must end inside the grace period between SIGTERM and the
kill (about 30 s on Cloud TPU): keep LOG_PERIOD's steps shorter than that. Rerunning the
command resumes from the saved step, as from any T5X checkpoint.
"""

import itertools
from typing import Any, Callable, Optional

from t5x import trainer as trainer_lib

import gin
from gkd_t5x import preemption


@gin.configurable
def preemptible_trainer(
    *, trainer_cls: Callable[..., trainer_lib.BaseTrainer], **kwargs: Any
) -> trainer_lib.BaseTrainer:
  """`trainer_cls(**kwargs)`, whose `train()` raises T5X's `PreemptionError` after the chunk of
  steps in which a SIGTERM reached any host.

  Args:
    trainer_cls: T5X's trainer as gin gives it (`@trainer.Trainer`: its gin settings, such
      as `trainer.Trainer.num_microbatches`, apply).
    **kwargs: what T5X's train loop passes its `trainer_cls`.
  """
  trainer = trainer_cls(**kwargs)
  # Watched for the trainer's lifetime, which is the training process's.
  watch = preemption.Watch().__enter__()
  chunks = itertools.count(1)  # the sync manager wants consecutive ids on every host
  train = trainer.train

  def train_until_preempted(batch_iter: Any, num_steps: int, start_step: Optional[int] = None):
    summary = train(batch_iter, num_steps, start_step)
    if watch.reached_sync_point(next(chunks)):
      raise trainer_lib.PreemptionError(
          f'Preempted (SIGTERM): T5X saves step {int(trainer.train_state.step)} as its '
          'emergency checkpoint; rerun the same command to resume.'
      )
    return summary

  trainer.train = train_until_preempted
  return trainer
