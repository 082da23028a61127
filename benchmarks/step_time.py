"""Step time of GKD on the standard benchmark configurations (shared/benchmarks.md).

  python benchmarks/step_time.py [--config bench_a|bench_b|tiny|<name>_decoder_only|all]
                                 [--steps N]

For each configuration (T5 1.1 layout: gated GELU, no biases, untied output layer; float32;
vocabulary 384; JSD(0.5); dropout off) it builds `models.GKDModel`s (the `*_decoder_only`
configurations: `models.GKDDecoderOnlyModel`s of prefix-LM networks of the same sizes, with
as many layers as encoder and decoder together, on prefix-LM rows of the same prompt and
continuation lengths) and jits
`jax.value_and_grad(model.loss_fn, has_aux=True)` with the teacher's params passed as
`flax_mutables={'teacher': ...}`, as the trainers do, and prints one JSON line with:

  step_lambda1_s, step_lambda0_s   median seconds of an on-policy step (lambda = 1: sample
                                   y ~ p_S, then teacher and student passes) and of a supervised
                                   step (lambda = 0), after compilation and warm-up
  ratio_lambda1_over_lambda0       the cost of on-policy data (the paper reports 1.8-2.2x)
  sample_s                         sampling the target length of tokens alone (student, KV
                                   cache; `objective.sample_sequences`, prompt state given)
  teacher_forward_s                one teacher forward pass (encode + teacher-forced decode;
                                   decoder-only: prompt + continuation teacher-forced)
  compile_lambda1_s, compile_lambda0_s   wall time of trace + lower + compile of each step
  matmul_gflops                    float32 matmul throughput measured here, in this run (a
                                   jitted 2048 x 2048 x 2048 jnp.dot, median)
  flops_analytic                   matmul FLOPs counted from the shapes (2 per multiply-add;
                                   student backward = 2x forward; the sampler counted for all
                                   L steps); see `matmul_flops`. The bound below uses these.
  flops_jaxpr                      the same count read off each step's traced program (every
                                   dot_general, the sampler's loop body x L): a check that the
                                   formulas describe the code
  flops_xla                        XLA's `cost_analysis()['flops']` of each compiled step (all
                                   ops, but a while loop's body counted once, so it undercounts
                                   the sampler)
  flop_bound_s, fraction_of_bound  analytic FLOPs / measured throughput, and that bound over
                                   the measured median: the fraction of the matmul limit reached
  while_loops                      `while` loops of each step: in its jaxpr (lax.while_loop; the
                                   sampler is the only one) and in its compiled HLO, which on
                                   CPU adds the RNG's threefry loops when random bits are drawn;
                                   a lambda = 0 step (no dropout, no sampling) has none at all
  params_student, params_teacher   parameter counts (bench_a ~0.25M / 9.6M, bench_b ~0.89M / 38M)
  sample_length                    mean sampled length of the timed on-policy steps (a random
                                   student rarely emits EOS, so ~ the target length)
  architecture                     'encoder_decoder' or 'decoder_only'

Progress goes to stderr. Seeds are fixed; times are medians (the machines are noisy). This is
a measurement, not a test: nothing here asserts a time.

Shape letters: B batch, I input length, L target length, E embedding, V vocabulary.
"""

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from gkd_t5x import decoder_only
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import vocabularies

EOS_ID = 1
MATMUL_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Size:
  """A T5 1.1 net's shape: d_model, layers (encoder = decoder), heads, d_ff."""
  emb_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int

  def t5_config(self, vocab_size: int) -> network.T5Config:
    return network.T5Config(
        vocab_size=vocab_size, emb_dim=self.emb_dim, num_heads=self.num_heads,
        num_encoder_layers=self.num_layers, num_decoder_layers=self.num_layers,
        head_dim=self.emb_dim // self.num_heads, mlp_dim=self.mlp_dim,
        mlp_activations=('gelu', 'linear'), dropout_rate=0.0, logits_via_embedding=False,
        dtype='float32')

  def decoder_only_config(self, vocab_size: int) -> decoder_only.DecoderOnlyConfig:
    """The decoder-only net of this size: the encoder's and the decoder's layers in one stack."""
    return decoder_only.DecoderOnlyConfig(
        vocab_size=vocab_size, emb_dim=self.emb_dim, num_heads=self.num_heads,
        num_layers=2 * self.num_layers, head_dim=self.emb_dim // self.num_heads,
        mlp_dim=self.mlp_dim, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
        logits_via_embedding=False, dtype='float32')


@dataclasses.dataclass(frozen=True)
class Bench:
  """One benchmark configuration: student and teacher sizes, the batch's shapes (prompt I and
  continuation L) and the architecture ('encoder_decoder' or 'decoder_only')."""
  student: Size
  teacher: Size
  batch_size: int = 32
  input_length: int = 16
  target_length: int = 48
  vocab_size: int = 384
  beta: float = 0.5
  architecture: str = 'encoder_decoder'

  @property
  def decoder_only(self) -> bool:
    return self.architecture == 'decoder_only'


