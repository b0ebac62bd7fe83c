"""Tests for optstab.clipping: FAQ S5 fixed and percentile gradient clipping."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab
from optstab import clipping


def _faq_clip_numpy(tree, lam):
  """The FAQ rule in NumPy (float64): if ||g|| > lambda then g' = lambda g / ||g||."""
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  norm = np.sqrt(sum(np.sum(x * x) for x in leaves))
  scale = lam / norm if norm > lam else 1.0
  return [x * scale for x in leaves], norm


def _tree(key, scale):
  k1, k2 = jax.random.split(key)
  return {"w": scale * jax.random.normal(k1, (7, 5)), "b": scale * jax.random.normal(k2, (5,))}


# --- fixed threshold: optax.clip_by_global_norm is the FAQ rule -------------


def test_clip_by_global_norm_is_optax_and_is_the_faq_rule():
  assert optstab.clip_by_global_norm is optax.clip_by_global_norm
  lam = 2.0
  update = jax.jit(optstab.clip_by_global_norm(lam).update)
  for i, scale in enumerate([0.01, 0.1, 0.3, 1.0, 10.0, 1e4]):
    g = _tree(jax.random.key(i), scale)
    out, _ = update(g, optax.EmptyState())
    want, norm = _faq_clip_numpy(g, lam)
    for got, exp in zip(jax.tree.leaves(out), want):
      np.testing.assert_allclose(np.asarray(got), exp, rtol=2e-6, atol=0)
    if norm < lam:  # below the threshold: untouched, bit for bit
      chex.assert_trees_all_equal(out, g)


# --- clip_threshold ---------------------------------------------------------


