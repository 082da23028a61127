"""orbax checkpoints: train-state round trips, params from this project's and T5X's layout."""

import asyncio
import os

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from gkd_t5x import checkpoints
from gkd_t5x import partitioning

PARAMS = {
    'encoder': {'kernel': np.arange(12, dtype=np.float32).reshape(3, 4)},
    'token_embedder': {'embedding': np.linspace(-1, 1, 10, dtype=np.float32)},
}


def abstract(tree):
  replicated = partitioning.replicated(partitioning.make_mesh(1))
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=replicated), tree
  )


def assert_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_train_state_round_trip_keeps_the_latest_and_the_data_position(tmp_path):
  optimizer = optax.adamw(1e-3)
  params = jax.tree_util.tree_map(jnp.asarray, PARAMS)
  opt_state = optimizer.update(params, optimizer.init(params), params)[1]
  manager = checkpoints.make_manager(str(tmp_path / 'run'), keep=2, async_save=False)
  for step in (1, 2, 3):
    state = {
        'target': jax.tree_util.tree_map(lambda x, step=step: x + step, params),
        'opt_state': opt_state,
        'step': jnp.asarray(step, jnp.int32),
    }
    checkpoints.save(manager, step, state, batches_consumed=10 * step)
  manager.wait_until_finished()
  assert sorted(os.listdir(tmp_path / 'run')) == ['checkpoint_2', 'checkpoint_3']
  restored, consumed = checkpoints.restore_latest(manager, abstract(state))
  assert consumed == 30 and int(restored['step']) == 3
  assert_equal(restored['target'], state['target'])
  assert_equal(restored['opt_state'], opt_state)
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)


def test_no_checkpoint_means_a_fresh_run(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path / 'new'), keep=1)
  assert checkpoints.restore_latest(manager, abstract({'step': 0})) is None


def test_params_from_a_t5x_orbax_checkpoint(tmp_path):
  """T5X's layout: checkpoint_<step>/state = {'target': params, 'state': optimizer state}."""
  t5x_state = {
      'target': PARAMS,
      'state': {
          'step': np.asarray(7),
          'param_states': {'encoder': {'kernel': {'v_row': np.ones(3, np.float32)}}},
      },
  }
  ocp.PyTreeCheckpointer().save(tmp_path / 'model' / 'checkpoint_7' / 'state', t5x_state)
  ocp.PyTreeCheckpointer().save(tmp_path / 'model' / 'checkpoint_3' / 'state', t5x_state)
  assert checkpoints.resolve_step_dir(str(tmp_path / 'model'), 'X').name == 'checkpoint_7'
  params = checkpoints.restore_params(str(tmp_path / 'model'), abstract(PARAMS), setting='X')
  assert_equal(params, PARAMS)


def test_export_keeps_only_the_params(tmp_path):
  state = {'target': PARAMS, 'opt_state': {'mu': PARAMS}, 'step': np.asarray(5)}
  ocp.PyTreeCheckpointer().save(tmp_path / 'run' / 'checkpoint_5' / 'state', state)
  exported = checkpoints.export_params(str(tmp_path / 'run'), str(tmp_path / 'small'))
  assert exported.name == 'checkpoint_5'
  assert set(ocp.PyTreeCheckpointer().restore(exported / 'state')) == {'target'}
  assert_equal(
      checkpoints.restore_params(str(tmp_path / 'small'), abstract(PARAMS), setting='X'), PARAMS
  )


def test_params_that_do_not_fit_the_model(tmp_path):
  ocp.PyTreeCheckpointer().save(tmp_path / 'checkpoint_1' / 'state', {'target': PARAMS})
  wrong = dict(PARAMS, encoder={'kernel': np.zeros((3, 5), np.float32)})
  with pytest.raises(checkpoints.CheckpointError, match='INITIAL_CHECKPOINT_PATH'):
    checkpoints.restore_params(
        str(tmp_path / 'checkpoint_1'), abstract(wrong), setting='INITIAL_CHECKPOINT_PATH'
    )


