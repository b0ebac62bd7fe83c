"""The one argument-checking helper every constructor calls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optstab import _validation


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1", None, True])
def test_learning_rate_errors_name_argument_value_and_range(value):
  with pytest.raises(ValueError) as e:
    _validation.check_learning_rate("learning_rate", value)
  message = str(e.value)
  assert message.startswith("learning_rate must be")
  assert "[0, inf)" in message and "schedule" in message
  assert repr(value) in message


def test_interval_ends_follow_inclusiveness():
  _validation.check_in_range("b1", 0.0, 0.0, 1.0)
  with pytest.raises(ValueError, match=r"b1 must be a finite real number in \[0, 1\); got 1.0"):
    _validation.check_in_range("b1", 1.0, 0.0, 1.0)
  _validation.check_percentile("percentile", 100.0)
  with pytest.raises(ValueError, match=r"\(0, 100\]"):
    _validation.check_percentile("percentile", 0.0)


def test_schedules_numpy_and_low_precision_scalars_are_accepted():
  _validation.check_learning_rate("learning_rate", lambda step: 0.1)
  _validation.check_in_range("b1", np.float32(0.9), 0.0, 1.0)
  _validation.check_in_range("b1", jnp.asarray(0.9, jnp.bfloat16), 0.0, 1.0)
  _validation.check_positive_int("window_size", np.int32(5))
  _validation.check_positive_int("window_size", jnp.asarray(5))


def test_low_precision_rounding_out_of_range_explains_the_cast():
  # 0.999 rounds to 1.0 in bfloat16, as inject_hyperparams may cast it.
  with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
    _validation.check_in_range("b2", jnp.asarray(0.999, jnp.bfloat16), 0.0, 1.0)


def test_traced_values_pass_concrete_ones_are_checked():
  @jax.jit
  def f(x):
    _validation.check_in_range("decay", x, 0.0, 1.0)
    _validation.check_positive_int("window_size", x.astype(jnp.int32))
    return x

  assert float(f(jnp.asarray(5.0))) == 5.0  # traced: no value to check
  with pytest.raises(ValueError, match="decay"):
    _validation.check_in_range("decay", jnp.asarray(5.0), 0.0, 1.0)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "3"])
def test_positive_int_rejects_non_integers_and_small_values(value):
  with pytest.raises(ValueError, match=r"window_size must be an integer >= 1"):
    _validation.check_positive_int("window_size", value)


def test_one_of_lists_the_choices():
  _validation.check_one_of("head", "pool8", ("pool8", "global_pool"))
  with pytest.raises(ValueError, match="head must be 'pool8' or 'global_pool'; got 'avg'"):
    _validation.check_one_of("head", "avg", ("pool8", "global_pool"))
