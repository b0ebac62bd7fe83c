"""optstab's six optimizers vs their closest optax counterparts: update time.

For each optimizer: the jitted ``tx.update(grads, state, params)`` of optstab and
of its closest optax counterpart, on the same pytree of ``--size`` float32
parameters in ``--leaves`` leaves of mixed shapes (vectors, matrices, conv
kernels), state donated (``donate_argnums``) for both. The pairs run side by
side in one process, interleaved round-robin so machine load hits them alike;
each call is timed alone (``block_until_ready``) and the table reports the
median of ``--repeats`` runs, the ratio optstab / optax, the achieved memory
bandwidth of each update (bytes the update must read and write: the gradient,
each state slot twice, the update) as a fraction of a copy bandwidth measured
in the same run (a jitted ``x + z`` over the same pytree, ``z`` a traced zero),
the optimizer-state slots per parameter (state bytes / parameter bytes), and the
ratio of XLA's own bytes-accessed estimates of the two compiled updates (a
load-independent check that both move the same data).

Usage:
  JAX_PLATFORMS=cpu python benchmarks/optimizers.py                  # ~10M params, 20 repeats
  JAX_PLATFORMS=cpu python benchmarks/optimizers.py --size 100000 --repeats 5   # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab


def schedule(step):
  return 1e-3 * (0.5 + 0.5 * jnp.cos(step / 1000.0))


# (label, optstab optimizer, optax counterpart label, optax counterpart)
PAIRS: list[tuple[str, Callable[[], optax.GradientTransformation], str, Callable[[], optax.GradientTransformation]]] = [
    ("sgd", lambda: optstab.sgd(schedule), "optax.sgd", lambda: optax.sgd(schedule)),
    ("momentum", lambda: optstab.momentum(schedule, 0.9),
     "optax.sgd(momentum=0.9)", lambda: optax.sgd(schedule, momentum=0.9)),
    ("nesterov", lambda: optstab.nesterov(schedule, 0.9),
     "optax.sgd(nesterov)", lambda: optax.sgd(schedule, momentum=0.9, nesterov=True)),
    ("rmsprop", lambda: optstab.rmsprop(schedule),
     "optax.rmsprop(init=1)", lambda: optax.rmsprop(schedule, initial_scale=1.0)),
    ("rmsprop(mom=0.9)", lambda: optstab.rmsprop(schedule, momentum=0.9),
     "optax.rmsprop(init=1,mom)", lambda: optax.rmsprop(schedule, initial_scale=1.0, momentum=0.9)),
    ("adam", lambda: optstab.adam(schedule), "optax.adam", lambda: optax.adam(schedule)),
    ("nadam", lambda: optstab.nadam(schedule), "optax.nadam", lambda: optax.nadam(schedule)),
]


def make_pytree(size: int, leaves: int, seed: int = 0) -> dict:
  """About ``size`` float32 values in ``leaves`` leaves of mixed shapes."""
  rng = np.random.default_rng(seed)
  weights = rng.uniform(0.2, 1.8, size=leaves)
  sizes = np.maximum(1, (weights / weights.sum() * size).astype(int))
  tree = {}
  for i, n in enumerate(sizes):
    kind = i % 4
    if kind == 0:
      shape = (int(n),)
    elif kind == 1:
      shape = (128, max(1, int(n) // 128))
    elif kind == 2:
      shape = (3, 3, 16, max(1, int(n) // 144))
    else:
      shape = (8, 16, max(1, int(n) // 128))
    tree[f"leaf{i:02d}"] = jnp.asarray(rng.normal(size=shape).astype(np.float32) * 1e-2)
  return tree


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def state_slots(state, params) -> float:
  """Optimizer-state bytes per parameter byte (scalar counters excluded)."""
  big = [x for x in jax.tree.leaves(state) if x.size > 1]
  return sum(x.size * x.dtype.itemsize for x in big) / tree_bytes(params)


def xla_bytes_accessed(update, grads, state, params) -> float:
  """XLA's own estimate of the bytes the compiled update reads and writes."""
  cost = update.lower(grads, state, params).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("bytes accessed", float("nan")))


