"""Overhead of the spike guard on a whole training step: the Transformer demo's step with and without it.

``benchmarks/spike_guard.py`` times the optimizer update alone, where the
guard's selects and its extra norm pass are most of the work. A training step
adds the forward and backward pass, which dilute them. This benchmark times the
Transformer demo's own compiled step (``optstab.transformer.train``: forward,
backward, Adam, the state donated) at the quick preset's shape and at wider
ones, with ``TrainSetup(skip_spikes=False)`` and ``True`` side by side in one
process, interleaved round-robin so machine load hits both alike, one step at a
time (``block_until_ready``). It reports the medians over ``--repeats`` steps,
the median of per-round ratios (which cancels slow load drifts) and the paired
CPU-time ratio (``time.process_time``), steadier on a shared machine.

Usage:
  JAX_PLATFORMS=cpu python benchmarks/spike_guard_train_step.py
  JAX_PLATFORMS=cpu python benchmarks/spike_guard_train_step.py --widths 64 --repeats 20   # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from optstab import runner
from optstab.transformer import train
from optstab.transformer.model import TransformerConfig, param_count


def _runner(setup: train.TrainSetup, tokens: np.ndarray):
  """A closure timing one compiled, donated training step of ``setup``; ``(wall, cpu)`` seconds."""
  graphdef, state = train.init_state(setup, 0)
  mesh = runner.data_mesh()
  step = train.make_train_step(setup, graphdef, mesh)
  box = {"state": runner.replicate(state, mesh)}
  batch = runner.shard_batch(mesh, tokens)
  rate = np.float32(1e-3)

  def run() -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    box["state"], metrics = step(box["state"], batch, rate)
    jax.block_until_ready((box["state"], metrics))
    return time.perf_counter() - t0, time.process_time() - c0

  return run, param_count(setup.model)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", type=int, nargs="+", default=[64, 256],
                      help="model widths (6 layers, 4 heads, seq 32; 64 is the quick preset's)")
  parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
  parser.add_argument("--repeats", type=int, default=50, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
  args = parser.parse_args(argv)
  if min(args.widths) < 4 or args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
    parser.error("need --widths >= 4, --batch-size >= 1, --repeats >= 1, --warmup >= 0")

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 97, size=(args.batch_size, 33)).astype(np.int32)
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); jax {jax.__version__}; "
        f"{args.repeats} steps per variant, batch {args.batch_size}, seq 32, median")
  print()
  print("| width | parameters | step ms | guarded step ms | ratio | paired ratio (median) | "
        "paired CPU-time ratio |")
  print("|---|---|---|---|---|---|---|")
  for width in args.widths:
    model = TransformerConfig(vocab_size=97, seq_len=32, depth=6, width=width, num_heads=4)
    plain, n = _runner(train.TrainSetup(model=model, batch_size=args.batch_size), tokens)
    guarded, _ = _runner(train.TrainSetup(model=model, batch_size=args.batch_size,
                                          skip_spikes=True), tokens)
    for _ in range(args.warmup + 1):  # the first call compiles
      plain(), guarded()
    times = {"plain": [], "guarded": []}
    for _ in range(args.repeats):
      times["plain"].append(plain())
      times["guarded"].append(guarded())
    base, ours = [w for w, _ in times["plain"]], [w for w, _ in times["guarded"]]
    paired = statistics.median(o / b for o, b in zip(ours, base))
    cpu = statistics.median(o / b for (_, o), (_, b) in zip(times["guarded"], times["plain"]))
    print(f"| {width} | {n:,} | {statistics.median(base) * 1e3:.2f} | "
          f"{statistics.median(ours) * 1e3:.2f} | "
          f"{statistics.median(ours) / statistics.median(base):.3f} | {paired:.3f} | {cpu:.3f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
