"""``diagnose``: the playbook's instability procedure, from the sweep to a verified fix.

Plan, run, judge. Each stage plans ``TrialConfig`` s, ``diagnose`` sends each
round to the executor as one batch, and the stage's judge turns the finished
records into a decision that picks the next round:

1. the learning-rate sweep: lr*, labels, the edge of feasibility;
2. the confirmation checks, one batch: a short run at 2 x lr* looked at every
   step, and runs at 5 x and 10 x lr* for the sweep's length; with the sweep's
   curves just above lr* they give the verdict;
3. if instability limits lr* (and lr* is not the grid's largest rate, where the
   sweep cannot tell), the fix ladder (``optstab.diagnosis.fixes``):
   each fix the training function supports, in the playbook's order, tried
   at rates from 10 x the smallest unstable rate down, then verified against
   lr* given the same total steps on several seeds. The first fix that helps
   is recommended; the later ones are not tried (``FixLadder.try_all``).

Every trial is recorded in ``<out_dir>/trials.jsonl`` as it finishes, so an
interrupted diagnosis resumes where it stopped. The report
(``diagnosis.md``, ``diagnosis.json``, figures) only renders these decisions.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Executor
from typing import Callable, Optional, Sequence

from optstab import _validation
from optstab import executors
from optstab.diagnosis import fixes as fix_ladder
from optstab.diagnosis.confirm import (
    ConfirmationRun,
    judge_long_checks,
    judge_short_check,
    long_check_configs,
    rates_above_best,
    short_check_config,
)
from optstab.diagnosis.detectors import STABLE, DetectorThresholds
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.fixes import FixFamily, FixLadder, FixResult
from optstab.diagnosis.plan import Plan, PlannedRound
from optstab.diagnosis.report import Diagnosis, make_diagnosis, write_report
from optstab.diagnosis.store import TrialRecord, TrialStore
from optstab.diagnosis.sweep import (PathLike, SweepResult, _check_learning_rates,
                                     check_metric_names, check_ranking, learning_rate_sweep,
                                     run_trials)
from optstab.trial import TrialConfig, TrialFn, fix_support
from optstab.diagnosis.verdict import decide_verdict, unstable_learning_rate

__all__ = ["diagnose", "unstable_learning_rate", "Checks"]


@dataclasses.dataclass(frozen=True)
class Checks:
  """The confirmation checks after the sweep (validated at construction).

  Attributes:
    above_count: how many grid rates just above lr* to look at.
    short_factor: the short check's multiple of lr* (playbook: 2).
    short_steps: the short check's length (playbook: about 500), cut to the
      long checks' length when longer: a short check is never the longer one.
    short_eval_every: the short check's evaluation cadence (``None``: the
      sweep's; its training loss is looked at every step either way).
    long_factors: the long checks' multiples of lr* (playbook: 5 and 10);
      ``()`` skips them.
    long_steps: the long checks' length (default: the sweep's).
  """

  above_count: int = 2
  short_factor: float = 2.0
  short_steps: int = 500
  short_eval_every: Optional[int] = None
  long_factors: tuple[float, ...] = (5.0, 10.0)
  long_steps: Optional[int] = None

  def __post_init__(self):
    _validation.check_positive_int("above_count", self.above_count)
    _validation.check_positive("short_factor", self.short_factor)
    _validation.check_positive_int("short_steps", self.short_steps)
    if self.short_eval_every is not None:
      _validation.check_positive_int("short_eval_every", self.short_eval_every)
    factors = tuple(_validation.check_sequence("long_factors", self.long_factors))
    for i, factor in enumerate(factors):
      _validation.check_positive(f"long_factors[{i}]", factor)
    object.__setattr__(self, "long_factors", tuple(float(f) for f in factors))
    if self.long_steps is not None:
      _validation.check_positive_int("long_steps", self.long_steps)

  def lengths(self, sweep_steps: int) -> tuple[int, int, str]:
    """``(short check steps, long check steps, why)`` for a sweep of ``sweep_steps`` steps."""
    long = self.long_steps if self.long_steps is not None else sweep_steps
    if self.short_steps <= long:
      return self.short_steps, long, (f"the short check runs {self.short_steps} steps, the long "
                                      f"checks {long}")
    return long, long, (f"the short check runs {long} steps, not {self.short_steps}: a short check "
                        f"is never longer than the long checks ({long} steps)")


class _Runner:
  """The only part of the procedure that talks to the executor: one batch per round."""

  def __init__(self, train_fn, store, executor, progress, budget, trial_timeout):
    self.train_fn, self.store, self.executor = train_fn, store, executor
    self.progress, self.budget, self.trial_timeout = progress, budget, trial_timeout
    self.rounds: list[PlannedRound] = []
    self.stopped = False  # a round was dropped: every later one is too

  def fits(self, steps: int) -> bool:
    used = sum(r.steps for r in self.rounds if r.ran)
    return self.budget is None or used + steps <= self.budget

  def run(self, name: str, configs: Sequence[TrialConfig]) -> Optional[list[TrialRecord]]:
    steps = sum(c.total_steps for c in {c.key(): c for c in configs}.values())
    if self.stopped or not self.fits(steps):
      self.stopped = True
      self.rounds.append(PlannedRound(name, len(configs), steps, ran=False))
      return None
    self.rounds.append(PlannedRound(name, len(configs), steps))
    return run_trials(self.train_fn, list(configs), store=self.store, progress=self.progress,
                      desc=name, executor=self.executor, trial_timeout=self.trial_timeout)


def _search_family(runner: _Runner, sweep: SweepResult, family: FixFamily,
                   ladder: FixLadder, noise: float, baseline_rate: Optional[float]) -> FixResult:
  """Plans, runs and judges one rung of the ladder."""
  trials: list[fix_ladder.FixTrial] = []
  baselines: dict[int, float] = {}
  fixes_by_key = {fix.apply(sweep.best.config).key(): fix for fix in family.fixes}
  for configs in fix_ladder.search_rounds(sweep, family):
    records = runner.run(f"{family.name}: search", configs)
    if records is None:
      if not trials:
        return FixResult(family, fix_ladder.DROPPED, "the budget left no room for its search")
      break
    for record in records:
      fix = fixes_by_key.get(record.config.replace(learning_rate=sweep.best.learning_rate).key())
      if fix is None:  # lr* for a longer budget: the warmup search's equal-budget baseline
        baselines[record.config.total_steps] = fix_ladder.best_value(sweep, record)
      else:
        trials.append(fix_ladder.judge_trial(sweep, fix, record))
    if family.kind == fix_ladder.WARMUP and fix_ladder.round_succeeded(
        sweep, trials, baselines, ladder, noise):
      break
  chosen = fix_ladder.choose(sweep, family, trials, baselines, ladder, noise)
  matched = chosen is not None and fix_ladder.matches_lr_star(sweep, chosen, baselines, ladder,
                                                              noise)
  comparison = None
  if chosen is not None:
    configs = fix_ladder.verification_configs(sweep, chosen, ladder)
    records = runner.run(f"{family.name}: {ladder.seeds} seeds", configs)
    if records is None:
      return FixResult(family, fix_ladder.DROPPED, (
          f"searched ({len(trials)} trials), but the budget left no room to verify it on "
          f"{ladder.seeds} seeds"), tuple(trials), chosen)
    comparison = fix_ladder.compare_seeds(sweep, chosen, records, ladder, noise)
  result = fix_ladder.judge_fix(sweep, family, trials, chosen, comparison, ladder, baseline_rate,
                                matched)
  longer = fix_ladder.longer_run_config(chosen, ladder) if result.helps else None
  if longer is None:
    return result
  records = runner.run(f"{family.name}: {ladder.longer_run_factor:g} x longer", [longer])
  if records is None:
    return dataclasses.replace(result, reason=(
        f"{result.reason} (not trained {ladder.longer_run_factor:g} x longer: the budget left no "
        "room)"))
  return fix_ladder.judge_longer_run(sweep, result, records[0], ladder)


def _run_ladder(runner: _Runner, sweep: SweepResult, families: Sequence[FixFamily],
                ladder: FixLadder, runs: Sequence[ConfirmationRun],
                ) -> tuple[tuple[FixResult, ...], Optional[str]]:
  """The ladder's results, and a sentence on the seed noise the search matched within."""
  results: list[FixResult] = []
  noise, note = 0.0, None
  if any(f.status is None for f in families):
    records = runner.run("lr* on more seeds", fix_ladder.noise_configs(sweep, ladder))
    if records is not None:
      noise = fix_ladder.seed_noise(sweep, records)
      seeds = [sweep.best.config.seed] + [r.config.seed for r in records]
      note = (f"Seed noise: lr*'s best {sweep.metric} ranges over {noise:.3g} across seeds "
              f"{', '.join(map(str, seeds))}; a fix's search trial matches lr* within that or "
              f"{ladder.match_tolerance:.0%} of lr*'s value, whichever is larger.")
  for family in families:
    helped = next((r for r in results if r.helps), None)
    if family.status is not None:
      results.append(FixResult(family, family.status, family.reason))
    elif helped is not None and not ladder.try_all:
      results.append(FixResult(family, fix_ladder.NOT_TRIED,
                               f"an earlier fix ({helped.family.name}) helped"))
    else:
      results.append(_search_family(runner, sweep, family, ladder, noise,
                                    fix_ladder.highest_rate_without_fix(sweep, runs, ladder, noise)))
  return tuple(results), note


