"""Overhead of percentile clipping and gradient-norm telemetry.

Part 1 (optimizer step, ~10M parameters): step time of
  adam alone | chain(clip_by_global_norm, adam) | chain(percentile_clip, adam)
each a jitted ``update + apply_updates`` with donated buffers, timed one step at
a time (``block_until_ready``), the variants interleaved round-robin so machine
load hits them alike; reports median and min over ``--repeats`` runs, and
XLA's bytes-accessed estimate of each compiled step (deterministic).

Part 2 (a small MLP training loop): time per step of
  clip_by_global_norm + adam, no telemetry | the same + record_grad_norm and a
  GradNormRecorder observing every step (one host fetch per buffer capacity) |
  an AutoClip-style host loop (unbounded Python list of norms, ``float(norm)``
  every step, ``numpy.percentile`` on the host: the per-step sync we avoid) |
  percentile_clip + record_grad_norm (the on-device equivalent)
each timed over ``--loop-steps`` steps per run, interleaved, ``--repeats`` runs.

Part 3 (window cost): per-step device time of percentile_clip for several
window sizes vs clip_by_global_norm and record_grad_norm, each run as one
jitted lax.scan over ``--scan-steps`` updates (no dispatch overhead).

Usage:
  JAX_PLATFORMS=cpu python benchmarks/clipping_telemetry.py            # full size
  JAX_PLATFORMS=cpu python benchmarks/clipping_telemetry.py --num-params 100000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab


def _adam(lr):
  return optstab.adam(lr)


def _params(num_params: int, key) -> dict:
  """A few matrices totalling about ``num_params`` float32 parameters."""
  cols = 2048
  per_leaf = max(1, num_params // 4 // cols)
  keys = jax.random.split(key, 4)
  return {f"w{i}": 0.01 * jax.random.normal(k, (per_leaf, cols)) for i, k in enumerate(keys)}


def _time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
  """Calls each fn (returns seconds) ``warmup`` then ``repeats`` times, round-robin."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(fn())
  return times


def _table(title: str, times: dict, baseline: str, unit_scale: float, unit: str,
           extra: dict | None = None, extra_name: str = "") -> str:
  """Median, min, ratio of medians, and the median of per-round ratios.

  Variants run round-robin, so the per-round ratio (this variant's run over
  the baseline's run of the same round) cancels slow drifts in machine load.
  """
  base = statistics.median(times[baseline])
  head = f"| variant | median {unit} | min {unit} | median / baseline | paired ratio (median) |"
  rule = "|---|---|---|---|---|"
  if extra:
    head, rule = head + f" {extra_name} |", rule + "---|"
  lines = [title, head, rule]
  for name, ts in times.items():
    med = statistics.median(ts)
    paired = statistics.median(t / b for t, b in zip(ts, times[baseline]))
    row = (f"| {name} | {med * unit_scale:.3f} | {min(ts) * unit_scale:.3f} | "
           f"{med / base:.3f}x | {paired:.3f}x |")
    if extra:
      row += f" {extra[name]} |"
    lines.append(row)
  lines.append(f"(baseline: {baseline})")
  return "\n".join(lines)


