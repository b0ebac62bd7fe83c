"""Warmup tuning, as the playbook prescribes: find the warmup, prepend it, keep it only if it helps.

The FAQ's procedure, given ``unstable_base_learning_rate`` (the rate at which
the model goes unstable, found by the learning-rate sweep) and ``max_train_steps``:

1. base rates at least an order of magnitude higher: 10 x by default
   (``factors=(10.0, 100.0)`` also tries 100 x);
2. warmup lengths over orders of magnitude (default ``[10, 1000, 10000,
   100000]``), the largest at most 10% of ``max_train_steps``;
3. each trial ramps linearly from 0 to the base rate over ``warmup_steps``,
   then trains at that constant rate for ``post_warmup_steps = 2 x
   warmup_steps``;
4. the search's answer is the shortest warmup whose trial *trains*
   (``WarmupTrial.trains``): feasible, labelled ``stable`` or early-unstable
   and recovered (never failed-to-train or diverged, so its loss ended clearly
   below its initial level, and below ``trivial_loss`` when one is given). Not
   blowing up is not enough: a run that sits at chance level does not blow up;
5. then (``compare_with_baseline``, or ``tune_warmup(..., baseline=sweep)``)
   that warmup is prepended to the baseline's schedule at the base rate for
   the baseline's budget, ``warmup_steps + num_steps`` steps (the playbook's example: a
   10,000-step baseline with 1,000 warmup steps becomes an 11,000-step run),
   and compared with the baseline at lr* by best-checkpoint selection
   (``reduce="best"`` on the sweep's metric);
6. warmup is recommended only if the prepended run trains and *beats or
   matches* the baseline. "Matches" allows a margin for noise: the larger of
   ``match_tolerance`` (default 2%) of the baseline's value and the baseline
   metric's own evaluation-to-evaluation noise (the robust standard deviation
   of its successive changes over the second half of its evaluations, when it
   has at least four there); ``match_margin=`` overrides both. If the warmup
   exceeds 5% of ``max_train_steps``, the FAQ says to increase
   ``max_train_steps`` (``advice``).

Where it breaks: one seed per run, so a "beats" by less than seed-to-seed
noise is not a finding; pass ``match_margin`` when you know that noise.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Executor
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from optstab import _validation
from optstab import schedules
from optstab.diagnosis.detectors import (
    EARLY_UNSTABLE,
    STABLE,
    DetectorThresholds,
)
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.store import TrialStore
from optstab.diagnosis.sweep import (
    TRAIN_LOSS,
    JudgedTrialView,
    PathLike,
    SweepResult,
    SweepTrial,
    judge,
    metric_value,
    run_trials,
)
from optstab.trial import TrialConfig, TrialFn

__all__ = [
    "WarmupTrial",
    "WarmupSearch",
    "WarmupComparison",
    "WarmupTuningResult",
    "tune_warmup",
    "compare_with_baseline",
]


def _trains(trial: SweepTrial) -> bool:
  """Feasible, and stable or early-unstable then recovered (so not failed-to-train)."""
  return trial.feasible and (trial.label == STABLE
                             or (trial.label == EARLY_UNSTABLE and bool(trial.recovered)))


@dataclasses.dataclass(frozen=True)
class WarmupTrial(JudgedTrialView):
  """One warmup-search trial: its judged trial (feasibility, label, evidence)."""

  trial: SweepTrial

  @property
  def trains(self) -> bool:
    """Feasible, and labelled stable or early-unstable then recovered."""
    return _trains(self.trial)

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
        "label": self.label,
        "trains": self.trains,
        "summary": self.trial.describe(),
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
  def shortest_training_warmup(self) -> Optional[int]:
    """The shortest warmup whose trial trains (``WarmupTrial.trains``), or ``None``."""
    trial = self.shortest_training_trial
    return None if trial is None else trial.warmup_steps

  @property
  def shortest_training_trial(self) -> Optional[WarmupTrial]:
    return next((t for t in self.trials if t.trains), None)

  def to_dict(self) -> dict[str, Any]:
    return {
        "base_learning_rate": self.base_learning_rate,
        "factor": self.factor,
        "shortest_training_warmup": self.shortest_training_warmup,
        "trials": [t.to_dict() for t in self.trials],
    }


#: Outcomes of ``WarmupComparison.outcome``.
BEATS, MATCHES, WORSE, DOES_NOT_TRAIN = "beats", "matches", "worse", "does not train"


@dataclasses.dataclass(frozen=True)
class WarmupComparison:
  """The warmup search's last step: the warmup prepended to the baseline's schedule, against the baseline.

  Attributes:
    search: the warmup search whose shortest training warmup was prepended.
    baseline: the baseline trial (lr* of the sweep).
    run: the prepended run: the baseline's configuration at the search's base
      rate with ``warmup_steps`` prepended (``warmup_steps + num_steps`` steps).
    metric, mode: the sweep's metric and direction; values are best-checkpoint
      (``reduce="best"``).
    baseline_value, run_value: the best-checkpoint metric of each (NaN if none).
    margin: the noise margin within which the run "matches" the baseline.
  """

  search: WarmupSearch
  baseline: SweepTrial
  run: SweepTrial
  metric: str
  mode: str
  baseline_value: float
  run_value: float
  margin: float

  @property
  def warmup_steps(self) -> int:
    return self.run.config.warmup_steps

  @property
  def base_learning_rate(self) -> float:
    return self.run.learning_rate

  @property
  def outcome(self) -> str:
    """``"beats"``, ``"matches"``, ``"worse"`` or ``"does not train"``."""
    if not _trains(self.run) or not math.isfinite(self.run_value):
      return DOES_NOT_TRAIN
    if not math.isfinite(self.baseline_value):
      return BEATS
    gain = self.baseline_value - self.run_value if self.mode == "min" else (
        self.run_value - self.baseline_value)
    if gain > self.margin:
      return BEATS
    return MATCHES if gain >= -self.margin else WORSE

  @property
  def recommended(self) -> bool:
    """The prepended run trains and beats or matches the baseline."""
    return self.outcome in (BEATS, MATCHES)

  def describe(self) -> str:
    """One sentence: what was run, the two best-checkpoint values, and the outcome."""
    b, r = self.baseline.config, self.run.config
    head = (f"{self.warmup_steps} warmup steps at base rate {self.base_learning_rate:.4g} "
            f"prepended to the baseline's {b.schedule} schedule ({b.total_steps} -> "
            f"{r.total_steps} steps)")
    values = (f"best {self.metric} {self.run_value:.4g} vs the baseline's "
              f"{self.baseline_value:.4g} at lr* = {self.baseline.learning_rate:.4g} "
              f"(best-checkpoint selection; margin {self.margin:.3g})")
    outcome = self.outcome
    if outcome == DOES_NOT_TRAIN:
      return f"{head}: the prepended run does not train ({self.run.describe()})"
    if outcome == WORSE:
      return f"{head}: {values}: worse than the baseline, so warmup did not help"
    return f"{head}: {values}: it {outcome} the baseline ({self.run.headline})"

  def to_dict(self) -> dict[str, Any]:
    return {
        "warmup_steps": self.warmup_steps,
        "base_learning_rate": self.base_learning_rate,
        "baseline_learning_rate": self.baseline.learning_rate,
        "baseline_total_steps": self.baseline.config.total_steps,
        "total_steps": self.run.config.total_steps,
        "metric": self.metric,
        "baseline_value": self.baseline_value,
        "run_value": self.run_value,
        "margin": self.margin,
        "run_label": self.run.label,
        "outcome": self.outcome,
        "recommended": self.recommended,
        "summary": self.describe(),
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
    comparisons: ``compare_with_baseline``'s comparisons (highest base rate
      first); empty if no baseline was given or no warmup trained.
  """

  unstable_base_learning_rate: float
  max_train_steps: int
  grid: tuple[int, ...]
  searches: tuple[WarmupSearch, ...]
  advice_fraction: float = 0.05
  comparisons: tuple[WarmupComparison, ...] = ()

  @property
  def best(self) -> Optional[WarmupSearch]:
    """The search at the highest base rate that has a warmup that trains."""
    found = [s for s in self.searches if s.shortest_training_warmup is not None]
    return max(found, key=lambda s: s.base_learning_rate) if found else None

  @property
  def base_learning_rate(self) -> Optional[float]:
    best = self.best
    return None if best is None else best.base_learning_rate

  @property
  def warmup_steps(self) -> Optional[int]:
    """The shortest warmup that trains at ``base_learning_rate`` (before any comparison)."""
    best = self.best
    return None if best is None else best.shortest_training_warmup

  @property
  def recommendation(self) -> Optional[WarmupComparison]:
    """The comparison at the highest base rate that beats or matches the baseline."""
    return next((c for c in self.comparisons if c.recommended), None)

  @property
  def advice(self) -> Optional[str]:
    """The FAQ's advice when the warmup exceeds 5% of ``max_train_steps``."""
    rec = self.recommendation
    steps = self.warmup_steps if rec is None else rec.warmup_steps
    if steps is None:
      return None
    return schedules.warmup_length_advice(steps, self.max_train_steps, self.advice_fraction)

  def to_dict(self) -> dict[str, Any]:
    rec = self.recommendation
    return {
        "unstable_base_learning_rate": self.unstable_base_learning_rate,
        "max_train_steps": self.max_train_steps,
        "grid": list(self.grid),
        "base_learning_rate": self.base_learning_rate,
        "warmup_steps": self.warmup_steps,
        "advice": self.advice,
        "searches": [s.to_dict() for s in self.searches],
        "comparisons": [c.to_dict() for c in self.comparisons],
        "recommendation": None if rec is None else rec.to_dict(),
    }


