"""optstab's optimizers inside the optax / flax machinery: dtypes, pytrees,
chain, inject_hyperparams, MultiSteps, apply_if_finite, nnx.Optimizer,
recompilation, counter overflow and argument validation."""

import doctest
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optstab
import optstab.optimizers

NAMES = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam")


def sched(step):
  return 0.02 * (1.0 + 0.5 * jnp.sin(0.7 * step))


def make(name, lr=sched, **kw):
  return getattr(optstab, name)(lr, **kw)


def mixed_params():
  return {
      "dense": {"w": jnp.full((3, 2), 0.5, jnp.float32), "b": jnp.zeros((2,), jnp.bfloat16)},
      "layers": [jnp.ones((4,), jnp.bfloat16), jnp.asarray(2.0, jnp.float32)],
  }


def grads_like(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      treedef,
      [jnp.asarray(rng.normal(size=x.shape) * 10.0 ** rng.uniform(-3, 1), x.dtype) for x in leaves],
  )


# ----------------------------------------------------------------------------
# Dtypes and nested pytrees.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_updates_keep_each_parameter_dtype_and_state_precision(name):
  params = mixed_params()
  tx = make(name, momentum=0.5) if name == "rmsprop" else make(name)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i in range(3):
    updates, state = step(grads_like(params, i), state, params)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes(updates, params)
  # State: int32 counters; moments in the parameter's dtype (documented).
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    key = jax.tree_util.keystr(path)
    if key.endswith(".count"):
      assert leaf.dtype == jnp.int32 and leaf.shape == () and int(leaf) == 3, key
  for field in ("trace", "mu", "nu", "mom"):
    for moment in optax.tree.get_all_with_path(state, field):
      chex.assert_trees_all_equal_dtypes(moment[1], params)


@pytest.mark.parametrize(
    "name, kw, field",
    [("adam", {"mu_dtype": jnp.float32}, "mu"), ("nadam", {"mu_dtype": "float32"}, "mu"),
     ("momentum", {"accumulator_dtype": jnp.float32}, "trace"),
     ("rmsprop", {"momentum": 0.9, "accumulator_dtype": jnp.float32}, "mom")],
)
def test_moment_dtype_option(name, kw, field):
  params = mixed_params()
  tx = make(name, **kw)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads_like(params, 0), state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  moment = optax.tree.get(state, field)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(moment))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_tracks_float32(name):
  p32 = {"a": jnp.linspace(-1.0, 1.0, 8)}
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  runs = []
  for params in (p32, p16):
    tx = make(name)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(5):
      g = jax.tree.map(lambda p: (p * (i + 1.0) + 0.3).astype(p.dtype), params)
      u, state = step(g, state, params)
      params = optax.apply_updates(params, u)
    runs.append(np.asarray(params["a"], np.float32))
  np.testing.assert_allclose(runs[1], runs[0], rtol=0, atol=0.05)


def test_rmsprop_without_momentum_stores_no_accumulator():
  state = optstab.rmsprop(0.1).init(jnp.zeros(3))
  assert state.mom is None and float(state.nu[0]) == 1.0
  state = optstab.rmsprop(0.1, momentum=0.5).init(jnp.zeros(3))
  assert state.mom.shape == (3,)


# ----------------------------------------------------------------------------
# optax wrappers and combinators.
# ----------------------------------------------------------------------------


def _run(tx, grads_seq, params):
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for g in grads_seq:
    u, state = step(g, state, params)
    out.append(u)
  return out, state


