"""The GKD objective (paper Section 3, Algorithm 1) and RL + GKD (paper Eq. 5).

  L_GKD(theta) = (1 - lambda) E_{(x,y)~(X,Y)} [D(p_T || p_S)(y|x)]
                 + lambda E_{x~X} E_{y~p_S(.|x)} [D(p_T || p_S)(y|x)]

implemented as Algorithm 1 does it: one coin per step decides whether the whole batch is
on-policy (y sampled from the student, under stop_gradient) or fixed (the batch's targets, or
teacher samples for SeqKD). D(p_T || p_S)(y|x) is the token-level divergence averaged over the
sequence (Eq. 2). With `alpha < 1`, the loss adds the REINFORCE term of Eq. 5:

  minimize  alpha E_y[D(p_T || p_S)(y|x)] - (1 - alpha) E_y[r(y)],
  grad E_y[r(y)] ~ mean_b (r_b - baseline_b) grad log p_S(y_b | x_b).

Every method of the paper is a `GKDConfig` (see `gin/methods/`):

  SFT            lmbda=0, divergence='cross_entropy'
  supervised KD  lmbda=0, divergence='forward_kl'
  SeqKD          lmbda=0, fixed_data='teacher_samples', divergence='cross_entropy'
                 (or a seqio task of precomputed teacher outputs with the SFT config)
  ImitKD         lmbda=0.5 (or a non-increasing `LambdaSchedule`), divergence='forward_kl'
  f-distill      lmbda=0.5, fixed_data='teacher_samples', divergence='total_variation'
  GKD            lmbda in [0, 1], divergence in {forward_kl, reverse_kl, jsd}
  RL + GKD       lmbda=1, alpha in [0, 1), a reward

Randomness: the step rng is split once, `dropout_rng, coin_rng, sample_rng =
jax.random.split(rng, 3)`. The coin is a scalar drawn from `coin_rng`; under `jax.jit` over a
multi-host mesh the step rng is one global value, so every host takes the same branch.
`sample_rng` drives student sampling (or teacher sampling for SeqKD).

Shape letters: B batch, I input length, L target length, V vocabulary.
"""

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import gin
import jax
from jax import lax
import jax.numpy as jnp

from gkd_t5x import decoding
from gkd_t5x import divergences
from gkd_t5x import rewards as rewards_lib

Array = jnp.ndarray
Batch = Dict[str, Array]

DIVERGENCE_NAMES = tuple(sorted(divergences.DIVERGENCES)) + ('cross_entropy',)
FIXED_DATA_SOURCES = ('targets', 'teacher_samples')
BASELINES = ('batch_mean', 'per_input_mean')


class SequenceModel(NamedTuple):
  """An encoder-decoder with its params bound: what the objective needs of a network.

  encode(inputs [B, I], enable_dropout: bool, dropout_rng, encoder_segment_ids [B, I] | None)
      -> encoded [B, I, E]
  decode(encoded, inputs [B, I], decoder_inputs [B, L], targets [B, L], enable_dropout: bool,
         dropout_rng, encoder_segment_ids | None, decoder_segment_ids [B, L] | None)
      -> logits [B, L, V] float32
  init_cache(encoded, inputs [B, I], max_decode_length: int) -> cache
  decode_step: a `decoding.TokensToLogits`, (tokens [B, 1], cache, position) -> ([B, V], cache)
  """
  encode: Callable[..., Array]
  decode: Callable[..., Array]
  init_cache: Callable[..., Any]
  decode_step: decoding.TokensToLogits


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LambdaSchedule:
  """Student data fraction over training: lambda_k = start + (end - start) min(k / steps, 1).

  `end=None` (or end == start) is a constant schedule. ImitKD uses a non-increasing one.
  """
  start: float = 1.0
  end: Optional[float] = None
  transition_steps: int = 0

  def __post_init__(self):
    for name in ('start', 'end'):
      value = getattr(self, name)
      if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f'LambdaSchedule.{name} (lambda, the student data fraction) must be in '
                         f'[0, 1], got {value}.')
    if not self.is_constant and self.transition_steps < 1:
      raise ValueError('LambdaSchedule.transition_steps must be >= 1 when end != start, got '
                       f'{self.transition_steps}.')

  @property
  def is_constant(self) -> bool:
    return self.end is None or self.end == self.start

  def __call__(self, step: Optional[Array]) -> Array:
    """lambda at `step` (an int scalar; may be None for a constant schedule)."""
    if self.is_constant:
      return jnp.asarray(self.start, jnp.float32)
    if step is None:
      raise ValueError('A LambdaSchedule that changes over training needs the training step; '
                       'the standalone trainer passes it, under T5X use a constant lambda.')
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / self.transition_steps, 1.0)
    return self.start + (self.end - self.start) * progress


