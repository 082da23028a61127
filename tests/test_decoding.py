"""Tests of gkd_t5x.decoding against numpy loops, enumeration and sampling statistics."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gkd_t5x import decoding

EOS, PAD, START = 1, 0, 0
BUCKETS = 101  # Hash buckets of the prefix model: rows of its logits table.


# ----------------------------------------------------------------- toy models


def _table(seed, vocab_size, eos_bias=0.0, scale=2.0):
  """[BUCKETS, V] float32 random logits, EOS shifted by eos_bias."""
  table = scale * np.random.default_rng(seed).normal(size=(BUCKETS, vocab_size))
  table[:, EOS] += eos_bias
  return table.astype(np.float32)


def _bucket(salt, inputs, position):
  """Numpy reference hash of a row's whole decoder-input prefix x_0..x_position."""
  h = 31 * salt + 13 * position
  h += sum((x + 1) * pow(7, i, BUCKETS) for i, x in enumerate(inputs))
  return h % BUCKETS


def prefix_model(table, max_len):
  """Cached model whose cache holds the full input prefix [B, L] and a row salt [B].

  The logits of a step are table[hash(salt, x_0..x_position, position)], computed
  from the whole prefix, so a wrongly gathered or repeated cache row changes them.
  """
  powers_L = jnp.asarray([pow(7, i, BUCKETS) for i in range(max_len)], jnp.int32)
  table = jnp.asarray(table)

  def tokens_to_logits(tokens_Bx1, cache, position):
    inputs_BxL = cache['inputs'].at[:, position].set(tokens_Bx1[:, 0])
    seen_L = jnp.arange(max_len) <= position
    h_B = 31 * cache['salt'] + 13 * position
    h_B += jnp.sum(jnp.where(seen_L, (inputs_BxL + 1) * powers_L, 0), axis=-1)
    return table[h_B % BUCKETS], {'inputs': inputs_BxL, 'salt': cache['salt']}

  return tokens_to_logits


def prefix_cache(salts, max_len):
  salts = jnp.asarray(salts, jnp.int32)
  return {'inputs': jnp.zeros((len(salts), max_len), jnp.int32), 'salt': salts}


def constant_model(logits_V):
  """Logits independent of the input: one fixed next-token distribution."""
  logits_V = jnp.asarray(logits_V, jnp.float32)

  def tokens_to_logits(tokens_Bx1, cache, position):
    del position
    return jnp.broadcast_to(logits_V, (tokens_Bx1.shape[0], logits_V.shape[0])), cache

  return tokens_to_logits


def counting_model(logits_fn, calls):
  """logits_fn(position) -> [V] or [B, V]; appends to `calls` on every executed step.

  SampleOutput does not return the cache, so a host callback counts the steps.
  """

  def tokens_to_logits(tokens_Bx1, cache, position):
    jax.debug.callback(lambda: calls.append(1))
    logits = logits_fn(position)
    return jnp.broadcast_to(logits, (tokens_Bx1.shape[0], logits.shape[-1])), cache

  return tokens_to_logits


def jitted(fn, model, cache, **settings):
  """fn(model, cache, **settings) under jax.jit, settings (rng included) bound."""
  return jax.jit(functools.partial(fn, model, **settings))(cache)


# ---------------------------------------------------------- numpy references


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def reference_decode(table, salts, max_len, choose):
  """Uncached loop: recomputes every row's logits from its whole prefix.

  choose(t, logits_BxV) -> (tokens_B, logp_BxV of the distribution drawn from).
  Returns tokens [B, L], summed log probs [B], reached_eos [B].
  """
  batch = len(salts)
  tokens = np.full((batch, max_len), PAD, np.int64)
  ended = np.zeros(batch, bool)
  log_probs = np.zeros(batch)
  for t in range(max_len):
    if ended.all():
      break
    logits = np.stack(
        [table[_bucket(s, [START] + list(tokens[b, :t]), t)] for b, s in enumerate(salts)]
    )
    y, logp = choose(t, logits)
    for b in range(batch):
      if not ended[b]:
        tokens[b, t] = y[b]
        log_probs[b] += logp[b, y[b]]
        ended[b] = y[b] == EOS
  return tokens, log_probs, ended


def greedy_choice(t, logits):
  del t
  return logits.argmax(-1), _log_softmax(logits)


