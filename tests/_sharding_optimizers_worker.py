"""Run by tests/test_sharding_optimizers.py in a subprocess with 8 CPU devices.

Shards parameters and gradients over a 4x2 mesh (some leaves split along one or
two axes, some replicated), runs every optstab optimizer a few jitted steps
(state fed back, no recompilation after the first step) and checks that (1) the
results equal the single-device run and (2) updates, parameters and optimizer
moments keep each parameter's sharding. Prints one
``OK <name>`` line per optimizer and ``ALL OK`` at the end; any failure raises.
"""

import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optstab

STEPS = 3
# Elementwise maths: sharded and single-device runs compute each element with
# the same operations, but XLA may compile them differently per shard shape
# (vector width, FMA contraction), each op then rounding differently by up to
# one float32 ulp. Adam's step has about 16 rounded ops per element, so per
# step and op one ulp (2**-24 relative) bounds it; a bfloat16 leaf rounds the
# float32 result once more, so a one-ulp difference can flip that rounding:
# one bfloat16 ulp (2**-7 relative at most).
FLOAT32_RTOL = 16 * STEPS * 2.0**-24
BFLOAT16_RTOL = 2.0**-7
SPECS = {
    "w": ((8, 6), jnp.float32, P("data", "model")),
    "emb": ((16, 4), jnp.float32, P("data", None)),
    "b": ((6,), jnp.float32, P("model")),
    "scale": ((), jnp.float32, P()),
    "half": ((4, 8), jnp.bfloat16, P(None, "model")),
}


def sched(step):
  return 0.05 / (1.0 + 0.3 * step)


OPTIMIZERS = {
    "sgd": lambda: optstab.sgd(sched),
    "momentum": lambda: optstab.momentum(sched, 0.9),
    "nesterov": lambda: optstab.nesterov(sched, 0.9),
    "rmsprop": lambda: optstab.rmsprop(sched, decay=0.9, momentum=0.5, eps=1e-6),
    "adam": lambda: optstab.adam(sched, eps=1e-6),
    "nadam": lambda: optstab.nadam(sched, eps=1e-6),
}


def host_tree(seed):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=shape).astype(np.float32).astype(dtype) for k, (shape, dtype, _) in SPECS.items()}


def run_all(params, grads_seq, device_put, scalar_sharding):
  """Every optimizer: eager init, then STEPS calls of one jitted step that
  serves all six (state fed back each time).

  Moments created by ``init`` already have their parameter's sharding. Scalar
  step counters start on the default device (as with optax's own
  transformations), so they are placed with ``scalar_sharding`` (replicated),
  as ``jax.jit(tx.init, out_shardings=...)`` would. The step is then traced
  once: the shardings it returns are the ones it takes.
  """
  txs = {name: make() for name, make in OPTIMIZERS.items()}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step_all(params, states, grads):
    out = {}
    for name, tx in txs.items():
      updates, state = tx.update(grads, states[name], params[name])
      out[name] = (optax.apply_updates(params[name], updates), state, updates)
    return out

  chex.clear_trace_counter()
  params = device_put(params)
  per_opt = {name: params for name in txs}
  states = {name: tx.init(params) for name, tx in txs.items()}
  init_states = states
  states = jax.tree.map(
      lambda x: jax.device_put(x, scalar_sharding) if x.ndim == 0 else x, states)
  for grads in grads_seq:
    out = step_all(per_opt, states, device_put(grads))
    per_opt = {name: out[name][0] for name in txs}
    states = {name: out[name][1] for name in txs}
  return out, init_states


def moments(state):
  """(field, {leaf: array}) for every per-parameter moment in an optimizer state."""
  found = []
  for field in ("trace", "mu", "nu", "mom"):
    for _, tree in optax.tree.get_all_with_path(state, field):
      if tree is not None:
        found.append((field, tree))
  return found