def bench_optimizer_step(num_params: int, repeats: int, warmup: int) -> str:
  params = _params(num_params, jax.random.key(0))
  n = sum(x.size for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
  variants = {
      "adam": _adam(1e-3),
      "clip_by_global_norm + adam": optax.chain(optstab.clip_by_global_norm(1.0), _adam(1e-3)),
      "percentile_clip + adam": optax.chain(optstab.percentile_clip(90.0, window_size=1000,
                                                                    min_history=100),
                                            _adam(1e-3)),
  }
  fns, traffic = {}, {}
  for name, opt in variants.items():
    def step(p, s, g, opt=opt):
      updates, s = opt.update(g, s, p)
      return optax.apply_updates(p, updates), s

    step = jax.jit(step, donate_argnums=(0, 1))
    box = {"p": jax.tree.map(jnp.copy, params)}
    box["s"] = opt.init(box["p"])
    # XLA's own estimate of the memory traffic of the compiled step: a
    # deterministic complement to the (load-sensitive) timings.
    cost = step.lower(box["p"], box["s"], grads).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    traffic[name] = f"{cost.get('bytes accessed', float('nan')) / (4 * n):.1f}"

    def run(step=step, box=box):
      t0 = time.perf_counter()
      box["p"], box["s"] = step(box["p"], box["s"], grads)
      jax.block_until_ready((box["p"], box["s"]))
      return time.perf_counter() - t0

    fns[name] = run
  times = _time_interleaved(fns, repeats, warmup)
  return _table(f"Optimizer step, {n:,} float32 parameters, {repeats} runs each "
                f"({jax.devices()[0].platform})", times, "clip_by_global_norm + adam", 1e3, "ms",
                traffic, "XLA bytes accessed / parameter bytes")


def _mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _loss(params, x, y):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  out = h @ params[-1]["w"] + params[-1]["b"]
  return jnp.mean((out - y) ** 2)


def bench_training_loop(hidden: int, batch: int, loop_steps: int, repeats: int,
                        warmup: int) -> str:
  sizes = (128, hidden, hidden, 10)
  params0 = _mlp(jax.random.key(0), sizes)
  n = sum(x.size for x in jax.tree.leaves(params0))
  data_x = jax.random.normal(jax.random.key(1), (loop_steps, batch, sizes[0]))
  data_y = jax.random.normal(jax.random.key(2), (loop_steps, batch, sizes[-1]))
  xs = [data_x[i] for i in range(loop_steps)]
  ys = [data_y[i] for i in range(loop_steps)]
  capacity = 100

  def make_step(opt):
    def step(p, s, x, y):
      g = jax.grad(_loss)(p, x, y)
      updates, s = opt.update(g, s, p)
      return optax.apply_updates(p, updates), s
    return jax.jit(step, donate_argnums=(0, 1))

  def device_loop(opt, with_recorder):
    step = make_step(opt)

    def run():
      p = jax.tree.map(jnp.copy, params0)
      s = opt.init(p)
      recorder = optstab.GradNormRecorder() if with_recorder else None
      jax.block_until_ready((p, s))
      t0 = time.perf_counter()
      for x, y in zip(xs, ys):
        p, s = step(p, s, x, y)
        if recorder is not None:
          recorder.observe(s)
      jax.block_until_ready((p, s))
      elapsed = time.perf_counter() - t0
      if recorder is not None:
        assert recorder.norms(s).shape == (loop_steps,)
      return elapsed / loop_steps
    return run

  # AutoClip-style reference: norms kept in a Python list, read back every step.
  grad_fn = jax.jit(lambda p, x, y: (lambda g: (g, optax.tree.norm(g)))(jax.grad(_loss)(p, x, y)))
  adam = _adam(1e-3)

  @jax.jit
  def apply_clipped(p, s, g, lam):
    g, _ = optstab.clip_by_global_norm(lam).update(g, optax.EmptyState())
    updates, s = adam.update(g, s, p)
    return optax.apply_updates(p, updates), s

  def host_list_loop():
    p = jax.tree.map(jnp.copy, params0)
    s = adam.init(p)
    history = []
    jax.block_until_ready((p, s))
    t0 = time.perf_counter()
    for x, y in zip(xs, ys):
      g, norm = grad_fn(p, x, y)
      history.append(float(norm))  # the per-step host sync
      lam = np.percentile(history, 90.0)
      p, s = apply_clipped(p, s, g, lam)
    jax.block_until_ready((p, s))
    return (time.perf_counter() - t0) / loop_steps

  fns = {
      "clip_by_global_norm + adam, no telemetry": device_loop(
          optax.chain(optstab.clip_by_global_norm(1.0), adam), False),
      "record_grad_norm + clip_by_global_norm + adam, recorder": device_loop(
          optax.chain(optstab.record_grad_norm(capacity), optstab.clip_by_global_norm(1.0), adam),
          True),
      "AutoClip-style host list (.item() every step) + adam": host_list_loop,
      "record_grad_norm + percentile_clip + adam, recorder": device_loop(
          optax.chain(optstab.record_grad_norm(capacity),
                      optstab.percentile_clip(90.0, window_size=1000, min_history=10), adam),
          True),
  }
  times = _time_interleaved(fns, repeats, warmup)
  return _table(f"Training loop, MLP {sizes} ({n:,} params), batch {batch}, {loop_steps} steps "
                f"per run, {repeats} runs each ({jax.devices()[0].platform})", times,
                "clip_by_global_norm + adam, no telemetry", 1e3, "ms/step")


def bench_window_cost(windows, scan_steps: int, repeats: int, warmup: int) -> str:
  """Per-step device cost of the percentile window, without dispatch overhead.

  Each variant runs ``scan_steps`` updates of a 16-element gradient inside one
  jitted ``lax.scan``, so the time per step is the transformation's own
  compute (the window bookkeeping), not Python or dispatch.
  """
  grads = jax.random.normal(jax.random.key(3), (scan_steps, 16))
  grads = grads * jnp.exp(jax.random.normal(jax.random.key(4), (scan_steps, 1)))
  variants = {"clip_by_global_norm": optstab.clip_by_global_norm(1.0),
              "record_grad_norm (capacity 1000)": optstab.record_grad_norm(1000)}
  for w in windows:
    variants[f"percentile_clip (window {w})"] = optstab.percentile_clip(
        90.0, window_size=w, min_history=min(10, w))
  fns = {}
  for name, tx in variants.items():
    def scan(gs, tx=tx):
      def body(state, g):
        out, state = tx.update(g, state)
        return state, out[0]
      return jax.lax.scan(body, tx.init(gs[0]), gs)

    scan = jax.jit(scan)
    jax.block_until_ready(scan(grads))

    def run(scan=scan):
      t0 = time.perf_counter()
      jax.block_until_ready(scan(grads))
      return (time.perf_counter() - t0) / scan_steps
    fns[name] = run
  times = _time_interleaved(fns, repeats, warmup)
  return _table(f"Window cost: {scan_steps} updates of a 16-element gradient in one jitted scan, "
                f"{repeats} runs each ({jax.devices()[0].platform})", times,
                "clip_by_global_norm", 1e6, "us/step")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-params", type=int, default=10_000_000,
                      help="optimizer-step benchmark size (default 10M)")
  parser.add_argument("--repeats", type=int, default=30, help="timed runs per variant (>= 20)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed runs per variant first")
  parser.add_argument("--hidden", type=int, default=512, help="MLP hidden width")
  parser.add_argument("--batch", type=int, default=128, help="MLP batch size")
  parser.add_argument("--loop-steps", type=int, default=100,
                      help="training steps per timed run of the loop benchmark")
  parser.add_argument("--skip-step", action="store_true", help="skip part 1")
  parser.add_argument("--skip-loop", action="store_true", help="skip part 2")
  parser.add_argument("--windows", type=int, nargs="*", default=[100, 1000, 10000],
                      help="percentile_clip window sizes for part 3 (none: skip it)")
  parser.add_argument("--scan-steps", type=int, default=2000, help="updates per run in part 3")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")
  if not args.skip_step:
    print(bench_optimizer_step(args.num_params, args.repeats, args.warmup), flush=True)
    print()
  if not args.skip_loop:
    print(bench_training_loop(args.hidden, args.batch, args.loop_steps, args.repeats,
                              args.warmup), flush=True)
    print()
  if args.windows:
    print(bench_window_cost(args.windows, args.scan_steps, args.repeats, args.warmup), flush=True)


if __name__ == "__main__":
  main()
