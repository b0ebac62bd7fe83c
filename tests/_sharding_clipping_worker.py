"""Subprocess worker for tests/test_sharding_clipping.py (needs 8 host devices).

Runs the same training steps with chain(record_grad_norm, percentile_clip,
adam) twice, once with the parameters and gradients sharded over 8 devices and
once on a single device, and prints a JSON report for the test to check.
Run with XLA_FLAGS=--xla_force_host_platform_device_count=8.

The report also holds this CPU's float32 reduction-order noise: the single-
device run once more with the rows of ``w`` reversed in the parameters and
every gradient (the same math: Adam is elementwise and the norm a sum of all
squares; only the order of the norm's sum changes), compared with the plain
single-device run. Sharding changes that order too, so the test bounds the
8-device differences by this noise (with a margin).
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
  explicit = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  auto = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  specs = {"w": P("data", None), "b": P("data")}
  num_steps = 40
  rng = np.random.default_rng(0)
  scale = np.exp(rng.normal(0.0, 0.5, size=num_steps)).astype(np.float32)
  scale[[12, 25, 33]] *= 30.0  # spikes
  grads = [{"w": (s * rng.normal(size=(64, 16))).astype(np.float32),
            "b": (s * rng.normal(size=(16,))).astype(np.float32)} for s in scale]
  params0 = {"w": rng.normal(size=(64, 16)).astype(np.float32), "b": np.zeros(16, np.float32)}
  opt = optax.chain(optstab.record_grad_norm(capacity=64),
                    optstab.percentile_clip(90.0, window_size=16, min_history=4),
                    optstab.adam(1e-2))

  @jax.jit
  def step(params, state, g):
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, updates

  def run(put):
    params = put(params0)
    state = opt.init(params)
    thresholds, clipped, norms = [], [], []
    for g in grads:
      params, state, updates = step(params, state, put(g))
      thresholds.append(optax.tree.get(state, "threshold"))
      clipped.append(optax.tree.get(state, "clipped"))
      norms.append(optax.tree.get(state, "grad_norm"))
    return params, state, updates, np.asarray(thresholds), np.asarray(clipped), np.asarray(norms)

  def sharded_on(mesh):
    def put(tree):
      return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    return put

  def put_single(tree):
    return {k: jax.device_put(v, jax.devices()[0]) for k, v in tree.items()}

  def put_single_reversed(tree):  # the rows of w reversed: another order for the norm's sum
    return put_single({**tree, "w": np.ascontiguousarray(np.asarray(tree["w"])[::-1])})

  p1, s1, u1, t1, c1, n1 = run(put_single)
  pr, _, _, tr, cr, nr = run(put_single_reversed)
  pr = {**pr, "w": np.asarray(pr["w"])[::-1]}
  finite_t = np.isfinite(t1) & (t1 < optstab.clipping.NO_THRESHOLD)
  want_norms = np.array([np.sqrt(np.sum(g["w"].astype(np.float64) ** 2)
                                 + np.sum(g["b"].astype(np.float64) ** 2)) for g in grads])
  report = {"num_clipped_single": int(optax.tree.get(s1, "num_clipped")),
            "max_norm_rel_err_single": float(np.max(np.abs(n1 - want_norms) / want_norms)),
            "num_squares": int(sum(np.size(v) for v in grads[0].values())),
            "noise": {
                "max_param_diff": max(float(np.max(np.abs(np.asarray(pr[k]) - np.asarray(p1[k]))))
                                      for k in p1),
                "max_threshold_rel_diff": float(np.max(np.abs(tr[finite_t] - t1[finite_t])
                                                       / t1[finite_t])),
                "max_norm_rel_diff": float(np.max(np.abs(nr - n1) / n1)),
                "clipped_equal": bool(np.array_equal(cr, c1)),
            }}
  for name, mesh in (("explicit", explicit), ("auto", auto)):
    p8, s8, u8, t8, c8, n8 = run(sharded_on(mesh))
    report[name] = {
        "devices_w": len(p8["w"].sharding.device_set),
        # Sharding preserved: updates and parameters stay split over "data".
        "sharding_preserved": all(
            x[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), x[k].ndim)
            for x in (u8, p8) for k in specs),
        "update_spec_w": str(u8["w"].sharding.spec),
        "max_param_diff": max(float(np.max(np.abs(np.asarray(p8[k]) - np.asarray(p1[k]))))
                              for k in p1),
        "max_threshold_rel_diff": float(np.max(np.abs(t8[finite_t] - t1[finite_t])
                                               / t1[finite_t])),
        "same_unset_thresholds": bool(np.array_equal(t8 == optstab.clipping.NO_THRESHOLD,
                                                     t1 == optstab.clipping.NO_THRESHOLD)),
        "clipped_equal": bool(np.array_equal(c8, c1)),
        "num_clipped": int(optax.tree.get(s8, "num_clipped")),
        "max_norm_rel_err": float(np.max(np.abs(n8 - want_norms) / want_norms)),
        "recorded_rel_diff": float(np.max(np.abs(optstab.recorded_grad_norms(s8) - want_norms)
                                          / want_norms)),
    }
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
