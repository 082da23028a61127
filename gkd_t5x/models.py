"""The GKD models on T5X's `BaseModel` protocol: an encoder-decoder and a decoder-only one.

`GKDModel` (student and teacher `network.Transformer`s) and `GKDDecoderOnlyModel` (student and
teacher `decoder_only.DecoderOnlyTransformer`s, prefix LMs) hold the student network, the
frozen teacher network and the objective's settings (`objective.GKDConfig`), and offer what
T5X's trainer, evaluator and inference expect: `loss_fn`, `eval_fn`, `score_batch`,
`predict_batch(_with_aux)` and `get_initial_variables`. Where t5x is importable they are a
`t5x.models.EncoderDecoderModel` and a `t5x.models.DecoderOnlyModel`, so `t5x/train.py`,
`t5x/eval.py` and `t5x/infer.py` take them as they take T5X's own models; without t5x the same
classes serve this project's trainer.

Both are `GKDModelBase`, which holds all that does not depend on the architecture; each model
supplies its network as an `objective.Policy` (`bind`, `bind_decoder_only`) and the
objective's view of its batch. The decoder-only model reads seqio's prefix-LM features (inputs
then targets in one row) as a LEFT-padded prompt and the continuation after it
(`split_prefix_lm_batch`): its on-policy samples are the student's continuations of the
prompt, which the teacher scores after that same prompt.

The teacher's params are not model params: they live in the variable collection `teacher`
(with their logical axes in `teacher_axes`), which T5X's train state carries as
`flax_mutables` and passes to `loss_fn(params, batch, dropout_rng, flax_mutables)`. They are
therefore inputs of the jitted step, sharded by the same logical axis rules as the student,
outside the optimizer, and returned unchanged, so they are never updated. A model reward
(`rewards.EntailmentReward`) keeps its classifier's params the same way, in `reward_model`.

Shape letters: B batch, I input length, L target length, T prefix-LM row length (I + L),
P prompt width, E embedding, V vocabulary.
"""

import copy
import dataclasses
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

import gin
from gkd_t5x import averages
from gkd_t5x import calculator as calculator_lib
from gkd_t5x import decoder_only
from gkd_t5x import decoding
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import teachers as teachers_lib
from gkd_t5x import vocabularies

Array = jnp.ndarray
PyTree = Any
Batch = Mapping[str, Array]
MetricsMap = Dict[str, Any]  # {name: Average}

TEACHER_COLLECTION = 'teacher'
REWARD_MODEL_COLLECTION = 'reward_model'
# The frozen networks' collections, with the gin macro of the checkpoint each is restored from.
FROZEN_COLLECTIONS = {
    TEACHER_COLLECTION: 'TEACHER_CHECKPOINT_PATH',
    REWARD_MODEL_COLLECTION: 'REWARD_CHECKPOINT_PATH',
}
DECODE_METHODS = ('greedy', 'sample', 'beam')

try:
  # T5X's trainer merges only clu metrics (`t5x.metrics.is_metric_obj`); t5x depends on clu.
  from clu import metrics as clu_metrics
  from t5x import models as t5x_models

  _EncoderDecoderBase = t5x_models.EncoderDecoderModel
  _DecoderOnlyBase = t5x_models.DecoderOnlyModel
  _AVERAGE = clu_metrics.Average
except ImportError:  # t5x is not on PyPI; the standalone trainer needs none of it.
  _EncoderDecoderBase = _DecoderOnlyBase = object
  _AVERAGE = averages.Average


class EncodedPrompt(NamedTuple):
  """A `network.Transformer`'s prompt state: the encoder output [B, I, E], with the input
  tokens [B, I] and their segment ids [B, I] (None unpacked) that cross-attention masks by."""

  encoded: Array
  tokens: Array
  segment_ids: Optional[Array]


class PrefixLMPrompt(NamedTuple):
  """A `decoder_only.DecoderOnlyTransformer`'s prompt state: the LEFT-padded prompt [B, P]
  (T5X's start token 0, then the inputs x, in row b's last n_b columns) and the prompt lengths
  n_b [B] int32, the start token included."""

  tokens: Array
  lengths: Array


def _dropout(dropout_rng: Optional[Array]) -> Dict[str, Any]:
  return dict(
      enable_dropout=dropout_rng is not None,
      rngs=None if dropout_rng is None else {'dropout': dropout_rng},
  )


def bind(module: network.Transformer, params: PyTree) -> objective.Policy:
  """Binds `params` to a `network.Transformer` as the objective's `Policy`, whose prompt state
  is an `EncodedPrompt`."""
  variables = {'params': params}
  transformer = network.Transformer

  def read_prompt(inputs, *, segment_ids=None, dropout_rng=None):
    encoded = module.apply(
        variables, inputs, segment_ids, method=transformer.encode, **_dropout(dropout_rng)
    )
    return EncodedPrompt(encoded, inputs, segment_ids)

  def logits(prompt, continuation_inputs, continuation, *, segment_ids=None, dropout_rng=None):
    return module.apply(
        variables,
        prompt.encoded,
        prompt.tokens,
        continuation_inputs,
        continuation,
        prompt.segment_ids,
        segment_ids,
        method=transformer.decode,
        **_dropout(dropout_rng),
    )

  def decode_step(tokens_Bx1, cache, position):
    return module.apply(variables, tokens_Bx1, cache, position, method=transformer.decode_step)

  def start_sampling(prompt, max_decode_length):
    cache = module.apply(
        variables, prompt.encoded, prompt.tokens, max_decode_length, method=transformer.init_cache
    )
    return cache, decode_step

  return objective.Policy(read_prompt, logits, start_sampling)


