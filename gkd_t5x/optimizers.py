"""Gin-configurable optax optimizers and learning-rate schedules for the standalone trainer.

Schedules map the optimizer step (the number of applied updates, starting at 0) to a learning
rate and are `optax.Schedule`s; the optimizers take a schedule or a float. `make_optimizer`
adds global-norm gradient clipping and gradient accumulation on top and returns a plain
`optax.GradientTransformation`.

A gin file builds the T5X default (Adafactor with the rsqrt schedule) with:

  from gkd_t5x import optimizers
  OPTIMIZER = @optimizers.make_optimizer()
  optimizers.make_optimizer.optimizer = @optimizers.adafactor()
  optimizers.adafactor.learning_rate = @optimizers.warmup_rsqrt_schedule()
  optimizers.warmup_rsqrt_schedule.learning_rate = 1.0
  optimizers.warmup_rsqrt_schedule.warmup_steps = 10000

and, optionally,

  optimizers.make_optimizer.max_grad_norm = 1.0
  optimizers.make_optimizer.accumulation_steps = 4

Every `@optimizers.<builder>()` reference is called by gin when the macro is evaluated, so
`%OPTIMIZER` is a ready `optax.GradientTransformation`.
"""

import numbers
from typing import Optional, Union

import jax.numpy as jnp
import optax

import gin

ScalarOrSchedule = Union[float, optax.Schedule]


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
  ok = (
      isinstance(value, numbers.Real)
      and not isinstance(value, bool)
      and (value >= 0 if allow_zero else value > 0)
  )
  if not ok:
    allowed = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'{name} must be a number {allowed}, got {value!r}.')


def _check_steps(name: str, value, *, minimum: int) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')


# ------------------------------------------------------------------------------------------
# Learning-rate schedules.
# ------------------------------------------------------------------------------------------


@gin.configurable
def constant_schedule(learning_rate: float) -> optax.Schedule:
  """lr(step) = learning_rate."""
  _check_positive('learning_rate', learning_rate)
  return optax.constant_schedule(learning_rate)


@gin.configurable
def warmup_rsqrt_schedule(learning_rate: float = 1.0, warmup_steps: int = 10000) -> optax.Schedule:
  """T5X / Mesh-TF rsqrt decay: lr(step) = learning_rate / sqrt(max(step, warmup_steps)).

  This is T5X's `utils.create_learning_rate_scheduler(factors='constant * rsqrt_decay',
  base_learning_rate=learning_rate, warmup_steps=warmup_steps)`. The "warmup" is T5X style:
  the rate is held constant at learning_rate / sqrt(warmup_steps) for the first warmup_steps
  steps (there is no linear ramp), then decays as 1 / sqrt(step). With learning_rate=1.0 and
  warmup_steps=10000 it is 0.01 during warmup and 1 / sqrt(step) afterwards.

  Args:
    learning_rate: the base learning rate (T5X's base_learning_rate).
    warmup_steps: the number of steps at constant rate; must be >= 1.
  """
  _check_positive('learning_rate', learning_rate)
  _check_steps('warmup_steps', warmup_steps, minimum=1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))

  return schedule


