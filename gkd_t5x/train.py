r"""The standalone trainer: `python -m gkd_t5x.train --gin_file=... --gin.NAME=VALUE`.

The command line and gin macros are T5X's (`gin_utils`; `gin/runs/train.gin` binds
`train.train` to MODEL, MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS, INITIAL_CHECKPOINT_PATH, TEACHER_CHECKPOINT_PATH, ...), so one experiment
file runs under this trainer or under T5X's:

    python -m gkd_t5x.train --gin_file=gin/runs/train.gin \
        --gin_file=gin/experiments/arithmetic/gkd.gin --gin.MODEL_DIR="'/tmp/gkd'"

What a run does, in order (every check before any compilation):
  1. multi-host start (`jax.distributed.initialize`) when asked for;
  2. checks data, mesh and model settings; builds the ('data', 'model') mesh;
  3. derives the shardings of student, optimizer state and frozen networks; restores the latest
     checkpoint of MODEL_DIR if there is one, else the student from INITIAL_CHECKPOINT_PATH (or
     random), the teacher from TEACHER_CHECKPOINT_PATH (and a model reward's classifier from
     REWARD_CHECKPOINT_PATH), straight into their shardings;
  4. trains: one jitted, donated step per batch; the next step is dispatched before the last
     one's metrics are read; a step with a non-finite loss, gradient or update leaves the state
     as it was, and the host, reading the step's flag at logging and checkpoint steps, stops or
     skips and counts it as `nonfinite` (a `faults.NonFinitePolicy`) says; a non-finite state
     is never saved;
  5. every `log_period` steps writes train metrics to MODEL_DIR/train (TensorBoard) and prints
     step, loss, steps/s and ETA; every `eval_period` steps evaluates (MODEL_DIR/eval);
     checkpoints every `checkpoint_period` steps and at the end, keeping `keep_checkpoints`;
  6. on SIGTERM (preemption), saves at the step all hosts agree on (`preemption.Watch`), prints
     one line and exits with `preemption.EXIT_CODE` (75); rerunning the command resumes.
"""

import contextlib
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import flags
from absl import logging
from clu import metric_writers
import jax
import numpy as np
import optax

import gin
from gkd_t5x import averages
from gkd_t5x import checkpoints
from gkd_t5x import data
from gkd_t5x import diagnostics as diagnostics_lib
from gkd_t5x import evaluation
from gkd_t5x import example_checks
from gkd_t5x import faults
from gkd_t5x import gin_utils
from gkd_t5x import mixture_rows
from gkd_t5x import models
from gkd_t5x import partitioning
from gkd_t5x import preemption
from gkd_t5x import run_setup
from gkd_t5x import trainer

PyTree = Any


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    auto: bool = False,
    heartbeat_timeout_seconds: int = 100,
) -> None:
  """Joins a multi-process job (several hosts, or several local processes on CPU).

  When a process dies, JAX's coordination service notices within `heartbeat_timeout_seconds`
  and ends the others ("Terminating process because the JAX distributed service detected fatal
  errors"), so that no host hangs in a collective.
  """
  if heartbeat_timeout_seconds < 1:
    raise ValueError(f'--heartbeat_timeout_seconds must be >= 1, got {heartbeat_timeout_seconds}.')
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id.')
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
  elif auto:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)


class Progress:
  """Steps/s and ETA over the last reporting interval."""

  def __init__(self, first_step: int, total_steps: int):
    self._total = total_steps
    self._last_step = first_step
    self._last_time = time.perf_counter()

  def update(self, step: int) -> Dict[str, float]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return {'steps_per_sec': rate, 'eta_seconds': (self._total - step) / max(rate, 1e-9)}