def _refuse_packing(segment_ids: Optional[Array]) -> None:
  if segment_ids is not None:
    raise ValueError(
        'A decoder-only policy reads one prompt and one continuation per row: '
        'packed examples (segment ids) are not supported; set pack=False.'
    )


def bind_decoder_only(
    module: decoder_only.DecoderOnlyTransformer,
    params: PyTree,
    *,
    inputs_bidirectional_attention: bool = False,
) -> objective.Policy:
  """Binds `params` to a `decoder_only.DecoderOnlyTransformer` as the objective's `Policy`.

  The objective's inputs x [B, I] are LEFT-padded (0 = padding); the prompt is T5X's start
  token 0 then x, so P = I + 1 (`PrefixLMPrompt`). The prompt's columns run in the same pass
  as the continuation: `read_prompt` only records the prompt (so its `dropout_rng` has nothing
  to drop out), `logits` runs prompt + continuation teacher-forced, with dropout when given a
  key, and returns only the continuation's L positions, so a divergence over them puts zero
  loss, and zero gradient, on the prompt's own predictions. `start_sampling` prefills the
  prompt into a cache (no dropout).

  Args:
    module: the network.
    params: its params.
    inputs_bidirectional_attention: the prompt's columns attend to each other in both
      directions (a prefix LM, T5X's `DecoderOnlyModel` flag of that name); False: causal.
  """
  variables = {'params': params}
  transformer = decoder_only.DecoderOnlyTransformer

  def read_prompt(inputs, *, segment_ids=None, dropout_rng=None):
    del dropout_rng  # Nothing runs here; `logits` applies dropout to the prompt's columns.
    _refuse_packing(segment_ids)
    tokens = jnp.pad(inputs.astype(jnp.int32), ((0, 0), (1, 0)))  # T5X's start token 0 first.
    lengths = jnp.sum(inputs > 0, axis=-1, dtype=jnp.int32) + 1
    return PrefixLMPrompt(tokens, lengths)

  def logits(prompt, continuation_inputs, continuation, *, segment_ids=None, dropout_rng=None):
    """The teacher-forced twin of sampling (`decoder_only`'s docstring): [B, P + L - 1] tokens
    concat(prompt, continuation_inputs[:, 1:]), whose column P - 1 + t predicts continuation
    t. continuation_inputs[:, 0] (the start token) is not fed: its column is the prompt's
    last, which feeds the last prompt token instead."""
    _refuse_packing(segment_ids)
    width = prompt.tokens.shape[1]
    in_prompt = jnp.arange(width)[None, :] >= width - prompt.lengths[:, None]
    tokens = jnp.concatenate([prompt.tokens, continuation_inputs[:, 1:]], axis=1)
    # Validity, not tokens, marks the prompt's columns: its start token 0 is no padding.
    valid = jnp.concatenate([in_prompt, continuation[:, 1:] > 0], axis=1)
    prefix = None
    if inputs_bidirectional_attention:
      prefix = jnp.pad(in_prompt, ((0, 0), (0, tokens.shape[1] - width))).astype(jnp.int32)
    row_logits = module.apply(
        variables,
        tokens,
        valid.astype(jnp.int32),
        decoder_causal_attention=prefix,
        **_dropout(dropout_rng),
    )
    return row_logits[:, width - 1 :]

  def decode_step(tokens_Bx1, cache, position):
    return module.apply(variables, tokens_Bx1, cache, position, method=transformer.decode_step)

  def start_sampling(prompt, max_decode_length):
    batch_size, width = prompt.tokens.shape
    cache = module.init_cache(batch_size, width + max_decode_length - 1)
    # decode_step recomputes the prompt's last column at position 0: prefill's logits are its.
    _, cache = module.apply(
        variables,
        prompt.tokens,
        prompt.lengths,
        cache,
        inputs_bidirectional_attention=inputs_bidirectional_attention,
        method=transformer.prefill,
    )
    return cache, decode_step

  return objective.Policy(read_prompt, logits, start_sampling)


def _gather_columns(values_BxT: Array, columns_BxN: Array) -> Array:
  """[B, N] values at the given columns of each row; 0 where a column is outside [0, T)."""
  inside = (columns_BxN >= 0) & (columns_BxN < values_BxT.shape[1])
  picked = jnp.take_along_axis(
      values_BxT, jnp.clip(columns_BxN, 0, values_BxT.shape[1] - 1), axis=1
  )
  return jnp.where(inside, picked, jnp.zeros_like(picked))


def split_prefix_lm_batch(batch: Batch, inputs_length: int, targets_length: int) -> Batch:
  """seqio's prefix-LM features -> the objective's: a left-padded prompt and its continuation.

  A prefix-LM row holds row b's n_b inputs, then its targets, then padding
  ('decoder_target_tokens' [B, T]); 'decoder_causal_attention' marks n_b + 1 columns.

  Args:
    batch: `seqio.PrefixLMFeatureConverter` features, unpacked.
    inputs_length: I >= every row's n_b.
    targets_length: L >= every row's target count.

  Returns:
    {'encoder_input_tokens': [B, I] the inputs, LEFT-padded (ending at column I - 1, so that
     every continuation starts at one column), 'decoder_target_tokens': [B, L] the targets,
     'decoder_loss_weights': [B, L] float32 their loss weights (the batch's own)}. A padding
    row (all zeros) gives empty inputs and targets without weight.
  """
  if 'decoder_segment_ids' in batch:
    raise ValueError(
        'GKDDecoderOnlyModel reads one prompt and one continuation per row: '
        'packed prefix-LM features are not supported; set pack=False.'
    )
  if 'decoder_causal_attention' not in batch:
    raise ValueError(
        'GKDDecoderOnlyModel needs prefix-LM features (seqio.PrefixLMFeatureConverter'
        ' of a task with "inputs" and "targets"): the batch has no '
        '"decoder_causal_attention" to tell the inputs from the targets.'
    )
  row = batch['decoder_target_tokens']
  num_inputs = jnp.maximum(jnp.sum(batch['decoder_causal_attention'] > 0, axis=-1) - 1, 0)
  input_columns = num_inputs[:, None] - inputs_length + jnp.arange(inputs_length)[None, :]
  target_columns = num_inputs[:, None] + jnp.arange(targets_length)[None, :]
  features = {
      'encoder_input_tokens': _gather_columns(row, input_columns).astype(jnp.int32),
      'decoder_target_tokens': _gather_columns(row, target_columns).astype(jnp.int32),
  }
  if 'decoder_loss_weights' in batch:
    features['decoder_loss_weights'] = _gather_columns(
        batch['decoder_loss_weights'], target_columns
    ).astype(jnp.float32)
  # An offline teacher's features are aligned with the targets already (not the row).
  features.update(
      {name: batch[name] for name in objective.OFFLINE_TEACHER_FEATURES if name in batch}
  )
  return features