@gin.configurable
def warmup_cosine_schedule(
    learning_rate: float, warmup_steps: int, decay_steps: int, end_value: float = 0.0
) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to end_value (`optax.warmup_cosine_decay_schedule`).

    lr(step) = learning_rate * step / warmup_steps                     for step < warmup_steps
    lr(step) = end_value + (learning_rate - end_value)
               * (1 + cos(pi * (step - warmup_steps) / (decay_steps - warmup_steps))) / 2
                                                      for warmup_steps <= step < decay_steps
    lr(step) = end_value                                                 for step >= decay_steps

  As in optax, decay_steps is the total length of the schedule, warmup included.

  Args:
    learning_rate: the peak learning rate, reached at step warmup_steps.
    warmup_steps: the length of the linear warmup, >= 0.
    decay_steps: the step at which end_value is reached, > warmup_steps.
    end_value: the final learning rate, >= 0.
  """
  _check_positive('learning_rate', learning_rate)
  _check_steps('warmup_steps', warmup_steps, minimum=0)
  _check_steps('decay_steps', decay_steps, minimum=warmup_steps + 1)
  _check_positive('end_value', end_value, allow_zero=True)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=decay_steps,
      end_value=end_value,
  )


@gin.configurable
def linear_warmup_constant_schedule(
    learning_rate: float,
    warmup_steps: int,
    cooldown_start: Optional[int] = None,
    cooldown_end: Optional[int] = None,
) -> optax.Schedule:
  """Linear warmup from 0, constant, then an optional linear cooldown to 0 (the GKD paper's
  schedules, Tables A.1-A.3: e.g. XSum warms up over 2,000 steps and cools down over
  (30,000, 40,000)).

    lr(step) = learning_rate * step / warmup_steps          for step < warmup_steps
    lr(step) = learning_rate                                up to cooldown_start
    lr(step) = learning_rate * (cooldown_end - step)
                             / (cooldown_end - cooldown_start)   up to cooldown_end
    lr(step) = 0                                            after cooldown_end

  Args:
    learning_rate: the learning rate after warmup.
    warmup_steps: the length of the linear warmup, >= 0 (0: constant from step 0).
    cooldown_start, cooldown_end: the cooldown's first and last step, both None (no
      cooldown) or warmup_steps <= cooldown_start < cooldown_end.
  """
  _check_positive('learning_rate', learning_rate)
  _check_steps('warmup_steps', warmup_steps, minimum=0)
  if (cooldown_start is None) != (cooldown_end is None):
    raise ValueError(
        'cooldown_start and cooldown_end must both be set or both be None, got '
        f'{cooldown_start!r} and {cooldown_end!r}.'
    )
  pieces = [optax.constant_schedule(learning_rate)]
  boundaries = []
  if warmup_steps:
    pieces.insert(0, optax.linear_schedule(0.0, learning_rate, warmup_steps))
    boundaries.append(warmup_steps)
  if cooldown_start is not None:
    _check_steps('cooldown_start', cooldown_start, minimum=warmup_steps)
    _check_steps('cooldown_end', cooldown_end, minimum=cooldown_start + 1)
    pieces.append(optax.linear_schedule(learning_rate, 0.0, cooldown_end - cooldown_start))
    boundaries.append(cooldown_start)
  if not boundaries:
    return pieces[0]
  return optax.join_schedules(pieces, boundaries=boundaries)


# ------------------------------------------------------------------------------------------
# Optimizers.
# ------------------------------------------------------------------------------------------

# `optax.adafactor` multiplies by max(epsilon2, RMS(param)) through
# `optax.scale_by_param_block_rms()` at its default min_scale, which it does not expose.
_OPTAX_ADAFACTOR_EPSILON2 = 1e-3


@gin.configurable
def adafactor(
    learning_rate: ScalarOrSchedule,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    epsilon1: float = 1e-30,
    epsilon2: float = 1e-3,
    momentum: Optional[float] = None,
    weight_decay_rate: Optional[float] = None,
) -> optax.GradientTransformation:
  """Adafactor with T5X's default `adafactor.Adafactor` settings, built with `optax.adafactor`.

  At step t (0-based), for a gradient G of a parameter W:

    beta2_t = 1 - (t - step_offset + 1) ** -decay_rate      (0 at the first step)
    factored (W has two dims >= min_dim_size_to_factor; R, C its two largest axes):
      R_t = beta2_t R_{t-1} + (1 - beta2_t) mean_C(G^2 + epsilon1)
      C_t = beta2_t C_{t-1} + (1 - beta2_t) mean_R(G^2 + epsilon1)
      U = G / sqrt(R_t / mean(R_t)) / sqrt(C_t)             (outer product over R x C)
    not factored:
      V_t = beta2_t V_{t-1} + (1 - beta2_t) (G^2 + epsilon1),   U = G / sqrt(V_t)
    U = U / max(1, RMS(U) / clipping_threshold)             (update clipping)
    update = -lr(t) * max(epsilon2, RMS(W)) * U             (parameter scale, if enabled)

  Argument mapping to `optax.adafactor`: decay_rate -> decay_rate, step_offset -> decay_offset,
  epsilon1 -> eps, momentum (T5X beta1) -> momentum, the others by name. Differences from T5X's
  own implementation:
    * epsilon2 is fixed at 1e-3 in optax (the min_scale of `scale_by_param_block_rms`, not an
      argument of `optax.adafactor`); any other value raises ValueError.
    * optax keeps the second-moment statistics in the parameter dtype (bfloat16 parameters give
      bfloat16 statistics); T5X keeps them in float32.
    * T5X can choose factored axes from logical axis names (factor rules, per-layer stats of
      scanned layers); optax always factors over the two largest axes (T5X's heuristic).
    * weight_decay_rate is added as `weight_decay_rate * W` to the unscaled update; T5X scales
      it by lr ** weight_decay_rate_lr_exponent. T5X's global_norm_clip_threshold,
      max_parameter_scale and skip_nan_updates are not available (use
      `make_optimizer(max_grad_norm=...)` for global-norm clipping).

  Args:
    learning_rate: a float or an `optax.Schedule` (e.g. `warmup_rsqrt_schedule()`).
    decay_rate: the exponent of the second-moment decay schedule.
    step_offset: subtracted from the step in the decay schedule (for fine-tuning).
    multiply_by_parameter_scale: scale updates by max(epsilon2, RMS(W)).
    clipping_threshold: the update-RMS clipping threshold, or None for no clipping.
    factored: use factored second moments for matrices.
    min_dim_size_to_factor: factor only if two dims have at least this size.
    epsilon1: added to the squared gradient.
    epsilon2: the minimum parameter scale; must be 1e-3 (see above).
    momentum: first-moment decay (T5X's beta1), or None for no momentum.
    weight_decay_rate: decoupled weight decay, or None.
  """
  if epsilon2 != _OPTAX_ADAFACTOR_EPSILON2:
    raise ValueError(
        f'epsilon2 must be {_OPTAX_ADAFACTOR_EPSILON2} (optax.adafactor fixes the minimum '
        f'parameter scale), got {epsilon2!r}.'
    )
  _check_positive('decay_rate', decay_rate)
  _check_steps('min_dim_size_to_factor', min_dim_size_to_factor, minimum=1)
  if clipping_threshold is not None:
    _check_positive('clipping_threshold', clipping_threshold)
  return optax.adafactor(
      learning_rate=learning_rate,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      decay_offset=step_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=momentum,
      weight_decay_rate=weight_decay_rate,
      eps=epsilon1,
      factored=factored,
  )


@gin.configurable
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW (`optax.adamw`), with decoupled weight decay; t counts from 1:

    m_t = b1 m_{t-1} + (1 - b1) g,     v_t = b2 v_{t-1} + (1 - b2) g^2
    update = -lr(t - 1) * (m_t / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps) + weight_decay * w)

  weight_decay = 0 (the default here; optax's is 1e-4) gives plain Adam.
  """
  _check_positive('weight_decay', weight_decay, allow_zero=True)
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@gin.configurable
def make_optimizer(
    optimizer: optax.GradientTransformation,
    max_grad_norm: Optional[float] = None,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
  """Global-norm clipping and gradient accumulation around `optimizer`.

    g <- g * min(1, max_grad_norm / ||g||_2)     (over all leaves; if max_grad_norm is set)
    updates = optimizer(g)

  With accumulation_steps = k > 1 the chain is wrapped in `optax.MultiSteps(every_k_schedule=k)`:
  each call to `update` is one micro-step; gradients are averaged over k micro-steps and the
  inner chain (clipping included, applied to the mean gradient) runs once every k-th call. The
  effective batch is k x the micro-batch, the returned updates are zeros on the other k - 1
  micro-steps, and schedules inside `optimizer` advance once per k micro-steps.

  Args:
    optimizer: the inner optimizer, e.g. `adafactor(...)` or `adamw(...)`.
    max_grad_norm: the global gradient-norm bound, > 0, or None for no clipping.
    accumulation_steps: micro-steps per optimizer update, an int >= 1.

  Returns:
    A plain `optax.GradientTransformation` (init, update); `update` needs params whenever the
    inner optimizer does (Adafactor's parameter scale, weight decay).
  """
  if not (hasattr(optimizer, 'init') and hasattr(optimizer, 'update')):
    raise ValueError(
        f'optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.'
    )
  if max_grad_norm is not None:
    if (
        not isinstance(max_grad_norm, numbers.Real)
        or isinstance(max_grad_norm, bool)
        or not max_grad_norm > 0
    ):
      raise ValueError(f'max_grad_norm must be a number > 0 or None, got {max_grad_norm!r}.')
  _check_steps('accumulation_steps', accumulation_steps, minimum=1)

  chain = []
  if max_grad_norm is not None:
    chain.append(optax.clip_by_global_norm(max_grad_norm))
  chain.append(optimizer)
  tx = optax.chain(*chain) if len(chain) > 1 else optimizer
  if accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accumulation_steps).gradient_transformation()
  return tx
