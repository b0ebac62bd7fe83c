"""percentile_clip and record_grad_norm on 8 simulated devices equal one device.

The global norm of sharded gradients must be the norm of the whole gradient
(XLA inserts the cross-device sum when computing with jnp on sharded arrays),
not of one shard. Runs tests/_sharding_clipping_worker.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import os
import pathlib
import subprocess
import sys

WORKER = pathlib.Path(__file__).with_name("_sharding_clipping_worker.py")


def test_eight_devices_equal_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")][-1]
  report = json.loads(line[len("REPORT "):])
  assert report["max_norm_rel_err_single"] < 1e-5
  assert report["num_clipped_single"] > 0
  for mesh in ("explicit", "auto"):  # both jax.sharding.AxisType meshes
    r = report[mesh]
    assert r["devices_w"] == 8, mesh
    assert r["sharding_preserved"], (mesh, r)  # updates and params stay split over "data"
    assert r["max_norm_rel_err"] < 1e-5, (mesh, r)  # the global norm, not one shard's
    assert r["recorded_rel_diff"] < 1e-5, (mesh, r)
    assert r["same_inf_thresholds"] and r["clipped_equal"], (mesh, r)
    assert r["num_clipped"] == report["num_clipped_single"], (mesh, r)
    assert r["max_threshold_rel_diff"] < 1e-5, (mesh, r)
    assert r["max_param_diff"] < 1e-5, (mesh, r)