BENCHES = {
    # A quick smoke configuration, smaller than the standard ones in every dimension.
    'tiny': Bench(Size(32, 1, 2, 64), Size(64, 2, 4, 128), batch_size=8, input_length=8,
                  target_length=16),
    'bench_a': Bench(Size(64, 2, 4, 128), Size(256, 4, 4, 1024)),
    'bench_b': Bench(Size(128, 2, 4, 256), Size(512, 6, 8, 1024)),
}
BENCHES.update({f'{name}_decoder_only': dataclasses.replace(bench, architecture='decoder_only')
                for name, bench in list(BENCHES.items())})


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def matmul_flops(config: network.T5Config, batch: int, input_length: int,
                 target_length: int) -> Dict[str, int]:
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
  encoder_layer = (2 * 4 * b * i * e * hd          # q, k, v and output projections
                   + 2 * 2 * b * i * i * hd        # q.k logits and the weighted sum of values
                   + b * i * mlp_per_token)
  cross_kv = 2 * 2 * b * i * e * hd
  decoder_layer = (2 * 4 * b * l * e * hd + 2 * 2 * b * l * l * hd   # self-attention
                   + 2 * 2 * b * l * e * hd + cross_kv               # cross q, out; k, v
                   + 2 * 2 * b * l * i * hd                          # cross logits, values
                   + b * l * mlp_per_token)
  step_layer = (2 * 4 * b * e * hd + 2 * 2 * b * l * hd   # one query over the L-long cache
                + 2 * 2 * b * e * hd + 2 * 2 * b * i * hd
                + b * mlp_per_token)
  logits_per_token = 2 * e * v
  return {
      'encode': config.num_encoder_layers * encoder_layer,
      'decode': config.num_decoder_layers * decoder_layer + b * l * logits_per_token,
      'sample': config.num_decoder_layers * cross_kv
                + l * (config.num_decoder_layers * step_layer + b * logits_per_token),
  }


def decoder_only_matmul_flops(config: decoder_only.DecoderOnlyConfig, batch: int,
                             input_length: int, target_length: int) -> Dict[str, int]:
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
  layer = lambda queries, keys: (2 * 4 * b * queries * e * hd + 2 * 2 * b * queries * keys * hd
                                 + b * queries * mlp_per_token)
  logits_per_token = 2 * e * v
  return {
      'encode': 0,
      'decode': config.num_layers * layer(t, t) + b * t * logits_per_token,
      'sample': config.num_layers * layer(p, t) + b * logits_per_token
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
  return {'step_lambda1': supervised + student['sample'], 'step_lambda0': supervised,
          'sample': student['sample'], 'teacher_forward': teacher['encode'] + teacher['decode']}


def program_stats(closed_jaxpr, while_trips: int) -> Tuple[int, int]:
  """(matmul FLOPs, number of `while` loops) of a traced program, read off its jaxpr.

  Every `dot_general` counts 2 x (output size) x (contracted size). A while loop's body counts
  `while_trips` times (the sampler's loop runs at most L steps; it runs all L when no row
  stops early). Both branches of a `cond` count (none occurs with lambda = 0 or 1).
  """
  flops, loops = 0, 0

  def walk(jaxpr, multiplier):
    nonlocal flops, loops
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        (contracting, _), _ = eqn.params['dimension_numbers']
        lhs_shape = eqn.invars[0].aval.shape
        flops += multiplier * 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
            np.prod([lhs_shape[d] for d in contracting]))
      loops += eqn.primitive.name == 'while'
      for param_name, value in eqn.params.items():
        if eqn.primitive.name == 'while' and param_name == 'cond_jaxpr':
          continue
        trips = while_trips if param_name == 'body_jaxpr' else 1
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            walk(sub.jaxpr, multiplier * trips)
          elif isinstance(sub, jax_core.Jaxpr):
            walk(sub, multiplier * trips)

  walk(closed_jaxpr.jaxpr, 1)
  return flops, loops


def time_runs(fn: Callable[[int], object], steps: int, warmup: int) -> List[float]:
  """Runs fn(k) for `warmup` then `steps` values of k, blocking on each result; returns the
  seconds of the timed runs."""
  for k in range(warmup):
    jax.block_until_ready(fn(k))
  seconds = []
  for k in range(warmup, warmup + steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(k))
    seconds.append(time.perf_counter() - start)
  return seconds


