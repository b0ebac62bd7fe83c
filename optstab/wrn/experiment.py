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
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import Executor
from typing import Any, Optional, Sequence, Union

import numpy as np

import optstab
from optstab import clipping, plots, runner
from optstab import _validation
from optstab.diagnosis import (
    EARLY_UNSTABLE,
    STABLE,
    FeasibilityRule,
    SweepResult,
    SweepTrial,
    TrialConfig,
    TrialStore,
    in_process,
    learning_rate_sweep,
    run_trials,
)
from optstab.diagnosis.store import TrialRecord
from optstab.runner import ExperimentResult
from optstab.diagnosis.trial import to_jsonable
from optstab.wrn import data as wrn_data
from optstab.wrn import train as wrn_train
from optstab.wrn.model import WideResNetConfig
from optstab.wrn.presets import PUBLISHED, Preset, get_preset

__all__ = ["run_experiment", "load_preset_data", "data_source_for", "setup_for", "VARIANTS",
           "ExperimentResult", "verdicts", "render_report"]

PathLike = Union[str, "os.PathLike[str]"]

#: The two models of Figure 4.
VARIANTS = ("standard", "stride_1x1")

#: How trials are judged infeasible (the toolkit's default rule, spelled out).
RULE = FeasibilityRule(max_loss_ratio=10.0, scope="any")

#: A mitigation "restores training" when its trial is feasible and its final
#: test error is at most RESTORED_FACTOR x the changed model's error at its own
#: lr* plus RESTORED_SLACK (absolute); "partly" when feasible and better than
#: the unmitigated trial; "no" otherwise.
RESTORED_FACTOR = 2.0
RESTORED_SLACK = 0.01


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


def _finite(x) -> Optional[float]:
  x = float(x)
  return x if math.isfinite(x) else None


def _run_summary(trial: SweepTrial, fig5_steps: int) -> dict[str, Any]:
  """Every number of one judged trial the report uses."""
  record = trial.record
  config = record.config
  out: dict[str, Any] = {"learning_rate": config.learning_rate,
                         "warmup_steps": config.warmup_steps,
                         "total_steps": config.total_steps,
                         "extra": dict(config.extra), "seconds": record.seconds,
                         "feasible": trial.feasible, "reason": trial.reason,
                         "label": trial.label, "recovered": trial.recovered,
                         "trained": _trained(trial), "diagnosis": trial.describe()}
  if record.result is None:
    return out
  r = record.result
  loss = r.train_loss
  early = loss[:fig5_steps]
  finite_early = early[np.isfinite(early)]
  peak_step = int(np.argmax(np.where(np.isfinite(early), early, -np.inf))) + 1 if finite_early.size else None
  out.update(
      final_test_error=_finite(r.eval_metrics["error_rate"][-1]),
      best_test_error=_finite(np.nanmin(r.eval_metrics["error_rate"])),
      final_test_loss=_finite(r.eval_metrics["loss"][-1]),
      initial_loss=_finite(loss[0]),
      final_train_loss=_finite(loss[-1]),
      early_peak_loss=_finite(finite_early.max()) if finite_early.size else None,
      early_peak_step=peak_step,
      max_loss_ratio=_finite(np.nanmax(loss) / loss[0]) if np.isfinite(loss[0]) else None,
      max_grad_norm=_finite(np.nanmax(r.grad_norms)),
      median_grad_norm=_finite(np.nanmedian(r.grad_norms)),
  )
  return out


