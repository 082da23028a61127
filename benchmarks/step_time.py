"""Step time of GKD on the standard benchmark configurations (shared/benchmarks.md), and on the
paper's T5 1.1 pairs on accelerators.

  python benchmarks/step_time.py [--config <name>|all|accelerator] [--steps N] [--warmup N]
      [--dtype float32|bfloat16] [--batch_size N|max] [--max_batch_size N]
      [--peak_tflops X] [--divergence_chunk_length N] [--teacher_top_k K]

Configurations (`--config`):

  tiny, bench_a, bench_b     the standard set (T5 1.1 layout: gated GELU, no biases, untied
                             output layer; vocabulary 384; input 16, target 48; batch 32, tiny
                             8); float32 unless --dtype says otherwise
  <name>_decoder_only        the same widths as `models.GKDDecoderOnlyModel`s of prefix-LM
                             networks with as many layers as encoder and decoder together, on
                             prefix-LM rows of the same prompt and continuation lengths
  t5_small_xl_xsum, t5_base_xl_xsum, t5_small_xl_gsm8k, t5_base_xl_gsm8k
                             the paper's pairs: a T5 1.1 small or base student and an XL teacher
                             (gin/models/t5_1_1_*.gin: vocabulary 32128, head dimension 64) at
                             XSum's lengths (input 1024, target 64) or GSM8K's (512, 320), in
                             bfloat16 and at the largest batch that fits (`--batch_size max`)
  all                        the standard set and its decoder-only versions
  accelerator                the four T5 1.1 pairs

Every configuration uses JSD(0.5) with dropout off. It builds `models.GKDModel`s (or
`models.GKDDecoderOnlyModel`s) and times the trainer's own step, `trainer.jit_train_step` on a
one-device mesh: the loss, its gradients, an AdamW update (OPTIMIZER) and the non-finite guard,
with the teacher's params an argument that is neither donated nor returned and the state
donated. Each step is compiled for abstract arguments (`trainer.abstract_step_args`), so that
the batch search never allocates params; they are made once the batch is chosen. Figures
recorded before 2026-12-08 timed `jax.value_and_grad(model.loss_fn)` alone, without the update.

Flags:

  --dtype                    activation dtype: 'float32', or 'bfloat16' as T5X runs mixed
                             precision (T5Config.dtype / DecoderOnlyConfig.dtype): params,
                             gradients, layer norms' statistics, the output layer and the
                             logits stay float32, the activations (student, sampler and
                             teacher) are bfloat16, and the divergence's log-softmax promotes
                             to float32. Default: the configuration's own (float32 for the
                             standard set, bfloat16 for the T5 1.1 pairs)
  --batch_size               N, or 'max': the largest power of two whose lambda = 1 step (the
                             larger of the two: the lambda = 0 step plus sampling) needs at most
                             the device's memory (`memory_stats()['bytes_limit']`) by XLA's
                             estimate (`memory_analysis()`, as peak_memory_bytes), searched
                             upward from 1 by compiling only. Default: the configuration's own
  --max_batch_size           caps that search; default: none where the device reports its
                             memory, 8 where it does not (CPU)
  --peak_tflops              the device's peak TFLOP/s for the MFU (default: PEAK_TFLOPS below)
  --divergence_chunk_length  passed to `objective.GKDConfig(divergence_chunk_length=N)`; unset
                             (the default) leaves GKDConfig's own default
  --teacher_top_k            passed to `objective.GKDConfig(teacher_top_k=K)` likewise: the
                             divergence over the teacher's top K tokens and a tail bucket

Each configuration prints one JSON line with:

  step_lambda1_s, step_lambda0_s   median seconds of an on-policy step (lambda = 1: sample
                                   y ~ p_S, then teacher and student passes) and of a supervised
                                   step (lambda = 0), after compilation and warm-up
  ratio_lambda1_over_lambda0       the cost of on-policy data (the paper reports 1.8-2.2x)
  sample_s                         sampling the target length of tokens alone (student, KV
                                   cache; `objective.sample_sequences`, prompt state given)
  tokens_sampled_per_s             batch x target length / sample_s
  teacher_forward_s                one teacher forward pass (encode + teacher-forced decode;
                                   decoder-only: prompt + continuation teacher-forced)
  compile_lambda1_s, compile_lambda0_s   wall time of trace + lower + compile of each step
  matmul_gflops                    matmul throughput in the run's dtype measured here, in this
                                   run (a jitted 2048 x 2048 x 2048 jnp.dot, median)
  flops_analytic                   matmul FLOPs counted from the shapes (2 per multiply-add;
                                   student backward = 2x forward; the sampler counted for all
                                   L steps); see `matmul_flops`. The bound and the MFU use these.
  flops_jaxpr                      the same count read off each step's traced program (every
                                   dot_general, the sampler's loop body x L): a check that the
                                   formulas describe the code
  flops_xla                        XLA's `cost_analysis()['flops']` of each compiled step (all
                                   ops, but a while loop's body counted once, so it undercounts
                                   the sampler)
  flop_bound_s, fraction_of_bound  analytic FLOPs / measured throughput, and that bound over
                                   the measured median: the fraction of the matmul limit reached
  peak_tflops, mfu, mfu_note       the device's peak TFLOP/s for the run's dtype, the model FLOPs
                                   utilization of each part (flops_analytic / measured seconds /
                                   peak) and where the peak comes from; without a known peak
                                   (CPU, an unlisted device, no --peak_tflops) both are null and
                                   mfu_note says why: on CPU fraction_of_bound is the reference
  peak_memory_bytes                each compiled step's memory by XLA's static estimate: argument
                                   + output + temp - alias bytes of `memory_analysis()`, whose
                                   parts are memory_analysis_bytes
  device_memory_bytes              the device's `bytes_limit` (null where it reports none: CPU)
  batch_search                     null for a given batch; with `--batch_size max`: the limit it
                                   searched under (memory_limit_bytes, max_batch_size), the
                                   peak_memory_bytes of each batch compiled, and limited_by
                                   ('memory' or 'max_batch_size')
  while_loops                      `while` loops of each step: in its jaxpr (lax.while_loop; the
                                   sampler is the only one) and in its compiled HLO, which on
                                   CPU adds the RNG's threefry loops when random bits are drawn;
                                   a lambda = 0 step (no dropout, no sampling) has none at all
  params_student, params_teacher   parameter counts (bench_a ~0.25M / 9.6M, bench_b ~0.89M / 38M,
                                   T5 1.1 small 77M, base 248M, XL 2.85B)
  sample_length                    mean sampled length of the timed on-policy steps (a random
                                   student rarely emits EOS, so ~ the target length)
  architecture, dtype, divergence, divergence_chunk_length, teacher_top_k   what ran (dtype: the
                                   activations')

Progress goes to stderr. Seeds are fixed; times are medians (the machines are noisy). This is
a measurement, not a test: nothing here asserts a time.

Shape letters: B batch, I input length, L target length, E embedding, V vocabulary.
"""

