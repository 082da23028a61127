"""orbax checkpoints of training runs, and params restored from this project's or T5X's.

Layout, the one current T5X writes with orbax, so that either project reads the other's
params:

    MODEL_DIR/checkpoint_<step>/state     a PyTree: {'target': params, 'opt_state': ...,
                                          'step': int}; T5X's has 'target' and 'state'
    MODEL_DIR/checkpoint_<step>/dataset   JSON: {'batches_consumed': n} (this project's only)

The teacher's params are not saved with the student's: every run restores them from
TEACHER_CHECKPOINT_PATH, so a run's checkpoints hold the student and its optimizer state only
(an XL teacher would otherwise be copied into every checkpoint of every sweep run).

Params are restored straight into their `NamedSharding`s (each host reads its own shards), from
abstract trees of `jax.ShapeDtypeStruct`s: nothing is allocated on one device first.
"""

import os
import re
from typing import Any, Optional, Tuple

import etils.epath as epath
import jax
import orbax.checkpoint as ocp

PyTree = Any

STEP_PREFIX = 'checkpoint'
STATE_ITEM = 'state'
DATASET_ITEM = 'dataset'
PARAMS_KEY = 'target'
_STEP_DIR = re.compile(rf'^{STEP_PREFIX}_(\d+)$')


class CheckpointError(ValueError):
  """A checkpoint path that is missing, unreadable or does not fit the model."""


def make_manager(model_dir: str, *, keep: Optional[int],
                 async_save: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the last `keep` steps; the caller picks the steps
  to save (orbax's own interval policy would also save whichever step comes first)."""
  # orbax writes into the parent directory when the run directory does not exist yet.
  model_dir = _absolute(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, step_prefix=STEP_PREFIX,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(model_dir, options=options, item_names=(STATE_ITEM, DATASET_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, batches_consumed: int) -> None:
  """Saves the train state {'target', 'opt_state', 'step'} and the data position."""
  manager.save(step, force=True, args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardSave(state),
      DATASET_ITEM: ocp.args.JsonSave({'batches_consumed': int(batches_consumed)})}))


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: PyTree) -> Optional[Tuple[PyTree, int]]:
  """(state, batches_consumed) of the latest checkpoint, or None if the run has none.

  Args:
    manager: the run's manager.
    abstract_state: the state's tree of `jax.ShapeDtypeStruct`s with shardings.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardRestore(abstract_state),
      DATASET_ITEM: ocp.args.JsonRestore()}))
  return restored[STATE_ITEM], restored[DATASET_ITEM]['batches_consumed']


def _absolute(path: str) -> epath.Path:
  """orbax refuses relative paths; cloud paths (gs://...) are absolute already."""
  path = os.fspath(path)
  return epath.Path(path if '://' in path else os.path.abspath(path))


def resolve_step_dir(path: str, setting: str) -> epath.Path:
  """The `checkpoint_<step>` directory that `path` names: itself, or a run's latest.

  Args:
    path: a step directory, or a MODEL_DIR holding step directories.
    setting: the gin setting the path came from, for error messages.
  """
  directory = _absolute(path)
  if not directory.exists():
    raise CheckpointError(f'{setting} = {path!r} does not exist.')
  if (directory / STATE_ITEM).exists():
    return directory
  steps = sorted((int(match.group(1)), child) for child in directory.iterdir()
                 if (match := _STEP_DIR.match(child.name)) and (child / STATE_ITEM).exists())
  if not steps:
    raise CheckpointError(
        f'{setting} = {path!r} is neither an orbax checkpoint step directory (with a '
        f'{STATE_ITEM!r} item) nor a model directory holding {STEP_PREFIX}_<step> directories.')
  return steps[-1][1]


def restore_params(path: str, abstract_params: PyTree, *, setting: str) -> PyTree:
  """Params from this project's or a T5X orbax checkpoint, placed in their shardings.

  Args:
    path: a checkpoint step directory or a model directory (its latest step is used).
    abstract_params: the expected params as `jax.ShapeDtypeStruct`s with shardings; the
      checkpoint's arrays are cast to their dtypes.
    setting: the gin setting the path came from (e.g. 'TEACHER_CHECKPOINT_PATH').

  Raises:
    CheckpointError: the path is missing or unreadable, or its params do not match the model's
      names and shapes.
  """
  step_dir = resolve_step_dir(path, setting)
  # Shapes are checked on the metadata first: a restore that fails half-way leaves orbax's
  # reads pending, and the mismatch deserves a message that names the param.
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE_ITEM)
    stored = metadata.item_metadata.tree[PARAMS_KEY]
  except Exception as error:  # orbax raises many types for unreadable checkpoints.
    raise CheckpointError(f'{setting} = {path!r}: could not restore params from '
                          f'{os.fspath(step_dir)}: {type(error).__name__}: {error}') from error
  _check_shapes(stored, abstract_params, path, setting)
  item = {PARAMS_KEY: abstract_params}
  restore_args = {PARAMS_KEY: ocp.checkpoint_utils.construct_restore_args(abstract_params)}
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / STATE_ITEM,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
  except Exception as error:  # orbax raises many types for unreadable or mismatched trees.
    raise CheckpointError(f'{setting} = {path!r}: could not restore params from '
                          f'{os.fspath(step_dir)}: {type(error).__name__}: {error}') from error
  return restored[PARAMS_KEY]


def _check_shapes(stored: PyTree, abstract_params: PyTree, path: str, setting: str) -> None:
  """Fails unless every expected param is in the checkpoint's tree with the same shape."""
  expected = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  actual = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
  for key, spec in expected:
    value = actual.get(key)
    if value is None or value.shape != spec.shape:
      raise CheckpointError(
          f'{setting} = {path!r}: param {jax.tree_util.keystr(key)} has shape '
          f'{None if value is None else value.shape} in the checkpoint, the model expects '
          f'{spec.shape}. Does the model config match the checkpoint?')


def abstract_tree(tree: PyTree, shardings: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves with the given shardings."""
  return jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      tree, shardings)


def export_params(path: str, output_dir: str) -> epath.Path:
  """Writes the params of a checkpoint, without optimizer state, as a checkpoint of its own.

  Args:
    path: a checkpoint step directory or a model directory (its latest step).
    output_dir: the new checkpoint's model directory; it receives `checkpoint_<step>/state`
      holding {'target': params}, which `restore_params` (and T5X's orbax reader) accept.

  Returns:
    The written step directory.
  """
  step_dir = resolve_step_dir(path, 'checkpoint path')
  params = ocp.PyTreeCheckpointer().restore(step_dir / STATE_ITEM)[PARAMS_KEY]
  destination = _absolute(output_dir) / step_dir.name
  ocp.PyTreeCheckpointer().save(destination / STATE_ITEM, {PARAMS_KEY: params})
  return destination
