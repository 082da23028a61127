"""Device meshes and T5X-style logical axis rules for sharding GKD's student and teacher.

Parameters carry logical axis names (`params_axes`, `teacher_axes`: `vocab`, `embed`, `mlp`,
`joined_kv`, `heads`, `relpos_buckets`); activations are constrained with `batch`, `length`,
`embed`, `mlp`, `heads`, `kv`, `vocab`. Rules map them to the mesh axes `data` and `model`, as
T5X's `standard_logical_axis_rules` does: the batch over `data`, the wide dimensions (vocab, mlp,
heads) over `model`. The teacher uses the same rules as the student, so it is sharded, never
replicated.
"""

import contextlib
from typing import Any, Iterator, Optional, Sequence, Tuple

import flax
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

import gin

LogicalAxisRules = Sequence[Tuple[str, Optional[str]]]

DATA_AXIS = 'data'
MODEL_AXIS = 'model'


@gin.configurable
def standard_logical_axis_rules() -> LogicalAxisRules:
  """Logical axis -> mesh axis (None = replicated), T5X's 1-d model-parallel layout."""
  return (
      ('batch', DATA_AXIS),
      ('vocab', MODEL_AXIS),
      ('mlp', MODEL_AXIS),
      ('heads', MODEL_AXIS),
      ('joined_kv', MODEL_AXIS),
      ('kv', None),
      ('embed', None),
      ('length', None),
      ('relpos_buckets', None),
  )


@gin.configurable
def make_mesh(model_partitions: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ('data', 'model') mesh over all devices: `model_partitions` devices per model replica.

  Raises:
    ValueError: if the device count is not a multiple of `model_partitions`.
  """
  devices = list(devices if devices is not None else jax.devices())
  if model_partitions < 1 or len(devices) % model_partitions:
    raise ValueError(
        f'model_partitions ({model_partitions}) must be >= 1 and divide the number '
        f'of devices ({len(devices)}).'
    )
  grid = np.asarray(devices).reshape(len(devices) // model_partitions, model_partitions)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def variable_shardings(mesh: Mesh, axes_collection: Any, rules: LogicalAxisRules) -> Any:
  """NamedShardings for a variable tree from its `*_axes` collection (e.g. `params_axes`).

  Returns:
    A tree with the structure of the variables (the `_axes` suffixes removed).
  """
  # Variables are plain dicts; `get_axis_names` answers with FrozenDicts.
  logical_specs = flax.core.unfreeze(nn_partitioning.get_axis_names(axes_collection))
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(variables: Any, shardings: Any, name: str) -> None:
  """Fails with the param's name unless every sharded dimension splits evenly over its axis.

  Args:
    variables: arrays or `jax.ShapeDtypeStruct`s.
    shardings: their NamedShardings (same tree).
    name: what the variables are, for the message (e.g. 'student').
  """
  flat_shardings = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    sharding = flat_shardings[path]
    for dim, axes in zip(leaf.shape, sharding.spec):
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      parts = int(np.prod([sharding.mesh.shape[axis] for axis in axes]))
      if dim % parts:
        raise ValueError(
            f'The {name} param {jax.tree_util.keystr(path)} of shape {leaf.shape} is split '
            f'{parts} ways over mesh axes {axes}, which does not divide {dim}: choose a number '
            'of model partitions (NUM_PARTITIONS) that divides the model dimensions, or pad '
            'the vocabulary to a multiple of 128.'
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays [B, ...] split over `data` (B must be a multiple of the data-axis size)."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalAxisRules) -> Iterator[None]:
  """The mesh and logical axis rules under which sharded steps are traced and run."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
