"""The GKD model on T5X's `BaseModel` protocol.

`GKDModel` holds the student network, the frozen teacher network and the objective's settings
(`objective.GKDConfig`), and offers what T5X's trainer, evaluator and inference expect:
`loss_fn`, `eval_fn`, `score_batch`, `predict_batch(_with_aux)` and `get_initial_variables`.
Where t5x is importable it is a `t5x.models.EncoderDecoderModel`, so `t5x/train.py`,
`t5x/eval.py` and `t5x/infer.py` take it as they take T5X's own models; without t5x the same
class serves this project's trainer.

The teacher's params are not model params: they live in the variable collection `teacher`
(with their logical axes in `teacher_axes`), which T5X's train state carries as
`flax_mutables` and passes to `loss_fn(params, batch, dropout_rng, flax_mutables)`. They are
therefore inputs of the jitted step, sharded by the same logical axis rules as the student,
outside the optimizer, and returned unchanged, so they are never updated. A model reward
(`rewards.EntailmentReward`) keeps its classifier's params the same way, in `reward_model`.

Shape letters: B batch, I input length, L target length, E embedding, V vocabulary.
"""

import dataclasses
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import gin
import jax
import jax.numpy as jnp

from gkd_t5x import averages
from gkd_t5x import calculator as calculator_lib
from gkd_t5x import decoding
from gkd_t5x import network
from gkd_t5x import objective
from gkd_t5x import vocabularies

Array = jnp.ndarray
PyTree = Any
Batch = Mapping[str, Array]
MetricsMap = Dict[str, Any]  # {name: Average}

TEACHER_COLLECTION = 'teacher'
REWARD_MODEL_COLLECTION = 'reward_model'
# The frozen networks' collections, with the gin macro of the checkpoint each is restored from.
FROZEN_COLLECTIONS = {TEACHER_COLLECTION: 'TEACHER_CHECKPOINT_PATH',
                      REWARD_MODEL_COLLECTION: 'REWARD_CHECKPOINT_PATH'}
DECODE_METHODS = ('greedy', 'sample', 'beam')

try:
  from t5x import models as t5x_models  # pylint: disable=g-import-not-at-top
  # T5X's trainer merges only clu metrics (`t5x.metrics.is_metric_obj`); t5x depends on clu.
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top
  _ModelBase = t5x_models.EncoderDecoderModel
  _AVERAGE = clu_metrics.Average
except ImportError:  # t5x is not on PyPI; the standalone trainer needs none of it.
  _ModelBase = object
  _AVERAGE = averages.Average


class EncodedPrompt(NamedTuple):
  """A `network.Transformer`'s prompt state: the encoder output [B, I, E], with the input
  tokens [B, I] and their segment ids [B, I] (None unpacked) that cross-attention masks by."""
  encoded: Array
  tokens: Array
  segment_ids: Optional[Array]


def _dropout(dropout_rng: Optional[Array]) -> Dict[str, Any]:
  return dict(enable_dropout=dropout_rng is not None,
              rngs=None if dropout_rng is None else {'dropout': dropout_rng})


def bind(module: network.Transformer, params: PyTree) -> objective.Policy:
  """Binds `params` to a `network.Transformer` as the objective's `Policy`, whose prompt state
  is an `EncodedPrompt`."""
  variables = {'params': params}
  transformer = network.Transformer

  def read_prompt(inputs, *, segment_ids=None, dropout_rng=None):
    encoded = module.apply(variables, inputs, segment_ids, method=transformer.encode,
                           **_dropout(dropout_rng))
    return EncodedPrompt(encoded, inputs, segment_ids)

  def logits(prompt, continuation_inputs, continuation, *, segment_ids=None, dropout_rng=None):
    return module.apply(variables, prompt.encoded, prompt.tokens, continuation_inputs,
                        continuation, prompt.segment_ids, segment_ids, method=transformer.decode,
                        **_dropout(dropout_rng))

  def decode_step(tokens_Bx1, cache, position):
    return module.apply(variables, tokens_Bx1, cache, position, method=transformer.decode_step)

  def start_sampling(prompt, max_decode_length):
    cache = module.apply(variables, prompt.encoded, prompt.tokens, max_decode_length,
                         method=transformer.init_cache)
    return cache, decode_step

  return objective.Policy(read_prompt, logits, start_sampling)


