"""Warmup tuning: the shortest warmup that unlocks a 10x higher rate (S4).

The FAQ's procedure, given ``unstable_base_learning_rate`` (the rate at which
the model goes unstable, found by the S2 sweep) and ``max_train_steps``:

1. base rates at least an order of magnitude higher: 10 x by default
   (``factors=(10.0, 100.0)`` also tries 100 x);
2. warmup lengths over orders of magnitude (default ``[10, 1000, 10000,
   100000]``), the largest at most 10% of ``max_train_steps``;
3. each trial ramps linearly from 0 to the base rate over ``warmup_steps``,
   then trains at that constant rate for ``post_warmup_steps = 2 x
   warmup_steps``;
4. the answer is the shortest warmup that does not blow up (a feasible trial
   by the ``FeasibilityRule``); if it exceeds 5% of ``max_train_steps``, the
   FAQ says to increase ``max_train_steps``.

Then prepend that warmup to the baseline's schedule
(``optstab.prepend_warmup``; an N-step baseline becomes N + warmup steps) and
compare against the baseline with best-checkpoint selection.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from tqdm import tqdm

from optstab import _validation
from optstab import schedules
from optstab.diagnosis.detectors import DetectorThresholds, RunDiagnosis, classify_run
from optstab.diagnosis.feasibility import FeasibilityRule, check_feasibility
from optstab.diagnosis.store import TrialRecord, TrialStore
from optstab.diagnosis.sweep import PathLike, run_trials
from optstab.diagnosis.trial import TrialConfig, TrialFn

__all__ = ["WarmupTrial", "WarmupSearch", "WarmupTuningResult", "tune_warmup"]


@dataclasses.dataclass(frozen=True)
class WarmupTrial:
  """One warmup trial: whether it blew up, and its instability evidence."""

  record: TrialRecord
  feasible: bool
  reason: Optional[str]
  diagnosis: Optional[RunDiagnosis]

  @property
  def warmup_steps(self) -> int:
    return self.record.config.warmup_steps

  @property
  def post_warmup_steps(self) -> int:
    return self.record.config.num_steps

  @property
  def base_learning_rate(self) -> float:
    return self.record.config.learning_rate

  def to_dict(self) -> dict[str, Any]:
    return {
        "warmup_steps": self.warmup_steps,
        "post_warmup_steps": self.post_warmup_steps,
        "base_learning_rate": self.base_learning_rate,
        "feasible": self.feasible,
        "reason": self.reason,
        "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
    }


@dataclasses.dataclass(frozen=True)
class WarmupSearch:
  """The warmup sweep at one base learning rate.

  Attributes:
    base_learning_rate: the peak rate the warmup ramps to.
    factor: ``base_learning_rate / unstable_base_learning_rate``.
    trials: one ``WarmupTrial`` per warmup length run, ascending.
  """

  base_learning_rate: float
  factor: float
  trials: tuple[WarmupTrial, ...]

  @property
  def shortest_stable_warmup(self) -> Optional[int]:
    """The shortest warmup whose trial did not blow up, or ``None``."""
    for trial in self.trials:
      if trial.feasible:
        return trial.warmup_steps
    return None

  def to_dict(self) -> dict[str, Any]:
    return {
        "base_learning_rate": self.base_learning_rate,
        "factor": self.factor,
        "shortest_stable_warmup": self.shortest_stable_warmup,
        "trials": [t.to_dict() for t in self.trials],
    }


@dataclasses.dataclass(frozen=True)
class WarmupTuningResult:
  """The outcome of ``tune_warmup``.

  Attributes:
    unstable_base_learning_rate: the rate at which the model went unstable.
    max_train_steps: the training budget.
    grid: the warmup lengths swept (capped at 10% of ``max_train_steps``).
    searches: one ``WarmupSearch`` per base learning rate, in factor order.
    advice_fraction: warmups above this fraction of ``max_train_steps`` get
      the FAQ's "increase max_train_steps" advice.
  """

  unstable_base_learning_rate: float
  max_train_steps: int
  grid: tuple[int, ...]
  searches: tuple[WarmupSearch, ...]
  advice_fraction: float = 0.05

  @property
  def best(self) -> Optional[WarmupSearch]:
    """The search at the highest base rate that has a stable warmup."""
    found = [s for s in self.searches if s.shortest_stable_warmup is not None]
    return max(found, key=lambda s: s.base_learning_rate) if found else None

  @property
  def base_learning_rate(self) -> Optional[float]:
    best = self.best
    return None if best is None else best.base_learning_rate

  @property
  def warmup_steps(self) -> Optional[int]:
    """The shortest warmup that does not blow up at ``base_learning_rate``."""
    best = self.best
    return None if best is None else best.shortest_stable_warmup

  @property
  def advice(self) -> Optional[str]:
    """The FAQ's advice when the warmup exceeds 5% of ``max_train_steps``."""
    if self.warmup_steps is None:
      return None
    return schedules.warmup_length_advice(
        self.warmup_steps, self.max_train_steps, self.advice_fraction
    )

  def to_dict(self) -> dict[str, Any]:
    return {
        "unstable_base_learning_rate": self.unstable_base_learning_rate,
        "max_train_steps": self.max_train_steps,
        "grid": list(self.grid),
        "base_learning_rate": self.base_learning_rate,
        "warmup_steps": self.warmup_steps,
        "advice": self.advice,
        "searches": [s.to_dict() for s in self.searches],
    }


