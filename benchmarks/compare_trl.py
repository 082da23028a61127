"""Our GKD step against TRL's, side by side, on the standard benchmark configurations
(shared/benchmarks.md).

  pip install -e ".[bench]"
  python benchmarks/compare_trl.py [--config bench_a|bench_b|tiny|all] [--steps N]
                                   [--warmup N] [--threads N]

`--config all` (the default) runs bench_a and bench_b. For each configuration one process times:

  ours   `step_time.compile_step`: the trainer's step (`trainer.jit_train_step`) of a
         `models.GKDModel` (JSD(0.5), float32): loss, gradients and an AdamW update at
         torch's defaults (`step_time.OPTIMIZER`); before 2026-12-08 it timed loss and
         gradients alone;
  TRL    a step as TRL's `GKDTrainer.training_step` takes one (trl.experimental.gkd):
         `student.generate(do_sample=True, temperature=1, top_k=0, top_p=1, use_cache=True)`
         under no_grad (`generate_on_policy_outputs`: labels masked after the first EOS), the
         teacher's forward pass under no_grad, the student's with gradients,
         `GKDTrainer.generalized_jsd_loss(beta=0.5, temperature=1)` imported from trl,
         `loss.backward()`, then `torch.optim.AdamW.step()` and `zero_grad()` as the HF Trainer's
         loop does after it. GKDTrainer itself only drives decoder-only models (it feeds the
         prompt and completion as one row); here the student and teacher are
         `transformers.T5ForConditionalGeneration`s of the same sizes as ours (T5 1.1 layout:
         gated GELU, no biases, untied output layer, dropout 0), so the prompt goes to the encoder
         and the completion, shifted right from start token 0, to the decoder.

Rounds alternate ours / TRL (the order flips every round) so that the load of a shared machine
hits both alike; the first `--warmup` rounds are not timed. Each configuration prints one JSON
line with:

  ours_lambda1_s, trl_lambda1_s     median seconds of an on-policy step (lambda = 1: sample
                                    y ~ p_S, teacher and student passes, gradients)
  ratio_lambda1                     ours_lambda1_s / trl_lambda1_s (below 1: ours is faster)
  ours_lambda0_s, trl_lambda0_s     the same for a supervised step (lambda = 0: the batch's
  ratio_lambda0                     fixed targets, no sampling)
  ours_sample_ms_per_token          sampling alone (`step_time.make_sampler`; TRL: `generate`
  trl_generate_ms_per_token         alone), median milliseconds per decoding step of the batch
  ratio_sample_per_token            ours / TRL
  ours_sample_length,               mean length of the on-policy samples of the timed lambda = 1
  trl_sample_length                 steps, up to and including the first EOS (both samplers stop
                                    a row at EOS 1 and the loop when every row has stopped)
  ours_decode_steps,                mean number of decoding steps of the timed sampling-alone
  trl_decode_steps                  runs (the target length L unless every row stopped early):
                                    the two timed the same number of tokens when these agree
  threads                           threads each library may use (--threads; default all CPUs)
  load_average                      the machine's 1-minute load average before and after the
                                    rounds: other processes on the cores stall PyTorch's OpenMP
                                    threads, which wait for each other at every op, much more
                                    than they slow XLA's few fused ops (on a busy machine, compare
                                    --threads 1)
  versions, torch_device            jax, torch, transformers and trl; torch's device
  shapes, student, teacher, ...     what ran and where, as `step_time.py` reports it
                                    (`step_time.what_ran`: sizes, dtype, divergence, jax's
                                    backend, device and version)

A randomly initialised student rarely emits EOS, so both sample all L tokens; the HF net's
initialisation makes its next-token distributions nearly one-hot (often a repeated token), ours
flatter; neither changes the cost of a decoding step. Progress goes to stderr. Seeds are fixed;
times are medians. This is a measurement, not a test: nothing here asserts a time.

Shape letters: B batch, I input length, L target length, N generated length, V vocabulary.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
from typing import Callable, Dict, List, Tuple

import jax
import numpy as np
import torch
import transformers
import trl
from trl.experimental.gkd import GKDTrainer

# step_time.py lies beside this script, which is run as a file rather than installed.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time  # noqa: E402

# The encoder-decoder configurations: TRL's side here is HF's T5.
CONFIGS = ('tiny', 'bench_a', 'bench_b')
START_ID = 0  # T5's decoder start token, which is also its padding token.
IGNORE = -100  # TRL's label for positions that do not count in the loss.


def hf_config(size: step_time.Size, vocab_size: int) -> transformers.T5Config:
  """The HF T5 1.1 config of one of our net sizes."""
  return transformers.T5Config(
      vocab_size=vocab_size,
      d_model=size.emb_dim,
      d_kv=size.emb_dim // size.num_heads,
      d_ff=size.mlp_dim,
      num_layers=size.num_layers,
      num_decoder_layers=size.num_layers,
      num_heads=size.num_heads,
      feed_forward_proj='gated-gelu',
      tie_word_embeddings=False,
      dropout_rate=0.0,
      decoder_start_token_id=START_ID,
      pad_token_id=START_ID,
      eos_token_id=step_time.EOS_ID,
  )


@dataclasses.dataclass
class TrlGKD:
  """What TRL's GKDTrainer holds for a step: student, teacher, the student's optimizer."""

  student: transformers.T5ForConditionalGeneration
  teacher: transformers.T5ForConditionalGeneration
  optimizer: torch.optim.Optimizer
  beta: float
  max_new_tokens: int


def make_trl_gkd(bench: step_time.Bench) -> TrlGKD:
  """Random-init float32 HF student and teacher of `bench`'s sizes (seeded), and AdamW (the HF
  Trainer's optimizer; its learning rate does not change the update's cost)."""
  torch.manual_seed(0)
  student = transformers.T5ForConditionalGeneration(hf_config(bench.student, bench.vocab_size))
  teacher = transformers.T5ForConditionalGeneration(hf_config(bench.teacher, bench.vocab_size))
  teacher.eval()
  student.train()
  return TrlGKD(
      student, teacher, torch.optim.AdamW(student.parameters()), bench.beta, bench.target_length
  )


def generate(gkd: TrlGKD, inputs_BxI: torch.Tensor) -> torch.Tensor:
  """The student's samples, with GKDTrainer's generation settings.

  Returns:
    [B, 1 + N] token ids: start token, then N <= L sampled tokens (HF stops when every row has
    emitted EOS and pads finished rows with 0).
  """
  with torch.no_grad():
    return gkd.student.generate(
        input_ids=inputs_BxI,
        attention_mask=torch.ones_like(inputs_BxI),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=gkd.max_new_tokens,
        use_cache=True,
        pad_token_id=START_ID,
        eos_token_id=step_time.EOS_ID,
    )


def on_policy_batch(sequences_BxN1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
  """Decoder inputs and labels of generated sequences, masked as GKDTrainer's
  `generate_on_policy_outputs` masks them: every position after a row's first EOS is IGNORE.

  Returns:
    decoder inputs [B, N] (the sequences without their last token) and labels [B, N].
  """
  completion = sequences_BxN1[:, 1:]
  is_eos = completion == step_time.EOS_ID
  first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), completion.shape[1])
  positions = torch.arange(completion.shape[1]).expand_as(completion)
  labels = completion.masked_fill(positions > first_eos[:, None], IGNORE)
  return sequences_BxN1[:, :-1], labels


def distill_step(
    gkd: TrlGKD,
    inputs_BxI: torch.Tensor,
    decoder_inputs_BxN: torch.Tensor,
    labels_BxN: torch.Tensor,
) -> float:
  """GKDTrainer's `compute_loss` and the HF Trainer's backward and update on one batch.

  No decoder attention mask: with causal attention, tokens after a row's EOS only reach
  positions after it, which the labels leave out of the loss.

  Returns:
    the loss (JSD(beta) per label token).
  """
  mask = torch.ones_like(inputs_BxI)
  student_logits = gkd.student(
      input_ids=inputs_BxI, attention_mask=mask, decoder_input_ids=decoder_inputs_BxN
  ).logits
  with torch.no_grad():
    teacher_logits = gkd.teacher(
        input_ids=inputs_BxI, attention_mask=mask, decoder_input_ids=decoder_inputs_BxN
    ).logits
  loss = GKDTrainer.generalized_jsd_loss(
      student_logits, teacher_logits, labels=labels_BxN, beta=gkd.beta, temperature=1.0
  )
  loss.backward()
  gkd.optimizer.step()
  gkd.optimizer.zero_grad()
  return loss.item()


def lambda1_step(gkd: TrlGKD, inputs_BxI: torch.Tensor) -> Tuple[float, float]:
  """An on-policy step: sample, then `distill_step` on the samples.

  Returns:
    the loss and the samples' mean length (up to and including the first EOS).
  """
  decoder_inputs, labels = on_policy_batch(generate(gkd, inputs_BxI))
  loss = distill_step(gkd, inputs_BxI, decoder_inputs, labels)
  return loss, (labels != IGNORE).float().sum(dim=1).mean().item()


def interleave(
    runs: Dict[str, Callable[[int], object]], steps: int, warmup: int
) -> Dict[str, List[float]]:
  """Runs each function once per round, for `warmup` untimed then `steps` timed rounds, in an
  order reversed every round; returns each one's seconds in the timed rounds."""
  seconds = {name: [] for name in runs}
  for round_ in range(warmup + steps):
    for name in list(runs)[:: 1 if round_ % 2 == 0 else -1]:
      run = lambda _, name=name, round_=round_: runs[name](round_)
      [elapsed] = step_time.time_runs(run, steps=1, warmup=0)
      if round_ >= warmup:
        seconds[name].append(elapsed)
  return seconds