def test_a_directory_without_checkpoints(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='neither a checkpoint step directory'):
    checkpoints.resolve_step_dir(str(tmp_path), 'TEACHER_CHECKPOINT_PATH')


def write_msgpack_checkpoint(step_dir, params, inline=(), top_level_path=()):
  """T5X's legacy format, written from its description (gkd_t5x/checkpoints.py): a msgpack
  file of {'version': 3, 'optimizer': {'target': ...}} whose leaves are inline arrays or
  tensorstore specs, relative to the step directory, of gzip-compressed zarr arrays.

  Args:
    inline: names of leaves stored inline in the msgpack file.
    top_level_path: names of leaves whose spec keeps the path at the top level, as
      tensorstore < 0.1.14 wrote it.
  """
  step_dir.mkdir(parents=True)

  async def write(name, value):
    if name in inline:
      return value
    relative = 'target.' + name.replace('/', '.')
    spec = {
        'driver': 'zarr',
        'dtype': value.dtype.name,
        'metadata': {
            'shape': list(value.shape),
            'chunks': list(value.shape),
            'compressor': {'id': 'gzip'},
        },
    }
    store = await ts.open(
        dict(spec, kvstore={'driver': 'file', 'path': str(step_dir / relative)}),
        create=True,
        open=True,
    )
    await store.write(value)
    if name in top_level_path:
      return dict(spec, path=relative, kvstore={'driver': 'file'})
    return dict(spec, kvstore={'driver': 'file', 'path': relative})

  async def write_all():
    names = [
        ('/'.join(str(k.key) for k in key), value)
        for key, value in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    return dict(zip([n for n, _ in names], await asyncio.gather(*(write(*nv) for nv in names))))

  flat = asyncio.run(write_all())
  target = {}
  for name, leaf in flat.items():
    *parents, last = name.split('/')
    node = target
    for parent in parents:
      node = node.setdefault(parent, {})
    node[last] = leaf
  contents = {'version': 3, 'optimizer': {'target': target, 'state': {'step': np.int64(7)}}}
  (step_dir / 'checkpoint').write_bytes(serialization.msgpack_serialize(contents))


def test_params_from_t5x_msgpack_tensorstore_checkpoints(tmp_path):
  params = dict(PARAMS, decoder={'scale': np.float32([0.5, 2.0])})
  write_msgpack_checkpoint(
      tmp_path / 'run' / 'checkpoint_7',
      params,
      inline=('decoder/scale',),
      top_level_path=('token_embedder/embedding',),
  )
  # A run directory resolves to its latest step, of either format.
  assert checkpoints.resolve_step_dir(str(tmp_path / 'run'), 'X').name == 'checkpoint_7'
  assert_equal(
      checkpoints.restore_params(str(tmp_path / 'run'), abstract(params), setting='X'), params
  )
  as_bf16 = jax.tree_util.tree_map(lambda x: np.asarray(x, jnp.bfloat16), params)
  restored = checkpoints.restore_params(str(tmp_path / 'run'), abstract(as_bf16), setting='X')
  assert restored['encoder']['kernel'].dtype == jnp.bfloat16
  assert_equal(restored, as_bf16)


def test_msgpack_checkpoints_that_do_not_fit_the_model(tmp_path):
  write_msgpack_checkpoint(tmp_path / 'checkpoint_1', PARAMS)
  wrong = dict(PARAMS, encoder={'kernel': np.zeros((3, 5), np.float32)})
  with pytest.raises(
      checkpoints.CheckpointError,
      match=r"TEACHER_CHECKPOINT_PATH.*\['kernel'\].*\(3, 4\).*\(3, 5\)",
  ):
    checkpoints.restore_params(
        str(tmp_path / 'checkpoint_1'), abstract(wrong), setting='TEACHER_CHECKPOINT_PATH'
    )
  missing = dict(PARAMS, decoder={'scale': np.ones(2, np.float32)})
  with pytest.raises(checkpoints.CheckpointError, match="no param 'decoder'"):
    checkpoints.restore_params(
        str(tmp_path / 'checkpoint_1'), abstract(missing), setting='TEACHER_CHECKPOINT_PATH'
    )
