r"""Draws one figure panel from the results of its sweep (launch/sweep.py), in the paper's layout.

    python launch/figures.py SPEC.json --root DIR --out DIR [--seeds 0,1] [--strict]

Reads every run of `sweep.expand(spec, root)` (references included): for each evaluation of
the spec (or, without evaluations, the trainer's final evaluation) the plot's metric(s), by
short name (`sweep.run_metric`: metrics.json, eval_metrics.jsonl, T5X's inference_eval or the
eval/ event files), the mean over the samples of a sampled evaluation, and for an evaluation
with num_samples >= 2 the Self-BLEU of its samples (`gkd_t5x.metrics.self_bleu` over the
predictions.jsonl of each sample, aligned by line). Aggregates over seeds: mean, sample
standard deviation (ddof = 1; 0 for one seed) and the count.

Writes <out>/<name>.csv, one row per (point, evaluation, metric): point (its directory name),
one column per axis (empty for a reference), reference, evaluation, metric, mean, std,
n_seeds, then seed_<k> for each seed; and <out>/<name>.png (<out>/<name>_<plot name>.png for
each plot when "plot" is a list), by plot kind:
  heatmap            rows x columns grid of mean minus the baseline's mean (or the mean
                     without baseline), value and +- std in each cell, colorbar (Figs. 6, 7,
                     A.12-A.14).
  bars               grouped bars: x = one axis, one bar per value of "group", std error
                     bars, dashed lines for "references" (Figs. 1, 2, 9, A.10, A.11, A.15).
  lines              x = an axis with numeric labels (log scale with "log_x"), one line per
                     value of "series", std bands, dashed lines for "references" (Figs. 3, 8).
  quality_diversity  x = Self-BLEU, y = the metric, one curve per value of "series" through
                     the sampled evaluations (temperatures) (Fig. 4).
  tradeoff           x = delta of x_metric, y = delta of y_metric against the baseline, one
                     point per value of "points" (with "series": one curve per series
                     value through its points), references as extra points (Fig. 5).
Missing results are listed on stderr and left out of the figure (--strict: exit status 1
instead); an exit status of 2 is a bad spec or a root without any result.
"""

import argparse
import csv
import json
import math
import os
import sys
import textwrap
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

if __name__ == '__main__' and not __package__:
  # Run as `python launch/figures.py`: the package is in the repository root, not in launch/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from launch import sweep

# (point, evaluation, metric): evaluation None is the trainer's final evaluation.
Key = Tuple[str, Optional[str], str]


class Stat:
  """One point's values over seeds."""

  def __init__(self, values: Mapping[Optional[int], float]):
    self.values = dict(values)
    numbers = list(self.values.values())
    self.n = len(numbers)
    self.mean = sum(numbers) / self.n if numbers else math.nan
    self.std = (math.sqrt(sum((x - self.mean) ** 2 for x in numbers) / (self.n - 1))
                if self.n > 1 else 0.0 if numbers else math.nan)

  @property
  def ok(self) -> bool:
    return self.n > 0


def self_bleu_of(directories: Sequence[str]) -> Optional[float]:
  """Self-BLEU (x100) of the samples in `directories` (one predictions.jsonl each, the same
  inputs in the same order); None if one is missing."""
  from gkd_t5x import metrics  # pylint: disable=g-import-not-at-top  (written alongside)
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
      raise ValueError(f'{directory}/predictions.jsonl has other inputs than '
                       f'{directories[0]}/predictions.jsonl; the samples cannot be aligned.')
  return float(metrics.self_bleu([[records[i]['prediction'] for records in samples]
                                  for i in range(len(inputs))]))


def _plots(spec: Mapping) -> List[Tuple[Optional[str], dict]]:
  """[(file suffix, plot)]: one unnamed plot, or the named plots of a list."""
  plot = spec['plot']
  return [(p['name'], p) for p in plot] if isinstance(plot, list) else [(None, plot)]


def _metrics(plot: Mapping) -> List[str]:
  return [plot[key] for key in ('metric', 'x_metric', 'y_metric') if key in plot]


