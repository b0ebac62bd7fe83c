"""The playbook's stride-instability experiment: Figures 4, 5, 9 and a mitigation table.

``run_experiment(preset, out_dir)`` trains, with the diagnosis toolkit:

1. **Figure 4** -- a learning-rate sweep (``optstab.diagnosis.learning_rate_sweep``)
   for four curves: the standard WideResNet and the one with a single group's
   stride changed from (2,2) to (1,1), each without and with linear warmup
   prepended to the cosine decay (``TrialConfig.warmup_steps``; such runs train
   warmup + ``num_steps`` steps, the FAQ's warmup prepended, and the report says so).
   Infeasible trials are marked by the toolkit's ``FeasibilityRule`` (NaN/Inf,
   or a training loss above 10x the initial one at any step); lr* is the
   feasible rate with the lowest final test error; every run is labelled by
   the sweep (``classify_run`` with the trivial loss log(10) and lr*'s final
   training loss as context).
2. **Figure 5** -- the training loss of both models at the high rate, as a coarse
   evaluation cadence sees it and at every step over the first steps. Every
   trial records its training loss at every step, so this reuses the Figure 4
   trials; ``optstab.diagnosis.classify_run`` labels each run.
3. **Figure 9** -- the unclipped gradient norm of the changed model at the
   high rate, without clipping and with ``optstab.percentile_clip`` at the
   preset's percentiles: the threshold is that percentile of the unclipped
   run's norms (the FAQ's "Gradient clipping" recipe), fixed for the first ``clip_window`` steps
   (the whole run in the small presets), then the percentile of the last
   ``clip_window`` norms.
4. **Mitigations** -- the changed model at the high rate with each of the FAQ's
   "Potential fixes for common instability patterns":
   warmup, percentile clipping, Adam, x + Norm(f(x)), zero-initialised residual
   branches, the global-average-pool head, and the lower rate lr*.

The verdicts (``verdicts``): the stride change does not hurt where both models
train (two-sided, at the lowest grid rate where both runs are trained,
within two binomial standard errors of the test-error difference); the
changed model goes unstable at a lower rate; its lr* is lower; warmup makes
the high rate trainable (stating the warmup run's own label and the budgets);
the every-step view shows the early spike. ``seeds=`` repeats everything per
seed and each verdict says how many seeds reach it. ``results.json`` records
the library versions and the machine (``environment``): results vary across
machines.

Every trial is appended to ``<out_dir>/trials.jsonl`` (``TrialStore``) as it
finishes; running again into the same folder skips finished trials, so an
interrupted run resumes. Outputs: ``fig4_test_error_vs_lr.png``,
``fig5_loss_first_steps.png``, ``fig9_grad_norms.png``, ``results.json`` (every
number) and ``report.md`` (what reproduced, beside the published values).

The demo's parts: this module is the trial plan (which trials, in which order);
``summary`` turns one seed's trials into numbers, ``report`` into the report
and the verdicts, ``figures`` into the figures; ``optstab.harness`` does the
rest (the store, the executor and mesh checks, seeds, the machine record,
timings, ``results.json``, ``report.md``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Executor
from typing import Any, Optional, Sequence, Union

from optstab import clipping, harness, runner
from optstab._types import PathLike
from optstab.diagnosis import SweepResult
from optstab.harness import ExperimentResult, TrialPlan
from optstab.trial import TrialConfig, TrialRecord
from optstab.wrn import data as wrn_data
from optstab.wrn import train as wrn_train
from optstab.wrn.figures import write_figures
from optstab.wrn.model import WideResNetConfig
from optstab.wrn.presets import VARIANTS, Preset, get_preset
from optstab.wrn.report import claims, render_report, verdicts
from optstab.wrn.summary import RULE, summarize

__all__ = ["run_experiment", "trial_plan", "load_preset_data", "data_source_for", "setup_for",
           "VARIANTS", "ExperimentResult", "verdicts", "render_report"]


def data_source_for(preset: Preset, data_dir: Optional[PathLike] = None) -> wrn_train.ImageDataSource:
  """How to load the preset's data (picklable: trial workers load it themselves)."""
  return wrn_train.ImageDataSource(
      preset.dataset, image_size=preset.image_size, train_size=preset.train_size,
      data_dir=None if data_dir is None else os.fspath(data_dir))


def load_preset_data(preset: Preset, data_dir: Optional[PathLike] = None) -> wrn_data.ImageDataset:
  """The preset's data set (digits: shipped, offline; CIFAR-10: from ``data_dir``), once per process."""
  return runner.load_data(data_source_for(preset, data_dir))


