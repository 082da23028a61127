"""An independent minimal on-policy GKD loop against the project's trainer, step by step.

Why this test exists (issue 23): in the project's own testbed, on-policy GKD (lambda = 1,
forward KL, samples at T = 1) ends below the SFT student it starts from, while every
off-policy method holds or improves. Each piece of the implementation had been checked one
step at a time (divergences, gradients, cached decoding, restarts); what had not been checked
is what many repeated on-policy steps do. This test rules the implementation in or out over
tens of steps: a loop of a few dozen lines, written apart from `gkd_t5x.objective`,
`gkd_t5x.divergences` and `gkd_t5x.decoding`, samples, scores and steps with plain jax and
optax on the same networks (`network.Transformer`, through its teacher-forced `apply` only),
the same start and the same keys, and must sample the same tokens as
`trainer.make_train_step` with `models.GKDModel` at every step, and reach the same params.
If they ever part, the failure names the first step and the first token or param leaf where
they do.

The minimal loop, as one would write it from the paper and the README's conventions:
  - step key = fold_in(run key, step); dropout, coin, sample keys = split(step key, 3);
  - sampler: at each position t, the full teacher-forced network on the prefix (no KV cache),
    the pad id 0 masked out, y_t ~ categorical(fold_in(sample key, t), logits / T); weights
    through the first EOS, pad after it;
  - loss: forward KL from its formula, sum_v p_T (log p_T - log p_S), at every sampled
    position, averaged over each sequence's weighted positions (Eq. 2), then over the batch;
  - update: optax.clip_by_global_norm, then optax.adamw with the linear warmup written out.

Cases: lambda = 1 at a constant rate without clipping, and lambda = 1 during a linear warmup
with a clipping bound below every step's gradient norm (checked), so that both bind.

Shape letters: B batch, I input length, L target length, V vocabulary.
"""

from typing import Any, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny

from gkd_t5x import models
from gkd_t5x import objective
from gkd_t5x import optimizers
from gkd_t5x import partitioning
from gkd_t5x import trainer
from gkd_t5x import vocabularies

VOCAB, EOS = 16, 1
B, I, L = 8, 7, 12
NUM_STEPS = 30
SEED = 0
STUDENT = tiny.transformer(VOCAB, 8, 1)
TEACHER = tiny.transformer(VOCAB, 16, 2)
MODEL = models.GKDModel(
    STUDENT,
    TEACHER,
    vocabularies.TokenIdVocabulary(VOCAB, EOS),
    vocabularies.TokenIdVocabulary(VOCAB, EOS),
    gkd=objective.GKDConfig(divergence='forward_kl', lmbda=1.0, sampling_temperature=1.0),
)
# Float rounding only: the two programs compute differently (cached vs recomputed decoding,
# one apply vs encode + decode, the schedule's formula), so params part by float32 ulps: at
# most 2.4e-7 over the 30 steps here. A real difference grows past this bound within a few
# steps: a step without its update moves params by the learning rate (1e-2), and leaving out
# the clipping moved them by 6e-5 by step 2 (a different sample key fails at step 0's tokens).
PARAM_ATOL = 1e-5


class Case(NamedTuple):
  learning_rate: float
  warmup_steps: int
  max_grad_norm: Optional[float]


CASES = {
    'constant_rate': Case(learning_rate=1e-2, warmup_steps=0, max_grad_norm=None),
    'warmup_and_clipping': Case(learning_rate=1e-2, warmup_steps=10, max_grad_norm=0.05),
}


def batch_stream(num_steps: int) -> List[Dict[str, np.ndarray]]:
  """A fixed stream of EncDec batches: inputs [B, I] and EOS-terminated targets [B, L] of
  varying lengths (padding 0 after them)."""
  rng = np.random.RandomState(1)
  batches = []
  for _ in range(num_steps):
    inputs = rng.randint(2, VOCAB, (B, I))
    inputs[np.arange(I)[None, :] >= rng.randint(2, I + 1, (B, 1))] = 0
    targets = rng.randint(2, VOCAB, (B, L))
    lengths_B = rng.randint(1, L + 1, B)  # Tokens, EOS included.
    targets[np.arange(B), lengths_B - 1] = EOS
    targets[np.arange(L)[None, :] >= lengths_B[:, None]] = 0
    batches.append({k: np.asarray(v) for k, v in tiny.encdec_batch(inputs, targets).items()})
  return batches


