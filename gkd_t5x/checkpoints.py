"""orbax checkpoints of training runs, and params restored from this project's or T5X's.

Layout, the one current T5X writes with orbax, so that either project reads the other's
params:

    MODEL_DIR/checkpoint_<step>/state     a PyTree: {'target': params, 'opt_state': ...,
                                          'step': int}; T5X's has 'target' and 'state'
    MODEL_DIR/checkpoint_<step>/dataset   JSON: {'batches_consumed': n} (this project's only)

Params are also read from T5X's older format, in which the public T5 1.1 and FLAN-T5
checkpoints were published (`restore_params` tells the two apart):

    checkpoint_<step>/checkpoint          msgpack: {'version': 3, 'optimizer': {'target':
                                          params, 'state': ...}}; each array leaf is either
                                          inline or a tensorstore spec (a dict) whose path is
                                          relative to the step directory
    checkpoint_<step>/target.encoder...   one zarr array per tensorstore leaf

The teacher's params are not saved with the student's: every run restores them from
TEACHER_CHECKPOINT_PATH, so a run's checkpoints hold the student and its optimizer state only
(an XL teacher would otherwise be copied into every checkpoint of every sweep run).

Params are restored straight into their `NamedSharding`s (each host reads its own shards), from
abstract trees of `jax.ShapeDtypeStruct`s: nothing is allocated on one device first.
"""

import asyncio
import copy
import functools
import os
import posixpath
import re
import sys
from typing import Any, Callable, Mapping, Optional, Tuple

import etils.epath as epath
from flax import serialization
import jax
from jax.experimental.array_serialization import serialization as array_serialization
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

STEP_PREFIX = 'checkpoint'
STATE_ITEM = 'state'
DATASET_ITEM = 'dataset'
PARAMS_KEY = 'target'
MSGPACK_FILE = 'checkpoint'
_STEP_DIR = re.compile(rf'^{STEP_PREFIX}_(\d+)$')


class CheckpointError(ValueError):
  """A checkpoint path that is missing, unreadable or does not fit the model."""