import argparse
import dataclasses
import functools
import json
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax

from gkd_t5x import costs
from gkd_t5x import decoder_only
from gkd_t5x import models
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import optimizers
from gkd_t5x import partitioning
from gkd_t5x import trainer
from gkd_t5x import vocabularies

EOS_ID = 1
MATMUL_SIZE = 2048
DTYPES = ('float32', 'bfloat16')
# The batch search's cap where the device reports no memory limit (CPU).
UNLIMITED_MAX_BATCH_SIZE = 8
# The timed steps' optimizer: AdamW at torch.optim.AdamW's defaults (learning rate 1e-3, weight
# decay 0.01), as TRL's side of compare_trl.py steps it.
OPTIMIZER = optimizers.adamw(1e-3, weight_decay=0.01)

# Vendor dense (no sparsity) peak TFLOP/s per JAX device kind: (bfloat16, float32 as JAX runs
# it). JAX's default matmul precision computes float32 dots as TF32 on these GPUs and as
# bfloat16 passes on TPUs (docs.jax.dev, "Matmul precision"), so the float32 column is the TF32
# peak on GPUs and the bfloat16 peak on TPUs.
PEAK_TFLOPS = {
    # NVIDIA H100 SXM and H200 datasheets: BF16 1979 and TF32 989 TFLOP/s with sparsity, half
    # that dense. An H200 NVL (835 dense) also reports 'NVIDIA H200': pass --peak_tflops there.
    'NVIDIA H100 80GB HBM3': (989.4, 494.7),
    'NVIDIA H200': (989.4, 494.7),
    # NVIDIA H100 PCIe datasheet: BF16 1513, TF32 756 with sparsity.
    'NVIDIA H100 PCIe': (756.0, 378.0),
    # NVIDIA A100 datasheet: BF16 312, TF32 156 dense.
    'NVIDIA A100-SXM4-40GB': (312.0, 156.0),
    'NVIDIA A100-SXM4-80GB': (312.0, 156.0),
    # Cloud TPU system architecture pages: bf16 peak per chip (one JAX device per chip).
    'TPU v4': (275.0, 275.0),
    'TPU v5 lite': (197.0, 197.0),  # v5e
    'TPU v5': (459.0, 459.0),  # v5p
    'TPU v5p': (459.0, 459.0),
    'TPU v6 lite': (918.0, 918.0),  # v6e
}


