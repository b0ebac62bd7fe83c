"""The per-trial cost of the demos' ``standard`` presets, measured on a few trials.

Run from a checkout::

  python benchmarks/standard_preset_cost.py                  # both demos, ~2-4 min on 2 cores
  python benchmarks/standard_preset_cost.py --only transformer --trials 2

It trains, in this process and with XLA:CPU single-threaded (the layout of
``optstab.default_executor``'s CPU workers, ``SINGLE_THREADED_ENV``), a few
trials of each standard preset's trial plan: the first trial of a model pays
its compilation, the next ones reuse it. It prints, per trial, the wall time
and the user + system CPU seconds of this process (``resource.getrusage``),
then the estimate of the whole preset: the CPU seconds of the trial plan
(compilations once per model and worker, every trial at the measured
steady-state cost) and its wall time on ``--workers`` idle cores.

CPU seconds are what a shared machine still measures honestly: other jobs
stretch the wall time of a trial, much less the CPU time it takes. The
estimate assumes the steady-state trial cost of the first trials holds for
every trial of the plan (every trial of a preset trains the same number of
steps on the same model shapes, warmup included for the Transformer demo,
warmup prepended for the WideResNet demo's warmup curves, which the plan counts).

Measured (``--trials 2``, 140 s wall, 156 CPU s, on the shared 2-core Intel
Xeon VM at load average 1.6-2.8 while it ran): the Transformer, 32.5 CPU s per
1000-step trial, 9.4 CPU s of compilation; the WideResNet, 7.7 CPU s per
100-step trial of the standard model and 21.5 of the stride-(1,1) one, 7.5-11
CPU s of compilation. An earlier, more loaded run (load average 6-9) gave 30.6,
7.4 and 22.4. The presets' ``CPU_COST`` holds the highest numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

from optstab.executors import SINGLE_THREADED_ENV

for _name, _value in SINGLE_THREADED_ENV.items():  # before jax is imported
  if _name == "XLA_FLAGS" and os.environ.get(_name):
    os.environ[_name] += " " + _value
  else:
    os.environ[_name] = _value


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time_trials(trial_fn, configs):
  """``[(wall s, CPU s), ...]`` of each config, trained one after another."""
  out = []
  for config in configs:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    trial_fn(config)
    out.append((time.perf_counter() - wall, _cpu_seconds() - cpu))
    print(f"  {config.extra.get('variant')}: lr {config.learning_rate:<8g} "
          f"steps {config.total_steps:<5d} wall {out[-1][0]:6.1f} s  CPU {out[-1][1]:6.1f} s",
          flush=True)
  return out


def _measure(trial_fn, configs_by_variant, trials):
  """Per variant: steady CPU s per step; the compilation: the first trial's extra CPU s."""
  from optstab.harness import CostModel

  steps, compiles = {}, []
  for variant, configs in configs_by_variant.items():
    timings = _time_trials(trial_fn, configs[:trials])
    n = configs[0].total_steps
    steady = sum(c for _, c in timings[1:]) / len(timings[1:])
    steps[variant] = steady / n
    compiles.append(max(0.0, timings[0][1] - steady))
    print(f"  {variant}: {steady:.1f} CPU s per {n}-step trial ({steady / n * 1000:.1f} CPU ms "
          f"per step); compilation ~{compiles[-1]:.1f} CPU s", flush=True)
  first = next(iter(steps))
  steps["*"] = max(steps.values()) if len(steps) > 1 else steps[first]
  return CostModel(step_cpu_seconds=steps, compile_cpu_seconds=max(compiles),
                   measured="benchmarks/standard_preset_cost.py")


def _print_estimates(name, experiment, presets, cost, workers):
  for preset in ("quick", "standard"):
    plan = experiment.trial_plan(preset)
    print(f"{name} {preset}: {plan.counts()}; {plan.estimate(cost, workers).describe()}",
          flush=True)
  print(f"{name} cost model: {dict(cost.step_cpu_seconds)} CPU s per step, "
        f"{cost.compile_cpu_seconds:.1f} CPU s per compilation", flush=True)


def transformer(trials: int, workers: int) -> None:
  from optstab.transformer import experiment, presets, train

  preset = presets.get_preset("standard")
  text = experiment.data_source_for(preset).load()
  fn = train.make_trial_fn(experiment.setup_for(preset, text), text, progress=False)
  plan = experiment.trial_plan(preset, seeds=(0,))
  configs = [c for c in plan.configs if c.extra["variant"] == "post_ln" and not c.warmup_steps]
  print(f"transformer standard: {preset.num_steps} steps per trial, batch {preset.batch_size}",
        flush=True)
  cost = _measure(fn, {"post_ln": configs}, trials)
  _print_estimates("transformer", experiment, presets, cost, workers)


def wrn(trials: int, workers: int) -> None:
  from optstab.wrn import experiment, presets, train

  preset = presets.get_preset("standard")
  data = experiment.load_preset_data(preset)
  fn = train.make_trial_fn(experiment.setup_for(preset, data), data, progress=False)
  plan = experiment.trial_plan(preset, seeds=(0,))
  by_variant = {v: [c for c in plan.configs if c.extra["variant"] == v and not c.warmup_steps
                    and len(c.extra) == 2]  # the sweep trials: variant and strides only
                for v in experiment.VARIANTS}
  print(f"wrn standard: {preset.num_steps} (+{preset.warmup_steps} warmup) steps per trial, "
        f"batch {preset.batch_size}", flush=True)
  cost = _measure(fn, by_variant, trials)
  _print_estimates("wrn", experiment, presets, cost, workers)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=("transformer", "wrn"), default=None)
  parser.add_argument("--trials", type=int, default=3,
                      help="trials timed per demo (>= 2: the first pays the compilation)")
  parser.add_argument("--workers", type=int, default=2, help="idle cores of the estimate")
  args = parser.parse_args(argv)
  if args.trials < 2:
    parser.error("--trials must be at least 2 (the first trial pays the compilation)")
  if args.only in (None, "transformer"):
    transformer(args.trials, args.workers)
  if args.only in (None, "wrn"):
    wrn(args.trials, args.workers)
  return 0


if __name__ == "__main__":
  sys.exit(main())