def collect(spec: Mapping, runs: Sequence[sweep.Run]) -> Tuple[Dict[Key, Stat], List[str]]:
  """Every (point, evaluation, metric) the plots use, over all evaluations; the missing."""
  evaluations = spec.get('evaluations', [])
  labels = [e['label'] for e in evaluations] or [None]
  sampled = {e['label'] for e in evaluations if e.get('num_samples', 1) >= 2}
  metric_names = list(dict.fromkeys(m for _, plot in _plots(spec) for m in _metrics(plot)))
  if any(plot['kind'] == 'quality_diversity' for _, plot in _plots(spec)):
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
          value = sweep.run_metric(run, metric, label)
        values.setdefault((run.point, label, metric), {})
        if value is not None and math.isnan(value):
          continue  # undefined for this run (a rate over nothing), so not part of the mean
        if value is None:
          where = run.eval_dirs[label] if label is not None else [run.model_dir]
          missing.append(f'{run.name}: {metric}' + (f' ({label})' if label else '') +
                         f' in {", ".join(where)}')
        else:
          values[(run.point, label, metric)][run.seed] = value
  return {key: Stat(v) for key, v in values.items()}, missing


def write_csv(path: str, spec: Mapping, runs: Sequence[sweep.Run], stats: Mapping[Key, Stat],
              seeds: Sequence[int]) -> None:
  axis_names = [axis['name'] for axis in spec['axes']]
  first = {}
  for run in runs:
    first.setdefault(run.point, run)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['point', *axis_names, 'reference', 'evaluation', 'metric', 'mean', 'std',
                     'n_seeds', *[f'seed_{seed}' for seed in seeds]])
    for (point, label, metric), stat in stats.items():
      run = first[point]
      writer.writerow([point, *[run.labels.get(name, '') for name in axis_names],
                       run.reference or '', label or '', metric,
                       _number(stat.mean), _number(stat.std), stat.n,
                       *[_number(stat.values.get(seed)) for seed in seeds]])


def _number(value: Optional[float]) -> str:
  return '' if value is None or math.isnan(value) else repr(float(value))


class Panel:
  """What a plot function reads: the spec's axes and the aggregated results."""

  def __init__(self, spec: Mapping, plot: Mapping, stats: Mapping[Key, Stat]):
    self.spec, self.plot, self.stats = spec, plot, stats
    self.axes = {axis['name']: axis for axis in spec['axes']}
    evaluations = spec.get('evaluations', [])
    self.evaluation = plot.get('evaluation', evaluations[0]['label'] if evaluations else None)

  def labels(self, axis: Optional[str]) -> List[Optional[str]]:
    if axis is None:
      return [None]
    return [value['label'] for value in self.axes[axis]['values']]

  def stat(self, metric: str, labels: Optional[Mapping[str, Optional[str]]] = None,
           evaluation: Optional[str] = None, reference: Optional[str] = None) -> Stat:
    """A point by its labels on the plot's axes (an axis it does not use has one value), or
    a reference; at the plot's evaluation unless `evaluation` is given."""
    evaluation = self.evaluation if evaluation is None else evaluation
    if reference is not None:
      point = f'ref_{reference}'
    else:
      labels = labels or {}
      chosen = {name: labels.get(name) or self.labels(name)[0] for name in self.axes}
      point = sweep.point_name(self.spec['axes'], chosen)
    return self.stats.get((point, evaluation, metric), Stat({}))

  def title(self) -> str:
    return textwrap.fill(self.plot.get('title', self.spec.get('figure', self.spec['name'])), 80)