def _format_eta(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


def _check_feature_lengths(model: models.GKDModelBase, lengths: Mapping[str, int]) -> None:
  max_decode_length = model.gkd.max_decode_length
  if max_decode_length is not None and max_decode_length > lengths['targets']:
    raise ValueError(
        f'GKDConfig.max_decode_length = {max_decode_length} exceeds '
        f'TASK_FEATURE_LENGTHS["targets"] = {lengths["targets"]}: samples must fit the '
        'target feature length.'
    )


@gin.configurable
def train(
    *,
    model: models.GKDModelBase,
    model_dir: str,
    train_dataset_cfg: data.DatasetConfig,
    total_steps: int,
    optimizer: optax.GradientTransformation,
    eval_dataset_cfg: Optional[data.DatasetConfig] = None,
    initial_checkpoint_path: Optional[str] = None,
    teacher_checkpoint_path: Optional[str] = None,
    reward_checkpoint_path: Optional[str] = None,
    model_partitions: int = 1,
    logical_axis_rules: partitioning.LogicalAxisRules = (),
    random_seed: int = 0,
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = 3,
    eval_period: Optional[int] = None,
    eval_num_examples: Optional[int] = None,
    log_period: int = 100,
    async_checkpointing: bool = True,
    diagnostics_period: Optional[int] = 100,
    first_error_fn: Optional[diagnostics_lib.FirstErrorFn] = None,
    console_omitted_metrics: Sequence[str] = (),
    nonfinite: Optional[faults.NonFinitePolicy] = None,
    checks: Optional[example_checks.ExampleChecks] = None,
) -> Dict[str, float]:
  """Trains `model` on `train_dataset_cfg` for `total_steps` steps, resumably.

  Args:
    model: the GKD model, encoder-decoder or decoder-only (gin: MODEL).
    model_dir: run directory for checkpoints and event files (gin: MODEL_DIR).
    train_dataset_cfg: the training data (global batch: BATCH_SIZE).
    total_steps: train until this step (gin: TRAIN_STEPS).
    optimizer: the optax transformation (`optimizers.make_optimizer`).
    eval_dataset_cfg: the evaluation split; None: no evaluation.
    initial_checkpoint_path: the student's starting params (gin: INITIAL_CHECKPOINT_PATH),
      ignored once MODEL_DIR has a checkpoint; None: random.
    teacher_checkpoint_path: the teacher's params (gin: TEACHER_CHECKPOINT_PATH); required
      when the model has a teacher.
    reward_checkpoint_path: a model reward's classifier (gin: REWARD_CHECKPOINT_PATH);
      required when the reward has a network (`rewards.EntailmentReward`).
    model_partitions: devices per model replica (the mesh's `model` axis).
    logical_axis_rules: logical -> mesh axis rules; () means
      `partitioning.standard_logical_axis_rules()`.
    random_seed: seed of init, dropout, lambda coins and sampling.
    checkpoint_period, keep_checkpoints: save every N steps (and at the end), keep the last K.
    eval_period: evaluate every N steps (and at the end); None: only at the end.
    eval_num_examples: evaluate on the first N examples of the split; None: all.
    log_period: write metrics and print progress every N steps.
    async_checkpointing: write checkpoints in the background.
    diagnostics_period: measure the training dynamics (`diagnostics.Diagnostics`: gradient
      noise, the divergence on a fixed probe of the student's early samples, where the loss
      weight falls relative to each sample's first error) before every N-th step, from step
      0, into MODEL_DIR/train; None: never.
    first_error_fn: the task's hook that finds a sample's first error
      (`diagnostics.FirstErrorFn`, e.g. `gkd_t5x.tasks.arithmetic.first_error`); None: no
      error shares.
    console_omitted_metrics: evaluation metrics (names, or their last path component) left out
      of the console's evaluation line, such as rates the task cannot produce; TensorBoard and
      the JSON files keep them.
    nonfinite: what a step with a non-finite loss, gradient or update does (stop, or skip
      and count); None: `faults.NonFinitePolicy()`, stop.
    checks: what the training data's examples that are too long, have an empty target or
      text that is not UTF-8 get (truncated, skipped, refused or kept, and counted in the
      `data/*` metrics); None: `example_checks.ExampleChecks()`.

  Returns:
    The last evaluation's metrics (empty without an eval split).

  Raises:
    preemption.PreemptionError: after SIGTERM, once the agreed step is saved.
    faults.NonFiniteError: a non-finite step that `nonfinite` does not let the run go on with.
  """
  rules = tuple(logical_axis_rules) or partitioning.standard_logical_axis_rules()
  if total_steps < 0:
    raise ValueError(f'TRAIN_STEPS must be >= 0, got {total_steps}.')
  for name, value in (
      ('checkpoint_period', checkpoint_period),
      ('log_period', log_period),
      ('eval_period', eval_period or 1),
      ('diagnostics_period', diagnostics_period or 1),
  ):
    if value < 1:
      raise ValueError(f'train.{name} must be >= 1, got {value}.')
  if model.teacher_module is not None and not teacher_checkpoint_path:
    raise ValueError(
        f'The model has a teacher ({type(model).__name__}.teacher_module), but '
        'TEACHER_CHECKPOINT_PATH is not set: distilling from random params is '
        'never meant. Train a teacher first, or use a method without teacher.'
    )
  for setting, path in run_setup.teacher_checkpoint_paths(model).items():
    if not path:
      raise ValueError(f'{setting} is not set: each of several teachers needs its checkpoint.')
  if model.reward_module is not None and not reward_checkpoint_path:
    raise ValueError(
        'The reward has a network of its own (GKDConfig.reward = '
        f'{type(model.gkd.reward).__name__}), but REWARD_CHECKPOINT_PATH is not '
        "set: give the classifier's T5X checkpoint."
    )
  _check_feature_lengths(model, train_dataset_cfg.task_feature_lengths)
  run = run_setup.build_run(
      model,
      optimizer,
      train_dataset_cfg,
      model_partitions=model_partitions,
      rules=rules,
      pack=train_dataset_cfg.pack,
      checkpoint_paths={
          'INITIAL_CHECKPOINT_PATH': initial_checkpoint_path,
          'TEACHER_CHECKPOINT_PATH': teacher_checkpoint_path,
          'REWARD_CHECKPOINT_PATH': reward_checkpoint_path,
      },
  )
  layout, model = run.layout, run.model
  # All are restored when the model has them: the checks above require their paths.
  frozen = run_setup.restore_frozen(
      layout, teacher_checkpoint_path, reward_checkpoint_path, model=model
  )
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(random_seed))
  manager = checkpoints.make_manager(
      model_dir, keep=keep_checkpoints, async_save=async_checkpointing
  )
  try:
    state, batches_consumed = _start(
        model, optimizer, layout, manager, init_rng, initial_checkpoint_path
    )
    with preemption.Watch() as watch:
      return _train_loop(
          model,
          optimizer,
          layout,
          state,
          frozen,
          batches_consumed,
          step_rng,
          mixture_plan=run.mixture_plan,
          manager=manager,
          watch=watch,
          nonfinite=nonfinite or faults.NonFinitePolicy(),
          checks=checks or example_checks.ExampleChecks(),
          model_dir=model_dir,
          total_steps=total_steps,
          train_dataset_cfg=train_dataset_cfg,
          eval_dataset_cfg=eval_dataset_cfg,
          checkpoint_period=checkpoint_period,
          eval_period=eval_period,
          eval_num_examples=eval_num_examples,
          log_period=log_period,
          random_seed=random_seed,
          diagnostics_period=diagnostics_period,
          first_error_fn=first_error_fn,
          console_omitted_metrics=tuple(console_omitted_metrics),
      )
  finally:
    manager.wait_until_finished()
    manager.close()