def sampling_choice(rng, temperature):
  def choose(t, logits):
    scaled = jnp.asarray(logits) / temperature
    y = jax.random.categorical(jax.random.fold_in(rng, t), scaled)
    return np.asarray(y), _log_softmax(scaled)

  return choose


def assert_eos_rules(out):
  """Weights, padding, lengths and reached_eos follow a row's first EOS."""
  tokens, weights = np.asarray(out.tokens), np.asarray(out.weights)
  max_len = tokens.shape[-1]
  for row, w in zip(tokens.reshape(-1, max_len), weights.reshape(-1, max_len)):
    eos_at = np.flatnonzero(row == EOS)
    end = eos_at[0] + 1 if eos_at.size else max_len
    np.testing.assert_array_equal(w, np.arange(max_len) < end)
    np.testing.assert_array_equal(row[end:], PAD)
  if isinstance(out, decoding.SampleOutput):
    np.testing.assert_array_equal(out.lengths, weights.sum(-1))
    np.testing.assert_array_equal(out.reached_eos, (tokens == EOS).any(-1))
    assert out.tokens.dtype == jnp.int32 and out.lengths.dtype == jnp.int32
    assert out.weights.dtype == jnp.float32 and out.log_probs.dtype == jnp.float32


def _sample_one_step(logits_V, n, seed=0, **kwargs):
  """n single-token samples, vmapped over rngs -> (counts [V], SampleOutput)."""
  model = constant_model(logits_V)

  def one(rng):
    return decoding.temperature_sample(
        model, {}, rng=rng, batch_size=1, max_decode_length=1, **kwargs
    )

  out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n))
  counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=len(logits_V))
  return counts, out


def assert_frequencies(counts, probs):
  """Pearson chi-square over the support of probs; nothing outside it."""
  support = probs > 0
  assert counts[~support].sum() == 0, counts
  expected = counts.sum() * probs[support]
  chi2 = ((counts[support] - expected) ** 2 / expected).sum()
  assert chi2 < stats.chi2.ppf(1 - 1e-4, df=support.sum() - 1), (counts, expected)


# ------------------------------------------------------------ greedy, sampling

SALTS = (0, 1, 2, 3, 4, 5)
MAX_LEN = 6
TABLE = _table(seed=1, vocab_size=6, eos_bias=1.0)


@functools.lru_cache(maxsize=None)
def _greedy():
  return jax.jit(
      functools.partial(
          decoding.greedy_decode,
          prefix_model(TABLE, MAX_LEN),
          batch_size=len(SALTS),
          max_decode_length=MAX_LEN,
      )
  )(prefix_cache(SALTS, MAX_LEN))


def test_greedy_matches_numpy_argmax_loop():
  out = _greedy()
  tokens, log_probs, ended = reference_decode(TABLE, SALTS, MAX_LEN, greedy_choice)
  assert 0 < ended.sum() < len(SALTS), 'fixture: want rows with and without EOS'
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.reached_eos, ended)
  np.testing.assert_allclose(out.log_probs, log_probs, rtol=1e-5)
  assert_eos_rules(out)


def test_jitted_cached_sampling_matches_uncached_reference():
  rng, temperature = jax.random.key(7), 0.7
  sample = jax.jit(
      functools.partial(
          decoding.temperature_sample,
          prefix_model(TABLE, MAX_LEN),
          batch_size=len(SALTS),
          max_decode_length=MAX_LEN,
          temperature=temperature,
      )
  )
  out = sample(prefix_cache(SALTS, MAX_LEN), rng=rng)
  tokens, log_probs, ended = reference_decode(
      TABLE, SALTS, MAX_LEN, sampling_choice(rng, temperature)
  )
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.reached_eos, ended)
  np.testing.assert_allclose(out.log_probs, log_probs, rtol=1e-5)
  assert_eos_rules(out)
  assert not np.array_equal(out.tokens, _greedy().tokens)


@pytest.mark.parametrize('settings', [dict(temperature=1e-4), dict(top_k=1), dict(top_p=1e-6)])
def test_degenerate_sampling_equals_greedy(settings):
  out = jitted(
      decoding.temperature_sample,
      prefix_model(TABLE, MAX_LEN),
      prefix_cache(SALTS, MAX_LEN),
      rng=jax.random.key(3),
      batch_size=len(SALTS),
      max_decode_length=MAX_LEN,
      **settings,
  )
  greedy = _greedy()
  np.testing.assert_array_equal(out.tokens, greedy.tokens)
  np.testing.assert_array_equal(out.weights, greedy.weights)


