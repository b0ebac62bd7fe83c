"""The diagnosis report: plain-language findings with evidence, as markdown, JSON and PNGs.

``make_diagnosis`` turns the outcome of the FAQ's procedure (a sweep, the
confirmation runs, an optional warmup search) into a ``Diagnosis``: a verdict
and a list of findings, each a sentence that cites its numbers (rates, steps,
ratios) with the same numbers as structured evidence. ``write_report`` writes
``diagnosis.md``, ``diagnosis.json`` and the figures (via ``optstab.plots``,
which takes plain arrays) into an output folder.

Verdicts: ``"stable"`` (no evidence of instability), ``"early-unstable"``,
``"mid-training-unstable"``, ``"unstable"`` (lr* sits at the edge of
feasibility, or a run above lr* diverged or failed to train, but no run showed
which kind), ``"no-feasible-rate"``. A run's label is never restated in other
words: every sentence about a run is its ``describe()`` (label first, then its
evidence and feasibility), so sentences cannot contradict the label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from optstab import clipping, plots
from optstab.diagnosis.confirm import ConfirmationRun
from optstab.diagnosis.detectors import (
    DIVERGED,
    EARLY_UNSTABLE,
    FAILED_TO_TRAIN,
    MID_TRAINING_UNSTABLE,
    STABLE,
)
from optstab.diagnosis.sweep import PathLike, SweepResult
from optstab.diagnosis.trial import to_jsonable
from optstab.diagnosis.warmup_tuner import WarmupTuningResult

__all__ = ["Finding", "Diagnosis", "make_diagnosis", "write_report", "VERDICTS"]

VERDICTS = (STABLE, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, "unstable", "no-feasible-rate")


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
  """The outcome of the FAQ's instability diagnosis.

  Attributes:
    verdict: one of ``VERDICTS``.
    findings: the findings, in reading order.
    sweep: the learning-rate sweep.
    above_best: the sweep's curves at the rates just above lr*, labelled.
    short_check: the ~500-step run at 2 x lr* evaluating every step.
    long_checks: the runs at 5 x and 10 x lr*.
    warmup: the warmup search, if one ran.
    files: name -> path of every file ``write_report`` wrote.
  """

  verdict: str
  findings: tuple[Finding, ...]
  sweep: SweepResult
  above_best: tuple[ConfirmationRun, ...] = ()
  short_check: Optional[ConfirmationRun] = None
  long_checks: tuple[ConfirmationRun, ...] = ()
  warmup: Optional[WarmupTuningResult] = None
  files: dict[str, str] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return to_jsonable({
        "verdict": self.verdict,
        "findings": [f.to_dict() for f in self.findings],
        "sweep": self.sweep.to_dict(),
        "above_best": [r.to_dict() for r in self.above_best],
        "short_check": None if self.short_check is None else self.short_check.to_dict(),
        "long_checks": [r.to_dict() for r in self.long_checks],
        "warmup": None if self.warmup is None else self.warmup.to_dict(),
        "files": {k: os.path.basename(v) for k, v in self.files.items()},
    })

  def to_markdown(self) -> str:
    lines = ["# Optimization-instability diagnosis", "", f"**Verdict: {self.verdict}.**", ""]
    for finding in self.findings:
      lines += [f"- **{finding.topic}.** {finding.text}"]
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


def _verdict(sweep: SweepResult, runs: list[ConfirmationRun]) -> str:
  if sweep.best is None:
    return "no-feasible-rate"

  def shows(run, kind, flag):
    # A diverged or failed run still tells which kind of instability it showed.
    d = run.diagnosis
    return run.label == kind or (run.label in (DIVERGED, FAILED_TO_TRAIN) and d is not None
                                 and getattr(d, flag))

  if any(shows(r, EARLY_UNSTABLE, "early_unstable") for r in runs):
    return EARLY_UNSTABLE
  if any(shows(r, MID_TRAINING_UNSTABLE, "mid_training_unstable") for r in runs):
    return MID_TRAINING_UNSTABLE
  if sweep.at_edge_of_feasibility or any(r.unstable for r in runs):
    return "unstable"
  return STABLE


def make_diagnosis(
    sweep: SweepResult,
    *,
    above_best: tuple[ConfirmationRun, ...] = (),
    short_check: Optional[ConfirmationRun] = None,
    long_checks: tuple[ConfirmationRun, ...] = (),
    warmup: Optional[WarmupTuningResult] = None,
    clip_percentile: float = 90.0,
    notes: Sequence[str] = (),
) -> Diagnosis:
  """Builds the verdict and the findings from the procedure's results.

  Args:
    sweep: the learning-rate sweep.
    above_best: ``rates_above_best``'s runs.
    short_check: ``short_check``'s run.
    long_checks: ``long_check``'s runs.
    warmup: ``tune_warmup``'s result.
    clip_percentile: percentile of lr*'s gradient norms suggested as clipping
      threshold (FAQ S5: 90).
    notes: extra sentences (e.g. why a step was skipped), listed before the
      next steps.

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
      f"{len(trials)} learning rates from {rates.min():.3g} to {rates.max():.3g} were trained for "
      f"{base.total_steps} steps each; {len(trials) - len(infeasible)} feasible, "
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
  verdict = _verdict(sweep, runs)
  if best is None:
    findings.append(Finding(
        "No feasible rate",
        "Every trial was infeasible: even the smallest rate diverged or raised. Extend the grid "
        "downward, and check the training function on a tiny rate first.",
    ))
    return Diagnosis(verdict, tuple(findings), sweep)
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
    findings.append(Finding("Rate above lr*", run.describe(), run.to_dict()))
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
  if warmup is not None:
    findings.extend(_warmup_findings(warmup, base))
  steps = {
      STABLE: "No instability found at the rates tried: no fix is needed.",
      EARLY_UNSTABLE: "Early instability: try, in the FAQ's order, learning-rate warmup, then "
                      "gradient clipping, then another optimizer (e.g. Adam), then architecture "
                      "best practices (residual connections, normalization as x + Norm(f(x)), "
                      "zero-initialized residual branches); lower the learning rate only as a "
                      "last resort.",
      MID_TRAINING_UNSTABLE: "Mid-training instability: try gradient clipping first (threshold at "
                             "the 90th percentile of the norm), then another optimizer, then "
                             "architecture best practices; lower the learning rate last.",
      "unstable": "lr* is limited by instability: try warmup, then gradient clipping, then another "
                  "optimizer and architecture best practices; lower the learning rate last.",
  }
  text = steps[verdict]
  if warmup is not None and warmup.recommendation is None and verdict != STABLE:
    if warmup.warmup_steps is None:
      why = ("no warmup tried trained at the higher base rates (warmup fixes instability caused "
             "by high curvature early in training, not a curvature that stays high)")
    elif warmup.comparisons:
      c = warmup.comparisons[0]
      why = (f"the warmup that trained, prepended to lr*'s schedule, {c.outcome.replace('worse', 'did worse than')}"
             f"{'' if c.outcome != 'does not train' else ' at full length, unlike'} the "
             f"baseline (best {c.metric} {c.run_value:.4g} vs {c.baseline_value:.4g})")
    else:
      why = "the warmup that trained was not compared with the baseline"
    text = (f"Warmup did not help: {why}. "
            + text.replace("learning-rate warmup, then gradient clipping", "gradient clipping")
            .replace("try warmup, then gradient clipping", "try gradient clipping"))
  elif warmup is not None and warmup.recommendation is not None and verdict != STABLE:
    rec = warmup.recommendation
    text = (f"Use the warmup: {rec.warmup_steps} steps at base rate {rec.base_learning_rate:.4g} "
            f"({rec.outcome} the baseline). If instability remains, " + text[0].lower() + text[1:])
  findings.append(Finding("Next steps", text))
  return Diagnosis(verdict, tuple(findings), sweep, tuple(above_best), short_check,
                   tuple(long_checks), warmup)


