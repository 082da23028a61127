"""The running means a step reports: `Average`, a weighted mean carried as (total, count).

A train or evaluation step returns its statistics as `{name: Average}`; averages of several
steps (or batches) merge by adding totals and counts, and `compute()` is total / count. The
fields and methods are those of `clu.metrics.Average`, so the trainer, the evaluator and T5X's
trainer treat both alike; this one needs only jax and flax, so that the model and the train
step run where clu (and the TensorFlow it brings) is not installed.
"""

from typing import Any, Dict, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Average:
  """mean = total / count; `count == 0` means "no value" (e.g. sample statistics of a step
  that did not sample).

  Attributes:
    total: [] float32, the sum of the averaged values (each times its weight).
    count: [] int32, the sum of the weights.
  """

  total: jax.Array
  count: jax.Array

  def merge(self, other: 'Average') -> 'Average':
    return type(self)(total=self.total + other.total, count=self.count + other.count)

  def compute(self) -> jax.Array:
    return self.total / self.count


def weighted(metric_cls, value, count=1):
  """`metric_cls(total=value * count, count=count)`: `value` is the mean of `count` items."""
  count = jnp.asarray(count, jnp.int32)
  return metric_cls(total=jnp.asarray(value, jnp.float32) * count, count=count)


def compute_merged(steps: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
  """{name: mean} of the `Average`s of several steps merged; a metric of count 0 is left out
  (it has no value)."""
  merged = dict(steps[0])
  for metrics in steps[1:]:
    merged = {name: merged[name].merge(metric) for name, metric in metrics.items()}
  merged = jax.device_get(merged)
  return {
      name: float(metric.compute()) for name, metric in merged.items() if float(metric.count) > 0
  }
