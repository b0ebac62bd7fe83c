"""optstab's optimizers on 8 simulated devices (a subprocess, so that the
device count does not leak into the other tests)."""

import os
import pathlib
import subprocess
import sys

WORKER = pathlib.Path(__file__).with_name("_sharding_optimizers_worker.py")
NAMES = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam")


def test_sharded_runs_equal_single_device_and_keep_shardings():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
  proc = subprocess.run(
      [sys.executable, str(WORKER)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output
  lines = proc.stdout.splitlines()
  for name in NAMES:
    assert any(line.startswith(f"OK {name} ") for line in lines), output
  # Momentum-like optimizers keep one moment per parameter leaf, Adam-like two;
  # the Explicit-mesh (sharding-in-types) check ran.
  assert "OK momentum moments=5" in lines and "OK adam moments=10" in lines, output
  assert "OK explicit sharding types" in lines, output
  assert lines[-1] == "ALL OK", output