# ------------------------------------------------------------------------------------------
# The minimal loop: plain jax + optax on the networks' teacher-forced forward pass only.
# ------------------------------------------------------------------------------------------


def shift_right(tokens_BxL):
  return jnp.pad(tokens_BxL, ((0, 0), (1, 0)))[:, :-1]


def forward(module, params, inputs_BxI, tokens_BxL, valid_BxL):
  """[B, L, V] teacher-forced logits; positions where valid_BxL is 0 attend nowhere."""
  return module.apply(
      {'params': params}, inputs_BxI, shift_right(tokens_BxL), valid_BxL, enable_dropout=False
  )


def minimal_sample(params, inputs_BxI, sample_key, temperature=1.0):
  """Samples [B, L] tokens re-running the whole decoder at every position; returns (tokens,
  weights through the first EOS), pad 0 after it."""

  def sample_position(t, tokens_BxL):
    logits_BxLxV = forward(STUDENT, params, inputs_BxI, tokens_BxL, jnp.ones_like(tokens_BxL))
    logits_BxV = logits_BxLxV[:, t].at[:, 0].set(-jnp.inf)  # The pad id is no token.
    token_B = jax.random.categorical(jax.random.fold_in(sample_key, t), logits_BxV / temperature)
    return tokens_BxL.at[:, t].set(token_B)

  tokens_BxL = jax.lax.fori_loop(0, L, sample_position, jnp.zeros((B, L), jnp.int32))
  eos_BxL = (tokens_BxL == EOS).astype(jnp.int32)
  weights_BxL = (jnp.cumsum(eos_BxL, axis=1) - eos_BxL == 0).astype(jnp.float32)
  return jnp.where(weights_BxL > 0, tokens_BxL, 0), weights_BxL


def minimal_loss(params, teacher_params, inputs_BxI, tokens_BxL, weights_BxL):
  """Forward KL per position, Eq. 2's per-sequence mean, then the batch mean."""
  valid_BxL = (tokens_BxL > 0).astype(jnp.int32)
  log_q_BxLxV = jax.nn.log_softmax(forward(STUDENT, params, inputs_BxI, tokens_BxL, valid_BxL))
  log_p_BxLxV = jax.nn.log_softmax(
      forward(TEACHER, teacher_params, inputs_BxI, tokens_BxL, valid_BxL)
  )
  kl_BxL = jnp.sum(jnp.exp(log_p_BxLxV) * (log_p_BxLxV - log_q_BxLxV), axis=-1)
  per_sequence_B = jnp.sum(kl_BxL * weights_BxL, axis=1) / jnp.sum(weights_BxL, axis=1)
  return jnp.mean(per_sequence_B)


def minimal_optimizer(case: Case) -> optax.GradientTransformation:
  """Global-norm clipping (inf: none), then AdamW at learning_rate * min(count / warmup, 1)
  (constant without warmup). The case's numbers may be traced, so that one compilation of
  `minimal_step` serves every case."""
  learning_rate, warmup_steps, max_grad_norm = case

  def schedule(count):
    ramp = jnp.minimum(count / jnp.maximum(warmup_steps, 1), 1.0)
    return learning_rate * jnp.where(warmup_steps > 0, ramp, 1.0)

  return optax.chain(
      optax.clip_by_global_norm(max_grad_norm),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
  )


@jax.jit
def minimal_step(case: Case, run_key, step, params, opt_state, teacher_params, inputs_BxI):
  """One on-policy step: (params, optimizer state, sampled tokens [B, L], loss)."""
  step_key = jax.random.fold_in(run_key, step)
  _, _, sample_key = jax.random.split(step_key, 3)  # dropout, coin, sample
  tokens_BxL, weights_BxL = minimal_sample(params, inputs_BxI, sample_key)
  loss, grads = jax.value_and_grad(minimal_loss)(
      params, teacher_params, inputs_BxI, tokens_BxL, weights_BxL
  )
  updates, opt_state = minimal_optimizer(case).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, tokens_BxL, loss


# ------------------------------------------------------------------------------------------
# The project's trainer, with its on-policy samples recorded.
# ------------------------------------------------------------------------------------------


