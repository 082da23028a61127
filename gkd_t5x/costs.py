"""What a GKD step costs: matmul FLOPs and HBM bytes counted from the shapes, XLA's own counts
and memory of a compiled step, and the roofline bound they give on a chip.

XLA's `cost_analysis()` counts a while loop's body once, so it undercounts the sampler (a loop
of L decoding steps); the analytic counts here count every step. `benchmarks/step_time.py`
checks the FLOP formulas against each step's traced program (`flops_jaxpr`).

Shape letters: B batch, I input length, L target length, E embedding, V vocabulary.
"""

from typing import Any, Dict, Mapping

import jax

from gkd_t5x import decoder_only
from gkd_t5x import network


def matmul_flops(
    config: network.T5Config, batch: int, input_length: int, target_length: int
) -> Dict[str, int]:
  """Matmul FLOPs (2 per multiply-add) of one forward pass of each part of a T5 1.1 net.

  Embedding lookups are gathers and norms, softmaxes and divergences elementwise: none is a
  matmul. Attention over the decoding cache spans all L positions at every step (the masked
  ones too), as `network.Decoder.step` computes it.

  Returns:
    {'encode': encoder on [B, I]; 'decode': teacher-forced decoder on [B, L] with its
     cross-attention keys/values and logits; 'sample': `init_cache` plus L cached decoding
     steps of one token each}.
  """
  b, i, l = batch, input_length, target_length
  e, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  hd = config.num_heads * config.head_dim
  mlp_per_token = 2 * (len(config.mlp_activations) + 1) * e * f  # wi_0, wi_1 and wo.
  encoder_layer = (
      2 * 4 * b * i * e * hd  # q, k, v and output projections
      + 2 * 2 * b * i * i * hd  # q.k logits and the weighted sum of values
      + b * i * mlp_per_token
  )
  cross_kv = 2 * 2 * b * i * e * hd
  decoder_layer = (
      2 * 4 * b * l * e * hd
      + 2 * 2 * b * l * l * hd  # self-attention
      + 2 * 2 * b * l * e * hd
      + cross_kv  # cross q, out; k, v
      + 2 * 2 * b * l * i * hd  # cross logits, values
      + b * l * mlp_per_token
  )
  step_layer = (
      2 * 4 * b * e * hd
      + 2 * 2 * b * l * hd  # one query over the L-long cache
      + 2 * 2 * b * e * hd
      + 2 * 2 * b * i * hd
      + b * mlp_per_token
  )
  logits_per_token = 2 * e * v
  return {
      'encode': config.num_encoder_layers * encoder_layer,
      'decode': config.num_decoder_layers * decoder_layer + b * l * logits_per_token,
      'sample': config.num_decoder_layers * cross_kv
      + l * (config.num_decoder_layers * step_layer + b * logits_per_token),
  }


def decoder_only_matmul_flops(
    config: decoder_only.DecoderOnlyConfig, batch: int, input_length: int, target_length: int
) -> Dict[str, int]:
  """Matmul FLOPs of one forward pass of each part of a decoder-only net (as `matmul_flops`).

  The policy runs the prompt (start token + I inputs, P = I + 1 columns) and the continuation
  (L - 1 more) as one row of T = I + L columns, with logits at every column; sampling prefills
  the P prompt columns into a T-column cache (every query against all T keys, the masked ones
  too) and runs L one-token steps over it, position 0 recomputing the last prompt column.

  Returns:
    {'encode': 0 (no encoder); 'decode': the teacher-forced row [B, T] with its logits;
     'sample': prefill (logits of its last column only) plus L cached steps}.
  """
  b, l = batch, target_length
  p, t = input_length + 1, input_length + target_length
  e, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  hd = config.num_heads * config.head_dim
  mlp_per_token = 2 * (len(config.mlp_activations) + 1) * e * f
  layer = lambda queries, keys: (
      2 * 4 * b * queries * e * hd + 2 * 2 * b * queries * keys * hd + b * queries * mlp_per_token
  )
  logits_per_token = 2 * e * v
  return {
      'encode': 0,
      'decode': config.num_layers * layer(t, t) + b * t * logits_per_token,
      'sample': config.num_layers * layer(p, t)
      + b * logits_per_token
      + l * (config.num_layers * layer(1, t) + b * logits_per_token),
  }


