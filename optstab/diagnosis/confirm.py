"""Confirmation runs: is the best learning rate limited by instability? (S2)

After a sweep finds lr*, the FAQ double-checks in three ways:

* ``rates_above_best``: look at the training-loss curves of the rates just
  above lr* (already in the sweep, no new trials): if the loss goes up during
  training, fixing the instability usually improves training;
* ``short_check``: a short run (about 500 steps) at 2 x lr*, evaluating every
  step, because models that go unstable early and then recover are missed by
  evaluation schedules that evaluate rarely;
* ``long_check``: full-length runs at 5 x and 10 x lr*: a sudden loss increase
  after a steady decline (Figure 7b) means instability.

Each run is labelled by ``classify_run`` (stable / early-unstable /
mid-training-unstable, with the loss spikes and gradient-norm outliers as
evidence) and judged by the sweep's ``FeasibilityRule``. Runs are recorded in
the same store as the sweep, so re-running resumes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from optstab import _validation
from optstab.diagnosis.detectors import DetectorThresholds, RunDiagnosis, classify_run
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.store import RecordView, TrialRecord, TrialStore
from optstab.diagnosis.sweep import PathLike, SweepResult, judge, run_trials
from optstab.diagnosis.trial import TrialFn

__all__ = ["ConfirmationRun", "rates_above_best", "short_check", "long_check"]


@dataclasses.dataclass(frozen=True)
class ConfirmationRun(RecordView):
  """One confirmation run and what it shows.

  Attributes:
    name: ``"above lr*"``, ``"short check"`` or ``"long check"``.
    factor: its learning rate as a multiple of lr*.
    record: the trial record (result or error).
    feasible: by the sweep's feasibility rule.
    reason: why it is infeasible, if it is.
    diagnosis: ``classify_run`` of its training loss and gradient norms
      (``None`` if the training function raised).
  """

  name: str
  factor: float
  record: TrialRecord
  feasible: bool
  reason: Optional[str]
  diagnosis: Optional[RunDiagnosis]

  @property
  def label(self) -> str:
    """The run's instability kind; ``"error"`` if the training function raised."""
    return "error" if self.diagnosis is None else self.diagnosis.label

  @property
  def unstable(self) -> bool:
    """Infeasible, or any instability evidence."""
    return not self.feasible or self.label != "stable"

  def describe(self) -> str:
    """One sentence with the evidence."""
    every = "step" if self.config.eval_every == 1 else f"{self.config.eval_every} steps"
    head = (f"{self.name} at {self.factor:.3g} x lr* = {self.learning_rate:.4g} "
            f"({self.config.total_steps} steps, evaluating every {every})")
    if self.diagnosis is None:
      return f"{head}: the training function raised {self.record.error}."
    text = f"{head}: {self.diagnosis.summary()}"
    if not self.feasible:
      text += f"; infeasible: {self.reason}"
    return text + "."

  def to_dict(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "factor": self.factor,
        "learning_rate": self.learning_rate,
        "total_steps": self.config.total_steps,
        "eval_every": self.config.eval_every,
        "feasible": self.feasible,
        "reason": self.reason,
        "error": self.record.error,
        "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
        "summary": self.describe(),
    }


def _confirm(name: str, factor: float, record: TrialRecord, sweep: SweepResult,
             rule: Optional[FeasibilityRule], thresholds: DetectorThresholds) -> ConfirmationRun:
  rule = sweep.rule if rule is None else rule
  verdict = judge(record, rule, sweep.metric, sweep.mode, sweep.reduce)
  diagnosis = None
  if record.result is not None:
    diagnosis = classify_run(record.result.train_loss, record.result.grad_norms, thresholds)
  return ConfirmationRun(name, float(factor), record, verdict.feasible, verdict.reason, diagnosis)


def _best(sweep: SweepResult):
  best = sweep.best
  if best is None:
    raise ValueError(
        "the sweep found no feasible learning rate, so there is no lr* to confirm; "
        "extend the grid to smaller rates."
    )
  return best