def _warmup_findings(warmup: WarmupTuningResult, base) -> list[Finding]:
  findings = []
  for search in warmup.searches:
    head = (f"At base rate {search.base_learning_rate:.4g} ({search.factor:g} x the unstable rate "
            f"{warmup.unstable_base_learning_rate:.4g}; each trial is W warmup steps then 2 W at "
            "the constant base rate)")
    found = search.shortest_training_trial
    if found is not None:
      text = (f"{head}, the shortest warmup that trains is {found.warmup_steps} steps "
              f"({found.trial.describe()}).")
    else:
      text = (f"{head}, no warmup tried ({', '.join(str(w) for w in warmup.grid)} steps) "
              "trains.")
    shorter = [t for t in search.trials if not t.trains
               and (found is None or t.warmup_steps < found.warmup_steps)]
    text += "".join(f" Warmup {t.warmup_steps}: {t.trial.describe()}." for t in shorter[:4])
    findings.append(Finding("Warmup search", text, search.to_dict()))
  for comparison in warmup.comparisons:
    findings.append(Finding("Warmup vs baseline", comparison.describe() + ".",
                            comparison.to_dict()))
  rec = warmup.recommendation
  if rec is not None:
    text = (f"Recommended: prepend {rec.warmup_steps} warmup steps to the baseline schedule "
            f"(optstab.prepend_warmup; the {base.num_steps}-step baseline becomes "
            f"{base.num_steps + rec.warmup_steps} steps) at base rate {rec.base_learning_rate:.4g}: "
            f"it {rec.outcome} the baseline by best-checkpoint selection.")
    if warmup.advice:
      text += f" {warmup.advice}"
    findings.append(Finding("Warmup result", text, {"warmup_steps": rec.warmup_steps,
                                                    "base_learning_rate": rec.base_learning_rate,
                                                    "outcome": rec.outcome,
                                                    "advice": warmup.advice}))
  elif warmup.warmup_steps is not None and not warmup.comparisons:
    findings.append(Finding(
        "Warmup result",
        f"{warmup.warmup_steps} warmup steps train at base rate {warmup.base_learning_rate:.4g}, "
        "but were not compared with the baseline (no baseline sweep was given), so nothing is "
        "recommended yet: prepend them to the baseline's schedule and compare with "
        "best-checkpoint selection."))
  else:
    why = ("no warmup tried trains at the higher base rates" if warmup.warmup_steps is None else
           "prepended to the baseline's schedule, the warmup that trains does not beat or match "
           "the baseline at lr*")
    findings.append(Finding("Warmup result", f"Warmup did not help: {why}."))
  return findings