def step_flops(student: Dict[str, int], teacher: Dict[str, int]) -> Dict[str, int]:
  """Analytic matmul FLOPs of a lambda = 1 and a lambda = 0 step, and of their parts.

  The student's encode + decode runs forward and backward (backward = 2x forward: gradients
  of both operands of every matmul); the teacher runs forward only; on-policy steps add the
  student's sampler (forward only, under stop_gradient; it reuses the student's encoder output
  since dropout is off).
  """
  supervised = 3 * (student['encode'] + student['decode']) + teacher['encode'] + teacher['decode']
  return {
      'step_lambda1': supervised + student['sample'],
      'step_lambda0': supervised,
      'sample': student['sample'],
      'teacher_forward': teacher['encode'] + teacher['decode'],
  }


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # one entry per program in older jax versions
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def memory_bytes(compiled) -> Dict[str, int]:
  """XLA's static estimate of a compiled program's memory: the bytes of its arguments, outputs,
  temporaries and of the outputs that alias arguments, and `peak` = argument + output + temp -
  alias."""
  analysis = compiled.memory_analysis()
  parts = {
      part: int(getattr(analysis, f'{part}_size_in_bytes'))
      for part in ('argument', 'output', 'temp', 'alias')
  }
  return {**parts, 'peak': parts['argument'] + parts['output'] + parts['temp'] - parts['alias']}


def tree_bytes(tree: Any) -> int:
  """Bytes of a tree of arrays or `jax.ShapeDtypeStruct`s."""
  return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(tree)))


def step_hbm_bytes(
    params: Mapping[str, Any],
    teacher: Any,
    *,
    num_layers: int,
    kv_width: int,
    batch: int,
    input_length: int,
    target_length: int,
    activation_bytes: int,
    replicas: int = 1,
) -> Dict[str, int]:
  """HBM bytes a lambda = 1 step must move at least, over all devices (a lower bound: weights
  and the sampler's KV cache only, activations left out); each model replica reads its own
  copy of the weights.

  Args:
    params: the student's params (arrays or abstract); the sampler reads all but the encoder's
      at each of its L steps.
    teacher: the teacher's params, read once.
    num_layers: the student's decoder layers; kv_width: its heads x head dimension.
    batch, input_length, target_length: B, I, L.
    activation_bytes: bytes of an activation element (2 in bfloat16).
    replicas: model replicas (the mesh's data-parallel size).

  Returns:
    {'student': forward and backward reads plus the update's read and write of params and
     gradients (5x); 'sampler': L reads of the decoder's params and of the self- and
     cross-attention caches [B, L + I, kv_width] of every layer; 'teacher': one read;
     'step_lambda1': their sum}.
  """
  student = tree_bytes(params)
  decoder = tree_bytes({name: value for name, value in params.items() if name != 'encoder'})
  cache = 2 * num_layers * batch * (target_length + input_length) * kv_width * activation_bytes
  parts = {
      'student': 5 * student * replicas,
      'sampler': target_length * (decoder * replicas + cache),
      'teacher': tree_bytes(teacher) * replicas,
  }
  return dict(parts, step_lambda1=sum(parts.values()))


def roofline(
    flops: float, hbm_bytes: float, *, devices: int, peak_flops: float, hbm_bytes_per_s: float
) -> Dict[str, float]:
  """The least time a step of `flops` and `hbm_bytes` (over all devices, split evenly) takes on
  `devices` devices of the given peak FLOP/s and HBM bandwidth each: the larger of the compute
  and the memory time, and which one it is."""
  compute_s = flops / (devices * peak_flops)
  memory_s = hbm_bytes / (devices * hbm_bytes_per_s)
  return {
      'compute_s': compute_s,
      'memory_s': memory_s,
      'step_s': max(compute_s, memory_s),
      'bound_by': 'compute' if compute_s >= memory_s else 'memory',
  }
