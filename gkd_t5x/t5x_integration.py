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

Several teachers (`gkd_t5x.teachers`; gin/runs/t5x_teachers.gin binds what follows): the
initializer restores each from its `Teacher.checkpoint_path` into flax_mutables['teacher'][name];
`routed_model` gives the model the batch layout of the mixture's rates
(`mixture_rows.plan`, one block per data shard of T5X's data layout) and `get_teacher_rows_dataset`
(T5X's `get_dataset_fn`) reads each host's rows in that layout. T5X's train_eval reads its own
(randomly mixed) batches: its per-teacher figures hold only where its mixture is one teacher's.

Importing this module needs t5x.
"""

from typing import Any, Mapping, Optional

import flax
import jax
from t5x import utils as t5x_utils

import gin
from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import mixture_rows
from gkd_t5x import models
from gkd_t5x import teachers as teachers_lib


class TeacherTrainStateInitializer(t5x_utils.TrainStateInitializer):
  """T5X's `TrainStateInitializer`, whose from-scratch state holds the restored frozen networks.

  Args:
    teacher_checkpoint_path: a T5X or gkd_t5x checkpoint (a step directory or a model
      directory, whose latest step is used) holding the teacher's params under 'target'.
      Required when the model has a teacher.
    reward_checkpoint_path: likewise, the classifier of a model reward
      (`rewards.EntailmentReward`), restored into the `reward_model` collection. Required
      when the reward has a network.
    teachers: the model's several teachers (gin: TEACHERS), each restored from its own
      checkpoint; teacher_checkpoint_path is then unused.
    **kwargs: T5X's arguments (optimizer_def, init_fn, input_shapes, partitioner,
      input_types), passed by `t5x/train.py`.
  """

  def __init__(
      self,
      *,
      teacher_checkpoint_path: Optional[str] = None,
      reward_checkpoint_path: Optional[str] = None,
      teachers: Optional[Mapping[str, teachers_lib.Teacher]] = None,
      **kwargs,
  ):
    super().__init__(**kwargs)
    self._teachers = teachers
    given = {
        models.TEACHER_COLLECTION: teacher_checkpoint_path,
        models.REWARD_MODEL_COLLECTION: reward_checkpoint_path,
    }
    self._frozen_paths = {}
    for name, setting in models.FROZEN_COLLECTIONS.items():
      if name not in self.global_train_state_shape.flax_mutables:
        continue
      if name == models.TEACHER_COLLECTION and teachers:
        given[name] = {teacher: spec.checkpoint_path for teacher, spec in teachers.items()}
        for teacher, path in given[name].items():
          checkpoints.resolve_step_dir(path, f'teachers[{teacher!r}].checkpoint_path')
        self._frozen_paths[name] = given[name]
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
      if isinstance(path, Mapping):  # several teachers, {name: path}
        mutables[name] = {
            teacher: checkpoints.restore_params(
                teacher_path, abstract[teacher], setting=f'teachers[{teacher!r}].checkpoint_path'
            )
            for teacher, teacher_path in path.items()
        }
        continue
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


@gin.configurable
def routed_model(
    model: models.GKDModelBase, mixture_or_task_name: str, batch_size: int, num_shards: int = 0
) -> models.GKDModelBase:
  """`model` with its several teachers routed to their rows of T5X's global batches of
  `batch_size` (gin: BATCH_SIZE) from the mixture (gin: MIXTURE_OR_TASK_NAME): one block per
  data shard, `num_shards` (0: one per host, T5X's default data layout)."""
  blocks = num_shards or jax.process_count()
  plan = mixture_rows.plan(model.teachers, mixture_or_task_name, batch_size, blocks=blocks)
  return model.with_routing(plan.routing)


@gin.configurable
def get_teacher_rows_dataset(
    cfg: Any,
    shard_id: int,
    num_shards: int,
    feature_converter_cls: Any,
    num_epochs: Optional[int] = None,
    continue_from_last_checkpoint: bool = False,
    *,
    teachers: Mapping[str, teachers_lib.Teacher],
) -> Any:
  """T5X's `get_dataset_fn`: this host's batches of cfg.batch_size / num_shards rows in the
  layout of `routed_model` (each host one block), its examples drawn with its own seed."""
  if num_epochs is not None or continue_from_last_checkpoint:
    raise ValueError(
        'get_teacher_rows_dataset repeats the training data and does not continue a dataset '
        'checkpoint: num_epochs must be None and continue_from_last_checkpoint False.'
    )
  local = data.DatasetConfig(
      cfg.mixture_or_task_name,
      cfg.task_feature_lengths,
      cfg.split,
      cfg.batch_size // num_shards,
      cfg.shuffle,
      seed=None if cfg.seed is None else cfg.seed + shard_id,
      use_cached=cfg.use_cached,
      module=cfg.module,
  )
  plan = mixture_rows.plan(teachers, local.mixture_or_task_name, local.batch_size)
  return mixture_rows.get_dataset(local, feature_converter_cls(pack=False), plan)