def test_eos_weights_padding_and_lengths_over_many_samples():
  salts = np.arange(48) % 7
  out = jitted(
      decoding.temperature_sample,
      prefix_model(TABLE, MAX_LEN),
      prefix_cache(salts, MAX_LEN),
      rng=jax.random.key(11),
      batch_size=len(salts),
      max_decode_length=MAX_LEN,
  )
  lengths = np.asarray(out.lengths)
  assert np.any(~np.asarray(out.reached_eos)) and len(set(lengths)) > 3, lengths
  assert_eos_rules(out)


@pytest.mark.parametrize(
    'eos_steps, expected_steps', [((2, 2, 2), 3), ((2, 4, 3), 5), ((2, 20, 3), 8)]
)
def test_sampling_stops_once_every_row_has_ended(eos_steps, expected_steps):
  calls = []
  # Row b emits token 2 until step eos_steps[b], then EOS, each with p ~ 1.
  model = counting_model(
      lambda pos: 50.0 * jax.nn.one_hot(jnp.where(pos == jnp.array(eos_steps), EOS, 2), 4),
      calls,
  )
  out = jitted(
      decoding.temperature_sample,
      model,
      {},
      rng=jax.random.key(0),
      batch_size=3,
      max_decode_length=8,
  )
  jax.block_until_ready(out)
  jax.effects_barrier()
  assert len(calls) == expected_steps
  expected = np.full((3, 8), PAD)
  for row, step in zip(expected, eos_steps):
    row[: min(step, 8)] = 2
    row[step : step + 1] = EOS
  np.testing.assert_array_equal(out.tokens, expected)
  np.testing.assert_array_equal(out.lengths, [min(step + 1, 8) for step in eos_steps])
  assert_eos_rules(out)


# ------------------------------------------------------- sampling distributions

LOGITS_V = np.log([0.05, 0.3, 0.1, 0.25, 0.02, 0.2, 0.08]).astype(np.float32)
N_SAMPLES = 4000


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sampling_frequencies_match_softmax(temperature):
  counts, out = _sample_one_step(LOGITS_V, N_SAMPLES, temperature=temperature)
  probs = np.exp(_log_softmax(LOGITS_V / temperature))
  assert_frequencies(counts, probs)
  tokens = np.asarray(out.tokens).ravel()
  np.testing.assert_allclose(out.log_probs.ravel(), np.log(probs[tokens]), rtol=1e-5)


def _nucleus_reference(logits, top_k, top_p):
  """Renormalized distribution kept by top-k, then the top-p nucleus."""
  probs = np.exp(_log_softmax(logits))
  order = np.argsort(-probs)
  keep = order[:top_k] if top_k else order
  kept = probs[keep] / probs[keep].sum()
  n = np.searchsorted(np.cumsum(kept), top_p) + 1  # Smallest prefix reaching top_p.
  out = np.zeros_like(probs)
  out[keep[:n]] = kept[:n] / kept[:n].sum()
  return out


@pytest.mark.parametrize('top_k, top_p', [(3, 1.0), (0, 0.7), (4, 0.8), (0, 0.96)])
def test_top_k_top_p_frequencies_match_filtered_distribution(top_k, top_p):
  reference = _nucleus_reference(LOGITS_V, top_k, top_p)
  assert 1 < (reference > 0).sum() < len(LOGITS_V)
  counts, out = _sample_one_step(LOGITS_V, N_SAMPLES, top_k=top_k, top_p=top_p)
  assert_frequencies(counts, reference)
  tokens = np.asarray(out.tokens).ravel()
  np.testing.assert_allclose(out.log_probs.ravel(), np.log(reference[tokens]), rtol=1e-5)


# ------------------------------------------------------------------ beam search


def _length_penalty(alpha, length):
  return ((5.0 + length) / 6.0) ** alpha


