"""The diagnosis report: the procedure's decisions rendered as markdown, JSON and PNGs.

``make_diagnosis`` turns the outcome of the procedure (a sweep, the
confirmation runs, the fix ladder's results, the verdict) into a
``Diagnosis``: the verdict, a fix table and a list of findings, each a
sentence that cites its numbers with the same numbers as structured evidence.
Nothing is decided here: labels, verdicts and fix verdicts come in as data. A
run's label is never restated in other words: every sentence about a run is
its ``describe()``, so sentences cannot contradict the label.
``write_report`` writes ``diagnosis.md``, ``diagnosis.json`` and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from optstab import clipping, plots
from optstab.diagnosis import fixes as fix_ladder
from optstab.diagnosis.confirm import ConfirmationRun
from optstab.diagnosis.detectors import EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, STABLE
from optstab.diagnosis.fixes import FixResult
from optstab.diagnosis.plan import Plan
from optstab.diagnosis.sweep import TRAIN_LOSS, PathLike, SweepResult
from optstab.trial import to_jsonable
from optstab.diagnosis.verdict import UNSTABLE, VERDICTS, decide_verdict

__all__ = ["Finding", "Diagnosis", "make_diagnosis", "write_report", "VERDICTS"]


@dataclasses.dataclass(frozen=True)
class Finding:
  """One finding: a topic, a plain-language sentence, and its evidence."""

  topic: str
  text: str
  evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return {"topic": self.topic, "text": self.text, "evidence": to_jsonable(self.evidence)}


@dataclasses.dataclass(frozen=True)
class Diagnosis:
  """The outcome of the playbook's instability diagnosis.

  Attributes:
    verdict: one of ``VERDICTS``.
    findings: the findings, in reading order.
    sweep: the learning-rate sweep.
    above_best: the sweep's curves at the rates just above lr*, labelled.
    short_check: the short run at 2 x lr*, its loss looked at every step.
    long_checks: the runs at 5 x and 10 x lr*.
    fixes: the fix ladder's rows, in the ladder's order (``recommendation``:
      the first that helps).
    plan: the rounds that ran, and any dropped for the budget.
    clip_percentile: the percentile of lr*'s gradient norms quoted as the
      clipping threshold.
    files: name -> path of every file ``write_report`` wrote.
  """

  verdict: str
  findings: tuple[Finding, ...]
  sweep: SweepResult
  above_best: tuple[ConfirmationRun, ...] = ()
  short_check: Optional[ConfirmationRun] = None
  long_checks: tuple[ConfirmationRun, ...] = ()
  fixes: tuple[FixResult, ...] = ()
  plan: Optional[Plan] = None
  clip_percentile: float = 90.0
  files: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def recommendation(self) -> Optional[FixResult]:
    """The first fix of the ladder that helps, or ``None``."""
    return next((f for f in self.fixes if f.helps), None)

  def to_dict(self) -> dict[str, Any]:
    rec = self.recommendation
    return to_jsonable({
        "verdict": self.verdict,
        "recommendation": None if rec is None else rec.family.name,
        "findings": [f.to_dict() for f in self.findings],
        "sweep": self.sweep.to_dict(),
        "above_best": [r.to_dict() for r in self.above_best],
        "short_check": None if self.short_check is None else self.short_check.to_dict(),
        "long_checks": [r.to_dict() for r in self.long_checks],
        "fixes": [f.to_dict() for f in self.fixes],
        "plan": None if self.plan is None else self.plan.to_dict(),
        "files": {k: os.path.basename(v) for k, v in self.files.items()},
    })

  def fix_table(self) -> list[str]:
    """The fix table as markdown lines (empty when no fix was considered)."""
    if not self.fixes:
      return []
    metric = f"best {self.sweep.metric}"
    lines = ["| fix | rates tried | highest rate that trains | "
             f"{metric}: fix vs lr* for equal steps (seeds) | same rate without the fix | "
             "verdict |",
             "|---|---|---|---|---|---|"]
    for f in self.fixes:
      rates = ", ".join(f"{r:.3g}" for r in f.rates_tried) or "-"
      top = "-" if f.highest_training_rate is None else f"{f.highest_training_rate:.3g}"
      c = f.comparison
      values = "-" if c is None else (
          f"{c.fix_mean:.4g} vs {c.baseline_mean:.4g} ({len(c.seeds)} seeds, noise {c.noise:.2g})")
      lines.append(f"| {f.family.name} | {rates} | {top} | {values} | {_without_cell(c)} | "
                   f"**{f.status}**: {f.reason} |")
    best = self.sweep.best
    if best is not None:
      lines.append(f"| lower learning rate (last resort) | - | {best.learning_rate:.3g} (lr*) | - | - | "
                   "the fallback: train at lr*, which the sweep found best |")
    return lines

  def to_markdown(self) -> str:
    lines = ["# Optimization-instability diagnosis", "", f"**Verdict: {self.verdict}.**", ""]
    for finding in self.findings:
      lines += [f"- **{finding.topic}.** {finding.text}"]
    table = self.fix_table()
    if table:
      lines += ["", "## Fixes tried", ""] + table
    figures = [(k, v) for k, v in self.files.items() if v.endswith(".png")]
    if figures:
      lines += ["", "## Figures", ""]
      for name, path in figures:
        lines += [f"### {name}", "", f"![{name}]({os.path.basename(path)})", ""]
    trials = self.sweep.trials
    lines += ["", "## Sweep trials", "",
              f"| learning rate | feasible | {self.sweep.metric} | label | reason |",
              "|---|---|---|---|---|"]
    for t in trials:
      value = f"{t.metric_value:.4g}" if math.isfinite(t.metric_value) else "-"
      lines += [f"| {t.learning_rate:.4g} | {'yes' if t.feasible else 'no'} | {value} | "
                f"{t.headline} | {t.reason or ''} |"]
    return "\n".join(lines) + "\n"


def _counts(labels) -> list[tuple[str, int]]:
  counts: dict[str, int] = {}
  for label in labels:
    counts[label] = counts.get(label, 0) + 1
  return sorted(counts.items(), key=lambda kv: -kv[1])


def _runs(*groups) -> list[ConfirmationRun]:
  out = []
  for group in groups:
    if group is None:
      continue
    out.extend([group] if isinstance(group, ConfirmationRun) else list(group))
  return out


def make_diagnosis(
    sweep: SweepResult,
    *,
    above_best: tuple[ConfirmationRun, ...] = (),
    short_check: Optional[ConfirmationRun] = None,
    long_checks: tuple[ConfirmationRun, ...] = (),
    fixes: Sequence[FixResult] = (),
    clip_percentile: float = 90.0,
    notes: Sequence[str] = (),
    plan: Optional[Plan] = None,
    verdict: Optional[str] = None,
    logged_steps: Optional[str] = None,
) -> Diagnosis:
  """Renders the procedure's results as a verdict, a fix table and findings.

  Args:
    sweep: the learning-rate sweep.
    above_best: ``rates_above_best``'s runs.
    short_check: the short check's run.
    long_checks: the long checks' runs.
    fixes: the fix ladder's results, in the ladder's order.
    clip_percentile: percentile of lr*'s gradient norms quoted as the
      clipping threshold (playbook: 90).
    notes: extra sentences (e.g. why a step was skipped), listed before the
      next steps.
    plan: the rounds that ran and those dropped for the budget.
    verdict: the procedure's verdict (default: ``decide_verdict`` of the runs).
    logged_steps: for runs read from logs, which steps their training-loss
      points are (e.g. ``"100 points, steps 10 to 1000, every 10 steps"``):
      the sentences then count logged points, not trained steps.

  Returns:
    A ``Diagnosis`` (``files`` empty until ``write_report``).
  """
  findings: list[Finding] = []
  trials = sweep.trials
  rates = sweep.learning_rates
  infeasible = [t for t in trials if not t.feasible]
  unstable = [t for t in trials if t.unstable]
  base = sweep.base_config
  context = ""
  if sweep.trivial_loss is not None:
    context += f" Trivial loss level: {sweep.trivial_loss:.4g}."
  if sweep.reference_loss is not None:
    context += f" Reference (lr*'s final training-loss level): {sweep.reference_loss:.4g}."
  findings.append(Finding(
      "Sweep",
      f"{len(trials)} learning rates from {rates.min():.3g} to {rates.max():.3g} "
      + (f"were trained for {base.total_steps} steps each" if logged_steps is None
         else f"were read from logs, the training loss at {logged_steps}")
      + f"; {len(trials) - len(infeasible)} feasible, "
      f"{len(infeasible)} infeasible ({sweep.rule.describe()}); labels: "
      + ", ".join(f"{n} {label}" for label, n in _counts(t.label for t in trials)) + "."
      + context
      + "".join(f" At {t.learning_rate:.4g}: {t.describe()}." for t in unstable[:6])
      + (f" ({len(unstable) - 6} more not stable.)" if len(unstable) > 6 else ""),
      {"learning_rates": rates.tolist(), "feasible": sweep.feasible.tolist(),
       "metric_values": sweep.metric_values.tolist(), "labels": list(sweep.labels),
       "reasons": [t.reason for t in trials], "trivial_loss": sweep.trivial_loss,
       "reference_loss": sweep.reference_loss},
  ))
  if sweep.ignored_store_lines:
    findings.append(Finding(
        "Trial store",
        f"{sweep.ignored_store_lines} line(s) of trials.jsonl were not trial records (corrupt, "
        "half-written or foreign) and were skipped; their trials, if any, ran again.",
        {"ignored_store_lines": sweep.ignored_store_lines},
    ))
  best = sweep.best
  runs = _runs(above_best, short_check, long_checks)
  verdict = decide_verdict(sweep, runs) if verdict is None else verdict
  if best is None:
    findings.append(Finding(
        "No feasible rate",
        "Every trial was infeasible: even the smallest rate diverged or raised. Extend the grid "
        "downward, and check the training function on a tiny rate first.",
    ))
    return Diagnosis(verdict, tuple(findings), sweep, plan=plan, clip_percentile=clip_percentile)
  metric = f"{'final' if sweep.reduce == 'final' else 'best'} {sweep.metric}"
  findings.append(Finding(
      "Best learning rate",
      f"lr* = {best.learning_rate:.4g} ({metric} {best.metric_value:.4g}).",
      {"best_learning_rate": best.learning_rate, "metric_value": best.metric_value},
  ))
  i = sweep.best_index
  if sweep.at_edge_of_feasibility:
    nxt = trials[i + 1]
    findings.append(Finding(
        "Edge of feasibility",
        f"lr* sits at the edge of feasibility: the next rate of the grid, {nxt.learning_rate:.4g}, "
        f"is {'infeasible' if not nxt.feasible else 'not stable'} ({nxt.describe()}). The FAQ "
        "reads this as a sign that optimization instability limits the learning rate (a run "
        "that stalls or fails to train counts like one that blows up); fixing it usually "
        "improves training.",
        {"next_learning_rate": nxt.learning_rate, "reason": nxt.reason, "label": nxt.label},
    ))
  elif sweep.at_grid_top:
    findings.append(Finding(
        "Grid too small",
        f"lr* = {best.learning_rate:.4g} is the largest rate tried, so the sweep cannot tell "
        "whether instability limits it: extend the grid to higher rates.",
    ))
  else:
    nxt = trials[i + 1]
    findings.append(Finding(
        "Not at the edge",
        f"The next rate, {nxt.learning_rate:.4g}, is still feasible and stable ({sweep.metric} "
        f"{nxt.metric_value:.4g}): lr* is not at the edge of feasibility.",
        {"next_learning_rate": nxt.learning_rate, "metric_value": nxt.metric_value},
    ))
  for run in above_best:
    findings.append(Finding("Rate above lr*", run.describe(logged_steps), run.to_dict()))
  if short_check is not None:
    text = short_check.describe()
    if short_check.label == EARLY_UNSTABLE and short_check.recovered:
      text += (" This is the FAQ's 'unstable early, then recovers' pattern (slow but stable "
               "training), which evaluating rarely misses; warmup is the first fix to try.")
    findings.append(Finding("Short check", text, short_check.to_dict()))
  for run in long_checks:
    text = run.describe()
    if run.diagnosis is not None and any(s.step > run.diagnosis.early_steps
                                         for s in run.diagnosis.loss_spikes):
      text += " A sudden loss increase after a steady decline: the FAQ's Figure 7b sign of instability."
    findings.append(Finding("Long check", text, run.to_dict()))
  norms = best.result.grad_norms
  finite = norms[np.isfinite(norms)]
  if finite.size:
    # Outliers of runs that diverged are just the divergence: count the others.
    outliers = [o for r in runs if r.diagnosis is not None and r.diagnosis.first_nonfinite_step is None
                for o in r.diagnosis.grad_norm_outliers]
    threshold = clipping.clip_threshold(finite, clip_percentile)
    text = (f"At lr* the gradient norm ranged from {finite.min():.3g} to {finite.max():.3g} "
            f"(median {np.median(finite):.3g}); its {clip_percentile:g}th percentile, "
            f"{threshold:.3g}, is the FAQ's starting clipping threshold.")
    if outliers:
      top = max(outliers, key=lambda o: o.ratio)
      text += (f" The runs above lr* that did not diverge had {len(outliers)} gradient-norm "
               f"outlier step(s), the "
               f"largest {top.ratio:.3g} x its recent median at step {top.step}: outliers can "
               "cause mid-training instability, which clipping targets.")
    findings.append(Finding("Gradient norms", text,
                            {"clip_threshold": threshold, "percentile": clip_percentile,
                             "num_outliers": len(outliers)}))
  for note in notes:
    findings.append(Finding("Note", note))
  if plan is not None and plan.dropped:
    findings.append(Finding(
        "Budget",
        f"{plan.steps_run} training steps ran within the budget of {plan.budget}; dropped: "
        + "; ".join(r.describe() for r in plan.dropped) + ".",
        plan.to_dict()))
  findings.extend(_fix_findings(fixes, best))
  findings.append(Finding("Next steps", _next_steps(verdict, fixes, best)))
  return Diagnosis(verdict, tuple(findings), sweep, tuple(above_best), short_check,
                   tuple(long_checks), tuple(fixes), plan, clip_percentile)


_LADDER_ADVICE = {
    EARLY_UNSTABLE: "Early instability: the playbook's fixes, in order, are learning-rate warmup, "
                    "gradient clipping, another optimizer (e.g. Adam), then architecture best "
                    "practices (residual connections, normalization as x + Norm(f(x)), "
                    "zero-initialized residual branches); lower the learning rate only as a last "
                    "resort.",
    MID_TRAINING_UNSTABLE: "Mid-training instability: the playbook's fixes, in order, are gradient "
                           "clipping (threshold at the 90th percentile of the norm), another "
                           "optimizer, then architecture best practices; lower the learning rate "
                           "last.",
    UNSTABLE: "lr* is limited by instability: the playbook's fixes, in order, are warmup, gradient "
              "clipping, another optimizer and architecture best practices; lower the learning "
              "rate last.",
}


def _without_cell(c: Optional[fix_ladder.SeedComparison]) -> str:
  """The fix table's cell for the chosen rate trained without the fix."""
  if c is None or not c.without_trains:
    return "-"
  if c.without_trains_on_every_seed:
    return f"{c.without_mean:.4g}"
  return f"trained on {sum(c.without_trains)} of {len(c.without_trains)} seeds"