def _count(stats: Mapping[str, Array], name: str) -> Array:
  """The sequences statistic `name` is a mean over: one teacher's ('<stat>/<teacher>') or all."""
  _, _, teacher = name.partition('/')
  return stats[f'num_sequences/{teacher}' if teacher else 'num_sequences']


def _check_several_teachers(
    name: str,
    module: Any,
    teacher_module: Optional[Any],
    teachers: Mapping[str, teachers_lib.Teacher],
    gkd: objective.GKDConfig,
) -> None:
  """Refuses settings that several teachers cannot take, before anything is compiled."""
  if teacher_module is not None:
    raise ValueError(
        f'{name} takes teacher_module or teachers, not both: set teacher_module (gin: TEACHER) '
        'to None when teachers are given.'
    )
  teachers_lib.check_teachers(teachers, module, name)
  if gkd.teacher_temperature != 1.0:
    raise ValueError(
        f'With {name}.teachers, each teacher has its own temperature (teachers.Teacher.'
        f'temperature): GKDConfig.teacher_temperature must stay 1.0, got {gkd.teacher_temperature}.'
    )
  if gkd.fixed_data != 'targets' or not gkd.needs_teacher:
    raise ValueError(
        f"{name}.teachers score the batch's targets or the student's samples: GKDConfig needs "
        "fixed_data 'targets', a divergence to the teacher (not 'cross_entropy') and no "
        f'offline teacher; got fixed_data={gkd.fixed_data!r}, divergence={gkd.divergence!r}, '
        f'offline_teacher={gkd.offline_teacher}.'
    )


def average(value: Array, count: Any = 1):
  """The step metric of `value`, the mean of `count` items: an `averages.Average` (clu's
  under T5X, whose trainer needs clu metrics)."""
  return averages.weighted(_AVERAGE, value, count)


def _init_encoder_decoder(
    module: network.Transformer,
    rng: Array,
    shapes: Mapping[str, Tuple[int, ...]],
    input_types: Mapping[str, Any],
) -> Dict[str, Any]:
  """The variables of an encoder-decoder network for EncDec feature shapes."""
  inputs = {
      name: jnp.ones(shapes[name], input_types.get(name, jnp.int32))
      for name in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
  }
  return module.init(
      rng,
      inputs['encoder_input_tokens'],
      inputs['decoder_input_tokens'],
      inputs['decoder_target_tokens'],
      enable_dropout=False,
  )


