"""Runs GKD steps on 1 device and on simulated device meshes; prints the results as JSON.

Started by tests/test_sharding.py in a subprocess, because the number of simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8) must be set before jax is imported.
"""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import partitioning

VOCAB, B, I, L = 32, 8, 6, 7


def tiny(emb_dim, layers):
  return network.Transformer(network.T5Config(
      vocab_size=VOCAB, emb_dim=emb_dim, num_heads=2, num_encoder_layers=layers,
      num_decoder_layers=layers, head_dim=4, mlp_dim=2 * emb_dim, dropout_rate=0.0))


def main():
  lmbda = float(sys.argv[1])
  vocabulary = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
  model = models.GKDModel(tiny(8, 1), tiny(16, 2), vocabulary, vocabulary,
                          gkd=objective.GKDConfig(divergence='jsd', beta=0.5, lmbda=lmbda))
  rng = np.random.RandomState(0)
  targets = rng.randint(2, VOCAB, (B, L))
  targets[:, -2:] = [1, 0]
  batch = {'encoder_input_tokens': jnp.asarray(rng.randint(2, VOCAB, (B, I))),
           'decoder_target_tokens': jnp.asarray(targets),
           'decoder_input_tokens': jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
           'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32)}
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {name: value.shape for name, value in batch.items()})
  params, teacher = variables['params'], {'teacher': variables['teacher']}
  step_rng = jax.random.PRNGKey(3)

  def step(params, teacher, batch):
    (loss, (metrics, _)), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, batch, step_rng, teacher)
    grad_norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads)))
    return loss, grad_norm, metrics['sequence_length'].compute()

  results = {'single': [float(x) for x in jax.jit(step)(params, teacher, batch)]}
  rules = partitioning.standard_logical_axis_rules()
  for model_partitions in (1, 2):
    mesh = partitioning.make_mesh(model_partitions)
    param_shardings = partitioning.variable_shardings(mesh, variables['params_axes'], rules)
    teacher_shardings = {'teacher': partitioning.variable_shardings(
        mesh, variables['teacher_axes'], rules)}
    batch_shardings = {name: partitioning.batch_sharding(mesh) for name in batch}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      sharded_step = jax.jit(step, in_shardings=(param_shardings, teacher_shardings,
                                                 batch_shardings))
      placed = [jax.device_put(tree, shardings) for tree, shardings in (
          (params, param_shardings), (teacher, teacher_shardings), (batch, batch_shardings))]
      out = sharded_step(*placed)
    teacher_wi = placed[1]['teacher']['encoder']['layers_0']['mlp']['wi_0']['kernel']
    results[f'mesh_{mesh.shape["data"]}x{mesh.shape["model"]}'] = {
        'values': [float(x) for x in out],
        'teacher_wi_spec': [str(axis) for axis in teacher_wi.sharding.spec],
        'teacher_wi_shard_shape': list(teacher_wi.addressable_shards[0].data.shape),
    }
  print(json.dumps(results))


if __name__ == '__main__':
  main()
