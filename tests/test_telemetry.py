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
