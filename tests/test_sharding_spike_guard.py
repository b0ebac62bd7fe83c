"""skip_spikes on 8 simulated devices makes the decisions it makes on one device.

Runs tests/_sharding_spike_guard_worker.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (so the device count does
not leak into other tests).
"""

import pathlib

from _eight_devices import run_on_eight_devices

WORKER = pathlib.Path(__file__).with_name("_sharding_spike_guard_worker.py")


def test_eight_devices_equal_one_device():
  report = run_on_eight_devices(WORKER)
  # The spikes, the NaN step and the loss spike; nothing else.
  assert report["skipped_single"] == [20, 33, 34, 41, 45, 50], report
  # A float32 sum of n squares in any order: within n * 2**-24 of the exact norm.
  norm_rtol = report["num_squares"] * 2.0**-24
  for mesh in ("explicit", "auto"):
    r = report[mesh]
    assert r["devices_w"] == 8 and r["sharding_preserved"], (mesh, r)
    assert r["skipped"] == report["skipped_single"], (mesh, r)
    assert r["inner_count_equal"], (mesh, r)
    assert r["max_norm_rel_diff"] < norm_rtol, (mesh, r)  # the global norm, not one shard's
    # Adam's steps are elementwise: only the norm's summation order differs,
    # and it only feeds the decisions (equal above), so the parameters agree to
    # a few float32 roundings of lr-sized steps.
    assert r["max_param_diff"] < 1e-5, (mesh, r)
