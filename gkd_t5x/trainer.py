"""The sharded train state and the jitted GKD train step.

The train state is a dict, in T5X's checkpoint layout:

    {'target': student params, 'opt_state': optax state, 'step': int32 scalar}

Its shardings are derived before anything is allocated: the params' from their logical axes
(`params_axes`) through the logical axis rules, the optimizer state's by compiling
`optimizer.init` on abstract sharded params (each moment lands where its param is, factored
Adafactor moments where XLA's propagation puts them). The teacher's params (`teacher`, with
`teacher_axes`; a model reward's classifier likewise, `reward_model`) get the student's rules and
live outside the state: inputs of the step, never
donated, never updated, never saved with the student.

`jit_train_step` builds one `jax.jit` with explicit in/out shardings that donates the state:
    state, frozen, batch, run key -> new state, metrics (`averages.Average`s, replicated)
and `make_train_step` closes it over the run's key. `abstract_step_args` gives its arguments
as abstract arrays, so that `gkd_t5x.fit` compiles the very step the trainer runs.
The step key is `fold_in(seed key, step)`, so a resumed run draws the same coins, samples and
dropout masks as an uninterrupted one.

Shape letters: B global batch, I input length, L target length.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gkd_t5x import checkpoints
from gkd_t5x import faults
from gkd_t5x import models
from gkd_t5x import partitioning

PyTree = Any
TrainState = Mapping[str, PyTree]


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Shapes and shardings of everything the step touches.

  Attributes:
    mesh: the ('data', 'model') mesh.
    rules: the logical axis rules.
    abstract_state: the train state as `jax.ShapeDtypeStruct`s with shardings.
    state_shardings: NamedShardings of the train state.
    abstract_frozen: the frozen networks' params, {'teacher': ..., 'reward_model': ...} (those
      the model has; {} for SFT), as abstract arrays: the step's flax mutables.
    frozen_shardings: their NamedShardings, by the student's logical axis rules.
    batch_shapes: {feature: (B, length)} of the model features.
  """

  mesh: jax.sharding.Mesh
  rules: partitioning.LogicalAxisRules
  abstract_state: PyTree
  state_shardings: PyTree
  abstract_frozen: PyTree
  frozen_shardings: PyTree
  batch_shapes: Mapping[str, Tuple[int, ...]]

  @property
  def param_shardings(self) -> PyTree:
    return self.state_shardings['target']


def make_layout(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalAxisRules,
    batch_shapes: Mapping[str, Tuple[int, ...]],
) -> StateLayout:
  """Abstract train state and frozen networks with their shardings; allocates nothing."""
  variables = jax.eval_shape(
      functools.partial(model.get_initial_variables, input_shapes=batch_shapes),
      jax.random.PRNGKey(0),
  )
  param_shardings = partitioning.variable_shardings(mesh, variables['params_axes'], rules)
  partitioning.check_divisible(variables['params'], param_shardings, 'student')
  abstract_params = checkpoints.abstract_tree(variables['params'], param_shardings)
  with partitioning.activate(mesh, rules):
    opt_state_shardings = jax.jit(optimizer.init).lower(abstract_params).compile().output_shardings
  replicated = partitioning.replicated(mesh)
  state_shardings = {
      'target': param_shardings,
      'opt_state': opt_state_shardings,
      'step': replicated,
  }
  abstract_state = {
      'target': abstract_params,
      'opt_state': checkpoints.abstract_tree(
          jax.eval_shape(optimizer.init, abstract_params), opt_state_shardings
      ),
      'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
  }
  frozen = {name: variables[name] for name in models.FROZEN_COLLECTIONS if name in variables}
  frozen_shardings = {
      name: partitioning.variable_shardings(mesh, variables[name + '_axes'], rules)
      for name in frozen
  }
  for name in frozen:
    partitioning.check_divisible({name: frozen[name]}, {name: frozen_shardings[name]}, name)
  return StateLayout(
      mesh,
      rules,
      abstract_state,
      state_shardings,
      checkpoints.abstract_tree(frozen, frozen_shardings),
      frozen_shardings,
      dict(batch_shapes),
  )