def _check_unit_interval(name: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'GKDConfig.{name} must be in [0, 1], got {value}.')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GKDConfig:
  """The settings of the GKD objective; every paper method is one of these (module docstring).

  Attributes:
    divergence: 'forward_kl', 'reverse_kl', 'jsd', 'total_variation', or 'cross_entropy'
      (on the sequence's own tokens: SFT and SeqKD; needs no teacher logits).
    beta: the JSD(beta) mixture weight (Eq. 1); used by 'jsd' only.
    lmbda: the student data fraction lambda in [0, 1], or a `LambdaSchedule`.
    fixed_data: what a non-on-policy step trains on: 'targets' (the batch's sequences) or
      'teacher_samples' (sampled from the teacher on the fly: SeqKD, f-distill).
    sampling_temperature: temperature of on-policy student sampling (the paper uses 1).
    sampling_top_k, sampling_top_p: optional truncation of student sampling (off by default).
    teacher_sampling_temperature: temperature of teacher samples for 'teacher_samples'
      (0 = greedy).
    teacher_temperature: softmax temperature of the teacher inside the divergence.
    student_temperature: softmax temperature of the student inside the divergence.
    max_decode_length: number of tokens sampled; None = the batch's target length.
    alpha: weight of the divergence in Eq. 5; alpha < 1 adds (1 - alpha) x the RL term and
      needs a reward and lmbda = 1.
    reward: the sequence reward of the RL term (see `rewards.Reward`).
    baseline: 'batch_mean' (mean reward of the batch) or 'per_input_mean' (leave-one-out mean
      of the other samples of the same input; needs num_samples_per_input > 1).
    num_samples_per_input: samples per input for on-policy steps with 'per_input_mean' (the
      inputs are repeated, so the step trains on batch x this many sequences).
  """
  divergence: str = 'forward_kl'
  beta: float = 0.5
  lmbda: Union[float, LambdaSchedule] = 1.0
  fixed_data: str = 'targets'
  sampling_temperature: float = 1.0
  sampling_top_k: int = 0
  sampling_top_p: float = 1.0
  teacher_sampling_temperature: float = 1.0
  teacher_temperature: float = 1.0
  student_temperature: float = 1.0
  max_decode_length: Optional[int] = None
  alpha: float = 1.0
  reward: Optional[rewards_lib.Reward] = None
  baseline: str = 'batch_mean'
  num_samples_per_input: int = 1

  def __post_init__(self):
    if self.divergence not in DIVERGENCE_NAMES:
      raise ValueError(f'GKDConfig.divergence must be one of {DIVERGENCE_NAMES}, got '
                       f'{self.divergence!r}.')
    _check_unit_interval('beta', self.beta)
    _check_unit_interval('alpha', self.alpha)
    if not isinstance(self.lmbda, LambdaSchedule):
      _check_unit_interval('lmbda', self.lmbda)
      object.__setattr__(self, 'lmbda', LambdaSchedule(start=float(self.lmbda)))
    if self.fixed_data not in FIXED_DATA_SOURCES:
      raise ValueError(f'GKDConfig.fixed_data must be one of {FIXED_DATA_SOURCES}, got '
                       f'{self.fixed_data!r}.')
    if self.baseline not in BASELINES:
      raise ValueError(f'GKDConfig.baseline must be one of {BASELINES}, got {self.baseline!r}.')
    for name in ('sampling_temperature', 'teacher_sampling_temperature'):
      if getattr(self, name) < 0:
        raise ValueError(f'GKDConfig.{name} must be >= 0 (0 = greedy), got '
                         f'{getattr(self, name)}.')
    for name in ('teacher_temperature', 'student_temperature'):
      if not getattr(self, name) > 0:
        raise ValueError(f'GKDConfig.{name} must be > 0, got {getattr(self, name)}.')
    if self.max_decode_length is not None and self.max_decode_length < 1:
      raise ValueError(f'GKDConfig.max_decode_length must be >= 1 or None, got '
                       f'{self.max_decode_length}.')
    if self.num_samples_per_input < 1:
      raise ValueError('GKDConfig.num_samples_per_input must be >= 1, got '
                       f'{self.num_samples_per_input}.')
    if self.divergence == 'cross_entropy' and self.may_be_on_policy:
      raise ValueError("divergence 'cross_entropy' trains on fixed sequences only: it needs "
                       f'lmbda = 0, got {self.lmbda}.')
    if self.uses_rl:
      if self.reward is None:
        raise ValueError(f'GKDConfig.alpha = {self.alpha} < 1 adds the RL term of Eq. 5, which '
                         'needs a reward (GKDConfig.reward).')
      if not (self.lmbda.is_constant and self.lmbda.start == 1.0):
        raise ValueError('RL + GKD (alpha < 1) trains on on-policy samples: it needs lmbda = 1, '
                         f'got {self.lmbda}.')
    if self.baseline == 'per_input_mean' and self.num_samples_per_input < 2:
      raise ValueError("baseline 'per_input_mean' needs num_samples_per_input >= 2, got "
                       f'{self.num_samples_per_input}.')

  @property
  def uses_rl(self) -> bool:
    return self.alpha < 1.0

  @property
  def may_be_on_policy(self) -> bool:
    return not (self.lmbda.is_constant and self.lmbda.start == 0.0)

  @property
  def always_on_policy(self) -> bool:
    return self.lmbda.is_constant and self.lmbda.start == 1.0

  @property
  def needs_teacher(self) -> bool:
    """False for SFT: cross-entropy on the batch's own targets never queries the teacher."""
    return self.divergence != 'cross_entropy' or self.fixed_data == 'teacher_samples'


