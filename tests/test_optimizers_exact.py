"""optstab's six optimizers against independent float64 NumPy versions of S1."""

import math

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import optstab
from _optimizers_reference import (
    assert_close_to_reference,
    gradient_sequence,
    reference_updates,
)

NUM_STEPS = 110
SHAPES = {"w": (4, 3), "b": (3,), "nested": {"k": (2, 2, 2), "s": ()}}


def lr_schedule(step):
  """Changes at every step (jittable; `step` is the int32 count, from 0)."""
  return 0.05 * (1.0 + 0.5 * jnp.sin(0.7 * step)) / (1.0 + 0.02 * step)


def lr_values(num_steps):
  t = np.arange(num_steps, dtype=np.float64)
  return 0.05 * (1.0 + 0.5 * np.sin(0.7 * t)) / (1.0 + 0.02 * t)


# (optimizer, hyperparameters): eps values where eps matters for the smallest
# gradients, so its placement is exercised; RMSProp with and without momentum.
CASES = (
    ("sgd", {}),
    ("momentum", {"momentum": 0.9}),
    ("nesterov", {"momentum": 0.8}),
    ("rmsprop", {"decay": 0.9, "momentum": 0.5, "eps": 1e-6}),
    ("rmsprop", {}),
    ("adam", {"b1": 0.9, "b2": 0.99, "eps": 1e-4}),
    ("nadam", {"b1": 0.8, "b2": 0.999, "eps": 1e-4}),
)


def _tree_from_flat(flat):
  leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
  out, i = [], 0
  for shape in leaves:
    n = math.prod(shape)
    out.append(flat[i:i + n].reshape(shape))
    i += n
  return jax.tree.unflatten(treedef, out)


def _flat_from_tree(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


SIZE = sum(math.prod(s) for s in jax.tree.leaves(SHAPES, is_leaf=lambda x: isinstance(x, tuple)))


class ExactnessTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_device=True)
  @parameterized.parameters(*CASES)
  def test_matches_float64_reference(self, name, hp):
    grads = gradient_sequence(NUM_STEPS, SIZE, seed=len(name) + len(hp))
    tx = getattr(optstab, name)(lr_schedule, **hp)
    params = _tree_from_flat(np.zeros(SIZE, np.float32))
    state = tx.init(params)
    update = self.variant(tx.update)
    got = []
    for t in range(NUM_STEPS):
      updates, state = update(_tree_from_flat(grads[t]), state, params)
      got.append(_flat_from_tree(updates))
    want = reference_updates(name, grads, lr_values(NUM_STEPS), **hp)
    assert_close_to_reference(np.stack(got), want, rtol=2e-5, what=f"{name} {hp}")


# ----------------------------------------------------------------------------
# Property tests over the hyperparameters (eager, a few steps each).
# ----------------------------------------------------------------------------

_decay = st.floats(0.0, 0.999)
_eps = st.one_of(st.just(0.0), st.floats(1e-10, 1e-2))
_lr = st.floats(1e-4, 1.0)
_SETTINGS = hypothesis.settings(max_examples=5, deadline=None, derandomize=True)
_STEPS = 6


def _run_constant_lr(name, lr, hp, seed):
  grads = gradient_sequence(_STEPS, 5, seed=seed)
  tx = getattr(optstab, name)(lr, **hp)
  params = jnp.zeros(5)
  state = tx.init(params)
  got = []
  for g in grads:
    u, state = tx.update(jnp.asarray(g), state, params)
    got.append(np.asarray(u))
  want = reference_updates(name, grads, np.full(_STEPS, lr), **hp)
  assert_close_to_reference(np.stack(got), want, rtol=5e-5, what=f"{name} lr={lr} {hp}")


@_SETTINGS
@hypothesis.given(lr=_lr, gamma=_decay, seed=st.integers(0, 2**16))
def test_momentum_family_property(lr, gamma, seed):
  for name in ("momentum", "nesterov"):
    _run_constant_lr(name, lr, {"momentum": gamma}, seed)
  _run_constant_lr("sgd", lr, {}, seed)


@_SETTINGS
@hypothesis.given(lr=_lr, rho=_decay, gamma=_decay, eps=_eps, seed=st.integers(0, 2**16))
def test_rmsprop_property(lr, rho, gamma, eps, seed):
  _run_constant_lr("rmsprop", lr, {"decay": rho, "momentum": gamma, "eps": eps}, seed)


@_SETTINGS
@hypothesis.given(lr=_lr, b1=_decay, b2=_decay, eps=_eps, seed=st.integers(0, 2**16))
def test_adam_family_property(lr, b1, b2, eps, seed):
  for name in ("adam", "nadam"):
    _run_constant_lr(name, lr, {"b1": b1, "b2": b2, "eps": eps}, seed)


@_SETTINGS
@hypothesis.given(
    name=st.sampled_from(("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam")),
    lr=_lr,
    seed=st.integers(0, 2**16),
)
def test_update_scales_linearly_with_constant_learning_rate(name, lr, seed):
  """For a constant rate every S1 update is lr times the update at rate 1."""
  grads = gradient_sequence(_STEPS, 5, seed=seed)
  runs = []
  for rate in (lr, 1.0):
    tx = getattr(optstab, name)(rate)
    state = tx.init(jnp.zeros(5))
    us = []
    for g in grads:
      u, state = tx.update(jnp.asarray(g), state)
      us.append(np.asarray(u, np.float64))
    runs.append(np.stack(us))
  np.testing.assert_allclose(runs[0], lr * runs[1], rtol=1e-5, atol=0)