def test_clip_threshold_matches_numpy_percentile_on_finite_norms():
  rng = np.random.default_rng(0)
  norms = np.exp(rng.normal(size=301))
  noisy = norms.copy()
  noisy[[3, 50, 200]] = [np.nan, np.inf, -np.inf]
  finite = noisy[np.isfinite(noisy)]
  for p in (90.0, 50.0, 99.5, 100.0, 1e-3):
    assert optstab.clip_threshold(noisy, p) == np.percentile(finite, p)
  assert optstab.clip_threshold(noisy) == np.percentile(finite, 90)
  assert optstab.clip_threshold([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(4.6)
  assert optstab.clip_threshold(jnp.array([2.0, np.nan])) == 2.0


@pytest.mark.parametrize("norms, percentile, match", [
    ([1.0, 2.0], 0.0, "percentile"),
    ([1.0, 2.0], 100.5, "percentile"),
    ([1.0, 2.0], -5, "percentile"),
    ([1.0, 2.0], float("nan"), "percentile"),
    ([], 90.0, "norms"),
    ([np.nan, np.inf], 90.0, "norms"),
    ([[1.0, 2.0]], 90.0, "norms"),
    ([1.0, -2.0, 3.0], 90.0, r"norms must be non-negative .*; got '-2.0 at index 1'"),  # issue 14
])
def test_clip_threshold_bad_input(norms, percentile, match):
  with pytest.raises(ValueError, match=match):
    optstab.clip_threshold(norms, percentile)


# --- percentile_clip --------------------------------------------------------


def _norm_sequence(num_steps, seed=0):
  """Seeded log-normal norms with spikes, a NaN and an Inf."""
  rng = np.random.default_rng(seed)
  norms = np.exp(rng.normal(0.0, 0.4, size=num_steps)).astype(np.float32)
  norms[rng.choice(num_steps, size=num_steps // 10, replace=False)] *= 50.0  # spikes
  norms[[5, 17, 60]] = [np.nan, np.inf, np.nan]
  return norms


def _thresholds(states):
  """The per-step thresholds, +inf where none was in force (the state holds NO_THRESHOLD)."""
  got = np.asarray(states.threshold, np.float64)
  return np.where(got == clipping.NO_THRESHOLD, np.inf, got)


def _run_scan(tx, grads):
  """Runs tx over grads[t] (a [T, d] array) in one jitted scan; returns outputs and states."""
  state0 = tx.init(grads[0])

  def step(state, g):
    out, state = tx.update(g, state)
    return state, (out, state)

  final, (outs, states) = jax.jit(lambda s, gs: jax.lax.scan(step, s, gs))(state0, grads)
  return final, outs, states


def _numpy_reference(norms, percentile, window, min_history, initial=np.inf, cap=np.inf):
  thresholds, history = [], []
  for n in norms:
    if len(history) >= min_history:
      thresholds.append(min(np.percentile(np.asarray(history[-window:], np.float64), percentile), cap))
    else:
      thresholds.append(initial)
    if np.isfinite(n) and n > 0:  # zero norms are not recorded either
      history.append(float(n))
  return np.asarray(thresholds)


@pytest.mark.parametrize("percentile, window, min_history", [(90.0, 32, 8), (50.0, 7, 1),
                                                             (100.0, 16, 16)])
def test_percentile_clip_matches_numpy_over_the_same_window(percentile, window, min_history):
  num_steps, dim = 120, 4
  norms = _norm_sequence(num_steps)
  direction = np.random.default_rng(1).normal(size=(num_steps, dim)).astype(np.float32)
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  grads = jnp.asarray(direction * norms[:, None])
  tx = optstab.percentile_clip(percentile, window_size=window, min_history=min_history)
  final, outs, states = _run_scan(tx, grads)

  # The same window: the NumPy reference sees the norms the device computed.
  g_norms = np.asarray(states.grad_norm, np.float64)
  np.testing.assert_allclose(g_norms, np.linalg.norm(np.asarray(grads, np.float64), axis=1),
                             rtol=1e-6)
  want = _numpy_reference(g_norms, percentile, window, min_history)
  got = _thresholds(states)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  # float32 on the device vs float64 in NumPy: a few float32 roundings of the
  # interpolation between neighbours (relative to the larger neighbour).
  np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=4e-6)

  finite = np.isfinite(g_norms)
  want_clipped = finite & (g_norms > want)
  np.testing.assert_array_equal(np.asarray(states.clipped), want_clipped)
  out_norms = np.linalg.norm(np.asarray(outs, np.float64), axis=1)
  np.testing.assert_allclose(out_norms[want_clipped], got[want_clipped], rtol=1e-6)
  untouched = finite & ~want_clipped
  np.testing.assert_array_equal(np.asarray(outs)[untouched], np.asarray(grads)[untouched])
  assert int(final.num_steps) == num_steps
  assert int(final.num_clipped) == int(want_clipped.sum())
  assert int(final.num_nonfinite) == int((~finite).sum())
  assert int(final.history_size) == min(window, int(finite.sum()))
  if percentile == 90.0:
    assert 0 < want_clipped.sum() < num_steps // 2


def test_sorted_window_with_repeated_norms():
  # Many ties: the incremental sorted window must drop exactly one copy.
  rng = np.random.default_rng(3)
  norms = rng.choice([1.0, 2.0, 3.0, np.nan], size=60).astype(np.float32)
  grads = jnp.asarray(norms[:, None])
  final, _, states = _run_scan(optstab.percentile_clip(70.0, window_size=5, min_history=1), grads)
  want = _numpy_reference(norms, 70.0, 5, 1)
  got = _thresholds(states)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
  window = np.asarray(final.norm_history)
  np.testing.assert_array_equal(np.asarray(final.sorted_history), np.sort(window))


def test_nonfinite_norms_never_enter_the_history_and_pass_through():
  tx = optstab.percentile_clip(90.0, window_size=4, min_history=1)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(2))
  _, state = update(jnp.array([3.0, 4.0]), state)
  before = state.norm_history
  for bad in ([np.nan, 1.0], [np.inf, 0.0]):
    out, state = update(jnp.array(bad), state)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(bad, np.float32))
    assert not bool(state.clipped)
  chex.assert_trees_all_equal(state.norm_history, before)
  assert int(state.history_size) == 1 and int(state.num_nonfinite) == 2
  assert int(state.num_steps) == 3


class PercentileClipBehaviourTest(chex.TestCase):

  @chex.variants(with_jit=True)
  def test_below_untouched_above_mapped_to_exactly_lambda(self):
    tx = optstab.percentile_clip(50.0, window_size=8, min_history=1, initial_threshold=5.0)
    update = self.variant(tx.update)
    state = tx.init(_tree(jax.random.key(0), 1.0))
    small = _tree(jax.random.key(1), 0.05)
    out, state = update(small, state)
    chex.assert_trees_all_equal(out, small)  # below lambda = 5 (initial threshold)
    lam = float(state.threshold)
    assert lam == 5.0 and not bool(state.clipped)
    big = _tree(jax.random.key(2), 100.0)
    out, state = update(big, state)
    lam = float(state.threshold)  # median of one recorded norm: that norm
    np.testing.assert_allclose(lam, float(optax.tree.norm(small)), rtol=1e-6)
    assert bool(state.clipped)
    np.testing.assert_allclose(float(optax.tree.norm(out)), lam, rtol=1e-6)
    want, _ = _faq_clip_numpy(big, lam)
    for got, exp in zip(jax.tree.leaves(out), want):
      np.testing.assert_allclose(np.asarray(got), exp, rtol=2e-6, atol=1e-9)

  def test_fixed_threshold_equals_clip_by_global_norm(self):
    # Bit-identical below the threshold; above it, g * (lambda / ||g||) vs
    # optax's (g / ||g||) * lambda: equal up to float32 rounding.
    lam = 1.5
    tx = optstab.percentile_clip(window_size=64, min_history=64, initial_threshold=lam)
    ref = optax.clip_by_global_norm(lam)
    state = tx.init(_tree(jax.random.key(0), 1.0))
    update = jax.jit(tx.update)
    for i, scale in enumerate([0.1, 3.0, 0.5, 40.0, 1e3]):
      g = _tree(jax.random.key(10 + i), scale)
      out, state = update(g, state)
      want, _ = ref.update(g, optax.EmptyState())
      if bool(state.clipped):
        chex.assert_trees_all_close(out, want, rtol=1e-6, atol=0)
      else:
        chex.assert_trees_all_equal(out, want)
    assert int(state.num_clipped) == 4  # all but the 0.1-scale tree (norm ~0.7)

  def test_warmup_of_the_window_no_clipping_until_min_history(self):
    tx = optstab.percentile_clip(90.0, window_size=10, min_history=3)
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(1))
    for n in (1.0, 1e5, 2.0):  # a huge early norm is NOT clipped: no estimate yet
      out, state = update(jnp.array([n]), state)
      assert float(out[0]) == n and not bool(state.clipped)
      assert float(state.threshold) == clipping.NO_THRESHOLD
    out, state = update(jnp.array([1e5]), state)  # window [1, 1e5, 2]: p90 = 80000.4
    np.testing.assert_allclose(float(state.threshold), np.percentile([1.0, 1e5, 2.0], 90), rtol=1e-6)
    assert bool(state.clipped)

  def test_initial_threshold_clips_from_step_zero(self):
    tx = optstab.percentile_clip(90.0, window_size=10, min_history=3, initial_threshold=4.0)
    state = tx.init(jnp.zeros(1))
    out, state = jax.jit(tx.update)(jnp.array([1e5]), state)
    assert bool(state.clipped) and float(out[0]) == 4.0
    assert float(state.norm_history[0]) == 1e5  # the *unclipped* norm is recorded

  def test_failure_mode_slowly_growing_norm_raises_the_threshold(self):
    # The documented failure mode: a norm growing 2% a step drags the
    # threshold up with it: every step is "clipped", by a few percent, and the updates
    # grow unchecked 40x; max_threshold caps the threshold and the updates.
    norms = 1.02 ** np.arange(200, dtype=np.float32)
    grads = jnp.asarray(norms[:, None])
    _, outs, states = _run_scan(optstab.percentile_clip(90.0, window_size=50, min_history=10),
                                grads)
    thresholds = np.asarray(states.threshold)[10:]
    assert np.all(np.diff(thresholds) > 0)
    assert bool(np.asarray(states.clipped)[10:].all())
    # p90 of the last 50 lags ~5 steps: each update is cut by at most 1.02**6 ~ 12.6%.
    assert float((norms[10:] / thresholds).max()) < 1.13
    assert float(np.abs(np.asarray(outs)).max()) > 40.0
    _, capped_outs, capped = _run_scan(
        optstab.percentile_clip(90.0, window_size=50, min_history=10, max_threshold=5.0), grads)
    assert float(np.asarray(capped.threshold)[10:].max()) == 5.0
    assert float(np.abs(np.asarray(capped_outs)).max()) <= 5.0 * (1 + 1e-6)
    at_cap = np.asarray(capped.threshold) == 5.0
    np.testing.assert_allclose(np.abs(np.asarray(capped_outs)[at_cap, 0]), 5.0, rtol=1e-6)

  def test_state_names_found_by_tree_get_in_a_chain(self):
    opt = optax.chain(optstab.record_grad_norm(capacity=4),
                      optstab.percentile_clip(window_size=8, min_history=1),
                      optstab.adam(1e-3))
    params = {"w": jnp.ones((3, 2))}
    state = opt.init(params)
    _, state = jax.jit(opt.update)({"w": jnp.full((3, 2), 2.0)}, state, params)
    for name in ("grad_norm", "threshold", "clipped", "num_steps", "num_clipped", "num_nonfinite"):
      assert optax.tree.get(state, name) is not None, name
    np.testing.assert_allclose(float(optax.tree.get(state, "grad_norm")), np.sqrt(24.0), rtol=1e-6)
    assert isinstance(optax.tree.get(state, "PercentileClipState"), optstab.PercentileClipState)

  def test_no_recompilation_and_bounded_state(self):
    tx = optstab.percentile_clip(window_size=16, min_history=2)
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state = tx.init(jnp.zeros(3))
    sizes = set()
    for i in range(40):
      _, state = update(jnp.full(3, float(i + 1)), state)
      sizes.add(sum(x.size for x in jax.tree.leaves(state)))
    assert sizes == {2 * 16 + 8} and int(state.history_size) == 16

  def test_state_can_be_donated(self):
    # No two state fields may share a buffer, or donating the state fails.
    opt = optax.chain(optstab.record_grad_norm(capacity=4), optstab.percentile_clip(window_size=4, min_history=2))
    state = opt.init(jnp.zeros(2))
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers)
    update = jax.jit(opt.update, donate_argnums=1)
    for _ in range(2):
      _, state = update(jnp.ones(2), state)
    assert int(optax.tree.get(state, "num_steps")) == 2

  def test_inject_hyperparams_percentile(self):
    make = optax.inject_hyperparams(optstab.percentile_clip,
                                    static_args=("window_size", "min_history"))
    tx = make(percentile=90.0, window_size=8, min_history=1)
    plain = optstab.percentile_clip(90.0, window_size=8, min_history=1)
    state, pstate = tx.init(jnp.zeros(1)), plain.init(jnp.zeros(1))
    update, plain_update = jax.jit(tx.update), jax.jit(plain.update)
    for n in (1.0, 2.0, 3.0, 4.0, 10.0):
      g = jnp.array([n])
      out, state = update(g, state)
      pout, pstate = plain_update(g, pstate)
      chex.assert_trees_all_close(out, pout)
    assert float(optax.tree.get(state, "threshold")) == pytest.approx(np.percentile([1, 2, 3, 4], 90))
    state.hyperparams["percentile"] = jnp.asarray(50.0)
    out, state = update(jnp.array([10.0]), state)
    assert float(optax.tree.get(state, "threshold")) == pytest.approx(np.percentile([1, 2, 3, 4, 10], 50))
    assert float(out[0]) == pytest.approx(3.0)

  def test_default_min_history_fits_the_window(self):
    tx = optstab.percentile_clip(window_size=3)  # min_history = min(100, 3) = 3
    state = tx.init(jnp.zeros(1))
    update = jax.jit(tx.update)
    for n in (1.0, 2.0, 3.0, 40.0):
      out, state = update(jnp.array([n]), state)
    assert bool(state.clipped) and float(out[0]) == pytest.approx(np.percentile([1, 2, 3], 90))
    assert int(state.num_clipped) == 1

  def test_inject_hyperparams_without_static_args(self):
    tx = optax.inject_hyperparams(optstab.percentile_clip)(percentile=90.0, window_size=8,
                                                           min_history=2)
    state = tx.init(jnp.zeros(1))
    update = jax.jit(tx.update)
    for n in (1.0, 2.0, 50.0):
      out, state = update(jnp.array([n]), state)
    assert float(out[0]) == pytest.approx(1.9)