def _evaluation_noise(values: np.ndarray) -> float:
  """Robust sd of successive changes over the second half of the evaluations (0 if < 4)."""
  tail = values[values.size // 2:]
  tail = tail[np.isfinite(tail)]
  if tail.size < 4:
    return 0.0
  d = np.diff(tail)
  return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def _metric_series(trial: SweepTrial, metric: str) -> np.ndarray:
  result = trial.result
  return result.train_loss if metric == TRAIN_LOSS else result.eval_metrics[metric]


def compare_with_baseline(
    train_fn: TrialFn,
    tuning: WarmupTuningResult,
    sweep: SweepResult,
    *,
    match_tolerance: float = 0.02,
    match_margin: Optional[float] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
    executor: Optional[Executor] = None,
) -> WarmupTuningResult:
  """The warmup search's last step: prepend each search's warmup to the baseline and compare.

  For every search with a warmup that trains (highest base rate first), runs
  lr*'s configuration at the search's base rate with that warmup prepended,
  for the baseline's ``num_steps`` (so ``warmup_steps + num_steps`` steps in
  all), judges it with the sweep's context, and compares best-checkpoint
  values of the sweep's metric.

  Args:
    train_fn: the user's training function.
    tuning: ``tune_warmup``'s result.
    sweep: the baseline sweep (its lr* trial is the baseline).
    match_tolerance: "matches" within this fraction of the baseline's value...
    match_margin: ...or within this absolute margin, if given (replaces the
      tolerance and the noise estimate).
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.
    executor: a ``concurrent.futures.Executor`` to run on (see ``run_trials``).

  Returns:
    ``tuning`` with ``comparisons`` filled in; ``recommendation`` is the one to
    use, or ``None`` when warmup did not help.
  """
  _validation.check_non_negative("match_tolerance", match_tolerance)
  if match_margin is not None:
    _validation.check_non_negative("match_margin", match_margin)
  baseline = sweep.best
  if baseline is None:
    raise ValueError("the sweep found no feasible learning rate, so there is no baseline to "
                     "compare warmup with.")
  found = sorted((s for s in tuning.searches if s.shortest_training_warmup is not None),
                 key=lambda s: -s.base_learning_rate)
  configs = [baseline.config.replace(learning_rate=s.base_learning_rate,
                                     warmup_steps=s.shortest_training_warmup) for s in found]
  records = run_trials(train_fn, configs, out_dir=out_dir, store=store, progress=progress,
                       desc="warmup vs baseline", executor=executor)
  base_value = metric_value(baseline.result, sweep.metric, sweep.mode, "best")
  if match_margin is None:
    noise = _evaluation_noise(_metric_series(baseline, sweep.metric))
    margin = max(match_tolerance * abs(base_value) if math.isfinite(base_value) else 0.0, noise)
  else:
    margin = float(match_margin)
  comparisons = []
  for search, record in zip(found, records):
    run = sweep.judge(record)
    value = math.nan if run.result is None else metric_value(run.result, sweep.metric,
                                                             sweep.mode, "best")
    comparisons.append(WarmupComparison(search, baseline, run, sweep.metric, sweep.mode,
                                        base_value, value, margin))
  return dataclasses.replace(tuning, comparisons=tuple(comparisons))


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
    trivial_loss: Optional[float] = None,
    baseline: Optional[SweepResult] = None,
    match_tolerance: float = 0.02,
    match_margin: Optional[float] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
    executor: Optional[Executor] = None,
) -> WarmupTuningResult:
  """Finds the shortest warmup that trains at 10 x the unstable rate, and checks it helps.

  Each search trial is ``base_config`` with ``learning_rate`` = the base rate,
  ``warmup_steps`` = W, ``num_steps = post_warmup_steps_for(W,
  post_warmup_factor)`` and a constant schedule after the warmup. With
  ``baseline=`` (the learning-rate sweep), the found warmups are then prepended to the
  baseline's schedule and compared with it (``compare_with_baseline``).

  Args:
    train_fn: the user's training function.
    unstable_base_learning_rate: the rate at which the model goes unstable
      (e.g. ``SweepResult.unstable_learning_rate``).
    max_train_steps: the training budget; caps the grid at ``max_fraction`` of
      it and sets the 5% advice.
    base_config: the configuration trials copy (seed, eval_every, extra...).
      Default: the baseline's lr* configuration, else ``TrialConfig`` defaults.
    factors: base rates as multiples of the unstable rate (FAQ: 10; 100 too).
    candidates: warmup lengths to consider (FAQ: 10, 1000, 10000, 100000).
    max_fraction: the largest warmup is at most this fraction of
      ``max_train_steps`` (FAQ: 0.1).
    post_warmup_factor: ``post_warmup_steps = factor x warmup_steps`` (FAQ: 2).
    advice_fraction: advise a longer run when the warmup exceeds this fraction
      of ``max_train_steps`` (FAQ: 0.05).
    stop_at_first_stable: skip longer warmups once one trains (cheaper; the
      warmup plot then shows fewer curves).
    rule: the feasibility rule (default: the baseline's, else
      ``FeasibilityRule()``).
    thresholds: detector thresholds (default: the baseline's, else
      ``DetectorThresholds()``).
    trivial_loss: the loss of a model that learned nothing (default: the
      baseline's): a trial stalled there does not train.
    baseline: the learning-rate sweep; when given, the comparison runs.
    match_tolerance, match_margin: see ``compare_with_baseline``.
    out_dir: folder of the trial store (resume).
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a progress bar.
    executor: a ``concurrent.futures.Executor`` to run on (see ``run_trials``).

  Returns:
    A ``WarmupTuningResult``: ``warmup_steps`` (shortest that trains, or
    ``None``), ``base_learning_rate``, every trial, ``comparisons``,
    ``recommendation`` and ``advice``.

  Raises:
    ValueError: on a non-positive rate or step count, or when every candidate
      exceeds ``max_fraction * max_train_steps``.
  """
  _validation.check_positive("unstable_base_learning_rate", unstable_base_learning_rate)
  _validation.check_positive_int("max_train_steps", max_train_steps)
  _validation.check_positive("post_warmup_factor", post_warmup_factor)
  _validation.check_in_range("advice_fraction", advice_fraction, 0.0, 1.0,
                             low_inclusive=False, high_inclusive=True)
  if trivial_loss is not None:
    _validation.check_in_range("trivial_loss", trivial_loss, -math.inf, math.inf)
  factors = tuple(_validation.check_sequence("factors", factors))
  candidates = tuple(_validation.check_sequence("candidates", candidates))
  base_rates = schedules.warmup_base_learning_rates(unstable_base_learning_rate, factors)
  grid = schedules.warmup_sweep_grid(max_train_steps, candidates, max_fraction)
  if baseline is not None:
    rule = baseline.rule if rule is None else rule
    thresholds = baseline.thresholds if thresholds is None else thresholds
    trivial_loss = baseline.trivial_loss if trivial_loss is None else trivial_loss
    if base_config is None and baseline.best is not None:
      base_config = baseline.best.config
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
      (record,) = run_trials(train_fn, [config], store=store, progress=False, executor=executor)
      bar.update(1)
      # Short trials: judged on their own curve and the trivial level, not on
      # the baseline's final loss, which they have too few steps to reach.
      trial = WarmupTrial(judge(record, rule, TRAIN_LOSS, "min", "final", thresholds=thresholds,
                                trivial_loss=trivial_loss))
      trials.append(trial)
      if trial.trains and stop_at_first_stable:
        break
    searches.append(WarmupSearch(float(rate), float(factor), tuple(trials)))
  bar.close()
  result = WarmupTuningResult(
      float(unstable_base_learning_rate), int(max_train_steps), tuple(grid), tuple(searches),
      float(advice_fraction),
  )
  if baseline is not None and baseline.best is not None:
    result = compare_with_baseline(train_fn, result, baseline, match_tolerance=match_tolerance,
                                   match_margin=match_margin, store=store, progress=progress,
                                   executor=executor)
  return result
