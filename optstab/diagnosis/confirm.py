"""Confirmation runs: is the best learning rate limited by instability?

After a sweep finds lr*, the FAQ double-checks in three ways:

* ``rates_above_best``: look at the training-loss curves of the rates just
  above lr* (already in the sweep, no new trials): if the loss goes up during
  training, fixing the instability usually improves training;
* ``short_check``: a short run (about 500 steps) at 2 x lr*, because models
  that go unstable early and then recover are missed by evaluation schedules
  that evaluate rarely. The every-step view the FAQ asks for is the per-step
  training loss every ``TrialResult`` already holds, so the run evaluates at
  the sweep's own cadence by default (``eval_every=None``); ``eval_every=1``
  evaluates every step too, when the evaluation metric itself is wanted;
* ``long_check``: full-length runs at 5 x and 10 x lr*: a sudden loss increase
  after a steady decline (Figure 7b) means instability.

Each run is judged like a sweep trial (``SweepResult.judge``): the sweep's
``FeasibilityRule`` and one ``classify_run`` label with the sweep's context
(its trivial loss; lr*'s final loss level as the reference for the full-length
runs), with the loss spikes and gradient-norm outliers as evidence. Runs are
recorded in the same store as the sweep, so re-running resumes.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor
from typing import Any, Optional, Sequence

from optstab import _validation
from optstab.diagnosis.detectors import DetectorThresholds
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.store import TrialRecord, TrialStore
from optstab.diagnosis.sweep import JudgedTrialView, PathLike, SweepResult, SweepTrial, run_trials
from optstab.trial import TrialConfig, TrialFn

__all__ = ["ConfirmationRun", "rates_above_best", "short_check", "long_check", "short_check_config",
           "long_check_configs", "judge_short_check", "judge_long_checks"]


@dataclasses.dataclass(frozen=True)
class ConfirmationRun(JudgedTrialView):
  """One confirmation run and what it shows.

  Attributes:
    name: ``"above lr*"``, ``"short check"`` or ``"long check"``.
    factor: its learning rate as a multiple of lr*.
    trial: the judged trial (record, feasibility, label and diagnosis).
  """

  name: str
  factor: float
  trial: SweepTrial

  def describe(self, logged: Optional[str] = None) -> str:
    """One sentence with the evidence.

    Args:
      logged: for a run read from logs, which steps its training-loss points
        are (e.g. ``"100 points, steps 10 to 1000, every 10 steps"``); the
        sentence then counts points, not trained steps.
    """
    unit = "step" if logged is None else "point"
    every = unit if self.config.eval_every == 1 else f"{self.config.eval_every} {unit}s"
    seen = (f"{self.config.total_steps} steps, training loss at every step" if logged is None
            else f"read from logs: training loss at {logged}")
    head = (f"{self.name} at {self.factor:.3g} x lr* = {self.learning_rate:.4g} "
            f"({seen}, evaluating every {every})")
    return f"{head}: {self.trial.describe()}."

  def to_dict(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "factor": self.factor,
        "learning_rate": self.learning_rate,
        "total_steps": self.config.total_steps,
        "eval_every": self.config.eval_every,
        "feasible": self.feasible,
        "reason": self.reason,
        "label": self.label,
        "recovered": self.recovered,
        "error": self.record.error,
        "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
        "summary": self.describe(),
    }


def _confirm(name: str, factor: float, record: TrialRecord, sweep: SweepResult,
             rule: Optional[FeasibilityRule], thresholds: Optional[DetectorThresholds],
             use_reference: bool = True) -> ConfirmationRun:
  if thresholds is not None and thresholds != sweep.thresholds:
    sweep = dataclasses.replace(sweep, thresholds=thresholds)
  return ConfirmationRun(name, float(factor),
                         sweep.judge(record, rule, use_reference=use_reference))


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
    thresholds: detector thresholds (default: the sweep's).

  Returns:
    One ``ConfirmationRun`` per rate (fewer if lr* is near the grid's top).
  """
  best = _best(sweep)
  return tuple(
      _confirm("above lr*", t.learning_rate / best.learning_rate, t.record, sweep, None, thresholds)
      for t in sweep.above_best(count)
  )


def short_check_config(sweep: SweepResult, *, factor: float = 2.0, num_steps: int = 500,
                       eval_every: Optional[int] = None) -> TrialConfig:
  """The configuration ``short_check`` runs: lr*'s, at ``factor`` x its rate, for ``num_steps``."""
  _validation.check_positive("factor", factor)
  _validation.check_positive_int("num_steps", num_steps)
  if eval_every is not None:
    _validation.check_positive_int("eval_every", eval_every)
  best = _best(sweep)
  return best.config.replace(
      learning_rate=factor * best.learning_rate, num_steps=num_steps,
      eval_every=best.config.eval_every if eval_every is None else eval_every)


