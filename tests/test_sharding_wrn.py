"""Data parallelism: the 8-device train step equals the single-device one."""

import json
import os
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(__file__), "_sharding_wrn_worker.py")


def test_eight_device_data_parallel_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["batch_devices_8"] == 8  # the batch really was split over 8 devices
  assert out["param_specs_8"] in (["P()"], ["PartitionSpec()"])  # params stay replicated
  # Same math up to the order of the cross-device reductions (float32).
  assert out["metric_max_abs_diff"] < 1e-4, out
  assert out["state_max_abs_diff"] < 1e-4, out
