"""The teacher under T5X's `t5x/train.py`: restored from TEACHER_CHECKPOINT_PATH, sharded.

T5X builds the train state from `model.get_initial_variables`, whose `teacher` collection
(with its logical axes in `teacher_axes`) becomes the train state's `flax_mutables`: the
partitioner shards it with the student's logical axis rules, the optimizer never sees it, and
`GKDModel.loss_fn` returns it unchanged, so it is never updated. What T5X cannot know is where
the teacher's values come from; this module supplies them, through T5X's own extension points
(`gin/runs/t5x_finetune.gin` binds both):

  * `TeacherTrainStateInitializer` (T5X's `train_state_initializer_cls`): a state built "from
    scratch" gets its teacher from TEACHER_CHECKPOINT_PATH, restored straight into the
    partitioner's shardings (orbax or T5X msgpack + tensorstore, `checkpoints.restore_params`).
  * `skip_teacher_of_initial_checkpoint` (a restore `state_transformation_fn`, with
    `fallback_to_scratch=True`): the student's initial checkpoint never supplies the teacher;
    T5X fills it from the fallback state, i.e. from TEACHER_CHECKPOINT_PATH.

A model reward's classifier (`rewards.EntailmentReward`, collection `reward_model`) is handled
the same way, from REWARD_CHECKPOINT_PATH.

A resumed run restores the teacher from its own checkpoint, which T5X saves with the rest of
the train state (see the README's "TPU pods with T5X" section for what that costs).

Importing this module needs t5x.
"""

from typing import Any, Mapping, Optional

import flax
import jax
from t5x import utils as t5x_utils

from gkd_t5x import checkpoints
from gkd_t5x import models


class TeacherTrainStateInitializer(t5x_utils.TrainStateInitializer):
  """T5X's `TrainStateInitializer`, whose from-scratch state holds the restored frozen networks.

  Args:
    teacher_checkpoint_path: a T5X or gkd_t5x checkpoint (a step directory or a model
      directory, whose latest step is used) holding the teacher's params under 'target'.
      Required when the model has a teacher.
    reward_checkpoint_path: likewise, the classifier of a model reward
      (`rewards.EntailmentReward`), restored into the `reward_model` collection. Required
      when the reward has a network.
    **kwargs: T5X's arguments (optimizer_def, init_fn, input_shapes, partitioner,
      input_types), passed by `t5x/train.py`.
  """

  def __init__(
      self,
      *,
      teacher_checkpoint_path: Optional[str] = None,
      reward_checkpoint_path: Optional[str] = None,
      **kwargs,
  ):
    super().__init__(**kwargs)
    given = {
        models.TEACHER_COLLECTION: teacher_checkpoint_path,
        models.REWARD_MODEL_COLLECTION: reward_checkpoint_path,
    }
    self._frozen_paths = {}
    for name, setting in models.FROZEN_COLLECTIONS.items():
      if name not in self.global_train_state_shape.flax_mutables:
        continue
      if given[name] is None:
        raise checkpoints.CheckpointError(
            f'The model has a {name} network, but {setting} is None. Set it to its T5X '
            'checkpoint (a step directory or a model directory).'
        )
      # Fails before anything is compiled or initialized if the path is not a checkpoint.
      checkpoints.resolve_step_dir(given[name], setting)
      self._frozen_paths[name] = given[name]

  def from_scratch(self, init_rng: jax.Array):
    """The partitioned train state from `init_rng`, the frozen networks from checkpoints.

    A randomly initialized frozen network is replaced as soon as it is built; until then the
    devices hold its shards twice.
    """
    state = super().from_scratch(init_rng)
    if not self._frozen_paths:
      return state
    mutables = dict(state.flax_mutables)
    mesh = self._partitioner.mesh
    for name, path in self._frozen_paths.items():
      shardings = jax.tree_util.tree_map(
          lambda spec: jax.sharding.NamedSharding(mesh, spec),
          self.train_state_axes.flax_mutables[name],
          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
      )
      abstract = checkpoints.abstract_tree(mutables[name], shardings)
      mutables[name] = checkpoints.restore_params(
          path, abstract, setting=models.FROZEN_COLLECTIONS[name]
      )
    return state.replace_flax_mutables(flax.core.freeze(mutables))


def skip_teacher_of_initial_checkpoint(
    ckpt_state: Mapping[str, Any], target_state: Mapping[str, Any], *, is_resuming: bool = False
) -> Mapping[str, Any]:
  """T5X restore transformation: drops the frozen networks from the checkpoint a run starts from.

  With `RestoreCheckpointConfig.fallback_to_scratch`, T5X then takes the teacher (and a model
  reward's classifier) from the from-scratch state, which `TeacherTrainStateInitializer` filled
  from TEACHER_CHECKPOINT_PATH (and REWARD_CHECKPOINT_PATH), even when the initial checkpoint
  is a GKD run with a teacher of its own. A resumed run (`is_resuming`) keeps its own.
  """
  del target_state  # T5X's signature; the result needs only the checkpoint's state.
  mutables = ckpt_state.get('flax_mutables')
  if is_resuming or not mutables or not set(mutables) & set(models.FROZEN_COLLECTIONS):
    return ckpt_state
  ckpt_state = dict(ckpt_state)
  ckpt_state['flax_mutables'] = {
      name: value for name, value in mutables.items() if name not in models.FROZEN_COLLECTIONS
  }
  return ckpt_state