def _fix_findings(fixes: Sequence[FixResult], best) -> list[Finding]:
  findings = []
  for f in fixes:
    text = f"{f.family.name}: {f.status}: {f.reason}."
    c = f.comparison
    if f.family.kind == fix_ladder.WARMUP and c is not None and f.chosen is not None:
      text += (f" The playbook's own comparison, which gives warmup its extra steps: "
               f"{f.chosen.config.total_steps} steps with warmup reach best {c.metric} "
               f"{c.fix_values[0]:.4g} against {c.playbook_baseline_value:.4g} for lr* at its "
               f"{best.config.total_steps}-step budget (seed {c.seeds[0]}).")
    fraction = None if f.chosen is None else f.chosen.clip_fraction
    if fraction is not None:
      text += f" The clipped run clipped {fraction:.0%} of its steps."
    if f.longer_run is not None and f.helps:
      text += (f" Trained {f.longer_run.config.total_steps} steps instead of "
               f"{f.chosen.config.total_steps} (seed {f.longer_run.config.seed}), it still "
               f"trains: {f.longer_run.trial.describe()}.")
    findings.append(Finding("Fix", text, f.to_dict()))
  return findings


def _how_to_apply(rec: FixResult) -> str:
  """The recommended fix as something to do, with its numbers."""
  config, kind = rec.chosen.config, rec.family.kind
  at = f"train at {config.learning_rate:.4g}"
  if kind == fix_ladder.WARMUP:
    return f"prepend {config.warmup_steps} warmup steps (optstab.prepend_warmup) and {at}"
  if kind == fix_ladder.CLIPPING:
    return f"clip the global gradient norm at {config.clip_norm:.3g} (optax.clip_by_global_norm) and {at}"
  if kind == fix_ladder.SKIP_SPIKES:
    return f"wrap the optimizer in optstab.skip_spikes and {at}"
  if kind == fix_ladder.OPTIMIZER:
    return f"switch to {config.optimizer} and {at}"
  return (f"switch the model to {rec.chosen.fix.name} "
          f"({dict(rec.chosen.fix.changes.get('extra', {}))}) and {at}")


