"""Overhead of the spike guard: skip_spikes(optimizer) vs the optimizer alone.

On the optimizer benchmark's model (``benchmarks/optimizers.py``: ``--size``
float32 parameters in ``--leaves`` leaves of mixed shapes), each variant is a
jitted ``update + apply_updates`` with parameters and state donated, given
``loss=`` as a training step would. The guarded and unguarded variants of each
optimizer run side by side in one process, interleaved round-robin so machine
load hits them alike, one step at a time (``block_until_ready``); the table
reports medians over ``--repeats`` runs, the ratio of medians, the median of
per-round ratios (which cancels slow load drifts) and the ratio of XLA's
bytes-accessed estimates of the compiled steps (deterministic, but it counts
both branches of the global norm's overflow-safe ``lax.cond``, of which an
ordinary step runs one, so it overstates the guard's traffic).

The guard's cost is a global-norm reduction (an extra pass over the gradient,
unless the chain computes the norm anyway: the ``record_grad_norm`` rows) and
one select per update and state leaf. On CPU the selects dominate for a
stateful optimizer: with the state donated, XLA copies each state buffer
before updating it in place. The ``optax.apply_if_finite`` rows (optax's own
skip: a finiteness check over the updates and the same selects) show the same
cost. The paired CPU-time ratio (``time.process_time``) is steadier than wall
time on a machine shared with other jobs.

The gradient stream has a spike every 10th step, so skipped and accepted steps
are both timed.

Usage:
  JAX_PLATFORMS=cpu python benchmarks/spike_guard.py                     # ~10M params
  JAX_PLATFORMS=cpu python benchmarks/spike_guard.py --size 1000000 --repeats 10   # quick
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import optstab

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from optimizers import make_pytree  # pylint: disable=g-import-not-at-top,wrong-import-position

INNER = {
    "sgd": lambda: optstab.sgd(1e-3),
    "momentum": lambda: optstab.momentum(1e-3, 0.9),
    "adam": lambda: optstab.adam(1e-3),
}

# (label, baseline label, make the variant from an optimizer)
VARIANTS = [
    ("skip_spikes({})", "{}", optstab.skip_spikes),
    ("skip_spikes({}, rule='mean_std')", "{}",
     lambda inner: optstab.skip_spikes(inner, rule="mean_std")),
    # A chain that already computes the global norm (to log it): the guard's
    # norm is the same computation, which XLA computes once.
    ("record_grad_norm + skip_spikes({})", "record_grad_norm + {}",
     lambda inner: optax.chain(optstab.record_grad_norm(), optstab.skip_spikes(inner))),
    # Not the guard: optax's own skip (a select per update and state leaf, no
    # statistics), the floor for any transformation that may skip a step.
    ("optax.apply_if_finite({})", "{}", lambda inner: optax.apply_if_finite(inner, 5)),
]
BASELINES = {
    "{}": lambda inner: inner,
    "record_grad_norm + {}": lambda inner: optax.chain(optstab.record_grad_norm(), inner),
}


def _step_fn(tx, params, grads):
  """A closure timing one donated training step; returns (run, XLA bytes accessed)."""

  def step(p, s, g, loss):
    updates, s = tx.update(g, s, p, loss=loss)
    return optax.apply_updates(p, updates), s

  step = jax.jit(step, donate_argnums=(0, 1))
  box = {"p": jax.tree.map(jnp.copy, params), "t": 0}
  box["s"] = jax.jit(tx.init)(box["p"])
  spike = jax.tree.map(lambda g: 100.0 * g, grads)
  cost = step.lower(box["p"], box["s"], grads, jnp.float32(1.0)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  nbytes = float((cost or {}).get("bytes accessed", float("nan")))

  def run() -> float:
    box["t"] += 1
    g = spike if box["t"] % 10 == 0 else grads
    t0, c0 = time.perf_counter(), time.process_time()
    box["p"], box["s"] = step(box["p"], box["s"], g, jnp.float32(1.0))
    jax.block_until_ready((box["p"], box["s"]))
    return time.perf_counter() - t0, time.process_time() - c0

  return run, nbytes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=10_000_000, help="number of float32 parameters")
  parser.add_argument("--leaves", type=int, default=50, help="number of pytree leaves")
  parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
  parser.add_argument("--optimizers", nargs="*", default=list(INNER), choices=list(INNER))
  args = parser.parse_args(argv)
  if args.size < args.leaves or args.leaves < 1 or args.repeats < 1 or args.warmup < 0:
    parser.error("need --size >= --leaves >= 1, --repeats >= 1, --warmup >= 0")

  params = make_pytree(args.size, args.leaves)
  grads = jax.tree.map(lambda x: x * 0.5 + 1e-3, params)
  n = sum(x.size for x in jax.tree.leaves(params))
  runners, nbytes = {}, {}
  for name in args.optimizers:
    for label, make in BASELINES.items():
      key = label.format(name)
      runners[key], nbytes[key] = _step_fn(make(INNER[name]()), params, grads)
    for label, _, make in VARIANTS:
      key = label.format(name)
      runners[key], nbytes[key] = _step_fn(make(INNER[name]()), params, grads)
  for _ in range(args.warmup + 1):  # the first call compiles
    for run in runners.values():
      run()
  times = {key: [] for key in runners}
  for _ in range(args.repeats):
    for key, run in runners.items():
      times[key].append(run())

  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); jax {jax.__version__}, "
        f"optax {optax.__version__}")
  print(f"pytree: {n:,} float32 parameters in {args.leaves} leaves; {args.repeats} steps per "
        f"variant (every 10th a spike), median")
  print()
  print("| variant | baseline | median ms | baseline ms | ratio | paired ratio (median) | "
        "paired CPU-time ratio | XLA bytes ratio |")
  print("|---|---|---|---|---|---|---|---|")
  worst = 0.0
  for name in args.optimizers:
    for label, base_label, _ in VARIANTS:
      key, base_key = label.format(name), base_label.format(name)
      ours, base = [t for t, _ in times[key]], [t for t, _ in times[base_key]]
      ratio = statistics.median(ours) / statistics.median(base)
      paired = statistics.median(t / b for t, b in zip(ours, base))
      cpu = statistics.median(t / b for (_, t), (_, b) in zip(times[key], times[base_key]))
      if "skip_spikes" in label:
        worst = max(worst, paired)
      print(f"| {key} | {base_key} | {statistics.median(ours) * 1e3:.2f} | "
            f"{statistics.median(base) * 1e3:.2f} | {ratio:.3f} | {paired:.3f} | {cpu:.3f} | "
            f"{nbytes[key] / nbytes[base_key]:.4f} |")
  print()
  print(f"worst paired ratio guard / optimizer alone: {worst:.3f} (target <= 1.05)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
