"""percentile_clip and record_grad_norm on 8 simulated devices equal one device.

The global norm of sharded gradients must be the norm of the whole gradient
(XLA inserts the cross-device sum when computing with jnp on sharded arrays),
not of one shard. Runs tests/_sharding_clipping_worker.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import pathlib

from _eight_devices import run_on_eight_devices

WORKER = pathlib.Path(__file__).with_name("_sharding_clipping_worker.py")
NOISE_MARGIN = 10.0  # 8 devices may reorder more of the sum than one reversal


def test_eight_devices_equal_one_device():
  report = run_on_eight_devices(WORKER)
  # The norm of n float32 squares, in any summation order, is within about
  # n * 2**-24 (relative) of the exact one: the worst-case bound of a float32
  # sum, halved by the square root, plus the squares' and the root's roundings.
  norm_rtol = report["num_squares"] * 2.0**-24
  assert report["max_norm_rel_err_single"] < norm_rtol
  assert report["num_clipped_single"] > 0
  noise = report["noise"]  # this CPU's reduction-order noise (see the worker)
  assert noise["clipped_equal"], noise  # the spikes are far from the thresholds
  for mesh in ("explicit", "auto"):  # both jax.sharding.AxisType meshes
    r = report[mesh]
    assert r["devices_w"] == 8, mesh
    assert r["sharding_preserved"], (mesh, r)  # updates and params stay split over "data"
    assert r["max_norm_rel_err"] < norm_rtol, (mesh, r)  # the global norm, not one shard's
    assert r["recorded_rel_diff"] < norm_rtol, (mesh, r)
    assert r["same_unset_thresholds"] and r["clipped_equal"], (mesh, r)
    assert r["num_clipped"] == report["num_clipped_single"], (mesh, r)
    for what in ("max_threshold_rel_diff", "max_param_diff"):
      # A one-shard norm would be off by ~sqrt(8) and fail these by far.
      assert r[what] <= NOISE_MARGIN * max(noise[what], 2.0**-20), (mesh, what, r, noise)