def setup_for(preset: Preset, data: wrn_data.ImageDataset) -> wrn_train.TrainSetup:
  """The baseline ``TrainSetup`` (standard model, Nesterov momentum 0.9)."""
  model = WideResNetConfig(depth=preset.depth, width=preset.width, num_classes=data.num_classes,
                           image_size=data.image_size, in_channels=data.in_channels,
                           group_strides=preset.standard_strides)
  return wrn_train.TrainSetup(
      model=model, batch_size=preset.batch_size, optimizer=preset.optimizer, momentum=0.9,
      weight_decay=preset.weight_decay, clip_window=preset.clip_window,
      compute_dtype=preset.compute_dtype, augment=preset.augment,
      fetch_every=min(50, preset.num_steps))


def _variant_extra(preset: Preset, variant: str) -> dict[str, Any]:
  strides = preset.standard_strides if variant == "standard" else preset.changed_strides
  return {"variant": variant, "group_strides": [list(s) for s in strides]}


def _base_config(preset: Preset, variant: str, warmup_steps: int = 0, **extra) -> TrialConfig:
  return TrialConfig(
      learning_rate=preset.high_learning_rate, num_steps=preset.num_steps,
      warmup_steps=warmup_steps, schedule="cosine", eval_every=preset.eval_every,
      seed=preset.seed, extra={**_variant_extra(preset, variant), **extra})


def run_experiment(preset: Union[str, Preset], out_dir: PathLike, *,
                   data_dir: Optional[PathLike] = None, progress: bool = True,
                   mesh=None, data: Optional[wrn_data.ImageDataset] = None,
                   seeds: Optional[Sequence[int]] = None,
                   executor: Optional[Executor] = None,
                   trial_timeout: Optional[float] = None) -> ExperimentResult:
  """Runs (or resumes) the whole experiment of ``preset`` into ``out_dir``.

  Args:
    preset: a ``Preset`` or its name (``"tiny"``, ``"quick"``,
      ``"cifar10-gpu"``, ``"cifar10-tpu"``).
    out_dir: output folder: ``trials.jsonl`` (resumable store), PNG figures,
      ``results.json`` and ``report.md``.
    data_dir: where CIFAR-10's python batches are (CIFAR-10 presets).
    progress: tqdm progress bars.
    mesh: a ``'data'`` mesh (default: every device); not with ``executor``.
    data: the data set (default: the preset's).
    seeds: run the whole experiment once per seed (default: the preset's
      ``seeds``, else its one ``seed``); the report's tables show the first
      seed and every verdict says how many seeds support it.
    executor: a ``concurrent.futures.Executor`` to run the trials on (e.g.
      ``optstab.default_executor()``: one process per CPU core or per GPU);
      ``None``: one after another in this process. Each worker loads the data
      and compiles for itself; only this process writes ``out_dir``.
    trial_timeout: seconds one trial may run; a trial past it is recorded as
      timed out and the experiment goes on (``optstab.diagnosis.run_trials``
      says what the limit can stop). ``None``: no limit.

  Returns:
    An ``ExperimentResult`` with ``summary`` (the content of ``results.json``)
    and ``files`` (name -> path).
  """
  preset = get_preset(preset) if isinstance(preset, str) else preset
  plan = trial_plan(preset, seeds)
  seeds = plan.seeds
  run = harness.start(out_dir, mesh=mesh, executor=executor, progress=progress,
                      trial_timeout=trial_timeout)
  source = data_source_for(preset, data_dir) if data is None else data
  data = runner.load_data(source)
  run.use(wrn_train.make_trial_fn(setup_for(preset, data), source, mesh=mesh,
                                  progress=run.trial_progress))
  seed_presets = [preset.replace(seed=seed) for seed in seeds]
  run.run_ahead(plan.configs)
  runs = [_run_seed(p, run, data) for p in seed_presets]
  summary, sweeps, clip_records, unstable = runs[0]
  summary = dict(summary)
  summary["seeds"] = list(seeds)
  if len(seeds) > 1:
    summary["per_seed"] = {str(seed): r[0] for seed, r in zip(seeds, runs)}
  summary["verdicts"] = harness.seeds.verdict_support([r[0] for r in runs], seeds, claims)
  run.measured(summary)
  figures = write_figures(preset, run.out_dir, sweeps, clip_records, unstable)
  return ExperimentResult(summary, harness.write_outputs(run.out_dir, summary, figures,
                                                         render_report))


def trial_plan(preset: Union[str, Preset], seeds: Optional[Sequence[int]] = None) -> TrialPlan:
  """Every trial of ``preset`` on ``seeds`` (default: the preset's), built without training.

  The listed trials are Figure 4's four curves on the whole grid and the
  mitigations that need no other trial, for every seed; the clipping runs
  (Figure 9 and the table), whose thresholds come from the unclipped run's
  gradient norms, are counted: one per clip percentile and seed, ``num_steps``
  steps each.
  """
  preset = get_preset(preset) if isinstance(preset, str) else preset
  seeds = harness.check_seeds(preset.seeds if seeds is None else seeds, preset.seed)
  configs = [c for seed in seeds for c in _independent_configs(preset.replace(seed=seed))]
  clips = [("stride_1x1", preset.num_steps)] * (len(preset.clip_percentiles) * len(seeds))
  return TrialPlan.build(seeds, configs, clips)


