"""One seed's numbers: every trial of the stride experiment, summarized for the report.

``summarize`` turns one seed's sweeps, clipping runs and mitigation rows
(``(kind, label, learning rate, record)``, the unmitigated run first) into
the dictionary ``results.json`` holds (``figure4``, ``figure5``,
``figure9``, ``mitigations``); the report and the verdicts read only that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import optstab
from optstab.diagnosis import EARLY_UNSTABLE, STABLE, FeasibilityRule, SweepResult, SweepTrial
from optstab.harness.report import finite
from optstab.trial import TrialRecord
from optstab.wrn.presets import PUBLISHED, VARIANTS, Preset

__all__ = ["RULE", "RESTORED_FACTOR", "RESTORED_SLACK", "run_summary", "summarize"]

#: How trials are judged infeasible (the toolkit's default rule, spelled out).
RULE = FeasibilityRule(max_loss_ratio=10.0, scope="any")

#: A mitigation "restores training" when its trial is feasible and its final
#: test error is at most RESTORED_FACTOR x the changed model's error at its own
#: lr* plus RESTORED_SLACK (absolute); "partly" when feasible and better than
#: the unmitigated trial; "no" otherwise.
RESTORED_FACTOR = 2.0
RESTORED_SLACK = 0.01


def run_summary(trial: SweepTrial, fig5_steps: int) -> dict[str, Any]:
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
      final_test_error=finite(r.eval_metrics["error_rate"][-1]),
      best_test_error=finite(np.nanmin(r.eval_metrics["error_rate"])),
      final_test_loss=finite(r.eval_metrics["loss"][-1]),
      initial_loss=finite(loss[0]),
      final_train_loss=finite(loss[-1]),
      early_peak_loss=finite(finite_early.max()) if finite_early.size else None,
      early_peak_step=peak_step,
      max_loss_ratio=finite(np.nanmax(loss) / loss[0]) if np.isfinite(loss[0]) else None,
      max_grad_norm=finite(np.nanmax(r.grad_norms)),
      median_grad_norm=finite(np.nanmedian(r.grad_norms)),
  )
  return out


def _trained(trial: SweepTrial) -> bool:
  """Feasible, and stable or early-unstable then recovered (not failed-to-train or diverged)."""
  return trial.feasible and (trial.label == STABLE
                             or (trial.label == EARLY_UNSTABLE and bool(trial.recovered)))


def summarize(preset: Preset, sweeps: dict[str, SweepResult], unstable: TrialRecord,
               clip_records: dict, rows: list, data) -> dict[str, Any]:
  judge = sweeps["stride_1x1"].judge  # the changed model's runs, in its sweep's context
  fig4 = {}
  for name, sweep in sweeps.items():
    trials = [run_summary(t, preset.fig5_steps) for t in sweep.trials]
    best = sweep.best
    # Instability is judged above lr* (the FAQ's "Identifying unstable workloads"): a run under-trained at a low
    # rate is slow, not unstable.
    unstable_from = sweep.unstable_learning_rate
    fig4[name] = {
        "best_learning_rate": sweep.best_learning_rate,
        "best_test_error": None if best is None else finite(best.metric_value),
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
    s = run_summary(trial, preset.fig5_steps)
    fig5[variant] = {k: s.get(k) for k in ("early_peak_loss", "early_peak_step", "initial_loss",
                                           "label", "recovered", "diagnosis", "final_train_loss")}
    fig5[variant]["early_evidence"] = bool(trial.diagnosis is not None
                                           and trial.diagnosis.early_unstable)
  fig9 = {"unclipped": run_summary(judge(unstable), preset.fig5_steps)}
  for p, rec in clip_records.items():
    s = run_summary(judge(rec), preset.fig5_steps)
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
  for kind, label, lr, rec in rows:
    s = run_summary(judge(rec), preset.fig5_steps)
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
    table.append({"kind": kind, "mitigation": label, "learning_rate": lr, "restored": restored,
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
