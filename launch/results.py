"""A run's results read back, aggregated over seeds, and written as CSV rows and tables.

`read_metric` is the one reader of a metric: by its short name ('accuracy') or its full one
('inference/<task>/accuracy', 'test/loss'), from the first of metrics.json (gkd_t5x.eval),
eval_metrics.jsonl (the standalone trainer's evaluations; both written by
`gkd_t5x.run_setup.write_results`), inference_eval/<task>-metrics.jsonl
(T5X's train and eval) and the eval/ TensorBoard event files. `collect` reads what a spec's
plots show for every run and aggregates it over seeds (`Stat`); `write_csv` writes it, one row
per (point, evaluation, metric); `tables` makes markdown of those CSVs with `effect_size`.
Directories may be gs:// URLs (read through TensorFlow's file system).
"""

import csv
import glob
import json
import math
import os
import posixpath
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launch.plan import Run
from launch.spec import Spec

# (point, evaluation, metric): evaluation None is the trainer's final evaluation.
Key = Tuple[str, Optional[str], str]


def is_url(path: str) -> bool:
  return '://' in path


def eval_finished(output_dir: str) -> bool:
  """Whether an evaluation wrote its metrics (gkd_t5x.eval's metrics.json, or T5X's)."""
  return _exists(posixpath.join(output_dir, 'metrics.json')) or bool(
      _glob(posixpath.join(output_dir, 'inference_eval', '*-metrics.jsonl'))
  )


def read_metric(directory: str, metric: str) -> Optional[float]:
  """The final value of `metric` written in `directory` (the module docstring says where it
  looks), or None where nothing has it; a short name prefers the inference metric over a loss
  metric of that name.

  Raises:
    ValueError: the short name matches several metrics (two tasks, say).
  """
  path = posixpath.join(directory, 'metrics.json')
  if _exists(path):
    value = _match(json.loads(_read(path))['metrics'], metric, path)
    if value is not None:
      return value
  path = posixpath.join(directory, 'eval_metrics.jsonl')
  if _exists(path):
    records = _json_lines(path)
    if records:
      value = _match(max(records, key=lambda r: r['step'])['metrics'], metric, path)
      if value is not None:
        return value
  found = []
  for path in sorted(_glob(posixpath.join(directory, 'inference_eval', '*-metrics.jsonl'))):
    records = [r for r in _json_lines(path) if _match(r, metric, path) is not None]
    if records:
      found.append((path, _match(max(records, key=lambda r: r['step']), metric, path)))
  if len(found) > 1:
    raise ValueError(
        f'{directory}: metric {metric!r} is in several tasks: {[path for path, _ in found]}'
    )
  if found:
    return found[0][1]
  event_dir = posixpath.join(directory, 'eval')
  if _glob(posixpath.join(event_dir, 'events.out.tfevents.*')):
    from gkd_t5x import event_files  # imports TensorFlow

    scalars = event_files.read_scalars(event_dir)
    return _match({tag: values[-1][1] for tag, values in scalars.items()}, metric, event_dir)
  return None


def run_metric(run: Run, metric: str, evaluation: Optional[str] = None) -> Optional[float]:
  """A run's final `metric`: of its evaluation `evaluation` (the mean over the samples of a
  sampled one), or with None of its trainer's final evaluation. None if any part is missing."""
  directories = run.eval_dirs[evaluation] if evaluation is not None else [run.model_dir]
  values = [read_metric(directory, metric) for directory in directories]
  if not values or any(value is None for value in values):
    return None
  return sum(values) / len(values)


def self_bleu_of(directories: Sequence[str]) -> Optional[float]:
  """Self-BLEU (x100) of the samples in `directories` (one predictions.jsonl each, the same
  inputs in the same order); None if one is missing."""
  from gkd_t5x import metrics  # written alongside

  samples = []
  for directory in directories:
    path = os.path.join(directory, 'predictions.jsonl')
    if not os.path.exists(path):
      return None
    with open(path) as f:
      samples.append([json.loads(line) for line in f if line.strip()])
  inputs = [record['input'] for record in samples[0]]
  for directory, records in zip(directories, samples):
    if [record['input'] for record in records] != inputs:
      raise ValueError(
          f'{directory}/predictions.jsonl has other inputs than '
          f'{directories[0]}/predictions.jsonl; the samples cannot be aligned.'
      )
  return float(
      metrics.self_bleu(
          [[records[i]['prediction'] for records in samples] for i in range(len(inputs))]
      )
  )


def _match(metrics: Mapping[str, float], metric: str, where: str) -> Optional[float]:
  if metric in metrics:
    return float(metrics[metric])
  matches = sorted(key for key in metrics if key.endswith('/' + metric))
  inference = [key for key in matches if key.startswith('inference/')]
  matches = inference or matches
  if len(matches) > 1:
    raise ValueError(f'{where}: metric {metric!r} is ambiguous: {matches}; give the full name')
  return float(metrics[matches[0]]) if matches else None


def _json_lines(path: str) -> List[dict]:
  return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


def _exists(path: str) -> bool:
  if is_url(path):
    import tensorflow as tf

    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _glob(pattern: str) -> List[str]:
  if is_url(pattern):
    import tensorflow as tf

    return tf.io.gfile.glob(pattern)
  return glob.glob(pattern)


def _read(path: str) -> str:
  if is_url(path):
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path) as f:
    return f.read()


# ------------------------------------------------------------------------------- over seeds


