"""Runs a test worker script on 8 simulated CPU devices, in its own process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def run_on_eight_devices(worker: pathlib.Path, timeout: float = 300) -> dict:
  """Runs ``worker`` with 8 host devices; returns the JSON of its last ``REPORT `` line."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")][-1]
  return json.loads(line[len("REPORT "):])