class Sequences(NamedTuple):
  """The sequences a step trains on: tokens [B, L] int32, weights [B, L] float32."""
  tokens: Array
  weights: Array


def shift_right(tokens: Array, start_id: int = 0) -> Array:
  """[B, L] targets -> [B, L] decoder inputs: start_id, then the targets without the last."""
  return jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


def sample_sequences(model: SequenceModel, encoded: Array, inputs: Array, *, rng: Array,
                     length: int, max_decode_length: int, temperature: float, top_k: int = 0,
                     top_p: float = 1.0, eos_id: int = 1) -> Sequences:
  """Samples y ~ p(. | x) with a KV cache, under stop_gradient, padded to `length`.

  The padding token 0 is excluded from sampling: it is not a token a sequence may contain, and
  the teacher-forced pass treats it as padding.

  Args:
    model: the network that samples.
    encoded: [B, I, E] its encoder output (gradients are stopped here).
    inputs: [B, I] input tokens.
    rng: sampling key.
    length: L, the target length of the batch.
    max_decode_length: tokens to sample, <= L.
    temperature: sampling temperature (0 = greedy).
    top_k, top_p: truncation of the sampling distribution.
    eos_id: end-of-sequence id.

  Returns:
    `Sequences` of shape [B, L]; weights cover each sample up to and including its first EOS.
  """
  encoded = lax.stop_gradient(encoded)
  cache = model.init_cache(encoded, inputs, max_decode_length)

  def tokens_to_logits(tokens_Bx1, cache, position):
    logits_BxV, cache = model.decode_step(tokens_Bx1, cache, position)
    return logits_BxV.at[:, 0].set(-1e9), cache

  out = decoding.temperature_sample(
      tokens_to_logits, cache, rng=rng, batch_size=inputs.shape[0],
      max_decode_length=max_decode_length, temperature=temperature, top_k=top_k, top_p=top_p,
      eos_id=eos_id)
  pad = ((0, 0), (0, length - max_decode_length))
  return Sequences(lax.stop_gradient(jnp.pad(out.tokens, pad)),
                   lax.stop_gradient(jnp.pad(out.weights, pad)))


