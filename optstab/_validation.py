"""Argument checking shared by every optstab constructor.

Every public constructor validates its arguments here, at construction time, so
bad input fails with one message format naming the argument, the value it got
and the range it allows. Schedules (callables) are accepted wherever a
``ScalarOrSchedule`` is, and are checked when they are called, not here.

Under :func:`optax.inject_hyperparams` a constructor is called again inside the
jitted update with traced hyperparameters. Those were checked, concrete, when
the transformation was built; a tracer has no value to check, so every check
here lets a tracer through.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "check_in_range",
    "check_learning_rate",
    "check_positive_int",
    "check_non_negative",
    "check_positive",
    "check_percentile",
    "check_one_of",
    "check_norm_log",
    "check_float_leaves",
    "check_full_precision",
    "check_sequence",
    "check_json_value",
    "check_steps",
    "check_float_dtype",
]


_FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _is_scalar_array(value: Any, kind: Any) -> bool:
  """A 0-d NumPy / JAX array of dtype ``kind`` (bfloat16 counts as floating)."""
  dtype = getattr(value, "dtype", None)
  return getattr(value, "shape", None) == () and dtype is not None and jnp.issubdtype(dtype, kind)


def _is_real_scalar(value: Any) -> bool:
  if isinstance(value, bool):
    return False
  if isinstance(value, numbers.Real):
    return True
  return _is_scalar_array(value, jnp.floating) or _is_scalar_array(value, jnp.integer)


def _fail(name: str, value: Any, allowed: str) -> None:
  message = f"{name} must be {allowed}; got {value!r}."
  if _is_scalar_array(value, jnp.floating) and jnp.finfo(value.dtype).bits < 32:
    # inject_hyperparams casts hyperparameters to the parameters' dtype, where
    # e.g. 0.999 rounds to 1.0 in bfloat16.
    message += (
        f" It was a {value.dtype} scalar: optax.inject_hyperparams casts "
        "hyperparameters to the parameters' dtype unless given "
        "hyperparam_dtype=jnp.float32."
    )
  raise ValueError(message)


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    allow_schedule: bool = False,
) -> Any:
  """Raises ``ValueError`` unless ``value`` is a finite real in the interval.

  Returns ``value``, with a Python or NumPy integer made a float: JAX takes a
  Python int as a weakly typed integer, which overflows beyond int32.

  Args:
    name: the argument's name, as the user wrote it.
    value: the argument's value.
    low: lower bound.
    high: upper bound (may be ``math.inf``).
    low_inclusive: whether ``low`` itself is allowed.
    high_inclusive: whether ``high`` itself is allowed.
    allow_schedule: accept a callable (an optax schedule) without checking it.
  """
  if _is_traced(value) or (allow_schedule and callable(value)):
    return value
  left = "[" if low_inclusive else "("
  right = "]" if high_inclusive and math.isfinite(high) else ")"
  allowed = f"a finite real number in {left}{low:g}, {high:g}{right}"
  if allow_schedule:
    allowed += " or a schedule (step -> value)"
  if not _is_real_scalar(value):
    _fail(name, value, allowed)
  x = float(value)
  if not math.isfinite(x):
    _fail(name, value, allowed)
  if abs(x) > _FLOAT32_MAX:  # JAX computes in float32, where it would be inf
    _fail(name, value, allowed + " whose magnitude fits float32 (at most 3.4e38)")
  if x < low or (x == low and not low_inclusive):
    _fail(name, value, allowed)
  if x > high or (x == high and not high_inclusive):
    _fail(name, value, allowed)
  if isinstance(value, numbers.Integral):
    return x
  return value


def check_learning_rate(name: str, value: Any) -> Any:
  """A learning rate: a finite real >= 0, or a schedule.

  Returns it as :func:`check_in_range` does (integers made floats).
  """
  return check_in_range(name, value, 0.0, math.inf, allow_schedule=True)


def check_non_negative(name: str, value: Any) -> Any:
  """A finite real >= 0."""
  return check_in_range(name, value, 0.0, math.inf)


def check_positive(name: str, value: Any) -> Any:
  """A finite real > 0."""
  return check_in_range(name, value, 0.0, math.inf, low_inclusive=False)


def check_percentile(name: str, value: Any) -> Any:
  """A percentile in (0, 100]."""
  return check_in_range(name, value, 0.0, 100.0, low_inclusive=False, high_inclusive=True)


def check_positive_int(name: str, value: Any, *, minimum: int = 1,
                       maximum: int | None = None, why: str = "") -> None:
  """An integer in [``minimum``, ``maximum``] (bools and floats such as 10.0 are rejected).

  A 0-d integer array (how inject_hyperparams passes an integer) is accepted.
  ``why`` (e.g. ``" (float32 indexes the window exactly up to 2**24)"``) is
  appended to the allowed range when ``maximum`` is exceeded.
  """
  if _is_traced(value):
    return
  is_int = (
      isinstance(value, numbers.Integral) and not isinstance(value, bool)
  ) or _is_scalar_array(value, jnp.integer)
  if maximum is None:
    if not is_int or int(value) < minimum:
      _fail(name, value, f"an integer >= {minimum}")
  elif not is_int or not minimum <= int(value) <= maximum:
    _fail(name, value, f"an integer in [{minimum}, {maximum}]{why}")


def check_one_of(name: str, value: Any, choices: Sequence[Any]) -> None:
  """One of ``choices`` (e.g. an enumerated string option such as a head type)."""
  if isinstance(value, bool) or value not in tuple(choices):
    _fail(name, value, " or ".join(repr(c) for c in choices))


def check_norm_log(name: str, values: Any) -> Any:
  """A non-empty 1-D array-like of gradient norms, at least one finite, none negative.

  Returns it as a float64 NumPy array (NaN/Inf entries kept: callers decide).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  try:
    arr = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError):
    _fail(name, type(values).__name__, "a non-empty 1-D array of gradient norms")
  if arr.ndim != 1 or arr.size == 0:
    _fail(name, f"an array of shape {arr.shape}", "a non-empty 1-D array of gradient norms")
  if not np.isfinite(arr).any():
    _fail(name, f"{arr.size} values, all NaN or Inf", "an array with at least one finite norm")
  negative = np.flatnonzero(np.isfinite(arr) & (arr < 0))
  if negative.size:  # a norm is >= 0: a negative one is a bug upstream, not a diverged step
    _fail(name, f"{float(arr[negative[0]])!r} at index {negative[0]}", "non-negative (NaN/Inf entries are ignored)")
  return arr