def _trained(trial: SweepTrial) -> bool:
  """Feasible, and stable or early-unstable then recovered (not failed-to-train or diverged)."""
  return trial.feasible and (trial.label == STABLE
                             or (trial.label == EARLY_UNSTABLE and bool(trial.recovered)))


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
    seeds: run the whole experiment once per seed (default: the preset's one
      seed); the report's tables show the first seed and every verdict says
      how many seeds support it.
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
  seeds = (preset.seed,) if seeds is None else tuple(seeds)
  if not seeds:
    raise ValueError("seeds must hold at least one seed; got ().")
  for i, seed in enumerate(seeds):
    _validation.check_positive_int(f"seeds[{i}]", seed, minimum=0)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct; got {list(seeds)}.")
  if mesh is not None and not in_process(executor):
    raise ValueError("give mesh or executor, not both: a mesh's devices belong to this process, "
                     "and each worker of an executor trains on its own devices.")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  start = time.perf_counter()
  source = data_source_for(preset, data_dir) if data is None else data
  data = runner.load_data(source)
  setup = setup_for(preset, data)
  # Workers' per-trial bars would interleave: with an executor, only the trial count shows.
  trial_fn = wrn_train.make_trial_fn(setup, source, mesh=mesh,
                                     progress=progress and in_process(executor))
  store = TrialStore(out_dir)
  seed_presets = [preset.replace(seed=seed) for seed in seeds]
  if not in_process(executor):
    # Every trial that needs no other trial's result, in one batch, so the
    # workers stay busy; the sweeps and the table read them back from the store.
    run_trials(trial_fn, [c for p in seed_presets for c in _independent_configs(p)],
               store=store, progress=progress, desc="trials", executor=executor,
               trial_timeout=trial_timeout)
  runs = [_run_seed(p, trial_fn, store, data, progress, executor, trial_timeout)
          for p in seed_presets]
  summary, sweeps, clip_records, unstable = runs[0]
  summary = dict(summary)
  summary["seeds"] = list(seeds)
  if len(seeds) > 1:
    summary["per_seed"] = {str(seed): run[0] for seed, run in zip(seeds, runs)}
  summary["verdicts"] = _verdict_support([run[0] for run in runs], seeds)
  summary["environment"] = runner.environment()
  summary["wall_seconds"] = time.perf_counter() - start
  summary["trial_seconds"] = sum(r.seconds for r in store.records())
  files = _write_outputs(preset, out_dir, sweeps, clip_records, unstable, summary)
  return ExperimentResult(summary, files)


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


def _run_seed(preset: Preset, trial_fn, store: TrialStore, data, progress: bool,
              executor: Optional[Executor], trial_timeout: Optional[float]):
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
      sweeps[name] = learning_rate_sweep(
          trial_fn, lrs, base_config=_base_config(preset, variant, w), metric="error_rate",
          rule=RULE, store=store, progress=progress, trivial_loss=trivial, executor=executor,
          trial_timeout=trial_timeout)

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
    for config, record in zip(configs, run_trials(trial_fn, configs, store=store,
                                                  progress=progress, desc="clipping",
                                                  executor=executor,
                                                  trial_timeout=trial_timeout)):
      clip_records[config.extra["clip_percentile"]] = record

  extra_records = dict(zip(mitigation_configs, run_trials(
      trial_fn, list(mitigation_configs.values()), store=store, progress=progress,
      desc="mitigations", executor=executor, trial_timeout=trial_timeout)))

  rows = [("none (baseline)", high, unstable)]
  changed = sweeps["stride_1x1"]
  for m in preset.mitigations:
    if m == "warmup" and preset.warmup_steps:
      rows.append((f"warmup {preset.warmup_steps} steps", high,
                   sweep_record(f"stride_1x1+warmup{preset.warmup_steps}", high)))
    elif m == "clip":
      for p, record in clip_records.items():
        rows.append((f"percentile clipping (p{p:g}, threshold "
                     f"{record.config.extra['clip_initial_threshold']:.3g})", high, record))
    elif m == "lower_lr" and changed.best_learning_rate is not None:
      best = changed.best_learning_rate
      rows.append((f"lower learning rate (lr* = {best:g})", best, sweep_record("stride_1x1", best)))
    elif m in extra_records:
      label = {"adam": f"Adam (lr {preset.adam_learning_rate:g})",
               "residual_norm": "x + Norm(f(x))",
               "zero_init": "zero-init residual branches",
               "global_pool": "global-average-pool head"}[m]
      rows.append((label, extra_records[m].config.learning_rate, extra_records[m]))

  summary = _summarize(preset, sweeps, unstable, clip_records, rows, data)
  return summary, sweeps, clip_records, unstable


