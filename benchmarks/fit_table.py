"""The paper's experiments on real TPU slices: the smallest slice of each generation that fits.

  python benchmarks/fit_table.py [--generations v4,v5e,...] [--rows xsum_small,...]
                                 [--out benchmarks/fit_table.jsonl]

For every paper distillation run (gin/experiments/{xsum,wmt,gsm8k,flan}/gkd.gin with a small,
base or large student and the XL teacher, and xsum/rlef.gin: RL + GKD with the XXL entailment
classifier), at the paper's batch and lengths, it compiles the run's train step
(`gkd_t5x.fit.check`, libtpu, nothing allocated) on each generation's slices, smallest first
(`topologies.CHIPS`, up to 64 chips) at the largest NUM_PARTITIONS that divides the model, and
stops at the first slice where it fits. There it compiles the train step at twice the batch,
doubling while it fits, up to MAX_BATCH_FACTOR times the paper's (`fit.largest_batch`), and
writes one JSON line per (run, generation): slice, NUM_PARTITIONS, per-device memory, largest batch,
FLOPs per step and the roofline ceiling. Lines already in --out are kept and not recompiled, so
an interrupted run resumes; `--markdown` prints the table of the file.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

from gkd_t5x import topologies

topologies.prepare_host()

from gkd_t5x import fit  # noqa: E402  (after prepare_host: jax on the CPU, libtpu quiet)

STUDENTS = ('small', 'base', 'large')
# The largest batch is searched up to this multiple of the paper's (each doubling compiles).
MAX_BATCH_FACTOR = 4
ROWS = {
    **{
        f'{task}_{student}': (
            [f'gin/experiments/{task}/gkd.gin'],
            [f'STUDENT_CONFIG=%T5_1_1_{student.upper()}'],
        )
        for task in ('xsum', 'wmt', 'gsm8k')
        for student in STUDENTS
    },
    'flan_base': (['gin/experiments/flan/gkd.gin'], []),
    'xsum_rlef_base': (['gin/experiments/xsum/rlef.gin'], ['STUDENT_CONFIG=%T5_1_1_BASE']),
}


def log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def smallest_fit(spec: fit.RunSpec, generation: str) -> Dict[str, Any]:
  """The first slice of `generation` whose train step fits, at the largest NUM_PARTITIONS that
  divides the model (the least memory per device; a slice where that does not fit is taken
  not to fit at any); {'found': {topology, devices, num_partitions, report} or None, 'tried':
  {topology: [NUM_PARTITIONS, total bytes per device, fits] or the reason}}."""
  chip, tried = topologies.CHIPS[generation], {}
  for topology in topologies.slices_of(generation):
    devices = topologies.devices(topology)
    for parts in reversed(fit.partition_choices(len(devices))):
      try:
        report = fit.check(
            spec, devices, chip, batch_size=spec.batch_size, num_partitions=parts, with_eval=False
        )
      except ValueError as e:  # the batch or a model dimension does not split
        tried[topology] = str(e).split(':')[0]
        continue
      peak = report['memory_bytes']['train']['peak']
      tried[topology] = [parts, peak, report['fits']]
      log(f"  {topology} NUM_PARTITIONS={parts}: {peak / 2**30:.1f} GiB, fits {report['fits']}")
      if report['fits']:
        found = {'topology': topology, 'devices': devices, 'num_partitions': parts}
        return {'found': dict(found, report=report), 'tried': tried}
      break
  return {'found': None, 'tried': tried}


def row(name: str, generation: str) -> Dict[str, Any]:
  """One (run, generation) line."""
  files, bindings = ROWS[name]
  spec = fit.load_run(files, bindings)
  start = time.perf_counter()
  search = smallest_fit(spec, generation)
  line = {'run': name, 'generation': generation, 'gin_files': files, 'gin_bindings': bindings}
  line['tried'] = search['tried']
  found = search['found']
  if found is None:
    return dict(line, topology=None, seconds=time.perf_counter() - start)
  chip, devices, parts = topologies.CHIPS[generation], found['devices'], found['num_partitions']
  report = found['report']
  largest = fit.search_batch(
      spec,
      devices,
      chip,
      num_partitions=parts,
      known_fit=spec.batch_size,
      limit=MAX_BATCH_FACTOR * spec.batch_size,
  )
  return dict(
      line,
      topology=found['topology'],
      num_partitions=parts,
      batch_size=spec.batch_size,
      largest_batch=largest['best'],
      largest_batch_tried=largest['tried'],
      memory_bytes=report['memory_bytes'],
      hbm_bytes_per_device=report['hbm_bytes_per_device'],
      teacher_bytes=report['teacher_bytes'],
      flops=report['flops'],
      roofline=report['roofline'],
      seconds=time.perf_counter() - start,
  )


def markdown(lines: List[Dict[str, Any]]) -> str:
  """The table of the JSON lines: one row per run, one column group per generation."""
  header = (
      '| run | generation | smallest slice (NUM_PARTITIONS) | train step per device (GiB) |'
      ' largest batch | TFLOP / step | roofline ms / step | target tokens / s |'
  )
  rows = [header, '|' + ' --- |' * 8]
  for line in lines:
    if line['topology'] is None:
      rows.append(f"| {line['run']} | {line['generation']} | none up to 64 chips | | | | | |")
      continue
    roofline = line['roofline']
    rows.append(
        f"| {line['run']} | {line['generation']} | {line['topology']} ({line['num_partitions']})"
        f" | {line['memory_bytes']['train']['peak'] / 2**30:.1f}"
        f" of {line['hbm_bytes_per_device'] / 2**30:.0f} | {line['largest_batch']}"
        f" | {line['flops']['analytic']['step_lambda1'] / 1e12:.0f}"
        f" | {roofline['step_s'] * 1e3:.0f} ({roofline['bound_by']})"
        f" | {roofline['target_tokens_per_s']:,.0f} |"
    )
  return '\n'.join(rows)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--generations', default=','.join(topologies.CHIPS))
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--out', default='benchmarks/fit_table.jsonl')
  parser.add_argument('--markdown', action='store_true', help='print the table of --out')
  args = parser.parse_args(argv)
  done = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      done = [json.loads(line) for line in f if line.strip()]
  if args.markdown:
    print(markdown(done))
    return
  finished = {(line['run'], line['generation']) for line in done}
  for generation in args.generations.split(','):
    for name in args.rows.split(','):
      if (name, generation) in finished:
        continue
      log(f'{name} on {generation}')
      line = row(name, generation)
      with open(args.out, 'a') as f:
        f.write(json.dumps(line) + '\n')


if __name__ == '__main__':
  main()