def _next_steps(verdict: str, fixes: Sequence[FixResult], best) -> str:
  if verdict == STABLE:
    return "No instability found at the rates tried: no fix is needed."
  rec = next((f for f in fixes if f.helps), None)
  if rec is not None:
    return f"Use {rec.family.name}: {_how_to_apply(rec)}. It {rec.status}: {rec.reason}."
  advice = _LADDER_ADVICE.get(verdict, "")
  if not fixes:
    return advice
  tried = [f for f in fixes if f.status == fix_ladder.DOES_NOT_HELP]
  return (("No fix tried helped (" + "; ".join(f"{f.family.name}: {f.reason}" for f in tried)
           + "). " if tried else "No fix could be tried. ")
          + f"Train at lr* = {best.learning_rate:.4g}, or try what was not tried. " + advice)


def _titled(title: str, name: Optional[str]) -> str:
  """``title``, prefixed with the model's name when the diagnosis was given one."""
  return title if name is None else f"{name}: {title}"


def _metric_name(sweep) -> str:
  """What the sweep ranks rates by, as the y axis names it: an evaluation metric is not the
  training loss (the detector's labels read the training loss; the ranking reads this)."""
  if sweep.metric == TRAIN_LOSS:
    return f"{sweep.reduce} training loss"
  return f"{sweep.reduce} evaluation {sweep.metric}"