def _start(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    layout: trainer.StateLayout,
    manager,
    init_rng: jax.Array,
    initial_checkpoint_path: Optional[str],
) -> Tuple[trainer.TrainState, int]:
  """(state, batches consumed): the latest checkpoint of the run, else a step-0 state whose
  student comes from `initial_checkpoint_path` (or is random)."""
  resumed = checkpoints.restore_latest(manager, layout.abstract_state)
  if resumed is not None:
    logging.info('Resumed from %s at step %d.', manager.directory, int(resumed[0]['step']))
    return resumed
  initial_params = None
  if initial_checkpoint_path:
    initial_params = checkpoints.restore_params(
        initial_checkpoint_path, layout.abstract_state['target'], setting='INITIAL_CHECKPOINT_PATH'
    )
  return trainer.init_state(model, optimizer, layout, init_rng, initial_params), 0


def _train_loop(
    model: models.GKDModelBase,
    optimizer: optax.GradientTransformation,
    layout: trainer.StateLayout,
    state: trainer.TrainState,
    frozen: PyTree,
    batches_consumed: int,
    step_rng: jax.Array,
    *,
    mixture_plan: Optional[mixture_rows.Plan],
    manager,
    watch: preemption.Watch,
    nonfinite: faults.NonFinitePolicy,
    checks: example_checks.ExampleChecks,
    model_dir: str,
    total_steps: int,
    train_dataset_cfg: data.DatasetConfig,
    eval_dataset_cfg: Optional[data.DatasetConfig],
    checkpoint_period: int,
    eval_period: Optional[int],
    eval_num_examples: Optional[int],
    log_period: int,
    random_seed: int,
    diagnostics_period: Optional[int],
    first_error_fn: Optional[diagnostics_lib.FirstErrorFn],
    console_omitted_metrics: Sequence[str],
) -> Dict[str, float]:
  """Steps from the state's step to `total_steps`: logging, diagnostics, checkpoints and
  evaluation; the step flags of non-finite steps are read only at logging and checkpoint
  steps."""
  mesh, rules = layout.mesh, layout.rules
  converter = model.FEATURE_CONVERTER_CLS(pack=train_dataset_cfg.pack)
  train_step = trainer.make_train_step(model, optimizer, layout, step_rng)
  diagnose = None
  if diagnostics_period:
    diagnose = _Diagnose(
        diagnostics_lib.Diagnostics(model, layout, step_rng, first_error_fn), model_dir
    )
  evaluator = None
  if eval_dataset_cfg is not None:
    evaluator = evaluation.TaskEvaluators(
        model,
        eval_dataset_cfg,
        mesh,
        layout.param_shardings,
        layout.frozen_shardings,
        rules,
        num_examples=eval_num_examples,
        seed=random_seed,
    )
  if mixture_plan is None:
    dataset = data.get_dataset(
        train_dataset_cfg, converter, repeat=True, start_batch=batches_consumed, checks=checks
    )
  else:
    dataset = mixture_rows.get_dataset(
        train_dataset_cfg, converter, mixture_plan, start_batch=batches_consumed, checks=checks
    )
  batches = dataset.as_numpy_iterator()
  is_chief = jax.process_index() == 0
  train_writer = metric_writers.create_default_writer(
      os.path.join(model_dir, 'train'), just_logging=not is_chief
  )
  eval_writer = metric_writers.create_default_writer(
      os.path.join(model_dir, 'eval'), just_logging=not is_chief
  )

  step = int(state['step'])
  first_step = step
  progress = Progress(step, total_steps)
  pending: List[Mapping[str, Any]] = []
  nonfinite_steps = faults.NonFiniteSteps(nonfinite)
  example_counts = np.zeros(len(example_checks.COUNTED), np.int64)
  eval_metrics: Dict[str, float] = {}
  if is_chief:
    print(
        f'Training {model_dir}: steps {step} -> {total_steps}, mesh {dict(mesh.shape)}.', flush=True
    )
  # Closed on every exit: a run stopped by an error keeps the metrics it logged.
  with (
      partitioning.activate(mesh, rules),
      contextlib.closing(train_writer),
      contextlib.closing(eval_writer),
  ):
    while step < total_steps:
      numpy_batch = next(batches)
      counts = example_checks.pop_counts(numpy_batch)
      if counts is not None:  # packed rows carry none
        example_counts += counts
      batch = data.make_global_batch(numpy_batch, mesh)
      if diagnose is not None and step % diagnostics_period == 0:
        train_writer.write_scalars(step, diagnose(state['target'], frozen, batch, step))
      state, metrics = train_step(state, frozen, batch)
      batches_consumed += 1
      step += 1
      nonfinite_steps.add(step, metrics['nonfinite'].total)
      pending.append(metrics)
      preempted = watch.reached_sync_point(step)
      if step % log_period == 0 or step == total_steps:
        values = averages.compute_merged(pending)
        pending = []
        values['nonfinite_steps_total'] = nonfinite_steps.check(manager.latest_step())
        values.update(example_checks.metrics(example_counts))
        example_counts[:] = 0
        values.update(progress.update(step))
        train_writer.write_scalars(step, values)
        if is_chief:
          print(
              f'step {step}/{total_steps}  loss {values["loss"]:.4f}  '
              f'{values["steps_per_sec"]:.2f} steps/s  '
              f'ETA {_format_eta(values["eta_seconds"])}',
              flush=True,
          )
      if preempted or step % checkpoint_period == 0 or step == total_steps:
        nonfinite_steps.check(manager.latest_step())
        faults.check_state_finite(state, step)
        checkpoints.save(manager, step, state, batches_consumed)
      if preempted:
        manager.wait_until_finished()
        raise preemption.PreemptionError(step, model_dir)
      if evaluator is not None and (
          (eval_period and step % eval_period == 0) or step == total_steps
      ):
        eval_metrics = _evaluate(
            evaluator,
            state['target'],
            frozen,
            step,
            eval_writer,
            model_dir,
            console_omitted_metrics,
        )
    if evaluator is not None and first_step == total_steps:
      eval_metrics = _evaluate(
          evaluator, state['target'], frozen, step, eval_writer, model_dir, console_omitted_metrics
      )
  return eval_metrics