@pytest.mark.parametrize("kwargs, name", [
    (dict(percentile=0.0), "percentile"),
    (dict(percentile=101.0), "percentile"),
    (dict(percentile=float("inf")), "percentile"),
    (dict(window_size=0), "window_size"),
    (dict(window_size=2.5), "window_size"),
    (dict(window_size=True), "window_size"),
    (dict(min_history=0), "min_history"),
    (dict(window_size=10, min_history=11), "min_history"),
    (dict(initial_threshold=0.0), "initial_threshold"),
    (dict(initial_threshold=-1.0), "initial_threshold"),
    (dict(max_threshold=0.0), "max_threshold"),
])
def test_percentile_clip_bad_input(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optstab.percentile_clip(**kwargs)


def test_public_names():
  for name in clipping.__all__:
    assert getattr(optstab, name) is getattr(clipping, name)


def test_bfloat16_gradients_norm_in_float32_and_dtype_kept():
  g = {"a": jnp.full((50_000,), 1.0, jnp.bfloat16), "b": jnp.full((3,), 3.0, jnp.bfloat16)}
  want = np.sqrt(50_000 + 27.0)
  opt = optax.chain(optstab.record_grad_norm(capacity=2),
                    optstab.percentile_clip(window_size=2, min_history=1, initial_threshold=10.0))
  state = opt.init(g)
  out, state = jax.jit(opt.update)(g, state)
  np.testing.assert_allclose(float(optax.tree.get(state, "grad_norm")), want, rtol=1e-6)
  np.testing.assert_allclose(optstab.recorded_grad_norms(state), [want], rtol=1e-6)
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), out))),
                             10.0, rtol=1e-2)  # bfloat16 resolution


