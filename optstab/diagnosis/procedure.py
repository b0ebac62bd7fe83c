"""One call for the FAQ's whole instability procedure (S2, S4): ``diagnose``.

``diagnose`` runs, in order, each step recorded in ``<out_dir>/trials.jsonl``
as it finishes (so an interrupted diagnosis resumes where it stopped):

1. the learning-rate sweep (``learning_rate_sweep``): lr*, infeasible trials,
   edge of feasibility;
2. the curves of the rates just above lr* (``rates_above_best``);
3. the short check: ~500 steps at 2 x lr*, its training loss looked at every
   step, evaluating at the sweep's cadence unless ``short_check_eval_every``
   says otherwise (``short_check``);
4. the long checks at 5 x and 10 x lr* (``long_check``), sent with the short
   check as one batch, so that a parallel executor runs them all at once;
5. if any of these shows instability, S4 (``tune_warmup``): the shortest
   warmup that trains at 10 x the smallest rate above lr* seen unstable
   (``unstable_learning_rate``: infeasible or not stable in the sweep, or
   unstable in a confirmation run), prepended to lr*'s schedule for the
   sweep's budget and compared with lr* by best-checkpoint selection; it is
   recommended only if it beats or matches lr*;

Every run is labelled with the sweep's context (``trivial_loss``, and lr*'s
final loss level as the reference).

then writes the report (``write_report``): ``diagnosis.md``,
``diagnosis.json`` and the figures.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from typing import Any, Optional, Sequence

from optstab import _validation
from optstab import schedules
from optstab.diagnosis.confirm import (
    ConfirmationRun,
    long_check,
    long_check_configs,
    rates_above_best,
    short_check,
    short_check_config,
)
from optstab.diagnosis.detectors import DetectorThresholds, STABLE
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.report import Diagnosis, make_diagnosis, write_report
from optstab.diagnosis.store import TrialStore
from optstab.diagnosis.sweep import (PathLike, SweepResult, check_metric_names, check_ranking,
                                     learning_rate_sweep, run_trials)
from optstab.diagnosis.sweep import _check_learning_rates
from optstab.diagnosis.trial import TrialConfig, TrialFn
from optstab.diagnosis.warmup_tuner import tune_warmup

__all__ = ["diagnose", "unstable_learning_rate"]


def unstable_learning_rate(
    sweep: SweepResult, runs: Sequence[ConfirmationRun] = ()
) -> Optional[tuple[float, str]]:
  """FAQ S4's unstable_base_learning_rate: the smallest rate above lr* seen unstable.

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


def _check_diagnose_args(learning_rates, num_steps, base_config, metric, mode, reduce, rule,
                         thresholds, above_count, short_check_factor, short_check_steps,
                         long_check_factors, long_check_steps, max_train_steps, warmup_factors,
                         warmup_candidates) -> tuple[int, tuple[float, ...], tuple[Any, ...]]:
  """Every check of ``diagnose``'s arguments that needs no trial.

  Returns the sweep's ``num_steps`` and the factor and candidate sequences as tuples.
  """
  _check_learning_rates(learning_rates)
  if base_config is None:
    if num_steps is None:
      raise ValueError("diagnose needs num_steps or base_config; got neither.")
  elif not isinstance(base_config, TrialConfig):
    raise ValueError(f"base_config must be a TrialConfig or None; got {base_config!r}.")
  if num_steps is not None:
    _validation.check_positive_int("num_steps", num_steps)
  check_ranking(metric, mode, reduce, rule)
  if thresholds is not None and not isinstance(thresholds, DetectorThresholds):
    raise ValueError(f"thresholds must be a DetectorThresholds or None; got {thresholds!r}.")
  _validation.check_positive_int("above_count", above_count)
  _validation.check_positive("short_check_factor", short_check_factor)
  _validation.check_positive_int("short_check_steps", short_check_steps)
  long_check_factors = tuple(_validation.check_sequence("long_check_factors", long_check_factors))
  for i, factor in enumerate(long_check_factors):
    _validation.check_positive(f"long_check_factors[{i}]", factor)
  if long_check_steps is not None:
    _validation.check_positive_int("long_check_steps", long_check_steps)
  if max_train_steps is not None:
    _validation.check_positive_int("max_train_steps", max_train_steps)
  warmup_factors = _validation.check_sequence("warmup_factors", warmup_factors, allow_empty=False)
  for i, factor in enumerate(warmup_factors):
    # The FAQ's base rates are (at least 10x) above the unstable rate.
    _validation.check_in_range(f"warmup_factors[{i}]", factor, 1.0, math.inf, low_inclusive=False)
  warmup_candidates = tuple(_validation.check_sequence("warmup_candidates", warmup_candidates,
                                                       allow_empty=False))
  for i, candidate in enumerate(warmup_candidates):
    _validation.check_positive_int(f"warmup_candidates[{i}]", candidate)
  sweep_steps = num_steps if num_steps is not None else base_config.num_steps
  return sweep_steps, long_check_factors, warmup_candidates


