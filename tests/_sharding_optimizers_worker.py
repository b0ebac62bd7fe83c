"""Run by tests/test_sharding_optimizers.py in a subprocess with 8 CPU devices.

Shards parameters and gradients over a 4x2 mesh (some leaves split along one or
two axes, some replicated), runs every optstab optimizer a few jitted steps and
checks that (1) the results equal the single-device run and (2) updates,
parameters and optimizer moments keep each parameter's sharding. Prints one
``OK <name>`` line per optimizer and ``ALL OK`` at the end; any failure raises.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optstab

STEPS = 3
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


def run_all(params, grads_seq, device_put):
  """Every optimizer, init + STEPS steps, in one jitted program (one compile)."""
  txs = {name: make() for name, make in OPTIMIZERS.items()}

  @jax.jit
  def train(params, grads_seq):
    out = {}
    for name, tx in txs.items():
      p, state = params, tx.init(params)
      for grads in grads_seq:
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
      out[name] = (p, state, updates)
    return out

  return train(device_put(params), [device_put(g) for g in grads_seq])


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
  sharded = run_all(params0, grads_seq, put_sharded)
  single = run_all(params0, grads_seq, put_single)
  for name in OPTIMIZERS:
    p_sh, s_sh, u_sh = sharded[name]
    p_one, _, u_one = single[name]
    for k in SPECS:
      # (1) Same numbers as one device (elementwise maths: equal to the last ulp).
      np.testing.assert_allclose(
          np.asarray(p_sh[k], np.float32), np.asarray(p_one[k], np.float32),
          rtol=1e-6, atol=0, err_msg=f"{name}/{k}")
      np.testing.assert_allclose(
          np.asarray(u_sh[k], np.float32), np.asarray(u_one[k], np.float32),
          rtol=1e-6, atol=1e-12, err_msg=f"{name}/{k}")
      # (2) Shardings preserved.
      ndim = len(SPECS[k][0])
      for what, arr in (("params", p_sh[k]), ("updates", u_sh[k])):
        assert arr.sharding.is_equivalent_to(shardings[k], ndim), (name, what, k, arr.sharding)
        assert arr.dtype == SPECS[k][1], (name, what, k, arr.dtype)
    # Per-parameter moments (trace / mu / nu / mom) follow their parameter.
    moments = 0
    for field in ("trace", "mu", "nu", "mom"):
      for _, tree in optax.tree.get_all_with_path(s_sh, field):
        if tree is None:
          continue
        for k in SPECS:
          assert tree[k].sharding.is_equivalent_to(shardings[k], len(SPECS[k][0])), (
              name, field, k, tree[k].sharding)
          moments += 1
    print(f"OK {name} moments={moments}", flush=True)
  print("ALL OK", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
