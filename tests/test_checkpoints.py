"""orbax checkpoints: train-state round trips, params from this project's and T5X's layout."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from gkd_t5x import checkpoints
from gkd_t5x import partitioning

PARAMS = {'encoder': {'kernel': np.arange(12, dtype=np.float32).reshape(3, 4)},
          'token_embedder': {'embedding': np.linspace(-1, 1, 10, dtype=np.float32)}}


def abstract(tree):
  replicated = partitioning.replicated(partitioning.make_mesh(1))
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=replicated),
      tree)


def assert_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_train_state_round_trip_keeps_the_latest_and_the_data_position(tmp_path):
  optimizer = optax.adamw(1e-3)
  params = jax.tree_util.tree_map(jnp.asarray, PARAMS)
  opt_state = optimizer.update(params, optimizer.init(params), params)[1]
  manager = checkpoints.make_manager(str(tmp_path / 'run'), keep=2, async_save=False)
  for step in (1, 2, 3):
    state = {'target': jax.tree_util.tree_map(lambda x: x + step, params),
             'opt_state': opt_state, 'step': jnp.asarray(step, jnp.int32)}
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
  t5x_state = {'target': PARAMS,
               'state': {'step': np.asarray(7), 'param_states': {'encoder': {
                   'kernel': {'v_row': np.ones(3, np.float32)}}}}}
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
  assert_equal(checkpoints.restore_params(str(tmp_path / 'small'), abstract(PARAMS),
                                          setting='X'), PARAMS)


def test_params_that_do_not_fit_the_model(tmp_path):
  ocp.PyTreeCheckpointer().save(tmp_path / 'checkpoint_1' / 'state', {'target': PARAMS})
  wrong = dict(PARAMS, encoder={'kernel': np.zeros((3, 5), np.float32)})
  with pytest.raises(checkpoints.CheckpointError, match='INITIAL_CHECKPOINT_PATH'):
    checkpoints.restore_params(str(tmp_path / 'checkpoint_1'), abstract(wrong),
                               setting='INITIAL_CHECKPOINT_PATH')


def test_a_directory_without_checkpoints(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='neither an orbax checkpoint'):
    checkpoints.resolve_step_dir(str(tmp_path), 'TEACHER_CHECKPOINT_PATH')