def _summarize(preset: Preset, sweeps: dict[str, SweepResult], unstable: TrialRecord,
               clip_records: dict, rows: list, data) -> dict[str, Any]:
  judge = sweeps["stride_1x1"].judge  # the changed model's runs, in its sweep's context
  fig4 = {}
  for name, sweep in sweeps.items():
    trials = [_run_summary(t, preset.fig5_steps) for t in sweep.trials]
    best = sweep.best
    # Instability is judged above lr* (the FAQ's "Identifying unstable workloads"): a run under-trained at a low
    # rate is slow, not unstable.
    unstable_from = sweep.unstable_learning_rate
    fig4[name] = {
        "best_learning_rate": sweep.best_learning_rate,
        "best_test_error": None if best is None else _finite(best.metric_value),
        "at_edge_of_feasibility": sweep.at_edge_of_feasibility,
        "unstable_learning_rate": sweep.unstable_learning_rate,
        "infeasible_from": next((t["learning_rate"] for t in trials if not t["feasible"]), None),
        "unstable_from": unstable_from,
        "reference_loss": sweep.reference_loss,
        "trials": trials,
    }
  fig5 = {}
  for variant in VARIANTS:
    trial = next(t for t in sweeps[variant].trials if t.learning_rate == preset.high_learning_rate)
    s = _run_summary(trial, preset.fig5_steps)
    fig5[variant] = {k: s.get(k) for k in ("early_peak_loss", "early_peak_step", "initial_loss",
                                           "label", "recovered", "diagnosis", "final_train_loss")}
    fig5[variant]["early_evidence"] = bool(trial.diagnosis is not None
                                           and trial.diagnosis.early_unstable)
  fig9 = {"unclipped": _run_summary(judge(unstable), preset.fig5_steps)}
  for p, rec in clip_records.items():
    s = _run_summary(judge(rec), preset.fig5_steps)
    s["threshold"] = rec.config.extra["clip_initial_threshold"]
    if rec.result is not None:
      # Threshold fixed for the first clip_window steps: count clipped updates there.
      norms = rec.result.grad_norms[:preset.clip_window]
      if np.isfinite(norms).any():
        c = optstab.summarize_clipping(norms, s["threshold"])
        s.update(fraction_clipped=c.fraction_clipped, clipping_advice=c.advice)
    fig9[f"p{p:g}"] = s
  table = []
  best_err = fig4["stride_1x1"]["best_test_error"]
  bound = None if best_err is None else RESTORED_FACTOR * best_err + RESTORED_SLACK
  base_err = None
  for label, lr, rec in rows:
    s = _run_summary(judge(rec), preset.fig5_steps)
    err = s.get("final_test_error")
    if base_err is None:
      base_err = err if err is not None else 1.0
    if not s.get("feasible") or err is None:
      restored = "no"
    elif bound is not None and err <= bound:
      restored = "yes"
    elif err < base_err:
      restored = "partly"
    else:
      restored = "no"
    table.append({"mitigation": label, "learning_rate": lr, "restored": restored,
                  **{k: s.get(k) for k in ("feasible", "final_test_error", "early_peak_loss",
                                           "max_loss_ratio", "label", "recovered", "reason",
                                           "total_steps")}})
  return {
      "preset": preset.to_dict(),
      "data": {"name": data.name, "train_images": int(len(data.train_labels)),
               "test_images": int(len(data.test_labels)), "image_size": data.image_size},
      "feasibility_rule": RULE.describe(),
      "restored_definition": (
          f"feasible and final test error <= {RESTORED_FACTOR:g} x the stride (1,1) model's "
          f"error at its own lr* + {100 * RESTORED_SLACK:g} points"
          + ("" if bound is None else f" (= {100 * bound:.1f}%)")
          + "; partly: feasible and better than without mitigation"),
      "published": PUBLISHED,
      "figure4": fig4,
      "figure5": fig5,
      "figure9": fig9,
      "mitigations": table,
  }


