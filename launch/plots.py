r"""A figure panel drawn from its results, in the paper's layout, by plot kind.

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
"""

import math
import textwrap
from typing import List, Mapping, Optional

from launch import plan
from launch.results import Key
from launch.results import Stat
from launch.spec import Plot
from launch.spec import Spec


def _given(label: Optional[str], default: str) -> str:
  """A title or label the spec gives, else its default."""
  return default if label is None else label


class Panel:
  """What a plot function reads: the spec's axes and the aggregated results."""

  def __init__(self, spec: Spec, plot: Plot, stats: Mapping[Key, Stat]):
    self.spec, self.plot, self.stats = spec, plot, stats
    self.axes = {axis.name: axis for axis in spec.axes}

  def labels(self, axis: Optional[str]) -> List[Optional[str]]:
    if axis is None:
      return [None]
    return [value.label for value in self.axes[axis].values]

  def stat(
      self,
      metric: str,
      labels: Optional[Mapping[str, Optional[str]]] = None,
      evaluation: Optional[str] = None,
      reference: Optional[str] = None,
  ) -> Stat:
    """A point by its labels on the plot's axes (an axis it does not use has one value), or
    a reference; at the plot's evaluation unless `evaluation` is given."""
    evaluation = self.plot.evaluation if evaluation is None else evaluation
    if reference is not None:
      point = f'ref_{reference}'
    else:
      labels = labels or {}
      chosen = {name: labels.get(name) or self.labels(name)[0] for name in self.axes}
      point = plan.point_name(self.spec.axes, chosen)
    return self.stats.get((point, evaluation, metric), Stat({}))

  def title(self) -> str:
    return textwrap.fill(_given(self.plot.title, _given(self.spec.figure, self.spec.name)), 80)


