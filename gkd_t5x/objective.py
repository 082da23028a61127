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

The teacher's signal comes in four forms: its exact next-token distributions (the default);
its top-k log-probs and a tail bucket (`teacher_top_k`: every divergence over k + 1 buckets,
`divergences.top_k_buckets`); the same read from the batch (`offline_teacher`: stored by
`gkd_t5x.offline_teacher`, no teacher network in the step); or its log-prob of each sampled
token only (divergence 'sampled_reverse_kl': a policy gradient with per-token advantages,
`divergences.sampled_reverse_kl_advantages`).

The objective knows no architecture: student and teacher are `Policy`s, which read the inputs
into a prompt state, score given continuations teacher-forced and sample new ones
(`models.bind` makes one of a `network.Transformer`, `models.bind_decoder_only` of a
decoder-only prefix LM, whose prompt is the inputs). One step, `gkd_loss`, runs in stages:
`choose_sequences` (Algorithm 1's coin between the student's samples and the fixed data), both
models' teacher-forced logits of those sequences, `divergence_term`, `rl_term` (Eq. 5, with
alpha < 1) and `sequence_stats`.

Randomness: the step rng is split once, `dropout_rng, coin_rng, sample_rng =
jax.random.split(rng, 3)`. The coin is a scalar drawn from `coin_rng`; under `jax.jit` over a
multi-host mesh the step rng is one global value, so every host takes the same branch.
`sample_rng` drives student sampling (or teacher sampling for SeqKD).

Shape letters: B batch, I input length, L target length, V vocabulary.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

import gin
from gkd_t5x import decoding
from gkd_t5x import divergences
from gkd_t5x import rewards as rewards_lib

Array = jnp.ndarray
Batch = Dict[str, Array]

SAMPLED_REVERSE_KL = 'sampled_reverse_kl'
DIVERGENCE_NAMES = tuple(sorted(divergences.DIVERGENCES)) + ('cross_entropy', SAMPLED_REVERSE_KL)
# The batch features of an offline teacher (`gkd_t5x.offline_teacher`), aligned with the targets:
# [B, L, k] int32 ids, [B, L, k] float32 log-probs, [B, L] float32 tail log-prob.
OFFLINE_TEACHER_FEATURES = (
    'teacher_top_k_ids',
    'teacher_top_k_log_probs',
    'teacher_tail_log_prob',
)
FIXED_DATA_SOURCES = ('targets', 'teacher_samples')
BASELINES = ('batch_mean', 'per_input_mean')


PromptState = Any


