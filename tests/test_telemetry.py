"""Tests for optstab.telemetry and the S5 gradient-norm plots."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab
from optstab import plots
from optstab import telemetry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _grads(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(num_steps, 6)).astype(np.float32)
                     * np.exp(rng.normal(size=(num_steps, 1))).astype(np.float32))


class RecordGradNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_records_the_norm_and_leaves_updates_unchanged(self):
    tx = optstab.record_grad_norm(capacity=5)
    update = self.variant(tx.update)
    g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    state = tx.init(g)
    out, state = update(g, state)
    chex.assert_trees_all_equal(out, g)
    np.testing.assert_array_equal(optstab.recorded_grad_norms(state), [5.0])
    assert int(state.grad_norm_log_count) == 1

  def test_ring_buffer_keeps_the_last_capacity_steps_in_order(self):
    grads = _grads(13)
    tx = optstab.record_grad_norm(capacity=5)
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    for g in grads:
      _, state = update(g, state)
    steps, norms = optstab.recorded_grad_norms(state, with_steps=True)
    np.testing.assert_array_equal(steps, np.arange(8, 13))
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(grads), axis=1)[8:], rtol=1e-6)
    assert state.grad_norm_log.shape == (5,)  # bounded, whatever the run length

  def test_recorder_fetches_in_batches_and_keeps_every_step(self):
    grads = _grads(23)
    opt = optax.chain(optstab.record_grad_norm(capacity=8), optstab.adam(1e-3))
    params = jnp.zeros(6)
    state = opt.init(params)
    step = jax.jit(opt.update)
    recorder = optstab.GradNormRecorder()
    for g in grads:
      _, state = step(g, state, params)
      recorder.observe(state)
    assert recorder.num_fetches == 2  # after steps 8 and 16 only
    norms = recorder.norms(state)
    assert recorder.num_fetches == 3
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(grads), axis=1), rtol=1e-6)

  def test_recorder_with_unclipped_norms_before_clipping(self):
    grads = _grads(12) * 100.0
    opt = optax.chain(optstab.record_grad_norm(capacity=4), optax.clip_by_global_norm(1.0))
    state = opt.init(grads[0])
    update = jax.jit(opt.update)
    recorder = optstab.GradNormRecorder(fetch_every=3)
    for g in grads:
      _, state = update(g, state)
      recorder.observe(state)
    assert recorder.num_fetches == 4
    np.testing.assert_allclose(recorder.norms(), np.linalg.norm(np.asarray(grads), axis=1),
                               rtol=1e-6)

  def test_recorder_warns_about_lost_norms(self):
    tx = optstab.record_grad_norm(capacity=3)
    state = tx.init(jnp.zeros(1))
    for i in range(5):
      _, state = tx.update(jnp.array([float(i + 1)]), state)
    recorder = optstab.GradNormRecorder()
    with pytest.warns(RuntimeWarning, match="overwritten"):
      norms = recorder.norms(state)
    np.testing.assert_array_equal(norms, [np.nan, np.nan, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="fetch_every"):
      optstab.GradNormRecorder(fetch_every=4).fetch(state)

  def test_inside_a_scanned_training_loop(self):
    grads = _grads(30)
    opt = optax.chain(optstab.record_grad_norm(capacity=32),
                      optstab.percentile_clip(window_size=16, min_history=4),
                      optstab.adam(1e-2))
    params = jnp.zeros(6)

    def body(carry, g):
      params, state = carry
      updates, state = opt.update(g, state, params)
      return (optax.apply_updates(params, updates), state), optax.tree.get(state, "threshold")

    (_, state), thresholds = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))(
        (params, opt.init(params)), grads)
    norms = optstab.recorded_grad_norms(state)
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(grads), axis=1), rtol=1e-6)
    np.testing.assert_allclose(norms, np.asarray(jax.vmap(optax.tree.norm)(grads)), rtol=1e-6)
    # The log and the clipper agree on the unclipped norm and clipped count.
    summary = optstab.summarize_clip_state(state, norms)
    from_log = optstab.summarize_clipping(norms, np.asarray(thresholds))
    assert summary.num_clipped == from_log.num_clipped > 0
    assert summary.num_steps == 30

  def test_missing_log_state(self):
    with pytest.raises(ValueError, match="GradNormLogState"):
      optstab.recorded_grad_norms(optax.adam(1.0).init(jnp.zeros(1)))
    with pytest.raises(ValueError, match="capacity"):
      optstab.record_grad_norm(capacity=0)
    with pytest.raises(ValueError, match="fetch_every"):
      optstab.GradNormRecorder(fetch_every=0)


def test_summary_fraction_and_advice_above_half():
  s = optstab.summarize_clipping([1.0, 2.0, 3.0, 4.0], threshold=2.5)
  assert (s.num_steps, s.num_clipped, s.fraction_clipped) == (4, 2, 0.5)
  assert s.advice is None  # exactly 50% is not "more than 50%"
  s = optstab.summarize_clipping([1.0, 3.0, 3.0, 4.0, np.nan], threshold=2.5)
  assert s.num_clipped == 3 and s.num_nonfinite == 1 and s.fraction_clipped == 0.6
  assert "lower the learning rate" in s.advice.lower() and "60%" in s.advice
  assert "lower the learning rate" in str(s).lower()
  assert s.p90_norm == pytest.approx(np.percentile([1, 3, 3, 4], 90))
  per_step = optstab.summarize_clipping([5.0, 5.0, 5.0], threshold=[np.inf, 4.0, 6.0])
  assert per_step.num_clipped == 1 and per_step.threshold == 6.0


def test_summary_from_percentile_clip_state():
  tx = optstab.percentile_clip(50.0, window_size=4, min_history=1)
  state = tx.init(jnp.zeros(1))
  update = jax.jit(tx.update)
  for n in (1.0, 2.0, 3.0, 4.0, 5.0):
    _, state = update(jnp.array([n]), state)
  s = optstab.summarize_clip_state((optax.EmptyState(), state))  # found inside a tuple
  assert (s.num_steps, s.num_clipped) == (5, 4)
  assert s.fraction_clipped == 0.8 and s.advice is not None
  with pytest.raises(ValueError, match="PercentileClipState"):
    optstab.summarize_clip_state(optax.sgd(1.0).init(jnp.zeros(1)))


@pytest.mark.parametrize("norms, threshold, match", [
    ([], 1.0, "norms"),
    ([np.nan, np.inf], 1.0, "norms"),
    ([1.0], 0.0, "threshold"),
    ([1.0], -1.0, "threshold"),
    ([1.0, 2.0], [1.0], "threshold"),
    ([1.0, 2.0], [1.0, np.nan], "threshold"),
])
def test_summary_bad_input(norms, threshold, match):
  with pytest.raises(ValueError, match=match):
    optstab.summarize_clipping(norms, threshold)


def test_plots_write_non_empty_pngs(tmp_path):
  rng = np.random.default_rng(0)
  norms = np.exp(rng.normal(size=300))
  norms[[10, 20]] = [np.nan, np.inf]
  thr = optstab.clip_threshold(norms)
  per_step = np.where(np.arange(300) < 50, np.inf, thr)
  paths = [
      plots.plot_grad_norms(norms, tmp_path / "a" / "norms.png", threshold=thr),
      plots.plot_grad_norms(norms, tmp_path / "norms_adaptive.png", threshold=per_step,
                            steps=np.arange(100, 400)),
      plots.plot_grad_norm_histogram(norms, tmp_path / "hist.png", threshold=thr),
      plots.plot_grad_norm_histogram(np.ones(5), tmp_path / "hist_flat.png"),
  ]
  for p in paths:
    with open(p, "rb") as f:
      data = f.read()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, p
  for bad in ([], [np.nan]):
    with pytest.raises(ValueError, match="norms"):
      plots.plot_grad_norms(bad, tmp_path / "x.png")
    with pytest.raises(ValueError, match="norms"):
      plots.plot_grad_norm_histogram(bad, tmp_path / "y.png")


def test_plots_skip_the_clip_states_no_threshold_placeholder(tmp_path, monkeypatch):
  # A percentile_clip state holds NO_THRESHOLD (the largest float32) until its
  # window fills: drawn, it would stretch the log axis to 3e38.
  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or str(path))
  norms = np.exp(np.random.default_rng(0).normal(size=100))
  per_step = np.where(np.arange(100) < 30, optstab.clipping.NO_THRESHOLD, 2.0).astype(np.float32)
  plots.plot_grad_norms(norms, tmp_path / "per_step.png", threshold=per_step)
  plots.plot_grad_norms(norms, tmp_path / "none.png", threshold=optstab.clipping.NO_THRESHOLD)
  for figure in figures:
    assert figure.axes[0].get_ylim()[1] < 1e3
  plots.plot_grad_norm_histogram(norms, tmp_path / "hist.png", threshold=per_step)
  (line,) = [l for l in figures[-1].axes[0].get_lines() if l.get_label().startswith("threshold")]
  assert line.get_xdata()[0] == 2.0


def test_public_names():
  for name in telemetry.__all__:
    assert getattr(optstab, name) is getattr(telemetry, name)


def test_readme_warmup_clipping_block_runs(capsys):
  import pathlib
  import re
  text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide" / "clipping.md").read_text(encoding="utf-8")
  section = re.search(r"<!-- warmup-clipping -->(.*?)<!-- end warmup-clipping -->", text, re.S)
  assert section, "clipping.md has no <!-- warmup-clipping --> section"
  block = re.findall(r"```python\n(.*?)```", section.group(1), re.S)[0]
  namespace = {}
  exec(compile(block, "clipping.md:warmup-clipping", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["norms"].shape == (500,)
  assert np.isfinite(namespace["norms"]).all()
  summary = namespace["summary"]
  assert summary.num_steps == 500 and 0 < summary.num_clipped < 250
  assert namespace["loss_fn"](namespace["params"]) < 0.1 * namespace["loss_fn"]({"w": jnp.zeros(4)})
  assert "clipped" in capsys.readouterr().out
  for name in ("grad_norm.png", "grad_norm_hist.png"):
    with open(f"{namespace['out']}/{name}", "rb") as f:
      assert f.read(8) == PNG_MAGIC


# --- global_norm at the edges of float32 (issue 14) -------------------------


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e19, 1e30])
def test_global_norm_neither_overflows_nor_underflows(scale):
  rng = np.random.default_rng(0)
  tree = {"w": (scale * rng.normal(size=(33, 7))).astype(np.float32),
          "b": (scale * rng.normal(size=(5,))).astype(np.float32),
          "z": (scale * (rng.normal(size=3) + 1j * rng.normal(size=3))).astype(np.complex64)}
  want = np.sqrt(sum(np.sum(np.abs(x.astype(np.complex128)) ** 2) for x in tree.values()))
  for fn in (optstab.global_norm, jax.jit(optstab.global_norm)):
    got = float(fn(jax.tree.map(jnp.asarray, tree)))
    # n = 250 float32 squares summed: at most ~n * 2**-24 relative (worst-case
    # summation bound), here far less; the rescaled path adds one division per element.
    np.testing.assert_allclose(got, want, rtol=250 * 2.0**-24)


def test_global_norm_of_zero_nan_and_inf_trees():
  assert float(optstab.global_norm(jnp.zeros(4))) == 0.0
  assert float(optstab.global_norm({})) == 0.0
  assert np.isnan(float(optstab.global_norm(jnp.array([np.nan, 1e30]))))
  assert np.isinf(float(optstab.global_norm(jnp.array([np.inf, 1.0]))))


# --- the recorder, apply_if_finite and checkpoints (issue 14) ---------------


def test_recorder_outside_apply_if_finite_stays_aligned_with_steps():
  from optstab.diagnosis.trial import TrialConfig, TrialResult
  inner = optax.chain(optstab.percentile_clip(window_size=4, min_history=1), optstab.adam(0.1))
  opt = optax.chain(optstab.record_grad_norm(capacity=4),
                    optax.apply_if_finite(inner, max_consecutive_errors=5))
  params = jnp.zeros(2)
  state = opt.init(params)
  recorder = optstab.GradNormRecorder()
  grads = [[1.0, 0.0], [np.nan, 0.0], [2.0, 0.0], [3.0, 0.0], [np.inf, 0.0], [4.0, 0.0],
           [5.0, 0.0], [6.0, 0.0], [7.0, 0.0]]
  for g in grads:
    updates, state = opt.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
    recorder.observe(state)
  norms = recorder.norms(state)
  assert norms.shape == (9,)  # one per step, the skipped ones too
  np.testing.assert_array_equal(norms[[0, 2, 3, 5, 6, 7, 8]], [1, 2, 3, 4, 5, 6, 7])
  assert np.isnan(norms[1]) and np.isinf(norms[4])
  assert np.isfinite(np.asarray(params)).all()  # the inner optimizer skipped both
  config = TrialConfig(learning_rate=0.1, num_steps=9, eval_every=9)
  TrialResult(config, np.ones(9), config.eval_steps(), {"loss": np.ones(1)}, norms)


def test_recorder_inside_apply_if_finite_is_refused_with_the_fix():
  opt = optax.apply_if_finite(optax.chain(optstab.record_grad_norm(capacity=4), optax.sgd(0.1)),
                              max_consecutive_errors=5)
  state = opt.init(jnp.zeros(1))
  with pytest.raises(ValueError, match="inside optax.apply_if_finite.*before apply_if_finite"):
    optstab.GradNormRecorder().observe(state)
  with pytest.raises(ValueError, match="inside optax.apply_if_finite"):
    optstab.recorded_grad_norms(state)


def test_fetch_every_above_capacity_fails_at_the_first_observe():
  tx = optstab.record_grad_norm(capacity=4)
  state = tx.init(jnp.zeros(1))
  recorder = optstab.GradNormRecorder(fetch_every=10)
  with pytest.raises(ValueError, match=r"fetch_every must be an integer in \[1, capacity=4\]; got 10"):
    recorder.observe(state)


def _run(tx, state, values, recorder):
  for v in values:
    _, state = tx.update(jnp.array([float(v)]), state)
    recorder.observe(state)
  return state


def test_recorder_resumes_after_a_checkpoint_restore_and_a_rollback():
  tx = optstab.record_grad_norm(capacity=4)
  recorder = optstab.GradNormRecorder()
  state = _run(tx, tx.init(jnp.zeros(1)), range(1, 8), recorder)  # steps 0..6
  checkpoint, saved = state, recorder.norms(state)
  state = _run(tx, state, range(8, 11), recorder)  # steps 7..9, then the process dies
  # Restart from the checkpoint with the norms saved beside it: nothing warns.
  resumed = optstab.GradNormRecorder.resume(checkpoint, saved)
  state = _run(tx, checkpoint, [80, 90], resumed)
  np.testing.assert_array_equal(resumed.norms(state), [1, 2, 3, 4, 5, 6, 7, 80, 90])
  # Roll back: norms recorded past the checkpoint (steps 7..9) are dropped.
  rolled = optstab.GradNormRecorder.resume(checkpoint, np.append(saved, [8.0, 9.0, 10.0]))
  np.testing.assert_array_equal(rolled.norms(checkpoint), [1, 2, 3, 4, 5, 6, 7])
  # Only the checkpoint (no saved norms): the ring buffer's last 4, NaN before.
  bare = optstab.GradNormRecorder.resume(checkpoint, [])
  np.testing.assert_array_equal(bare.norms(checkpoint), [np.nan, np.nan, np.nan, 4, 5, 6, 7])
  # A fresh recorder or the old one would not do: they warn or raise.
  with pytest.warns(RuntimeWarning, match="overwritten"):
    optstab.GradNormRecorder().norms(checkpoint)
  with pytest.raises(ValueError, match="went backwards.*GradNormRecorder.resume"):
    recorder.fetch(checkpoint)


def _spike_series(num_steps=10_000, seed=0):
  """Norms with a slow drift, a level shift, spikes, a burst, NaNs and Infs."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_steps)
  norms = np.exp(t / num_steps) * np.exp(rng.normal(0.0, 0.2, num_steps))
  norms[num_steps // 2:] *= 3.0
  spikes = rng.choice(num_steps, num_steps // 100, replace=False)
  norms[spikes] *= rng.uniform(3.0, 30.0, spikes.size)
  norms[7000:7010] *= 20.0  # a burst: its first steps raise the window's std
  bad = rng.choice(num_steps, 12, replace=False)
  norms[bad[:8]] = np.nan
  norms[bad[8:]] = np.inf
  return norms.astype(np.float32)


def _olmo_spike_reference(norms, device_flags, *, window, k, score_window):
  """The spike score in float64 NumPy (OLMo-core's rule, non-finite norms left out).

  Where a norm is within float32 noise of its threshold, the reference takes the
  device's flag (and counts the near-tie). Returns (flags, judged, scores, ties).
  """
  x64 = norms.astype(np.float64)
  tol = 4 * window * 2.0**-24
  flags, judged, scores, ties = [], [], [], 0
  for t, x in enumerate(x64):
    if t >= window:
      win = x64[t - window:t]
      win = win[np.isfinite(win)]
      mean, std = (win.mean(), win.std()) if win.size else (0.0, 0.0)
      spike = not np.isfinite(x) or (std > 0 and x > mean + k * std)
      if np.isfinite(x) and std > 0 and abs(x - mean - k * std) <= tol * (abs(x) + abs(mean) + k * std):
        ties += 1
        spike = bool(device_flags[t])
      judged.append(t)
      flags.append(spike)
    recent = flags[-score_window:]
    scores.append(float(np.mean(recent)) if recent else 0.0)
  return np.asarray(flags), np.asarray(judged), np.asarray(scores), ties


@pytest.mark.parametrize("window, k, score_window", [(128, 6.0, 10_000), (32, 3.0, 500)])
def test_spike_score_matches_a_float64_model(window, k, score_window):
  norms = _spike_series()
  tx = optstab.record_grad_norm(capacity=16, spike_window=window, spike_threshold=k,
                                spike_score_window=score_window)

  def step(state, n):
    _, state = tx.update(n[None], state)
    return state, (state.grad_norm_spike_total, state.grad_norm_spike_score,
                   state.grad_norm_judged_steps)

  state0 = tx.init(jnp.zeros(1))
  final, (totals, scores, judged) = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(
      state0, jnp.asarray(norms))
  totals = np.asarray(totals)
  device_flags = np.diff(np.r_[0, totals]) == 1
  want, want_judged, want_scores, ties = _olmo_spike_reference(
      norms, device_flags, window=window, k=k, score_window=score_window)
  assert ties <= len(norms) // 1000, ties
  np.testing.assert_array_equal(device_flags[want_judged], want)
  assert not device_flags[:window].any()  # nothing is judged before the window is full
  np.testing.assert_array_equal(np.asarray(judged), np.maximum(np.arange(1, len(norms) + 1) - window, 0))
  # The float32 score is an exact count over a float32 denominator: one rounding.
  np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=2**-23, atol=0)
  # Every kind of spike is caught, and the clean steps are not flagged.
  assert want[np.isin(want_judged, np.flatnonzero(~np.isfinite(norms)))].all()
  assert 50 < want.sum() < len(norms) // 20, want.sum()
  assert int(final.grad_norm_spike_total) == want.sum()
  assert int(final.grad_norm_spikes_in_window) == want[-score_window:].sum()


def test_spike_score_is_read_in_a_chain_without_a_host_transfer():
  tx = optax.chain(optstab.record_grad_norm(capacity=8, spike_window=8, spike_score_window=16),
                   optstab.adam(1e-3))
  params = jnp.zeros(3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = [jnp.full(3, 1.0 + 0.01 * (i % 5)) for i in range(30)]
  grads[20] = jnp.full(3, 50.0)
  update(grads[0], state, params)  # compile first
  with jax.transfer_guard_device_to_host("disallow"):
    for g in grads:
      _, state = update(g, state, params)
    score = optax.tree.get(state, "grad_norm_spike_score")
    assert isinstance(score, jax.Array)
  assert float(score) == pytest.approx(1 / 16)  # one spike among the last 16 judged steps
  assert int(optax.tree.get(state, "grad_norm_spike_total")) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(spike_window=1), "spike_window"),
    (dict(spike_window=2.5), "spike_window"),
    (dict(spike_threshold=0.0), "spike_threshold"),
    (dict(spike_threshold=float("inf")), "spike_threshold"),
    (dict(spike_score_window=0), "spike_score_window"),
    (dict(spike_score_window=2**24 + 1), "spike_score_window"),
])
def test_record_grad_norm_bad_spike_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optstab.record_grad_norm(**kwargs)