def test_complex_gradients_use_the_modulus():
  g = jnp.array([3.0 + 4.0j, 0.0])
  tx = optstab.percentile_clip(window_size=2, min_history=1, initial_threshold=1.0)
  out, state = jax.jit(tx.update)(g, tx.init(g))
  assert float(state.grad_norm) == pytest.approx(5.0)
  np.testing.assert_allclose(np.asarray(out), [0.6 + 0.8j, 0.0], rtol=1e-6)


# --- numerics at the edges (issue 14) --------------------------------------


def _clip_after_normal_steps(tx, big):
  """Ten unit-norm steps, then ``big``; returns the last output and state."""
  update = jax.jit(tx.update)
  state = tx.init(big)
  for i in range(10):
    _, state = update(jnp.full_like(big, 1.0 + 0.01 * i) / np.sqrt(big.size), state)
  return update(big, state)


def test_a_finite_huge_update_is_clipped_not_passed_through():
  # ||g|| = 3e19: the float32 sum of squares (9e38) overflows; the norm must not.
  big = jnp.full([4], 1.5e19, jnp.float32)
  out, state = _clip_after_normal_steps(optstab.percentile_clip(90.0, window_size=16,
                                                                min_history=5), big)
  assert float(state.grad_norm) == pytest.approx(3e19, rel=1e-6)
  assert bool(state.clipped) and int(state.num_nonfinite) == 0
  np.testing.assert_allclose(float(optax.tree.norm(out)), float(state.threshold), rtol=1e-6)
  assert float(state.threshold) < 1.2


