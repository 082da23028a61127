"""gkd_t5x.optimizers: schedules, optimizers and make_optimizer against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gin
from gkd_t5x import optimizers


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _lrs(schedule, steps):
  return np.array([float(schedule(jnp.asarray(s))) for s in steps])


# ------------------------------------------------------------------------------------------
# Schedules.
# ------------------------------------------------------------------------------------------


def test_constant_schedule():
  np.testing.assert_allclose(
      _lrs(optimizers.constant_schedule(3e-4), [0, 1, 10**6]), 3e-4, rtol=1e-6
  )


def test_warmup_rsqrt_schedule_t5x_values():
  schedule = optimizers.warmup_rsqrt_schedule(learning_rate=1.0, warmup_steps=10000)
  steps = [0, 1, 5000, 9999, 10000, 10001, 40000, 10**6]
  expected = [1.0 / math.sqrt(max(s, 10000)) for s in steps]
  np.testing.assert_allclose(_lrs(schedule, steps), expected, rtol=1e-6)
  assert _lrs(schedule, [0])[0] == pytest.approx(0.01)
  assert _lrs(schedule, [40000])[0] == pytest.approx(0.005)
  scaled = optimizers.warmup_rsqrt_schedule(learning_rate=2.0, warmup_steps=100)
  np.testing.assert_allclose(_lrs(scaled, [0, 99, 100, 400]), [0.2, 0.2, 0.2, 0.1], rtol=1e-6)


def test_warmup_cosine_schedule():
  lr, warmup, decay, end = 1e-3, 10, 110, 1e-4
  schedule = optimizers.warmup_cosine_schedule(lr, warmup, decay, end_value=end)
  steps = [0, 1, 5, 9, 10, 11, 60, 109, 110, 500]

  def ref(s):
    if s < warmup:
      return lr * s / warmup
    s = min(s, decay)
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (decay - warmup)))

  np.testing.assert_allclose(_lrs(schedule, steps), [ref(s) for s in steps], rtol=1e-5, atol=1e-9)


def test_linear_warmup_constant_schedule():
  schedule = optimizers.linear_warmup_constant_schedule(2e-4, 100)
  steps = [0, 1, 50, 99, 100, 101, 10**5]
  expected = [2e-4 * min(s, 100) / 100 for s in steps]
  np.testing.assert_allclose(_lrs(schedule, steps), expected, rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(
      _lrs(optimizers.linear_warmup_constant_schedule(2e-4, 0), [0, 7]), 2e-4, rtol=1e-6
  )


def test_linear_warmup_constant_schedule_with_cooldown():
  # The paper's XSum schedule (Table A.1), scaled down 100x.
  schedule = optimizers.linear_warmup_constant_schedule(
      3e-4, 20, cooldown_start=300, cooldown_end=400
  )

  def ref(step):
    if step < 20:
      return 3e-4 * step / 20
    if step < 300:
      return 3e-4
    return 3e-4 * max(400 - step, 0) / 100

  steps = [0, 10, 20, 299, 300, 350, 399, 400, 1000]
  np.testing.assert_allclose(_lrs(schedule, steps), [ref(s) for s in steps], rtol=1e-5, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Optimizers.
# ------------------------------------------------------------------------------------------


def _params_and_grads(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      'w': rng.normal(size=(3, 5)).astype(np.float32),
      'b': rng.normal(size=(5,)).astype(np.float32),
  }
  grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  return params, grads


@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_adamw_matches_numpy(weight_decay):
  lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-6
  tx = optimizers.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  params, grads_seq = _params_and_grads()[0], [_params_and_grads(s)[1] for s in (1, 2)]
  state = tx.init(params)
  p = dict(params)
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  jparams = jax.tree.map(jnp.asarray, params)
  for t, grads in enumerate(grads_seq, start=1):
    updates, state = tx.update(grads, state, jparams)
    jparams = optax.apply_updates(jparams, updates)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * grads[k]
      v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
      mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
      p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * p[k])
  for k in p:
    np.testing.assert_allclose(np.asarray(jparams[k]), p[k], rtol=1e-5, atol=1e-6)


def _numpy_adafactor(
    params, grads_seq, lr, decay_rate=0.8, eps1=1e-30, eps2=1e-3, threshold=1.0, min_dim=128
):
  """Reference Adafactor (Shazeer & Stern / T5X), returns the updates of each step."""
  v_row, v_col, v = {}, {}, {}
  all_updates = []
  for step, grads in enumerate(grads_seq):
    beta2 = 1.0 - (step + 1.0) ** (-decay_rate)
    updates = {}
    for k, g in grads.items():
      g = g.astype(np.float64)
      g2 = g**2 + eps1
      if g.ndim == 2 and min(g.shape) >= min_dim:
        # Both dims >= min_dim; as in optax / T5X, rows = the smaller of the two largest axes.
        d1, d0 = np.argsort(g.shape)[-2:]
        r = np.mean(g2, axis=d0)
        c = np.mean(g2, axis=d1)
        v_row[k] = beta2 * v_row.get(k, 0.0) + (1 - beta2) * r
        v_col[k] = beta2 * v_col.get(k, 0.0) + (1 - beta2) * c
        row_factor = (v_row[k] / np.mean(v_row[k])) ** -0.5
        col_factor = v_col[k] ** -0.5
        u = g * np.expand_dims(row_factor, d0) * np.expand_dims(col_factor, d1)
      else:
        v[k] = beta2 * v.get(k, 0.0) + (1 - beta2) * g2
        u = g / np.sqrt(v[k])
      u = u / max(1.0, np.sqrt(np.mean(u**2)) / threshold)
      scale = max(eps2, np.sqrt(np.mean(params[k].astype(np.float64) ** 2)))
      updates[k] = -lr * scale * u
      params = {**params, k: params[k] + updates[k]}
    all_updates.append(updates)
  return all_updates


def test_adafactor_state_factored_for_matrix_only():
  tx = optimizers.adafactor(1e-2)
  params = {'m': jnp.zeros((256, 512)), 'vec': jnp.zeros((4,)), 'small': jnp.zeros((4, 300))}
  state = tx.init(params)
  factored_state = state[0]
  assert isinstance(factored_state, optax.FactoredState)
  assert factored_state.v_row['m'].shape == (256,)
  assert factored_state.v_col['m'].shape == (512,)
  assert factored_state.v['m'].shape == (1,)
  for name in ('vec', 'small'):  # 1-d, or a second-largest dim < 128: a full second moment.
    assert factored_state.v[name].shape == params[name].shape
    assert factored_state.v_row[name].shape == (1,)
    assert factored_state.v_col[name].shape == (1,)


def test_adafactor_matches_numpy_reference():
  rng = np.random.default_rng(0)
  params = {
      'm': rng.normal(size=(256, 256)).astype(np.float32) * 0.05,
      'vec': rng.normal(size=(4,)).astype(np.float32),
      'tiny': np.full((4,), 1e-5, np.float32),
  }  # RMS < epsilon2: scale is 1e-3.
  # Non-uniform gradient scales, so the factored row / column statistics matter.
  row_scale = np.linspace(0.1, 3.0, 256, dtype=np.float32)[:, None]
  grads_seq = [
      {
          k: (rng.normal(size=p.shape).astype(np.float32) * (row_scale if k == 'm' else 1.0))
          for k, p in params.items()
      }
      for _ in range(3)
  ]
  lr = 0.05
  tx = optimizers.adafactor(lr)
  state = tx.init(params)
  jparams = jax.tree.map(jnp.asarray, params)
  got = []
  for grads in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, jparams)
    jparams = optax.apply_updates(jparams, updates)
    got.append(updates)
  expected = _numpy_adafactor(params, grads_seq, lr)
  for step, (g, e) in enumerate(zip(got, expected)):
    for k in params:
      np.testing.assert_allclose(
          np.asarray(g[k]), e[k], rtol=2e-4, atol=1e-9, err_msg=f'step {step} param {k}'
      )


def test_adafactor_first_update_properties():
  # At the first step beta2 = 0, so a 1-d update is g / |g| = sign(g) with RMS 1 (not
  # clipped at threshold 1); scaled by lr * max(1e-3, RMS(param)).
  lr = 0.1
  params = {'a': jnp.array([3.0, -4.0, 0.0, 5.0]), 'tiny': jnp.full((4,), 1e-6)}
  grads = {'a': jnp.array([2.0, -0.5, 1e-3, -7.0]), 'tiny': jnp.array([1.0, -1.0, 1.0, 1.0])}
  tx = optimizers.adafactor(lr)
  updates, _ = tx.update(grads, tx.init(params), params)
  rms_a = np.sqrt(np.mean(np.asarray(params['a']) ** 2))
  np.testing.assert_allclose(updates['a'], -lr * rms_a * np.sign(grads['a']), rtol=1e-5)
  np.testing.assert_allclose(updates['tiny'], -lr * 1e-3 * np.sign(grads['tiny']), rtol=1e-5)
  # Clipping: with threshold 0.5 the update RMS / (lr * param scale) is 0.5.
  tx = optimizers.adafactor(lr, clipping_threshold=0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
      np.sqrt(np.mean(np.asarray(updates['a']) ** 2)) / (lr * rms_a), 0.5, rtol=1e-5
  )
  # Without parameter scaling the update is lr-sized.
  tx = optimizers.adafactor(lr, multiply_by_parameter_scale=False)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], -lr * np.sign(grads['a']), rtol=1e-5)


def test_adafactor_clipping_bounds_update_rms():
  # A matrix whose factored estimate mismatches the gradient gives RMS(U) > 1 before clipping.
  rng = np.random.default_rng(3)
  params = {'m': jnp.asarray(rng.normal(size=(128, 128)).astype(np.float32))}
  # Diagonal G = diag(d): U_ii^2 = sum(d^2) / d_i^2, so mean(U^2) = sum(d^2) sum(d^-2) / n^2,
  # > 1 (Cauchy-Schwarz) unless d is constant.
  g = np.diag(np.linspace(0.1, 10.0, 128)).astype(np.float32)
  grads = {'m': jnp.asarray(g)}
  lr = 1.0
  rms_p = float(np.sqrt(np.mean(np.asarray(params['m']) ** 2)))
  no_clip = optimizers.adafactor(lr, clipping_threshold=None)
  unclipped, _ = no_clip.update(grads, no_clip.init(params), params)
  unclipped_rms = float(np.sqrt(np.mean(np.asarray(unclipped['m']) ** 2))) / (lr * rms_p)
  assert unclipped_rms > 1.0
  tx = optimizers.adafactor(lr)
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
      float(np.sqrt(np.mean(np.asarray(clipped['m']) ** 2))) / rms_p, 1.0, rtol=1e-5
  )
  np.testing.assert_allclose(clipped['m'], unclipped['m'] / unclipped_rms, rtol=1e-5, atol=1e-12)


def test_adafactor_with_schedule_matches_optax_adafactor():
  schedule = optimizers.warmup_rsqrt_schedule(1.0, 10)
  tx = optimizers.adafactor(schedule)
  ref = optax.adafactor(schedule)
  params, _ = _params_and_grads()
  state, ref_state = tx.init(params), ref.init(params)
  for seed in range(1, 4):
    grads = _params_and_grads(seed)[1]
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = ref.update(grads, ref_state, params)
    for k in params:
      np.testing.assert_allclose(updates[k], ref_updates[k], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# make_optimizer.
# ------------------------------------------------------------------------------------------


def test_make_optimizer_without_extras_is_the_optimizer():
  inner = optax.sgd(0.5)
  tx = optimizers.make_optimizer(inner)
  assert isinstance(tx, optax.GradientTransformation)
  params, grads = _params_and_grads()
  updates, _ = tx.update(grads, tx.init(params))
  for k in params:
    np.testing.assert_allclose(updates[k], -0.5 * grads[k], rtol=1e-6)


def test_clipping_scales_to_max_grad_norm():
  tx = optimizers.make_optimizer(optax.sgd(1.0), max_grad_norm=1.0)
  assert isinstance(tx, optax.GradientTransformation)
  params = {'a': jnp.zeros((2,)), 'b': jnp.zeros((1,))}
  grads = {'a': jnp.array([6.0, 0.0]), 'b': jnp.array([8.0])}  # global norm 10.
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(updates['b'], [-0.8], rtol=1e-6)
  norm = float(optax.global_norm(updates))
  assert norm == pytest.approx(1.0, rel=1e-6)
  # A gradient under the bound passes unchanged.
  small = {'a': jnp.array([0.3, 0.0]), 'b': jnp.array([0.4])}
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates['b'], [-0.4], rtol=1e-6)


def test_accumulation_updates_every_k_steps_with_mean_gradient():
  k, lr = 4, 0.5
  tx = optimizers.make_optimizer(optax.sgd(lr), accumulation_steps=k)
  assert isinstance(tx, optax.GradientTransformation)
  assert not isinstance(tx, optax.MultiSteps)
  params = {'w': jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  rng = np.random.default_rng(0)
  update_fn = jax.jit(tx.update)
  grads_seen = []
  for step in range(2 * k):
    grads = {'w': jnp.asarray(rng.normal(size=(3,)).astype(np.float32))}
    grads_seen.append(np.asarray(grads['w']))
    before = np.asarray(params['w'])
    updates, state = update_fn(grads, state, params)
    params = optax.apply_updates(params, updates)
    if (step + 1) % k:
      np.testing.assert_array_equal(np.asarray(updates['w']), 0.0)
      np.testing.assert_array_equal(np.asarray(params['w']), before)
    else:
      mean_grad = np.mean(grads_seen[-k:], axis=0)
      np.testing.assert_allclose(
          np.asarray(params['w']), before - lr * mean_grad, rtol=1e-5, atol=1e-6
      )


def test_accumulation_clips_the_mean_gradient():
  tx = optimizers.make_optimizer(optax.sgd(1.0), max_grad_norm=1.0, accumulation_steps=2)
  params = {'w': jnp.zeros((2,))}
  state = tx.init(params)
  _, state = tx.update({'w': jnp.array([10.0, 0.0])}, state, params)
  updates, _ = tx.update({'w': jnp.array([10.0, 0.0])}, state, params)
  np.testing.assert_allclose(updates['w'], [-1.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    'kwargs, name',
    [
        (dict(accumulation_steps=0), 'accumulation_steps'),
        (dict(accumulation_steps=2.0), 'accumulation_steps'),
        (dict(accumulation_steps=-1), 'accumulation_steps'),
        (dict(accumulation_steps=True), 'accumulation_steps'),
        (dict(max_grad_norm=0.0), 'max_grad_norm'),
        (dict(max_grad_norm=-1.0), 'max_grad_norm'),
        (dict(max_grad_norm='1'), 'max_grad_norm'),
    ],
)
def test_make_optimizer_rejects_bad_settings(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optimizers.make_optimizer(optax.sgd(1.0), **kwargs)


def test_make_optimizer_rejects_non_optimizer():
  with pytest.raises(ValueError, match='optimizer'):
    optimizers.make_optimizer(optimizers.constant_schedule(1.0))


@pytest.mark.parametrize(
    'build, name',
    [
        (lambda: optimizers.warmup_rsqrt_schedule(1.0, 0), 'warmup_steps'),
        (lambda: optimizers.warmup_rsqrt_schedule(-1.0, 10), 'learning_rate'),
        (lambda: optimizers.warmup_cosine_schedule(1.0, 10, 10), 'decay_steps'),
        (lambda: optimizers.warmup_cosine_schedule(1.0, -1, 10), 'warmup_steps'),
        (lambda: optimizers.linear_warmup_constant_schedule(1.0, 1.5), 'warmup_steps'),
        (lambda: optimizers.linear_warmup_constant_schedule(1.0, 10, 5, 20), 'cooldown_start'),
        (lambda: optimizers.linear_warmup_constant_schedule(1.0, 10, 20, 20), 'cooldown_end'),
        (lambda: optimizers.linear_warmup_constant_schedule(1.0, 10, 20), 'cooldown_start'),
        (lambda: optimizers.constant_schedule(0.0), 'learning_rate'),
        (lambda: optimizers.adafactor(1.0, epsilon2=1e-2), 'epsilon2'),
        (lambda: optimizers.adafactor(1.0, clipping_threshold=0.0), 'clipping_threshold'),
        (lambda: optimizers.adamw(1.0, weight_decay=-0.1), 'weight_decay'),
    ],
)
def test_builders_reject_bad_settings(build, name):
  with pytest.raises(ValueError, match=name):
    build()


# ------------------------------------------------------------------------------------------
# Gin.
# ------------------------------------------------------------------------------------------

GIN_SNIPPET = """
from gkd_t5x import optimizers
OPTIMIZER = @optimizers.make_optimizer()
optimizers.make_optimizer.optimizer = @optimizers.adafactor()
optimizers.adafactor.learning_rate = @optimizers.warmup_rsqrt_schedule()
optimizers.warmup_rsqrt_schedule.learning_rate = 1.0
optimizers.warmup_rsqrt_schedule.warmup_steps = 10000
"""


def _macro(name):
  value = gin.query_parameter('%' + name)
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()
  return value


def _assert_runs(tx, lr_step0):
  params = {'m': jnp.ones((256, 128)) * 0.5, 'b': jnp.ones((4,))}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  # First step: U = sign(g) = 1 everywhere, RMS 1, so update = -lr * RMS(param).
  np.testing.assert_allclose(updates['m'], -lr_step0 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(updates['b'], -lr_step0 * 1.0, rtol=1e-5)
  return state


def test_gin_snippet_builds_adafactor_with_rsqrt(clean_gin):
  gin.parse_config(GIN_SNIPPET)
  tx = _macro('OPTIMIZER')
  assert isinstance(tx, optax.GradientTransformation)
  _assert_runs(tx, 0.01)


def test_gin_snippet_with_clipping_and_accumulation(clean_gin):
  gin.parse_config(GIN_SNIPPET + """