def timed_update(tx: optax.GradientTransformation, params, grads):
  """A closure that runs one jitted update (state donated) and returns seconds,
  the state slots per parameter and XLA's bytes-accessed estimate."""
  update = jax.jit(tx.update, donate_argnums=(1,))
  holder = {"state": jax.jit(tx.init)(params)}
  slots = state_slots(holder["state"], params)
  xla_bytes = xla_bytes_accessed(update, grads, holder["state"], params)

  def run() -> float:
    start = time.perf_counter()
    updates, state = update(grads, holder["state"], params)
    jax.block_until_ready((updates, state))
    elapsed = time.perf_counter() - start
    holder["state"] = state
    return elapsed

  return run, slots, xla_bytes


def timed_copy(tree):
  copy = jax.jit(lambda t, z: jax.tree.map(lambda x: x + z, t))
  zero = jnp.zeros((), jnp.float32)

  def run() -> float:
    start = time.perf_counter()
    jax.block_until_ready(copy(tree, zero))
    return time.perf_counter() - start

  return run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=10_000_000, help="number of float32 parameters")
  parser.add_argument("--leaves", type=int, default=50, help="number of pytree leaves")
  parser.add_argument("--repeats", type=int, default=20, help="timed runs per optimizer (median reported)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed runs per optimizer after compiling")
  args = parser.parse_args(argv)
  if args.size < args.leaves or args.leaves < 1 or args.repeats < 1 or args.warmup < 0:
    parser.error("need --size >= --leaves >= 1, --repeats >= 1, --warmup >= 0")

  params = make_pytree(args.size, args.leaves)
  grads = jax.tree.map(lambda x: x * 0.5 + 1e-3, params)
  nbytes = tree_bytes(params)
  n = sum(x.size for x in jax.tree.leaves(params))

  runners = {"copy": timed_copy(params)}
  slots, xla_bytes = {}, {}
  for label, ours, theirs_label, theirs in PAIRS:
    runners[label], slots[label], xla_bytes[label] = timed_update(ours(), params, grads)
    runners[theirs_label], slots[theirs_label], xla_bytes[theirs_label] = timed_update(
        theirs(), params, grads)

  for _ in range(args.warmup + 1):  # the first call compiles
    for run in runners.values():
      run()
  times = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, run in runners.items():
      times[name].append(run())
  med = {name: statistics.median(ts) for name, ts in times.items()}
  best = {name: min(ts) for name, ts in times.items()}
  copy_bw = 2 * nbytes / med["copy"]

  def bandwidth(label):
    traffic = nbytes * (2 + 2 * slots[label])  # read g, write u, read+write each slot
    return traffic / med[label]

  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}), {len(jax.devices())} device(s); "
        f"jax {jax.__version__}, optax {optax.__version__}")
  print(f"pytree: {n:,} float32 parameters in {len(jax.tree.leaves(params))} leaves "
        f"({nbytes / 1e6:.1f} MB); median of {args.repeats} runs after {args.warmup} warm-up runs")
  print(f"copy bandwidth (jitted x + z over the pytree): {copy_bw / 1e9:.2f} GB/s "
        f"({med['copy'] * 1e3:.2f} ms)")
  print()
  header = (f"| {'optstab':<16} | {'optax counterpart':<25} | {'optstab ms':>10} | {'optax ms':>9} | "
            f"{'ratio':>6} | {'ratio of min':>12} | {'optstab GB/s (%copy)':>20} | "
            f"{'optax GB/s (%copy)':>18} | {'slots optstab':>13} | {'slots optax':>11} | "
            f"{'XLA bytes ratio':>15} |")
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  worst = 0.0
  for label, _, theirs_label, _ in PAIRS:
    ratio = med[label] / med[theirs_label]
    worst = max(worst, ratio)
    ours_bw, theirs_bw = bandwidth(label), bandwidth(theirs_label)
    ours_cell = f"{ours_bw / 1e9:.2f} ({100 * ours_bw / copy_bw:.0f}%)"
    theirs_cell = f"{theirs_bw / 1e9:.2f} ({100 * theirs_bw / copy_bw:.0f}%)"
    print(f"| {label:<16} | {theirs_label:<25} | {med[label] * 1e3:>10.2f} | {med[theirs_label] * 1e3:>9.2f} | "
          f"{ratio:>6.3f} | {best[label] / best[theirs_label]:>12.3f} | {ours_cell:>20} | "
          f"{theirs_cell:>18} | {slots[label]:>13.2f} | {slots[theirs_label]:>11.2f} | "
          f"{xla_bytes[label] / xla_bytes[theirs_label]:>15.4f} |")
  print()
  print(f"worst ratio optstab / optax: {worst:.3f} (target <= 1.05)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