class Policy(NamedTuple):
  """A sequence model with its params bound: all the objective asks of a network.

  The objective never sees the architecture. A policy reads the inputs x once into a prompt
  state (an encoder-decoder: its encoder output), then continues from that state either
  teacher-forced, scoring given continuations y, or token by token, sampling them. Dropout is on
  exactly when a `dropout_rng` is given, so a flag and a key can never disagree.

  read_prompt(inputs [B, I], *, segment_ids [B, I] | None = None, dropout_rng=None)
      -> prompt: an opaque pytree holding all that `logits` and `start_sampling` need of x
         (the inputs themselves too, where attention masks come from them).
  logits(prompt, continuation_inputs [B, L], continuation [B, L], *,
         segment_ids [B, L] | None = None, dropout_rng=None) -> [B, L, V] float32
      teacher-forced next-token logits: position t scores continuation[:, t] given x and
      continuation_inputs[:, :t + 1], the continuation shifted right (`shift_right`: token 0
      starts it; packed examples shift within their segment). 0 in `continuation` is padding.
  start_sampling(prompt, max_decode_length: int) -> (cache, decode_step)
      a cache for max_decode_length tokens and the `decoding.TokensToLogits` that continues x
      from it, fed token 0 at position 0. Per-row state belongs in the cache (batch-leading
      leaves), not in decode_step's closure: beam search repeats and reorders cache rows only.
  """

  read_prompt: Callable[..., PromptState]
  logits: Callable[..., Array]
  start_sampling: Callable[[PromptState, int], Tuple[Any, decoding.TokensToLogits]]


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
        raise ValueError(
            f'LambdaSchedule.{name} (lambda, the student data fraction) must be in '
            f'[0, 1], got {value}.'
        )
    if not self.is_constant and self.transition_steps < 1:
      raise ValueError(
          'LambdaSchedule.transition_steps must be >= 1 when end != start, got '
          f'{self.transition_steps}.'
      )

  @property
  def is_constant(self) -> bool:
    return self.end is None or self.end == self.start

  def __call__(self, step: Optional[Array]) -> Array:
    """lambda at `step` (an int scalar; may be None for a constant schedule)."""
    if self.is_constant:
      return jnp.asarray(self.start, jnp.float32)
    if step is None:
      raise ValueError(
          'A LambdaSchedule that changes over training needs the training step; '
          'the standalone trainer passes it, under T5X use a constant lambda.'
      )
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
    divergence: 'forward_kl', 'reverse_kl', 'jsd', 'total_variation', 'cross_entropy'
      (on the sequence's own tokens: SFT and SeqKD; needs no teacher logits), or
      'sampled_reverse_kl': the sampled-token reverse-KL estimator, the loss
      -(1 / L_y) sum_t A_t log p_S(y_t | y_<t, x) per sequence (Eq. 2's normalization) with
      stop-gradient advantages A_t = sum_{u >= t} discount^(u - t) (log p_T(y_u) - log p_S(y_u))
      (`divergences.sampled_reverse_kl_advantages`). Its expected gradient is that of the
      token-level reverse KL at the sampled prefixes (discount 0) or of the sequence-level
      reverse KL / L_y (discount 1, for sequences of one length L_y); its value (the reported
      divergence) is the per-token estimate mean_t (log p_S(y_t) - log p_T(y_t)). As its
      gradient only has meaning on the student's own samples, it needs lmbda = 1 and sampling
      from the loss's student distribution (sampling_temperature = student_temperature, no
      top-k / top-p); p_S is that distribution as sampled, without the padding id 0
      (`without_padding`). It needs the teacher's log-prob of each sampled token only.
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
    divergence_chunk_length: None (the default) computes the divergence, its next-token
      statistics and the RL term's log-likelihood over the whole sequence at once; a positive
      int computes them over chunks of
      that many positions (`divergences.chunked_sequence_sum`), the same values up to float
      summation order, holding float32 [B, chunk, V] rather than [B, L, V] intermediates in
      the forward and the backward pass, at the cost of recomputing each chunk's forward in
      the backward. For long targets with a large vocabulary (GSM8K: 320 tokens, 32k).
    discount: gamma in [0, 1] of 'sampled_reverse_kl' (0: each token's own value; 1: the
      undiscounted sum of the later tokens' values).
    teacher_top_k: None (the default): the divergence between the exact distributions; an int
      k: between the distributions on k + 1 buckets, the teacher's k likeliest tokens and one
      tail bucket for the rest of each distribution's mass (`divergences.top_k_buckets`), a
      lower bound of the exact divergence that reaches it at k = V.
    offline_teacher: the teacher's top-k log-probs come with the batch
      (`OFFLINE_TEACHER_FEATURES`, written by `python -m gkd_t5x.offline_teacher`) instead of
      from a teacher network: no teacher params in the step. Needs teacher_top_k (the stored
      k), lmbda = 0 and fixed_data 'targets' (the stored sequences).
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
  divergence_chunk_length: Optional[int] = None
  discount: float = 0.0
  teacher_top_k: Optional[int] = None
  offline_teacher: bool = False

  def __post_init__(self):
    if self.divergence not in DIVERGENCE_NAMES:
      raise ValueError(
          f'GKDConfig.divergence must be one of {DIVERGENCE_NAMES}, got {self.divergence!r}.'
      )
    _check_unit_interval('beta', self.beta)
    _check_unit_interval('alpha', self.alpha)
    _check_unit_interval('discount', self.discount)
    if not isinstance(self.lmbda, LambdaSchedule):
      _check_unit_interval('lmbda', self.lmbda)
      object.__setattr__(self, 'lmbda', LambdaSchedule(start=float(self.lmbda)))
    if self.fixed_data not in FIXED_DATA_SOURCES:
      raise ValueError(
          f'GKDConfig.fixed_data must be one of {FIXED_DATA_SOURCES}, got {self.fixed_data!r}.'
      )
    if self.baseline not in BASELINES:
      raise ValueError(f'GKDConfig.baseline must be one of {BASELINES}, got {self.baseline!r}.')
    for name in ('sampling_temperature', 'teacher_sampling_temperature'):
      if getattr(self, name) < 0:
        raise ValueError(f'GKDConfig.{name} must be >= 0 (0 = greedy), got {getattr(self, name)}.')
    for name in ('teacher_temperature', 'student_temperature'):
      if not getattr(self, name) > 0:
        raise ValueError(f'GKDConfig.{name} must be > 0, got {getattr(self, name)}.')
    if self.max_decode_length is not None and self.max_decode_length < 1:
      raise ValueError(
          f'GKDConfig.max_decode_length must be >= 1 or None, got {self.max_decode_length}.'
      )
    if self.num_samples_per_input < 1:
      raise ValueError(
          f'GKDConfig.num_samples_per_input must be >= 1, got {self.num_samples_per_input}.'
      )
    chunk_length = self.divergence_chunk_length
    if chunk_length is not None and (
        not isinstance(chunk_length, int) or isinstance(chunk_length, bool) or chunk_length < 1
    ):
      raise ValueError(
          'GKDConfig.divergence_chunk_length must be a positive int (positions per chunk) or '
          f'None (unchunked), got {chunk_length!r}.'
      )
    self._check_teacher_signal()
    if self.divergence == 'cross_entropy' and self.may_be_on_policy:
      raise ValueError(
          "divergence 'cross_entropy' trains on fixed sequences only: it needs "
          f'lmbda = 0, got {self.lmbda}.'
      )
    if self.uses_rl:
      if self.reward is None:
        raise ValueError(
            f'GKDConfig.alpha = {self.alpha} < 1 adds the RL term of Eq. 5, which '
            'needs a reward (GKDConfig.reward).'
        )
      if not (self.lmbda.is_constant and self.lmbda.start == 1.0):
        raise ValueError(
            'RL + GKD (alpha < 1) trains on on-policy samples: it needs lmbda = 1, '
            f'got {self.lmbda}.'
        )
    if self.baseline == 'per_input_mean' and self.num_samples_per_input < 2:
      raise ValueError(
          "baseline 'per_input_mean' needs num_samples_per_input >= 2, got "
          f'{self.num_samples_per_input}.'
      )

  def _check_teacher_signal(self) -> None:
    """Checks teacher_top_k, offline_teacher and the sampled-token estimator's needs."""
    top_k = self.teacher_top_k
    if top_k is not None:
      if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(
            f'GKDConfig.teacher_top_k must be a positive int or None (exact), got {top_k!r}.'
        )
      if self.divergence in ('cross_entropy', SAMPLED_REVERSE_KL):
        raise ValueError(
            'GKDConfig.teacher_top_k works with the divergences '
            f'{sorted(divergences.DIVERGENCES)}, not {self.divergence!r}, which uses no teacher '
            'distribution.'
        )
    if self.offline_teacher and (
        top_k is None or self.may_be_on_policy or self.fixed_data != 'targets'
    ):
      raise ValueError(
          'GKDConfig.offline_teacher reads stored top-k log-probs of the targets: it needs '
          f"teacher_top_k (the stored k), lmbda = 0 and fixed_data 'targets'; got teacher_top_k="
          f'{top_k}, lmbda={self.lmbda}, fixed_data={self.fixed_data!r}.'
      )
    if self.divergence == SAMPLED_REVERSE_KL and not (
        self.always_on_policy
        and self.sampling_temperature == self.student_temperature
        and self.sampling_top_k == 0
        and self.sampling_top_p == 1.0
    ):
      raise ValueError(
          "divergence 'sampled_reverse_kl' estimates a gradient from the student's own samples: "
          'it needs lmbda = 1, sampling_temperature = student_temperature, sampling_top_k = 0 '
          f'and sampling_top_p = 1; got lmbda={self.lmbda}, sampling_temperature='
          f'{self.sampling_temperature}, student_temperature={self.student_temperature}, '
          f'sampling_top_k={self.sampling_top_k}, sampling_top_p={self.sampling_top_p}.'
      )

  @property
  def exact_divergence(self) -> str:
    """The divergence an evaluation on given sequences reports: 'reverse_kl' for the
    'sampled_reverse_kl' estimator (which has a gradient only on the student's samples), else
    `divergence`."""
    return 'reverse_kl' if self.divergence == SAMPLED_REVERSE_KL else self.divergence

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
    """False for SFT (cross-entropy on the batch's own targets never queries the teacher) and
    for an offline teacher (its log-probs come with the batch)."""
    if self.offline_teacher:
      return False
    return self.divergence != 'cross_entropy' or self.fixed_data == 'teacher_samples'


class Sequences(NamedTuple):
  """The sequences a step trains on: tokens [B, L] int32, weights [B, L] float32."""

  tokens: Array
  weights: Array


def shift_right(tokens: Array, start_id: int = 0) -> Array:
  """[B, L] targets -> [B, L] decoder inputs: start_id, then the targets without the last."""
  return jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


def without_padding(logits: Array) -> Array:
  """logits [..., V] with the padding id 0 excluded (logit -1e9): the distribution on-policy
  sampling draws from (`sample_sequences`)."""
  return logits.at[..., 0].set(-1e9)


def sample_sequences(
    policy: Policy,
    prompt: PromptState,
    *,
    rng: Array,
    batch_size: int,
    length: int,
    max_decode_length: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = 1,
) -> Sequences:
  """Samples y ~ p(. | x) with a KV cache, under stop_gradient, padded to `length`.

  The padding token 0 is excluded from sampling: it is not a token a sequence may contain, and
  the teacher-forced pass treats it as padding.

  Args:
    policy: the network that samples.
    prompt: its `read_prompt` of the inputs x (gradients are stopped here).
    rng: sampling key.
    batch_size: B.
    length: L, the target length of the batch.
    max_decode_length: tokens to sample, <= L.
    temperature: sampling temperature (0 = greedy).
    top_k, top_p: truncation of the sampling distribution.
    eos_id: end-of-sequence id.

  Returns:
    `Sequences` of shape [B, L]; weights cover each sample up to and including its first EOS.
  """
  cache, decode_step = policy.start_sampling(lax.stop_gradient(prompt), max_decode_length)

  def tokens_to_logits(tokens_Bx1, cache, position):
    logits_BxV, cache = decode_step(tokens_Bx1, cache, position)
    return without_padding(logits_BxV), cache

  out = decoding.temperature_sample(
      tokens_to_logits,
      cache,
      rng=rng,
      batch_size=batch_size,
      max_decode_length=max_decode_length,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      eos_id=eos_id,
  )
  pad = ((0, 0), (0, length - max_decode_length))
  return Sequences(
      lax.stop_gradient(jnp.pad(out.tokens, pad)), lax.stop_gradient(jnp.pad(out.weights, pad))
  )


def reward_baseline(config: GKDConfig, rewards_B: Array) -> Array:
  """The policy gradient's baseline [B] of rewards [B]: their batch mean, or each one's
  leave-one-out mean over its input's `num_samples_per_input` samples (`config.baseline`)."""
  if config.baseline == 'batch_mean':
    return jnp.broadcast_to(jnp.mean(rewards_B), rewards_B.shape)
  k = config.num_samples_per_input
  per_input = rewards_B.reshape(-1, k)
  # Leave-one-out: the mean of the other samples of the same input keeps the estimate unbiased.
  others = (jnp.sum(per_input, axis=1, keepdims=True) - per_input) / (k - 1)
  return others.reshape(-1)


def _repeat_batch(batch: Batch, times: int) -> Batch:
  return {name: jnp.repeat(value, times, axis=0) for name, value in batch.items()}


def _check_step(config: GKDConfig, teacher: Optional[Policy], batch: Batch) -> None:
  if config.needs_teacher and teacher is None:
    raise ValueError(
        f'divergence {config.divergence!r} with fixed_data {config.fixed_data!r} '
        'needs a teacher.'
    )
  packed = 'decoder_segment_ids' in batch or 'encoder_segment_ids' in batch
  if packed and config.may_be_on_policy:
    raise ValueError(
        'On-policy steps sample unpacked sequences: set pack=False in the feature '
        'converter (packing only works with lmbda = 0).'
    )


def _batch_targets(batch: Batch) -> Sequences:
  """The batch's own targets and their loss weights (default: every non-padding token)."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
  return Sequences(targets.astype(jnp.int32), weights.astype(jnp.float32))


def _sample_length(config: GKDConfig, length: int) -> int:
  """How many tokens a step samples: `GKDConfig.max_decode_length`, at most the target length."""
  max_decode_length = config.max_decode_length or length
  if max_decode_length > length:
    raise ValueError(
        f'GKDConfig.max_decode_length ({max_decode_length}) must not exceed the '
        f'target feature length ({length}).'
    )
  return max_decode_length


def _continuation_inputs(config: GKDConfig, batch: Batch, tokens: Array) -> Array:
  """[B, L] the tokens fed to predict `tokens`: the batch's decoder inputs when the step can only
  train on the batch's targets (packed examples shift within their segment), else `tokens`
  shifted right."""
  if (
      not config.may_be_on_policy
      and config.fixed_data == 'targets'
      and 'decoder_input_tokens' in batch
  ):
    return batch['decoder_input_tokens']
  return shift_right(tokens)


def _real_mean(values_B: Array, real_B: Array) -> Array:
  return divergences.batch_mean(values_B.astype(jnp.float32), real_B)


def choose_sequences(
    config: GKDConfig,
    lmbda: Array,
    student: Policy,
    sampling_prompt: Callable[[], PromptState],
    teacher: Optional[Policy],
    teacher_prompt: Optional[PromptState],
    targets: Sequences,
    *,
    coin_rng: Array,
    sample_rng: Array,
    eos_id: int,
) -> Tuple[Sequences, Array]:
  """Stage 1, Algorithm 1's choice of the step's sequences: with probability lambda the
  student's own samples (on-policy), else the fixed data (`GKDConfig.fixed_data`).

  Args:
    config: the objective's settings.
    lmbda: the student data fraction of this step.
    student: the student policy.
    sampling_prompt: returns the student's prompt state to sample from; called only where the
      student samples, so that reading the prompt anew (without dropout) costs a supervised
      step nothing.
    teacher, teacher_prompt: the teacher policy and its prompt state, for teacher samples.
    targets: [B, L] the batch's targets, the fixed data of fixed_data='targets'.
    coin_rng, sample_rng: the keys of the coin and of sampling.
    eos_id: end-of-sequence id.

  Returns:
    ([B, L] sequences, float32 scalar: 1.0 if they are the student's samples, else 0.0).
  """
  batch_size, length = targets.tokens.shape
  sample = functools.partial(
      sample_sequences,
      rng=sample_rng,
      batch_size=batch_size,
      length=length,
      max_decode_length=_sample_length(config, length),
      eos_id=eos_id,
  )

  def on_policy() -> Sequences:
    return sample(
        student,
        sampling_prompt(),
        temperature=config.sampling_temperature,
        top_k=config.sampling_top_k,
        top_p=config.sampling_top_p,
    )

  def fixed() -> Sequences:
    if config.fixed_data == 'teacher_samples':
      return sample(teacher, teacher_prompt, temperature=config.teacher_sampling_temperature)
    return targets

  # A constant lambda of 0 or 1 picks the branch at trace time: a supervised step never
  # compiles the sampler and an on-policy step never builds the fixed data.
  if config.always_on_policy:
    return on_policy(), jnp.ones((), jnp.float32)
  if not config.may_be_on_policy:
    return fixed(), jnp.zeros((), jnp.float32)
  # u ~ U(0, 1), on-policy iff u < lambda (u in [0, 1), so lambda = 1 always is).
  coin = jax.random.uniform(coin_rng) < lmbda
  return lax.cond(coin, on_policy, fixed), coin.astype(jnp.float32)


# What the divergence term takes of the teacher (`teacher_signal`): None ('cross_entropy'),
# [B, L, V] logits (exact), a `divergences.TopK` of [B, L, k] arrays (teacher_top_k), or [B, L]
# log-probs of the sequence's tokens ('sampled_reverse_kl').
TeacherSignal = Union[None, Array, divergences.TopK]


def teacher_signal(
    config: GKDConfig, batch: Batch, tokens: Array, teacher_logits: Callable[[], Array]
) -> TeacherSignal:
  """Stage 2a, what the divergence needs of the teacher on the sequences tokens [B, L]: nothing
  for 'cross_entropy', the log-probs of the tokens for 'sampled_reverse_kl', the top-k log-probs
  (the batch's stored ones for an offline teacher) with teacher_top_k, else the logits.

  Args:
    config: the objective's settings.
    batch: the step's features (an offline teacher's `OFFLINE_TEACHER_FEATURES`).
    tokens: [B, L] the step's sequences.
    teacher_logits: returns the teacher's [B, L, V] logits of them, under stop_gradient; called
      only where they are needed.
  """
  if config.divergence == 'cross_entropy':
    return None
  if config.offline_teacher:
    return _stored_top_k(config, batch, tokens.shape)
  logits = teacher_logits()
  if config.divergence == SAMPLED_REVERSE_KL:
    return divergences.token_log_probs(tokens, logits, temperature=config.teacher_temperature)
  if config.teacher_top_k is not None:
    return divergences.teacher_top_k(
        logits, k=config.teacher_top_k, temperature=config.teacher_temperature
    )
  return logits


def _stored_top_k(config: GKDConfig, batch: Batch, shape_BxL: Tuple[int, int]) -> divergences.TopK:
  """The offline teacher's `TopK` from the batch, checked against the targets' shape and k."""
  missing = [name for name in OFFLINE_TEACHER_FEATURES if name not in batch]
  if missing:
    raise ValueError(
        f'GKDConfig.offline_teacher: the batch has no {missing}; train on the task of '
        '`python -m gkd_t5x.offline_teacher` (gkd_t5x.tasks.offline_teacher).'
    )
  ids, log_probs, tail = (batch[name] for name in OFFLINE_TEACHER_FEATURES)
  want = (*shape_BxL, config.teacher_top_k)
  if ids.shape != want or log_probs.shape != want or tail.shape != want[:2]:
    raise ValueError(
        f'GKDConfig.offline_teacher: stored top-k of shape {ids.shape} (tail {tail.shape}) do '
        f'not fit targets {shape_BxL} with teacher_top_k = {config.teacher_top_k}.'
    )
  return divergences.TopK(
      ids.astype(jnp.int32), log_probs.astype(jnp.float32), tail.astype(jnp.float32)
  )


def divergence_term(
    config: GKDConfig, sequences: Sequences, student_logits: Array, teacher: TeacherSignal
) -> Tuple[Array, Dict[str, Array]]:
  """Stage 2, E_y[D(p_T || p_S)(y|x)]: the token-level divergence averaged over each sequence
  (Eq. 2), then over the batch's sequences; 'cross_entropy' is the student's negative
  log-likelihood of the tokens instead, with no teacher; 'sampled_reverse_kl' is the estimator
  of `_sampled_reverse_kl_term`. With `config.divergence_chunk_length` it is computed over
  chunks of the sequence (`_chunked_divergence_term`).

  Args:
    config: the objective's settings (divergence, beta, temperatures, chunk length).
    sequences: [B, L] the step's sequences; a row without weight counts in nothing.
    student_logits: [B, L, V] the student's teacher-forced logits of the sequences.
    teacher: the teacher's signal (`teacher_signal`): [B, L, V] logits, a `TopK`, [B, L]
      log-probs of the tokens for 'sampled_reverse_kl', or None for 'cross_entropy'.

  Returns:
    (scalar divergence, {token_agreement, teacher_entropy, student_entropy} with a teacher
    distribution: exact, or over the top-k buckets).
  """
  if config.divergence == SAMPLED_REVERSE_KL:
    return _sampled_reverse_kl_term(config, sequences, student_logits, teacher)
  if config.divergence_chunk_length is not None:
    return _chunked_divergence_term(config, sequences, student_logits, teacher)
  tokens, weights = sequences
  per_position = _position_divergence(config, tokens, student_logits, teacher)
  stats = {}
  if config.divergence != 'cross_entropy':
    token_mean = lambda values: jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    stats = {
        name: token_mean(values)
        for name, values in _next_token_values(config, teacher, student_logits).items()
    }
  per_sequence, valid = divergences.sequence_mean(per_position, weights)
  return divergences.batch_mean(per_sequence, valid), stats


# {teacher name: rows [B, ...] -> that teacher's rows [N, ...]} (`teachers.Routing.groups`).
RowGroups = Mapping[str, Callable[[Array], Array]]


def grouped_divergence_term(
    config: GKDConfig,
    sequences: Sequences,
    student_logits: Array,
    teacher: TeacherSignal,
    groups: RowGroups,
) -> Tuple[Array, Dict[str, Array]]:
  """`divergence_term` of a batch whose rows belong to several teachers, from each teacher's
  term on its own rows: the batch's divergence is the mean of the groups' divergences weighted
  by their rows with weight, each next-token statistic the mean of theirs weighted by their
  token weight, so both equal the ungrouped term's up to float summation order.

  Args:
    config, sequences, student_logits, teacher: as `divergence_term`'s, over the batch [B].
    groups: {teacher name: its rows of a batch-leading array}; together they cover the batch.

  Returns:
    (scalar divergence, the batch's statistics and each teacher's as '<statistic>/<teacher>',
    with 'divergence/<teacher>' and its rows with a target, 'num_sequences/<teacher>').
  """
  stats, divergence_sum, rows_sum, stat_sums, weight_sum = {}, 0.0, 0.0, {}, 0.0
  for name, take in groups.items():
    mine = Sequences(take(sequences.tokens), take(sequences.weights))
    mine_teacher = jax.tree_util.tree_map(take, teacher)
    divergence, mine_stats = divergence_term(config, mine, take(student_logits), mine_teacher)
    rows = jnp.sum(jnp.any(mine.weights > 0, axis=-1).astype(jnp.float32))
    weight = jnp.sum(mine.weights)
    divergence_sum += divergence * rows
    rows_sum += rows
    weight_sum += weight
    for stat, value in mine_stats.items():
      stat_sums[stat] = stat_sums.get(stat, 0.0) + value * jnp.maximum(weight, 1.0)
      stats[f'{stat}/{name}'] = value
    stats.update({f'divergence/{name}': divergence, f'num_sequences/{name}': rows})
  stats.update({stat: total / jnp.maximum(weight_sum, 1.0) for stat, total in stat_sums.items()})
  return divergence_sum / jnp.maximum(rows_sum, 1.0), stats


def _chunked_divergence_term(
    config: GKDConfig, sequences: Sequences, student_logits: Array, teacher: TeacherSignal
) -> Tuple[Array, Dict[str, Array]]:
  """`divergence_term` from weighted sums over chunks of `config.divergence_chunk_length`
  positions: each row's sum_n w_n D_n [B] and the statistics' sum_{b,n} w_bn s_bn, divided as
  the unchunked path divides them (by each row's weight, then by the batch's)."""
  tokens, weights = sequences

  def chunk_sums(arrays: Tuple[Array, Array, TeacherSignal], weights_BxC: Array):
    tokens_BxC, student_BxCxV, teacher_BxC = arrays
    per_position = _position_divergence(config, tokens_BxC, student_BxCxV, teacher_BxC)
    sums = dict(divergence=divergences.weighted_sequence_sum(per_position, weights_BxC))
    if config.divergence != 'cross_entropy':
      values = _next_token_values(config, teacher_BxC, student_BxCxV)
      sums.update({name: jnp.sum(value * weights_BxC) for name, value in values.items()})
    return sums

  sums = divergences.chunked_sequence_sum(
      chunk_sums,
      (tokens, student_logits, teacher),
      weights,
      chunk_length=config.divergence_chunk_length,
  )
  divergence_sum_B = sums.pop('divergence')
  total_weight_B = jnp.sum(weights.astype(divergence_sum_B.dtype), axis=-1)
  per_sequence, valid = divergences.sequence_mean_of_sum(divergence_sum_B, total_weight_B)
  stats = {name: value / jnp.maximum(jnp.sum(weights), 1.0) for name, value in sums.items()}
  return divergences.batch_mean(per_sequence, valid), stats


def _position_divergence(
    config: GKDConfig, tokens: Array, student_logits: Array, teacher: TeacherSignal
) -> Array:
  """[B, L] float32 D(p_T || p_S) at each position of tokens [B, L] from logits [B, L, V]
  ('cross_entropy': -log p_S(token), no teacher; a `TopK` teacher: over its k + 1 buckets)."""
  if config.divergence == 'cross_entropy':
    return divergences.token_cross_entropy(
        tokens, student_logits, student_temperature=config.student_temperature
    )
  divergence_fn = divergences.get_divergence(config.divergence, config.beta)
  if isinstance(teacher, divergences.TopK):
    return divergence_fn(
        *divergences.top_k_buckets(
            teacher, student_logits, student_temperature=config.student_temperature
        )
    )
  return divergence_fn(
      teacher,
      student_logits,
      teacher_temperature=config.teacher_temperature,
      student_temperature=config.student_temperature,
  )


def _next_token_values(
    config: GKDConfig, teacher: Union[Array, divergences.TopK], student_logits: Array
) -> Dict[str, Array]:
  """Per position [B, L]: whether the two models' likeliest next tokens agree (bool), and each
  model's next-token entropy (float32 nats, at the loss's temperatures; a `TopK` teacher's over
  its k + 1 buckets, a lower bound); `divergence_term` reports their means over the weighted
  tokens."""
  # How sure each model is of the next token on these sequences: a teacher that is unsure on
  # the student's own samples hands that uncertainty to an on-policy student.
  if isinstance(teacher, divergences.TopK):
    teacher_argmax = teacher.ids[..., 0]
    teacher_entropy = divergences.entropy(teacher.bucket_log_probs())
  else:
    teacher_argmax = jnp.argmax(teacher, -1)
    teacher_entropy = divergences.entropy(teacher, temperature=config.teacher_temperature)
  return dict(
      token_agreement=teacher_argmax == jnp.argmax(student_logits, -1),
      teacher_entropy=teacher_entropy,
      student_entropy=divergences.entropy(
          lax.stop_gradient(student_logits), temperature=config.student_temperature
      ),
  )


def rl_term(
    config: GKDConfig,
    inputs: Array,
    targets: Sequences,
    sequences: Sequences,
    student_logits: Array,
    real_B: Array,
) -> Tuple[Array, Dict[str, Array]]:
  """Stage 3, the REINFORCE term of Eq. 5: pg_loss = -mean_b (r_b - baseline_b) log p_S(y_b|x_b),
  whose gradient estimates -grad E_y[r(y)] on the step's samples.

  Args:
    config: the objective's settings (reward, baseline, num_samples_per_input).
    inputs: [B, I] the inputs x.
    targets: [B, L] the batch's targets, the references of a reward that compares.
    sequences: [B, L] the samples y.
    student_logits: [B, L, V] the student's teacher-forced logits of the samples.
    real_B: [B] bool, the rows with a target.

  Returns:
    (scalar pg_loss, {reward, reward_baseline: means over the real rows; pg_loss}).
  """
  reward = config.reward(
      inputs, sequences.tokens, sequences.weights, targets.tokens, targets.weights
  )
  baseline = reward_baseline(config, reward)
  sequence_log_prob = _sequence_log_prob(config, sequences, student_logits)
  advantage = lax.stop_gradient(reward - baseline)
  pg_loss = -jnp.mean(advantage * sequence_log_prob)
  return pg_loss, dict(
      reward=_real_mean(reward, real_B),
      reward_baseline=_real_mean(baseline, real_B),
      pg_loss=pg_loss,
  )


def _sequence_log_prob(config: GKDConfig, sequences: Sequences, student_logits: Array) -> Array:
  """[B] log p_S(y_b | x_b) = sum_n w_bn log p_S(y_bn | y_b<n, x_b), over chunks of
  `config.divergence_chunk_length` positions when it is set, as the divergence term."""
  row_sums = lambda arrays, weights_BxC: divergences.weighted_sequence_sum(
      divergences.token_log_probs(*arrays), weights_BxC
  )
  return _sum_over_sequence(config, row_sums, (sequences.tokens, student_logits), sequences.weights)


def _sum_over_sequence(
    config: GKDConfig, sum_fn: Callable[[Any, Array], Array], arrays: Any, weights: Array
) -> Array:
  """sum_fn(arrays [B, L, ...], weights [B, L]), over chunks of `config.divergence_chunk_length`
  positions when it is set (`divergences.chunked_sequence_sum`)."""
  if config.divergence_chunk_length is None:
    return sum_fn(arrays, weights)
  return divergences.chunked_sequence_sum(
      sum_fn, arrays, weights, chunk_length=config.divergence_chunk_length
  )


def _sampled_reverse_kl_term(
    config: GKDConfig, sequences: Sequences, student_logits: Array, teacher_log_probs: Array
) -> Tuple[Array, Dict[str, Array]]:
  """'sampled_reverse_kl': per sequence, a surrogate whose gradient is that of
  -(1 / L_y) sum_t w_t A_t log p_S(y_t) (advantages A_t: `divergences.sampled_reverse_kl_
  advantages`) and whose value is the estimate (1 / L_y) sum_t w_t (log p_S(y_t) - log p_T(y_t))
  of the token-level reverse KL; averaged over the batch's sequences as Eq. 2's divergence.

  Args:
    config: the objective's settings (discount, temperatures, chunk length).
    sequences: [B, L] the student's samples.
    student_logits: [B, L, V] the student's teacher-forced logits of them.
    teacher_log_probs: [B, L] the teacher's log-probs of the sampled tokens.

  Returns:
    (scalar value, {}): no next-token statistics, as the teacher's distribution is not used.
  """
  tokens, weights = sequences
  # log p_S is that of the distribution the samples come from, without the padding id: were it
  # the whole softmax, the never-sampled id 0 would gain the mass the advantages take away.
  sampled_log_probs = lambda tokens, logits: divergences.token_log_probs(
      tokens, without_padding(logits), temperature=config.student_temperature
  )
  student_log_probs = lax.stop_gradient(sampled_log_probs(tokens, student_logits))
  advantages = divergences.sampled_reverse_kl_advantages(
      student_log_probs, teacher_log_probs, weights, discount=config.discount
  )

  def surrogate_sums(arrays: Tuple[Array, Array, Array], weights_BxC: Array) -> Array:
    tokens_BxC, logits_BxCxV, advantages_BxC = arrays
    log_probs = sampled_log_probs(tokens_BxC, logits_BxCxV)
    return divergences.weighted_sequence_sum(-advantages_BxC * log_probs, weights_BxC)

  surrogate_B = _sum_over_sequence(
      config, surrogate_sums, (tokens, student_logits, advantages), weights
  )
  estimate_B = divergences.weighted_sequence_sum(student_log_probs - teacher_log_probs, weights)
  total_weight_B = jnp.sum(weights.astype(surrogate_B.dtype), axis=-1)
  per_sequence, valid = divergences.sequence_mean_of_sum(
      estimate_B + surrogate_B - lax.stop_gradient(surrogate_B), total_weight_B
  )
  return divergences.batch_mean(per_sequence, valid), {}


def sequence_stats(sequences: Sequences, real_B: Array, eos_id: int) -> Dict[str, Array]:
  """Stage 4, what the step trained on: sequence_length and eos_rate, means over the real rows
  `real_B` [B] (those with a target), and num_sequences, their number."""
  reached_eos = jnp.any((sequences.tokens == eos_id) & (sequences.weights > 0), axis=-1)
  return dict(
      sequence_length=_real_mean(jnp.sum(sequences.weights, axis=-1), real_B),
      eos_rate=_real_mean(reached_eos, real_B),
      num_sequences=jnp.sum(real_B.astype(jnp.float32)),
  )


def step_keys(rng: Array) -> Tuple[Array, Array, Array]:
  """The step rng's three keys, (dropout_rng, coin_rng, sample_rng): a step's on-policy samples
  are `sample_sequences` drawn with `sample_rng` (module docstring)."""
  dropout_rng, coin_rng, sample_rng = jax.random.split(rng, 3)
  return dropout_rng, coin_rng, sample_rng


def score_sequences(
    config: GKDConfig, student: Policy, teacher: Policy, inputs: Array, sequences: Sequences
) -> Array:
  """[B, L] float32 D(p_T || p_S) at each position of given sequences, teacher-forced, without
  dropout: what a step would train on them, position by position (0 where the weight is 0);
  for 'sampled_reverse_kl' the exact reverse KL it estimates.

  Args:
    config: the divergence, temperatures and teacher top-k.
    student, teacher: the two policies.
    inputs: [B, I] the inputs x.
    sequences: [B, L] the continuations y and their loss weights.
  """
  if config.divergence == SAMPLED_REVERSE_KL:
    config = dataclasses.replace(config, divergence='reverse_kl')
  tokens, weights = sequences
  continuation_inputs = shift_right(tokens)
  student_logits = student.logits(student.read_prompt(inputs), continuation_inputs, tokens)
  signal = teacher_signal(
      config,
      {},
      tokens,
      lambda: teacher.logits(teacher.read_prompt(inputs), continuation_inputs, tokens),
  )
  values = _position_divergence(config, tokens, student_logits, signal)
  return jnp.where(weights > 0, values, 0.0)


def gkd_loss(
    config: GKDConfig,
    student: Policy,
    teacher: Optional[Policy],
    batch: Batch,
    rng: Array,
    *,
    step: Optional[Array] = None,
    student_dropout: bool = False,
    eos_id: int = 1,
    teacher_groups: Optional[RowGroups] = None,
) -> Tuple[Array, Dict[str, Array]]:
  """One step of the GKD objective (Algorithm 1), differentiable in the student's params.

  Args:
    config: the objective's settings.
    student: the student policy, params bound (gradients flow through these).
    teacher: the teacher policy, params bound (treated as constants); None only for configs
      with `needs_teacher == False`.
    batch: EncDec features (a decoder-only model's are its split prefix-LM rows):
      'encoder_input_tokens' [B, I], 'decoder_target_tokens' [B, L],
      optionally 'decoder_input_tokens', 'decoder_loss_weights' [B, L] (default: targets > 0)
      and packing ('encoder_segment_ids', 'decoder_segment_ids'), which only lambda = 0 accepts.
    rng: the step key, split into dropout, coin and sampling keys (module docstring).
    step: the training step, for a `LambdaSchedule` that changes over training.
    student_dropout: whether the student's training forward pass applies dropout; if not, the
      sampler reuses its prompt state instead of reading the inputs twice.
    eos_id: end-of-sequence id.
    teacher_groups: with several teachers (`teachers.routed_policy`), each one's rows, so that
      the statistics come per teacher too (`grouped_divergence_term`).

  Returns:
    (scalar loss, dict of scalar statistics: divergence, on_policy, lmbda, sequence_length,
     eos_rate, num_sequences; with a teacher token_agreement and the teacher's and the
     student's mean next-token entropy (teacher_entropy, student_entropy, nats, at the loss's
     temperatures); with RL reward / reward_baseline / pg_loss). Rows without any target
     weight (padding rows) count in none of them.
  """
  _check_step(config, teacher, batch)
  dropout_rng, coin_rng, sample_rng = step_keys(rng)
  if config.num_samples_per_input > 1:
    batch = _repeat_batch(batch, config.num_samples_per_input)
  inputs, input_segments = batch['encoder_input_tokens'], batch.get('encoder_segment_ids')
  targets = _batch_targets(batch)
  student_rng = dropout_rng if student_dropout else None
  student_prompt = student.read_prompt(inputs, segment_ids=input_segments, dropout_rng=student_rng)
  teacher_prompt = (
      lax.stop_gradient(teacher.read_prompt(inputs, segment_ids=input_segments))
      if config.needs_teacher
      else None
  )

  lmbda = config.lmbda(step)
  # The student samples without dropout: from the training pass's prompt state unless that
  # one has dropout.
  sampling_prompt = (
      (lambda: student.read_prompt(inputs)) if student_dropout else (lambda: student_prompt)
  )
  sequences, on_policy = choose_sequences(
      config,
      lmbda,
      student,
      sampling_prompt,
      teacher,
      teacher_prompt,
      targets,
      coin_rng=coin_rng,
      sample_rng=sample_rng,
      eos_id=eos_id,
  )
  # A padded row (an evaluation split's last batch) has no target: it is no sequence of the
  # batch, so neither its on-policy sample nor any statistic may count it.
  real_B = jnp.any(targets.weights > 0, axis=-1)
  sequences = sequences._replace(
      weights=sequences.weights * real_B[:, None].astype(sequences.weights.dtype)
  )

  continuation_inputs = _continuation_inputs(config, batch, sequences.tokens)
  segment_ids = batch.get('decoder_segment_ids')
  student_logits = student.logits(
      student_prompt,
      continuation_inputs,
      sequences.tokens,
      segment_ids=segment_ids,
      dropout_rng=student_rng,
  )
  teacher_values = teacher_signal(
      config,
      batch,
      sequences.tokens,
      lambda: lax.stop_gradient(
          teacher.logits(
              teacher_prompt, continuation_inputs, sequences.tokens, segment_ids=segment_ids
          )
      ),
  )

  if teacher_groups:
    divergence, stats = grouped_divergence_term(
        config, sequences, student_logits, teacher_values, teacher_groups
    )
  else:
    divergence, stats = divergence_term(config, sequences, student_logits, teacher_values)
  loss = divergence
  if config.uses_rl:
    pg_loss, rl_stats = rl_term(config, inputs, targets, sequences, student_logits, real_B)
    loss = config.alpha * divergence + (1.0 - config.alpha) * pg_loss
    stats.update(rl_stats)
  stats.update(
      divergence=divergence,
      on_policy=on_policy,
      lmbda=lmbda,
      **sequence_stats(sequences, real_B, eos_id),
  )
  return loss, stats