def _failed_rule(sweep) -> str:
  """The detector's failed-to-train rule, as the sweep applied it, in a few words."""
  upper = "the trivial level" if sweep.trivial_loss is not None else "its initial level"
  if sweep.reference_loss is not None:
    return (f"training loss closes < {sweep.thresholds.min_progress_fraction:.0%} of the gap "
            f"from {upper} to lr*'s")
  return f"training loss not clearly below {upper}"


def _plot_all(d: Diagnosis, out_dir: str, name: Optional[str] = None) -> dict[str, str]:
  files: dict[str, str] = {}
  sweep = d.sweep
  files["learning-rate sweep"] = plots.plot_learning_rate_sweep(
      sweep.learning_rates, sweep.metric_values, sweep.feasible,
      os.path.join(out_dir, "sweep.png"), best_learning_rate=sweep.best_learning_rate,
      metric_name=_metric_name(sweep), labels=sweep.labels, failed_rule=_failed_rule(sweep),
      title=_titled("Learning-rate sweep", name),
  )
  best = sweep.best
  if best is None:
    return files
  curves = {f"lr* = {best.learning_rate:.3g}": best.result.train_loss}
  for run in d.above_best:
    if run.result is not None:
      curves[f"lr = {run.learning_rate:.3g}"] = run.result.train_loss
  files["rates above lr*"] = plots.plot_loss_curves(
      curves, os.path.join(out_dir, "above_best_loss.png"),
      title=_titled("Training loss at lr* and the rates just above it", name))
  if d.short_check is not None and d.short_check.result is not None:
    files["short check, every step"] = plots.plot_every_step_loss(
        d.short_check.result.train_loss, os.path.join(out_dir, "short_check_every_step.png"),
        coarse_every=sweep.base_config.eval_every,
        title=_titled(f"Short check at {d.short_check.factor:g} x lr* = "
                      f"{d.short_check.learning_rate:.3g}", name))
  long_curves = {f"lr* = {best.learning_rate:.3g}": best.result.train_loss}
  for run in d.long_checks:
    if run.result is not None:
      long_curves[f"{run.factor:g} x lr* = {run.learning_rate:.3g}"] = run.result.train_loss
  if len(long_curves) > 1:
    files["long checks"] = plots.plot_loss_curves(
        long_curves, os.path.join(out_dir, "long_checks_loss.png"),
        title=_titled("Training loss at " + " and ".join(f"{r.factor:g} x" for r in d.long_checks)
                      + " lr*", name))
  norms = best.result.grad_norms
  if np.isfinite(norms).any():
    threshold = clipping.clip_threshold(norms[np.isfinite(norms)], d.clip_percentile)
    files["gradient norm at lr*"] = plots.plot_grad_norms(
        norms, os.path.join(out_dir, "grad_norms.png"), threshold=threshold,
        steps=np.arange(1, norms.size + 1),
        title=_titled(f"Unclipped gradient norm at lr* = {best.learning_rate:.3g}", name))
    files["gradient norm histogram at lr*"] = plots.plot_grad_norm_histogram(
        norms, os.path.join(out_dir, "grad_norm_histogram.png"), threshold=threshold,
        title=_titled("Gradient norms over all steps at lr*", name))
  searched = [f for f in d.fixes if f.trials]
  if searched:
    reference = {f"lr* = {best.learning_rate:.3g}, {best.config.total_steps} steps (sweep)":
                 best.result.train_loss}
    # Colour: which fix; line style: which run of it (the same kinds for every fix).
    fix_runs = {}
    for f in searched:
      shown = f.chosen if f.chosen is not None else max(f.trials, key=lambda t: t.learning_rate)
      runs = {}
      if shown.result is not None:
        runs["with the fix (the verified rate, else the highest tried)"] = (
            shown.result.train_loss)
      if f.longer_run is not None and f.longer_run.result is not None:
        runs["with the fix, trained longer"] = f.longer_run.result.train_loss
      without = None if f.comparison is None else f.comparison.without_trial
      if without is not None and without.result is not None:
        runs["same rate without the fix"] = without.result.train_loss
      baseline = None if f.comparison is None else f.comparison.baseline_trial
      if baseline is not None and baseline.result is not None:
        runs[f"lr* = {best.learning_rate:.3g}, the fix's steps"] = baseline.result.train_loss
      longer = ("" if f.longer_run is None or f.longer_run.result is None
                else f", longer {f.longer_run.config.total_steps}")
      fix_runs[f"{shown.fix.name}, lr {shown.learning_rate:.3g} ({shown.config.total_steps} "
               f"steps{longer}): {f.status}"] = runs
    files["fixes"] = plots.plot_fix_curves(
        reference, fix_runs, os.path.join(out_dir, "fixes_loss.png"),
        title=_titled("Training loss with each fix tried", name))
  return files


def write_report(diagnosis: Diagnosis, out_dir: PathLike, *,
                 name: Optional[str] = None) -> Diagnosis:
  """Writes ``diagnosis.md``, ``diagnosis.json`` and the figures into ``out_dir``.

  Args:
    diagnosis: from ``make_diagnosis``.
    out_dir: the output folder (created if missing).
    name: the model or workload diagnosed, named in the figures' titles.

  Returns:
    The diagnosis with ``files`` filled in (name -> path).
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  files = _plot_all(diagnosis, out_dir, name)
  files["markdown"] = os.path.join(out_dir, "diagnosis.md")
  files["json"] = os.path.join(out_dir, "diagnosis.json")
  diagnosis = dataclasses.replace(diagnosis, files=files)
  with open(files["json"], "w", encoding="utf-8") as f:
    json.dump(diagnosis.to_dict(), f, indent=2, allow_nan=False)
  with open(files["markdown"], "w", encoding="utf-8") as f:
    f.write(diagnosis.to_markdown())
  return diagnosis