def make_manager(
    model_dir: str, *, keep: Optional[int], async_save: bool = True
) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the last `keep` steps; the caller picks the steps
  to save (orbax's own interval policy would also save whichever step comes first)."""
  # orbax writes into the parent directory when the run directory does not exist yet.
  model_dir = _absolute(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, step_prefix=STEP_PREFIX, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(model_dir, options=options, item_names=(STATE_ITEM, DATASET_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, batches_consumed: int) -> None:
  """Saves the train state {'target', 'opt_state', 'step'} and the data position."""
  manager.save(
      step,
      force=True,
      args=ocp.args.Composite(
          **{
              STATE_ITEM: ocp.args.StandardSave(state),
              DATASET_ITEM: ocp.args.JsonSave({'batches_consumed': int(batches_consumed)}),
          }
      ),
  )


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: PyTree
) -> Optional[Tuple[PyTree, int]]:
  """(state, batches_consumed) of the latest checkpoint, or None if the run has none.

  Args:
    manager: the run's manager.
    abstract_state: the state's tree of `jax.ShapeDtypeStruct`s with shardings.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          **{
              STATE_ITEM: ocp.args.StandardRestore(abstract_state),
              DATASET_ITEM: ocp.args.JsonRestore(),
          }
      ),
  )
  return restored[STATE_ITEM], restored[DATASET_ITEM]['batches_consumed']


def _absolute(path: str) -> epath.Path:
  """orbax refuses relative paths; cloud paths (gs://...) are absolute already."""
  path = os.fspath(path)
  return epath.Path(path if '://' in path else os.path.abspath(path))


def _is_step_dir(directory: epath.Path) -> bool:
  """An orbax step (a 'state' item) or a T5X msgpack step (a 'checkpoint' file)."""
  return (directory / STATE_ITEM).is_dir() or (directory / MSGPACK_FILE).is_file()


def resolve_step_dir(path: str, setting: str) -> epath.Path:
  """The `checkpoint_<step>` directory that `path` names: itself, or a run's latest.

  Args:
    path: a step directory (orbax or T5X msgpack), or a MODEL_DIR holding step directories.
    setting: the gin setting the path came from, for error messages.
  """
  directory = _absolute(path)
  if not directory.exists():
    raise CheckpointError(f'{setting} = {path!r} does not exist.')
  if _is_step_dir(directory):
    return directory
  steps = sorted(
      (int(match.group(1)), child)
      for child in directory.iterdir()
      if (match := _STEP_DIR.match(child.name)) and _is_step_dir(child)
  )
  if not steps:
    raise CheckpointError(
        f'{setting} = {path!r} is neither a checkpoint step directory (an orbax {STATE_ITEM!r} '
        f'item or a T5X {MSGPACK_FILE!r} msgpack file) nor a model directory holding '
        f'{STEP_PREFIX}_<step> directories.'
    )
  return steps[-1][1]


def restore_params(path: str, abstract_params: PyTree, *, setting: str) -> PyTree:
  """Params from an orbax (this project's or T5X's) or T5X msgpack checkpoint, in their
  shardings: each host reads only the slices its devices hold.

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
  restore = _restore_orbax if (step_dir / STATE_ITEM).is_dir() else _restore_msgpack
  previous_hook = sys.unraisablehook
  sys.unraisablehook = functools.partial(_ignore_closed_event_loop, previous_hook=previous_hook)
  try:
    params = restore(step_dir, abstract_params, path, setting)
    sys.unraisablehook = previous_hook  # on failure it stays, for the late callbacks
    return params
  except CheckpointError:
    raise
  except Exception as error:  # orbax and tensorstore raise many types for unreadable files.
    # Their messages run over many lines (specs, stacks); the first says what failed.
    cause = (str(error).strip().splitlines() or [''])[0]
    raise CheckpointError(
        f'{setting} = {path!r}: could not restore params from '
        f'{os.fspath(step_dir)} (damaged or truncated?): {type(error).__name__}: {cause}'
    ) from error


def _ignore_closed_event_loop(unraisable: Any, *, previous_hook: Callable[[Any], None]) -> None:
  """A `sys.unraisablehook` that drops asyncio's "Event loop is closed" errors.

  When orbax's read of a damaged checkpoint fails, tensorstore's reads still in flight complete
  later, on their own threads, into the event loop orbax has closed; each prints a traceback,
  up to the interpreter's exit and after the run's one-line error. Others go to `previous_hook`.
  """
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    previous_hook(unraisable)


def _restore_orbax(
    step_dir: epath.Path, abstract_params: PyTree, path: str, setting: str
) -> PyTree:
  # Shapes are checked on the metadata first: a restore that fails half-way leaves orbax's
  # reads pending, and the mismatch deserves a message that names the param.
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE_ITEM).item_metadata
  if metadata is None:  # orbax logs why and returns None
    raise ValueError(f'orbax could not read the metadata of {os.fspath(step_dir / STATE_ITEM)}')
  _check_shapes(metadata.tree[PARAMS_KEY], abstract_params, path, setting)
  item = {PARAMS_KEY: abstract_params}
  restore_args = {PARAMS_KEY: ocp.checkpoint_utils.construct_restore_args(abstract_params)}
  restored = ocp.PyTreeCheckpointer().restore(
      step_dir / STATE_ITEM,
      args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
  )
  return restored[PARAMS_KEY]


class _StoredArray:
  """A msgpack leaf as `_check_shapes` sees it: an inline array or a tensorstore spec."""

  def __init__(self, leaf: Any):
    self.leaf = leaf
    if isinstance(leaf, Mapping):
      self.shape = tuple(leaf['metadata']['shape'])
    else:
      self.shape = np.shape(leaf)


def _absolute_spec(spec: Mapping[str, Any], step_dir: epath.Path) -> dict:
  """A T5X tensorstore spec with its step-relative path made absolute.

  T5X writes the path relative to the step directory (under 'kvstore', or at the top level
  with tensorstore < 0.1.14) and, for gs:// checkpoints, a placeholder bucket, so that
  checkpoints can be moved; the bucket and directory come from where the checkpoint is now.
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = dict(spec.get('kvstore', {}))
  relative = kvstore.pop('path', None) or spec.pop('path')
  location = os.fspath(step_dir)
  if location.startswith('gs://'):
    bucket, _, prefix = location[len('gs://') :].partition('/')
    spec['kvstore'] = {'driver': 'gcs', 'bucket': bucket, 'path': posixpath.join(prefix, relative)}
  else:
    spec['kvstore'] = {'driver': 'file', 'path': os.path.join(location, relative)}
  return spec


def _restore_msgpack(
    step_dir: epath.Path, abstract_params: PyTree, path: str, setting: str
) -> PyTree:
  contents = serialization.msgpack_restore((step_dir / MSGPACK_FILE).read_bytes())
  state = contents.get('optimizer', contents)
  if PARAMS_KEY not in state:
    raise CheckpointError(
        f'{setting} = {path!r}: the msgpack checkpoint in '
        f'{os.fspath(step_dir)} has no {PARAMS_KEY!r} params.'
    )
  # Tensorstore specs are dicts, so the walk stops at leaves of the expected tree.
  stored = jax.tree_util.tree_map(
      lambda _, leaf: _StoredArray(leaf),
      abstract_params,
      _select(state[PARAMS_KEY], abstract_params, path, setting),
  )
  _check_shapes(stored, abstract_params, path, setting)

  async def read(spec: jax.ShapeDtypeStruct, stored_array: _StoredArray) -> jax.Array:
    if isinstance(stored_array.leaf, Mapping):
      return await array_serialization.async_deserialize(
          spec.sharding,
          _absolute_spec(stored_array.leaf, step_dir),
          global_shape=spec.shape,
          dtype=spec.dtype,
      )
    value = np.asarray(stored_array.leaf, spec.dtype)
    return jax.make_array_from_callback(spec.shape, spec.sharding, lambda index: value[index])

  leaves, treedef = jax.tree_util.tree_flatten(abstract_params)
  stored_leaves = treedef.flatten_up_to(stored)

  async def read_all():
    return await asyncio.gather(*map(read, leaves, stored_leaves))

  return jax.tree_util.tree_unflatten(treedef, asyncio.run(read_all()))


def _select(tree: Any, abstract_params: PyTree, path: str, setting: str) -> Any:
  """`tree` cut to the structure of `abstract_params` (a checkpoint may hold more), failing
  with the name of the first param the checkpoint lacks."""
  if not isinstance(abstract_params, Mapping):
    return tree
  selected = {}
  for name, subtree in abstract_params.items():
    if not isinstance(tree, Mapping) or name not in tree:
      raise CheckpointError(
          f'{setting} = {path!r}: the checkpoint has no param {name!r} '
          f'(it has {sorted(tree) if isinstance(tree, Mapping) else tree}). '
          'Does the model config match the checkpoint?'
      )
    selected[name] = _select(tree[name], subtree, path, setting)
  return selected if isinstance(abstract_params, dict) else type(abstract_params)(selected)


def _check_shapes(stored: PyTree, abstract_params: PyTree, path: str, setting: str) -> None:
  """Fails unless every expected param is in the checkpoint's tree with the same shape."""
  expected = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  actual = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
  for key, spec in expected:
    value = actual.get(key)
    if value is None or value.shape != spec.shape:
      found = 'is not in the checkpoint' if value is None else f'has shape {value.shape}'
      raise CheckpointError(
          f'{setting} = {path!r}: param {jax.tree_util.keystr(key)} {found}, the model expects '
          f'{spec.shape}. Does the model config (architecture, sizes) match the checkpoint?'
      )


def abstract_tree(tree: PyTree, shardings: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves with the given shardings."""
  return jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      tree,
      shardings,
  )


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