def _assert_seq_close(a, b, rtol=1e-6):
  for x, y in zip(a, b):
    chex.assert_trees_all_close(x, y, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_inside_chain(name):
  params = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
  grads = [grads_like(params, i) for i in range(4)]
  chained, _ = _run(optax.chain(optax.clip_by_global_norm(0.5), make(name)), grads, params)
  clip = optax.clip_by_global_norm(0.5)
  clipped = [clip.update(g, clip.init(params))[0] for g in grads]
  plain, _ = _run(make(name), clipped, params)
  _assert_seq_close(chained, plain)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_equals_direct(name):
  hp = {
      "sgd": {}, "momentum": {"momentum": 0.8}, "nesterov": {"momentum": 0.8},
      "rmsprop": {"decay": 0.8, "momentum": 0.0, "eps": 1e-6},
      "adam": {"b1": 0.8, "b2": 0.99, "eps": 1e-6}, "nadam": {"b1": 0.8, "b2": 0.99, "eps": 1e-6},
  }[name]
  params = {"w": jnp.zeros((2, 3), jnp.float32), "v": jnp.zeros(4, jnp.bfloat16)}
  grads = [grads_like(params, i) for i in range(5)]
  injected_tx = optax.inject_hyperparams(getattr(optstab, name))(learning_rate=sched, **hp)
  injected, state = _run(injected_tx, grads, params)
  # Array hyperparameters change no state dtype (optax.trace alone would turn a
  # bf16 accumulator into f32).
  chex.assert_trees_all_equal_dtypes(state.inner_state, injected_tx.init(params).inner_state)
  direct, _ = _run(make(name, **hp), grads, params)
  for x, y in zip(injected, direct):
    chex.assert_trees_all_equal_dtypes(x, params)  # array hyperparameters do not promote bf16
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a.astype(jnp.float32), x),
        jax.tree.map(lambda a: a.astype(jnp.float32), y), rtol=4e-2, atol=1e-6)  # a few bf16 ulps
    chex.assert_trees_all_close(x["w"], y["w"], rtol=1e-5, atol=1e-9)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(sched(4)), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_with_bfloat16_only_params(name):
  """inject_hyperparams casts hyperparameters to bf16 here: accepted when in
  range, and a clear error when rounding pushed one out (0.999 -> 1.0)."""
  params = {"a": jnp.ones((2, 2), jnp.bfloat16)}
  inject = optax.inject_hyperparams(getattr(optstab, name))
  if name in ("adam", "nadam"):
    with pytest.raises(ValueError, match=r"^b2 must be .*\[0, 1\).*bfloat16 scalar.*hyperparam_dtype"):
      inject(learning_rate=0.1).init(params)
    tx = optax.inject_hyperparams(getattr(optstab, name), hyperparam_dtype=jnp.float32)(0.1)
  else:
    tx = inject(learning_rate=0.1)
    assert tx.init(params).hyperparams["learning_rate"].dtype == jnp.bfloat16
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads_like(params, 0), state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  with pytest.raises(ValueError, match=r"^learning_rate must be .*; got Array\(-0\.1"):
    inject(learning_rate=-0.1).init(params)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_averages_then_applies(name):
  params = jnp.zeros(5)
  grads = [grads_like(params, i) for i in range(6)]
  multi, _ = _run(optax.MultiSteps(make(name), every_k_schedule=3), grads, params)
  means = [(grads[i] + grads[i + 1] + grads[i + 2]) / 3.0 for i in (0, 3)]
  plain, _ = _run(make(name), means, params)
  for i, u in enumerate(multi):
    if i % 3 != 2:
      np.testing.assert_array_equal(u, 0.0)
    else:
      np.testing.assert_allclose(u, plain[i // 3], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_nonfinite_step(name):
  params = jnp.zeros(4)
  grads = [grads_like(params, i) for i in range(5)]
  bad = grads[:2] + [jnp.array([1.0, jnp.nan, 0.0, jnp.inf])] + grads[2:]
  guarded, state = _run(optax.apply_if_finite(make(name), max_consecutive_errors=3), bad, params)
  plain, _ = _run(make(name), grads, params)
  np.testing.assert_array_equal(guarded[2], 0.0)
  _assert_seq_close(guarded[:2] + guarded[3:], plain)
  assert int(state.total_notfinite) == 1


@pytest.mark.parametrize("name", ["momentum", "rmsprop", "nadam"])
def test_flax_nnx_optimizer(name):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 3)), jnp.float32)
  y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3

  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)

  tx = make(name, lr=0.05)

  # The plain functional optax loop, on an identical model.
  graphdef, params = nnx.split(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), nnx.Param)

  def pure_loss(params):
    return loss_fn(nnx.merge(graphdef, params))

  state = tx.init(params)
  for _ in range(40):
    updates, state = tx.update(jax.grad(pure_loss)(params), state, params)
    params = optax.apply_updates(params, updates)

  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(train_step(model, optimizer))
  for _ in range(39):
    last = float(train_step(model, optimizer))
  assert last < 0.2 * first
  chex.assert_trees_all_close(nnx.state(model, nnx.Param), params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("injected", [False, True], ids=["direct", "injected"])
@pytest.mark.parametrize("name", NAMES)
def test_no_recompilation_across_steps(name, injected):
  params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2, jnp.bfloat16)}
  # Injected: array hyperparameters must not change bf16 state dtypes.
  tx = optax.inject_hyperparams(getattr(optstab, name))(sched) if injected else make(name)
  chex.clear_trace_counter()  # the counter is keyed by code, shared across parameters

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(g, state, params):
    return tx.update(g, state, params)

  state = tx.init(params)
  for i in range(4):
    updates, state = step(grads_like(params, i), state, params)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", ["rmsprop", "adam", "nadam"])
