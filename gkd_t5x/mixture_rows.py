"""Batches of several teachers' tasks: a fixed number of rows per teacher, from the mixture's rates.

A seqio mixture draws each example's task at random; with several teachers (`gkd_t5x.teachers`)
the step instead needs every teacher's rows at fixed places, so that each teacher runs on a
static slice. `plan` maps each task of MIXTURE_OR_TASK_NAME to its teacher and gives teacher g
n_g = B * rate_g / sum(rates) rows of every batch, rate_g the summed seqio rates of its tasks
(`seqio.Mixture.get_rate`); `get_dataset` reads each teacher's tasks as a seqio mixture of
their own rates (or the task itself), batches them n_g at a time and lays the batches out as
`teachers.Routing` says: `blocks` equal blocks (the mesh's data shards), each holding
n_g / blocks rows of every teacher in turn, so that each data shard runs every teacher on rows
it holds. Everything is checked before any data is read or any step compiled.
"""

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from gkd_t5x import data
from gkd_t5x import example_checks
from gkd_t5x import teachers as teachers_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which tasks each teacher's rows come from, and the batch's layout.

  Attributes:
    routing: the layout (`teachers.Routing`) of the teachers that teach a task of the mixture.
    tasks: {teacher name: ((task name, seqio rate), ...)} in `routing.names` order.
  """

  routing: teachers_lib.Routing
  tasks: Mapping[str, Tuple[Tuple[str, float], ...]]

  def teacher_of(self, task_name: str) -> str:
    return next(name for name, tasks in self.tasks.items() if task_name in dict(tasks))


def task_rates(mixture_or_task_name: str) -> Dict[str, float]:
  """{task name: seqio rate} of a mixture (a task alone: rate 1)."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return {task.name: float(provider.get_rate(task)) for task in provider.tasks}
  return {provider.name: 1.0}


def teacher_of_tasks(teachers: Mapping[str, teachers_lib.Teacher]) -> Dict[str, str]:
  """{task name: teacher name}: each `Teacher.tasks` entry is a task, or a mixture that stands
  for its tasks; a task claimed by two teachers is refused."""
  owners = {}
  for name, teacher in teachers.items():
    for entry in teacher.tasks:
      for task in task_rates(entry):
        if owners.setdefault(task, name) != name:
          raise ValueError(
              f'Task {task!r} has two teachers, {owners[task]!r} and {name!r}: list it in the '
              'tasks (teachers.Teacher.tasks) of one only.'
          )
  return owners


def plan(
    teachers: Mapping[str, teachers_lib.Teacher],
    mixture_or_task_name: str,
    batch_size: int,
    *,
    blocks: int = 1,
) -> Plan:
  """Each teacher's tasks and rows in batches of `batch_size` rows of the mixture.

  Raises:
    ValueError: a task of the mixture has no teacher; the rates give some teacher a share of
      the batch that is not a whole number of rows on each of the `blocks` data shards.
  """
  owners = teacher_of_tasks(teachers)
  rates = task_rates(mixture_or_task_name)
  orphans = sorted(set(rates) - set(owners))
  if orphans:
    raise ValueError(
        f'MIXTURE_OR_TASK_NAME = {mixture_or_task_name!r}: tasks {orphans} have no teacher; '
        f'add each to the tasks (teachers.Teacher.tasks) of one of {sorted(teachers)}.'
    )
  grouped = {}
  for task, rate in rates.items():
    grouped.setdefault(owners[task], []).append((task, rate))
  names = tuple(name for name in teachers if name in grouped)
  total = sum(rates.values())
  parts = []
  for name in names:
    rows = batch_size * sum(rate for _, rate in grouped[name]) / total
    if abs(rows - round(rows)) > 1e-9 or round(rows) % blocks or not round(rows):
      shares = {n: batch_size * sum(r for _, r in grouped[n]) / total for n in names}
      raise ValueError(
          f'BATCH_SIZE = {batch_size} and the rates of {mixture_or_task_name!r} ({rates}) give '
          f'the teachers {shares} rows: each must be a positive multiple of {blocks} (the data '
          'shards); change BATCH_SIZE or the mixture rates.'
      )
    parts.append(round(rows) // blocks)
  routing = teachers_lib.Routing(names, tuple(parts), blocks)
  return Plan(routing, {name: tuple(grouped[name]) for name in names})


def get_dataset(
    config: data.DatasetConfig,
    feature_converter: seqio.FeatureConverter,
    mixture_plan: Plan,
    *,
    start_batch: int = 0,
    checks: Optional[example_checks.ExampleChecks] = None,
) -> tf.data.Dataset:
  """`data.get_dataset`'s global training batches (repeated), laid out as `mixture_plan` says.

  Args:
    config: the training data (its mixture, lengths, batch size, seed).
    feature_converter: the model's.
    mixture_plan: `plan` of the config's mixture and batch size.
    start_batch: batches consumed before a resume.
    checks: as `data.get_dataset`'s (each teacher's rows carry their counts).
  """
  data.validate(config)
  routing = mixture_plan.routing
  per_teacher = []
  for name, rows in zip(routing.names, routing.rows(config.batch_size)):
    tasks = mixture_plan.tasks[name]
    source = (
        seqio.get_mixture_or_task(tasks[0][0])
        if len(tasks) == 1
        else seqio.Mixture(f'{name}_rows', list(tasks))
    )
    dataset = data.get_examples(source, config, feature_converter, num_epochs=None, checks=checks)
    per_teacher.append(dataset.batch(rows, drop_remainder=True))
  batches = tf.data.Dataset.zip(tuple(per_teacher)).map(
      lambda *parts: _lay_out(parts, routing.blocks)
  )
  if start_batch:
    batches = batches.skip(start_batch)
  return batches.prefetch(tf.data.AUTOTUNE)


def _lay_out(parts: Sequence[Mapping[str, tf.Tensor]], blocks: int) -> Dict[str, tf.Tensor]:
  """{feature: [B, ...]} of each teacher's [N_g, ...] rows, block by block (`Routing.assemble`)."""

  def assemble(values):
    in_blocks = [tf.reshape(value, [blocks, -1, *value.shape[1:]]) for value in values]
    whole = tf.concat(in_blocks, axis=1)
    return tf.reshape(whole, [-1, *whole.shape[2:]])

  return {feature: assemble([part[feature] for part in parts]) for feature in parts[0]}
