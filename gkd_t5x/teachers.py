"""Several teachers in one run: each task of a mixture distilled from its own teacher.

A `Teacher` names a frozen network, the checkpoint it is restored from, its softmax
temperature inside the loss and the tasks it teaches (seqio task names, or the name of a
mixture: a tag that all of that mixture's tasks share). A model with `teachers` (a mapping
{teacher name: Teacher}) has no single `teacher_module`.

Rows. Every batch has a fixed layout (`Routing`): it is `blocks` equal blocks, and each block
holds, in teacher order, `parts[g] * r` rows of teacher g's tasks (r = B / (blocks * sum(parts))).
The data layer (`gkd_t5x.mixture_rows`) composes training batches this way from the mixture's
rates, with `blocks` the mesh's data shards, so that every data shard holds its own rows of
every teacher; an evaluation batch of one task has one teacher over all its rows.
`routed_policy` makes one `objective.Policy` of the teachers: teacher g reads and scores
only its own rows (`Routing.take`, a static slice of every block), and the logits are put
back in the batch's row order (`Routing.assemble`).

Cost: per step, teacher g runs one teacher-forced forward pass over its n_g = B * rate_g /
sum(rates) rows only, i.e. n_g / B of what it would cost over the whole batch; the teachers
together cost sum_g (n_g / B) F_g(B), F_g(B) the forward FLOPs of teacher g on B rows. Its
params are inputs of the step, sharded by the student's logical axis rules as one teacher's
are, never in the optimizer, never saved with the student.

Shape letters: B batch, I input length, L target length, V vocabulary, N rows of one teacher.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple

import jax.numpy as jnp

import gin
from gkd_t5x import objective

Array = jnp.ndarray


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Teacher:
  """One teacher of a multi-teacher run.

  Attributes:
    module: the frozen network (a `network.Transformer` for `GKDModel`, a
      `decoder_only.DecoderOnlyTransformer` for `GKDDecoderOnlyModel`); any size, the
      student's vocabulary.
    checkpoint_path: its checkpoint (a step or model directory, this project's or T5X's).
    tasks: the seqio tasks it teaches: task names, or mixture names standing for all of
      their tasks.
    temperature: its softmax temperature inside the divergence (the single teacher's
      `GKDConfig.teacher_temperature`, which must stay 1 with several teachers).
  """

  module: Any
  checkpoint_path: Optional[str]
  tasks: Sequence[str]
  temperature: float = 1.0

  def __post_init__(self):
    object.__setattr__(self, 'tasks', tuple(self.tasks))
    if not self.tasks:
      raise ValueError('teachers.Teacher.tasks must name at least one task or mixture, got ().')
    if not self.temperature > 0:
      raise ValueError(f'teachers.Teacher.temperature must be > 0, got {self.temperature}.')


def check_teachers(teachers: Mapping[str, Teacher], student_module: Any, model_name: str) -> None:
  """Refuses teachers the student cannot be distilled from: none, a vocabulary other than the
  student's, another architecture (config class) than the student's."""
  if not teachers:
    raise ValueError(f'{model_name}.teachers must name at least one teacher, got {{}}.')
  student_config = student_module.config
  for name, teacher in teachers.items():
    config = teacher.module.config
    if type(config) is not type(student_config):
      raise ValueError(
          f'{model_name}.teachers[{name!r}].module has a {type(config).__name__}; this model '
          f'takes teachers of its student architecture, {type(student_config).__name__}.'
      )
    if config.vocab_size != student_config.vocab_size:
      raise ValueError(
          f'{model_name}.teachers[{name!r}] has vocab_size {config.vocab_size}; it must be the '
          f"student's, {student_config.vocab_size} (token-level distillation needs one "
          'vocabulary).'
      )


@dataclasses.dataclass(frozen=True)
class Routing:
  """Which rows of a batch each teacher scores (module docstring).

  Attributes:
    names: the teachers, in row order within a block.
    parts: rows of each teacher per block, in units of r = B / (blocks * sum(parts)).
    blocks: equal blocks of the batch (the data shards), each laid out alike.
  """

  names: Tuple[str, ...]
  parts: Tuple[int, ...]
  blocks: int = 1

  def __post_init__(self):
    if len(self.names) != len(self.parts) or not self.names:
      raise ValueError(f'Routing needs one part per teacher, got {self.names} and {self.parts}.')
    if min(self.parts) < 1 or self.blocks < 1:
      raise ValueError(f'Routing parts and blocks must be >= 1, got {self.parts}, {self.blocks}.')

  @classmethod
  def single(cls, name: str) -> 'Routing':
    """Every row of any batch to teacher `name` (an evaluation batch of one task)."""
    return cls((name,), (1,))

  def rows(self, batch_size: int) -> Tuple[int, ...]:
    """n_g, the rows of each teacher in a batch of `batch_size` rows."""
    unit, remainder = divmod(batch_size, self.blocks * sum(self.parts))
    if remainder or not unit:
      raise ValueError(
          f'A batch of {batch_size} rows does not split into {self.blocks} blocks of '
          f'{dict(zip(self.names, self.parts))} whole rows.'
      )
    return tuple(self.blocks * unit * part for part in self.parts)

  def take(self, rows_BxX: Array, index: int) -> Array:
    """[N, ...] teacher `index`'s rows of a batch-leading array [B, ...], in batch order."""
    batch_size = rows_BxX.shape[0]
    unit = batch_size // (self.blocks * sum(self.parts))
    start = unit * sum(self.parts[:index])
    blocks = rows_BxX.reshape(self.blocks, -1, *rows_BxX.shape[1:])
    mine = blocks[:, start : start + unit * self.parts[index]]
    return mine.reshape(-1, *rows_BxX.shape[1:])

  def assemble(self, parts: Sequence[Array]) -> Array:
    """[B, ...] from each teacher's rows [N_g, ...] (the inverse of `take`)."""
    blocks = [part.reshape(self.blocks, -1, *part.shape[1:]) for part in parts]
    whole = jnp.concatenate(blocks, axis=1)
    return whole.reshape(-1, *whole.shape[2:])

  def groups(self) -> Mapping[str, Any]:
    """{teacher name: rows [B, ...] -> its rows [N, ...]}, for per-teacher statistics."""
    return {name: _taker(self, index) for index, name in enumerate(self.names)}