def test_zero_norms_are_no_evidence_of_the_typical_scale():
  # 40 all-zero gradients, then ordinary ones: the zeros never enter the
  # window, so no ordinary update is zeroed (the rule in the docstring).
  tx = optstab.percentile_clip(90.0, window_size=100, min_history=5)
  grads = jnp.concatenate([jnp.zeros([40, 3]), jnp.ones([20, 3])])
  final, outs, states = _run_scan(tx, grads)
  np.testing.assert_array_equal(np.asarray(outs), np.asarray(grads))
  assert not np.asarray(states.clipped).any()
  assert int(final.history_size) == 20 and int(final.num_steps) == 60
  assert np.isfinite(np.asarray(states.threshold)).all()  # and 0 / 0 made no NaN


@pytest.mark.parametrize("flag", ["debug_nans", "debug_infs"])
def test_states_hold_no_nan_or_inf_placeholders(flag):
  # What someone chasing an instability turns on must not fire on optstab's own state.
  opt = optax.chain(optstab.record_grad_norm(capacity=8),
                    optstab.percentile_clip(90.0, window_size=4, min_history=2),
                    optstab.adam(1e-2))
  params = jnp.ones(3)
  with getattr(jax, flag)(True):  # jax.debug_nans / jax.debug_infs
    state = opt.init(params)
    update = jax.jit(opt.update)
    for g in (jnp.zeros(3), jnp.ones(3), 2 * jnp.ones(3), 30 * jnp.ones(3), jnp.zeros(3)):
      updates, state = update(g, state, params)
      params = optax.apply_updates(params, updates)
    jax.block_until_ready(state)
  assert int(optax.tree.get(state, "num_clipped")) == 1


@pytest.mark.parametrize("window_size", [2**24 + 1, 2**31 + 5, 10**12])
def test_window_size_is_bounded_before_anything_is_allocated(window_size):
  with pytest.raises(ValueError, match=r"window_size must be an integer in \[1, 16777216\]"):
    optstab.percentile_clip(window_size=window_size)


