"""Fuzzing every public constructor: a ValueError naming an argument, or a working object.

For each constructor, hypothesis draws every argument from a mix of valid
values and adversarial ones (negative, zero, huge, NaN, Inf, bools, strings,
None, containers, NumPy and bfloat16 scalars). The call must either raise a
``ValueError`` whose message names one of the arguments given, or return an
object that works: an optax transformation initialises and updates, a
schedule evaluates, a config serialises and round-trips. Any other exception
(TypeError, AttributeError, OverflowError...) from deep inside is a failure.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optstab
from optstab.diagnosis import DetectorThresholds, FeasibilityRule, TrialConfig

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# Adversarial values any argument may get.
JUNK = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3),
    st.integers(-2**40, 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 2**31 + 5, 10**12, math.nan, math.inf, -math.inf, 1e300, -0.0,
                     np.float32(0.5), np.int64(3), np.float64(math.nan),
                     jnp.asarray(0.999, jnp.bfloat16), jnp.asarray([1.0, 2.0])]),
    st.lists(st.floats(-1, 1), max_size=2), st.dictionaries(st.text(max_size=2), st.integers()),
)

UNIT = st.floats(0.0, 0.9999)
POSITIVE = st.floats(1e-6, 10.0)
# Defined at every step optax may call them with (join_schedules shifts steps below 0).
SCHEDULE = st.sampled_from([lambda step: 0.1 / (1.0 + jnp.abs(step)), optax.constant_schedule(0.01)])
DTYPE = st.sampled_from([None, jnp.float32, jnp.bfloat16, "float16", "int32", "float", "nope"])


def _mix(valid):
  return st.one_of(valid, JUNK)


def _kwargs(**arguments):
  """Any subset of the arguments, each valid or adversarial."""
  return st.fixed_dictionaries({}, optional={k: _mix(v) for k, v in arguments.items()})


def _check(make, kwargs, exercise):
  try:
    obj = make(**kwargs)
  except ValueError as e:
    assert any(name in str(e) for name in kwargs), (kwargs, str(e))
    return
  exercise(obj)


def _exercise_transformation(tx):
  params = {"w": jnp.ones([2, 3]), "b": jnp.zeros([3])}
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.shape == p.shape and u.dtype == p.dtype


OPTIMIZERS = {
    "sgd": dict(learning_rate=st.one_of(POSITIVE, SCHEDULE)),
    "momentum": dict(learning_rate=st.one_of(POSITIVE, SCHEDULE), momentum=UNIT,
                     accumulator_dtype=DTYPE),
    "nesterov": dict(learning_rate=POSITIVE, momentum=UNIT, accumulator_dtype=DTYPE),
    "rmsprop": dict(learning_rate=st.one_of(POSITIVE, SCHEDULE), decay=UNIT,
                    momentum=st.one_of(st.none(), UNIT), eps=st.floats(0, 1e-3),
                    accumulator_dtype=DTYPE),
    "adam": dict(learning_rate=st.one_of(POSITIVE, SCHEDULE), b1=UNIT, b2=UNIT,
                 eps=st.floats(0, 1e-3), mu_dtype=DTYPE),
    "nadam": dict(learning_rate=POSITIVE, b1=UNIT, b2=UNIT, eps=st.floats(0, 1e-3),
                  mu_dtype=DTYPE),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers(name):
  arguments = OPTIMIZERS[name]

  @SETTINGS
  @given(learning_rate=_mix(arguments["learning_rate"]),
         others=_kwargs(**{k: v for k, v in arguments.items() if k != "learning_rate"}))
  def run(learning_rate, others):
    _check(getattr(optstab, name), {"learning_rate": learning_rate, **others},
           _exercise_transformation)

  run()


@pytest.mark.parametrize("name", ["scale_by_faq_adam", "scale_by_faq_nadam"])
def test_learning_rate_free_blocks(name):
  @SETTINGS
  @given(_kwargs(b1=UNIT, b2=UNIT, eps=st.floats(0, 1e-3), mu_dtype=DTYPE))
  def run(kwargs):
    _check(getattr(optstab, name), kwargs, _exercise_transformation)

  run()


@SETTINGS
@given(_kwargs(percentile=st.floats(1e-3, 100.0), window_size=st.integers(1, 64),
               min_history=st.integers(1, 64), initial_threshold=POSITIVE,
               max_threshold=POSITIVE))
def test_percentile_clip(kwargs):
  _check(optstab.percentile_clip, kwargs, _exercise_transformation)


@SETTINGS
@given(_kwargs(capacity=st.integers(1, 64)))
def test_record_grad_norm(kwargs):
  _check(optstab.record_grad_norm, kwargs, _exercise_transformation)


@SETTINGS
@given(_kwargs(fetch_every=st.one_of(st.none(), st.integers(1, 8))))
def test_grad_norm_recorder(kwargs):
  def exercise(recorder):
    tx = optstab.record_grad_norm(capacity=8)
    state = tx.init(jnp.zeros(1))
    for i in range(10):
      _, state = tx.update(jnp.array([float(i)]), state)
      if i == 0 and (kwargs.get("fetch_every") or 0) > 8:
        # The capacity is known from the first state: refused there, by name.
        with pytest.raises(ValueError, match=r"fetch_every must be an integer in \[1, capacity=8\]"):
          recorder.observe(state)
        return
      recorder.observe(state)
    np.testing.assert_array_equal(recorder.norms(state), np.arange(10.0))

  _check(optstab.GradNormRecorder, kwargs, exercise)


@SETTINGS
@given(base=_mix(POSITIVE), steps=_mix(st.integers(1, 10**6)))
def test_warmup(base, steps):
  def exercise(schedule):
    assert float(schedule(0)) == 0.0
    # The rate reached is the base rate in float32 (which may round it to 0 or inf).
    np.testing.assert_allclose(float(schedule(steps)), np.float32(base), rtol=1e-6)

  _check(optstab.warmup, {"base_learning_rate": base, "warmup_steps": steps}, exercise)


@SETTINGS
@given(schedule=_mix(st.one_of(POSITIVE, SCHEDULE)), steps=_mix(st.integers(1, 10**6)))
def test_prepend_warmup(schedule, steps):
  def exercise(lr):
    assert float(lr(0)) == 0.0 and float(lr(steps)) >= 0.0

  _check(optstab.prepend_warmup, {"schedule": schedule, "warmup_steps": steps}, exercise)


@SETTINGS
@given(low=_mix(POSITIVE), high=_mix(st.floats(10.0, 1e3)), num=_mix(st.integers(1, 20)))
def test_log_grid(low, high, num):
  def exercise(grid):
    assert grid.shape == (num,) and np.all(np.diff(grid) > 0) and grid[0] == low

  _check(optstab.log_grid, {"low": low, "high": high, "num": num}, exercise)


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(-1e3, 1e3), st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=2),
                            st.dictionaries(st.text(max_size=2), inner, max_size=2)),
    max_leaves=4)
EXTRA = st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)),
                        st.one_of(JSON_VALUE, JUNK), max_size=3)


@SETTINGS
@given(learning_rate=_mix(POSITIVE), num_steps=_mix(st.integers(1, 500)),
       others=_kwargs(warmup_steps=st.integers(0, 100), schedule=st.sampled_from(optstab.diagnosis.trial.SCHEDULES),
                      eval_every=st.integers(1, 100), seed=st.integers(0, 10), extra=EXTRA))
def test_trial_config(learning_rate, num_steps, others):
  def exercise(config):
    # Strict JSON, so the store can always append it; and it comes back equal.
    line = json.dumps(config.to_dict(), allow_nan=False)
    assert TrialConfig.from_dict(json.loads(line)) == config
    assert config.eval_steps()[-1] == config.total_steps
    assert float(config.learning_rate_schedule()(config.total_steps - 1)) >= 0.0

  _check(TrialConfig, {"learning_rate": learning_rate, "num_steps": num_steps, **others}, exercise)


@SETTINGS
@given(_kwargs(max_loss_ratio=st.floats(1.0, 100.0), scope=st.sampled_from(["any", "final"]),
               metric_thresholds=st.dictionaries(st.text(max_size=3), st.floats(-1.0, 1.0),
                                                 max_size=2)))
def test_feasibility_rule(kwargs):
  _check(FeasibilityRule, kwargs, lambda rule: rule.describe())


@SETTINGS
@given(_kwargs(smoothing_window=st.integers(1, 10), min_increase=st.floats(0, 1),
               grad_min_ratio=st.floats(1, 5), early_fraction=st.floats(0, 1),
               recovery_fraction=st.floats(0, 1), grad_window=st.integers(1, 100)))
def test_detector_thresholds(kwargs):
  def exercise(thresholds):
    optstab.classify_run(np.linspace(2.0, 1.0, 50), np.ones(50), thresholds)

  _check(DetectorThresholds, kwargs, exercise)