def init_state(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    layout: StateLayout,
    rng: jax.Array,
    params: Optional[PyTree] = None,
) -> TrainState:
  """A step-0 train state, its params random (from `rng`) or given, created sharded."""
  shapes = layout.batch_shapes

  def init(rng, params):
    if params is None:
      params = model.get_initial_variables(rng, shapes)['params']
    return {'target': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32)}

  with partitioning.activate(layout.mesh, layout.rules):
    if params is None:
      return jax.jit(lambda rng: init(rng, None), out_shardings=layout.state_shardings)(rng)
    return jax.jit(init, out_shardings=layout.state_shardings, donate_argnums=1)(rng, params)


def jit_train_step(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    layout: StateLayout,
) -> Any:
  """The jitted, sharded step that donates the state: the program the trainer runs and
  `gkd_t5x.fit` compiles for a TPU topology.

  Args:
    model: the GKD model; its `loss_fn` gets the step so that lambda schedules work.
    optimizer: the optax transformation (clipping, accumulation included).
    layout: shardings of state, frozen networks and batch.

  Returns:
    A `jax.jit` of (state, frozen {'teacher': params, ...} or {}, batch {feature: [B, len]},
    run key) returning (state, {name: `averages.Average`}); step s uses `fold_in(key, s)`. A step
    whose loss, gradients or new params are not finite keeps the old params and optimizer
    state and reports `nonfinite` 1 (`faults`).
  """

  # The key is an argument, not a constant of the program, so that runs differing only in
  # their seed share one compilation (and JAX's persistent compilation cache entry).
  def train_step(state, frozen, batch, run_rng):
    step = state['step']
    rng = jax.random.fold_in(run_rng, step)

    def loss_fn(params):
      loss, (metrics, _) = model.loss_fn(params, batch, rng, frozen, step=step)
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['target'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['target'])
    params = optax.apply_updates(state['target'], updates)
    # A non-finite step leaves the state as it was; the host reads the flag when it syncs.
    finite = faults.all_finite((loss, grads, params))
    params, opt_state = faults.keep_if_finite(
        finite, (params, opt_state), (state['target'], state['opt_state'])
    )
    # How far the optimizer moves the params against how steep the loss is: Adam's normalized
    # update stays about the learning rate per param however small (and noisy) the gradient.
    grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
    metrics = dict(
        metrics,
        grad_norm=models.average(grad_norm),
        update_norm=models.average(update_norm),
        update_grad_ratio=models.average(update_norm / jnp.maximum(grad_norm, 1e-30)),
        nonfinite=models.average(1.0 - finite),
    )
    return {'target': params, 'opt_state': opt_state, 'step': step + 1}, metrics

  replicated = partitioning.replicated(layout.mesh)
  return jax.jit(
      train_step,
      in_shardings=(
          layout.state_shardings,
          layout.frozen_shardings,
          batch_shardings(layout),
          replicated,
      ),
      out_shardings=(layout.state_shardings, replicated),
      donate_argnums=0,
  )


def batch_shardings(layout: StateLayout) -> Mapping[str, jax.sharding.NamedSharding]:
  """{feature: its sharding}: every [B, length] feature split over `data`."""
  batch_sharding = partitioning.batch_sharding(layout.mesh)
  return {name: batch_sharding for name in layout.batch_shapes}


def abstract_step_args(layout: StateLayout) -> Tuple[PyTree, ...]:
  """`jit_train_step`'s arguments as sharded `jax.ShapeDtypeStruct`s: (state, frozen, batch
  {feature: [B, length] int32}, run key), for compiling without allocating anything."""
  shardings = batch_shardings(layout)
  batch = {
      name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=shardings[name])
      for name, shape in layout.batch_shapes.items()
  }
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=partitioning.replicated(layout.mesh))
  return layout.abstract_state, layout.abstract_frozen, batch, rng


def make_train_step(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    layout: StateLayout,
    seed_rng: jax.Array,
) -> Callable[..., Any]:
  """`jit_train_step` with the run's key: (state, frozen, batch) -> (new state, metrics).

  Args:
    model, optimizer, layout: as `jit_train_step`'s.
    seed_rng: the run's key; step s uses `fold_in(seed_rng, s)`.

  Returns:
    A function of (state, frozen, batch) returning (state, metrics); the state's buffers are
    donated.
  """
  jitted = jit_train_step(model, optimizer, layout)
  replicated = partitioning.replicated(layout.mesh)
  host_rng = np.asarray(jax.device_get(seed_rng))
  run_rng = jax.make_array_from_callback(host_rng.shape, replicated, lambda index: host_rng[index])
  return lambda state, frozen, batch: jitted(state, frozen, batch, run_rng)