optimizers.make_optimizer.max_grad_norm = 1.0
optimizers.make_optimizer.accumulation_steps = 2
""")
  tx = _macro('OPTIMIZER')
  params = {'w': jnp.ones((4,))}
  state = tx.init(params)
  updates, state = tx.update({'w': jnp.ones((4,))}, state, params)
  np.testing.assert_array_equal(updates['w'], 0.0)
  updates, state = tx.update({'w': jnp.ones((4,))}, state, params)
  np.testing.assert_allclose(updates['w'], -0.01, rtol=1e-5)


def test_gin_adamw_with_cosine(clean_gin):
  gin.parse_config("""
from gkd_t5x import optimizers
OPTIMIZER = @optimizers.make_optimizer()
optimizers.make_optimizer.optimizer = @optimizers.adamw()
optimizers.adamw.learning_rate = @optimizers.warmup_cosine_schedule()
optimizers.warmup_cosine_schedule.learning_rate = 1e-3
optimizers.warmup_cosine_schedule.warmup_steps = 0
optimizers.warmup_cosine_schedule.decay_steps = 100
""")
  tx = _macro('OPTIMIZER')
  params = {'w': jnp.ones((3,))}
  updates, _ = tx.update({'w': jnp.ones((3,))}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -1e-3, rtol=1e-4)
