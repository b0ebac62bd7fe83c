"""Subprocess worker for tests/test_sharding_spike_guard.py (needs 8 host devices).

Runs the same training steps with skip_spikes(adam) twice, once with the
parameters and gradients sharded over 8 devices (explicit and auto meshes) and
once on a single device, and prints a JSON report for the test to check. The
guard's decisions depend on the global gradient norm, so a norm computed per
shard would skip other steps. Run with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optstab


def main():
  assert jax.device_count() == 8, jax.devices()
  specs = {"w": P("data", None), "b": P("data")}
  num_steps = 60
  rng = np.random.default_rng(0)
  scale = np.exp(rng.normal(0.0, 0.3, size=num_steps)).astype(np.float32)
  scale[[20, 33, 34, 50]] *= 40.0  # spikes, two of them in a row
  scale[41] = np.nan
  losses = (2.0 + 0.05 * rng.normal(size=num_steps)).astype(np.float32)
  losses[45] = 9.0  # a loss spike alone
  grads = [{"w": (s * rng.normal(size=(64, 16))).astype(np.float32),
            "b": (s * rng.normal(size=(16,))).astype(np.float32)} for s in scale]
  params0 = {"w": rng.normal(size=(64, 16)).astype(np.float32), "b": np.zeros(16, np.float32)}
  opt = optstab.skip_spikes(optstab.adam(1e-2), window_size=32, min_history=8)

  @jax.jit
  def step(params, state, g, loss):
    updates, state = opt.update(g, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, updates

  def run(put):
    params = put(params0)
    state = opt.init(params)
    skipped, norms = [], []
    for g, loss in zip(grads, losses):
      params, state, updates = step(params, state, put(g), loss)
      skipped.append(bool(state.skipped))
      norms.append(float(state.guard_grad_norm))
    return params, state, updates, np.asarray(skipped), np.asarray(norms)

  def put_single(tree):
    return {k: jax.device_put(v, jax.devices()[0]) for k, v in tree.items()}

  p1, s1, _, k1, n1 = run(put_single)
  finite = np.isfinite(n1)
  report = {"skipped_single": np.flatnonzero(k1).tolist(),
            "num_squares": int(sum(np.size(v) for v in grads[0].values()))}
  for name, axis_type in (("explicit", jax.sharding.AxisType.Explicit),
                          ("auto", jax.sharding.AxisType.Auto)):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))

    def put(tree, mesh=mesh):
      return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

    p8, s8, u8, k8, n8 = run(put)
    report[name] = {
        "devices_w": len(p8["w"].sharding.device_set),
        "sharding_preserved": all(
            x[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), x[k].ndim)
            for x in (u8, p8) for k in specs),
        "skipped": np.flatnonzero(k8).tolist(),
        "max_norm_rel_diff": float(np.max(np.abs(n8[finite] - n1[finite]) / n1[finite])),
        "max_param_diff": max(float(np.max(np.abs(np.asarray(p8[k]) - np.asarray(p1[k]))))
                              for k in p1),
        "inner_count_equal": int(s8.inner_state[0].count) == int(s1.inner_state[0].count),
    }
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