def tune_warmup(
    train_fn: TrialFn,
    unstable_base_learning_rate: float,
    max_train_steps: int,
    *,
    base_config: Optional[TrialConfig] = None,
    factors: Sequence[float] = (10.0,),
    candidates: Sequence[int] = (10, 1000, 10000, 100000),
    max_fraction: float = 0.1,
    post_warmup_factor: float = 2.0,
    advice_fraction: float = 0.05,
    stop_at_first_stable: bool = False,
    rule: Optional[FeasibilityRule] = None,
    thresholds: Optional[DetectorThresholds] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
) -> WarmupTuningResult:
  """Finds the shortest warmup that trains stably at 10 x the unstable rate (S4).

  Each trial is ``base_config`` with ``learning_rate`` = the base rate,
  ``warmup_steps`` = W, ``num_steps = post_warmup_steps_for(W,
  post_warmup_factor)`` and a constant schedule after the warmup.

  Args:
    train_fn: the user's training function.
    unstable_base_learning_rate: the rate at which the model goes unstable
      (e.g. ``SweepResult.unstable_learning_rate``).
    max_train_steps: the training budget; caps the grid at ``max_fraction`` of
      it and sets the 5% advice.
    base_config: the configuration trials copy (seed, eval_every, extra...).
      Default: ``TrialConfig`` defaults.
    factors: base rates as multiples of the unstable rate (FAQ: 10; 100 too).
    candidates: warmup lengths to consider (FAQ: 10, 1000, 10000, 100000).
    max_fraction: the largest warmup is at most this fraction of
      ``max_train_steps`` (FAQ: 0.1).
    post_warmup_factor: ``post_warmup_steps = factor x warmup_steps`` (FAQ: 2).
    advice_fraction: advise a longer run when the warmup exceeds this fraction
      of ``max_train_steps`` (FAQ: 0.05).
    stop_at_first_stable: skip longer warmups once one is stable (cheaper; the
      warmup plot then shows fewer curves).
    rule: the feasibility rule deciding "blows up" (default
      ``FeasibilityRule()``).
    thresholds: detector thresholds for the evidence (default
      ``DetectorThresholds()``).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.

  Returns:
    A ``WarmupTuningResult``: ``warmup_steps`` (shortest stable, or ``None``),
    ``base_learning_rate``, every trial, and ``advice``.

  Raises:
    ValueError: on a non-positive rate or step count, or when every candidate
      exceeds ``max_fraction * max_train_steps``.
  """
  _validation.check_positive("unstable_base_learning_rate", unstable_base_learning_rate)
  _validation.check_positive_int("max_train_steps", max_train_steps)
  _validation.check_positive("post_warmup_factor", post_warmup_factor)
  _validation.check_in_range("advice_fraction", advice_fraction, 0.0, 1.0,
                             low_inclusive=False, high_inclusive=True)
  factors = tuple(_validation.check_sequence("factors", factors))
  candidates = tuple(_validation.check_sequence("candidates", candidates))
  base_rates = schedules.warmup_base_learning_rates(unstable_base_learning_rate, factors)
  grid = schedules.warmup_sweep_grid(max_train_steps, candidates, max_fraction)
  rule = FeasibilityRule() if rule is None else rule
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  if base_config is None:
    base_config = TrialConfig(learning_rate=base_rates[0], num_steps=1)
  if store is None and out_dir is not None:
    store = TrialStore(out_dir)
  searches = []
  bar = tqdm(total=len(base_rates) * len(grid), desc="warmup sweep", disable=not progress,
             leave=False)
  for factor, rate in zip(factors, base_rates):
    trials = []
    for warmup_steps in grid:
      config = base_config.replace(
          learning_rate=rate,
          warmup_steps=warmup_steps,
          num_steps=schedules.post_warmup_steps_for(warmup_steps, post_warmup_factor),
          schedule="constant",
      )
      bar.set_postfix(lr=f"{rate:.3g}", warmup=warmup_steps)
      (record,) = run_trials(train_fn, [config], store=store, progress=False)
      bar.update(1)
      if record.result is None:
        feasible, reason, diagnosis = False, f"the training function raised {record.error}", None
      else:
        feasible, reason = check_feasibility(record.result, rule)
        diagnosis = classify_run(record.result.train_loss, record.result.grad_norms, thresholds)
      trials.append(WarmupTrial(record, feasible, reason, diagnosis))
      if feasible and stop_at_first_stable:
        break
    searches.append(WarmupSearch(float(rate), float(factor), tuple(trials)))
  bar.close()
  return WarmupTuningResult(
      float(unstable_base_learning_rate), int(max_train_steps), tuple(grid), tuple(searches),
      float(advice_fraction),
  )