def diagnose(
    train_fn: TrialFn,
    learning_rates: Sequence[float],
    num_steps: Optional[int] = None,
    *,
    out_dir: PathLike,
    base_config: Optional[TrialConfig] = None,
    metric: str = "loss",
    mode: str = "min",
    reduce: str = "final",
    rule: Optional[FeasibilityRule] = None,
    thresholds: Optional[DetectorThresholds] = None,
    above_count: int = 2,
    short_check_factor: float = 2.0,
    short_check_steps: int = 500,
    long_check_factors: Sequence[float] = (5.0, 10.0),
    long_check_steps: Optional[int] = None,
    tune_warmup_when_unstable: bool = True,
    max_train_steps: Optional[int] = None,
    warmup_factors: Sequence[float] = (10.0,),
    warmup_candidates: Sequence[int] = (10, 1000, 10000, 100000),
    progress: bool = True,
    trivial_loss: Optional[float] = None,
    short_check_eval_every: Optional[int] = None,
    warmup_match_tolerance: float = 0.02,
    executor: Optional[Executor] = None,
) -> Diagnosis:
  """Runs the FAQ's instability diagnosis and writes the report into ``out_dir``.

  Args:
    train_fn: the user's training function (``TrialFn``).
    learning_rates: the sweep grid (e.g. ``log_grid(1e-4, 1.0, 13)``).
    num_steps: steps per sweep trial (or give ``base_config``).
    out_dir: output folder: trial store, report and figures.
    base_config: the ``TrialConfig`` every trial copies (all but the rate).
    metric, mode, reduce: how lr* is chosen (see ``learning_rate_sweep``).
    rule: the ``FeasibilityRule`` (default ``FeasibilityRule()``).
    thresholds: the ``DetectorThresholds`` (default ``DetectorThresholds()``).
    above_count: how many rates above lr* to examine.
    short_check_factor: the short check's multiple of lr* (FAQ: 2).
    short_check_steps: the short check's length (FAQ: about 500).
    long_check_factors: the long checks' multiples of lr* (FAQ: 5 and 10); ``()``
      skips them.
    long_check_steps: the long checks' length (default: the sweep's).
    tune_warmup_when_unstable: run the S4 warmup search when instability is
      found and some rate above lr* was unstable.
    max_train_steps: the budget for the warmup search. Default: the sweep's
      ``num_steps``; if no warmup candidate fits 10% of that, the search is
      skipped and the report says so (an explicit value that fits none raises).
    warmup_factors: base rates as multiples of the unstable rate (FAQ: 10).
    warmup_candidates: warmup lengths to consider (capped at 10% of
      ``max_train_steps``).
    progress: show progress bars.
    trivial_loss: the loss of a model that learned nothing (e.g.
      ``math.log(num_classes)``, the unigram entropy): runs stalled there are
      failed-to-train. Default: each run's own initial level.
    short_check_eval_every: the short check's evaluation cadence: ``None``
      (default) the sweep's, 1 every step.
    warmup_match_tolerance: the warmup "matches" lr* within this fraction of
      lr*'s best-checkpoint metric (or its evaluation noise, if larger).
    executor: a ``concurrent.futures.Executor`` every step's trials run on
      (``optstab.diagnosis.default_executor()`` fits the machine); ``None``:
      in turn in this process. Only this process writes ``out_dir``.

  Returns:
    The ``Diagnosis``, with ``files`` naming what was written.

  What is checked when: every argument, before any trial runs: the grid
  (a sequence of distinct rates > 0), every step count, factor and
  candidate, ``warmup_factors`` (each > 1) and ``warmup_candidates`` (integers
  >= 1) even when no warmup search may follow, ``mode``, ``reduce``, the types
  of ``base_config``, ``rule`` and ``thresholds``, and that ``out_dir`` can
  be written (the store opens it for appending). The names ``metric`` and
  ``rule.metric_thresholds`` refer to what the training function reports, so
  they are checked against the first trial result there is: a stored one when
  resuming (before any trial runs), else the sweep's first trial, before the
  other trials run (that trial is kept in the store).

  Raises:
    ValueError: on bad input (empty grid, non-positive rates or steps, a warmup
      budget too small for every candidate...), before any trial runs; for an
      unknown metric name, after at most one trial.
    OSError: when ``out_dir`` cannot be written, before any trial runs.
  """
  sweep_steps, long_check_factors, warmup_candidates = _check_diagnose_args(
      learning_rates, num_steps, base_config, metric, mode, reduce, rule, thresholds, above_count,
      short_check_factor, short_check_steps, long_check_factors, long_check_steps,
      max_train_steps, warmup_factors, warmup_candidates)
  if short_check_eval_every is not None:
    _validation.check_positive_int("short_check_eval_every", short_check_eval_every)
  if trivial_loss is not None:
    _validation.check_in_range("trivial_loss", trivial_loss, -math.inf, math.inf)
  _validation.check_non_negative("warmup_match_tolerance", warmup_match_tolerance)
  warmup_skipped = None
  if tune_warmup_when_unstable:
    if max_train_steps is not None:
      # Fail fast, before any trial, on a budget no warmup candidate fits.
      schedules.warmup_sweep_grid(max_train_steps, warmup_candidates)
    else:
      max_train_steps = sweep_steps
      try:
        schedules.warmup_sweep_grid(max_train_steps, warmup_candidates)
      except ValueError as e:
        warmup_skipped = (f"No warmup search: the default budget max_train_steps = num_steps = "
                          f"{sweep_steps} is too short for the warmup candidates ({e}). Pass "
                          "max_train_steps (your real training budget) to search.")
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  store = TrialStore(out_dir)
  stored = next((r.result for r in store.records() if r.result is not None), None)
  if stored is not None:
    check_metric_names(stored, metric, rule)
  sweep = learning_rate_sweep(
      train_fn, learning_rates, num_steps, base_config=base_config, metric=metric, mode=mode,
      reduce=reduce, rule=rule, store=store, progress=progress, trivial_loss=trivial_loss,
      thresholds=thresholds, executor=executor,
  )
  if sweep.best is None:
    return write_report(make_diagnosis(sweep), out_dir)
  above = rates_above_best(sweep, count=above_count)
  # The short and long checks are independent: one batch keeps every worker of a
  # parallel executor busy; the checks below then find their runs in the store.
  checks = [short_check_config(sweep, factor=short_check_factor, num_steps=short_check_steps,
                               eval_every=short_check_eval_every)]
  if tuple(long_check_factors):
    checks += long_check_configs(sweep, factors=long_check_factors, num_steps=long_check_steps)
  run_trials(train_fn, checks, store=store, progress=progress, desc="confirmation runs",
             executor=executor)
  short = short_check(train_fn, sweep, factor=short_check_factor, num_steps=short_check_steps,
                      eval_every=short_check_eval_every, store=store, progress=progress, executor=executor)
  longs = ()
  if tuple(long_check_factors):
    longs = long_check(train_fn, sweep, factors=long_check_factors, num_steps=long_check_steps,
                       store=store, progress=progress, executor=executor)
  preliminary = make_diagnosis(sweep, above_best=above, short_check=short, long_checks=longs)
  notes = []
  warmup = None
  unstable = unstable_learning_rate(sweep, (*above, short, *longs))
  if tune_warmup_when_unstable and preliminary.verdict != STABLE:
    if warmup_skipped is not None:
      notes.append(warmup_skipped)
    elif unstable is not None:
      rate, where = unstable
      notes.append(f"unstable_base_learning_rate = {rate:.4g}, the smallest rate above lr* found "
                   f"unstable ({where}); the warmup search starts from it.")
      warmup = tune_warmup(
          train_fn, rate, max_train_steps, baseline=sweep, factors=warmup_factors,
          candidates=warmup_candidates, match_tolerance=warmup_match_tolerance, store=store,
          progress=progress, executor=executor,
      )
  diagnosis = make_diagnosis(sweep, above_best=above, short_check=short, long_checks=longs,
                             warmup=warmup, notes=tuple(notes))
  return write_report(diagnosis, out_dir)