def brute_force(table, salt, vocab_size, max_len, alpha):
  """Every distinct hypothesis (cut after its first EOS) with its score, best first."""
  scores = {}
  for seq in itertools.product(range(vocab_size), repeat=max_len):
    if EOS in seq:
      seq = seq[: seq.index(EOS) + 1]
    if seq in scores:
      continue
    inputs = (START,) + seq[:-1]
    log_prob = sum(
        _log_softmax(table[_bucket(salt, inputs[: t + 1], t)])[y] for t, y in enumerate(seq)
    )
    scores[seq] = log_prob / _length_penalty(alpha, len(seq))
  return sorted(scores.items(), key=lambda item: -item[1])


def _as_hypotheses(tokens_KxL, weights_KxL):
  """Each hypothesis as a tuple of its weighted tokens."""
  tokens_KxL, weights_KxL = np.asarray(tokens_KxL), np.asarray(weights_KxL)
  return [tuple(row[w > 0].tolist()) for row, w in zip(tokens_KxL, weights_KxL)]


BEAM_SALTS = (3, 8)
BEAM_V, BEAM_L = 4, 4
BEAM_TABLE = _table(seed=2, vocab_size=BEAM_V, eos_bias=0.5)


def _beam(beam_size, alpha, table=BEAM_TABLE, salts=BEAM_SALTS, max_len=BEAM_L):
  return jax.jit(
      functools.partial(
          decoding.beam_search,
          prefix_model(table, max_len),
          batch_size=len(salts),
          beam_size=beam_size,
          max_decode_length=max_len,
          alpha=alpha,
      )
  )(prefix_cache(salts, max_len))


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_wide_beam_finds_brute_force_top_k(alpha):
  # With K >= V * (V - 1) ** (L - 1) candidates nothing is ever pruned, so the
  # K returned hypotheses are exactly the K best of all sequences.
  beam_size = BEAM_V * (BEAM_V - 1) ** (BEAM_L - 1)
  out = _beam(beam_size, alpha)
  assert_eos_rules(out)
  for b, salt in enumerate(BEAM_SALTS):
    best = brute_force(BEAM_TABLE, salt, BEAM_V, BEAM_L, alpha)[:beam_size]
    assert len(best) == beam_size
    assert _as_hypotheses(out.tokens[b], out.weights[b]) == [h for h, _ in best]
    np.testing.assert_allclose(out.scores[b], [s for _, s in best], rtol=1e-5)


def test_narrow_beam_scores_are_exact_scores_of_its_hypotheses():
  out = _beam(beam_size=3, alpha=0.6)
  assert_eos_rules(out)
  for b, salt in enumerate(BEAM_SALTS):
    all_scores = dict(brute_force(BEAM_TABLE, salt, BEAM_V, BEAM_L, 0.6))
    hyps = _as_hypotheses(out.tokens[b], out.weights[b])
    assert len(set(hyps)) == 3
    np.testing.assert_allclose(out.scores[b], [all_scores[h] for h in hyps], rtol=1e-5)
    assert np.all(np.diff(out.scores[b]) <= 0)


def test_beam_size_one_alpha_zero_equals_greedy():
  out = _beam(beam_size=1, alpha=0.0, table=TABLE, salts=SALTS, max_len=MAX_LEN)
  greedy = _greedy()
  np.testing.assert_array_equal(out.tokens[:, 0], greedy.tokens)
  np.testing.assert_array_equal(out.weights[:, 0], greedy.weights)
  np.testing.assert_allclose(out.scores[:, 0], greedy.log_probs, rtol=1e-5)


def test_beam_size_one_does_not_finish_on_a_runner_up_eos():
  # Step 0: token 2 (p=.5) beats EOS (p=.4); greedy then continues with 3s and ends
  # with a lower log prob than [EOS]. Only top-K candidates may finish, so a beam
  # of one still follows greedy instead of returning [EOS].
  first_V = jnp.log(jnp.array([0.05, 0.4, 0.5, 0.05]))
  rest_V = jnp.array([0.0, 0.1, 0.0, 0.2])

  def model(tokens_Bx1, cache, position):
    logits_V = jnp.where(position == 0, first_V, rest_V)
    return jnp.broadcast_to(logits_V, (tokens_Bx1.shape[0], 4)), cache

  out = jitted(
      decoding.beam_search, model, {}, batch_size=1, beam_size=1, max_decode_length=4, alpha=0.0
  )
  greedy = jitted(decoding.greedy_decode, model, {}, batch_size=1, max_decode_length=4)
  np.testing.assert_array_equal(greedy.tokens, [[2, 3, 3, 3]])
  np.testing.assert_array_equal(out.tokens[:, 0], greedy.tokens)