def _mitigation_configs(preset: Preset) -> dict[str, TrialConfig]:
  """The mitigation table's trials (all but clipping, which needs a sweep trial's norms)."""
  configs = {}
  for m in preset.mitigations:
    if m == "adam":
      configs[m] = _base_config(preset, "stride_1x1", optimizer="adam").replace(
          learning_rate=preset.adam_learning_rate)
    elif m == "residual_norm":
      configs[m] = _base_config(preset, "stride_1x1", block_norm="residual_norm")
    elif m == "zero_init":
      configs[m] = _base_config(preset, "stride_1x1", zero_init_residual=True)
    elif m == "global_pool":
      configs[m] = _base_config(preset, "stride_1x1", head="global_pool")
  return configs


def _warmups(preset: Preset) -> tuple[int, ...]:
  return (0, preset.warmup_steps) if preset.warmup_steps else (0,)


def _independent_configs(preset: Preset) -> list[TrialConfig]:
  """Every trial of one seed that needs no other trial's result (Figure 4 and the table)."""
  return ([_base_config(preset, v, w).replace(learning_rate=lr)
           for v in VARIANTS for w in _warmups(preset) for lr in sorted(preset.learning_rates)]
          + list(_mitigation_configs(preset).values()))


def _run_seed(preset: Preset, run: harness.Run, data: wrn_data.ImageDataset):
  """One seed's trials and summary: ``(summary, sweeps, clip_records, unstable record)``."""
  lrs = sorted(preset.learning_rates)
  trivial = math.log(data.num_classes)  # a classifier that learned nothing
  mitigation_configs = _mitigation_configs(preset)

  # Figure 4: four sweeps.
  warmups = _warmups(preset)
  sweeps: dict[str, SweepResult] = {}
  for variant in VARIANTS:
    for w in warmups:
      name = variant + (f"+warmup{w}" if w else "")
      sweeps[name] = run.sweep(lrs, _base_config(preset, variant, w), metric="error_rate",
                               rule=RULE, trivial_loss=trivial)

  def sweep_record(name: str, lr: float) -> TrialRecord:
    return next(t.record for t in sweeps[name].trials if t.learning_rate == lr)

  high = preset.high_learning_rate
  unstable = sweep_record("stride_1x1", high)

  # Figure 9: clipping runs at thresholds from the unclipped run's norms.
  clip_records = {}
  if unstable.result is not None:
    norms = unstable.result.grad_norms
    configs = []
    for p in preset.clip_percentiles:
      threshold = clipping.clip_threshold(norms, p)
      if not math.isfinite(threshold) or threshold <= 0:
        continue
      configs.append(_base_config(preset, "stride_1x1", clip_percentile=float(p),
                                  clip_initial_threshold=float(f"{threshold:.6g}"),
                                  clip_min_history=preset.clip_window))
    for config, record in zip(configs, run.trials(configs, "clipping")):
      clip_records[config.extra["clip_percentile"]] = record

  extra_records = dict(zip(mitigation_configs,
                           run.trials(list(mitigation_configs.values()), "mitigations")))

  rows = [("none", "none (baseline)", high, unstable)]
  changed = sweeps["stride_1x1"]
  for m in preset.mitigations:
    if m == "warmup" and preset.warmup_steps:
      rows.append(("warmup", f"warmup {preset.warmup_steps} steps", high,
                   sweep_record(f"stride_1x1+warmup{preset.warmup_steps}", high)))
    elif m == "clip":
      for p, record in clip_records.items():
        rows.append((f"clip_p{p:g}", f"percentile clipping (p{p:g}, threshold "
                     f"{record.config.extra['clip_initial_threshold']:.3g})", high, record))
    elif m == "lower_lr" and changed.best_learning_rate is not None:
      best = changed.best_learning_rate
      rows.append(("lower_lr", f"lower learning rate (lr* = {best:g})", best,
                   sweep_record("stride_1x1", best)))
    elif m in extra_records:
      label = {"adam": f"Adam (lr {preset.adam_learning_rate:g})",
               "residual_norm": "x + Norm(f(x))",
               "zero_init": "zero-init residual branches",
               "global_pool": "global-average-pool head"}[m]
      rows.append((m, label, extra_records[m].config.learning_rate, extra_records[m]))

  summary = summarize(preset, sweeps, unstable, clip_records, rows, data)
  return summary, sweeps, clip_records, unstable