def recording(fn: Callable[[int], object], results: List[object]) -> Callable[[int], object]:
  """fn, keeping each result in `results`: sample statistics are read off them after timing,
  and the timer blocks on the returned (not yet computed) arrays."""

  def run(round_):
    results.append(fn(round_))
    return results[-1]

  return run


def our_step(
    bench: step_time.Bench,
    lmbda: float,
    batch: Dict[str, jax.Array],
    variables: Dict[str, object],
    keys: jax.Array,
    name: str,
) -> Callable[[int], object]:
  """Our train step with this lambda (`step_time.compile_step`: the trainer's step, AdamW
  included) as a function of the round, whose key it takes; each round steps from the last."""
  return step_time.step_runner(step_time.compile_step(bench, lmbda, name), variables, batch, keys)


def per_token_ms(seconds: List[float], decode_steps: List[int]) -> float:
  """Median milliseconds per decoding step of the batch, over runs of their own lengths."""
  return 1e3 * statistics.median(s / n for s, n in zip(seconds, decode_steps))


def make_runs(
    name: str, bench: step_time.Bench, keys: jax.Array
) -> Tuple[Dict[str, Callable[[int], object]], Dict[str, List[object]]]:
  """Both sides' steps and samplers on `step_time.make_batch`'s batch, as functions of the round.

  Returns:
    the functions by name, and the lists that keep the results of those with sample statistics.
  """
  batch = step_time.make_batch(bench)
  model = step_time.make_model(bench, 1.0)
  variables = jax.jit(step_time.variables_fn(model, bench))()
  ours_lambda1 = our_step(bench, 1.0, batch, variables, keys, name)
  ours_lambda0 = our_step(bench, 0.0, batch, variables, keys, name)
  sample = step_time.make_sampler(bench, model, variables['params'], batch['encoder_input_tokens'])
  step_time.log(f'[{name}] compiling the sampler')
  jax.block_until_ready(sample(keys[0]))  # outside the rounds, as `time_step` compiles the steps
  gkd = make_trl_gkd(bench)
  inputs, decoder_inputs, targets = (
      torch.tensor(np.asarray(batch[feature]), dtype=torch.long)
      for feature in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
  )
  results = {run: [] for run in ('ours_lambda1', 'trl_lambda1', 'ours_sample', 'trl_generate')}
  runs = {
      'ours_lambda1': recording(ours_lambda1, results['ours_lambda1']),
      'trl_lambda1': recording(lambda _: lambda1_step(gkd, inputs), results['trl_lambda1']),
      'ours_lambda0': ours_lambda0,
      'trl_lambda0': lambda _: distill_step(gkd, inputs, decoder_inputs, targets),
      'ours_sample': recording(lambda round_: sample(keys[round_]), results['ours_sample']),
      'trl_generate': recording(lambda _: generate(gkd, inputs), results['trl_generate']),
  }
  return runs, results