def _ladder_upper_bound(sweep: SweepResult, families: Sequence[FixFamily],
                        ladder: FixLadder) -> tuple[int, int]:
  """The most trials and steps the ladder could run (every round of every searched rung)."""
  trials = steps = 0
  for family in families:
    if family.status is not None:
      continue
    rounds = fix_ladder.search_rounds(sweep, family)
    longer = ladder.longer_run_factor > 1.0
    trials += sum(len(r) for r in rounds) + 3 * ladder.seeds + int(longer)
    steps += sum(c.total_steps for r in rounds for c in r)
    longest = max(c.total_steps for r in rounds for c in r)
    steps += 3 * ladder.seeds * longest
    steps += int(math.ceil(ladder.longer_run_factor * longest)) if longer else 0
  return trials, steps


def _check_args(learning_rates, num_steps, base_config, metric, mode, reduce, rule, thresholds,
                trivial_loss, checks, fixes, budget) -> tuple[list[float], TrialConfig]:
  """Every check of ``diagnose``'s arguments that needs no trial; returns the grid and base config."""
  rates = _check_learning_rates(learning_rates)
  if base_config is None:
    if num_steps is None:
      raise ValueError("diagnose needs num_steps or base_config; got neither.")
    _validation.check_positive_int("num_steps", num_steps)
    base_config = TrialConfig(learning_rate=rates[0], num_steps=num_steps)
  elif not isinstance(base_config, TrialConfig):
    raise ValueError(f"base_config must be a TrialConfig or None; got {base_config!r}.")
  elif num_steps is not None:
    _validation.check_positive_int("num_steps", num_steps)
    base_config = base_config.replace(num_steps=num_steps)
  check_ranking(metric, mode, reduce, rule)
  if thresholds is not None and not isinstance(thresholds, DetectorThresholds):
    raise ValueError(f"thresholds must be a DetectorThresholds or None; got {thresholds!r}.")
  if trivial_loss is not None:
    _validation.check_in_range("trivial_loss", trivial_loss, -math.inf, math.inf)
  if not isinstance(checks, Checks):
    raise ValueError(f"checks must be a Checks or None; got {checks!r}.")
  if fixes is not None and not isinstance(fixes, FixLadder):
    raise ValueError(f"fixes must be a FixLadder, or None to skip the fix ladder; got {fixes!r}.")
  sweep_steps = len(rates) * base_config.total_steps
  short, long, _ = checks.lengths(base_config.num_steps)
  check_steps = short + len(checks.long_factors) * long
  if budget is not None:
    _validation.check_positive_int("budget", budget)
    if budget < sweep_steps + check_steps:
      raise ValueError(f"budget must be an integer >= {sweep_steps + check_steps} (the sweep "
                       f"needs {sweep_steps} training steps and the checks {check_steps}); got "
                       f"{budget!r}.")
  return rates, base_config


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
    trivial_loss: Optional[float] = None,
    checks: Optional[Checks] = None,
    fixes: Optional[FixLadder] = FixLadder(),
    budget: Optional[int] = None,
    executor: Optional[Executor] = None,
    trial_timeout: Optional[float] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
    name: Optional[str] = None,
) -> Diagnosis:
  """Runs the playbook's instability diagnosis, finds a fix that works, writes the report.

  Args:
    train_fn: the user's training function (``TrialFn``). The fixes it can
      apply beyond warmup are read from its ``fix_support`` attribute
      (``optstab.diagnosis.with_fix_support``); without one, only warmup is
      tried and the report says which fixes it could not try.
    learning_rates: the sweep grid (e.g. ``log_grid(1e-4, 1.0, 13)``).
    num_steps: steps per sweep trial (or give ``base_config``).
    out_dir: output folder: trial store, report and figures.
    base_config: the ``TrialConfig`` every trial copies (all but the rate).
    metric, mode, reduce: how lr* is chosen (see ``learning_rate_sweep``).
      Fixes are compared on this metric's best-checkpoint value.
    rule: the ``FeasibilityRule`` (default ``FeasibilityRule()``).
    thresholds: the ``DetectorThresholds`` (default ``DetectorThresholds()``).
    trivial_loss: the loss of a model that learned nothing (e.g.
      ``math.log(num_classes)``, the unigram entropy): runs stalled there are
      failed-to-train. Default: each run's own initial level.
    checks: the confirmation checks (default ``Checks()``).
    fixes: the fix ladder's settings (default ``FixLadder()``); ``None``
      diagnoses without trying fixes.
    budget: the most training steps (summed over trials) to spend; the
      ladder's later rounds are dropped first, and the report says which. The
      sweep and the checks must fit.
    executor: a ``concurrent.futures.Executor`` each round's trials run on at
      once (``optstab.diagnosis.default_executor()`` fits the machine);
      ``None``: in turn in this process. Only this process writes ``out_dir``.
    trial_timeout: seconds one trial may run; a trial past it is recorded as
      timed out and the diagnosis goes on (see ``run_trials`` for what the limit
      can stop in this process and on each executor). ``None``: no limit.
    progress: show progress bars.
    log: where the plan and its cost go before training (default ``print``;
      ``None``: nowhere).
    name: the model or workload diagnosed (e.g. ``"Post-LN Transformer"``),
      named in the figures' titles; ``None``: unnamed.

  Returns:
    The ``Diagnosis``, with ``files`` naming what was written.

  Every argument is checked before any trial runs, and that ``out_dir`` can
  be written. The names ``metric`` and ``rule.metric_thresholds`` refer to what
  the training function reports, so they are checked against the first result
  there is: a stored one when resuming, else the sweep's first trial.

  Raises:
    ValueError: on bad input, before any trial runs; for an unknown metric
      name, after at most one trial.
    OSError: when ``out_dir`` cannot be written, before any trial runs.
  """
  checks = Checks() if checks is None else checks
  trial_timeout = executors.check_trial_timeout(trial_timeout)
  if name is not None and not isinstance(name, str):
    raise ValueError(f"name must be a string or None; got {type(name).__name__}.")
  rates, base_config = _check_args(learning_rates, num_steps, base_config, metric, mode, reduce,
                                   rule, thresholds, trivial_loss, checks, fixes, budget)
  support = fix_support(train_fn)
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  store = TrialStore(out_dir)
  stored = next((r.result for r in store.records() if r.result is not None), None)
  if stored is not None:
    check_metric_names(stored, metric, rule)
  short_steps, long_steps, lengths_why = checks.lengths(base_config.num_steps)
  say = log if log is not None else (lambda _: None)
  say(f"optstab.diagnose plan: sweep {len(rates)} rates x {base_config.total_steps} steps; "
      f"checks: {lengths_why}; then, if instability limits lr*, the fix ladder "
      f"({', '.join(fixes.kinds) if fixes is not None else 'off'})"
      + (f"; budget {budget} training steps" if budget is not None else "") + ".")
  runner = _Runner(train_fn, store, executor, progress, budget, trial_timeout)
  runner.rounds.append(PlannedRound("learning-rate sweep", len(rates),
                                    len(rates) * base_config.total_steps))
  sweep = learning_rate_sweep(
      train_fn, rates, base_config=base_config, metric=metric, mode=mode, reduce=reduce,
      rule=rule, store=store, progress=progress, trivial_loss=trivial_loss,
      thresholds=thresholds, executor=executor, trial_timeout=trial_timeout)
  if sweep.best is None:
    return write_report(make_diagnosis(sweep, plan=Plan(budget, tuple(runner.rounds))), out_dir,
                        name=name)

  above = rates_above_best(sweep, count=checks.above_count)
  configs = [short_check_config(sweep, factor=checks.short_factor, num_steps=short_steps,
                                eval_every=checks.short_eval_every)]
  if checks.long_factors:
    configs += long_check_configs(sweep, factors=checks.long_factors, num_steps=long_steps)
  records = runner.run("confirmation checks", configs)
  short = judge_short_check(sweep, records[0], checks.short_factor)
  longs = judge_long_checks(sweep, records[1:], checks.long_factors) if checks.long_factors else ()
  runs: tuple[ConfirmationRun, ...] = (*above, short, *longs)
  verdict = decide_verdict(sweep, runs)

  notes = [f"Check lengths: {lengths_why}."]
  results: tuple[FixResult, ...] = ()
  unstable = unstable_learning_rate(sweep, runs)
  if verdict != STABLE and fixes is not None:
    if sweep.at_grid_top:
      notes.append("No fix was searched: lr* is the largest rate of the grid, so the sweep "
                   "cannot tell whether instability limits it (the checks above lr* fail for "
                   "any model at a high enough rate). Extend the grid upward, then diagnose "
                   "again: the trials already run are reused.")
    elif unstable is None:
      notes.append("No fix was searched: no rate above lr* was unstable, so there is no "
                   "unstable rate for a fix to raise.")
    else:
      rate, where = unstable
      notes.append(f"The fixes were tried from the smallest rate above lr* found unstable, "
                   f"{rate:.4g} ({where}), at {', '.join(f'{f:g}' for f in fixes.rate_factors)} "
                   "x that rate.")
      families = fix_ladder.plan_families(sweep, verdict, rate, support, fixes)
      trials, steps = _ladder_upper_bound(sweep, families, fixes)
      say(f"optstab.diagnose: instability found ({verdict}); the fix ladder runs at most "
          f"{trials} trials, {steps} training steps.")
      results, noise_note = _run_ladder(runner, sweep, families, fixes, runs)
      if noise_note is not None:
        notes.append(noise_note)
  plan = Plan(budget, tuple(runner.rounds))
  diagnosis = make_diagnosis(sweep, above_best=above, short_check=short, long_checks=longs,
                             fixes=results, notes=tuple(notes), plan=plan, verdict=verdict,
                             clip_percentile=90.0 if fixes is None else fixes.clip_percentile)
  return write_report(diagnosis, out_dir, name=name)