def test_step_counter_saturates_instead_of_overflowing(name):
  big = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
  tx = make(name, lr=0.1)
  state = tx.init(jnp.zeros(3))
  state = jax.tree.map(lambda x: big if (x.dtype == jnp.int32 and x.shape == ()) else x, state)
  updates, state = jax.jit(tx.update)(jnp.array([1.0, -2.0, 3.0]), state)
  counts = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
  assert counts and all(int(c) == np.iinfo(np.int32).max for c in counts)
  assert np.all(np.isfinite(updates)) and np.all(np.sign(updates) == [-1.0, 1.0, -1.0])


# ----------------------------------------------------------------------------
# Bad input: ValueError at construction naming the argument, value and range.
# ----------------------------------------------------------------------------

_UNIT = re.escape("[0, 1)")
_NONNEG = re.escape("[0, inf)")
BAD = [
    (name, "learning_rate", value, _NONNEG)
    for name in NAMES
    for value in (-0.1, math.nan, math.inf, -math.inf)
] + [
    (name, arg, value, _UNIT)
    for name, arg in (("momentum", "momentum"), ("nesterov", "momentum"), ("rmsprop", "momentum"),
                      ("rmsprop", "decay"), ("adam", "b1"), ("adam", "b2"), ("nadam", "b1"),
                      ("nadam", "b2"))
    for value in (-0.1, 1.0, 1.5, math.nan)
] + [
    (name, "eps", value, _NONNEG)
    for name in ("rmsprop", "adam", "nadam")
    for value in (-1e-8, math.nan, math.inf)
] + [
    ("scale_by_faq_adam", "b2", 1.0, _UNIT),
    ("scale_by_faq_nadam", "eps", -1.0, _NONNEG),
]


@pytest.mark.parametrize("name, arg, value, allowed", BAD)
def test_bad_input_raises_value_error(name, arg, value, allowed):
  kwargs = {arg: value}
  if name.startswith("scale_by"):
    factory = getattr(optstab, name)
  else:
    factory = lambda **kw: getattr(optstab, name)(**{"learning_rate": 0.1, **kw})
  pattern = rf"^{re.escape(arg)} must be .*{allowed}.*; got {re.escape(repr(value))}\.$"
  with pytest.raises(ValueError, match=pattern):
    factory(**kwargs)


def test_boundary_values_are_accepted():
  optstab.sgd(0.0)
  optstab.momentum(0.0, momentum=0.0)
  optstab.rmsprop(0.1, decay=0.0, momentum=0.0, eps=0.0)
  optstab.adam(0.1, b1=0.0, b2=0.0, eps=0.0)
  optstab.nadam(jnp.asarray(0.1), b1=np.float32(0.5))
  with pytest.raises(ValueError, match="learning_rate"):
    optstab.adam("0.1")
  with pytest.raises(ValueError, match="momentum"):
    optstab.momentum(0.1, momentum=True)


def test_docstring_examples():
  result = doctest.testmod(optstab.optimizers, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted >= 30 and result.failed == 0, result
