"""The diagnosis's verdict and the unstable rate the fixes start from, decided from judged runs.

Verdicts: ``"stable"`` (no evidence of instability), ``"early-unstable"``,
``"mid-training-unstable"``, ``"unstable"`` (lr* sits at the edge of
feasibility, or a grid rate above lr* or the short check at 2 x lr* diverged or
failed to train, but no run showed which kind), ``"no-feasible-rate"``. The
long checks at 5 x and 10 x lr* count only by the spikes they show: failing to
train that far above lr* is what any model does.
"""

from __future__ import annotations

from typing import Optional, Sequence

from optstab.diagnosis.confirm import ConfirmationRun
from optstab.diagnosis.detectors import (DIVERGED, EARLY_UNSTABLE, FAILED_TO_TRAIN,
                                         MID_TRAINING_UNSTABLE, STABLE)
from optstab.diagnosis.sweep import SweepResult

__all__ = ["VERDICTS", "UNSTABLE", "NO_FEASIBLE_RATE", "decide_verdict", "unstable_learning_rate"]

UNSTABLE, NO_FEASIBLE_RATE = "unstable", "no-feasible-rate"
VERDICTS = (STABLE, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, UNSTABLE, NO_FEASIBLE_RATE)


def decide_verdict(sweep: SweepResult, runs: Sequence[ConfirmationRun]) -> str:
  """One of ``VERDICTS`` from the sweep and the confirmation runs above lr*."""
  if sweep.best is None:
    return NO_FEASIBLE_RATE

  def shows(run, kind, flag):
    # A diverged or failed run still tells which kind of instability it showed.
    d = run.diagnosis
    return run.label == kind or (run.label in (DIVERGED, FAILED_TO_TRAIN) and d is not None
                                 and getattr(d, flag))

  if any(shows(r, EARLY_UNSTABLE, "early_unstable") for r in runs):
    return EARLY_UNSTABLE
  if any(shows(r, MID_TRAINING_UNSTABLE, "mid_training_unstable") for r in runs):
    return MID_TRAINING_UNSTABLE
  # A long check (5 x, 10 x lr*) that merely fails to train or diverges shows no
  # instability: any model does at a high enough rate. Its spikes count (above).
  if sweep.at_edge_of_feasibility or any(r.unstable for r in runs if r.name != "long check"):
    return UNSTABLE
  return STABLE


def unstable_learning_rate(
    sweep: SweepResult, runs: Sequence[ConfirmationRun] = ()
) -> Optional[tuple[float, str]]:
  """The smallest rate above lr* seen unstable (the playbook's unstable_base_learning_rate).

  Candidates: the sweep's unstable rates above lr* (infeasible, or labelled
  anything but stable: failed-to-train included), and every confirmation run
  above lr* that is infeasible or not stable (e.g. the short check at 2 x lr*
  going unstable early even if it recovers).

  Args:
    sweep: the learning-rate sweep.
    runs: confirmation runs (``rates_above_best``, ``short_check``, ``long_check``).

  Returns:
    ``(rate, where it was seen)``, or ``None`` if no rate above lr* was unstable.
  """
  best = sweep.best_learning_rate
  if best is None:
    return None
  found = []
  if sweep.unstable_learning_rate is not None:
    trial = next(t for t in sweep.trials if t.learning_rate == sweep.unstable_learning_rate)
    found.append((trial.learning_rate, f"in the sweep: {trial.headline}"
                  + ("" if trial.feasible else ", infeasible")))
  for run in runs:
    if run.learning_rate > best and run.unstable:
      found.append((run.learning_rate, f"{run.name} at {run.factor:.3g} x lr*: {run.label}"
                    + ("" if run.feasible else ", infeasible")))
  return min(found, key=lambda f: f[0]) if found else None
