"""Memory of a GKD step with the divergence computed whole or in sequence chunks.

  python benchmarks/divergence_memory.py [--config t5_small_xl_gsm8k ...] [--batch_size 4]
                                         [--chunk_lengths 0,64,32] [--dtype bfloat16]

At GSM8K's 320-token targets and T5's 32k vocabulary, the teacher's and the student's logits
[B, L, V] and the divergence's float32 intermediates (log-softmaxes, JSD's mixture, their
residuals for the backward pass) are a step's largest buffers; `GKDConfig.divergence_chunk_length`
computes the divergence term over chunks of that many positions under `lax.scan` with
rematerialization (`divergences.chunked_sequence_sum`). This script compiles the trainer's
lambda = 1 train step (`trainer.jit_train_step`, the program `gkd_t5x.train` runs, without
optimizer state) on the models of `step_time.py` for each chunk length (0 = whole) from
abstract params, so nothing is allocated and it runs on any machine, and prints one JSON line
per configuration with XLA's static memory estimate of each compiled step (bytes: argument,
output, temp, alias, peak = argument + output + temp - alias) and each chunked step's temp
saving against the whole one.
The figures are the compiler's, for the backend it runs on; an accelerator's may differ.
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import optax  # noqa: E402
import step_time  # noqa: E402  (the benchmark's configurations and step, beside this script)

from gkd_t5x import costs  # noqa: E402
from gkd_t5x import partitioning  # noqa: E402
from gkd_t5x import trainer  # noqa: E402


def chunk_lengths_flag(value: str) -> List[int]:
  lengths = [int(item) for item in value.split(',') if item.strip()]
  if not lengths or any(length < 0 for length in lengths):
    raise argparse.ArgumentTypeError(f'expected chunk lengths >= 0 (0 = whole), got {value!r}')
  return lengths


def compile_train_step(bench: step_time.Bench, name: str):
  """The trainer's step (`trainer.jit_train_step`) of the bench's lambda = 1 model, compiled on
  one device from abstract arguments; no optimizer state (`optax.identity`), so that the
  figures are the step's own."""
  model = step_time.make_model(bench, 1.0)
  batch = jax.eval_shape(functools.partial(step_time.make_batch, bench))
  shapes = {feature: value.shape for feature, value in batch.items()}
  mesh = partitioning.make_mesh(1, jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  layout = trainer.make_layout(model, optax.identity(), mesh, rules, shapes)
  step_time.log(
      f'[{name}] compiling the lambda=1 train step, chunks {bench.divergence_chunk_length}'
  )
  with partitioning.activate(mesh, rules):
    step = trainer.jit_train_step(model, optax.identity(), layout)
    return step.lower(*trainer.abstract_step_args(layout)).compile()


def step_memory(bench: step_time.Bench, name: str, chunk_lengths: Sequence[int]) -> Dict:
  """{chunk length: the lambda = 1 step's memory estimate} and the temp saved by each chunking."""
  memory = {}
  for length in chunk_lengths:
    chunked = dataclasses.replace(bench, divergence_chunk_length=length or None)
    memory[length] = costs.memory_bytes(compile_train_step(chunked, name))
  whole = memory.get(0)
  saved = {
      length: whole['temp'] - figures['temp']
      for length, figures in memory.items()
      if whole and length
  }
  return {'memory_bytes': memory, 'temp_saved_bytes': saved}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--config',
      action='append',
      choices=sorted(step_time.BENCHES),
      help='repeatable (default: the GSM8K pairs)',
  )
  parser.add_argument('--batch_size', type=int, default=4, help='the compiled batch size')
  parser.add_argument('--chunk_lengths', type=chunk_lengths_flag, default=[0, 64, 32])
  parser.add_argument('--dtype', choices=step_time.DTYPES, help="default: the config's")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error('--batch_size must be >= 1.')
  for name in args.config or ['t5_small_xl_gsm8k', 't5_base_xl_gsm8k']:
    bench = dataclasses.replace(step_time.BENCHES[name], batch_size=args.batch_size)
    if args.dtype:
      bench = dataclasses.replace(bench, dtype=args.dtype)
    figures = step_memory(bench, name, args.chunk_lengths)
    line = {'config': name, **figures, **step_time.what_ran(bench)}
    print(json.dumps(line), flush=True)


if __name__ == '__main__':
  main()