def average(value: Array, count: Any = 1):
  """The step metric of `value`, the mean of `count` items: an `averages.Average` (clu's
  under T5X, whose trainer needs clu metrics)."""
  return averages.weighted(_AVERAGE, value, count)


@gin.configurable
class GKDModel(_ModelBase):
  """Student, teacher and GKD settings behind T5X's model protocol.

  T5X's constructor is not called: its loss settings (label smoothing, z-loss, loss
  normalization) and `decode_fn` belong to its cross-entropy model, and are replaced here by
  `gkd` and the decoding attributes below. The attributes T5X reads (`module`,
  `optimizer_def`, the vocabularies, `FEATURE_CONVERTER_CLS`) are set as T5X sets them.

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
  """

  def __init__(self, module: network.Transformer,
               teacher_module: Optional[network.Transformer],
               input_vocabulary: vocabularies.Vocabulary,
               output_vocabulary: vocabularies.Vocabulary,
               optimizer_def: Any = None, gkd: objective.GKDConfig = objective.GKDConfig(),
               decode_method: str = 'greedy', decode_temperature: float = 1.0,
               decode_top_k: int = 0, decode_top_p: float = 1.0, beam_size: int = 4,
               beam_alpha: float = 0.6, calculator: bool = False):
    if teacher_module is None and gkd.needs_teacher:
      raise ValueError(f'GKDModel.teacher_module is None, but divergence {gkd.divergence!r} '
                       f'with fixed_data {gkd.fixed_data!r} needs a teacher.')
    student_vocab = module.config.vocab_size
    if teacher_module is not None and teacher_module.config.vocab_size != student_vocab:
      raise ValueError(
          'Teacher and student vocabularies differ: teacher T5Config.vocab_size = '
          f'{teacher_module.config.vocab_size}, student T5Config.vocab_size = {student_vocab}. '
          'Token-level distillation needs one shared vocabulary.')
    for name, vocab in (('input_vocabulary', input_vocabulary),
                        ('output_vocabulary', output_vocabulary)):
      if vocab.vocab_size > student_vocab:
        raise ValueError(f'{name} has {vocab.vocab_size} tokens, more than the network\'s '
                         f'T5Config.vocab_size = {student_vocab}.')
    if decode_method not in DECODE_METHODS:
      raise ValueError(f'GKDModel.decode_method must be one of {DECODE_METHODS}, got '
                       f'{decode_method!r}.')
    if calculator and decode_method == 'beam':
      raise ValueError('GKDModel.calculator works with decode_method "greedy" or "sample", '
                       'not "beam".')
    self.module = module
    self.teacher_module = teacher_module
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
    self._eos_id = output_vocabulary.eos_id
    self._forcing = (calculator_lib.calculator_forcing(output_vocabulary, student_vocab)
                     if calculator else None)

  @property
  def input_vocabulary(self) -> vocabularies.Vocabulary:
    return self._input_vocabulary

  @property
  def output_vocabulary(self) -> vocabularies.Vocabulary:
    return self._output_vocabulary

  @property
  def FEATURE_CONVERTER_CLS(self):  # pylint: disable=invalid-name
    """`feature_converters.EncDecFeatureConverter` (seqio's, with a task's own loss weights), the
    features `loss_fn` and `predict_batch` take.

    Read by the data layers (T5X's and this project's), which import seqio; looked up only then,
    so that the model itself runs where seqio is not installed.
    """
    from gkd_t5x import feature_converters  # pylint: disable=g-import-not-at-top
    return feature_converters.EncDecFeatureConverter

  # --------------------------------------------------------------------------- initialization

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
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

    def init(module, key, shapes):
      inputs = {name: jnp.ones(shapes[name], input_types.get(name, jnp.int32))
                for name in ('encoder_input_tokens', 'decoder_input_tokens',
                             'decoder_target_tokens')}
      return module.init(key, inputs['encoder_input_tokens'], inputs['decoder_input_tokens'],
                         inputs['decoder_target_tokens'], enable_dropout=False)

    variables = dict(init(self.module, student_rng, input_shapes))
    frozen = [(TEACHER_COLLECTION, self.teacher_module, teacher_rng, input_shapes)]
    if self.reward_module is not None:
      frozen.append((REWARD_MODEL_COLLECTION, self.reward_module, reward_rng,
                     self.gkd.reward.input_shapes()))
    for collection, module, key, shapes in frozen:
      if module is not None:
        frozen_variables = init(module, key, shapes)
        variables[collection] = frozen_variables['params']
        variables[collection + '_axes'] = frozen_variables['params_axes']
    return variables

  @property
  def reward_module(self) -> Optional[network.Transformer]:
    """The network of a model reward (`rewards.EntailmentReward`), or None."""
    return getattr(self.gkd.reward, 'module', None)

  def sequence_reward(self, batch: Batch, tokens: Array,
                      flax_mutables: Optional[Mapping[str, Any]] = None) -> Array:
    """[B] float32 reward (`GKDConfig.reward`) of decoded tokens [B, L] for the batch's inputs.

    `tokens` count up to and including their first EOS (as `predict_batch` returns them); the
    batch's targets are the references of a reward that compares (exact match, ROUGE).
    """
    reward = self._objective(flax_mutables).reward
    if reward is None:
      raise ValueError('GKDModel.sequence_reward: the objective has no reward (GKDConfig.reward).')
    weights = decoding.weights_through_first_eos(tokens, self._eos_id) * (tokens > 0)
    return reward(batch['encoder_input_tokens'], tokens, weights, batch['decoder_target_tokens'],
                  batch['decoder_loss_weights'])

  def _objective(self, flax_mutables: Optional[Mapping[str, Any]]) -> objective.GKDConfig:
    """The objective's settings, a model reward's params bound from `flax_mutables`."""
    if self.reward_module is None:
      return self.gkd
    if not flax_mutables or REWARD_MODEL_COLLECTION not in flax_mutables:
      raise ValueError(f'This GKD model\'s reward has a network of its own; its params must '
                       f'reach the step as flax_mutables[{REWARD_MODEL_COLLECTION!r}].')
    return dataclasses.replace(
        self.gkd, reward=self.gkd.reward.bind(flax_mutables[REWARD_MODEL_COLLECTION]))

  # --------------------------------------------------------------------------- training

  def _teacher(self, flax_mutables: Optional[Mapping[str, Any]]):
    if self.teacher_module is None:
      return None
    if not flax_mutables or TEACHER_COLLECTION not in flax_mutables:
      raise ValueError(f'This GKD model has a teacher; its params must reach the step as '
                       f'flax_mutables[{TEACHER_COLLECTION!r}].')
    return bind(self.teacher_module, flax_mutables[TEACHER_COLLECTION])

  def _metrics(self, loss: Array, stats: Mapping[str, Array]) -> MetricsMap:
    """{name: Average} of one step: each statistic a mean over the step's real sequences (so
    that steps and evaluation batches merge into per-sequence means), except the per-step
    values on_policy_fraction, lmbda and num_sequences."""
    num_real = stats['num_sequences']
    per_step = ('on_policy', 'lmbda', 'num_sequences')
    metrics = {name: average(value, 1 if name in per_step else num_real)
               for name, value in stats.items()}
    metrics['loss'] = average(loss, num_real)
    metrics['on_policy_fraction'] = metrics.pop('on_policy')
    if self.gkd.may_be_on_policy:
      # Sample statistics average over on-policy steps only (count 0 on the others).
      on_policy = stats['on_policy'].astype(jnp.int32)
      metrics['sample_length'] = average(stats['sequence_length'], on_policy * num_real)
      metrics['sample_eos_rate'] = average(stats['eos_rate'], on_policy * num_real)
    return metrics

  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array],
              flax_mutables: Optional[Mapping[str, Any]] = None, *,
              step: Optional[Array] = None):
    """One GKD training step's loss (`objective.gkd_loss`).

    Args:
      params: the student's params.
      batch: EncDec features ('encoder_input_tokens' [B, I], 'decoder_target_tokens' [B, L],
        'decoder_input_tokens', 'decoder_loss_weights', ...).
      dropout_rng: the step key; it drives dropout, the lambda coin and sampling.
      flax_mutables: {'teacher': teacher params} (and {'reward_model': ...} with a model
        reward); returned unchanged (T5X's convention).
      step: the training step, needed by a lambda schedule that changes over training.

    Returns:
      (loss, metrics) without flax_mutables, (loss, (metrics, flax_mutables)) with them.
    """
    if dropout_rng is None:
      raise ValueError('GKDModel.loss_fn needs the step rng (dropout_rng): it draws the lambda '
                       'coin and the on-policy samples from it. Use eval_fn for evaluation.')
    loss, stats = objective.gkd_loss(
        self._objective(flax_mutables), bind(self.module, params), self._teacher(flax_mutables),
        batch, dropout_rng, step=step, student_dropout=self.module.config.dropout_rate > 0,
        eos_id=self._eos_id)
    metrics = self._metrics(loss, stats)
    if flax_mutables is None:
      return loss, metrics
    return loss, (metrics, flax_mutables)

  def eval_fn(self, params: PyTree, batch: Batch,
              flax_mutables: Optional[Mapping[str, Any]] = None):
    """The divergence on the batch's own targets, deterministically (no dropout, no sampling),
    so that validation losses compare across lambda and methods. Returns (loss, metrics)."""
    # `replace` passes every field explicitly, so no gin binding of GKDConfig leaks in.
    eval_config = dataclasses.replace(
        self.gkd, lmbda=0.0, fixed_data='targets', alpha=1.0, reward=None,
        baseline='batch_mean', num_samples_per_input=1)
    loss, stats = objective.gkd_loss(
        eval_config, bind(self.module, params), self._teacher(flax_mutables), batch,
        jax.random.PRNGKey(0), student_dropout=False, eos_id=self._eos_id)
    return loss, self._metrics(loss, stats)

  @property
  def has_on_policy_divergence(self) -> bool:
    """Whether `on_policy_eval_fn` applies: a teacher, and a divergence to it (not SFT's
    cross-entropy)."""
    return self.teacher_module is not None and self.gkd.divergence != 'cross_entropy'

  def on_policy_eval_fn(self, params: PyTree, batch: Batch, rng: Array,
                        flax_mutables: Optional[Mapping[str, Any]] = None) -> MetricsMap:
    """The objective's divergence on the student's own samples of the batch's inputs.

    y ~ p_S(. | x) at the objective's sampling temperature (1 in the paper), no dropout, then
    D(p_T || p_S)(y | x) (Eq. 2) averaged over the batch's real rows: what on-policy training
    minimizes, and what the student meets at inference; it can differ from the divergence on
    the targets (`eval_fn`) when the student's samples leave the data's distribution.

    Returns:
      {'on_policy_divergence', 'on_policy_sample_length', 'on_policy_eos_rate',
       'on_policy_teacher_entropy', 'on_policy_student_entropy': Average}: the entropies are
      the models' mean next-token entropies on those samples (compare the evaluation's
      'teacher_entropy' on the targets).
    """
    if not self.has_on_policy_divergence:
      raise ValueError('GKDModel.on_policy_eval_fn needs a teacher and a divergence other than '
                       f'cross_entropy; this model has divergence {self.gkd.divergence!r}.')
    config = dataclasses.replace(
        self.gkd, lmbda=1.0, fixed_data='targets', alpha=1.0, reward=None,
        baseline='batch_mean', num_samples_per_input=1)
    _, stats = objective.gkd_loss(
        config, bind(self.module, params), self._teacher(flax_mutables), batch, rng,
        student_dropout=False, eos_id=self._eos_id)
    num_real = stats['num_sequences']
    return {f'on_policy_{name}': average(stats[stat], num_real)
            for name, stat in (('divergence', 'divergence'), ('sample_length', 'sequence_length'),
                               ('eos_rate', 'eos_rate'), ('teacher_entropy', 'teacher_entropy'),
                               ('student_entropy', 'student_entropy'))}

  # --------------------------------------------------------------------------- inference

  def _compute_logits(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array] = None,
                      mutable: Any = False, other_variables: Optional[PyTree] = None) -> Array:
    """[B, L, V] student logits of the batch's targets under teacher forcing (T5X's hook)."""
    if mutable or other_variables:
      raise ValueError('GKDModel._compute_logits takes no mutable or other variables.')
    student = bind(self.module, params)
    targets = batch['decoder_target_tokens']
    prompt = student.read_prompt(batch['encoder_input_tokens'],
                                 segment_ids=batch.get('encoder_segment_ids'),
                                 dropout_rng=dropout_rng)
    return student.logits(prompt, batch.get('decoder_input_tokens', objective.shift_right(targets)),
                          targets, segment_ids=batch.get('decoder_segment_ids'),
                          dropout_rng=dropout_rng)

  def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False):
    """[B] log-likelihood under the student of each target sequence (sum over its weighted
    positions). `return_intermediates` is not supported."""
    if return_intermediates:
      raise ValueError('GKDModel.score_batch does not return intermediates.')
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
    logits = self._compute_logits(params, batch)
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return jnp.sum(log_probs * weights, axis=-1)

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[Array] = None) -> Array:
    return self.predict_batch_with_aux(params, batch, rng)[0]

  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False):
    """Decodes the student's outputs for `batch['encoder_input_tokens']`.

    The decoding length is the batch's decoder feature length. `decoder_params` may override
    `temperature`, `topk`, `topp` (sampling) and `alpha` (beam search) for this call.

    Returns:
      (tokens [B, L] int32, {'scores': [B] float32}): the best beam's tokens and its
      length-penalized log probability, or one sample and its log probability; with
      return_all_decodes and beam search, tokens [B, K, L] and scores [B, K].
    """
    if prompt_with_targets:
      raise ValueError('GKDModel is an encoder-decoder: prompt_with_targets is not supported.')
    decoder_params = dict(decoder_params or {})
    student = bind(self.module, params)
    inputs = batch['encoder_input_tokens']
    length = batch['decoder_input_tokens'].shape[1]
    cache, decode_step = student.start_sampling(student.read_prompt(inputs), length)
    common = dict(batch_size=inputs.shape[0], max_decode_length=length, eos_id=self._eos_id)
    if self.decode_method == 'beam':
      beam_size = max(self.beam_size, num_decodes)
      out = decoding.beam_search(decode_step, cache, beam_size=beam_size,
                                 alpha=decoder_params.get('alpha', self.beam_alpha), **common)
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
        decode_step, cache, rng=rng,
        temperature=decoder_params.get('temperature', self.decode_temperature),
        top_k=decoder_params.get('topk', self.decode_top_k),
        top_p=decoder_params.get('topp', self.decode_top_p), forcing=self._forcing, **common)
    return out.tokens, {'scores': out.log_probs}
