"""Memory (and time) of a GKD step with the divergence whole or in sequence chunks, on the
teacher's full distribution or its top-k.

  python benchmarks/divergence_memory.py [--config t5_small_xl_gsm8k ...] [--batch_size 4]
                                         [--chunk_lengths 0,64,32] [--dtype bfloat16]
                                         [--teacher_top_ks 0,32128,256,64,8] [--time_steps N]

At GSM8K's 320-token targets and T5's 32k vocabulary, the teacher's and the student's logits
[B, L, V] and the divergence's float32 intermediates (log-softmaxes, JSD's mixture, their
residuals for the backward pass) are a step's largest buffers; `GKDConfig.divergence_chunk_length`
computes the divergence term over chunks of that many positions under `lax.scan` with
rematerialization (`divergences.chunked_sequence_sum`). This script compiles the trainer's
lambda = 1 train step (`step_time.compile_step`: `trainer.jit_train_step`, the program
`gkd_t5x.train` runs, with `optax.identity()` for the optimizer, so no optimizer state) on the
models of `step_time.py` for each chunk length (0 = whole) from
abstract params, so nothing is allocated and it runs on any machine, and prints one JSON line
per configuration with XLA's static memory estimate of each compiled step (bytes: argument,
output, temp, alias, peak = argument + output + temp - alias) and each chunked step's temp
saving against the whole one.
The figures are the compiler's, for the backend it runs on; an accelerator's may differ.

`--teacher_top_ks` compiles each chunk length once per k (0: the exact divergence; k:
`GKDConfig.teacher_top_k`, the k + 1 buckets of `divergences.top_k_buckets`), and
`--time_steps N` also runs each compiled step N times (after 2 untimed ones) on random params
and reports the median seconds. Each line's `variants` lists, per (chunk length, k), the
memory, the temp saved against the first variant and the step's median seconds (null
unless timed).
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys
from typing import Dict, List, Sequence

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time  # noqa: E402  (the benchmark's configurations and step, beside this script)

from gkd_t5x import costs  # noqa: E402

WARMUP = 2
# No optimizer state, so that the figures are the step's own.
NO_OPTIMIZER = optax.identity()


def counts_flag(value: str) -> List[int]:
  """Comma-separated ints >= 0 (chunk lengths or top-k; 0: whole / exact)."""
  counts = [int(item) for item in value.split(',') if item.strip()]
  if not counts or any(count < 0 for count in counts):
    raise argparse.ArgumentTypeError(f'expected ints >= 0 (0 = whole / exact), got {value!r}')
  return counts


def median_step_seconds(
    bench: step_time.Bench, step: step_time.CompiledStep, name: str, steps: int
) -> float:
  """The median seconds of `steps` runs of a compiled lambda = 1 step on random params."""
  variables = jax.jit(step_time.variables_fn(step.model, bench))()
  keys = jax.random.split(jax.random.PRNGKey(0), steps + WARMUP)
  seconds, _ = step_time.time_step(
      step, variables, step_time.make_batch(bench), keys, steps, WARMUP, name
  )
  return float(np.median(seconds))


def step_variants(
    bench: step_time.Bench,
    name: str,
    chunk_lengths: Sequence[int],
    top_ks: Sequence[int],
    time_steps: int,
) -> List[Dict]:
  """Per (chunk length, k): the lambda = 1 step's memory estimate, the temp it saves against the
  first variant and (time_steps > 0) its median step seconds."""
  variants = []
  for length, k in itertools.product(chunk_lengths, top_ks):
    variant = dataclasses.replace(
        bench, divergence_chunk_length=length or None, teacher_top_k=k or None
    )
    step = step_time.compile_step(variant, 1.0, name, optimizer=NO_OPTIMIZER)
    variants.append(
        dict(
            divergence_chunk_length=length or None,
            teacher_top_k=k or None,
            memory_bytes=costs.memory_bytes(step.compiled),
            step_seconds=median_step_seconds(variant, step, name, time_steps)
            if time_steps
            else None,
        )
    )
  first = variants[0]['memory_bytes']['temp']
  for variant in variants:
    variant['temp_saved_bytes'] = first - variant['memory_bytes']['temp']
  return variants


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--config',
      action='append',
      choices=sorted(step_time.BENCHES),
      help='repeatable (default: the GSM8K pairs)',
  )
  parser.add_argument('--batch_size', type=int, default=4, help='the compiled batch size')
  parser.add_argument('--chunk_lengths', type=counts_flag, default=[0, 64, 32])
  parser.add_argument('--teacher_top_ks', type=counts_flag, default=[0], help='0 = exact')
  parser.add_argument('--time_steps', type=int, default=0, help='timed steps (0: compile only)')
  parser.add_argument('--dtype', choices=step_time.DTYPES, help="default: the config's")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error('--batch_size must be >= 1.')
  for name in args.config or ['t5_small_xl_gsm8k', 't5_base_xl_gsm8k']:
    bench = dataclasses.replace(step_time.BENCHES[name], batch_size=args.batch_size)
    if args.dtype:
      bench = dataclasses.replace(bench, dtype=args.dtype)
    variants = step_variants(bench, name, args.chunk_lengths, args.teacher_top_ks, args.time_steps)
    line = {'config': name, 'variants': variants, **step_time.what_ran(bench)}
    print(json.dumps(line), flush=True)


if __name__ == '__main__':
  main()