@dataclasses.dataclass(frozen=True)
class Size:
  """A T5 1.1 net's shape: d_model, layers (encoder = decoder), heads, d_ff, head dimension."""

  emb_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int

  def t5_config(self, vocab_size: int, dtype: str) -> network.T5Config:
    return network.T5Config(
        vocab_size=vocab_size,
        emb_dim=self.emb_dim,
        num_heads=self.num_heads,
        num_encoder_layers=self.num_layers,
        num_decoder_layers=self.num_layers,
        head_dim=self.head_dim,
        mlp_dim=self.mlp_dim,
        mlp_activations=('gelu', 'linear'),
        dropout_rate=0.0,
        logits_via_embedding=False,
        dtype=dtype,
    )

  def decoder_only_config(self, vocab_size: int, dtype: str) -> decoder_only.DecoderOnlyConfig:
    """The decoder-only net of this size: the encoder's and the decoder's layers in one stack."""
    return decoder_only.DecoderOnlyConfig(
        vocab_size=vocab_size,
        emb_dim=self.emb_dim,
        num_heads=self.num_heads,
        num_layers=2 * self.num_layers,
        head_dim=self.head_dim,
        mlp_dim=self.mlp_dim,
        mlp_activations=('gelu', 'linear'),
        dropout_rate=0.0,
        logits_via_embedding=False,
        dtype=dtype,
    )


# T5 1.1's public sizes, as gin/models/t5_1_1_{small,base,xl}.gin bind them.
T5_1_1_SMALL = Size(512, 8, 6, 1024, 64)
T5_1_1_BASE = Size(768, 12, 12, 2048, 64)
T5_1_1_XL = Size(2048, 24, 32, 5120, 64)
T5_VOCAB_SIZE = 32128


@dataclasses.dataclass(frozen=True)
class Bench:
  """One benchmark configuration: student and teacher sizes, the batch's shapes (prompt I and
  continuation L; batch None: the largest that fits, `choose_batch`), the architecture
  ('encoder_decoder' or 'decoder_only'), the activation dtype and the objective's
  `divergence_chunk_length` and `teacher_top_k` (None: GKDConfig's defaults)."""

  student: Size
  teacher: Size
  batch_size: Optional[int] = 32
  input_length: int = 16
  target_length: int = 48
  vocab_size: int = 384
  beta: float = 0.5
  architecture: str = 'encoder_decoder'
  dtype: str = 'float32'
  divergence_chunk_length: Optional[int] = None
  teacher_top_k: Optional[int] = None

  @property
  def decoder_only(self) -> bool:
    return self.architecture == 'decoder_only'


STANDARD_BENCHES = {
    # A quick smoke configuration, smaller than the standard ones in every dimension.
    'tiny': Bench(
        Size(32, 1, 2, 64, 16),
        Size(64, 2, 4, 128, 16),
        batch_size=8,
        input_length=8,
        target_length=16,
    ),
    'bench_a': Bench(Size(64, 2, 4, 128, 16), Size(256, 4, 4, 1024, 64)),
    'bench_b': Bench(Size(128, 2, 4, 256, 32), Size(512, 6, 8, 1024, 64)),
}
STANDARD_BENCHES.update(
    {
        f'{name}_decoder_only': dataclasses.replace(bench, architecture='decoder_only')
        for name, bench in list(STANDARD_BENCHES.items())
    }
)
# The paper's pairs (an XL teacher; small and base students) at the maximum input and output
# lengths of its XSum and GSM8K runs (Tables A.1, A.2), in T5X's mixed precision.
ACCELERATOR_BENCHES = {
    f't5_{student}_xl_{task}': Bench(
        size,
        T5_1_1_XL,
        batch_size=None,
        input_length=input_length,
        target_length=target_length,
        vocab_size=T5_VOCAB_SIZE,
        dtype='bfloat16',
    )
    for task, (input_length, target_length) in (('xsum', (1024, 64)), ('gsm8k', (512, 320)))
    for student, size in (('small', T5_1_1_SMALL), ('base', T5_1_1_BASE))
}
# The tiny nets at GSM8K's lengths and T5's vocabulary: the [B, L, V] logits and the divergence
# dominate the step, so that the teacher signal's cost shows on a CPU
# (`divergence_memory.py --teacher_top_ks`).
SHAPE_BENCHES = {
    'tiny_gsm8k': dataclasses.replace(
        STANDARD_BENCHES['tiny'],
        batch_size=2,
        input_length=512,
        target_length=320,
        vocab_size=T5_VOCAB_SIZE,
    )
}
BENCHES = {**STANDARD_BENCHES, **ACCELERATOR_BENCHES, **SHAPE_BENCHES}


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


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
        flops += (
            multiplier
            * 2
            * int(np.prod(eqn.outvars[0].aval.shape))
            * int(np.prod([lhs_shape[d] for d in contracting]))
        )
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