def draw_heatmap(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot.metric
  rows, columns = panel.labels(plot.rows), panel.labels(plot.columns)
  baseline = panel.stat(metric, reference=plot.baseline) if plot.baseline is not None else None
  offset = baseline.mean if baseline is not None and baseline.ok else 0.0
  relative = baseline is not None and baseline.ok
  grid = [[panel.stat(metric, {plot.rows: r, plot.columns: c}) for c in columns] for r in rows]
  means = [[s.mean - offset if s.ok else math.nan for s in row] for row in grid]
  finite = [abs(v) for row in means for v in row if not math.isnan(v)] or [1.0]
  if relative:
    limit = max(finite) or 1.0
    image = ax.imshow(means, cmap='RdYlGn', vmin=-limit, vmax=limit, aspect='auto')
  else:
    image = ax.imshow(means, cmap='viridis', aspect='auto')
  for i, row in enumerate(grid):
    for j, stat in enumerate(row):
      text = (
          (f'{stat.mean - offset:+.2f}' if relative else f'{stat.mean:.2f}')
          if stat.ok
          else 'missing'
      )
      if stat.ok and stat.n > 1:
        text += f'\n±{stat.std:.2f}'
      ax.text(j, i, text, ha='center', va='center', fontsize=9)
  ax.set_xticks(range(len(columns)), columns)
  ax.set_yticks(range(len(rows)), rows)
  ax.set_xlabel(_given(plot.xlabel, plot.columns))
  ax.set_ylabel(_given(plot.ylabel, plot.rows))
  name = f'{metric} - {plot.baseline} ({baseline.mean:.2f})' if relative else metric
  ax.figure.colorbar(image, ax=ax, label=name)


def _reference_lines(ax, panel: Panel, metric: str) -> List[float]:
  """Dashed horizontal lines at the plot's references; returns their values."""
  styles, values = ['--', ':', '-.'], []
  for i, reference in enumerate(panel.plot.references):
    stat = panel.stat(metric, reference=reference)
    if stat.ok:
      ax.axhline(
          stat.mean,
          color=f'C{7 - i % 3}',
          linestyle=styles[i % 3],
          label=f'{reference} ({stat.mean:.2f})',
      )
      values.append(stat.mean)
  return values


def draw_bars(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot.metric
  xs, groups = panel.labels(plot.x), panel.labels(plot.group)
  width = 0.8 / len(groups)
  shown = []
  for g, group in enumerate(groups):
    positions, means, stds = [], [], []
    for i, x in enumerate(xs):
      stat = panel.stat(metric, {plot.x: x, plot.group: group})
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
  ax.set_xlabel(_given(plot.xlabel, plot.x))
  ax.set_ylabel(_given(plot.ylabel, metric))
  if len(groups) > 1 or plot.references:
    ax.legend(fontsize=8)


def draw_lines(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot.metric
  xs = sorted(panel.labels(plot.x), key=float)
  for s, series in enumerate(panel.labels(plot.series)):
    points = []
    for x in xs:
      stat = panel.stat(metric, {plot.x: x, plot.series: series})
      if stat.ok:
        points.append((float(x), stat.mean, stat.std))
    if not points:
      continue
    px, means, stds = zip(*points)
    ax.plot(px, means, marker='o', color=f'C{s}', label=series)
    ax.fill_between(
        px,
        [m - d for m, d in zip(means, stds)],
        [m + d for m, d in zip(means, stds)],
        color=f'C{s}',
        alpha=0.2,
    )
  _reference_lines(ax, panel, metric)
  if plot.log_x:
    ax.set_xscale('log')
    ax.minorticks_off()
  ax.set_xticks([float(x) for x in xs], xs)
  ax.set_xlabel(_given(plot.xlabel, plot.x))
  ax.set_ylabel(_given(plot.ylabel, metric))
  ax.legend(fontsize=8)


def draw_quality_diversity(ax, panel: Panel) -> None:
  plot, metric = panel.plot, panel.plot.metric
  curves = [(series, {plot.series: series}, None) for series in panel.labels(plot.series)]
  curves += [(reference, {}, reference) for reference in plot.references]
  for c, (name, labels, reference) in enumerate(curves):
    points = []
    for label in plot.evaluations:
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
  ax.set_xlabel(_given(plot.xlabel, 'Self-BLEU (diversity decreases →)'))
  ax.set_ylabel(_given(plot.ylabel, metric))
  ax.legend(fontsize=8)


def draw_tradeoff(ax, panel: Panel) -> None:
  plot = panel.plot
  x_metric, y_metric = plot.x_metric, plot.y_metric
  base_x = panel.stat(x_metric, reference=plot.baseline)
  base_y = panel.stat(y_metric, reference=plot.baseline)
  if not (base_x.ok and base_y.ok):
    ax.text(0.5, 0.5, f'baseline {plot.baseline} missing', transform=ax.transAxes, ha='center')
    return
  series = plot.series
  for i, group in enumerate(panel.labels(series)):
    curve = []
    for j, label in enumerate(panel.labels(plot.points)):
      labels = {plot.points: label, **({series: group} if series else {})}
      x, y = panel.stat(x_metric, labels), panel.stat(y_metric, labels)
      if not (x.ok and y.ok):
        continue
      curve.append((x.mean - base_x.mean, y.mean - base_y.mean))
      color = f'C{i}' if series else f'C{j}'
      ax.errorbar(
          *curve[-1],
          xerr=x.std,
          yerr=y.std,
          marker='o',
          color=color,
          capsize=2,
          label=None if series else label,
      )
      if series:
        ax.annotate(
            f'{plot.points}={label}',
            curve[-1],
            fontsize=7,
            textcoords='offset points',
            xytext=(4, 4),
        )
    if series and curve:
      ax.plot(*zip(*curve), color=f'C{i}', label=group)
  for k, reference in enumerate(plot.references):
    x, y = panel.stat(x_metric, reference=reference), panel.stat(y_metric, reference=reference)
    if x.ok and y.ok:
      ax.errorbar(
          x.mean - base_x.mean,
          y.mean - base_y.mean,
          xerr=x.std,
          yerr=y.std,
          marker='*',
          markersize=10,
          color=f'C{k + 5}',
          capsize=2,
          label=reference,
      )
  ax.axhline(0.0, color='gray', linewidth=0.5)
  ax.axvline(0.0, color='gray', linewidth=0.5)
  ax.set_xlabel(_given(plot.xlabel, f'Δ {x_metric} vs {plot.baseline}'))
  ax.set_ylabel(_given(plot.ylabel, f'Δ {y_metric} vs {plot.baseline}'))
  ax.legend(fontsize=8, title=series or plot.points)


DRAW = {
    'heatmap': draw_heatmap,
    'bars': draw_bars,
    'lines': draw_lines,
    'quality_diversity': draw_quality_diversity,
    'tradeoff': draw_tradeoff,
}


def draw(path: str, panel: Panel) -> None:
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  figure, ax = plt.subplots(figsize=(8, 5.5))
  DRAW[panel.plot.kind](ax, panel)
  ax.set_title(panel.title(), fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=150)
  plt.close(figure)
