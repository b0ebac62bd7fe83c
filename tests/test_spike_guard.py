"""Tests for optstab.spike_guard: skip_spikes against float64 NumPy models of its rules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab
from optstab import spike_guard
from optstab.clipping import NO_THRESHOLD

NUM_STEPS = 10_000


def _series(num_steps=NUM_STEPS, seed=0):
  """Norms and losses with a slow drift, a level shift, spikes, NaNs and Infs."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_steps)
  drift = np.exp(t / num_steps)  # the norm grows e-fold over the run, slowly
  norms = drift * np.exp(rng.normal(0.0, 0.3, num_steps))
  losses = 1.0 + 2.0 * np.exp(-t / 2000.0) + rng.normal(0.0, 0.02, num_steps)
  shift = num_steps // 2
  norms[shift:] *= 3.0  # a lasting new level
  losses[shift:] += 0.5
  spikes = rng.choice(num_steps, num_steps // 100, replace=False)
  norms[spikes] *= rng.uniform(5.0, 50.0, spikes.size)
  loss_spikes = rng.choice(num_steps, num_steps // 200, replace=False)
  losses[loss_spikes] += rng.uniform(0.3, 3.0, loss_spikes.size)
  bad = rng.choice(num_steps, 20, replace=False)
  norms[bad[:8]] = np.nan
  norms[bad[8:12]] = np.inf
  losses[bad[12:]] = np.nan
  return norms.astype(np.float32), losses.astype(np.float32)


def _run(tx, norms, losses, pass_norm=False):
  """One jitted scan: gradient [n_t] (norm n_t) and loss=losses[t]; returns outputs and states."""
  grads = jnp.asarray(norms)[:, None]

  def step(state, inputs):
    g, loss = inputs
    extra = {"grad_norm": g[0]} if pass_norm else {}
    out, state = tx.update(g, state, None, loss=loss, **extra)
    return state, (out[0], state._replace(inner_state=None) if isinstance(
        state, spike_guard.SkipSpikesState) else state)

  state0 = tx.init(grads[0])
  final, (outs, states) = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(
      state0, (grads, jnp.asarray(losses)))
  return final, np.asarray(outs), states


# float32 statistics of a window of W values differ from float64 ones by about
# W * 2**-24 relative to the magnitudes involved (a float32 sum of W terms); 4x margin.
def _tolerance(window):
  return 4 * window * 2.0**-24


def _center_spread(values, rule):
  if rule == "robust":
    median = np.median(values)
    return median, spike_guard.MAD_TO_STD * np.median(np.abs(values - median))
  return np.mean(values), np.std(values, ddof=1)


def _reference(norms, losses, device_outliers, *, rule, k, window, min_history, max_skips,
               record_skipped):
  """skip_spikes in float64 NumPy, one step at a time.

  Where a value is within float32 noise of its threshold, the reference takes
  the device's outlier decision for that step (and counts the near-tie), so one
  near-tie cannot shift every later window. Returns (skips, reseeds, near-ties).
  """
  win_n, win_l = [], []
  skips, reseeds, ties, consecutive = [], [], 0, 0
  tol = _tolerance(window)
  for t, (n, l) in enumerate(zip(norms.astype(np.float64), losses.astype(np.float64))):
    finite = np.isfinite(n) and np.isfinite(l)
    outlier, tie = not finite, False
    if finite and len(win_n) >= min_history:
      for v, w in ((n, win_n), (l, win_l)):
        c, s = _center_spread(np.asarray(w), rule)
        margin = (v - c) - k * s
        tie |= abs(margin) <= tol * (abs(v) + abs(c) + k * s)
        outlier |= margin > 0
    if tie:
      ties += 1
      outlier = bool(device_outliers[t])
    reseed = outlier and finite and max_skips is not None and consecutive >= max_skips
    skip = outlier and not reseed
    if reseed:
      win_n, win_l = [], []
    if finite and n > 0 and (not skip or record_skipped):
      win_n.append(n)
      win_l.append(l)
      del win_n[:-window], win_l[:-window]
    consecutive = consecutive + 1 if skip else 0
    skips.append(skip)
    reseeds.append(reseed)
  return np.asarray(skips), np.asarray(reseeds), ties


def _outliers(states):
  """Each step's outlier flag, from the spike_flags ring buffer of that step's state."""
  flags = np.asarray(states.spike_flags)
  t = np.arange(flags.shape[0])
  return flags[t, t % flags.shape[1]]


@pytest.mark.parametrize("rule, k, window, min_history, max_skips, record_skipped", [
    ("robust", 6.0, 128, 32, 20, False),  # the defaults
    ("mean_std", 6.0, 128, 63, 20, False),
    ("robust", 4.0, 64, 10, 5, True),
])
def test_decisions_match_a_float64_model_of_the_rule(rule, k, window, min_history, max_skips,
                                                     record_skipped):
  norms, losses = _series()
  inner = optax.scale_by_adam()
  tx = optstab.skip_spikes(inner, threshold=k, window_size=window, min_history=min_history,
                           max_consecutive_skips=max_skips, rule=rule,
                           record_skipped=record_skipped)
  final, outs, states = _run(tx, norms, losses)
  dev_norms = np.asarray(states.guard_grad_norm)
  finite = np.isfinite(norms)
  np.testing.assert_allclose(dev_norms[finite], np.abs(norms[finite]), rtol=2**-23)
  got = np.asarray(states.skipped)
  want, reseeds, ties = _reference(dev_norms, losses, _outliers(states), rule=rule, k=k, window=window,
                                   min_history=min_history, max_skips=max_skips,
                                   record_skipped=record_skipped)
  assert ties <= NUM_STEPS // 1000, ties  # near-ties are rare: the comparison is meaningful
  np.testing.assert_array_equal(got, want)
  # The series has spikes of every kind: all of them are caught, not just some.
  assert 100 < want.sum() < NUM_STEPS // 10, want.sum()
  assert got[~np.isfinite(norms) | ~np.isfinite(losses)].all()
  assert int(final.num_reseeds) == reseeds.sum() >= 1  # the level shift re-seeds
  assert int(final.total_skipped) == want.sum()
  # A skipped step's update is zero and the inner state does not advance.
  assert (outs[got] == 0).all() and (outs[~got] != 0).all()
  assert int(final.inner_state.count) == NUM_STEPS - want.sum()
  skipped_at = np.flatnonzero(want)
  assert int(final.last_skipped_step) == skipped_at[-1]
  run_length = 0
  for s in want:
    run_length = run_length + 1 if s else 0
  assert int(final.consecutive_skipped) == run_length


def _maxtext_reference(losses, norms, *, interval, k):
  """MaxText's skip_step_on_spikes, as its docstring and code read, in float64.

  Every step (skipped or not) enters a window of the last ``interval`` steps;
  a step is skipped when loss - mean > k * std or norm - mean > k * std (std
  with Bessel's correction), unless fewer than max(2, interval // 2) - 1
  steps were recorded before it. Returns the decisions and, per step, whether
  either value is within float32 noise of its threshold.
  """
  skips, near = [], []
  tol = _tolerance(interval)
  for t in range(len(losses)):
    if t + 1 < max(2, interval // 2):
      skips.append(False)
      near.append(False)
      continue
    skip = tie = False
    for series in (losses, norms):
      window = series[max(0, t - interval):t].astype(np.float64)
      mean, std = window.mean(), window.std(ddof=1)
      margin = (float(series[t]) - mean) - k * std
      skip |= margin > 0
      tie |= abs(margin) <= tol * (abs(float(series[t])) + abs(mean) + k * std)
    skips.append(skip)
    near.append(tie)
  return np.asarray(skips), np.asarray(near)


def test_mean_std_mode_makes_maxtexts_decisions():
  norms, losses = _series()
  finite = np.isfinite(norms) & np.isfinite(losses)
  norms, losses = norms[finite], losses[finite]  # MaxText lets a NaN poison its window
  tx = optstab.skip_spikes(optax.scale_by_adam(), threshold=6.0, window_size=128,
                           min_history=63, max_consecutive_skips=None, rule="mean_std",
                           record_skipped=True)
  _, _, states = _run(tx, norms, losses, pass_norm=True)
  got = np.asarray(states.skipped)
  want, near = _maxtext_reference(losses, norms, interval=128, k=6.0)
  assert near.sum() <= len(want) // 1000  # near-ties are rare: the comparison is meaningful
  np.testing.assert_array_equal(got[~near], want[~near])
  assert want.sum() > 50  # MaxText's rule catches the big spikes; the comparison is not empty
  assert not got[:62].any()


def test_spike_enters_the_window_only_with_record_skipped():
  # A burst of large norms: judged against the level before the burst unless
  # skipped steps are recorded (then the burst raises its own threshold).
  norms = np.r_[np.linspace(0.9, 1.1, 40), np.full(10, 30.0)].astype(np.float32)
  losses = np.ones_like(norms)
  # Recorded, two spikes in a window of 42 raise mean + 6 std above 30 (the
  # second one: 30 - 1.7 = 28.3 > 6 * 4.6; the third: 29 < 6 * 6.4).
  for record, want in ((False, 10), (True, 2)):
    tx = optstab.skip_spikes(optax.identity(), rule="mean_std", window_size=64,
                             min_history=20, max_consecutive_skips=None, record_skipped=record)
    final, _, _ = _run(tx, norms, losses)
    assert int(final.total_skipped) == want, record


def test_no_skipping_before_min_history_except_nonfinite():
  tx = optstab.skip_spikes(optax.identity(), window_size=16, min_history=5)
  norms = np.float32([1.0, 1e4, 1.02, np.nan, 0.98, 1.01, 1.05, 1e4])
  final, outs, states = _run(tx, norms, np.ones_like(norms))
  np.testing.assert_array_equal(np.asarray(states.skipped),
                                [False, False, False, True, False, False, False, True])
  np.testing.assert_array_equal(np.asarray(states.window_count), [1, 2, 3, 3, 4, 5, 6, 6])
  assert (np.asarray(states.norm_threshold)[:5] == NO_THRESHOLD).all()
  assert np.asarray(states.norm_threshold)[7] < 1e4


def test_level_shift_reseeds_after_max_consecutive_skips():
  norms = np.r_[1.0 + 0.01 * np.sin(np.arange(40)), 10.0 + 0.1 * np.sin(np.arange(60))]
  tx = optstab.skip_spikes(optax.scale_by_adam(), window_size=32, min_history=8,
                           max_consecutive_skips=3)
  final, outs, states = _run(tx, norms.astype(np.float32), np.ones(100, np.float32))
  skipped = np.asarray(states.skipped)
  np.testing.assert_array_equal(np.flatnonzero(skipped), [40, 41, 42])
  assert int(final.num_reseeds) == 1 and int(np.asarray(states.window_count)[43]) == 1
  assert int(final.inner_state.count) == 97
  # Without re-seeding the run freezes at the new level.
  frozen = optstab.skip_spikes(optax.identity(), window_size=32, min_history=8,
                               max_consecutive_skips=None)
  final, _, _ = _run(frozen, norms.astype(np.float32), np.ones(100, np.float32))
  assert int(final.total_skipped) == 60 and int(final.consecutive_skipped) == 60


def test_zero_norm_is_accepted_but_not_recorded():
  norms = np.float32([1.0, 1.1, 0.0, 0.0, 0.9, 1.0])
  tx = optstab.skip_spikes(optax.identity(), window_size=8, min_history=2)
  final, _, states = _run(tx, norms, np.ones_like(norms))
  assert not np.asarray(states.skipped).any()
  assert int(final.window_count) == 4


def test_spike_score_is_the_fraction_of_recent_outliers():
  norms = np.ones(30, np.float32) + 0.01 * np.arange(30, dtype=np.float32) % 3
  norms[[10, 20, 25]] = 100.0
  tx = optstab.skip_spikes(optax.identity(), window_size=8, min_history=4)
  _, _, states = _run(tx, norms, np.ones_like(norms))
  flags = np.asarray(states.skipped)
  want = [flags[max(0, t - 7):t + 1].mean() for t in range(30)]
  np.testing.assert_allclose(np.asarray(states.spike_score), want, rtol=1e-6)
  assert float(np.asarray(states.spike_score)[-1]) == pytest.approx(1 / 8)  # step 25 of 22..29


def test_skipped_step_leaves_the_inner_state_bit_identical():
  tx = optstab.skip_spikes(optstab.adam(1e-2), window_size=8, min_history=3)
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(5):
    g = jax.tree.map(lambda p: jnp.full_like(p, 0.1 + 0.01 * i), params)
    _, state = update(g, state, params, loss=1.0)
  before = state.inner_state
  big = jax.tree.map(lambda p: jnp.full_like(p, 1e3), params)
  updates, state = update(big, state, params, loss=1.0)
  assert bool(state.skipped)
  chex.assert_trees_all_equal(state.inner_state, before)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  _, state = update(params, state, params, loss=jnp.asarray(jnp.nan))  # a NaN loss
  assert bool(state.skipped) and int(state.total_skipped) == 2


class SkipSpikesCompositionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    tx = optstab.skip_spikes(optstab.sgd(0.1), window_size=8, min_history=3)
    update = self.variant(tx.update)
    state = tx.init(jnp.zeros(2))
    decisions = []
    for n in (1.0, 1.1, 0.9, 1.0, 40.0, 1.05):
      _, state = update(jnp.array([n, 0.0]), state, jnp.zeros(2), loss=jnp.float32(2.0))
      decisions.append(bool(state.skipped))
    assert decisions == [False] * 4 + [True, False]

  def test_compiles_once(self):
    tx = optstab.skip_spikes(optstab.adam(1e-3), window_size=8, min_history=2)
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    params = jnp.zeros(3)
    state = tx.init(params)
    for i in range(10):
      _, state = update(jnp.full(3, 1.0 + (i == 7) * 1e3), state, params,
                        loss=jnp.float32(1.0))
    assert int(state.total_skipped) == 1

  def test_inject_hyperparams_threshold(self):
    make = optax.inject_hyperparams(
        optstab.skip_spikes, static_args=("window_size", "min_history", "max_consecutive_skips"),
        hyperparam_dtype=jnp.float32)
    tx = make(inner=optstab.sgd(0.1), threshold=6.0, window_size=16, min_history=4)
    plain = optstab.skip_spikes(optstab.sgd(0.1), threshold=6.0, window_size=16, min_history=4)
    norms, losses = _series(300, seed=3)
    final, outs, states = _run(tx, norms, losses)
    pfinal, pouts, pstates = _run(plain, norms, losses)
    np.testing.assert_array_equal(np.asarray(states.inner_state.skipped),
                                  np.asarray(pstates.skipped))
    np.testing.assert_array_equal(outs, pouts)
    # A lower injected threshold skips more.
    final.hyperparams["threshold"] = jnp.asarray(1.0, jnp.float32)
    lowered = jax.jit(tx.update)
    state, skipped = final, 0
    for n in norms[:100]:
      _, state = lowered(jnp.array([n]), state, None, loss=1.0)
      skipped += int(state.inner_state.skipped)
    assert skipped > int(np.asarray(pstates.skipped)[:100].sum())

  def test_multisteps_guards_the_accumulated_gradient(self):
    k = 3
    guarded = optax.MultiSteps(optstab.skip_spikes(optax.sgd(1.0), window_size=8,
                                                   min_history=3), every_k_schedule=k)
    direct = optstab.skip_spikes(optax.sgd(1.0), window_size=8, min_history=3)
    norms = np.float32([1.0, 1.2, 0.8] * 6 + [90.0, 1.0, 1.0] + [1.0, 1.1, 0.9])
    params = jnp.zeros(1)
    ms_state, d_state = guarded.init(params), direct.init(params)
    ms_update, d_update = jax.jit(guarded.update), jax.jit(direct.update)
    for i, n in enumerate(norms):
      u, ms_state = ms_update(jnp.array([n]), ms_state, params, loss=1.0)
      if (i + 1) % k == 0:
        mean = jnp.array([norms[i + 1 - k:i + 1].mean()])
        du, d_state = d_update(mean, d_state, params, loss=1.0)
        chex.assert_trees_all_close(u, du)
    assert int(optax.tree.get(ms_state, "total_skipped")) == 1
    assert int(d_state.total_skipped) == 1

  def test_apply_if_finite_inside_and_outside(self):
    params = jnp.zeros(2)
    grads = [jnp.array([1.0 + 0.1 * (i % 3), 0.0]) for i in range(8)]
    grads[5] = jnp.array([jnp.nan, 0.0])
    grads[6] = jnp.array([1e4, 0.0])
    inside = optstab.skip_spikes(optax.apply_if_finite(optstab.sgd(0.1), 3), window_size=8,
                                 min_history=3)
    outside = optax.apply_if_finite(optstab.skip_spikes(optstab.sgd(0.1), window_size=8,
                                                        min_history=3), 3)
    for tx in (inside, outside):
      state, p = tx.init(params), params
      for g in grads:
        u, state = jax.jit(tx.update)(g, state, p, loss=1.0)
        p = optax.apply_updates(p, u)
      # Both skip the NaN and the spike: the parameters see six steps.
      np.testing.assert_allclose(float(p[0]), -0.1 * sum(float(g[0]) for i, g in enumerate(grads)
                                                         if i not in (5, 6)), rtol=1e-6)
    # Outside, apply_if_finite sees the NaN first: the guard never counts it.
    assert int(optax.tree.get(state, "total_skipped")) == 1

  def test_chain_with_percentile_clip_and_record_grad_norm(self):
    tx = optax.chain(optstab.record_grad_norm(capacity=16),
                     optstab.skip_spikes(optax.chain(optstab.percentile_clip(90.0, 8, 2),
                                                     optstab.adam(1e-2)),
                                         window_size=8, min_history=3))
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for n in (1.0, 1.2, 0.9, 1.1, 500.0, 1.0):
      _, state = update({"w": jnp.full((2, 2), n / 2)}, state, params, loss=jnp.float32(1.0))
    for name in ("grad_norm", "threshold", "num_clipped", "guard_grad_norm", "norm_threshold",
                 "total_skipped", "consecutive_skipped", "last_skipped_step", "spike_score"):
      assert optax.tree.get(state, name) is not None, name
    # The recorder saw every step; the skipped spike never reached the clip's window.
    np.testing.assert_allclose(optstab.recorded_grad_norms(state)[4], 500.0, rtol=1e-6)
    assert int(optax.tree.get(state, "last_skipped_step")) == 4
    assert int(optax.tree.get(state, "num_steps")) == 5  # percentile_clip's counter
    size = int(optax.tree.get(state, "history_size"))
    assert size == 5 and float(optax.tree.get(state, "norm_history")[:size].max()) < 2.0

  def test_state_can_be_donated(self):
    tx = optstab.skip_spikes(optstab.adam(1e-3), window_size=4, min_history=2)
    state = tx.init(jnp.zeros(2))
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers)
    update = jax.jit(tx.update, donate_argnums=1)
    for _ in range(3):
      _, state = update(jnp.ones(2), state, jnp.zeros(2))
    assert int(state.guard_steps) == 3



@pytest.mark.parametrize("flag", ["debug_nans", "debug_infs"])
def test_state_holds_no_nan_or_inf(flag):
  # What someone chasing an instability turns on must not fire on the guard's own state.
  tx = optstab.skip_spikes(optstab.adam(1e-2), window_size=4, min_history=2)
  params = jnp.ones(2)
  with getattr(jax, flag)(True):
    state = tx.init(params)
    for g in (jnp.ones(2), 1.1 * jnp.ones(2), 1e3 * jnp.ones(2), jnp.zeros(2)):
      _, state = jax.jit(tx.update)(g, state, params, loss=1.0)
    jax.block_until_ready(state)
  assert int(state.total_skipped) == 1


def test_orbax_round_trip_continues_bit_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = optstab.skip_spikes(optstab.adam(1e-2), window_size=16, min_history=4)
  norms, losses = _series(60, seed=5)
  params = jnp.zeros(3)
  update = jax.jit(tx.update)

  def steps(state, p, lo, hi):
    for n, l in zip(norms[lo:hi], losses[lo:hi]):
      u, state = update(jnp.full(3, n / np.sqrt(3)), state, p, loss=l)
      p = optax.apply_updates(p, u)
    return state, p

  state, p = steps(tx.init(params), params, 0, 30)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", {"state": state, "params": p})
    ckpt.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state, "params": p})
    restored = ckpt.restore(tmp_path / "ckpt", abstract)
  chex.assert_trees_all_equal(restored["state"], state)
  a_state, a_p = steps(state, p, 30, 60)
  b_state, b_p = steps(restored["state"], restored["params"], 30, 60)
  chex.assert_trees_all_equal((a_state, a_p), (b_state, b_p))
  assert int(a_state.total_skipped) > 0


def test_loss_must_be_a_real_scalar():
  tx = optstab.skip_spikes(optax.identity())
  state = tx.init(jnp.zeros(2))
  with pytest.raises(ValueError, match=r"loss must be a real scalar .* shape \(2,\)"):
    tx.update(jnp.ones(2), state, loss=jnp.ones(2))


@pytest.mark.parametrize("kwargs, name", [
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=-1.0), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(window_size=1), "window_size"),
    (dict(window_size=2.5), "window_size"),
    (dict(window_size=2**24 + 1), "window_size"),
    (dict(min_history=1), "min_history"),
    (dict(window_size=10, min_history=11), "min_history"),
    (dict(max_consecutive_skips=0), "max_consecutive_skips"),
    (dict(rule="median"), "rule"),
    (dict(record_skipped=1), "record_skipped"),
    (dict(inner=optax.adam), "inner"),
])
def test_bad_input(kwargs, name):
  kwargs = {"inner": optax.identity(), **kwargs}
  with pytest.raises(ValueError, match=name):
    optstab.skip_spikes(**kwargs)


def test_public_names():
  for name in ("skip_spikes", "SkipSpikesState"):
    assert getattr(optstab, name) is getattr(spike_guard, name)