def draw_heatmap(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot['metric']
  rows, columns = panel.labels(plot['rows']), panel.labels(plot['columns'])
  baseline = panel.stat(metric, reference=plot['baseline']) if 'baseline' in plot else None
  offset = baseline.mean if baseline is not None and baseline.ok else 0.0
  relative = baseline is not None and baseline.ok
  grid = [[panel.stat(metric, {plot['rows']: r, plot['columns']: c}) for c in columns]
          for r in rows]
  means = [[s.mean - offset if s.ok else math.nan for s in row] for row in grid]
  finite = [abs(v) for row in means for v in row if not math.isnan(v)] or [1.0]
  if relative:
    limit = max(finite) or 1.0
    image = ax.imshow(means, cmap='RdYlGn', vmin=-limit, vmax=limit, aspect='auto')
  else:
    image = ax.imshow(means, cmap='viridis', aspect='auto')
  for i, row in enumerate(grid):
    for j, stat in enumerate(row):
      text = (f'{stat.mean - offset:+.2f}' if relative else f'{stat.mean:.2f}') if stat.ok \
          else 'missing'
      if stat.ok and stat.n > 1:
        text += f'\n±{stat.std:.2f}'
      ax.text(j, i, text, ha='center', va='center', fontsize=9)
  ax.set_xticks(range(len(columns)), columns)
  ax.set_yticks(range(len(rows)), rows)
  ax.set_xlabel(plot.get('xlabel', plot['columns']))
  ax.set_ylabel(plot.get('ylabel', plot['rows']))
  name = (f'{metric} - {plot["baseline"]} ({baseline.mean:.2f})' if relative
          else metric)
  ax.figure.colorbar(image, ax=ax, label=name)


def _reference_lines(ax, panel: Panel, metric: str) -> List[float]:
  """Dashed horizontal lines at the plot's references; returns their values."""
  styles, values = ['--', ':', '-.'], []
  for i, reference in enumerate(panel.plot.get('references', [])):
    stat = panel.stat(metric, reference=reference)
    if stat.ok:
      ax.axhline(stat.mean, color=f'C{7 - i % 3}', linestyle=styles[i % 3],
                 label=f'{reference} ({stat.mean:.2f})')
      values.append(stat.mean)
  return values


def draw_bars(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot['metric']
  xs, groups = panel.labels(plot['x']), panel.labels(plot.get('group'))
  width = 0.8 / len(groups)
  shown = []
  for g, group in enumerate(groups):
    positions, means, stds = [], [], []
    for i, x in enumerate(xs):
      stat = panel.stat(metric, {plot['x']: x, plot.get('group'): group})
      if stat.ok:
        positions.append(i - 0.4 + width * (g + 0.5))
        means.append(stat.mean)
        stds.append(stat.std)
    ax.bar(positions, means, width, yerr=stds, capsize=3, label=group, color=f'C{g}')
    shown += [m - s for m, s in zip(means, stds)] + [m + s for m, s in zip(means, stds)]
  shown += _reference_lines(ax, panel, metric)
  if shown:
    # Bars of close methods differ by little: the axis starts near the lowest value.
    low, high = min(shown), max(shown)
    pad = 0.15 * (high - low) or 1.0
    ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
  ax.set_xticks(range(len(xs)), [textwrap.fill(x, 14) for x in xs], fontsize=8)
  ax.set_xlabel(plot.get('xlabel', plot['x']))
  ax.set_ylabel(plot.get('ylabel', metric))
  if len(groups) > 1 or plot.get('references'):
    ax.legend(fontsize=8)


def draw_lines(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot['metric']
  xs = sorted(panel.labels(plot['x']), key=float)
  for s, series in enumerate(panel.labels(plot.get('series'))):
    points = []
    for x in xs:
      stat = panel.stat(metric, {plot['x']: x, plot.get('series'): series})
      if stat.ok:
        points.append((float(x), stat.mean, stat.std))
    if not points:
      continue
    px, means, stds = zip(*points)
    ax.plot(px, means, marker='o', color=f'C{s}', label=series)
    ax.fill_between(px, [m - d for m, d in zip(means, stds)],
                    [m + d for m, d in zip(means, stds)], color=f'C{s}', alpha=0.2)
  _reference_lines(ax, panel, metric)
  if plot.get('log_x'):
    ax.set_xscale('log')
    ax.minorticks_off()
  ax.set_xticks([float(x) for x in xs], xs)
  ax.set_xlabel(plot.get('xlabel', plot['x']))
  ax.set_ylabel(plot.get('ylabel', metric))
  ax.legend(fontsize=8)


def draw_quality_diversity(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot['metric']
  sampled = [e['label'] for e in panel.spec['evaluations'] if e.get('num_samples', 1) >= 2]
  evaluations = plot.get('evaluations', sampled)
  curves = [(series, {plot['series']: series}, None) for series in panel.labels(plot['series'])]
  curves += [(reference, {}, reference) for reference in plot.get('references', [])]
  for c, (name, labels, reference) in enumerate(curves):
    points = []
    for label in evaluations:
      quality = panel.stat(metric, labels, label, reference)
      diversity = panel.stat('self_bleu', labels, label, reference)
      if quality.ok and diversity.ok:
        points.append((diversity.mean, quality.mean, diversity.std, quality.std, label))
    if not points:
      continue
    x, y, xerr, yerr, point_labels = zip(*points)
    style = dict(linestyle='--', marker='s') if reference else dict(marker='o')
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=f'C{c}', capsize=2, label=name, **style)
    for px, py, label in zip(x, y, point_labels):
      ax.annotate(label, (px, py), textcoords='offset points', xytext=(4, 4), fontsize=7)
  ax.set_xlabel(plot.get('xlabel', 'Self-BLEU (diversity decreases →)'))
  ax.set_ylabel(plot.get('ylabel', metric))
  ax.legend(fontsize=8)


def draw_tradeoff(ax, panel: Panel) -> None:
  plot = panel.plot
  x_metric, y_metric = plot['x_metric'], plot['y_metric']
  base_x = panel.stat(x_metric, reference=plot['baseline'])
  base_y = panel.stat(y_metric, reference=plot['baseline'])
  if not (base_x.ok and base_y.ok):
    ax.text(0.5, 0.5, f'baseline {plot["baseline"]} missing', transform=ax.transAxes,
            ha='center')
    return
  series = plot.get('series')
  for i, group in enumerate(panel.labels(series)):
    curve = []
    for j, label in enumerate(panel.labels(plot['points'])):
      labels = {plot['points']: label, **({series: group} if series else {})}
      x, y = panel.stat(x_metric, labels), panel.stat(y_metric, labels)
      if not (x.ok and y.ok):
        continue
      curve.append((x.mean - base_x.mean, y.mean - base_y.mean))
      color = f'C{i}' if series else f'C{j}'
      ax.errorbar(*curve[-1], xerr=x.std, yerr=y.std, marker='o', color=color, capsize=2,
                  label=None if series else label)
      if series:
        ax.annotate(f'{plot["points"]}={label}', curve[-1], fontsize=7,
                    textcoords='offset points', xytext=(4, 4))
    if series and curve:
      ax.plot(*zip(*curve), color=f'C{i}', label=group)
  for k, reference in enumerate(plot.get('references', [])):
    x, y = panel.stat(x_metric, reference=reference), panel.stat(y_metric, reference=reference)
    if x.ok and y.ok:
      ax.errorbar(x.mean - base_x.mean, y.mean - base_y.mean, xerr=x.std, yerr=y.std,
                  marker='*', markersize=10, color=f'C{k + 5}', capsize=2, label=reference)
  ax.axhline(0.0, color='gray', linewidth=0.5)
  ax.axvline(0.0, color='gray', linewidth=0.5)
  ax.set_xlabel(plot.get('xlabel', f'Δ {x_metric} vs {plot["baseline"]}'))
  ax.set_ylabel(plot.get('ylabel', f'Δ {y_metric} vs {plot["baseline"]}'))
  ax.legend(fontsize=8, title=series or plot['points'])


DRAW = {'heatmap': draw_heatmap, 'bars': draw_bars, 'lines': draw_lines,
        'quality_diversity': draw_quality_diversity, 'tradeoff': draw_tradeoff}


def draw(path: str, panel: Panel) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, ax = plt.subplots(figsize=(8, 5.5))
  DRAW[panel.plot['kind']](ax, panel)
  ax.set_title(panel.title(), fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=150)
  plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description='Draws a sweep\'s figure panel and its CSV.')
  parser.add_argument('spec', help='the sweep spec (JSON)')
  parser.add_argument('--root', required=True, help='the sweep\'s output root')
  parser.add_argument('--out', required=True, help='where <name>.csv and .png go')
  parser.add_argument('--seeds', help='comma-separated seeds replacing the spec\'s')
  parser.add_argument('--strict', action='store_true', help='fail on any missing result')
  args = parser.parse_args(argv)
  try:
    spec = sweep.load_spec(args.spec)
    seeds = ([int(s) for s in args.seeds.split(',') if s.strip()] if args.seeds
             else spec.get('seeds', [0]))
    root = args.root if '://' in args.root else os.path.abspath(args.root)
    runs = sweep.expand(spec, root, seeds=seeds)
    stats, missing = collect(spec, runs)
  except ValueError as e:  # a bad spec, an ambiguous metric, samples that do not align
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not any(stat.ok for stat in stats.values()):
    print(f'error: no results of {spec["name"]} under {root}', file=sys.stderr)
    return 2
  if missing:
    print(f'{len(missing)} results missing' +
          (':' if args.strict else ' (left out of the figure):'), file=sys.stderr)
    for line in missing:
      print(f'  {line}', file=sys.stderr)
    if args.strict:
      return 1
  os.makedirs(args.out, exist_ok=True)
  csv_path = os.path.join(args.out, f'{spec["name"]}.csv')
  write_csv(csv_path, spec, runs, stats, seeds)
  written = [csv_path]
  for suffix, plot in _plots(spec):
    name = spec['name'] + (f'_{suffix}' if suffix else '')
    path = os.path.join(args.out, f'{name}.png')
    draw(path, Panel(spec, plot, stats))
    written.append(path)
  print('wrote ' + ', '.join(written))
  return 0


if __name__ == '__main__':
  sys.exit(main())
