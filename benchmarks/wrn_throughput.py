"""WideResNet training throughput (images/s) with telemetry and clipping on vs off.

The train step of ``optstab.wrn.train`` (forward, backward, Nesterov momentum,
L2 penalty, on-device loss and gradient norm) on the quick preset's model
(WRN-10-1, 16x16 one-channel digits, standard strides (1,1),(1,1),(2,2)) or any
``--depth/--width/--image-size/--batch-size``, in four variants:

  off         Nesterov momentum only
  telemetry   + ``optstab.record_grad_norm`` (on-device ring buffer of norms)
  clipping    + ``optstab.percentile_clip(90)`` (window 100)
  both        + both

All four are compiled first, then timed in one process, interleaved
round-robin (so machine load hits them alike): each run times ``--steps``
consecutive steps (asynchronous dispatch, one ``block_until_ready`` at the
end, as the training loop runs them) on a fixed device-resident batch, and the
table reports the median and best of ``--repeats`` runs in images/s.

Usage:
  JAX_PLATFORMS=cpu python benchmarks/wrn_throughput.py
  JAX_PLATFORMS=cpu python benchmarks/wrn_throughput.py --steps 20 --repeats 7 --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from optstab.wrn import train
from optstab.wrn.model import WideResNetConfig

VARIANTS = {
    "off": dict(telemetry=False, clip_percentile=None),
    "telemetry": dict(telemetry=True, clip_percentile=None),
    "clipping": dict(telemetry=False, clip_percentile=90.0),
    "both": dict(telemetry=True, clip_percentile=90.0),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=10)
  parser.add_argument("--width", type=int, default=1)
  parser.add_argument("--image-size", type=int, default=16)
  parser.add_argument("--in-channels", type=int, default=1)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()

  strides = ((1, 1), (1, 1), (2, 2)) if args.image_size < 32 else ((1, 1), (2, 2), (2, 2))
  model = WideResNetConfig(depth=args.depth, width=args.width, image_size=args.image_size,
                           in_channels=args.in_channels, group_strides=strides)
  mesh = train.data_mesh()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(args.batch_size, args.image_size, args.image_size,
                                        args.in_channels)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 10, args.batch_size).astype(np.int32))
  runners = {}
  for name, knobs in VARIANTS.items():
    setup = train.TrainSetup(model, batch_size=args.batch_size, compute_dtype=args.dtype,
                             clip_window=100, **knobs)
    graphdef, state = train.init_state(setup, 0)
    step = train.make_train_step(setup, graphdef, mesh)
    for _ in range(2):  # compile and warm up
      state, metrics = step(state, images, labels, np.float32(0.01))
    jax.block_until_ready(metrics)
    runners[name] = [step, state]

  times = {name: [] for name in VARIANTS}
  for _ in range(args.repeats):
    for name, runner in runners.items():
      step, state = runner
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, images, labels, np.float32(0.01))
      jax.block_until_ready((state, metrics))
      times[name].append(time.perf_counter() - start)
      runner[1] = state

  images_per_run = args.steps * args.batch_size
  print(f"WRN-{args.depth}-{args.width}, {args.image_size}x{args.image_size}x{args.in_channels}, "
        f"batch {args.batch_size}, {args.dtype}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}; {args.steps} steps x {args.repeats} runs per variant")
  base = images_per_run / statistics.median(times["off"])
  print("| variant | median images/s | best images/s | vs off (median) |")
  print("|---|---|---|---|")
  for name, ts in times.items():
    med = images_per_run / statistics.median(ts)
    best = images_per_run / min(ts)
    print(f"| {name} | {med:.0f} | {best:.0f} | {med / base:.3f} |")


if __name__ == "__main__":
  main()