def test_integer_update_leaves_are_refused_like_optax():
  tx = optstab.percentile_clip(window_size=4, min_history=1, initial_threshold=1.0)
  g = {"w": jnp.ones(2), "steps": jnp.array([3, 4], jnp.int32)}
  with pytest.raises(TypeError, match=r"updates must have floating-point .* int32 at \['steps'\]"):
    tx.update(g, tx.init(g))


def test_injected_percentile_out_of_range_eager_raises_jitted_clamps():
  make = optax.inject_hyperparams(optstab.percentile_clip, static_args=("window_size", "min_history"))
  tx = make(percentile=90.0, window_size=4, min_history=1)
  state = tx.init(jnp.zeros(1))
  for n in (1.0, 2.0, 3.0):
    _, state = tx.update(jnp.array([n]), state)
  for bad in (150.0, float("nan")):
    state.hyperparams["percentile"] = jnp.asarray(bad, jnp.float32)
    with pytest.raises(ValueError, match="percentile must be"):
      tx.update(jnp.array([5.0]), state)  # eager: a concrete value, checked
  update = jax.jit(tx.update)
  state.hyperparams["percentile"] = jnp.asarray(150.0, jnp.float32)
  out, new = update(jnp.array([5.0]), state)  # traced: clamped to 100 -> max of {1, 2, 3}
  assert float(new.inner_state.threshold) == 3.0 and float(out[0]) == pytest.approx(3.0)
  state.hyperparams["percentile"] = jnp.asarray(float("nan"), jnp.float32)
  out, new = update(jnp.array([5.0]), state)  # NaN: no adaptive threshold, nothing stored as NaN
  assert float(new.inner_state.threshold) == clipping.NO_THRESHOLD and float(out[0]) == 5.0


def test_bfloat16_params_need_float32_hyperparameters():
  make = optax.inject_hyperparams(optstab.percentile_clip, static_args=("window_size", "min_history"))
  params = jnp.zeros(2, jnp.bfloat16)
  # Cast to bfloat16, 99.9 would become 100.0: refused, naming the way out.
  with pytest.raises(ValueError, match="percentile must be a float32.*hyperparam_dtype"):
    make(percentile=99.9, window_size=4, min_history=1).init(params)
  tx = optax.inject_hyperparams(optstab.percentile_clip, static_args=("window_size", "min_history"),
                                hyperparam_dtype=jnp.float32)(percentile=99.9, window_size=4,
                                                              min_history=1)
  state = tx.init(params)
  assert float(state.hyperparams["percentile"]) == pytest.approx(99.9, rel=1e-7)
  for n in (1.0, 2.0, 3.0, 10.0):
    _, state = jax.jit(tx.update)(jnp.full([2], n, jnp.bfloat16), state, params)
  want = np.percentile(np.float32([1.0, 2.0, 3.0]) * np.sqrt(np.float32(2)), 99.9)
  np.testing.assert_allclose(float(state.inner_state.threshold), want, rtol=1e-6)


def test_thresholds_in_force_replays_percentile_clip_step_by_step():
  """The host replay equals the threshold the transformation held at every step (float32 noise)."""
  rng = np.random.default_rng(0)
  norms = rng.lognormal(0.0, 1.0, 40)
  norms[[3, 17]] = 0.0       # not recorded
  norms[[8, 25]] = np.nan    # not recorded
  kwargs = dict(window_size=7, min_history=4, initial_threshold=2.5)
  tx = optstab.percentile_clip(80.0, **kwargs)
  state = tx.init({"w": jnp.zeros(1)})
  held = []
  for n in norms:
    _, state = tx.update({"w": jnp.array([n], jnp.float32)}, state)
    held.append(float(optax.tree.get(state, "threshold")))
  want = optstab.thresholds_in_force(norms.astype(np.float32), 80.0, **kwargs)
  np.testing.assert_allclose(held, want, rtol=4 * np.finfo(np.float32).eps)
  assert want[0] == 2.5 and np.isinf(optstab.thresholds_in_force([1.0], 90.0, window_size=3)[0])


def test_thresholds_in_force_rejects_bad_arguments():
  with pytest.raises(ValueError, match="min_history"):
    optstab.thresholds_in_force([1.0], 90.0, window_size=2, min_history=3)
  with pytest.raises(ValueError, match="percentile"):
    optstab.thresholds_in_force([1.0], 0.0)