def test_beam_search_stops_early():
  calls = []
  # EOS has probability ~1 at every step; other tokens tie at ~e^-20.
  model = counting_model(lambda pos: jnp.array([-20.0, 0.0, -20.0, -20.0]), calls)
  out = jitted(
      decoding.beam_search, model, {}, batch_size=1, beam_size=2, max_decode_length=8, alpha=0.6
  )
  jax.block_until_ready(out)
  jax.effects_barrier()
  # Step 0 finishes [EOS]; step 1 finishes [0, EOS], after which no live beam
  # (log prob <= -40) can beat -20 / penalty(2).
  assert len(calls) == 2
  np.testing.assert_array_equal(out.tokens[0, :, :2], [[EOS, PAD], [0, EOS]])
  np.testing.assert_allclose(out.scores[0], [0.0, -20.0 / _length_penalty(0.6, 2)], atol=1e-5)


def test_beam_search_leaves_missing_hypotheses_empty():
  # V=2, L=1 has only two hypotheses, [0] and [EOS], for four slots.
  out = jitted(
      decoding.beam_search,
      constant_model(np.log([0.3, 0.7])),
      {},
      batch_size=1,
      beam_size=4,
      max_decode_length=1,
      alpha=0.0,
  )
  np.testing.assert_allclose(out.scores[0], np.log([0.7, 0.3]).tolist() + [-np.inf] * 2)
  np.testing.assert_array_equal(out.tokens[0, :2, 0], [EOS, 0])
  np.testing.assert_array_equal(out.weights[0, :, 0], [1, 1, 0, 0])


# ---------------------------------------------------------------- bad arguments

_SAMPLE = dict(rng=jax.random.key(0), batch_size=2, max_decode_length=3)
_BEAM = dict(batch_size=2, beam_size=2, max_decode_length=3)


@pytest.mark.parametrize(
    'fn, kwargs, name',
    [
        (decoding.temperature_sample, dict(_SAMPLE, temperature=-0.5), 'temperature'),
        (decoding.temperature_sample, dict(_SAMPLE, temperature=np.nan), 'temperature'),
        (decoding.temperature_sample, dict(_SAMPLE, top_k=-1), 'top_k'),
        (decoding.temperature_sample, dict(_SAMPLE, top_k=2.0), 'top_k'),
        (decoding.temperature_sample, dict(_SAMPLE, top_p=0.0), 'top_p'),
        (decoding.temperature_sample, dict(_SAMPLE, top_p=1.5), 'top_p'),
        (decoding.temperature_sample, dict(_SAMPLE, batch_size=0), 'batch_size'),
        (decoding.temperature_sample, dict(_SAMPLE, max_decode_length=0), 'max_decode_length'),
        (decoding.temperature_sample, dict(_SAMPLE, rng=None), 'rng'),
        (decoding.greedy_decode, dict(batch_size=2, max_decode_length=-1), 'max_decode_length'),
        (decoding.beam_search, dict(_BEAM, beam_size=0), 'beam_size'),
        (decoding.beam_search, dict(_BEAM, alpha=-0.1), 'alpha'),
        (decoding.beam_search, dict(_BEAM, max_decode_length=0), 'max_decode_length'),
    ],
)
def test_bad_arguments_raise_naming_the_argument(fn, kwargs, name):
  model = constant_model(np.zeros(4))
  with pytest.raises(ValueError, match=name):
    fn(model, {'x': jnp.zeros((2, 1))}, **kwargs)


@pytest.mark.parametrize(
    'fn, kwargs', [(decoding.temperature_sample, _SAMPLE), (decoding.beam_search, _BEAM)]
)
def test_cache_without_batch_axis_raises(fn, kwargs):
  model = constant_model(np.zeros(4))
  with pytest.raises(ValueError, match='initial_cache'):
    fn(model, {'index': jnp.zeros((), jnp.int32)}, **kwargs)
  with pytest.raises(ValueError, match='initial_cache'):
    fn(model, {'k': jnp.zeros((3, 5))}, **kwargs)