# ----------------------------------------------------------------------------
# Outputs.


def _write_outputs(preset: Preset, out_dir: str, sweeps, clip_records, unstable,
                   summary: dict[str, Any]) -> dict[str, str]:
  files = {}
  curves = {}
  for name, sweep in sweeps.items():
    errors = [t.result.eval_metrics["error_rate"][-1] if t.result is not None else np.nan
              for t in sweep.trials]
    curves[_pretty(name)] = (sweep.learning_rates, np.asarray(errors, np.float64), sweep.feasible)
  files["fig4"] = plots.plot_stride_error_vs_learning_rate(
      curves, os.path.join(out_dir, "fig4_test_error_vs_lr.png"),
      title=f"WideResNet stride change, Nesterov momentum ({preset.name} preset)")
  losses = {}
  for variant in VARIANTS:
    rec = next(t.record for t in sweeps[variant].trials
               if t.learning_rate == preset.high_learning_rate)
    if rec.result is not None:
      losses[_pretty(variant)] = rec.result.train_loss
  if losses:  # both trials raised: nothing to draw
    files["fig5"] = plots.plot_every_step_loss(
        losses, os.path.join(out_dir, "fig5_loss_first_steps.png"),
        coarse_every=preset.fig5_eval_every, first_steps=preset.fig5_steps,
        title=f"Conv stride (2,2) vs (1,1), learning rate {preset.high_learning_rate:g}")
  norm_curves, thresholds = {}, {}
  if unstable.result is not None:
    norm_curves["no clipping"] = unstable.result.grad_norms
  for p, rec in clip_records.items():
    if rec.result is not None:
      label = f"percentile clip p{p:g}"
      norm_curves[label] = rec.result.grad_norms
      # The threshold in force at each step: the initial one, then the window's percentile.
      thresholds[label] = clipping.thresholds_in_force(
          rec.result.grad_norms, p, window_size=preset.clip_window,
          min_history=preset.clip_window,
          initial_threshold=rec.config.extra["clip_initial_threshold"])
  files["fig9"] = plots.plot_stride_grad_norms(
      norm_curves, thresholds, os.path.join(out_dir, "fig9_grad_norms.png"),
      learning_rate=preset.high_learning_rate)
  files["results"] = os.path.join(out_dir, "results.json")
  summary["files"] = {k: os.path.basename(v) for k, v in files.items()}
  with open(files["results"], "w", encoding="utf-8") as f:
    json.dump(to_jsonable(summary), f, indent=1, allow_nan=False)
  files["report"] = os.path.join(out_dir, "report.md")
  with open(files["report"], "w", encoding="utf-8") as f:
    f.write(render_report(summary))
  return files


def _pretty(name: str) -> str:
  base, _, warm = name.partition("+warmup")
  base = {"standard": "standard (2,2)", "stride_1x1": "stride (1,1)"}[base]
  return base + (f" + warmup {warm}" if warm else "")


