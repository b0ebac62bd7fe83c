"""Data parallelism: the 8-device Transformer train step equals the single-device one."""

import json
import os
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "_sharding_transformer_worker.py")

# A float32 sum of n terms in another order differs by about log2(n) ulps (XLA reduces in
# trees): the loss is a mean of 256 values (8 levels), the gradient norm a sum of 27k squares
# of gradients that are themselves batch reductions (~23 levels). 64 ulps is a ~3x margin.
RELATIVE_TOLERANCE = 64 * float(np.finfo(np.float32).eps)


def test_eight_device_data_parallel_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["batch_devices_8"] == 8  # the batch really was split over 8 devices
  assert out["param_specs_8"] in (["P()"], ["PartitionSpec()"])  # params stay replicated
  for one, eight in zip(out["metrics_1"], out["metrics_8"]):
    for k in ("loss", "grad_norm"):
      assert abs(one[k] - eight[k]) <= RELATIVE_TOLERANCE * abs(one[k]), (k, one, eight)
  # Adam divides by sqrt(v): for a gradient entry near zero, reduction-order noise can flip
  # the sign of its (full-size, ~lr) update. So parameters agree to float32 noise except a
  # few such entries, and no entry can differ by more than two opposite updates per step.
  assert out["param_max_abs_diff"] <= 2 * out["learning_rate"] * out["steps"], out
  assert out["param_diffs_above_1e-6"] <= 0.01 * out["num_params"], out
