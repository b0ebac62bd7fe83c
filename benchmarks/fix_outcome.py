"""Does ``diagnose``'s advice help? Diagnose each workload, then apply the advice on fresh seeds.

For every workload: ``optstab.diagnose`` (sweep, checks, fix ladder) into
``<out>/<workload>/``; then, if it recommends a fix, the fix at its rate and
lr* for the same total steps, each on ``--fresh-seeds`` seeds the diagnosis
never used, plus the recommended rate without the fix. The advice *helps on
fresh seeds* when the fixed runs train on every fresh seed, the same rate
without the fix does not train on any of them (or trains worse), and the fixed
runs' best-checkpoint metric is no worse than lr*'s beyond the fresh seeds'
own spread.

Targets: every unstable workload gets a recommendation that helps on fresh
seeds; every stable one gets none.

  python benchmarks/fix_outcome.py --out runs/fix_outcome [--workloads post_ln,pre_ln,...]

Prints a markdown table and writes ``<out>/fix_outcome.json``. Cost on a
2-core CPU: about an hour for all five workloads (the Post-LN Transformer
dominates).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab
from optstab.diagnosis import (TrialConfig, TrialResult, default_executor, diagnose, log_grid,
                               run_trials)
from optstab.diagnosis.fixes import trains
from optstab.transformer import experiment as tf_experiment
from optstab.transformer import presets as tf_presets
from optstab.transformer import train as tf_train
from optstab.wrn import experiment as wrn_experiment
from optstab.wrn import presets as wrn_presets
from optstab.wrn import train as wrn_train


def transformer_workload(norm_position: str, num_steps: int) -> tuple[Callable, dict[str, Any]]:
  """The quick preset's character Transformer (6 layers, width 64), Post-LN or Pre-LN."""
  preset = tf_presets.get_preset("quick")
  source = tf_experiment.data_source_for(preset)
  corpus = optstab.runner.load_data(source)
  setup = tf_experiment.setup_for(preset, corpus)
  if norm_position == "pre":
    setup = setup.replace(model=setup.model.replace(norm_position="pre"))
  trial_fn = tf_train.make_trial_fn(setup, source, progress=False)
  base = TrialConfig(1e-3, num_steps=num_steps, schedule="constant", eval_every=100,
                     extra={"variant": f"{norm_position}_ln"})
  return trial_fn, dict(learning_rates=log_grid(3e-4, 3e-2, 7), base_config=base,
                        trivial_loss=corpus.unigram_entropy, metric="loss")


def wrn_workload(variant: str, num_steps: int) -> tuple[Callable, dict[str, Any]]:
  """The quick preset's WideResNet-10-1 on 16x16 digits, standard or stride-(1,1)."""
  preset = wrn_presets.get_preset("quick")
  source = wrn_experiment.data_source_for(preset)
  data = optstab.runner.load_data(source)
  setup = wrn_experiment.setup_for(preset, data)
  strides = preset.standard_strides if variant == "standard" else preset.changed_strides
  setup = setup.replace(model=dataclasses.replace(setup.model, group_strides=tuple(strides)))
  trial_fn = wrn_train.make_trial_fn(setup, source, progress=False)
  base = TrialConfig(0.01, num_steps=num_steps, schedule="cosine", eval_every=20,
                     extra={"variant": variant})
  return trial_fn, dict(learning_rates=log_grid(0.01, 10.0, 7), base_config=base,
                        trivial_loss=math.log(data.num_classes), metric="error_rate")


LEAST_SQUARES_OPTIMIZERS = {"sgd": optstab.sgd, "adam": optstab.adam}


@functools.partial(jax.jit, static_argnames=("optimizer", "batch"))
def _least_squares_run(rates, seed, clip_norm, optimizer="sgd", batch=32):
  """Minibatch least squares whose features differ in scale 10x (curvature ~100).

  ``clip_norm`` is an input (inf: no clipping), so clipped trials share the compiled scan.
  """
  kx, kv, kw = jax.random.split(jax.random.key(0), 3)
  scales = jnp.logspace(0, 1, 8)
  x, x_val = jax.random.normal(kx, (256, 8)) * scales, jax.random.normal(kv, (64, 8)) * scales
  w_true = jax.random.normal(kw, (8,))
  y, y_val = x @ w_true, x_val @ w_true
  tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                   optax.inject_hyperparams(LEAST_SQUARES_OPTIMIZERS[optimizer])(learning_rate=0.0))

  def loss_fn(w, xb, yb):
    return 0.5 * jnp.mean((xb @ w - yb) ** 2)

  def step(carry, inputs):
    w, state = carry
    rate, key = inputs
    rows = jax.random.choice(key, 256, (batch,), replace=False)
    loss, grads = jax.value_and_grad(loss_fn)(w, x[rows], y[rows])
    state[1].hyperparams["learning_rate"] = rate
    updates, state = tx.update(grads, state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), (loss, optstab.global_norm(grads), loss_fn(w, x_val, y_val))

  keys = jax.random.split(jax.random.key(seed), rates.shape[0])
  w0 = jnp.zeros(8)
  return jax.lax.scan(step, (w0, tx.init(w0)), (rates, keys))[1]


def _least_squares_trial(config: TrialConfig) -> TrialResult:
  rates = optstab.schedule_values(config.learning_rate_schedule(), config.total_steps)
  clip = math.inf if config.clip_norm is None else config.clip_norm
  loss, norms, val = _least_squares_run(jnp.asarray(rates), config.seed, jnp.float32(clip),
                                        config.optimizer or "sgd")
  steps = config.eval_steps()
  return TrialResult(config, np.asarray(loss), steps, {"loss": np.asarray(val)[steps - 1]},
                     np.asarray(norms))