def _taker(routing: Routing, index: int):
  return lambda rows_BxX: routing.take(rows_BxX, index)


def routed_policy(
    policies: Sequence[objective.Policy], temperatures: Sequence[float], routing: Routing
) -> objective.Policy:
  """One `objective.Policy` of several teachers, each reading and scoring its own rows only.

  Its logits [B, L, V] are teacher g's logits divided by its temperature T_g on g's rows
  (so a divergence at teacher temperature 1 is the divergence to each teacher at its own).
  It does not sample: several teachers write no fixed data ('teacher_samples').

  Args:
    policies: each teacher's policy, in `routing.names` order.
    temperatures: each teacher's T_g.
    routing: the batch's layout.
  """

  def read_prompt(inputs, *, segment_ids=None, dropout_rng=None):
    del dropout_rng  # Teachers run without dropout.
    return tuple(
        policy.read_prompt(
            routing.take(inputs, index),
            segment_ids=None if segment_ids is None else routing.take(segment_ids, index),
        )
        for index, policy in enumerate(policies)
    )

  def logits(prompt, continuation_inputs, continuation, *, segment_ids=None, dropout_rng=None):
    del dropout_rng
    parts = [
        policy.logits(
            prompt[index],
            routing.take(continuation_inputs, index),
            routing.take(continuation, index),
            segment_ids=None if segment_ids is None else routing.take(segment_ids, index),
        )
        / temperature
        for index, (policy, temperature) in enumerate(zip(policies, temperatures))
    ]
    return routing.assemble(parts)

  def start_sampling(prompt, max_decode_length):
    del prompt, max_decode_length
    raise ValueError(
        'Several teachers do not sample: GKDConfig.fixed_data must be "targets" with '
        'teachers (got "teacher_samples").'
    )

  return objective.Policy(read_prompt, logits, start_sampling)