def matmul_throughput(dtype: str, repeats: int = 5) -> float:
  """Measured matmul throughput in FLOP/s of `dtype` operands (median over `repeats` jitted
  dots)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE)), dtype) for _ in range(2))
  dot = jax.jit(jnp.dot)
  seconds = time_runs(lambda _: dot(a, b), repeats, warmup=1)
  return 2 * MATMUL_SIZE**3 / statistics.median(seconds)


def count_params(tree) -> int:
  return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


def make_batch(bench: Bench) -> Dict[str, jnp.ndarray]:
  """Random EncDec features [B, I] / [B, L] without padding or EOS (ids 2 .. V-1), so a
  lambda = 0 step trains on all L target tokens, like an on-policy step on samples that never
  stop early; decoder-only: the same inputs and targets as prefix-LM rows [B, I + L] (seqio's
  PrefixLMFeatureConverter layout). Every feature is int32, as the trainer's batches are."""
  rng = np.random.default_rng(0)
  tokens = lambda length: jnp.asarray(
      rng.integers(2, bench.vocab_size, (bench.batch_size, length)), jnp.int32
  )
  targets = tokens(bench.target_length)
  inputs = tokens(bench.input_length)
  if bench.decoder_only:
    rows = jnp.concatenate([inputs, targets], axis=1)
    columns = jnp.arange(rows.shape[1])[None, :]
    ones = jnp.ones(rows.shape, jnp.int32)
    return {
        'decoder_target_tokens': rows,
        'decoder_input_tokens': objective.shift_right(rows),
        'decoder_causal_attention': ones * (columns <= bench.input_length),
        'decoder_loss_weights': ones * (columns >= bench.input_length),
    }
  return {
      'encoder_input_tokens': inputs,
      'decoder_target_tokens': targets,
      'decoder_input_tokens': objective.shift_right(targets),
      'decoder_loss_weights': jnp.ones(targets.shape, jnp.int32),
  }


def make_model(bench: Bench, lmbda: float) -> models.GKDModelBase:
  vocabulary = vocabularies.TokenIdVocabulary(bench.vocab_size, eos_id=EOS_ID)
  # Passed only when set, so that an unset flag leaves GKDConfig's own default.
  settings = {
      name: getattr(bench, name)
      for name in ('divergence_chunk_length', 'teacher_top_k')
      if getattr(bench, name) is not None
  }
  gkd = objective.GKDConfig(divergence='jsd', beta=bench.beta, lmbda=lmbda, **settings)
  if bench.decoder_only:
    return models.GKDDecoderOnlyModel(
        decoder_only.DecoderOnlyTransformer(
            bench.student.decoder_only_config(bench.vocab_size, bench.dtype)
        ),
        decoder_only.DecoderOnlyTransformer(
            bench.teacher.decoder_only_config(bench.vocab_size, bench.dtype)
        ),
        vocabulary,
        gkd=gkd,
        inputs_bidirectional_attention=True,
        task_feature_lengths={'inputs': bench.input_length, 'targets': bench.target_length},
    )
  return models.GKDModel(
      network.Transformer(bench.student.t5_config(bench.vocab_size, bench.dtype)),
      network.Transformer(bench.teacher.t5_config(bench.vocab_size, bench.dtype)),
      vocabulary,
      vocabulary,
      gkd=gkd,
  )


def variables_fn(model: models.GKDModelBase, bench: Bench) -> Callable[[], Dict[str, object]]:
  """The model's variables from seed 0 as a function of nothing: `jax.eval_shape` of it gives
  their shapes without allocating them, `jax.jit` of it makes them (in one program, in which
  initialization's forward pass on the batch is dead code)."""
  shapes = batch_shapes(bench)
  return lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes)


