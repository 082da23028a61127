"""Runs GKD steps on 1 device and on simulated device meshes; prints the results as JSON.

    python tests/sharded_step_probe.py LAMBDA [encoder_decoder|decoder_only]

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
import tiny

from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import partitioning

VOCAB, B, I, L = 32, 8, 6, 7


def encoder_decoder_case(gkd, vocabulary, rng):
  """The encoder-decoder model and an EncDec batch."""
  model = models.GKDModel(
      tiny.transformer(VOCAB, 8, 1), tiny.transformer(VOCAB, 16, 2), vocabulary, vocabulary, gkd=gkd
  )
  targets = rng.randint(2, VOCAB, (B, L))
  targets[:, -2:] = [1, 0]
  return model, tiny.encdec_batch(rng.randint(2, VOCAB, (B, I)), targets), 'encoder'


def decoder_only_case(gkd, vocabulary, rng):
  """The decoder-only model and a prefix-LM batch (seqio's layout) of inputs of 1 .. I tokens
  and targets of 2 .. L tokens ending in EOS."""
  model = models.GKDDecoderOnlyModel(
      tiny.decoder_only_transformer(VOCAB, 8, 2),
      tiny.decoder_only_transformer(VOCAB, 16, 2),
      vocabulary,
      gkd=gkd,
      inputs_bidirectional_attention=True,
      task_feature_lengths={'inputs': I, 'targets': L},
  )
  rows = np.zeros((B, I + L), np.int32)
  prefix, weights = np.zeros_like(rows), np.zeros_like(rows)
  for row in range(B):
    num_inputs, num_targets = rng.randint(1, I + 1), rng.randint(2, L + 1)
    targets = list(rng.randint(2, VOCAB, num_targets - 1)) + [1]
    rows[row, : num_inputs + num_targets] = list(rng.randint(2, VOCAB, num_inputs)) + targets
    prefix[row, : num_inputs + 1] = 1
    weights[row, num_inputs : num_inputs + num_targets] = 1
  batch = {
      'decoder_target_tokens': jnp.asarray(rows),
      'decoder_input_tokens': jnp.asarray(np.pad(rows, ((0, 0), (1, 0)))[:, :-1]),
      'decoder_causal_attention': jnp.asarray(prefix),
      'decoder_loss_weights': jnp.asarray(weights),
  }
  return model, batch, 'decoder'


def main():
  lmbda = float(sys.argv[1])
  architecture = sys.argv[2] if len(sys.argv) > 2 else 'encoder_decoder'
  vocabulary = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
  gkd = objective.GKDConfig(divergence='jsd', beta=0.5, lmbda=lmbda)
  make_case = {'encoder_decoder': encoder_decoder_case, 'decoder_only': decoder_only_case}
  model, batch, stack = make_case[architecture](gkd, vocabulary, np.random.RandomState(0))
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {name: value.shape for name, value in batch.items()}
  )
  params, teacher = variables['params'], {'teacher': variables['teacher']}
  step_rng = jax.random.PRNGKey(3)

  def step(params, teacher, batch):
    (loss, (metrics, _)), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, batch, step_rng, teacher
    )
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads)))
    return loss, grad_norm, metrics['sequence_length'].compute()

  results = {'single': [float(x) for x in jax.jit(step)(params, teacher, batch)]}
  rules = partitioning.standard_logical_axis_rules()
  for model_partitions in (1, 2):
    mesh = partitioning.make_mesh(model_partitions)
    param_shardings = partitioning.variable_shardings(mesh, variables['params_axes'], rules)
    teacher_shardings = {
        'teacher': partitioning.variable_shardings(mesh, variables['teacher_axes'], rules)
    }
    batch_shardings = {name: partitioning.batch_sharding(mesh) for name in batch}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      sharded_step = jax.jit(
          step, in_shardings=(param_shardings, teacher_shardings, batch_shardings)
      )
      placed = [
          jax.device_put(tree, shardings)
          for tree, shardings in (
              (params, param_shardings),
              (teacher, teacher_shardings),
              (batch, batch_shardings),
          )
      ]
      out = sharded_step(*placed)
    teacher_wi = placed[1]['teacher'][stack]['layers_0']['mlp']['wi_0']['kernel']
    results[f'mesh_{mesh.shape["data"]}x{mesh.shape["model"]}'] = {
        'values': [float(x) for x in out],
        'teacher_wi_spec': [str(axis) for axis in teacher_wi.sharding.spec],
        'teacher_wi_shard_shape': list(teacher_wi.addressable_shards[0].data.shape),
    }
  print(json.dumps(results))


if __name__ == '__main__':
  main()
