"""optstab's optimizers vs optax's namesakes: equal where S1 and optax agree,
and different by exactly the documented amount where they do not."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab
from _optimizers_reference import gradient_sequence

STEPS = 30
SIZE = 16


def sched(step):
  return 0.03 * (1.0 + 0.5 * jnp.cos(0.9 * step))


def sched_np(t):
  return 0.03 * (1.0 + 0.5 * np.cos(0.9 * np.asarray(t, np.float64)))


def _assert_close(actual, desired, rtol, atol):
  """Elementwise |actual - desired| <= rtol |desired| + atol (atol may be an array)."""
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  err = np.abs(actual - desired)
  bound = rtol * np.abs(desired) + np.broadcast_to(atol, err.shape)
  worst = np.unravel_index(np.argmax(err - bound), err.shape)
  assert np.all(err <= bound), (
      f"at {worst}: {actual[worst]!r} vs {desired[worst]!r} (err {err[worst]:.3g} > {bound[worst]:.3g})"
  )


def _run(tx, grads):
  """Runs tx over a fixed gradient sequence; returns updates [T, n] and states."""
  params = jnp.zeros(grads.shape[1])
  state = tx.init(params)
  update = jax.jit(tx.update)
  us, states = [], []
  for g in grads:
    u, state = update(jnp.asarray(g), state, params)
    us.append(np.asarray(u, np.float64))
    states.append(state)
  return np.stack(us), states


# ----------------------------------------------------------------------------
# Equal: SGD, Momentum, Nesterov are optax.sgd.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: optstab.sgd(sched), lambda: optax.sgd(sched)),
        (lambda: optstab.momentum(sched, 0.9), lambda: optax.sgd(sched, momentum=0.9)),
        (
            lambda: optstab.nesterov(sched, 0.7),
            lambda: optax.sgd(sched, momentum=0.7, nesterov=True),
        ),
    ],
    ids=["sgd", "momentum", "nesterov"],
)
def test_sgd_family_equals_optax_sgd(ours, theirs):
  grads = gradient_sequence(STEPS, SIZE, seed=1)
  a, _ = _run(ours(), grads)
  b, _ = _run(theirs(), grads)
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# RMSProp.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.6])
@pytest.mark.parametrize("lr", [0.01, sched], ids=["constant", "varying"])
def test_rmsprop_equals_optax_rmsprop_with_v0_one(gamma, lr):
  """optax.rmsprop(initial_scale=1, eps_in_sqrt=True) also scales by the rate
  before its trace (lr inside the accumulator): equal for any schedule."""
  grads = gradient_sequence(STEPS, SIZE, seed=2)
  ours, _ = _run(optstab.rmsprop(lr, decay=0.8, momentum=gamma, eps=1e-6), grads)
  theirs, _ = _run(
      optax.rmsprop(lr, decay=0.8, eps=1e-6, initial_scale=1.0, eps_in_sqrt=True,
                    momentum=gamma if gamma else None),
      grads,
  )
  # atol: a momentum accumulator may pass near 0 (float32 cancellation).
  _assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max(axis=0))


def test_rmsprop_v0_differs_from_optax_default_by_rho_power():
  """optax's default v_0 = 0: by linearity our v_t exceeds it by rho^t."""
  rho = 0.8
  grads = gradient_sequence(STEPS, SIZE, seed=3)
  _, ours = _run(optstab.rmsprop(0.01, decay=rho), grads)
  _, theirs = _run(optax.rmsprop(0.01, decay=rho), grads)
  for t, (s_ours, s_theirs) in enumerate(zip(ours, theirs)):
    nu_ours = np.asarray(s_ours.nu, np.float64)
    nu_theirs = np.asarray(s_theirs[0].nu, np.float64)
    _assert_close(nu_ours - nu_theirs, np.full(SIZE, rho ** (t + 1)), rtol=1e-4, atol=1e-6 * nu_ours)
  assert not np.allclose(
      _run(optstab.rmsprop(0.01, decay=rho), grads)[0], _run(optax.rmsprop(0.01, decay=rho), grads)[0]
  )


