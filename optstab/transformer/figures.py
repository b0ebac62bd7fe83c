"""The Transformer experiment's figures: the playbook's Figures 6, 7 and 8.

Every figure is one of the library's (``optstab.plots``), drawn from the
sweeps, the Figure 6 runs and the long checks.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from optstab import plots
from optstab.diagnosis import ConfirmationRun, SweepResult
from optstab.trial import TrialRecord
from optstab.transformer.presets import Preset
from optstab.transformer.report import PRETTY
from optstab.transformer.summary import SMOOTHING, STALL_MARGIN, running_mean

__all__ = ["write_figures"]


def write_figures(preset: Preset, out_dir: str, sweeps: dict[str, SweepResult],
                  fig6: dict[int, TrialRecord], long_runs: Sequence[ConfirmationRun],
                  summary: dict[str, Any]) -> dict[str, str]:
  """Figures 8, 7a, 6 and 7b into ``out_dir``: name -> path (6 and 7b only when they have curves)."""
  files = {}
  level = summary["trivial_levels"]["eval_unigram_loss"]
  curves = {}
  for name, sweep in sweeps.items():
    trials = summary["figure8"]["curves"][name]["trials"]
    label = PRETTY[name] + (f" ({preset.warmup_steps} warmup steps)" if "warmup" in name else "")
    curves[label] = (sweep.learning_rates, [t.get("final_eval_loss") for t in trials],
                     sweep.feasible, [t["failed_to_train"] for t in trials])
  files["fig8"] = plots.plot_loss_vs_learning_rate(
      curves, os.path.join(out_dir, "fig8_loss_vs_lr.png"), reference=level,
      reference_label="unigram level (learned nothing)",
      ylabel=f"validation loss at step {preset.num_steps} (nats)",
      title=f"Post-LN vs Pre-LN, with and without warmup ({preset.name} preset)")
  post = sweeps["post_ln"]
  # The squares follow the report's rule (the unigram level), as Figure 8 and the tables do; a
  # run that rule says trained while the detector labels it otherwise shows that label.
  files["fig7a"] = plots.plot_learning_rate_sweep(
      post.learning_rates, post.metric_values, post.feasible,
      os.path.join(out_dir, "fig7a_post_ln_sweep.png"), best_learning_rate=post.best_learning_rate,
      labels=post.labels,
      failed_to_train=[t["failed_to_train"]
                       for t in summary["figure8"]["curves"]["post_ln"]["trials"]],
      failed_rule=(f"validation loss >= unigram level {level:.3g} - {STALL_MARGIN:g} nats"),
      metric_name=f"validation loss at step {preset.num_steps}",
      title="Post-LN learning-rate sweep (Figure 7a)")
  warm = {}
  for w, rec in fig6.items():
    if rec.result is not None:
      s = summary["figure6"]["runs"][str(w)]
      warm[f"warmup {w}" + (" (failed to train)" if s["failed_to_train"] else "")] = \
          running_mean(rec.result.train_loss)
  if warm:
    files["fig6"] = plots.plot_loss_curves(
        warm, os.path.join(out_dir, "fig6_warmup_sweep.png"), log_x=True, log_y=False,
        ylabel=f"training loss (running mean, {SMOOTHING} steps)",
        title=f"Post-LN, peak learning rate {preset.figure6_learning_rate:g} (Figure 6)")
  long_curves = {}
  best = post.best
  if best is not None and best.result is not None:
    long_curves[f"lr* = {best.learning_rate:.3g}"] = running_mean(best.result.train_loss)
  for run in long_runs:
    if run.result is not None:
      long_curves[f"{run.factor:g} x lr* = {run.learning_rate:.3g}"] = \
          running_mean(run.result.train_loss)
  if long_runs:  # lr* alone is not Figure 7b: a preset without long checks draws none
    factors = " and ".join(f"{r.factor:g}x" for r in long_runs)
    files["fig7b"] = plots.plot_loss_curves(
        long_curves, os.path.join(out_dir, "fig7b_long_checks.png"), log_y=False,
        ylabel=f"training loss (running mean, {SMOOTHING} steps)",
        title=f"Post-LN long checks at {factors} lr* (Figure 7b)")
  return files
