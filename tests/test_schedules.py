"""Tests for optstab.schedules: FAQ S4 warmup and the warmup-sweep arithmetic."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import optstab
from optstab import schedules


class WarmupTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0.1, 1000), (3.0, 7), (1e-3, 1))
  def test_values_at_the_boundaries(self, base, w):
    lr = self.variant(optstab.warmup(base, w))
    b32 = np.float32(base)
    self.assertEqual(float(lr(jnp.int32(0))), 0.0)
    np.testing.assert_allclose(float(lr(jnp.int32(1))), base * min(1, w) / w, rtol=3e-7)
    np.testing.assert_allclose(float(lr(jnp.int32(w - 1))), base * (w - 1) / w, rtol=3e-7)
    self.assertEqual(np.float32(lr(jnp.int32(w))), b32)  # exactly the base rate
    self.assertEqual(np.float32(lr(jnp.int32(100 * w + 5))), b32)  # constant afterwards
    self.assertEqual(float(lr(jnp.int32(-3))), 0.0)

  def test_linear_in_between(self):
    lr = optstab.warmup(0.5, 40)
    steps = jnp.arange(0, 41)
    np.testing.assert_allclose(np.asarray(jax.vmap(lr)(steps)), 0.5 * np.arange(41) / 40, rtol=1e-6)

  def test_first_step_more_exact_than_optax_linear_schedule(self):
    # The documented reason for not reusing optax.linear_schedule for the ramp.
    base, w = 0.1, 1000
    exact = np.float64(np.float32(base)) / w
    ours = float(optstab.warmup(base, w)(1))
    theirs = float(optax.linear_schedule(0.0, base, w)(1))
    self.assertLess(abs(ours - exact) / exact, 2e-7)
    self.assertGreater(abs(theirs - exact) / exact, abs(ours - exact) / exact)

  def test_in_an_optimizer_first_update_is_zero(self):
    opt = optax.sgd(optstab.warmup(1.0, 10))
    params = jnp.ones(3)
    state = opt.init(params)
    updates, state = opt.update(jnp.ones(3), state, params)
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(3))
    updates, state = opt.update(jnp.ones(3), state, params)
    np.testing.assert_allclose(np.asarray(updates), -0.1 * np.ones(3), rtol=1e-6)


class PrependWarmupTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shifts_an_optax_cosine_schedule(self):
    w = 1000
    cosine = optax.cosine_decay_schedule(0.1, decay_steps=10_000, alpha=0.01)
    lr = self.variant(optstab.prepend_warmup(cosine, w))
    self.assertEqual(float(lr(jnp.int32(0))), 0.0)
    np.testing.assert_allclose(float(lr(jnp.int32(1))), 0.1 / w, rtol=3e-7)
    np.testing.assert_allclose(float(lr(jnp.int32(w // 2))), 0.05, rtol=1e-6)
    for t in (w, w + 1, w + 2500, w + 10_000, w + 50_000):
      self.assertEqual(float(lr(jnp.int32(t))), float(cosine(t - w)), msg=f"step {t}")
    self.assertEqual(float(lr(jnp.int32(w))), float(cosine(0)))  # continuous at the join

  def test_constant_schedule_matches_warmup(self):
    a, b = optstab.prepend_warmup(0.3, 25), optstab.warmup(0.3, 25)
    steps = jnp.arange(-2, 60)
    np.testing.assert_array_equal(np.asarray(jax.vmap(a)(steps)), np.asarray(jax.vmap(b)(steps)))

  def test_run_length(self):
    self.assertEqual(optstab.total_steps_with_warmup(10_000, 1_000), 11_000)
    self.assertEqual(optstab.total_steps_with_warmup(10_000, 0), 10_000)


def test_sweep_grid_drops_candidates_above_ten_percent():
  assert optstab.warmup_sweep_grid(1_000_000) == (10, 1000, 10000, 100000)
  assert optstab.warmup_sweep_grid(999_999) == (10, 1000, 10000)
  assert optstab.warmup_sweep_grid(100_000) == (10, 1000, 10000)  # 10_000 is exactly 10%: kept
  assert optstab.warmup_sweep_grid(5_000) == (10,)
  assert optstab.warmup_sweep_grid(1000, candidates=(100, 50, 100, 10)) == (10, 50, 100)
  assert optstab.warmup_sweep_grid(1000, max_fraction=0.5) == (10,)
  with pytest.raises(ValueError, match="max_train_steps"):
    optstab.warmup_sweep_grid(50)


def test_post_warmup_steps_and_base_learning_rates():
  assert optstab.post_warmup_steps_for(1000) == 2000
  assert optstab.post_warmup_steps_for(10, factor=3) == 30
  assert optstab.warmup_base_learning_rates(0.01) == (0.1,)
  np.testing.assert_allclose(optstab.warmup_base_learning_rates(0.01, factors=(10.0, 100.0)),
                             (0.1, 1.0))


def test_length_advice_above_five_percent():
  assert optstab.warmup_length_advice(500, 10_000) is None  # exactly 5%
  advice = optstab.warmup_length_advice(501, 10_000)
  assert "max_train_steps" in advice and "10020" in advice
  assert optstab.warmup_length_advice(40_000, 100_000).endswith("at least 800000.")
  assert optstab.warmup_length_advice(100, 1000, max_fraction=0.1) is None


@pytest.mark.parametrize("call, name", [
    (lambda: optstab.warmup(0.1, 0), "warmup_steps"),
    (lambda: optstab.warmup(0.1, -5), "warmup_steps"),
    (lambda: optstab.warmup(0.1, 10.0), "warmup_steps"),
    (lambda: optstab.warmup(0.1, True), "warmup_steps"),
    (lambda: optstab.warmup(-0.1, 10), "base_learning_rate"),
    (lambda: optstab.warmup(float("nan"), 10), "base_learning_rate"),
    (lambda: optstab.prepend_warmup(optax.constant_schedule(1.0), 0), "warmup_steps"),
    (lambda: optstab.prepend_warmup(-1.0, 5), "schedule"),
    # Negative at step 0: the ramp would make Adam ascend (issue 14).
    (lambda: optstab.prepend_warmup(optax.linear_schedule(-0.1, 0.1, 100), 5), r"schedule\(0\)"),
    (lambda: optstab.prepend_warmup(lambda step: jnp.nan * step, 5), r"schedule\(0\)"),
    (lambda: optstab.total_steps_with_warmup(0, 10), "num_steps"),
    (lambda: optstab.total_steps_with_warmup(10, -1), "warmup_steps"),
    (lambda: optstab.warmup_sweep_grid(0), "max_train_steps"),
    (lambda: optstab.warmup_sweep_grid(100, candidates=(10, 0)), "candidates"),
    (lambda: optstab.warmup_sweep_grid(100, candidates=()), "candidates"),
    (lambda: optstab.warmup_sweep_grid(100, max_fraction=0.0), "max_fraction"),
    (lambda: optstab.post_warmup_steps_for(0), "warmup_steps"),
    (lambda: optstab.post_warmup_steps_for(10, factor=0), "factor"),
    (lambda: optstab.warmup_base_learning_rates(0.0), "unstable_base_learning_rate"),
    (lambda: optstab.warmup_base_learning_rates(0.1, factors=(0.5,)), "factors"),
    (lambda: optstab.warmup_length_advice(0, 100), "warmup_steps"),
    (lambda: optstab.warmup_length_advice(10, 100, max_fraction=2.0), "max_fraction"),
    (lambda: optstab.schedule_values(0.1, 0), "num_steps"),
])
def test_bad_input_names_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def test_schedule_values_of_vectorized_python_and_constant_schedules():
  cosine = optstab.prepend_warmup(optax.cosine_decay_schedule(0.1, 20), 5)
  values = optstab.schedule_values(cosine, 25)
  assert values.dtype == np.float32 and values.shape == (25,)
  # Vectorized and step-by-step evaluation agree to float32 rounding at the peak.
  np.testing.assert_allclose(values, [float(cosine(t)) for t in range(25)], rtol=0,
                             atol=4 * np.finfo(np.float32).eps * 0.1)
  python_only = lambda t: 0.1 if t < 3 else 0.01  # branches on a concrete step: no vmap
  np.testing.assert_array_equal(optstab.schedule_values(python_only, 5),
                                np.float32([0.1, 0.1, 0.1, 0.01, 0.01]))
  np.testing.assert_array_equal(optstab.schedule_values(0.5, 3, dtype=np.float64), [0.5] * 3)


def test_public_names():
  for name in schedules.__all__:
    assert getattr(optstab, name) is getattr(schedules, name)