def record_samples(monkeypatch) -> List[np.ndarray]:
  """Makes `objective.sample_sequences` report each step's sampled tokens [B, L] to a list."""
  recorded = []
  sample_sequences = objective.sample_sequences

  def recording(*args, **kwargs):
    sequences = sample_sequences(*args, **kwargs)
    jax.debug.callback(lambda tokens: recorded.append(np.asarray(tokens)), sequences.tokens)
    return sequences

  monkeypatch.setattr(objective, 'sample_sequences', recording)
  return recorded


def host(tree) -> Dict[str, np.ndarray]:
  return tiny.flat(jax.device_get(tree))


def first_difference(step: int, project: Dict[str, np.ndarray], minimal: Dict[str, Any]):
  """(message, max |difference|) of two flat param trees; message None if all leaves match."""
  worst = 0.0
  for name, value in project.items():
    difference = float(np.max(np.abs(value - np.asarray(minimal[name]))))
    worst = max(worst, difference)
    if not difference <= PARAM_ATOL:
      return f'params differ after step {step}: leaf {name}, max |diff| {difference:.3g}', worst
  return None, worst


@pytest.fixture(scope='module')
def start():
  """(run key, the student's initial params, the teacher's params), the keys derived as train.py
  derives them from the seed: init and run keys; both networks drawn from the init key."""
  init_rng, run_rng = jax.random.split(jax.random.PRNGKey(SEED))
  shapes = {k: v.shape for k, v in batch_stream(1)[0].items()}
  variables = jax.jit(lambda rng: MODEL.get_initial_variables(rng, shapes))(init_rng)
  return run_rng, jax.device_get(variables['params']), jax.device_get(variables['teacher'])


@pytest.mark.parametrize('name', sorted(CASES))
def test_minimal_loop_matches_the_trainer(name, start, monkeypatch):
  case = CASES[name]
  run_rng, initial_params, teacher_params = start
  optimizer = optimizers.make_optimizer(
      optimizers.adamw(
          optimizers.linear_warmup_constant_schedule(case.learning_rate, case.warmup_steps)
      ),
      max_grad_norm=case.max_grad_norm,
  )
  batches = batch_stream(NUM_STEPS)
  mesh = partitioning.make_mesh(1, jax.devices()[:1])
  rules = partitioning.standard_logical_axis_rules()
  layout = trainer.make_layout(
      MODEL, optimizer, mesh, rules, {k: v.shape for k, v in batches[0].items()}
  )
  frozen = jax.device_put({'teacher': teacher_params}, layout.frozen_shardings)
  recorded = record_samples(monkeypatch)
  # init_state donates the params it is given: a device copy of them.
  state = trainer.init_state(MODEL, optimizer, layout, None, jax.device_put(initial_params))
  train_step = trainer.make_train_step(MODEL, optimizer, layout, run_rng)

  minimal_case = Case(*(np.float32(np.inf if value is None else value) for value in case))
  params = initial_params
  opt_state = minimal_optimizer(minimal_case).init(params)
  worst = 0.0
  lengths = set()
  with partitioning.activate(mesh, rules):
    for step, batch in enumerate(batches):
      state, metrics = train_step(state, frozen, batch)
      jax.effects_barrier()
      params, opt_state, tokens_BxL, loss = minimal_step(
          minimal_case,
          run_rng,
          np.int32(step),
          params,
          opt_state,
          teacher_params,
          batch['encoder_input_tokens'],
      )
      assert len(recorded) == step + 1, f'step {step}: {len(recorded)} samples recorded'
      mismatch = np.argwhere(recorded[step] != np.asarray(tokens_BxL))
      assert not mismatch.size, (
          f'samples differ at step {step}, first at (row, position) {tuple(mismatch[0])}:\n'
          f'project {recorded[step][mismatch[0][0]]}\nminimal {tokens_BxL[mismatch[0][0]]}'
      )
      lengths.update(np.sum(np.cumsum(recorded[step] == EOS, 1) == 0, 1).tolist())
      if case.max_grad_norm is not None:
        grad_norm = float(metrics['grad_norm'].compute())
        assert grad_norm > case.max_grad_norm, f'step {step}: clipping does not bind'
      message, step_worst = first_difference(step, host(state['target']), host(params))
      worst = max(worst, step_worst)
      assert message is None, message
      np.testing.assert_allclose(float(metrics['loss'].compute()), float(loss), rtol=1e-5)
  # The samples ended at many lengths, and some ran to L without EOS.
  assert len(lengths) >= 5 and L in lengths, sorted(lengths)
  print(f'{name}: {NUM_STEPS} steps, samples identical, max |param diff| {worst:.3g}')