def long_check_configs(sweep: SweepResult, *, factors: Sequence[float] = (5.0, 10.0),
                       num_steps: Optional[int] = None) -> list[TrialConfig]:
  """The configurations ``long_check`` runs: lr*'s at each factor x its rate."""
  factors = tuple(_validation.check_sequence("factors", factors))
  if not factors:
    raise ValueError("factors must hold at least one multiple of lr*; got ().")
  for i, f in enumerate(factors):
    _validation.check_positive(f"factors[{i}]", f)
  if num_steps is not None:
    _validation.check_positive_int("num_steps", num_steps)
  best = _best(sweep)
  configs = []
  for f in factors:
    config = best.config.replace(learning_rate=f * best.learning_rate)
    if num_steps is not None:
      config = config.replace(num_steps=num_steps)
    configs.append(config)
  return configs


def judge_short_check(sweep: SweepResult, record: TrialRecord, factor: float, *,
                      rule: Optional[FeasibilityRule] = None,
                      thresholds: Optional[DetectorThresholds] = None) -> ConfirmationRun:
  """The short check's finished run, judged (held to lr*'s final loss only if as long as lr*'s)."""
  return _confirm("short check", factor, record, sweep, rule, thresholds,
                  use_reference=record.config.total_steps >= _best(sweep).config.total_steps)


def judge_long_checks(sweep: SweepResult, records: Sequence[TrialRecord], factors: Sequence[float],
                      *, rule: Optional[FeasibilityRule] = None,
                      thresholds: Optional[DetectorThresholds] = None) -> tuple[ConfirmationRun, ...]:
  """The long checks' finished runs (in ``factors`` order), judged."""
  best = _best(sweep)
  return tuple(
      _confirm("long check", f, r, sweep, rule, thresholds,
               use_reference=r.config.total_steps >= best.config.total_steps)
      for f, r in zip(factors, records))


def short_check(
    train_fn: TrialFn,
    sweep: SweepResult,
    *,
    factor: float = 2.0,
    num_steps: int = 500,
    eval_every: Optional[int] = None,
    rule: Optional[FeasibilityRule] = None,
    thresholds: Optional[DetectorThresholds] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
    executor: Optional[Executor] = None,
    trial_timeout: Optional[float] = None,
) -> ConfirmationRun:
  """The FAQ's early-instability check: ~500 steps at 2 x lr*, looked at every step.

  The run copies lr*'s configuration (its warmup and schedule shape included)
  with ``learning_rate = factor * lr*`` and ``num_steps``. Its per-step
  training loss is the every-step view; evaluation runs at ``eval_every``.
  The run is shorter than the sweep's, so it is not held to lr*'s final loss.

  Args:
    train_fn: the user's training function.
    sweep: a finished learning-rate sweep (it must have a feasible lr*).
    factor: multiple of lr* (FAQ: 2).
    num_steps: length of the run (FAQ: about 500).
    eval_every: evaluation cadence: ``None`` (default) keeps the sweep's, 1
      evaluates every step (costly: only when the metric itself is wanted).
    rule: feasibility rule (default: the sweep's).
    thresholds: detector thresholds (default: the sweep's).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.
    executor: a ``concurrent.futures.Executor`` to run on (see ``run_trials``).
    trial_timeout: seconds the run may take (see ``run_trials``).

  Returns:
    A ``ConfirmationRun``; ``label == "early-unstable"`` (with ``recovered``)
    flags the FAQ's "unstable early, then recovers".
  """
  config = short_check_config(sweep, factor=factor, num_steps=num_steps, eval_every=eval_every)
  (record,) = run_trials(train_fn, [config], out_dir=out_dir, store=store, progress=progress,
                         desc="short check", executor=executor, trial_timeout=trial_timeout)
  return judge_short_check(sweep, record, factor, rule=rule, thresholds=thresholds)


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
    executor: Optional[Executor] = None,
    trial_timeout: Optional[float] = None,
) -> tuple[ConfirmationRun, ...]:
  """The FAQ's Figure-7b check: full-length runs at 5 x and 10 x lr*.

  Args:
    train_fn: the user's training function.
    sweep: a finished learning-rate sweep (it must have a feasible lr*).
    factors: multiples of lr* (FAQ: 5 and 10).
    num_steps: length of each run (default: the sweep's ``num_steps``).
    rule: feasibility rule (default: the sweep's).
    thresholds: detector thresholds (default: the sweep's).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.
    executor: a ``concurrent.futures.Executor`` to run on (see ``run_trials``).
    trial_timeout: seconds each run may take (see ``run_trials``).

  Returns:
    One ``ConfirmationRun`` per factor; ``diagnosis.loss_spikes`` holds the
    sudden increases (step, size, duration, recovered).
  """
  factors = tuple(_validation.check_sequence("factors", factors))
  configs = long_check_configs(sweep, factors=factors, num_steps=num_steps)
  records = run_trials(train_fn, configs, out_dir=out_dir, store=store, progress=progress,
                       desc="long check", executor=executor, trial_timeout=trial_timeout)
  return judge_long_checks(sweep, records, factors, rule=rule, thresholds=thresholds)