def _fmt(x, spec=".3g", none="n/a") -> str:
  return none if x is None else format(x, spec)


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def render_report(s: dict[str, Any]) -> str:
  """The markdown report: our numbers beside the published ones, and verdicts."""
  p = s["preset"]
  pub = s["published"]
  f4 = s["figure4"]
  std, chg = f4["standard"], f4["stride_1x1"]
  warm_key = f"stride_1x1+warmup{p['warmup_steps']}"
  lines = [
      f"# Stride-instability experiment: preset `{p['name']}`",
      "",
      f"{p['description']}.",
      f"Data: {s['data']['name']} ({s['data']['train_images']} train / "
      f"{s['data']['test_images']} test images, {s['data']['image_size']}x"
      f"{s['data']['image_size']}); WRN-{p['depth']}-{p['width']}; standard strides "
      f"{p['standard_strides']}, changed group {p['changed_group']} -> (1,1); "
      f"{p['optimizer']} momentum 0.9, batch {p['batch_size']}, {p['num_steps']} steps of cosine "
      f"decay, L2 {p['weight_decay']:g}; warmup curves prepend {p['warmup_steps']} linear "
      f"warmup steps (the paper: {pub['warmup_steps']} before ~{pub['train_steps']} steps).",
      f"Infeasible: {s['feasibility_rule']}. A mitigation restores training if it is "
      f"{s['restored_definition']}.",
      f"Wall time of the last invocation: {s['wall_seconds']:.0f} s; the trials took "
      f"{s['trial_seconds']:.0f} s in all (summed over every invocation that ran them).",
      f"Seeds: {', '.join(str(x) for x in s.get('seeds', [p['seed']]))}; the tables show seed "
      f"{s.get('seeds', [p['seed']])[0]}, and every verdict below says how many seeds reach it.",
      runner.environment_line(s.get("environment")),
      "Results vary across machines and library versions (float32 reductions, XLA's choices): "
      "a run that sits at the edge of stability can land on either side.",
      "",
      "## Figure 4: test error vs base learning rate",
      "",
      "Final test error; in brackets the run's label when not stable (`classify_run` with "
      "the sweep's context: the trivial loss log(10) and lr*'s final training loss; "
      "infeasible by the rule above). Runs with warmup train warmup + "
      f"{p['num_steps']} steps (the FAQ's warmup is prepended), the others {p['num_steps']}.",
      "",
      "| learning rate | " + " | ".join(_pretty(k) for k in f4) + " |",
      "|---|" + "---|" * len(f4),
  ]
  for i, lr in enumerate(t["learning_rate"] for t in std["trials"]):
    cells = []
    for k in f4:
      t = f4[k]["trials"][i]
      cell = _pct(t.get("final_test_error"))
      if not t["feasible"] or t.get("label") not in (None, STABLE):
        cell += f": {_headline(t)}"
      cells.append(cell)
    lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "| quantity | published (CIFAR-10, WRN) | ours |",
      "|---|---|---|",
      f"| standard: best lr / test error | {pub['standard_best_learning_rate']} / "
      f"{_pct(pub['standard_best_error_rate'])} | {_fmt(std['best_learning_rate'], 'g')} / "
      f"{_pct(std['best_test_error'])} |",
      f"| stride (1,1): best lr / test error | {pub['changed_best_learning_rate']} / "
      f"{_pct(pub['changed_best_error_rate'])} | {_fmt(chg['best_learning_rate'], 'g')} / "
      f"{_pct(chg['best_test_error'])} |",
      f"| stride (1,1): unstable from lr | ~{pub['changed_unstable_from']} | "
      f"{_edge(chg)} |",
      f"| standard: unstable from lr | none up to 1 | "
      f"{_edge(std)} |",
  ]
  if warm_key in f4:
    w = f4[warm_key]
    lines.append(f"| stride (1,1) + warmup: best lr / test error | warmup fixes it at lr 0.1 | "
                 f"{_fmt(w['best_learning_rate'], 'g')} / {_pct(w['best_test_error'])}, "
                 f"unstable from {_fmt(w['unstable_from'], 'g', 'none on the grid')} |")
  f5 = s["figure5"]
  lines += [
      "",
      f"## Figure 5: training loss in the first {p['fig5_steps']} steps at lr "
      f"{p['high_learning_rate']:g}",
      "",
      "| model | initial loss | peak loss (step) | diagnosis |",
      "|---|---|---|---|",
  ]
  for v, d in f5.items():
    lines.append(f"| {_pretty(v)} | {_fmt(d['initial_loss'])} | {_fmt(d['early_peak_loss'])} "
                 f"({d['early_peak_step']}) | {d['diagnosis']} |")
  lines.append(f"| published, stride (1,1) at lr {pub['spike_learning_rate']} | ~2.3 | "
               f"~{pub['spike_peak_loss']:g} (steps {pub['spike_steps']}) | recovers by ~10-20 |")
  f9 = s["figure9"]
  lines += [
      "",
      f"## Figure 9: gradient norms of the stride (1,1) model at lr {p['high_learning_rate']:g}",
      "",
      "| run | threshold | updates clipped | max grad norm | median grad norm | "
      "final test error | peak loss |",
      "|---|---|---|---|---|---|---|",
  ]
  for k, d in f9.items():
    lines.append(f"| {k} | {_fmt(d.get('threshold'))} | {_pct(d.get('fraction_clipped'))} | "
                 f"{_fmt(d.get('max_grad_norm'))} | {_fmt(d.get('median_grad_norm'))} | "
                 f"{_pct(d.get('final_test_error'))} | {_fmt(d.get('early_peak_loss'))} |")
  advice = [d["clipping_advice"] for d in f9.values() if d.get("clipping_advice")]
  if advice:
    lines += ["", f"Clipping check (the FAQ's \"Gradient clipping\"): {advice[0]}"]
  lines += [
      "",
      f"## Mitigations for the stride (1,1) model at lr {p['high_learning_rate']:g}",
      "",
      "| mitigation | lr | feasible | restores training | final test error | "
      "max loss / initial | run label |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in s["mitigations"]:
    lines.append(f"| {r['mitigation']} | {r['learning_rate']:g} | {r['feasible']} | "
                 f"{r['restored']} | {_pct(r['final_test_error'])} | "
                 f"{_fmt(r['max_loss_ratio'])} | {_headline(r)} |")
  lines += ["", "## What reproduced", ""] + [f"- {v}" for v in verdicts(s)]
  lines += ["", "A verdict's seed count says on how many of the seeds the same verdict holds "
            "(each seed is the whole experiment again, with its own initialization and data "
            "order)."]
  lines += ["", "Figures: " + ", ".join(f"`{v}`" for k, v in s.get("files", {}).items()
                                         if v.endswith(".png")), ""]
  return "\n".join(lines)


REPRODUCED, PARTLY, NOT = "REPRODUCED", "PARTLY reproduced", "NOT reproduced"


def _trial_at(sweep: dict[str, Any], lr: float) -> Optional[dict[str, Any]]:
  return next((t for t in sweep["trials"] if t["learning_rate"] == lr), None)


def _headline(t: dict[str, Any]) -> str:
  label = t.get("label") or "n/a"
  if label == EARLY_UNSTABLE:
    label += ", then recovered" if t.get("recovered") else ", did not recover"
  return label + ("" if t.get("feasible") else ", infeasible")


def _edge(sweep: dict[str, Any]) -> str:
  """A sweep's lowest unstable and lowest infeasible rate, as one table cell."""
  unstable = _fmt(sweep["unstable_from"], "g", "none on the grid")
  infeasible = sweep["infeasible_from"]
  return unstable + ("; no rate infeasible" if infeasible is None
                     else f"; infeasible from {infeasible:g}")


def _parity_point(s: dict[str, Any]) -> Optional[tuple[float, int]]:
  """The lowest grid rate (no warmup first) where both models' runs are stable, else where both
  trained: ``(rate, warmup)``."""
  f4, p = s["figure4"], s["preset"]
  warmups = [0] + ([p["warmup_steps"]] if p["warmup_steps"] else [])
  # Both stable if possible: a recovered early instability is not "trained alike".
  for ok in (lambda t: t.get("label") == STABLE and t.get("feasible"), lambda t: t.get("trained")):
    for lr in sorted(t["learning_rate"] for t in f4["standard"]["trials"]):
      for w in warmups:
        suffix = f"+warmup{w}" if w else ""
        pair = [_trial_at(f4[v + suffix], lr) for v in VARIANTS]
        if all(t is not None and ok(t) and t.get("final_test_error") is not None for t in pair):
          return lr, w
  return None


def _two_sided_tolerance(a: float, b: float, n: int) -> float:
  """Two binomial standard errors of the difference of two error rates on ``n`` images."""
  return max(2.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / n), 1.0 / n)


