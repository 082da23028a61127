"""The jitted, sharded evaluation steps: validation loss and decoding.

`Evaluator` (`gkd_t5x.evaluation`) runs them on a split; `gkd_t5x.fit` compiles them for a TPU
topology. Both take the student's params and the frozen networks in their training shardings
and a batch {feature: [B, length]} split over `data`; their outputs are replicated.
"""

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from gkd_t5x import models
from gkd_t5x import partitioning

PyTree = Any


def scores_reward(model: models.GKDModelBase, frozen_shardings: PyTree) -> bool:
  """Whether decoding scores each prediction's reward: RL + GKD with a reward that needs no
  network, or whose network's params are at hand."""
  return model.gkd.reward is not None and (
      model.reward_module is None or models.REWARD_MODEL_COLLECTION in frozen_shardings
  )


def jit_eval_steps(
    model: models.GKDModelBase,
    mesh: jax.sharding.Mesh,
    param_shardings: PyTree,
    frozen_shardings: PyTree,
) -> Tuple[Any, Any]:
  """(loss step, predict step), each a `jax.jit` of (params, frozen, batch, key).

  The loss step returns `model.eval_fn`'s metrics, with a teacher and a divergence also the
  divergence on the student's own samples (`on_policy_eval_fn`); the predict step returns
  (predicted tokens [B, L] int32, reward [B] float32: zeros where none is scored).
  """
  batch_sharding = partitioning.batch_sharding(mesh)
  replicated = partitioning.replicated(mesh)
  with_reward = scores_reward(model, frozen_shardings)

  def loss_fn(params, frozen, batch, rng):
    metrics = model.eval_fn(params, batch, frozen)[1]
    if model.has_on_policy_divergence:
      metrics.update(model.on_policy_eval_fn(params, batch, rng, frozen))
    return metrics

  def predict_fn(params, frozen, batch, rng):
    tokens, _ = model.predict_batch_with_aux(params, batch, rng)
    reward = model.sequence_reward(batch, tokens, frozen) if with_reward else None
    return tokens, jnp.zeros(tokens.shape[:1]) if reward is None else reward

  shardings = dict(
      in_shardings=(param_shardings, frozen_shardings, batch_sharding, replicated),
      out_shardings=replicated,
  )
  return jax.jit(loss_fn, **shardings), jax.jit(predict_fn, **shardings)