class _Diagnose:
  """The run's diagnostics with its probe, drawn at the first measurement (or read back)."""

  def __init__(self, diagnostics: diagnostics_lib.Diagnostics, model_dir: str):
    self._diagnostics = diagnostics
    self._model_dir = model_dir
    self._probe = None

  def __call__(self, params: PyTree, frozen: PyTree, batch: Any, step: int) -> Dict[str, float]:
    if self._probe is None:
      self._probe = diagnostics_lib.load_or_make_probe(
          self._diagnostics, self._model_dir, params, frozen, batch, step
      )
    return self._diagnostics(params, frozen, batch, step, self._probe)


def _evaluate(
    evaluator: evaluation.TaskEvaluators,
    params: PyTree,
    frozen: PyTree,
    step: int,
    writer: metric_writers.MetricWriter,
    model_dir: str,
    omitted: Sequence[str],
) -> Dict[str, float]:
  """Loss and inference metrics on the eval split: written to TensorBoard and JSON files; the
  console line leaves out the `omitted` names (full, or their last path component)."""
  start = time.perf_counter()
  metrics, records = evaluator.evaluate(params, frozen)
  run_setup.write_results(model_dir, step, metrics, records, writer=writer)
  if jax.process_index() == 0:
    shown = '  '.join(
        f'{name} {value:.4g}'
        for name, value in sorted(metrics.items())
        if name not in omitted and name.rsplit('/', 1)[-1] not in omitted
    )
    print(f'eval at step {step} ({time.perf_counter() - start:.1f} s): {shown}', flush=True)
  return metrics


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  initialize_distributed(
      flags.FLAGS.coordinator_address,
      flags.FLAGS.num_processes,
      flags.FLAGS.process_id,
      flags.FLAGS.multiprocess,
      flags.FLAGS.heartbeat_timeout_seconds,
  )
  gin_utils.parse_gin_flags()
  # The gin files import this module as gkd_t5x.train, whose `train` carries the bindings
  # (this file also runs as __main__, a second module object).
  # The configurables gin binds live in the importable module, not in `__main__`.
  from gkd_t5x import train as train_lib  # noqa: PLW0406

  try:
    train_lib.train()
  except preemption.PreemptionError as preempted:
    print(preempted, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except (checkpoints.CheckpointError, faults.NonFiniteError) as error:
    # One line, without the traceback of orbax's internals (gin appends its call site).
    sys.exit(f'{type(error).__name__}: {str(error).splitlines()[0]}')
  except Exception as error:  # orbax's and TensorBoard's writers raise ENOSPC as many types.
    if refused := example_checks.refusal_line(error):
      sys.exit(refused)
    if not faults.is_disk_full(error):
      raise
    sys.exit(
        f'No space left on device: a checkpoint or event file could not be written '
        f'({type(error).__name__}); stopping. The checkpoints completed before are kept: free '
        'space and rerun to resume.'
    )


if __name__ == '__main__':
  flags.DEFINE_string(
      'coordinator_address',
      None,
      'Multi-host: address:port of process 0 for jax.distributed.initialize. On '
      'TPU pods use --multiprocess instead (auto-detected).',
  )
  flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
  flags.DEFINE_integer('process_id', None, "Multi-host: this process's index.")
  flags.DEFINE_bool(
      'multiprocess', False, 'Call jax.distributed.initialize() with its auto-detection (TPU pods).'
  )
  flags.DEFINE_integer(
      'heartbeat_timeout_seconds',
      100,
      'Multi-host: a process silent this long counts as dead, and the others exit.',
  )
  gin_utils.run(main)