class Stat:
  """One point's values over seeds: mean, sample standard deviation (0 for one seed), count."""

  def __init__(self, values: Mapping[Optional[int], float]):
    self.values = dict(values)
    numbers = list(self.values.values())
    self.n = len(numbers)
    self.mean = sum(numbers) / self.n if numbers else math.nan
    self.std = (
        math.sqrt(sum((x - self.mean) ** 2 for x in numbers) / (self.n - 1))
        if self.n > 1
        else 0.0
        if numbers
        else math.nan
    )

  @property
  def ok(self) -> bool:
    return self.n > 0


def collect(spec: Spec, runs: Sequence[Run]) -> Tuple[Dict[Key, Stat], List[str]]:
  """Every (point, evaluation, metric) the plots use, over all evaluations (and the Self-BLEU
  of the sampled ones for a quality-diversity plot); the results missing."""
  labels = [e.label for e in spec.evaluations] or [None]
  sampled = {e.label for e in spec.evaluations if e.num_samples >= 2}
  metric_names = list(dict.fromkeys(m for plot in spec.plots for m in plot.metrics))
  if any(plot.kind == 'quality_diversity' for plot in spec.plots):
    metric_names.append('self_bleu')
  values: Dict[Key, Dict[Optional[int], float]] = {}
  missing = []
  for run in runs:
    for label in labels:
      for metric in metric_names:
        if metric == 'self_bleu':
          if label not in sampled:
            continue
          value = self_bleu_of(run.eval_dirs[label])
        else:
          value = run_metric(run, metric, label)
        values.setdefault((run.point, label, metric), {})
        if value is not None and math.isnan(value):
          continue  # undefined for this run (a rate over nothing), so not part of the mean
        if value is None:
          where = run.eval_dirs[label] if label is not None else [run.model_dir]
          missing.append(
              f'{run.name}: {metric}' + (f' ({label})' if label else '') + f' in {", ".join(where)}'
          )
        else:
          values[(run.point, label, metric)][run.seed] = value
  return {key: Stat(v) for key, v in values.items()}, missing


def write_csv(
    path: str, spec: Spec, runs: Sequence[Run], stats: Mapping[Key, Stat], seeds: Sequence[int]
) -> None:
  """One row per (point, evaluation, metric): the point, its label on every axis, the
  reference, the evaluation, the metric, mean, std, n_seeds, then every seed's value."""
  axis_names = [axis.name for axis in spec.axes]
  first = {}
  for run in runs:
    first.setdefault(run.point, run)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(
        [
            'point',
            *axis_names,
            'reference',
            'evaluation',
            'metric',
            'mean',
            'std',
            'n_seeds',
            *[f'seed_{seed}' for seed in seeds],
        ]
    )
    for (point, label, metric), stat in stats.items():
      run = first[point]
      writer.writerow(
          [
              point,
              *[run.labels.get(name, '') for name in axis_names],
              run.reference or '',
              label or '',
              metric,
              _number(stat.mean),
              _number(stat.std),
              stat.n,
              *[_number(stat.values.get(seed)) for seed in seeds],
          ]
      )


def _number(value: Optional[float]) -> str:
  return '' if value is None or math.isnan(value) else repr(float(value))


def effect_size(
    mean: float, std: float, n: int, base_mean: float, base_std: float, base_n: int
) -> Optional[float]:
  """(mean - base_mean) / s_pooled, s_pooled^2 = ((n-1) std^2 + (m-1) base_std^2) / (n+m-2).

  The difference in standard deviations of a single seed (Cohen's d); None where the pooled
  deviation is 0 or undefined (fewer than 3 values in all).
  """
  if n + base_n <= 2:
    return None
  pooled = math.sqrt(((n - 1) * std**2 + (base_n - 1) * base_std**2) / (n + base_n - 2))
  return (mean - base_mean) / pooled if pooled > 0 else None


def tables(specs: Sequence[Spec], out: str) -> str:
  """Markdown tables from the CSVs in `out` (`write_csv`): every point's mean +- std, and its
  difference to the spec's baseline, also in units of their pooled standard deviation."""
  lines = []
  for spec in specs:
    path = os.path.join(out, f'{spec.name}.csv')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = list(csv.DictReader(f))
    baseline = next((plot.baseline for plot in spec.plots if plot.baseline), None)
    lines += [f'### {spec.name}', '', spec.figure or '', '']
    axes = [axis.name for axis in spec.axes]
    lines.append(
        '| '
        + ' | '.join(
            [
                'point',
                'evaluation',
                'metric',
                'mean ± std',
                'n',
                f'Δ vs {baseline or "-"}',
                'Δ / pooled std',
            ]
        )
        + ' |'
    )
    lines.append('|' + ' --- |' * 7)
    base = {(r['evaluation'], r['metric']): r for r in rows if r['reference'] == baseline}
    base_any = {r['metric']: r for r in rows if r['reference'] == baseline}
    for r in rows:
      if not r['mean']:
        continue
      label = r['reference'] and f'[{r["reference"]}]' or ', '.join(r[a] for a in axes)
      mean, std, n = float(r['mean']), float(r['std'] or 0), int(r['n_seeds'])
      delta = effect = ''
      b = base.get((r['evaluation'], r['metric'])) or base_any.get(r['metric'])
      if b is not None and b is not r and b['mean']:
        diff = mean - float(b['mean'])
        size = effect_size(mean, std, n, float(b['mean']), float(b['std'] or 0), int(b['n_seeds']))
        delta = f'{diff:+.2f}'
        effect = '' if size is None else f'{size:+.1f}'
      lines.append(
          f'| {label} | {r["evaluation"] or "final"} | {r["metric"]} | '
          f'{mean:.2f} ± {std:.2f} | {n} | {delta} | {effect} |'
      )
    lines.append('')
  return '\n'.join(lines)