def check_float_leaves(name: str, tree: Any) -> None:
  """Every leaf of ``tree`` has a floating or complex dtype (checked at trace time).

  Raises ``TypeError`` (as optax does for integer updates): scaling an
  integer update by a clipping factor would truncate it, often to zero.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(f"{name} must have floating-point or complex leaves; got {dtype} at "
                      f"{jax.tree_util.keystr(path) or 'the root'}.")


def check_full_precision(name: str, value: Any) -> None:
  """A float hyperparameter array is float32 or wider (its dtype is static under jit).

  ``optax.inject_hyperparams`` casts injected hyperparameters to the
  parameters' dtype unless given ``hyperparam_dtype``; in bfloat16 a percentile
  of 99.9 becomes 100.0. Python numbers and tracers of float32 or wider pass.
  """
  dtype = getattr(value, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    raise ValueError(
        f"{name} must be a float32 (or wider) value; got a {dtype} one. "
        "optax.inject_hyperparams casts hyperparameters to the parameters' dtype: pass "
        "hyperparam_dtype=jnp.float32 to keep them exact.")


def check_sequence(name: str, value: Any, *, allow_empty: bool = True) -> list:
  """A sequence (list, tuple, 1-D array...) of items, returned as a list.

  A scalar, a string or ``None`` is refused by name (``list(0.1)`` would say
  only "'float' object is not iterable").
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
    arr = np.asarray(value)
    if arr.ndim != 1:
      _fail(name, value, "a 1-D sequence of values (e.g. a list)")
    items = arr.tolist()
  elif isinstance(value, (str, bytes, numbers.Number)) or value is None or not hasattr(value, "__iter__"):
    _fail(name, value, "a sequence of values (e.g. a list or a tuple), not a single value")
  else:
    items = list(value)
  if not items and not allow_empty:
    _fail(name, value, "a non-empty sequence")
  return items


def check_json_value(name: str, value: Any) -> Any:
  """``value`` as strict JSON (dict with str keys, list, str, finite number, bool, None).

  NumPy scalars and 0-d arrays become Python numbers, NumPy arrays and tuples
  lists; NaN/Inf, non-string keys and other objects are refused, naming the
  entry (e.g. ``extra['dropout']``). Returns the normalised value.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  if isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "items")):
    out = {}
    for key, item in value.items():
      if not isinstance(key, str):
        _fail(f"{name} keys", key, "strings (JSON object keys)")
      out[key] = check_json_value(f"{name}[{key!r}]", item)
    return dict(sorted(out.items()))
  if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim > 0:
    return [check_json_value(f"{name}[{i}]", item) for i, item in enumerate(value)]
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Integral) or _is_scalar_array(value, np.integer):
    return int(value)
  if isinstance(value, numbers.Real) or _is_scalar_array(value, np.floating):
    x = float(value)
    if not math.isfinite(x):
      _fail(name, value, "a finite number (strict JSON has no NaN or Inf)")
    return x
  _fail(name, f"a {type(value).__name__}", "JSON-serializable: a dict with str keys, a list, a "
        "str, a finite number, a bool or None")


def check_steps(name: str, steps: Any, last: int) -> None:
  """A 1-D strictly increasing array of integer steps in [1, ``last``]."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  arr = np.asarray(steps)
  integral = arr.size == 0 or np.issubdtype(arr.dtype, np.integer) or (
      np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
  if arr.ndim != 1 or not integral:
    _fail(name, f"an array of shape {arr.shape} and dtype {arr.dtype}", "a 1-D array of integer steps")
  if arr.size and (arr.min() < 1 or arr.max() > last):
    _fail(name, f"steps {arr.min()}..{arr.max()}", f"steps in [1, {last}] (the trial's steps)")
  if arr.size > 1 and not np.all(np.diff(arr) > 0):
    _fail(name, arr.tolist() if arr.size <= 10 else f"{arr.size} steps", "strictly increasing steps")


def check_float_dtype(name: str, value: Any) -> Any:
  """``None`` or a floating or complex dtype (as optax accepts); returns it canonical.

  E.g. ``jnp.float32``, ``"bfloat16"``, ``jnp.complex64`` (moments of complex
  parameters). Integer and boolean dtypes are refused: a moment stored in one
  would truncate every update.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  if value is None:
    return None
  try:  # an array is not a dtype (jnp.dtype(array) is deprecated)
    dtype = None if isinstance(value, (jax.Array, np.ndarray)) else jnp.dtype(value)
  except (TypeError, ValueError):
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
    _fail(name, value, "None or a floating or complex dtype such as jnp.float32, 'bfloat16' or "
          "jnp.complex64")
  return jax.dtypes.canonicalize_dtype(dtype)


def check_callable(name: str, value: Any, what: str = "a function") -> None:
  """A callable (``what`` describes the expected signature, e.g. ``"a function seed -> batches"``)."""
  if not callable(value):
    _fail(name, value, what)
