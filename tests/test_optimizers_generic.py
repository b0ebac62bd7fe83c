"""Properties every optstab optimizer must have, checked over all six at once.

The generic checks a user expects from any optax optimizer: it converges on a
parabola and on Rosenbrock's valley, keeps dtypes, compiles once, accepts extra
arguments to ``update``, handles complex parameters, and gives the same
updates and the same state structure under ``optax.inject_hyperparams``.
Sharding stability over 8 devices is checked by tests/test_sharding_optimizers.py
(a subprocess, so the device count does not leak into these tests).

The same checks run with each optimizer wrapped in ``optstab.skip_spikes``
(``guarded``): the guard must not stop any of them from converging, change a
dtype or add a compilation.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab

NAMES = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam")

# Non-default hyperparameters, so every code path (momentum buffers included) runs.
HYPERPARAMS = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "rmsprop": {"decay": 0.9, "momentum": 0.5, "eps": 1e-8},
    "adam": {"b1": 0.9, "b2": 0.99, "eps": 1e-8},
    "nadam": {"b1": 0.9, "b2": 0.99, "eps": 1e-8},
}


def _make(name, learning_rate, guarded=False, **overrides):
  tx = getattr(optstab, name)(learning_rate, **{**HYPERPARAMS[name], **overrides})
  return optstab.skip_spikes(tx) if guarded else tx


GUARDED = pytest.mark.parametrize("guarded", [False, True], ids=["plain", "guarded"])


def _minimize(tx, loss, params, num_steps, conj=False):
  """``num_steps`` jitted steps in one scan; returns the final parameters."""
  grad = jax.grad(loss)

  def step(carry, _):
    params, state = carry
    g = grad(params)
    # For a real loss of complex parameters the steepest-descent direction is
    # the conjugate of what jax.grad returns (the convention optax uses too).
    g = jax.tree.map(jnp.conj, g) if conj else g
    updates, state = tx.update(g, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=num_steps))(
      (params, tx.init(params)))
  return params


# Learning rates at which each method settles within the step budget.
PARABOLA_RATES = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "rmsprop": 0.01,
                  "adam": 0.05, "nadam": 0.05}


@GUARDED
@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_parabola(name, guarded):
  target = jnp.array([1.0, -2.0, 0.5])
  loss = lambda p: jnp.sum((p - target) ** 2)  # pylint: disable=unnecessary-lambda-assignment
  params = _minimize(_make(name, PARABOLA_RATES[name], guarded), loss, jnp.zeros(3), 2000)
  assert float(loss(params)) < 1e-6, (name, params)


ROSENBROCK_RATES = {"sgd": 1e-3, "momentum": 2e-4, "nesterov": 2e-4, "rmsprop": 1e-3,
                    "adam": 1e-2, "nadam": 1e-2}


@GUARDED
@pytest.mark.parametrize("name", NAMES)
def test_converges_on_rosenbrock(name, guarded):
  def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

  params = _minimize(_make(name, ROSENBROCK_RATES[name], guarded), rosenbrock, jnp.array([-0.5, 1.5]),
                     20_000)
  np.testing.assert_allclose(np.asarray(params), [1.0, 1.0], atol=1e-2, err_msg=name)


# RMSProp's v_0 = 1 makes its early steps small; its rate is larger here.
COMPLEX_RATES = dict(PARABOLA_RATES, rmsprop=0.02)


@GUARDED
@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_converge(name, guarded):
  # adam, nadam and rmsprop once squared g instead of |g|^2 = g conj(g) and
  # stalled at a loss near 9.4 here.
  target = jnp.array([1.0 + 2.0j, -3.0 + 0.5j, 0.25j], jnp.complex64)
  loss = lambda z: jnp.sum(jnp.abs(z - target) ** 2)  # pylint: disable=unnecessary-lambda-assignment
  params = _minimize(_make(name, COMPLEX_RATES[name], guarded), loss, jnp.zeros(3, jnp.complex64), 2000,
                     conj=True)
  assert params.dtype == jnp.complex64
  assert float(loss(params)) < 1e-6, (name, params)


@pytest.mark.parametrize("ours, theirs", [
    (lambda: optstab.adam(0.05, eps=0.0), lambda: optax.adam(0.05, eps=0.0)),
    (lambda: optstab.rmsprop(0.02, decay=0.9, momentum=0.5),
     lambda: optax.rmsprop(0.02, decay=0.9, momentum=0.5, initial_scale=1.0, eps_in_sqrt=True)),
], ids=["adam", "rmsprop"])
def test_complex_updates_equal_optax(ours, theirs):
  # With the settings under which optax computes the FAQ's updates (see the
  # optimizers' docstrings), complex updates agree too.
  rng = np.random.default_rng(0)
  grads = [jnp.asarray(rng.normal(size=4) + 1j * rng.normal(size=4), jnp.complex64)
           for _ in range(5)]
  params = jnp.zeros(4, jnp.complex64)
  runs = []
  for tx in (ours(), theirs()):
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(u)
    runs.append(out)
  for a, b in zip(*runs):
    # A few float32 roundings per element (different association of the same terms).
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@GUARDED
def test_dtypes_kept_and_compiled_once(name, dtype, guarded):
  params = {"w": jnp.ones([4, 3], dtype), "b": jnp.zeros([3], dtype)}
  tx = _make(name, lambda step: 0.1 / (1.0 + step), guarded)  # a schedule: the count is in the state too
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  chex.clear_trace_counter()
  init_types = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for i in range(3):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5 + i), params)
    params, state, updates = step(params, state, grads)
    chex.assert_trees_all_equal_dtypes(updates, grads)
    chex.assert_trees_all_equal_dtypes(params, grads)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == init_types, name


@GUARDED
@pytest.mark.parametrize("name", NAMES)
def test_extra_args_accepted(name, guarded):
  tx = _make(name, 0.1, guarded)
  assert isinstance(tx, optax.GradientTransformationExtraArgs), name
  params = jnp.ones(3)
  state = tx.init(params)
  with_extra, _ = tx.update(params, state, params, value=jnp.asarray(1.0), loss=2.0)
  plain, _ = tx.update(params, state, params)
  chex.assert_trees_all_equal(with_extra, plain)
  # Also through a wrapper that forwards them (optax's mechanize passes `value`).
  mechanized = optax.contrib.mechanize(tx)
  mechanized.update(params, mechanized.init(params), params, value=jnp.asarray(1.0))


def _hyperparams(name):
  return {"learning_rate": 0.05, **HYPERPARAMS[name]}


@pytest.mark.parametrize("defaults", [True, False], ids=["defaults", "all-hyperparameters"])
@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_same_updates_and_state_structure(name, defaults):
  kwargs = {"learning_rate": 0.05} if defaults else _hyperparams(name)
  direct = getattr(optstab, name)(**kwargs)
  injected = optax.inject_hyperparams(getattr(optstab, name))(**kwargs)
  params = {"w": jnp.ones([3, 2]), "b": jnp.zeros([2])}
  d_state, i_state = direct.init(params), injected.init(params)
  # One structure, so a checkpoint of one restores into the other (rmsprop's
  # default momentum once stored no buffer directly but one when injected).
  assert jax.tree.structure(d_state) == jax.tree.structure(i_state.inner_state), name
  d_update, i_update = jax.jit(direct.update), jax.jit(injected.update)
  rng = np.random.default_rng(1)
  for _ in range(4):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    du, d_state = d_update(g, d_state, params)
    iu, i_state = i_update(g, i_state, params)
    # Injected hyperparameters are float32 arrays where the direct ones are
    # Python floats, e.g. 1 - b2 is then rounded in float32: a few ulps.
    chex.assert_trees_all_close(iu, du, rtol=1e-5, atol=1e-8)
  assert jax.tree.structure(d_state) == jax.tree.structure(i_state.inner_state)