def batch_shapes(bench: Bench) -> Dict[str, Tuple[int, ...]]:
  """{feature: shape} of `make_batch`'s batch, computed without making it."""
  batch = jax.eval_shape(functools.partial(make_batch, bench))
  return {name: value.shape for name, value in batch.items()}


def device_memory_bytes() -> Optional[int]:
  """The default device's memory limit in bytes, or None where it reports none (CPU)."""
  stats = jax.devices()[0].memory_stats()
  return stats.get('bytes_limit') if stats else None


def peak_flops(
    device_kind: str, dtype: str, peak_tflops: Optional[float]
) -> Tuple[Optional[float], str]:
  """(The device's peak FLOP/s for `dtype` matmuls, where it comes from), or (None, why none):
  `peak_tflops` when given, else PEAK_TFLOPS' entry of the device kind."""
  if peak_tflops is not None:
    return peak_tflops * 1e12, '--peak_tflops'
  if device_kind not in PEAK_TFLOPS:
    return None, (
        f'no peak FLOP/s known for device kind {device_kind!r}: pass --peak_tflops (on CPU, '
        'fraction_of_bound, against the measured matmul_gflops, is the reference)'
    )
  bfloat16, float32 = PEAK_TFLOPS[device_kind]
  if dtype == 'bfloat16':
    return bfloat16 * 1e12, f'vendor dense bfloat16 peak of {device_kind}'
  return float32 * 1e12, (
      f'vendor dense peak of {device_kind} for float32 dots as JAX runs them (TF32 on GPUs, '
      'bfloat16 passes on TPUs)'
  )


def largest_fitting_batch(
    step_bytes: Callable[[int], int], limit_bytes: Optional[int], max_batch_size: Optional[int]
) -> Tuple[int, Dict[int, int]]:
  """The largest power-of-two batch size, at most `max_batch_size`, whose step needs at most
  `limit_bytes`: tries 1, 2, 4, ... until one needs more or the next passes the cap.

  Args:
    step_bytes: the memory a step needs at a batch size.
    limit_bytes: the memory available; None: no limit (the cap alone ends the search).
    max_batch_size: the largest batch size to try; None: no cap (the limit alone ends it).

  Returns:
    (that batch size, {each batch size tried: its step_bytes}).

  Raises:
    ValueError: with neither a limit nor a cap, or when a batch of 1 does not fit.
  """
  if limit_bytes is None and max_batch_size is None:
    raise ValueError('The batch search needs a memory limit or a maximum batch size.')
  tried = {}
  fits = lambda size: limit_bytes is None or tried[size] <= limit_bytes
  size = 1
  while max_batch_size is None or size <= max_batch_size:
    tried[size] = step_bytes(size)
    if not fits(size):
      break
    size *= 2
  fitting = [size for size in tried if fits(size)]
  if not fitting:
    raise ValueError(f'A batch of 1 needs {tried[1]} bytes, more than the {limit_bytes} available.')
  return max(fitting), tried


@dataclasses.dataclass
class CompiledStep:
  """The trainer's step (`trainer.jit_train_step`) for a model with one lambda, compiled for
  the bench's shapes, with its traced program and compile time."""

  model: models.GKDModelBase
  optimizer: optax.GradientTransformation
  layout: trainer.StateLayout
  compiled: object
  jaxpr: object
  compile_s: float