def rates_above_best(
    sweep: SweepResult,
    *,
    count: int = 2,
    thresholds: Optional[DetectorThresholds] = None,
) -> tuple[ConfirmationRun, ...]:
  """Labels the training-loss curves of the ``count`` grid rates just above lr*.

  No trial is run: these are the sweep's own trials.

  Args:
    sweep: a finished learning-rate sweep.
    count: how many rates above lr* to look at.
    thresholds: detector thresholds (default ``DetectorThresholds()``).

  Returns:
    One ``ConfirmationRun`` per rate (fewer if lr* is near the grid's top).
  """
  best = _best(sweep)
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  return tuple(
      _confirm("above lr*", t.learning_rate / best.learning_rate, t.record, sweep, None, thresholds)
      for t in sweep.above_best(count)
  )


def short_check(
    train_fn: TrialFn,
    sweep: SweepResult,
    *,
    factor: float = 2.0,
    num_steps: int = 500,
    rule: Optional[FeasibilityRule] = None,
    thresholds: Optional[DetectorThresholds] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
) -> ConfirmationRun:
  """The FAQ's early-instability check: ~500 steps at 2 x lr*, evaluating every step.

  The run copies lr*'s configuration (its warmup and schedule shape included)
  with ``learning_rate = factor * lr*``, ``num_steps`` and ``eval_every=1``.

  Args:
    train_fn: the user's training function.
    sweep: a finished learning-rate sweep (it must have a feasible lr*).
    factor: multiple of lr* (FAQ: 2).
    num_steps: length of the run (FAQ: about 500).
    rule: feasibility rule (default: the sweep's).
    thresholds: detector thresholds (default ``DetectorThresholds()``).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.

  Returns:
    A ``ConfirmationRun``; ``diagnosis.label == "early-unstable"`` (with
    ``diagnosis.recovered``) flags the FAQ's "unstable early, then recovers".
  """
  _validation.check_positive("factor", factor)
  _validation.check_positive_int("num_steps", num_steps)
  best = _best(sweep)
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  config = best.config.replace(
      learning_rate=factor * best.learning_rate, num_steps=num_steps, eval_every=1
  )
  (record,) = run_trials(train_fn, [config], out_dir=out_dir, store=store, progress=progress,
                         desc="short check")
  return _confirm("short check", factor, record, sweep, rule, thresholds)


def long_check(
    train_fn: TrialFn,
    sweep: SweepResult,
    *,
    factors: Sequence[float] = (5.0, 10.0),
    num_steps: Optional[int] = None,
    rule: Optional[FeasibilityRule] = None,
    thresholds: Optional[DetectorThresholds] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
) -> tuple[ConfirmationRun, ...]:
  """The FAQ's Figure-7b check: full-length runs at 5 x and 10 x lr*.

  Args:
    train_fn: the user's training function.
    sweep: a finished learning-rate sweep (it must have a feasible lr*).
    factors: multiples of lr* (FAQ: 5 and 10).
    num_steps: length of each run (default: the sweep's ``num_steps``).
    rule: feasibility rule (default: the sweep's).
    thresholds: detector thresholds (default ``DetectorThresholds()``).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.

  Returns:
    One ``ConfirmationRun`` per factor; ``diagnosis.loss_spikes`` holds the
    sudden increases (step, size, duration, recovered).
  """
  factors = tuple(_validation.check_sequence("factors", factors))
  if not factors:
    raise ValueError("factors must hold at least one multiple of lr*; got ().")
  for i, f in enumerate(factors):
    _validation.check_positive(f"factors[{i}]", f)
  best = _best(sweep)
  if num_steps is not None:
    _validation.check_positive_int("num_steps", num_steps)
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  configs = []
  for f in factors:
    config = best.config.replace(learning_rate=f * best.learning_rate)
    if num_steps is not None:
      config = config.replace(num_steps=num_steps)
    configs.append(config)
  records = run_trials(train_fn, configs, out_dir=out_dir, store=store, progress=progress,
                       desc="long check")
  return tuple(
      _confirm("long check", f, r, sweep, rule, thresholds) for f, r in zip(factors, records)
  )