def run_config(name: str, steps: int, warmup: int) -> Dict[str, object]:
  """Measures one configuration, ours and TRL's interleaved; returns the fields of its line."""
  bench = step_time.BENCHES[name]
  keys = jax.random.split(jax.random.PRNGKey(1), warmup + steps)
  runs, results = make_runs(name, bench, keys)
  step_time.log(f'[{name}] {warmup} warm-up and {steps} timed rounds of {", ".join(runs)}')
  load_before = os.getloadavg()[0]
  times = interleave(runs, steps, warmup)
  median = {run: statistics.median(seconds) for run, seconds in times.items()}
  timed = {run: values[warmup:] for run, values in results.items()}
  ours_decode_steps = [
      int(np.max(np.sum(sequences.weights, axis=1))) for sequences in timed['ours_sample']
  ]
  trl_decode_steps = [sequences.shape[1] - 1 for sequences in timed['trl_generate']]
  ours_ms = per_token_ms(times['ours_sample'], ours_decode_steps)
  trl_ms = per_token_ms(times['trl_generate'], trl_decode_steps)
  return {
      'config': name,
      'ours_lambda1_s': median['ours_lambda1'],
      'trl_lambda1_s': median['trl_lambda1'],
      'ratio_lambda1': median['ours_lambda1'] / median['trl_lambda1'],
      'ours_lambda0_s': median['ours_lambda0'],
      'trl_lambda0_s': median['trl_lambda0'],
      'ratio_lambda0': median['ours_lambda0'] / median['trl_lambda0'],
      'ours_sample_ms_per_token': ours_ms,
      'trl_generate_ms_per_token': trl_ms,
      'ratio_sample_per_token': ours_ms / trl_ms,
      # A step's metrics hold its mean sample length; TRL's step returns it.
      'ours_sample_length': statistics.mean(
          float(metrics['sample_length'].compute()) for metrics in timed['ours_lambda1']
      ),
      'trl_sample_length': statistics.mean(length for _, length in timed['trl_lambda1']),
      'ours_decode_steps': statistics.mean(ours_decode_steps),
      'trl_decode_steps': statistics.mean(trl_decode_steps),
      'threads': torch.get_num_threads(),
      'load_average': [load_before, os.getloadavg()[0]],
      'versions': {
          'jax': jax.__version__,
          'torch': torch.__version__,
          'transformers': transformers.__version__,
          'trl': trl.__version__,
      },
      'torch_device': str(timed['trl_generate'][0].device),
      # Shapes, sizes, dtype, divergence; jax's backend, device and version.
      **step_time.what_ran(bench),
      'steps': steps,
      'warmup': warmup,
  }


def use_threads(threads: int) -> None:
  """Lets JAX and torch each use `threads` CPUs. XLA sizes its CPU thread pool by the CPUs the
  process may run on, read when JAX starts its backend, so this runs before any JAX array."""
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
  torch.set_num_threads(len(os.sched_getaffinity(0)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--config', choices=list(CONFIGS) + ['all'], default='all', help='all: bench_a and bench_b'
  )
  parser.add_argument('--steps', type=int, default=10, help='timed rounds per configuration')
  parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
  parser.add_argument(
      '--threads',
      type=int,
      default=os.cpu_count(),
      help='CPUs for JAX and threads for torch (default: all)',
  )
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0 or args.threads < 1:
    parser.error('--steps and --threads must be >= 1 and --warmup >= 0.')
  use_threads(args.threads)
  names = ['bench_a', 'bench_b'] if args.config == 'all' else [args.config]
  for name in names:
    print(json.dumps(run_config(name, args.steps, args.warmup)), flush=True)


if __name__ == '__main__':
  main()