def compile_step(
    bench: Bench,
    lmbda: float,
    name: str,
    *,
    optimizer: Optional[optax.GradientTransformation] = None,
) -> CompiledStep:
  """Traces, lowers and compiles the trainer's own step (`trainer.jit_train_step`: loss,
  gradients, the optimizer's update, the non-finite guard; the state donated) of a model with
  this lambda on one device, from abstract arguments (`trainer.abstract_step_args`: nothing is
  allocated). `optimizer` defaults to OPTIMIZER."""
  optimizer = optimizer or OPTIMIZER
  model = make_model(bench, lmbda)
  shapes = batch_shapes(bench)
  mesh = partitioning.make_mesh(1, jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  layout = trainer.make_layout(model, optimizer, mesh, rules, shapes)
  log(f'[{name}] compiling the lambda={lmbda:g} train step at batch {bench.batch_size}')
  start = time.perf_counter()
  with partitioning.activate(mesh, rules):
    step = trainer.jit_train_step(model, optimizer, layout)
    traced = step.trace(*trainer.abstract_step_args(layout))
    compiled = traced.lower().compile()
  return CompiledStep(model, optimizer, layout, compiled, traced.jaxpr, time.perf_counter() - start)


def choose_batch(
    name: str, bench: Bench, max_batch_size: Optional[int]
) -> Tuple[Bench, CompiledStep, Optional[Dict[str, object]]]:
  """The bench at its batch size with its compiled lambda = 1 step, and the record of the batch
  search (None for a given batch size).

  A batch size of None is searched: the largest that `largest_fitting_batch` finds for the
  lambda = 1 step's peak memory (the larger step's: the lambda = 0 step's passes after
  sampling) under the device's memory, capped by `max_batch_size` (default: none where the
  device reports its memory, UNLIMITED_MAX_BATCH_SIZE where it does not).
  """
  if bench.batch_size is not None:
    return bench, compile_step(bench, 1.0, name), None
  limit = device_memory_bytes()
  if max_batch_size is None and limit is None:
    max_batch_size = UNLIMITED_MAX_BATCH_SIZE
  compiled = {}

  def step_bytes(batch_size):
    compiled[batch_size] = compile_step(
        dataclasses.replace(bench, batch_size=batch_size), 1.0, name
    )
    return costs.memory_bytes(compiled[batch_size].compiled)['peak']

  batch_size, tried = largest_fitting_batch(step_bytes, limit, max_batch_size)
  log(f'[{name}] batch {batch_size}: peak memory by batch {tried}, limit {limit}')
  search = {
      'memory_limit_bytes': limit,
      'max_batch_size': max_batch_size,
      'peak_memory_bytes': tried,
      'limited_by': 'memory'
      if limit is not None and tried[max(tried)] > limit
      else 'max_batch_size',
  }
  return dataclasses.replace(bench, batch_size=batch_size), compiled[batch_size], search


def step_runner(
    step: CompiledStep,
    variables: Dict[str, object],
    batch: Dict[str, jnp.ndarray],
    keys: jnp.ndarray,
) -> Callable[[int], Dict[str, object]]:
  """The compiled step as a function of k that takes step k on `keys[k]` (the run key) from the
  state the previous call left (the state is donated: each call replaces it), starting from a
  fresh optimizer state on a copy of `variables['params']`; it returns the step's metrics."""
  params = jax.tree_util.tree_map(jnp.copy, variables['params'])
  state = trainer.init_state(step.model, step.optimizer, step.layout, keys[0], params=params)
  frozen = {models.TEACHER_COLLECTION: variables[models.TEACHER_COLLECTION]}

  def run(k):
    nonlocal state
    state, metrics = step.compiled(state, frozen, batch, keys[k])
    return metrics

  return run


def time_step(
    step: CompiledStep,
    variables: Dict[str, object],
    batch: Dict[str, jnp.ndarray],
    step_keys: jnp.ndarray,
    steps: int,
    warmup: int,
    name: str,
) -> Tuple[List[float], List[float]]:
  """Times a compiled step (run key `step_keys[k]` at step k); returns the seconds of the timed
  steps and their mean sampled lengths (none for a model that never samples: lambda = 0)."""
  metrics = []
  run = step_runner(step, variables, batch, step_keys)

  def timed(k):
    metrics.append(run(k))
    return metrics[-1]

  log(f'[{name}] timing {steps} steps of lambda={step.model.gkd.lmbda.start:g} after {warmup}')
  seconds = time_runs(timed, steps, warmup)
  sample_lengths = [
      float(m['sample_length'].compute()) for m in metrics[warmup:] if 'sample_length' in m
  ]
  return seconds, sample_lengths


def make_sampler(
    bench: Bench, model: models.GKDModelBase, params, inputs: jnp.ndarray
) -> Callable[[jnp.ndarray], objective.Sequences]:
  """The student's jitted sampler of L tokens (temperature 1, EOS ends a row) for the objective's
  inputs [B, I], as a function of the sampling key: rng -> `objective.Sequences` [B, L]."""
  student = lambda p: model.policy(model.module, p)
  # The sampler's input: the student's prompt state, computed outside the timed function and
  # passed as an argument (a closed-over array would be compiled in as a constant).
  prompt = jax.jit(lambda p, x: student(p).read_prompt(x))(params, inputs)

  @jax.jit
  def sample(p, prompt, rng):
    return objective.sample_sequences(
        student(p),
        prompt,
        rng=rng,
        batch_size=bench.batch_size,
        length=bench.target_length,
        max_decode_length=bench.target_length,
        temperature=1.0,
        eos_id=EOS_ID,
    )

  return lambda rng: sample(params, prompt, rng)


def time_parts(
    bench: Bench,
    model: models.GKDModelBase,
    variables: Dict[str, object],
    batch: Dict[str, jnp.ndarray],
    step_keys: jnp.ndarray,
    steps: int,
    warmup: int,
) -> Tuple[float, float]:
  """Median seconds of sampling the target length alone (the student's prompt state given) and
  of one teacher forward pass."""
  # The objective's features (a decoder-only model's split rows), made outside the timings.
  features = jax.jit(model.objective_batch)(batch)
  inputs, targets = features['encoder_input_tokens'], features['decoder_target_tokens']
  sample = make_sampler(bench, model, variables['params'], inputs)

  @jax.jit
  def teacher_forward(p, inputs, targets):
    teacher = model.policy(model.teacher_module, p)
    return teacher.logits(teacher.read_prompt(inputs), objective.shift_right(targets), targets)

  teacher_params = variables[models.TEACHER_COLLECTION]
  sample_s = statistics.median(time_runs(lambda k: sample(step_keys[k]), steps, warmup))
  teacher_forward_s = statistics.median(
      time_runs(lambda _: teacher_forward(teacher_params, inputs, targets), steps, warmup)
  )
  return sample_s, teacher_forward_s


def device_figures(
    dtype: str,
    flops: Dict[str, int],
    measured: Dict[str, float],
    compiled: Dict[str, CompiledStep],
    peak_tflops: Optional[float],
) -> Dict[str, object]:
  """The JSON line's fields that depend on the device: the MFU of each part (analytic FLOPs /
  measured seconds / the device's peak for `dtype`) and each compiled step's memory."""
  peak, mfu_note = peak_flops(jax.devices()[0].device_kind, dtype, peak_tflops)
  memory = {tag: costs.memory_bytes(step.compiled) for tag, step in compiled.items()}
  return {
      'peak_tflops': None if peak is None else peak / 1e12,
      'mfu': None
      if peak is None
      else {part: flops[part] / measured[part] / peak for part in flops},
      'mfu_note': mfu_note,
      'peak_memory_bytes': {tag: parts['peak'] for tag, parts in memory.items()},
      'memory_analysis_bytes': {
          tag: {part: n for part, n in parts.items() if part != 'peak'}
          for tag, parts in memory.items()
      },
      'device_memory_bytes': device_memory_bytes(),
  }


def what_ran(bench: Bench) -> Dict[str, object]:
  """The JSON line's description of the configuration and of the machine."""
  return {
      'shapes': {
          'batch': bench.batch_size,
          'input_length': bench.input_length,
          'target_length': bench.target_length,
          'vocab': bench.vocab_size,
      },
      'student': dataclasses.asdict(bench.student),
      'teacher': dataclasses.asdict(bench.teacher),
      'architecture': bench.architecture,
      'divergence': f'jsd({bench.beta:g})',
      'divergence_chunk_length': bench.divergence_chunk_length,
      'teacher_top_k': bench.teacher_top_k,
      'dtype': bench.dtype,
      'dropout': 0.0,
      'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'jax_version': jax.__version__,
  }


def run_bench(
    name: str,
    bench: Bench,
    steps: int,
    warmup: int,
    *,
    max_batch_size: Optional[int] = None,
    peak_tflops: Optional[float] = None,
) -> Dict[str, object]:
  """Measures one configuration; returns the fields of its JSON line."""
  bench, on_policy, batch_search = choose_batch(name, bench, max_batch_size)
  supervised = compile_step(bench, 0.0, name)
  model = on_policy.model
  log(f'[{name}] initializing the student and the teacher')
  variables = jax.jit(variables_fn(model, bench))()
  batch = make_batch(bench)
  step_keys = jax.random.split(jax.random.PRNGKey(1), warmup + steps)
  on_policy_seconds, sample_lengths = time_step(
      on_policy, variables, batch, step_keys, steps, warmup, name
  )
  supervised_seconds, _ = time_step(supervised, variables, batch, step_keys, steps, warmup, name)
  log(f'[{name}] timing sampling alone and the teacher forward pass')
  sample_s, teacher_forward_s = time_parts(bench, model, variables, batch, step_keys, steps, warmup)

  log(f'[{name}] measuring matmul throughput ({MATMUL_SIZE}^3 {bench.dtype})')
  throughput = matmul_throughput(bench.dtype)
  lengths = (bench.batch_size, bench.input_length, bench.target_length)
  count = costs.decoder_only_matmul_flops if bench.decoder_only else costs.matmul_flops
  flops = costs.step_flops(
      count(model.module.config, *lengths), count(model.teacher_module.config, *lengths)
  )
  measured = {
      'step_lambda1': statistics.median(on_policy_seconds),
      'step_lambda0': statistics.median(supervised_seconds),
      'sample': sample_s,
      'teacher_forward': teacher_forward_s,
  }
  bound = {part: flops[part] / throughput for part in flops}
  compiled = {'lambda1': on_policy, 'lambda0': supervised}
  traced = {tag: program_stats(step.jaxpr, bench.target_length) for tag, step in compiled.items()}
  return {
      'config': name,
      'step_lambda1_s': measured['step_lambda1'],
      'step_lambda0_s': measured['step_lambda0'],
      'ratio_lambda1_over_lambda0': measured['step_lambda1'] / measured['step_lambda0'],
      'sample_s': sample_s,
      'tokens_sampled_per_s': bench.batch_size * bench.target_length / sample_s,
      'teacher_forward_s': teacher_forward_s,
      'compile_lambda1_s': on_policy.compile_s,
      'compile_lambda0_s': supervised.compile_s,
      'matmul_gflops': throughput / 1e9,
      'flops_analytic': flops,
      'flops_jaxpr': {tag: stats[0] for tag, stats in traced.items()},
      'flops_xla': {tag: costs.xla_flops(step.compiled) for tag, step in compiled.items()},
      'flop_bound_s': bound,
      'fraction_of_bound': {part: bound[part] / measured[part] for part in flops},
      **device_figures(bench.dtype, flops, measured, compiled, peak_tflops),
      'batch_search': batch_search,
      'while_loops': {
          'jaxpr': {tag: stats[1] for tag, stats in traced.items()},
          'compiled_hlo': {
              tag: len(re.findall(r'\swhile\(', step.compiled.as_text()))
              for tag, step in compiled.items()
          },
      },
      'params_student': count_params(variables['params']),
      'params_teacher': count_params(variables[models.TEACHER_COLLECTION]),
      'sample_length': statistics.mean(sample_lengths),
      **what_ran(bench),
      'steps': steps,
      'warmup': warmup,
  }


def batch_size_flag(value: str) -> Union[int, str]:
  """--batch_size: a positive int, or 'max' (the largest that fits: a batch size of None)."""
  if value == 'max':
    return value
  if not value.isdigit() or int(value) < 1:
    raise argparse.ArgumentTypeError(f"a batch size >= 1 or 'max', got {value!r}")
  return int(value)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', choices=sorted(BENCHES) + ['all', 'accelerator'], default='all')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per measurement')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  parser.add_argument('--dtype', choices=DTYPES, help="activations' dtype (default: the config's)")
  parser.add_argument(
      '--batch_size', type=batch_size_flag, help="N or 'max' (default: the config's)"
  )
  parser.add_argument('--max_batch_size', type=int, help="caps --batch_size max's search")
  parser.add_argument('--peak_tflops', type=float, help="the device's peak, for the MFU")
  parser.add_argument('--divergence_chunk_length', type=int, help='GKDConfig field, if set')
  parser.add_argument('--teacher_top_k', type=int, help='GKDConfig field, if set')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error('--steps must be >= 1 and --warmup >= 0.')
  if args.max_batch_size is not None and args.max_batch_size < 1:
    parser.error('--max_batch_size must be >= 1.')
  overrides = {
      field: value
      for field, value in (
          ('dtype', args.dtype),
          ('batch_size', args.batch_size),
          ('divergence_chunk_length', args.divergence_chunk_length),
          ('teacher_top_k', args.teacher_top_k),
      )
      if value is not None
  }
  if overrides.get('batch_size') == 'max':
    overrides['batch_size'] = None
  names = {'all': list(STANDARD_BENCHES), 'accelerator': list(ACCELERATOR_BENCHES)}.get(
      args.config, [args.config]
  )
  for name in names:
    figures = run_bench(
        name,
        dataclasses.replace(BENCHES[name], **overrides),
        args.steps,
        args.warmup,
        max_batch_size=args.max_batch_size,
        peak_tflops=args.peak_tflops,
    )
    print(json.dumps(figures), flush=True)


if __name__ == '__main__':
  main()