def matmul_throughput(repeats: int = 5) -> float:
  """Measured float32 matmul throughput in FLOP/s (median over `repeats` jitted dots)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE)), jnp.float32)
          for _ in range(2))
  dot = jax.jit(jnp.dot)
  seconds = time_runs(lambda _: dot(a, b), repeats, warmup=1)
  return 2 * MATMUL_SIZE ** 3 / statistics.median(seconds)


def count_params(tree) -> int:
  return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


def make_batch(bench: Bench) -> Dict[str, jnp.ndarray]:
  """Random EncDec features [B, I] / [B, L] without padding or EOS (ids 2 .. V-1), so a
  lambda = 0 step trains on all L target tokens, like an on-policy step on samples that never
  stop early; decoder-only: the same inputs and targets as prefix-LM rows [B, I + L] (seqio's
  PrefixLMFeatureConverter layout)."""
  rng = np.random.default_rng(0)
  tokens = lambda length: jnp.asarray(
      rng.integers(2, bench.vocab_size, (bench.batch_size, length)), jnp.int32)
  targets = tokens(bench.target_length)
  inputs = tokens(bench.input_length)
  if bench.decoder_only:
    rows = jnp.concatenate([inputs, targets], axis=1)
    columns = jnp.arange(rows.shape[1])[None, :]
    ones = jnp.ones(rows.shape, jnp.int32)
    return {'decoder_target_tokens': rows, 'decoder_input_tokens': objective.shift_right(rows),
            'decoder_causal_attention': ones * (columns <= bench.input_length),
            'decoder_loss_weights': ones * (columns >= bench.input_length)}
  return {'encoder_input_tokens': inputs,
          'decoder_target_tokens': targets,
          'decoder_input_tokens': objective.shift_right(targets),
          'decoder_loss_weights': jnp.ones(targets.shape, jnp.float32)}


def make_model(bench: Bench, lmbda: float) -> models.GKDModelBase:
  vocabulary = vocabularies.TokenIdVocabulary(bench.vocab_size, eos_id=EOS_ID)
  gkd = objective.GKDConfig(divergence='jsd', beta=bench.beta, lmbda=lmbda)
  if bench.decoder_only:
    return models.GKDDecoderOnlyModel(
        decoder_only.DecoderOnlyTransformer(bench.student.decoder_only_config(bench.vocab_size)),
        decoder_only.DecoderOnlyTransformer(bench.teacher.decoder_only_config(bench.vocab_size)),
        vocabulary, gkd=gkd, inputs_bidirectional_attention=True,
        task_feature_lengths={'inputs': bench.input_length, 'targets': bench.target_length})
  return models.GKDModel(
      network.Transformer(bench.student.t5_config(bench.vocab_size)),
      network.Transformer(bench.teacher.t5_config(bench.vocab_size)), vocabulary, vocabulary,
      gkd=gkd)


def make_sampler(bench: Bench, model: models.GKDModelBase, params,
                 inputs: jnp.ndarray) -> Callable[[jnp.ndarray], objective.Sequences]:
  """The student's jitted sampler of L tokens (temperature 1, EOS stops a row), as a function
  of the sampling key, for inputs [B, I] (`model.objective_batch`'s 'encoder_input_tokens').

  Returns:
    rng -> `objective.Sequences` of shape [B, L].
  """
  student = lambda p: model.policy(model.module, p)
  # The sampler's input: the student's prompt state, computed outside the timed function.
  prompt = jax.jit(lambda p: student(p).read_prompt(inputs))(params)

  @jax.jit
  def sample(p, rng):
    return objective.sample_sequences(
        student(p), prompt, rng=rng, batch_size=bench.batch_size, length=bench.target_length,
        max_decode_length=bench.target_length, temperature=1.0, eos_id=EOS_ID)

  return lambda rng: sample(params, rng)


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # one entry per program in older jax versions
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


@dataclasses.dataclass
class StepTiming:
  """A compiled train step, its compile time and timed runs, and what it was run with."""
  model: models.GKDModelBase
  params: object
  teacher_params: object
  compiled: object
  jaxpr: object
  compile_s: float
  seconds: List[float]
  sample_lengths: List[float]


def time_step(bench: Bench, lmbda: float, batch: Dict[str, jnp.ndarray], step_keys: jnp.ndarray,
              steps: int, warmup: int, name: str) -> StepTiming:
  """Compiles `value_and_grad(loss_fn)` of a model with this lambda and times its steps (one
  step key each)."""
  model = make_model(bench, lmbda)
  shapes = {name: value.shape for name, value in batch.items()}
  variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  params = variables['params']
  mutables = {models.TEACHER_COLLECTION: variables[models.TEACHER_COLLECTION]}
  step = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))
  log(f'[{name}] compiling the lambda={lmbda:g} step')
  start = time.perf_counter()
  traced = step.trace(params, batch, step_keys[0], mutables)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - start

  metrics = []

  def run(k):
    (loss, (step_metrics, _)), grads = compiled(params, batch, step_keys[k], mutables)
    metrics.append(step_metrics)
    return loss, grads

  log(f'[{name}] timing {steps} lambda={lmbda:g} steps after {warmup} warm-up steps')
  seconds = time_runs(run, steps, warmup)
  # Sample statistics exist for models that may sample (here: lambda = 1) only.
  sample_lengths = [float(m['sample_length'].compute()) for m in metrics[warmup:]
                    if 'sample_length' in m]
  return StepTiming(model, params, mutables[models.TEACHER_COLLECTION], compiled, traced.jaxpr,
                    compile_s, seconds, sample_lengths)


def run_bench(name: str, bench: Bench, steps: int, warmup: int) -> Dict[str, object]:
  """Measures one configuration; returns the fields of its JSON line."""
  batch = make_batch(bench)
  step_keys = jax.random.split(jax.random.PRNGKey(1), warmup + steps)
  on_policy = time_step(bench, 1.0, batch, step_keys, steps, warmup, name)
  supervised = time_step(bench, 0.0, batch, step_keys, steps, warmup, name)

  model, params, teacher_params = on_policy.model, on_policy.params, on_policy.teacher_params
  # The objective's features (a decoder-only model's split rows), made outside the timings.
  features = jax.jit(model.objective_batch)(batch)
  inputs, targets = features['encoder_input_tokens'], features['decoder_target_tokens']
  sample = make_sampler(bench, model, params, inputs)

  @jax.jit
  def teacher_forward(p):
    teacher = model.policy(model.teacher_module, p)
    return teacher.logits(teacher.read_prompt(inputs), objective.shift_right(targets), targets)

  log(f'[{name}] timing sampling alone and the teacher forward pass')
  sample_s = statistics.median(time_runs(lambda k: sample(step_keys[k]), steps, warmup))
  teacher_forward_s = statistics.median(
      time_runs(lambda _: teacher_forward(teacher_params), steps, warmup))

  log(f'[{name}] measuring matmul throughput ({MATMUL_SIZE}^3 float32)')
  throughput = matmul_throughput()
  lengths = (bench.batch_size, bench.input_length, bench.target_length)
  count = decoder_only_matmul_flops if bench.decoder_only else matmul_flops
  flops = step_flops(count(model.module.config, *lengths),
                     count(model.teacher_module.config, *lengths))
  measured = {'step_lambda1': statistics.median(on_policy.seconds),
              'step_lambda0': statistics.median(supervised.seconds),
              'sample': sample_s, 'teacher_forward': teacher_forward_s}
  bound = {part: flops[part] / throughput for part in flops}
  compiled = {'lambda1': on_policy.compiled, 'lambda0': supervised.compiled}
  traced = {tag: program_stats(timing.jaxpr, bench.target_length)
            for tag, timing in (('lambda1', on_policy), ('lambda0', supervised))}
  return {
      'config': name,
      'step_lambda1_s': measured['step_lambda1'],
      'step_lambda0_s': measured['step_lambda0'],
      'ratio_lambda1_over_lambda0': measured['step_lambda1'] / measured['step_lambda0'],
      'sample_s': sample_s,
      'teacher_forward_s': teacher_forward_s,
      'compile_lambda1_s': on_policy.compile_s,
      'compile_lambda0_s': supervised.compile_s,
      'matmul_gflops': throughput / 1e9,
      'flops_analytic': flops,
      'flops_jaxpr': {tag: stats[0] for tag, stats in traced.items()},
      'flops_xla': {tag: xla_flops(c) for tag, c in compiled.items()},
      'flop_bound_s': bound,
      'fraction_of_bound': {part: bound[part] / measured[part] for part in flops},
      'while_loops': {
          'jaxpr': {tag: stats[1] for tag, stats in traced.items()},
          'compiled_hlo': {tag: len(re.findall(r'\swhile\(', c.as_text()))
                           for tag, c in compiled.items()}},
      'params_student': count_params(params),
      'params_teacher': count_params(teacher_params),
      'sample_length': statistics.mean(on_policy.sample_lengths),
      'shapes': {'batch': bench.batch_size, 'input_length': bench.input_length,
                 'target_length': bench.target_length, 'vocab': bench.vocab_size},
      'student': dataclasses.asdict(bench.student),
      'teacher': dataclasses.asdict(bench.teacher),
      'architecture': bench.architecture,
      'divergence': f'jsd({bench.beta:g})', 'dtype': 'float32', 'dropout': 0.0,
      'steps': steps, 'warmup': warmup, 'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind, 'jax_version': jax.__version__,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', choices=sorted(BENCHES) + ['all'], default='all')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per measurement')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error('--steps must be >= 1 and --warmup >= 0.')
  names = list(BENCHES) if args.config == 'all' else [args.config]
  for name in names:
    print(json.dumps(run_bench(name, BENCHES[name], args.steps, args.warmup)), flush=True)


if __name__ == '__main__':
  main()
