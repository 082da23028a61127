"""Non-finite steps: found on the device, never applied, never saved; stop or skip and count.

The train step computes one flag, `all_finite` of its loss, gradients and updated params, and
applies its update only where the flag holds (`keep_if_finite`): a NaN or an overflow leaves the
state as it was, and the step reports `nonfinite` (1 or 0) among its metrics. The host reads the
flags only where it syncs anyway, at logging and checkpoint steps (`NonFiniteSteps.check`), and
`check_state_finite` refuses to save a state holding a non-finite value (e.g. restored so).

What a non-finite step does is a gin setting (`NonFinitePolicy`):
  - 'stop': the run stops with one line naming the first such step; the last checkpoint,
    written before it, is kept;
  - 'skip': the step's update is dropped and counted (`nonfinite_steps_total` among the train
    metrics); the run stops once more than `max_skipped_steps` steps were skipped.

A full disk (ENOSPC) surfaces from orbax's writer threads or TensorBoard's as one of many
exception types; `is_disk_full` finds it in an exception's chain, so that the run can stop with
one line (orbax's temporary directories keep the checkpoints completed before intact).
"""

import dataclasses
import errno
import os
from typing import Any, List, Optional, Tuple

import jax
import jax.numpy as jnp

import gin

PyTree = Any
MODES = ('stop', 'skip')


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, says the disk is full (ENOSPC)."""
  while error is not None:
    if getattr(error, 'errno', None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


class NonFiniteError(FloatingPointError):
  """A non-finite loss, gradient or state that the policy does not let the run go on with."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NonFinitePolicy:
  """What the trainer does with a step whose loss, gradients or params are not finite.

  Attributes:
    mode: 'stop' (stop at the first one) or 'skip' (drop its update and count it).
    max_skipped_steps: with 'skip', the run stops once more steps than this were skipped.
  """

  mode: str = 'stop'
  max_skipped_steps: int = 10

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'NonFinitePolicy.mode must be one of {MODES}, got {self.mode!r}.')
    if self.max_skipped_steps < 0:
      raise ValueError(
          f'NonFinitePolicy.max_skipped_steps must be >= 0, got {self.max_skipped_steps}.'
      )


def all_finite(tree: PyTree) -> jax.Array:
  """[] bool: whether every element of every leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def keep_if_finite(finite: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where `finite` ([] bool) holds, else `old` (same structure): the skipped update."""
  return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


_all_finite_jit = jax.jit(all_finite)


def check_state_finite(state: PyTree, step: int) -> None:
  """Raises `NonFiniteError` unless every value of the train state is finite (one sync)."""
  if not bool(jax.device_get(_all_finite_jit(state))):
    raise NonFiniteError(
        f'The train state at step {step} holds a non-finite value; it is not saved. '
        'Was it restored so (INITIAL_CHECKPOINT_PATH)?'
    )


class NonFiniteSteps:
  """The host's count of non-finite steps, from flags it reads only when asked to check."""

  def __init__(self, policy: NonFinitePolicy):
    self._policy = policy
    self._pending: List[Tuple[int, jax.Array]] = []
    self.total = 0

  def add(self, step: int, flag: jax.Array) -> None:
    """Keeps step `step`'s flag ([] float32, 1 if non-finite) without reading it."""
    self._pending.append((step, flag))

  def check(self, last_checkpoint: Optional[int]) -> int:
    """Reads the kept flags; returns the run's count, or raises as the policy says.

    Args:
      last_checkpoint: the latest saved step, named in the error (None: none saved).
    """
    steps = [step for step, _ in self._pending]
    flags = jax.device_get([flag for _, flag in self._pending])
    self._pending = []
    bad = [step for step, flag in zip(steps, flags) if flag > 0]
    if not bad:
      return self.total
    self.total += len(bad)
    kept = (
        'no checkpoint' if last_checkpoint is None else f'the checkpoint of step {last_checkpoint}'
    )
    if self._policy.mode == 'stop':
      raise NonFiniteError(
          f'The training loss or gradients are not finite at step {bad[0]}; stopping '
          f"(NonFinitePolicy.mode = 'stop'), keeping {kept}."
      )
    if self.total > self._policy.max_skipped_steps:
      raise NonFiniteError(
          f'{self.total} non-finite steps were skipped, the last at step {bad[-1]}, more than '
          f'NonFinitePolicy.max_skipped_steps = {self._policy.max_skipped_steps}; stopping, '
          f'keeping {kept}.'
      )
    return self.total