def _baseline(config: GKDConfig, rewards_B: Array) -> Array:
  if config.baseline == 'batch_mean':
    return jnp.broadcast_to(jnp.mean(rewards_B), rewards_B.shape)
  k = config.num_samples_per_input
  per_input = rewards_B.reshape(-1, k)
  # Leave-one-out: the mean of the other samples of the same input keeps the estimate unbiased.
  others = (jnp.sum(per_input, axis=1, keepdims=True) - per_input) / (k - 1)
  return others.reshape(-1)


def _repeat_batch(batch: Batch, times: int) -> Batch:
  return {name: jnp.repeat(value, times, axis=0) for name, value in batch.items()}


def gkd_loss(config: GKDConfig, student: SequenceModel, teacher: Optional[SequenceModel],
             batch: Batch, rng: Array, *, step: Optional[Array] = None,
             student_dropout: bool = False, eos_id: int = 1) -> Tuple[Array, Dict[str, Array]]:
  """One step of the GKD objective (Algorithm 1), differentiable in the student's params.

  Args:
    config: the objective's settings.
    student: the student network, params bound (gradients flow through these).
    teacher: the teacher network, params bound (treated as constants); None only for configs
      with `needs_teacher == False`.
    batch: EncDec features: 'encoder_input_tokens' [B, I], 'decoder_target_tokens' [B, L],
      optionally 'decoder_input_tokens', 'decoder_loss_weights' [B, L] (default: targets > 0)
      and packing ('encoder_segment_ids', 'decoder_segment_ids'), which only lambda = 0 accepts.
    rng: the step key, split into dropout, coin and sampling keys (module docstring).
    step: the training step, for a `LambdaSchedule` that changes over training.
    student_dropout: whether the student's training forward pass applies dropout; if not, the
      sampler reuses its encoder output instead of encoding the inputs twice.
    eos_id: end-of-sequence id.

  Returns:
    (scalar loss, dict of scalar statistics: divergence, on_policy, lmbda, sequence_length,
     eos_rate, num_sequences; with a teacher token_agreement and the teacher's and the
     student's mean next-token entropy (teacher_entropy, student_entropy, nats, at the loss's
     temperatures); with RL reward / reward_baseline / pg_loss). Rows without any target
     weight (padding rows) count in none of them.
  """
  if config.needs_teacher and teacher is None:
    raise ValueError(f'divergence {config.divergence!r} with fixed_data {config.fixed_data!r} '
                     'needs a teacher.')
  packed = 'decoder_segment_ids' in batch or 'encoder_segment_ids' in batch
  if packed and config.may_be_on_policy:
    raise ValueError('On-policy steps sample unpacked sequences: set pack=False in the feature '
                     'converter (packing only works with lmbda = 0).')
  dropout_rng, coin_rng, sample_rng = jax.random.split(rng, 3)
  if config.num_samples_per_input > 1:
    batch = _repeat_batch(batch, config.num_samples_per_input)
  inputs = batch['encoder_input_tokens']
  targets = batch['decoder_target_tokens']
  length = targets.shape[1]
  max_decode_length = config.max_decode_length or length
  if max_decode_length > length:
    raise ValueError(f'GKDConfig.max_decode_length ({max_decode_length}) must not exceed the '
                     f'target feature length ({length}).')
  target_weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
  encoder_segments = batch.get('encoder_segment_ids')

  student_encoded = student.encode(inputs, student_dropout, dropout_rng, encoder_segments)
  teacher_encoded = (lax.stop_gradient(teacher.encode(inputs, False, None, encoder_segments))
                     if config.needs_teacher else None)

  def on_policy() -> Sequences:
    encoded = (student.encode(inputs, False, None, None) if student_dropout
               else student_encoded)
    return sample_sequences(student, encoded, inputs, rng=sample_rng, length=length,
                            max_decode_length=max_decode_length,
                            temperature=config.sampling_temperature,
                            top_k=config.sampling_top_k, top_p=config.sampling_top_p,
                            eos_id=eos_id)

  def fixed() -> Sequences:
    if config.fixed_data == 'teacher_samples':
      return sample_sequences(teacher, teacher_encoded, inputs, rng=sample_rng, length=length,
                              max_decode_length=max_decode_length,
                              temperature=config.teacher_sampling_temperature, eos_id=eos_id)
    return Sequences(targets.astype(jnp.int32), target_weights.astype(jnp.float32))

  lmbda = config.lmbda(step)
  # Constant lambda of 0 or 1 picks the branch at trace time: a supervised step never compiles
  # the sampler and an on-policy step never builds the fixed batch.
  if config.always_on_policy:
    sequences, on_policy_flag = on_policy(), jnp.ones((), jnp.float32)
  elif not config.may_be_on_policy:
    sequences, on_policy_flag = fixed(), jnp.zeros((), jnp.float32)
  else:
    # Algorithm 1: u ~ U(0, 1), on-policy iff u < lambda (u in [0, 1), so lambda = 1 always is).
    coin = jax.random.uniform(coin_rng) < lmbda
    sequences = lax.cond(coin, on_policy, fixed)
    on_policy_flag = coin.astype(jnp.float32)

  tokens, weights = sequences
  # A padded row (an evaluation split's last batch) has no target: it is no sequence of the
  # batch, so neither its on-policy sample nor any statistic may count it.
  real_B = jnp.any(target_weights > 0, axis=-1)
  weights = weights * real_B[:, None].astype(weights.dtype)
  uses_batch_targets = not config.may_be_on_policy and config.fixed_data == 'targets'
  decoder_inputs = (batch['decoder_input_tokens'] if uses_batch_targets and
                    'decoder_input_tokens' in batch else shift_right(tokens))
  decoder_segments = batch.get('decoder_segment_ids')
  student_logits = student.decode(student_encoded, inputs, decoder_inputs, tokens, student_dropout,
                                  dropout_rng, encoder_segments, decoder_segments)

  stats = {}
  if config.divergence == 'cross_entropy':
    per_position = divergences.token_cross_entropy(
        tokens, student_logits, student_temperature=config.student_temperature)
  else:
    teacher_logits = lax.stop_gradient(
        teacher.decode(teacher_encoded, inputs, decoder_inputs, tokens, False, None,
                       encoder_segments, decoder_segments))
    divergence_fn = divergences.get_divergence(config.divergence, config.beta)
    per_position = divergence_fn(teacher_logits, student_logits,
                                 teacher_temperature=config.teacher_temperature,
                                 student_temperature=config.student_temperature)
    token_mean = lambda values: jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    agree = jnp.argmax(teacher_logits, -1) == jnp.argmax(student_logits, -1)
    # How sure each model is of the next token on these sequences: a teacher that is unsure on
    # the student's own samples hands that uncertainty to an on-policy student.
    stats.update(
        token_agreement=token_mean(agree),
        teacher_entropy=token_mean(divergences.entropy(
            teacher_logits, temperature=config.teacher_temperature)),
        student_entropy=token_mean(divergences.entropy(
            lax.stop_gradient(student_logits), temperature=config.student_temperature)))

  real_mean = lambda values_B: divergences.batch_mean(values_B.astype(jnp.float32), real_B)
  per_sequence, valid = divergences.sequence_mean(per_position, weights)
  divergence_value = divergences.batch_mean(per_sequence, valid)
  loss = divergence_value

  if config.uses_rl:
    reward = config.reward(inputs, tokens, weights, targets, target_weights)
    baseline = _baseline(config, reward)
    token_log_probs = -divergences.token_cross_entropy(tokens, student_logits)
    sequence_log_prob = jnp.sum(token_log_probs * weights, axis=-1)
    advantage = lax.stop_gradient(reward - baseline)
    pg_loss = -jnp.mean(advantage * sequence_log_prob)
    loss = config.alpha * divergence_value + (1.0 - config.alpha) * pg_loss
    stats.update(reward=real_mean(reward), reward_baseline=real_mean(baseline), pg_loss=pg_loss)

  reached_eos = jnp.any((tokens == eos_id) & (weights > 0), axis=-1)
  stats.update(
      divergence=divergence_value,
      on_policy=on_policy_flag,
      lmbda=lmbda,
      sequence_length=real_mean(jnp.sum(weights, axis=-1)),
      eos_rate=real_mean(reached_eos),
      num_sequences=jnp.sum(real_B.astype(jnp.float32)),
  )
  return loss, stats