class GKDModelBase:
  """What the GKD models share: the objective's steps, evaluation, scoring and decoding.

  The architecture enters through four methods of the concrete models:
    policy(module, params) -> objective.Policy, the network as the objective sees it;
    objective_batch(batch) -> the objective's features ('encoder_input_tokens' [B, I],
      'decoder_target_tokens' [B, L], 'decoder_loss_weights' [B, L], ...) of a model batch;
    _init_network(module, rng, input_shapes, input_types) -> a student's or teacher's
      variables for the model features' shapes;
    _compute_logits(params, batch, ...) -> the student's teacher-forced logits, aligned with
      batch['decoder_target_tokens'] (T5X's hook, which `score_batch` uses).
  It is listed before T5X's model class, so that its methods replace T5X's cross-entropy ones.
  T5X's constructor is not called: its loss settings (label smoothing, z-loss, loss
  normalization) and `decode_fn` belong to its cross-entropy model, and are replaced by `gkd`
  and the decoding attributes; `_configure` sets the attributes T5X reads (`module`,
  `optimizer_def`, the vocabularies) as T5X sets them.
  """

  def _configure(
      self,
      module: Any,
      teacher_module: Optional[Any],
      input_vocabulary: vocabularies.Vocabulary,
      output_vocabulary: vocabularies.Vocabulary,
      optimizer_def: Any,
      gkd: objective.GKDConfig,
      decode_method: str,
      decode_temperature: float,
      decode_top_k: int,
      decode_top_p: float,
      beam_size: int,
      beam_alpha: float,
      calculator: bool,
      teachers: Optional[Mapping[str, teachers_lib.Teacher]],
  ) -> None:
    """Checks the settings (the concrete constructors' shared arguments) and sets them."""
    name = type(self).__name__
    if teachers is not None:
      _check_several_teachers(name, module, teacher_module, teachers, gkd)
    elif teacher_module is None and gkd.needs_teacher:
      raise ValueError(
          f'{name}.teacher_module is None, but divergence {gkd.divergence!r} '
          f'with fixed_data {gkd.fixed_data!r} needs a teacher.'
      )
    if teacher_module is not None and gkd.offline_teacher:
      raise ValueError(
          f"{name}: GKDConfig.offline_teacher reads the teacher's log-probs from the batch, so "
          'the model takes no teacher network: set teacher_module (gin: TEACHER) to None.'
      )
    config_name = type(module.config).__name__
    student_vocab = module.config.vocab_size
    if teacher_module is not None and teacher_module.config.vocab_size != student_vocab:
      raise ValueError(
          f'Teacher and student vocabularies differ: teacher {config_name}.vocab_size = '
          f'{teacher_module.config.vocab_size}, student {config_name}.vocab_size = '
          f'{student_vocab}. Token-level distillation needs one shared vocabulary.'
      )
    for vocab_name, vocab in (
        ('input_vocabulary', input_vocabulary),
        ('output_vocabulary', output_vocabulary),
    ):
      if vocab.vocab_size > student_vocab:
        raise ValueError(
            f"{vocab_name} has {vocab.vocab_size} tokens, more than the network's "
            f'{config_name}.vocab_size = {student_vocab}.'
        )
    if decode_method not in DECODE_METHODS:
      raise ValueError(
          f'{name}.decode_method must be one of {DECODE_METHODS}, got {decode_method!r}.'
      )
    if calculator and decode_method == 'beam':
      raise ValueError(
          f'{name}.calculator works with decode_method "greedy" or "sample", not "beam".'
      )
    self.module = module
    self.teacher_module = teacher_module
    self.teachers = None if teachers is None else dict(teachers)
    self.routing = None
    self._input_vocabulary = input_vocabulary
    self._output_vocabulary = output_vocabulary
    self.optimizer_def = optimizer_def
    self.gkd = gkd
    self.decode_method = decode_method
    self.decode_temperature = decode_temperature
    self.decode_top_k = decode_top_k
    self.decode_top_p = decode_top_p
    self.beam_size = beam_size
    self.beam_alpha = beam_alpha
    self.calculator = calculator
    self._eos_id = output_vocabulary.eos_id
    self._forcing = (
        calculator_lib.calculator_forcing(output_vocabulary, student_vocab) if calculator else None
    )

  @property
  def has_teacher(self) -> bool:
    """Whether a teacher network (one, or several `teachers`) scores the step's sequences."""
    return self.teacher_module is not None or self.teachers is not None

  def with_routing(self, routing: teachers_lib.Routing) -> 'GKDModelBase':
    """This model with several teachers, each scoring the rows `routing` gives it (the
    runner's batch layout: `mixture_rows.plan`, or one task's teacher for an evaluation)."""
    unknown = set(routing.names) - set(self.teachers or {})
    if unknown:
      raise ValueError(
          f'{type(self).__name__}.teachers has no teacher {sorted(unknown)}; its teachers are '
          f'{sorted(self.teachers or {})}.'
      )
    routed = copy.copy(self)
    routed.routing = routing
    return routed

  @property
  def input_vocabulary(self) -> vocabularies.Vocabulary:
    return self._input_vocabulary

  @property
  def output_vocabulary(self) -> vocabularies.Vocabulary:
    return self._output_vocabulary

  # --------------------------------------------------------------------------- architecture

  def policy(self, module: Any, params: PyTree) -> objective.Policy:
    """The network `module` (the student's or the teacher's) with `params`, as a Policy."""
    raise NotImplementedError

  def objective_batch(self, batch: Batch) -> Batch:
    """The objective's features of a batch of the model's features."""
    raise NotImplementedError

  def _init_network(
      self,
      module: Any,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
      input_types: Mapping[str, Any],
  ) -> Dict[str, Any]:
    raise NotImplementedError

  # --------------------------------------------------------------------------- initialization

  def get_initial_variables(
      self,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
      input_types: Optional[Mapping[str, Any]] = None,
  ) -> Dict[str, Any]:
    """Random student and teacher variables for the given feature shapes.

    Returns:
      {'params', 'params_axes'} of the student and, with a teacher, {'teacher',
      'teacher_axes'}: the teacher's params and their logical axes (replaced by a checkpoint's
      params before training); likewise {'reward_model', 'reward_model_axes'} with a model
      reward.
    """
    input_types = input_types or {}
    student_rng, teacher_rng = jax.random.split(rng)
    # Derived, not a third split: the student's and teacher's keys stay those of a model
    # without a reward network.
    reward_rng = jax.random.fold_in(teacher_rng, 1)
    variables = dict(self._init_network(self.module, student_rng, input_shapes, input_types))
    frozen = []
    if self.teacher_module is not None:
      frozen.append(
          (
              TEACHER_COLLECTION,
              self._init_network(self.teacher_module, teacher_rng, input_shapes, input_types),
          )
      )
    if self.teachers is not None:
      # One key per teacher, so that adding a teacher leaves the others' initial params alone.
      several = {
          name: self._init_network(
              teacher.module, jax.random.fold_in(teacher_rng, index), input_shapes, input_types
          )
          for index, (name, teacher) in enumerate(sorted(self.teachers.items()))
      }
      frozen.append(
          (
              TEACHER_COLLECTION,
              {
                  collection: {name: values[collection] for name, values in several.items()}
                  for collection in ('params', 'params_axes')
              },
          )
      )
    if self.reward_module is not None:
      # The reward's classifier is an encoder-decoder whatever the student is.
      frozen.append(
          (
              REWARD_MODEL_COLLECTION,
              _init_encoder_decoder(
                  self.reward_module, reward_rng, self.gkd.reward.input_shapes(), input_types
              ),
          )
      )
    for collection, frozen_variables in frozen:
      variables[collection] = frozen_variables['params']
      variables[collection + '_axes'] = frozen_variables['params_axes']
    return variables

  @property
  def reward_module(self) -> Optional[network.Transformer]:
    """The network of a model reward (`rewards.EntailmentReward`), or None."""
    return getattr(self.gkd.reward, 'module', None)

  def sequence_reward(
      self, batch: Batch, tokens: Array, flax_mutables: Optional[Mapping[str, Any]] = None
  ) -> Array:
    """[B] float32 reward (`GKDConfig.reward`) of decoded tokens [B, L] for the batch's inputs.

    `tokens` count up to and including their first EOS (as `predict_batch` returns them); the
    batch's targets are the references of a reward that compares (exact match, ROUGE).
    """
    reward = self._objective(flax_mutables).reward
    if reward is None:
      raise ValueError(
          f'{type(self).__name__}.sequence_reward: the objective has no reward '
          '(GKDConfig.reward).'
      )
    features = self.objective_batch(batch)
    targets = features['decoder_target_tokens']
    weights = decoding.weights_through_first_eos(tokens, self._eos_id) * (tokens > 0)
    return reward(
        features['encoder_input_tokens'],
        tokens,
        weights,
        targets,
        features.get('decoder_loss_weights', (targets > 0).astype(jnp.float32)),
    )

  def _objective(self, flax_mutables: Optional[Mapping[str, Any]]) -> objective.GKDConfig:
    """The objective's settings, a model reward's params bound from `flax_mutables`."""
    if self.reward_module is None:
      return self.gkd
    if not flax_mutables or REWARD_MODEL_COLLECTION not in flax_mutables:
      raise ValueError(
          f"This GKD model's reward has a network of its own; its params must "
          f'reach the step as flax_mutables[{REWARD_MODEL_COLLECTION!r}].'
      )
    return dataclasses.replace(
        self.gkd, reward=self.gkd.reward.bind(flax_mutables[REWARD_MODEL_COLLECTION])
    )

  # --------------------------------------------------------------------------- training

  def teacher_policy(self, flax_mutables: Optional[Mapping[str, Any]]):
    """The teacher as the objective's `Policy` (several teachers routed to their rows by
    `routing`), its params from flax_mutables['teacher']; None without a teacher."""
    if not self.has_teacher:
      return None
    if not flax_mutables or TEACHER_COLLECTION not in flax_mutables:
      raise ValueError(
          f'This GKD model has a teacher; its params must reach the step as '
          f'flax_mutables[{TEACHER_COLLECTION!r}].'
      )
    params = flax_mutables[TEACHER_COLLECTION]
    if self.teachers is None:
      return self.policy(self.teacher_module, params)
    if self.routing is None:
      raise ValueError(
          f'{type(self).__name__} has several teachers but no batch layout: the runner sets '
          'it with `with_routing` (gkd_t5x.mixture_rows.plan).'
      )
    chosen = [self.teachers[name] for name in self.routing.names]
    return teachers_lib.routed_policy(
        [
            self.policy(teacher.module, params[name])
            for name, teacher in zip(self.routing.names, chosen)
        ],
        [teacher.temperature for teacher in chosen],
        self.routing,
    )

  def _teacher_groups(self) -> Optional[objective.RowGroups]:
    """Each teacher's rows, where a batch has several teachers' rows."""
    if self.routing is None or len(self.routing.names) < 2:
      return None
    return self.routing.groups()

  def _metrics(self, loss: Array, stats: Mapping[str, Array]) -> MetricsMap:
    """{name: Average} of one step: each statistic a mean over the step's real sequences (so
    that steps and evaluation batches merge into per-sequence means), except the per-step
    values on_policy_fraction, lmbda and num_sequences."""
    per_step = ('on_policy', 'lmbda', 'num_sequences')
    metrics = {
        name: average(value, 1 if name in per_step else _count(stats, name))
        for name, value in stats.items()
    }
    num_real = stats['num_sequences']
    metrics['loss'] = average(loss, num_real)
    metrics['on_policy_fraction'] = metrics.pop('on_policy')
    if self.gkd.may_be_on_policy:
      # Sample statistics average over on-policy steps only (count 0 on the others).
      on_policy = stats['on_policy'].astype(jnp.int32)
      metrics['sample_length'] = average(stats['sequence_length'], on_policy * num_real)
      metrics['sample_eos_rate'] = average(stats['eos_rate'], on_policy * num_real)
    return metrics

  def _gkd_loss(
      self,
      config: objective.GKDConfig,
      params: PyTree,
      batch: Batch,
      rng: Array,
      flax_mutables: Optional[Mapping[str, Any]],
      **kwargs,
  ):
    """`objective.gkd_loss` of the student with `params` on the batch's objective features."""
    return objective.gkd_loss(
        config,
        self.policy(self.module, params),
        self.teacher_policy(flax_mutables),
        self.objective_batch(batch),
        rng,
        eos_id=self._eos_id,
        teacher_groups=self._teacher_groups(),
        **kwargs,
    )

  def loss_fn(
      self,
      params: PyTree,
      batch: Batch,
      dropout_rng: Optional[Array],
      flax_mutables: Optional[Mapping[str, Any]] = None,
      *,
      step: Optional[Array] = None,
  ):
    """One GKD training step's loss (`objective.gkd_loss`).

    Args:
      params: the student's params.
      batch: the model's features (`FEATURE_CONVERTER_CLS`).
      dropout_rng: the step key; it drives dropout, the lambda coin and sampling.
      flax_mutables: {'teacher': teacher params} (and {'reward_model': ...} with a model
        reward); returned unchanged (T5X's convention).
      step: the training step, needed by a lambda schedule that changes over training.

    Returns:
      (loss, metrics) without flax_mutables, (loss, (metrics, flax_mutables)) with them.
    """
    if dropout_rng is None:
      raise ValueError(
          f'{type(self).__name__}.loss_fn needs the step rng (dropout_rng): it '
          'draws the lambda coin and the on-policy samples from it. Use eval_fn '
          'for evaluation.'
      )
    loss, stats = self._gkd_loss(
        self._objective(flax_mutables),
        params,
        batch,
        dropout_rng,
        flax_mutables,
        step=step,
        student_dropout=self.module.config.dropout_rate > 0,
    )
    metrics = self._metrics(loss, stats)
    if flax_mutables is None:
      return loss, metrics
    return loss, (metrics, flax_mutables)

  def eval_fn(
      self, params: PyTree, batch: Batch, flax_mutables: Optional[Mapping[str, Any]] = None
  ):
    """The divergence on the batch's own targets, deterministically (no dropout, no sampling),
    so that validation losses compare across lambda and methods: the exact reverse KL for the
    sampled-token estimator, the targets' cross-entropy for an offline teacher (an evaluation
    task has no stored teacher log-probs). Returns (loss, metrics)."""
    offline = self.gkd.offline_teacher
    # `replace` passes every field explicitly, so no gin binding of GKDConfig leaks in.
    eval_config = dataclasses.replace(
        self.gkd,
        divergence='cross_entropy' if offline else self.gkd.exact_divergence,
        teacher_top_k=None if offline else self.gkd.teacher_top_k,
        offline_teacher=False,
        lmbda=0.0,
        fixed_data='targets',
        alpha=1.0,
        reward=None,
        baseline='batch_mean',
        num_samples_per_input=1,
    )
    loss, stats = self._gkd_loss(
        eval_config, params, batch, jax.random.PRNGKey(0), flax_mutables, student_dropout=False
    )
    return loss, self._metrics(loss, stats)

  @property
  def has_on_policy_divergence(self) -> bool:
    """Whether `on_policy_eval_fn` applies: a teacher, and a divergence to it (not SFT's
    cross-entropy)."""
    return self.has_teacher and self.gkd.divergence != 'cross_entropy'

  def on_policy_eval_fn(
      self,
      params: PyTree,
      batch: Batch,
      rng: Array,
      flax_mutables: Optional[Mapping[str, Any]] = None,
  ) -> MetricsMap:
    """The objective's divergence on the student's own samples of the batch's inputs.

    y ~ p_S(. | x) at the objective's sampling temperature (1 in the paper), no dropout, then
    D(p_T || p_S)(y | x) (Eq. 2) averaged over the batch's real rows: what on-policy training
    minimizes, and what the student meets at inference; it can differ from the divergence on
    the targets (`eval_fn`) when the student's samples leave the data's distribution.

    Returns:
      {'on_policy_divergence', 'on_policy_sample_length', 'on_policy_eos_rate',
       'on_policy_teacher_entropy', 'on_policy_student_entropy': Average}, with several
      teachers also each teacher's divergence and entropies ('on_policy_divergence/<teacher>',
      ...); the entropies are
      the models' mean next-token entropies on those samples (compare the evaluation's
      'teacher_entropy' on the targets).
    """
    if not self.has_on_policy_divergence:
      raise ValueError(
          f'{type(self).__name__}.on_policy_eval_fn needs a teacher and a '
          'divergence other than cross_entropy; this model has divergence '
          f'{self.gkd.divergence!r}.'
      )
    config = dataclasses.replace(
        self.gkd,
        divergence=self.gkd.exact_divergence,
        lmbda=1.0,
        fixed_data='targets',
        alpha=1.0,
        reward=None,
        baseline='batch_mean',
        num_samples_per_input=1,
    )
    _, stats = self._gkd_loss(config, params, batch, rng, flax_mutables, student_dropout=False)
    stats['sample_length'] = stats.pop('sequence_length')
    reported = ('divergence', 'sample_length', 'eos_rate', 'teacher_entropy', 'student_entropy')
    return {
        f'on_policy_{name}': average(value, _count(stats, name))
        for name, value in stats.items()
        if name.split('/')[0] in reported
    }

  # --------------------------------------------------------------------------- inference

  def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False):
    """[B] log-likelihood under the student of each target sequence (sum over its weighted
    positions). `return_intermediates` is not supported."""
    if return_intermediates:
      raise ValueError(f'{type(self).__name__}.score_batch does not return intermediates.')
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
    logits = self._compute_logits(params, batch)  # pytype: disable=attribute-error
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return jnp.sum(log_probs * weights, axis=-1)

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[Array] = None) -> Array:
    return self.predict_batch_with_aux(params, batch, rng)[0]

  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Batch,
      rng: Optional[Array] = None,
      decoder_params: Optional[Mapping[str, Any]] = None,
      return_all_decodes: bool = False,
      num_decodes: int = 1,
      prompt_with_targets: bool = False,
  ):
    """Decodes the student's outputs for the batch's inputs.

    The decoding length is that of the objective's targets (`objective_batch`).
    `decoder_params` may override `temperature`, `topk`, `topp` (sampling) and `alpha` (beam
    search) for this call.

    Returns:
      (tokens [B, L] int32, {'scores': [B] float32}): the best beam's tokens and its
      length-penalized log probability, or one sample and its log probability; with
      return_all_decodes and beam search, tokens [B, K, L] and scores [B, K].
    """
    if prompt_with_targets:
      raise ValueError(
          f'{type(self).__name__} decodes from the inputs only: '
          'prompt_with_targets is not supported.'
      )
    decoder_params = dict(decoder_params or {})
    student = self.policy(self.module, params)
    features = self.objective_batch(batch)
    inputs = features['encoder_input_tokens']
    length = features['decoder_target_tokens'].shape[1]
    cache, decode_step = student.start_sampling(student.read_prompt(inputs), length)
    common = dict(batch_size=inputs.shape[0], max_decode_length=length, eos_id=self._eos_id)
    if self.decode_method == 'beam':
      beam_size = max(self.beam_size, num_decodes)
      out = decoding.beam_search(
          decode_step,
          cache,
          beam_size=beam_size,
          alpha=decoder_params.get('alpha', self.beam_alpha),
          **common,
      )
      if return_all_decodes:
        return out.tokens, {'scores': out.scores}
      return out.tokens[:, 0], {'scores': out.scores[:, 0]}
    if num_decodes != 1 or return_all_decodes:
      raise ValueError('num_decodes > 1 and return_all_decodes need decode_method="beam".')
    if self.decode_method == 'greedy':
      out = decoding.greedy_decode(decode_step, cache, forcing=self._forcing, **common)
      return out.tokens, {'scores': out.log_probs}
    if rng is None:
      raise ValueError('Sampling (decode_method="sample") needs an explicit rng.')
    out = decoding.temperature_sample(
        decode_step,
        cache,
        rng=rng,
        temperature=decoder_params.get('temperature', self.decode_temperature),
        top_k=decoder_params.get('topk', self.decode_top_k),
        top_p=decoder_params.get('topp', self.decode_top_p),
        forcing=self._forcing,
        **common,
    )
    return out.tokens, {'scores': out.log_probs}


