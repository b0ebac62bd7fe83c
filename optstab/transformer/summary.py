"""The Transformer experiment's numbers: every trial summarized for the report.

``summarize`` turns the sweeps, the Figure 6 runs, the long checks and the
diagnoses into the dictionary ``results.json`` holds; the report and the
verdicts read only that. The outcome rule "failed to train" (a final
validation loss within ``STALL_MARGIN`` nats of the unigram level) is this
demo's own and uses no detector.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from optstab.diagnosis import FeasibilityRule, classify_run, check_feasibility
from optstab.harness.report import finite
from optstab.trial import TrialRecord
from optstab.transformer.presets import PUBLISHED, Preset

__all__ = ["RULE", "STALL_MARGIN", "SMOOTHING", "CURVE_ORDER", "running_mean", "run_summary",
           "summarize", "published_order_holds", "seed_table"]

#: The curves in the published order of their best rates (Figure 8):
#: Post-LN < Post-LN + warmup < Pre-LN <= Pre-LN + warmup.
CURVE_ORDER = ("post_ln", "post_ln_warmup", "pre_ln", "pre_ln_warmup")

#: How trials are judged infeasible (the toolkit's default rule, spelled out).
RULE = FeasibilityRule(max_loss_ratio=10.0, scope="any")

#: A run failed to train when its final validation loss is within this many nats
#: of the unigram level (trained quick-preset runs end ~1 nat below it).
STALL_MARGIN = 0.1

#: Window (steps) of the running mean drawn in the per-step loss figures.
SMOOTHING = 10


def running_mean(x: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
  """Trailing running mean (the first ``window - 1`` entries average what exists)."""
  x = np.asarray(x, np.float64)
  c = np.cumsum(np.where(np.isfinite(x), x, 0.0))
  n = np.arange(1, x.size + 1)
  lagged = np.concatenate([np.zeros(window), c[:-window]]) if x.size > window else np.zeros(x.size)
  count = np.minimum(n, window)
  mean = (c - lagged[:x.size]) / count
  return np.where(np.isfinite(x), mean, np.nan)


def _mid_training_rise(loss: np.ndarray) -> Optional[dict[str, Any]]:
  """The largest rise of the smoothed loss above its running minimum after the first 10%.

  A number, not a verdict: ``classify_run`` gives the label.
  """
  smooth = running_mean(loss)
  start = max(SMOOTHING, loss.size // 10)
  if loss.size <= start + 1 or not np.isfinite(smooth[start:]).any():
    return None
  best_so_far = np.fmin.accumulate(np.where(np.isfinite(smooth), smooth, np.inf))
  rise = smooth - best_so_far
  rise[:start] = 0.0
  step = int(np.nanargmax(rise))
  return {"rise": finite(rise[step]), "step": step + 1, "from": finite(best_so_far[step])}


def run_summary(record: TrialRecord, trivial_eval_loss: float,
                 trivial_loss: float) -> dict[str, Any]:
  """Every number of one trial the report uses."""
  config = record.config
  out: dict[str, Any] = {"learning_rate": config.learning_rate,
                         "warmup_steps": config.warmup_steps,
                         "total_steps": config.total_steps,
                         "norm_position": config.extra.get("norm_position"),
                         "seconds": record.seconds}
  if record.result is None:
    out.update(feasible=False, reason=record.error, failed_to_train=True)
    return out
  r = record.result
  verdict = check_feasibility(r, RULE)
  diag = classify_run(r.train_loss, r.grad_norms, trivial_loss=trivial_loss)
  final_eval = finite(r.eval_metrics["loss"][-1])
  failed = final_eval is None or final_eval >= trivial_eval_loss - STALL_MARGIN
  out.update(
      feasible=verdict.feasible, reason=verdict.reason,
      final_eval_loss=final_eval,
      best_eval_loss=finite(np.nanmin(r.eval_metrics["loss"])),
      eval_steps=[int(s) for s in r.eval_steps],
      eval_loss=[finite(v) for v in r.eval_metrics["loss"]],
      initial_train_loss=finite(r.train_loss[0]),
      final_train_loss_smoothed=finite(running_mean(r.train_loss)[-1]),
      max_grad_norm=finite(np.nanmax(r.grad_norms)),
      failed_to_train=bool(failed),
      label=diag.label, diagnosis=diag.summary(),
  )
  return out


def _diagnosis_summary(d, out_dir: str) -> dict[str, Any]:
  rec = d.recommendation
  return {
      "verdict": d.verdict,
      "best_learning_rate": d.sweep.best_learning_rate,
      "fixes": [{"fix": f.family.name, "kind": f.family.kind, "status": f.status,
                 "reason": f.reason} for f in d.fixes],
      "recommendation": None if rec is None else {
          "fix": rec.family.name, "kind": rec.family.kind, "reason": rec.reason,
          "learning_rate": rec.chosen.learning_rate,
          "warmup_steps": rec.chosen.config.warmup_steps},
      "findings": [f"{f.topic}: {f.text}" for f in d.findings],
      "files": {k: os.path.relpath(v, out_dir) for k, v in d.files.items()},
  }


def _margin(trials: list[dict[str, Any]]) -> Optional[float]:
  """How much lower the best rate's final validation loss is than the runner-up's."""
  losses = sorted(t["final_eval_loss"] for t in trials
                  if t["feasible"] and t.get("final_eval_loss") is not None)
  return losses[1] - losses[0] if len(losses) > 1 else None


def _trains_up_to(trials: list[dict[str, Any]]) -> Optional[float]:
  """The largest grid rate at which this run and every lower-rate run trained (feasible, not stalled)."""
  best = None
  for t in trials:
    if not t["feasible"] or t["failed_to_train"]:
      break
    best = t["learning_rate"]
  return best


def summarize(preset: Preset, text, sweeps, fig6, long_runs, diagnoses, trivial,
               out_dir: str) -> dict[str, Any]:
  level = trivial["eval_unigram_loss"]
  trivial_loss = trivial["train_unigram_entropy"]
  fig8 = {}
  for name, sweep in sweeps.items():
    trials = []
    for t in sweep.trials:
      s = run_summary(t.record, level, trivial_loss)
      # The sweep's label: judged with the sweep's context (lr*'s final loss level).
      s.update(feasible=t.feasible, reason=t.reason, label=t.label, diagnosis=t.describe())
      trials.append(s)
    best = sweep.best
    grid = [float(lr) for lr in sweep.learning_rates]
    fig8[name] = {
        "grid": grid,
        "best_learning_rate": sweep.best_learning_rate,
        "best_eval_loss": None if best is None else finite(best.metric_value),
        "at_edge_of_feasibility": sweep.at_edge_of_feasibility,
        "at_grid_top": sweep.at_grid_top,
        "at_grid_bottom": best is not None and sweep.best_learning_rate == min(grid),
        "failed_to_train_from": next((t["learning_rate"] for t in trials
                                      if t["failed_to_train"]), None),
        "trains_up_to": _trains_up_to(trials),
        "best_margin": _margin(trials),
        "trials": trials,
    }
  fig6_runs = {w: run_summary(rec, level, trivial_loss) for w, rec in fig6.items()}
  fig7b = {"base_learning_rate": sweeps["post_ln"].best_learning_rate, "runs": []}
  for run in long_runs:
    s = run_summary(run.record, level, trivial_loss)
    s.update(factor=run.factor, confirmation_label=run.label,
             mid_training_rise=None if run.result is None else _mid_training_rise(
                 run.result.train_loss))
    fig7b["runs"].append(s)
  return {
      "preset": preset.to_dict(),
      "corpus": dict(text.facts, name=text.name),
      "trivial_loss": trivial["train_unigram_entropy"],
      "trivial_levels": trivial,
      "stall_rule": (f"failed to train: final validation loss >= the unigram level of the "
                     f"evaluation windows ({level:.3f} nats) - {STALL_MARGIN} nats"),
      "feasibility_rule": RULE.describe(),
      "published": PUBLISHED,
      "figure8": {
          "step": preset.num_steps,
          "best_learning_rate": {k: v["best_learning_rate"] for k, v in fig8.items()},
          "best_eval_loss": {k: v["best_eval_loss"] for k, v in fig8.items()},
          "trains_up_to": {k: v["trains_up_to"] for k, v in fig8.items()},
          "curves": fig8,
      },
      "figure6": {
          "learning_rate": preset.figure6_learning_rate,
          "final_eval_loss": {str(w): s.get("final_eval_loss") for w, s in fig6_runs.items()},
          "failed_to_train": {str(w): s.get("failed_to_train") for w, s in fig6_runs.items()},
          "runs": {str(w): s for w, s in fig6_runs.items()},
      },
      "figure7b": fig7b,
      "diagnosis": {k: _diagnosis_summary(d, out_dir) for k, d in diagnoses.items()},
  }


def published_order_holds(best: dict[str, Optional[float]]) -> Optional[bool]:
  """Whether best rates follow Post-LN < Post-LN + warmup < Pre-LN <= Pre-LN + warmup.

  ``None`` when a curve has no feasible rate (the order cannot be judged).
  """
  b = [best.get(k) for k in CURVE_ORDER]
  if any(x is None for x in b):
    return None
  return b[0] < b[1] < b[2] <= b[3]


def seed_table(summaries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
  """Every seed's best rate per curve, each curve's spread, and the seeds where the order holds.

  Args:
    summaries: one :func:`summarize` result per seed.
    seeds: the seeds, in the same order.

  Returns:
    ``best_learning_rate`` (curve -> one rate or ``None`` per seed),
    ``spread`` (curve -> ``[lowest, highest]`` of the seeds' rates, or ``None``),
    ``at_grid_edge`` (curve -> per seed, whether lr* is its grid's lowest or
    highest rate), ``order_holds`` (per seed: ``True``, ``False`` or ``None``
    when not judged) and ``order_holds_on`` (the seeds where it holds).
  """
  if len(summaries) != len(seeds):
    raise ValueError(f"one summary per seed: got {len(summaries)} summaries for "
                     f"{len(seeds)} seeds.")
  best = {k: [s["figure8"]["best_learning_rate"][k] for s in summaries] for k in CURVE_ORDER}
  spread = {}
  for k, rates in best.items():
    found = [r for r in rates if r is not None]
    spread[k] = [min(found), max(found)] if found else None
  edge = {k: [bool(s["figure8"]["curves"][k]["at_grid_top"]
                   or s["figure8"]["curves"][k].get("at_grid_bottom"))
              for s in summaries] for k in CURVE_ORDER}
  holds = [published_order_holds(s["figure8"]["best_learning_rate"]) for s in summaries]
  return {"seeds": list(seeds), "best_learning_rate": best, "spread": spread,
          "at_grid_edge": edge, "order_holds": holds,
          "order_holds_on": [seed for seed, h in zip(seeds, holds) if h]}