def _plot_all(d: Diagnosis, out_dir: str) -> dict[str, str]:
  files: dict[str, str] = {}
  sweep = d.sweep
  files["learning-rate sweep"] = plots.plot_learning_rate_sweep(
      sweep.learning_rates, sweep.metric_values, sweep.feasible,
      os.path.join(out_dir, "sweep.png"), best_learning_rate=sweep.best_learning_rate,
      metric_name=f"{sweep.reduce} {sweep.metric}", labels=sweep.labels,
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
      title="Training loss at lr* and the rates just above it")
  if d.short_check is not None and d.short_check.result is not None:
    files["short check, every step"] = plots.plot_every_step_loss(
        d.short_check.result.train_loss, os.path.join(out_dir, "short_check_every_step.png"),
        coarse_every=sweep.base_config.eval_every,
        title=f"Short check at {d.short_check.factor:g} x lr* = {d.short_check.learning_rate:.3g}")
  long_curves = {f"lr* = {best.learning_rate:.3g}": best.result.train_loss}
  for run in d.long_checks:
    if run.result is not None:
      long_curves[f"{run.factor:g} x lr* = {run.learning_rate:.3g}"] = run.result.train_loss
  if len(long_curves) > 1:
    files["long checks"] = plots.plot_loss_curves(
        long_curves, os.path.join(out_dir, "long_checks_loss.png"),
        title="Training loss at " + " and ".join(f"{r.factor:g} x" for r in d.long_checks) + " lr*")
  norms = best.result.grad_norms
  if np.isfinite(norms).any():
    threshold = clipping.clip_threshold(norms[np.isfinite(norms)], 90.0)
    files["gradient norm at lr*"] = plots.plot_grad_norms(
        norms, os.path.join(out_dir, "grad_norms.png"), threshold=threshold,
        steps=np.arange(1, norms.size + 1), title=f"Unclipped gradient norm at lr* = {best.learning_rate:.3g}")
    files["gradient norm histogram at lr*"] = plots.plot_grad_norm_histogram(
        norms, os.path.join(out_dir, "grad_norm_histogram.png"), threshold=threshold)
  if d.warmup is not None:
    for search in d.warmup.searches:
      done = [t for t in search.trials if t.record.result is not None]
      if not done:
        continue
      name = f"warmup sweep at {search.base_learning_rate:.3g}"
      files[name] = plots.plot_warmup_sweep(
          [t.warmup_steps for t in done], [t.record.result.train_loss for t in done],
          [t.trains for t in done],
          os.path.join(out_dir, f"warmup_sweep_{search.factor:g}x.png"),
          base_learning_rate=search.base_learning_rate, labels=[t.label for t in done])
    ran = [c for c in d.warmup.comparisons if c.run.result is not None]
    if ran:
      compared = {f"baseline: lr* = {best.learning_rate:.3g}": best.result.train_loss}
      for c in ran:
        compared[f"{c.warmup_steps} warmup steps, base {c.base_learning_rate:.3g} ({c.outcome})"] = (
            c.run.result.train_loss)
      files["warmup vs baseline"] = plots.plot_loss_curves(
          compared, os.path.join(out_dir, "warmup_vs_baseline_loss.png"),
          title="Warmup prepended to the baseline's schedule, against the baseline")
  return files


def write_report(diagnosis: Diagnosis, out_dir: PathLike) -> Diagnosis:
  """Writes ``diagnosis.md``, ``diagnosis.json`` and the figures into ``out_dir``.

  Args:
    diagnosis: from ``make_diagnosis``.
    out_dir: the output folder (created if missing).

  Returns:
    The diagnosis with ``files`` filled in (name -> path).
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  files = _plot_all(diagnosis, out_dir)
  files["markdown"] = os.path.join(out_dir, "diagnosis.md")
  files["json"] = os.path.join(out_dir, "diagnosis.json")
  diagnosis = dataclasses.replace(diagnosis, files=files)
  with open(files["json"], "w", encoding="utf-8") as f:
    json.dump(diagnosis.to_dict(), f, indent=2, allow_nan=False)
  with open(files["markdown"], "w", encoding="utf-8") as f:
    f.write(diagnosis.to_markdown())
  return diagnosis
