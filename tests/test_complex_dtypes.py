"""Complex parameters and complex moment dtypes, wherever optax accepts them.

optax's generic optimizer test ``test_explicit_dtype`` sets ``mu_dtype`` /
``accumulator_dtype`` to bfloat16, float32 or complex64 and checks the moments'
dtype after ``init``; the same holds here, for every optimizer with such an
argument. Complex parameters train with each of the six optimizers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab

#: Optimizer -> (its moment-dtype argument, the state field holding that moment).
DTYPE_ARGUMENTS = {
    "momentum": ("accumulator_dtype", "trace"),
    "nesterov": ("accumulator_dtype", "trace"),
    "rmsprop": ("accumulator_dtype", "mom"),
    "adam": ("mu_dtype", "mu"),
    "nadam": ("mu_dtype", "mu"),
}


def _make(name, **kwargs):
  if name == "rmsprop":
    kwargs.setdefault("momentum", 0.9)  # the moment that accumulator_dtype sets
  return getattr(optstab, name)(0.1, **kwargs)


@pytest.mark.parametrize("name", sorted(DTYPE_ARGUMENTS))
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "complex64", None])
def test_explicit_dtype_as_in_optax(name, dtype):
  argument, field = DTYPE_ARGUMENTS[name]
  state = _make(name, **{argument: dtype}).init(jnp.array([0.0, 0.0], dtype=jnp.float32))
  (moment,) = jax.tree.leaves(optax.tree.get(state, field))
  assert moment.dtype == jnp.dtype(dtype or jnp.float32)


@pytest.mark.parametrize("name", sorted(DTYPE_ARGUMENTS))
def test_integer_moment_dtypes_are_still_refused(name):
  argument, _ = DTYPE_ARGUMENTS[name]
  with pytest.raises(ValueError, match=f"{argument} must be None or a floating or complex dtype"):
    _make(name, **{argument: "int32"})


@pytest.mark.parametrize("name, moment_dtype", [("sgd", None)] + [
    (name, dtype) for name in sorted(DTYPE_ARGUMENTS) for dtype in (None, jnp.complex64)])
def test_complex_parameters_train(name, moment_dtype):
  """|z - target|^2 over complex z: every optimizer brings it down, updates stay complex64."""
  kwargs = {} if moment_dtype is None else {DTYPE_ARGUMENTS[name][0]: moment_dtype}
  tx = optstab.sgd(0.1) if name == "sgd" else _make(name, **kwargs)
  target = jnp.array([1.0 + 2.0j, -0.5 + 0.25j], jnp.complex64)
  params = jnp.zeros(2, jnp.complex64)

  def loss(z):
    return jnp.sum(jnp.abs(z - target) ** 2)

  state = tx.init(params)
  step = jax.jit(tx.update)
  first = float(loss(params))
  for _ in range(50):
    # JAX's gradient of a real loss in z is conj(dL/dz*); optax expects its conjugate.
    grads = jnp.conj(jax.grad(loss)(params))
    updates, state = step(grads, state, params)
    assert updates.dtype == jnp.complex64
    params = optax.apply_updates(params, updates)
  assert np.isfinite(float(loss(params))) and float(loss(params)) < 0.5 * first