def _verdicts(s: dict[str, Any]) -> list[tuple[str, Optional[str], str]]:
  """``(key, status, sentence)`` per published claim; status ``None``: a list, not a claim."""
  f4 = s["figure4"]
  p = s["preset"]
  n_test = s["data"]["test_images"]
  std, chg = f4["standard"], f4["stride_1x1"]
  out = []

  point = _parity_point(s)
  if point is None:
    out.append(("parity", NOT, "NOT tested: the stride change does not hurt at low rates -- there "
                "is no grid rate where both models train (every pair has a failed-to-train, "
                "diverged or unrecovered run)."))
  else:
    lr, w = point
    suffix = f"+warmup{w}" if w else ""
    a, b = _trial_at(f4["standard" + suffix], lr), _trial_at(f4["stride_1x1" + suffix], lr)
    ea, eb = a["final_test_error"], b["final_test_error"]
    tol = _two_sided_tolerance(ea, eb, n_test)
    where = f"lr {lr:g}" + (f" with {w} warmup steps" if w else "")
    out.append(("parity", REPRODUCED if abs(eb - ea) <= tol else NOT,
                ("REPRODUCED" if abs(eb - ea) <= tol else "NOT reproduced")
                + f": the stride change does not hurt where both models train ({where}, the "
                f"lowest such grid point): test error {_pct(eb)} with it ({_headline(b)}), "
                f"{_pct(ea)} without ({_headline(a)}); the difference {100 * (eb - ea):+.1f} "
                f"points is {'within' if abs(eb - ea) <= tol else 'outside'} the two-sided "
                f"tolerance +-{100 * tol:.1f} (two binomial standard errors on {n_test} test "
                "images)."))

  cu, su = chg["unstable_from"], std["unstable_from"]
  if cu is not None and (su is None or su > cu):
    first = _trial_at(chg, cu)
    out.append(("unstable_from", REPRODUCED,
                f"REPRODUCED: above its lr*, the stride (1,1) model is unstable from lr {cu:g} "
                f"({_headline(first)}; published ~0.02), where the standard model is "
                + (f"not unstable at any grid rate above its lr* ({std['best_learning_rate']:g})."
                   if su is None else
                   f"still stable (it becomes unstable only from {su:g}).")))
  else:
    out.append(("unstable_from", NOT,
                "NOT reproduced: above their lr*, the stride (1,1) model is not unstable at "
                f"lower rates than the standard one on this grid (from {_fmt(cu, 'g', 'none')} "
                f"vs {_fmt(su, 'g', 'none')}; the preset may be too small to show it)."))
  sb, cb = std["best_learning_rate"], chg["best_learning_rate"]
  if sb is not None and cb is not None:
    out.append(("best_lr", REPRODUCED if cb < sb else NOT,
                ("REPRODUCED" if cb < sb else "NOT reproduced") +
                f": lr* of the stride (1,1) model ({cb:g}) is below the standard model's "
                f"({sb:g}); published 0.01 vs 0.2."))
  warm_key = f"stride_1x1+warmup{p['warmup_steps']}"
  if warm_key in f4:
    t = _trial_at(f4[warm_key], p["high_learning_rate"])
    base = _trial_at(chg, p["high_learning_rate"])
    better = t["feasible"] and (not base["feasible"] or (
        t.get("final_test_error") is not None and base.get("final_test_error") is not None
        and t["final_test_error"] < base["final_test_error"]))
    status = (REPRODUCED if better and t.get("label") == STABLE else
              PARTLY if better and t.get("trained") else NOT)
    why = {REPRODUCED: "", NOT: "",
           PARTLY: " -- but the warmup run itself is not stable"}[status]
    out.append(("warmup", status,
                f"{status}: {p['warmup_steps']} warmup steps make lr {p['high_learning_rate']:g} "
                f"trainable for the stride (1,1) model{why}: test error "
                f"{_pct(t.get('final_test_error'))} with warmup ({_headline(t)}) vs "
                f"{_pct(base.get('final_test_error'))} without ({_headline(base)}). Budgets "
                f"differ by the warmup, as the FAQ's warmup recipe prescribes: {t['total_steps']} steps with "
                f"warmup ({p['warmup_steps']} + {p['num_steps']}), {base['total_steps']} without."))
  f5 = s["figure5"]
  c, d = f5["stride_1x1"], f5["standard"]
  if c["early_peak_loss"] is not None and c["initial_loss"]:
    ratio = c["early_peak_loss"] / c["initial_loss"]
    # The spike is early-instability evidence even when a worse label wins
    # (a run that spikes and then stalls is failed-to-train).
    spiked = bool(c.get("early_evidence")) and not d.get("early_evidence")

    def kind(x):
      extra = " with early-unstable evidence" if x.get("early_evidence") and x["label"] != EARLY_UNSTABLE else ""
      return x["label"] + extra

    out.append(("spike", REPRODUCED if spiked else NOT,
                ("REPRODUCED" if spiked else "NOT reproduced") +
                f": the every-step view shows an early spike only in the stride (1,1) model "
                f"({kind(c)} vs {kind(d)}): at lr {p['high_learning_rate']:g} its loss "
                f"peaks at {c['early_peak_loss']:.3g} at step {c['early_peak_step']} "
                f"({ratio:.3g} x the initial loss; published ~70, ~30 x, at steps 3-8) while the "
                f"standard model peaks at {_fmt(d['early_peak_loss'])}."))
  rows = s["mitigations"][1:]
  for verdict, text in (("yes", "restore training"), ("partly", "help only partly"),
                        ("no", "do not help")):
    names = [r["mitigation"] + ("" if r.get("label") in (None, STABLE) else f" ({r['label']})")
             for r in rows if r["restored"] == verdict]
    out.append((f"mitigations_{verdict}", None,
                f"Mitigations that {text}: " + (", ".join(names) or "none") + "."))
  return out