@gin.configurable
class GKDModel(GKDModelBase, _EncoderDecoderBase):
  """Student, teacher and GKD settings behind T5X's encoder-decoder model protocol.

  Attributes:
    module: the student `network.Transformer`.
    teacher_module: the teacher `network.Transformer` (None for SFT, which needs none).
    input_vocabulary, output_vocabulary: seqio vocabularies of the task.
    optimizer_def: the optimizer, for T5X's trainer (the standalone trainer builds its own).
    gkd: the objective's settings.
    decode_method: 'greedy', 'sample' or 'beam', for `predict_batch_with_aux`.
    decode_temperature, decode_top_k, decode_top_p: for decode_method='sample'.
    beam_size, beam_alpha: for decode_method='beam'.
    calculator: with greedy or sampled decoding, complete every arithmetic annotation
      '<<expr=' the student opens with the calculator's result (`gkd_t5x.calculator`; GSM8K's
      "accuracy with calculator").
    teachers: several teachers instead of `teacher_module` ({name: `teachers.Teacher`}, each
      with its tasks, checkpoint and temperature; module `gkd_t5x.teachers`): each scores
      only its own tasks' rows of a batch (`routing`, which the runner sets).
  """

  def __init__(
      self,
      module: network.Transformer,
      teacher_module: Optional[network.Transformer],
      input_vocabulary: vocabularies.Vocabulary,
      output_vocabulary: vocabularies.Vocabulary,
      optimizer_def: Any = None,
      gkd: objective.GKDConfig = objective.GKDConfig(),
      decode_method: str = 'greedy',
      decode_temperature: float = 1.0,
      decode_top_k: int = 0,
      decode_top_p: float = 1.0,
      beam_size: int = 4,
      beam_alpha: float = 0.6,
      calculator: bool = False,
      teachers: Optional[Mapping[str, teachers_lib.Teacher]] = None,
  ):
    self._configure(
        module,
        teacher_module,
        input_vocabulary,
        output_vocabulary,
        optimizer_def,
        gkd,
        decode_method,
        decode_temperature,
        decode_top_k,
        decode_top_p,
        beam_size,
        beam_alpha,
        calculator,
        teachers,
    )

  @property
  def FEATURE_CONVERTER_CLS(self):  # noqa: N802  (T5X's name)
    """`feature_converters.EncDecFeatureConverter` (seqio's, with a task's own loss weights), the
    features `loss_fn` and `predict_batch` take.

    Read by the data layers (T5X's and this project's), which import seqio; looked up only then,
    so that the model itself runs where seqio is not installed.
    """
    from gkd_t5x import feature_converters

    return feature_converters.EncDecFeatureConverter

  def policy(self, module: network.Transformer, params: PyTree) -> objective.Policy:
    return bind(module, params)

  def objective_batch(self, batch: Batch) -> Batch:
    """EncDec features are the objective's own."""
    return batch

  def _init_network(
      self,
      module: network.Transformer,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
      input_types: Mapping[str, Any],
  ) -> Dict[str, Any]:
    return _init_encoder_decoder(module, rng, input_shapes, input_types)

  def _compute_logits(
      self,
      params: PyTree,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
      mutable: Any = False,
      other_variables: Optional[PyTree] = None,
  ) -> Array:
    """[B, L, V] student logits of the batch's targets under teacher forcing (T5X's hook)."""
    if mutable or other_variables:
      raise ValueError('GKDModel._compute_logits takes no mutable or other variables.')
    student = bind(self.module, params)
    targets = batch['decoder_target_tokens']
    prompt = student.read_prompt(
        batch['encoder_input_tokens'],
        segment_ids=batch.get('encoder_segment_ids'),
        dropout_rng=dropout_rng,
    )
    return student.logits(
        prompt,
        batch.get('decoder_input_tokens', objective.shift_right(targets)),
        targets,
        segment_ids=batch.get('decoder_segment_ids'),
        dropout_rng=dropout_rng,
    )