#: A user's TrialFn: minibatch SGD on least squares, the data order drawn from the seed;
#: it applies clipping and a switch to Adam when a configuration asks.
least_squares_trial = optstab.with_fix_support(_least_squares_trial, clipping=True,
                                               optimizers=("adam",))


def least_squares_workload() -> tuple[Callable, dict[str, Any]]:
  return least_squares_trial, dict(learning_rates=log_grid(1e-3, 1.0, 7),
                                   base_config=TrialConfig(1e-3, num_steps=200, eval_every=10),
                                   metric="loss")


WORKLOADS = {
    # name: (builder, args, expected: "unstable" or "stable")
    "post_ln": (lambda: transformer_workload("post", 400), "unstable"),
    "least_squares": (least_squares_workload, "unstable"),
    "wrn_stride": (lambda: wrn_workload("changed", 120), "unstable"),
    "pre_ln": (lambda: transformer_workload("pre", 400), "stable"),
    "wrn_standard": (lambda: wrn_workload("standard", 120), "stable"),
}


def _best(record, metric: str) -> float:
  if record.result is None:
    return math.nan
  return optstab.diagnosis.metric_value(record.result, metric, "min", "best")


def fresh_seed_check(trial_fn, diagnosis, seeds, executor, out_dir) -> dict[str, Any]:
  """The recommended fix, the same rate without it, and lr* for equal steps, on fresh seeds."""
  rec = diagnosis.recommendation
  sweep = diagnosis.sweep
  fixed = rec.chosen.config
  base = sweep.best.config
  without = base.replace(learning_rate=fixed.learning_rate, num_steps=fixed.total_steps)
  equal = base.replace(num_steps=fixed.total_steps)
  configs = [c.replace(seed=s) for c in (fixed, without, equal) for s in seeds]
  records = run_trials(trial_fn, configs, out_dir=out_dir, progress=False, executor=executor,
                       desc="fresh seeds")
  n = len(seeds)
  groups = {name: records[i * n:(i + 1) * n] for i, name in enumerate(("fix", "without", "lr*"))}
  judged = {k: [sweep.judge(r) for r in v] for k, v in groups.items()}
  values = {k: [_best(r, sweep.metric) for r in v] for k, v in groups.items()}
  spread = max(np.ptp([v for v in values["fix"] if math.isfinite(v)] or [0.0]),
               np.ptp([v for v in values["lr*"] if math.isfinite(v)] or [0.0]))
  fix_trains = sum(trains(t) for t in judged["fix"])
  without_trains = sum(trains(t) for t in judged["without"])
  fix_mean, base_mean = float(np.mean(values["fix"])), float(np.nanmean(values["lr*"]))
  not_worse = fix_mean <= base_mean + spread
  helps = fix_trains == n and not_worse and (
      without_trains < n or fix_mean < float(np.nanmean(values["without"])) - spread)
  return {"fix": rec.family.name, "config": fixed.to_dict(), "seeds": list(seeds),
          "fix_trains": fix_trains, "without_fix_trains": without_trains,
          "values": values, "spread": float(spread), "fix_mean": fix_mean,
          "lr_star_mean": base_mean, "helps": bool(helps)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/fix_outcome")
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--fresh-seeds", type=int, default=3)
  parser.add_argument("--workers", type=int, default=None)
  args = parser.parse_args(argv)
  names = args.workloads.split(",")
  rows = []
  executor = default_executor(args.workers)
  seeds = tuple(range(100, 100 + args.fresh_seeds))
  with executor:
    for name in names:
      build, expected = WORKLOADS[name]
      trial_fn, kwargs = build()
      start = time.perf_counter()
      d = diagnose(trial_fn, out_dir=os.path.join(args.out, name), executor=executor,
                   progress=False, **kwargs)
      seconds = time.perf_counter() - start
      row = {"workload": name, "expected": expected, "verdict": d.verdict,
             "lr_star": d.sweep.best_learning_rate,
             "recommendation": None if d.recommendation is None else d.recommendation.family.name,
             "diagnose_seconds": seconds, "steps_run": d.plan.steps_run if d.plan else None,
             "fixes": [(f.family.name, f.status) for f in d.fixes]}
      if d.recommendation is not None:
        row["fresh"] = fresh_seed_check(trial_fn, d, seeds, executor,
                                        os.path.join(args.out, name, "fresh_seeds"))
      rows.append(row)
      print(json.dumps(row, default=float), flush=True)
      os.makedirs(args.out, exist_ok=True)
      with open(os.path.join(args.out, "fix_outcome.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2, default=float)
  print("\n| workload | expected | verdict | lr* | recommended fix | fresh seeds: fix trains / "
        "same rate without it trains | best metric: fix vs lr* (equal steps) | helps on fresh "
        "seeds | target met | diagnose s (steps) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  ok = True
  for r in rows:
    fresh = r.get("fresh")
    if r["expected"] == "stable":
      met = r["recommendation"] is None
      cells = ["-", "-", "-"]
    else:
      met = fresh is not None and fresh["helps"]
      cells = ["-", "-", "no"] if fresh is None else [
          f"{fresh['fix_trains']}/{len(fresh['seeds'])} / "
          f"{fresh['without_fix_trains']}/{len(fresh['seeds'])}",
          f"{fresh['fix_mean']:.4g} vs {fresh['lr_star_mean']:.4g} (spread {fresh['spread']:.2g})",
          "yes" if fresh["helps"] else "no"]
    ok &= met
    print(f"| {r['workload']} | {r['expected']} | {r['verdict']} | {r['lr_star']:.3g} | "
          f"{r['recommendation'] or 'none'} | " + " | ".join(cells)
          + f" | {'yes' if met else 'NO'} | {r['diagnose_seconds']:.0f} ({r['steps_run']}) |")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