def _verdict_support(summaries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
  """Each verdict of the first seed, with how many seeds reach the same status."""
  per_seed = [{key: status for key, status, _ in _verdicts(s)} for s in summaries]
  out = []
  for key, status, text in _verdicts(summaries[0]):
    agree = [seed for seed, st in zip(seeds, per_seed) if status is not None and st.get(key) == status]
    out.append({"key": key, "status": status, "text": text,
                "seeds_agreeing": agree if status is not None else None,
                "statuses": [st.get(key) for st in per_seed]})
  return out


def verdicts(s: dict[str, Any]) -> list[str]:
  """Plain sentences: which published claims our numbers reproduce, and on how many seeds."""
  support = s.get("verdicts") or _verdict_support([s], s.get("seeds", [s["preset"]["seed"]]))
  seeds = s.get("seeds", [s["preset"]["seed"]])
  out = []
  for v in support:
    text = v["text"]
    if v["status"] is not None:
      others = sorted({st for st in v["statuses"] if st != v["status"]} - {None})
      text += (f" [{len(v['seeds_agreeing'])} of {len(seeds)} seed(s): "
               f"{', '.join(str(x) for x in v['seeds_agreeing'])}"
               + (f"; the others: {', '.join(others)}" if others else "") + "]")
    out.append(text)
  return out