@gin.configurable
class GKDDecoderOnlyModel(GKDModelBase, _DecoderOnlyBase):
  """Student, teacher and GKD settings behind T5X's decoder-only model protocol.

  Its features are seqio's prefix-LM features (`seqio.PrefixLMFeatureConverter`: each row the
  inputs then the targets, 'decoder_causal_attention' marking the inputs and the start token,
  'decoder_loss_weights' the targets), as T5X's `DecoderOnlyModel` reads them. The objective
  reads each row as a left-padded prompt and the continuation after it
  (`split_prefix_lm_batch`), so every method of `GKDConfig` runs unchanged: on-policy samples
  are the student's continuations of the prompt, the teacher scores prompt + continuation, and
  only continuation positions carry loss.

  Attributes (those of `GKDModel` otherwise):
    module: the student `decoder_only.DecoderOnlyTransformer`.
    teacher_module: the teacher (same vocabulary; None for SFT).
    teachers: several decoder-only teachers instead of `teacher_module` (as `GKDModel`'s).
    vocabulary: the task's seqio vocabulary, of inputs and targets alike (T5X's argument).
    inputs_bidirectional_attention: prompts attend to themselves in both directions (a prefix
      LM); False: a causal LM over inputs and targets. T5X's flag; it applies to student and
      teacher alike.
    task_feature_lengths: {'inputs': I, 'targets': L}, the task's lengths (gin:
      TASK_FEATURE_LENGTHS), which split a T = I + L row into a prompt of I inputs and a
      continuation of L targets. None, or a batch of another length (T5X's evaluation with
      lengths computed from the data), splits each row into a prompt and a continuation of T
      each: right for any row, at about twice the cost.
  """

  def __init__(
      self,
      module: decoder_only.DecoderOnlyTransformer,
      teacher_module: Optional[decoder_only.DecoderOnlyTransformer],
      vocabulary: vocabularies.Vocabulary,
      optimizer_def: Any = None,
      gkd: objective.GKDConfig = objective.GKDConfig(),
      inputs_bidirectional_attention: bool = False,
      task_feature_lengths: Optional[Mapping[str, int]] = None,
      decode_method: str = 'greedy',
      decode_temperature: float = 1.0,
      decode_top_k: int = 0,
      decode_top_p: float = 1.0,
      beam_size: int = 4,
      beam_alpha: float = 0.6,
      calculator: bool = False,
      teachers: Optional[Mapping[str, teachers_lib.Teacher]] = None,
  ):
    for role, network_module in (('module', module), ('teacher_module', teacher_module)):
      if network_module is not None and not isinstance(
          network_module.config, decoder_only.DecoderOnlyConfig
      ):
        raise ValueError(
            f'GKDDecoderOnlyModel.{role} must be a decoder_only.'
            'DecoderOnlyTransformer of a DecoderOnlyConfig, got a '
            f'{type(network_module).__name__} of a '
            f'{type(network_module.config).__name__}.'
        )
    if task_feature_lengths is not None:
      task_feature_lengths = dict(task_feature_lengths)
      if set(task_feature_lengths) != {'inputs', 'targets'}:
        raise ValueError(
            'GKDDecoderOnlyModel.task_feature_lengths must have the features '
            f"'inputs' and 'targets', got {sorted(task_feature_lengths)}."
        )
    self._configure(
        module,
        teacher_module,
        vocabulary,
        vocabulary,
        optimizer_def,
        gkd,
        decode_method,
        decode_temperature,
        decode_top_k,
        decode_top_p,
        beam_size,
        beam_alpha,
        calculator,
        teachers,
    )
    # T5X's attribute name, read by T5X's own DecoderOnlyModel helpers.
    self._inputs_bidirectional_attention = inputs_bidirectional_attention
    self.task_feature_lengths = task_feature_lengths

  @property
  def inputs_bidirectional_attention(self) -> bool:
    return self._inputs_bidirectional_attention

  @property
  def FEATURE_CONVERTER_CLS(self):  # noqa: N802  (T5X's name)
    """`feature_converters.PrefixLMFeatureConverter` (seqio's; looked up only by the data
    layers, as `GKDModel`'s)."""
    from gkd_t5x import feature_converters

    return feature_converters.PrefixLMFeatureConverter

  def policy(self, module: decoder_only.DecoderOnlyTransformer, params: PyTree) -> objective.Policy:
    return bind_decoder_only(
        module, params, inputs_bidirectional_attention=self._inputs_bidirectional_attention
    )

  def split_widths(self, row_length: int) -> Tuple[int, int]:
    """(I, L): the prompt's inputs and the continuation's width for rows of T columns."""
    lengths = self.task_feature_lengths
    if lengths and lengths['inputs'] + lengths['targets'] == row_length:
      return lengths['inputs'], lengths['targets']
    if lengths:
      logging.warning(
          'GKDDecoderOnlyModel: rows of %d columns are not the task_feature_lengths'
          ' %s; splitting them into a prompt and a continuation of %d each.',
          row_length,
          lengths,
          row_length,
      )
    return row_length, row_length

  def objective_batch(self, batch: Batch) -> Batch:
    """Prefix-LM rows [B, T] -> the objective's left-padded inputs and targets."""
    widths = self.split_widths(batch['decoder_target_tokens'].shape[1])
    return split_prefix_lm_batch(batch, *widths)

  def _init_network(
      self,
      module: decoder_only.DecoderOnlyTransformer,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
      input_types: Mapping[str, Any],
  ) -> Dict[str, Any]:
    """Variables from the prefix-LM row shape, as T5X's DecoderOnlyModel initializes."""
    tokens = jnp.ones(
        input_shapes['decoder_input_tokens'], input_types.get('decoder_input_tokens', jnp.int32)
    )
    return module.init(rng, tokens, tokens, enable_dropout=False)

  def _compute_logits(
      self,
      params: PyTree,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
      mutable: Any = False,
      other_variables: Optional[PyTree] = None,
  ) -> Array:
    """[B, T, V] student logits of the prefix-LM rows under teacher forcing (T5X's hook); at
    the targets' columns they are the policy's continuation logits."""
    if mutable or other_variables:
      raise ValueError('GKDDecoderOnlyModel._compute_logits takes no mutable or other variables.')
    prefix = batch['decoder_causal_attention'] if self._inputs_bidirectional_attention else None
    return self.module.apply(
        {'params': params},
        batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        batch.get('decoder_segment_ids'),
        batch.get('decoder_positions'),
        prefix,
        **_dropout(dropout_rng),
    )