def check_explicit_sharding_types():
  """Sharding in types (Explicit mesh axes), as optax's own sharding test does:
  init eager == init jitted, and the state types survive a jitted update;
  updates have the parameters' types."""
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  txs = {name: make() for name, make in OPTIMIZERS.items()}
  typeof = lambda tree: jax.tree.map(jax.typeof, tree)
  with jax.set_mesh(mesh):
    params = {
        k: jax.device_put(v, NamedSharding(mesh, SPECS[k][2])) for k, v in host_tree(7).items()
    }
    init_all = lambda p: {n: tx.init(p) for n, tx in txs.items()}
    update_all = lambda g, s, p: {n: tx.update(g, s[n], p) for n, tx in txs.items()}
    s0 = init_all(params)
    s1 = jax.jit(init_all)(params)
    out = jax.jit(update_all)(params, s0, params)
    for name in txs:
      assert typeof(s0[name]) == typeof(s1[name]), name
      updates, state = out[name]
      assert typeof(state) == typeof(s0[name]), (name, typeof(state), typeof(s0[name]))
      assert typeof(updates) == typeof(params), (name, typeof(updates))
      for field, tree in moments(s0[name]):
        for k in SPECS:
          assert jax.typeof(tree[k]).sharding.spec == jax.typeof(params[k]).sharding.spec, (
              name, field, k)
  print("OK explicit sharding types", flush=True)


def main():
  assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")
  devices = jax.devices()
  assert len(devices) == 8 and devices[0].platform == "cpu", devices
  mesh = Mesh(np.asarray(devices).reshape(4, 2), ("data", "model"))
  shardings = {k: NamedSharding(mesh, spec) for k, (_, _, spec) in SPECS.items()}

  def put_sharded(tree):
    return {k: jax.device_put(v, shardings[k]) for k, v in tree.items()}

  def put_single(tree):
    return {k: jax.device_put(v, devices[0]) for k, v in tree.items()}

  params0 = host_tree(0)
  grads_seq = [host_tree(i + 1) for i in range(STEPS)]
  sharded, sharded_init = run_all(params0, grads_seq, put_sharded, NamedSharding(mesh, P()))
  single, _ = run_all(params0, grads_seq, put_single, jax.sharding.SingleDeviceSharding(devices[0]))
  for name in OPTIMIZERS:
    p_sh, s_sh, u_sh = sharded[name]
    p_one, _, u_one = single[name]
    for k in SPECS:
      # (1) Same numbers as one device, up to the rounding bound above.
      rtol = BFLOAT16_RTOL if SPECS[k][1] == jnp.bfloat16 else FLOAT32_RTOL
      np.testing.assert_allclose(
          np.asarray(p_sh[k], np.float32), np.asarray(p_one[k], np.float32),
          rtol=rtol, atol=0, err_msg=f"{name}/{k}")
      np.testing.assert_allclose(
          np.asarray(u_sh[k], np.float32), np.asarray(u_one[k], np.float32),
          rtol=rtol, atol=1e-12, err_msg=f"{name}/{k}")
      # (2) Shardings preserved.
      ndim = len(SPECS[k][0])
      for what, arr in (("params", p_sh[k]), ("updates", u_sh[k])):
        assert arr.sharding.is_equivalent_to(shardings[k], ndim), (name, what, k, arr.sharding)
        assert arr.dtype == SPECS[k][1], (name, what, k, arr.dtype)
    # Per-parameter moments follow their parameter, from init and after steps.
    count = 0
    for when, state in (("init", sharded_init[name]), ("step", s_sh)):
      for field, tree in moments(state):
        for k in SPECS:
          assert tree[k].sharding.is_equivalent_to(shardings[k], len(SPECS[k][0])), (
              name, when, field, k, tree[k].sharding)
          count += when == "step"
    moments_checked = count
    print(f"OK {name} moments={moments_checked}", flush=True)
  check_explicit_sharding_types()
  print("ALL OK", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