def test_rmsprop_lr_inside_vs_outside_accumulator_difference():
  """With a varying rate, RMSProp (rate inside m) differs from the Momentum-style
  placement (rate outside m) by sum_k gamma^(t-k) (eta_t - eta_k) s_k."""
  rho, gamma, eps = 0.9, 0.8, 1e-6
  grads = gradient_sequence(STEPS, SIZE, seed=4)
  outside = optax.chain(
      optax.scale_by_rms(decay=rho, eps=eps, initial_scale=1.0, eps_in_sqrt=True),
      optax.trace(gamma),
      optax.scale_by_learning_rate(sched),
  )
  ours, _ = _run(optstab.rmsprop(sched, decay=rho, momentum=gamma, eps=eps), grads)
  theirs, _ = _run(outside, grads)
  # Analytic difference in float64.
  g = grads.astype(np.float64)
  eta = sched_np(np.arange(STEPS))
  v = np.ones(SIZE)
  s = np.empty_like(g)
  for t in range(STEPS):
    v = rho * v + (1 - rho) * g[t] ** 2
    s[t] = g[t] / np.sqrt(v + eps)
  expected = np.empty_like(g)
  for t in range(STEPS):
    w = gamma ** (t - np.arange(t + 1))[:, None]
    expected[t] = -(w * eta[: t + 1, None] * s[: t + 1]).sum(0) + eta[t] * (w * s[: t + 1]).sum(0)
  scale = np.max(np.abs(ours), axis=0)
  _assert_close(ours - theirs, expected, rtol=0, atol=1e-5 * scale.max())
  assert np.max(np.abs(expected)) > 0.1 * scale.max()  # the difference is not negligible
  # With a constant rate the two placements agree.
  const_ours, _ = _run(optstab.rmsprop(0.02, decay=rho, momentum=gamma, eps=eps), grads)
  const_out, _ = _run(
      optax.chain(optax.scale_by_rms(decay=rho, eps=eps, initial_scale=1.0),
                  optax.trace(gamma), optax.scale_by_learning_rate(0.02)),
      grads,
  )
  _assert_close(const_ours, const_out, rtol=1e-5, atol=1e-7 * scale.max())


# ----------------------------------------------------------------------------
# Adam and NAdam.
# ----------------------------------------------------------------------------


def test_adam_with_zero_eps_equals_optax_adam():
  grads = gradient_sequence(STEPS, SIZE, seed=5)
  ours, _ = _run(optstab.adam(sched, b1=0.9, b2=0.99, eps=0.0), grads)
  theirs, _ = _run(optax.adam(sched, b1=0.9, b2=0.99, eps=0.0), grads)
  # optax computes 1 - b2^(t+1) naively in float32 (~1e-5 relative error).
  _assert_close(ours, theirs, rtol=1e-4, atol=0)


def test_adam_equals_optax_adam_with_step_dependent_eps():
  """The documented identity: ours == optax.adam with eps / sqrt(1 - b2^(t+1))."""
  b1, b2, eps = 0.9, 0.99, 1e-4
  grads = gradient_sequence(STEPS, SIZE, seed=6, low_exp=-6.0, high_exp=-1.0)
  ours, _ = _run(optstab.adam(sched, b1=b1, b2=b2, eps=eps), grads)
  theirs, _ = _run(
      optax.inject_hyperparams(optax.adam)(
          learning_rate=sched, b1=b1, b2=b2,
          eps=lambda t: eps / jnp.sqrt(1.0 - b2 ** (t + 1.0)),
      ),
      grads,
  )
  _assert_close(ours, theirs, rtol=5e-5, atol=0)


def _adam_analytic(m, v, g, t, b1, b2, eps, lr, form):
  """Float64 update of step t from the float32 moments m_{t+1}, v_{t+1}."""
  c1, c1n, c2 = 1 - b1 ** (t + 1), 1 - b1 ** (t + 2), 1 - b2 ** (t + 1)
  if form == "faq_adam":
    return -lr * m / (np.sqrt(v) + eps) * np.sqrt(c2) / c1
  if form == "faq_nadam":
    return -lr * (b1 * m + (1 - b1) * g) / (np.sqrt(v) + eps) * np.sqrt(c2) / c1
  if form == "optax_adam":
    return -lr * (m / c1) / (np.sqrt(v / c2) + eps)
  if form == "optax_nadam":
    return -lr * (b1 * m / c1n + (1 - b1) * g / c1) / (np.sqrt(v / c2) + eps)
  raise ValueError(form)


@pytest.mark.parametrize("name", ["adam", "nadam"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_adam_family_difference_from_optax_is_the_documented_one(name, eps):
  """ours - optax equals (S1 form - optax form) evaluated on the shared moments."""
  b1, b2 = 0.9, 0.99
  # Small gradients so that eps > 0 changes the update by O(1).
  grads = gradient_sequence(STEPS, SIZE, seed=7, low_exp=-6.0, high_exp=-1.0)
  ours, states = _run(getattr(optstab, name)(sched, b1=b1, b2=b2, eps=eps), grads)
  theirs, _ = _run(getattr(optax, name)(sched, b1=b1, b2=b2, eps=eps), grads)
  g = grads.astype(np.float64)
  diffs = []
  for t in range(STEPS):
    inner = states[t][0]
    assert isinstance(inner, optstab.ScaleByFaqAdamState)
    m = np.asarray(inner.mu, np.float64)
    v = np.asarray(inner.nu, np.float64)
    lr = sched_np(t)
    args = (m, v, g[t], t, b1, b2, eps, lr)
    diffs.append(_adam_analytic(*args, form=f"faq_{name}") - _adam_analytic(*args, form=f"optax_{name}"))
  expected = np.stack(diffs)
  observed = ours - theirs
  _assert_close(observed, expected, rtol=0, atol=5e-5 * np.abs(theirs) + 1e-12)
  # The documented difference is real: ours != optax when eps > 0 (and for
  # NAdam's first-term correction even when eps == 0).
  if eps > 0 or name == "nadam":
    assert np.max(np.abs(expected) / np.abs(theirs)) > 1e-2
  else:
    assert np.max(np.abs(expected) / np.abs(theirs)) < 1e-12  # algebraically 0
