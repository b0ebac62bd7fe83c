"""Learning-rate sweeps: find lr*, label every trial, spot the edge.

The FAQ's procedure starts with a learning-rate sweep: train at each rate of a
grid (log-spaced by default, ``log_grid``), mark the trials that produce NaNs
or abnormally high loss as infeasible (``FeasibilityRule``), and pick the best
rate lr* by a metric (the final evaluation ``"loss"`` by default, lower is
better) among the feasible ones.

Every trial also gets one label (``classify_run``: stable, early-unstable,
mid-training-unstable, failed-to-train, diverged), classified with the sweep's
context: ``reference_loss`` is lr*'s final training-loss level, and
``trivial_loss`` what the user passes (e.g. ``log(num_classes)``). The label is
never milder than the feasibility verdict (``judge``; see
``optstab.diagnosis.detectors``). A trial is *unstable* when it is infeasible
or its label is not ``"stable"``: the FAQ's Figures 4 and 6 treat a run that
stalls at a high rate like one that blows up. If lr*'s higher grid neighbour
is unstable, lr* "sits at the edge of feasibility", which the FAQ reads as a
sign of optimization instability; ``unstable_learning_rate`` is the smallest
unstable rate above lr*.

Every finished trial is appended durably to ``<out_dir>/trials.jsonl``
(``TrialStore``) the moment it ends; re-running the same sweep into the same
folder skips the trials already there. A trial that raises is recorded with its
error and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Executor
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from optstab import _validation
from optstab._types import PathLike
from optstab.diagnosis.detectors import (
    DIVERGED,
    EARLY_UNSTABLE,
    FAILED_TO_TRAIN,
    MID_TRAINING_UNSTABLE,
    STABLE,
    DetectorThresholds,
    RunDiagnosis,
    classify_run,
    final_loss_level,
    most_severe,
)
from optstab import executors
from optstab.diagnosis.feasibility import Feasibility, FeasibilityRule, check_feasibility
from optstab.diagnosis.store import RecordView, TrialRecord, TrialStore
from optstab.trial import TrialConfig, TrialFn, TrialResult, fix_support

__all__ = [
    "log_grid",
    "run_trials",
    "learning_rate_sweep",
    "metric_value",
    "SweepTrial",
    "SweepResult",
    "TRAIN_LOSS",
    "ERROR",
    "check_ranking",
    "check_metric_names",
]

#: Metric name meaning "the training loss" rather than an evaluation metric.
TRAIN_LOSS = "train_loss"

#: The label of a trial whose training function raised: there is no curve to label.
ERROR = "error"

_MODES = ("min", "max")
_REDUCES = ("final", "best")



def log_grid(low: float, high: float, num: int) -> np.ndarray:
  """``num`` log-spaced values from ``low`` to ``high``, both included.

  Args:
    low: the smallest value, > 0.
    high: the largest value, > ``low`` (or equal to it when ``num == 1``).
    num: how many values, >= 1.

  Returns:
    A float64 array of shape ``[num]``.

  Example:
    >>> log_grid(1e-3, 1.0, 4).round(6).tolist()
    [0.001, 0.01, 0.1, 1.0]
  """
  _validation.check_positive("low", low)
  _validation.check_positive("high", high)
  _validation.check_positive_int("num", num)
  if num == 1:
    if high != low:
      raise ValueError(f"high must equal low when num == 1; got low={low!r}, high={high!r}.")
    return np.array([float(low)])
  if not high > low:
    raise ValueError(f"high must be > low; got low={low!r}, high={high!r}.")
  grid = np.logspace(math.log10(low), math.log10(high), num)
  grid[0], grid[-1] = float(low), float(high)
  if not np.all(np.diff(grid) > 0):
    raise ValueError(f"high must be far enough above low for {num} distinct rates; got "
                     f"low={low!r}, high={high!r}.")
  return grid


def _check_learning_rates(learning_rates: Iterable[float]) -> list[float]:
  if isinstance(learning_rates, np.ndarray):
    learning_rates = learning_rates.ravel()
  rates = _validation.check_sequence("learning_rates", learning_rates)
  if not rates:
    raise ValueError("learning_rates must hold at least one rate; got an empty grid.")
  for i, rate in enumerate(rates):
    _validation.check_positive(f"learning_rates[{i}]", rate)
  rates = sorted(float(r) for r in rates)
  duplicates = sorted({r for r in rates if rates.count(r) > 1})
  if duplicates:
    raise ValueError(f"learning_rates must be distinct; got duplicates {duplicates}.")
  return rates


def check_ranking(metric: Any, mode: Any, reduce: Any, rule: Any) -> None:
  """The ranking arguments of a sweep, as far as they can be checked before a trial."""
  if not isinstance(metric, str) or not metric:
    raise ValueError(f"metric must be the name of an evaluation metric or {TRAIN_LOSS!r}; "
                     f"got {metric!r}.")
  _validation.check_one_of("mode", mode, _MODES)
  _validation.check_one_of("reduce", reduce, _REDUCES)
  if rule is not None and not isinstance(rule, FeasibilityRule):
    raise ValueError(f"rule must be a FeasibilityRule or None; got {rule!r}.")


def check_metric_names(result: TrialResult, metric: str, rule: Optional[FeasibilityRule]) -> None:
  """``metric`` and ``rule.metric_thresholds`` name metrics ``result`` reports."""
  reported = sorted(result.eval_metrics)
  if metric != TRAIN_LOSS and metric not in result.eval_metrics:
    raise ValueError(f"metric must be one of the metrics the training function reports, "
                     f"{reported}, or {TRAIN_LOSS!r}; got {metric!r}.")
  for name in ({} if rule is None else rule.metric_thresholds):
    if name not in result.eval_metrics:
      raise ValueError(f"rule.metric_thresholds must name metrics the training function "
                       f"reports, {reported}; got {name!r}.")


def run_trials(
    train_fn: TrialFn,
    configs: Sequence[TrialConfig],
    *,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
    desc: str = "trials",
    executor: Optional[Executor] = None,
    trial_timeout: Optional[float] = None,
) -> list[TrialRecord]:
  """Runs each configuration once, durably recording each as it finishes.

  Trials already in the store are not run again (nor is a configuration given
  twice; rates equal to 10 significant digits are one configuration). A
  configuration that asks for a fix the training function does not declare
  (``TrialConfig.clip_norm``, ``.optimizer``, ``.skip_spikes``; see
  ``with_fix_support``) is refused before any trial runs. Whatever a trial
  does, it is recorded against that trial alone and the next trial runs: a
  trial that raises (any exception, ``sys.exit()`` included), returns
  something that is not a valid ``TrialResult`` of its own configuration,
  kills its worker process (``executors.WORKER_CRASHED``) or runs past
  ``trial_timeout`` (``executors.TRIAL_TIMEOUT``). The user's Ctrl-C stops
  the sweep, every finished trial kept.

  Args:
    train_fn: the user's training function (``TrialFn``); it must pickle when
      ``executor`` is a process pool.
    configs: the trials to run.
    out_dir: folder of the store (``<out_dir>/trials.jsonl``); ``None`` with
      ``store=None`` keeps nothing on disk.
    store: an open ``TrialStore`` (instead of ``out_dir``).
    progress: show a tqdm progress bar.
    desc: the progress bar's label.
    executor: a ``concurrent.futures.Executor`` to run the trials on
      (``optstab.executors``: e.g. ``default_executor()``, a Dask
      ``Client.get_executor()``); ``None`` runs them in turn in this process.
      Only this process writes the store, as each trial finishes.
    trial_timeout: seconds one trial may run (``None``: no limit). On an
      executor, a trial still running at the limit is recorded as timed out
      with its elapsed time, its ``ProcessPool`` worker is killed (a Dask
      worker is replaced by its nanny) and the sweep goes on (a ``ProcessPool``
      worker stuck in a call that holds the interpreter lock, which its own
      watch cannot interrupt, is killed ``executors.TRIAL_TIMEOUT_GRACE``
      seconds past the limit); on another
      executor (threads, a plain ``ProcessPoolExecutor``) it is recorded and
      the sweep goes on, but its thread runs on until the worker exits. In
      this process, a timer interrupts the trial: that stops Python code (a
      loop, a wait on a queue or lock, between two jitted steps), not one call
      stuck in C (a hung collective) nor a trial that catches
      ``BaseException``; and only when the sweep runs in the main thread.

  Returns:
    One ``TrialRecord`` per configuration, in the order given, each in the form
    a reload from disk returns, whatever the order the trials finished in.
  """
  trial_timeout = executors.check_trial_timeout(trial_timeout)
  if store is None and out_dir is not None:
    store = TrialStore(out_dir)
  support = fix_support(train_fn)
  for config in configs:
    if not isinstance(config, TrialConfig):
      raise TypeError(f"configs must hold TrialConfig objects; got {type(config).__name__}.")
    unsupported = support.unsupported(config)
    if unsupported:
      raise ValueError(f"configs ask for fixes the training function does not declare "
                       f"({', '.join(unsupported)}); declare them with "
                       f"optstab.with_fix_support(train_fn, ...) if it applies them.")
  records: dict[str, TrialRecord] = {}
  missing: dict[str, TrialConfig] = {}
  for config in configs:
    stored = store.get(config) if store is not None else None
    if stored is not None:
      records[config.key()] = stored
    else:
      missing.setdefault(config.key(), config)
  todo = list(missing.values())
  bar = tqdm(total=len(todo), desc=desc, disable=not progress or not todo, leave=False)

  def finished(index: int, record: TrialRecord) -> None:
    if store is not None:
      store.append(record)
    records[record.key] = record
    bar.set_postfix(lr=f"{record.config.learning_rate:.3g}", warmup=record.config.warmup_steps)
    bar.update(1)

  try:
    executors.execute_trials(train_fn, todo, finished, executor, trial_timeout=trial_timeout)
  finally:
    bar.close()
  return [records[config.key()] for config in configs]


def metric_value(result: TrialResult, metric: str = "loss", mode: str = "min", reduce: str = "final") -> float:
  """The number a sweep ranks a trial by.

  Args:
    result: a trial's result.
    metric: an evaluation metric's name, or ``"train_loss"``.
    mode: ``"min"`` (lower is better) or ``"max"``.
    reduce: ``"final"``: the last value; ``"best"``: the best value over the
      evaluations (best-checkpoint selection).

  Returns:
    The value (NaN if it is not finite).
  """
  _validation.check_one_of("mode", mode, _MODES)
  _validation.check_one_of("reduce", reduce, _REDUCES)
  if metric == TRAIN_LOSS:
    values = result.train_loss
  elif metric in result.eval_metrics:
    values = result.eval_metrics[metric]
  else:
    raise ValueError(
        f"metric {metric!r} is not among the trial's evaluation metrics "
        f"{sorted(result.eval_metrics)} (or {TRAIN_LOSS!r})."
    )
  if values.size == 0:
    return math.nan
  if reduce == "final":
    value = float(values[-1])
  else:
    finite = values[np.isfinite(values)]
    value = math.nan if finite.size == 0 else float(finite.min() if mode == "min" else finite.max())
  return value if math.isfinite(value) else math.nan


class JudgedTrialView(RecordView):
  """Read-only shortcuts for a result that holds a judged ``trial`` (a ``SweepTrial``).

  Shared by the confirmation runs and the warmup search.
  """

  trial: "SweepTrial"

  @property
  def record(self) -> TrialRecord:  # type: ignore[override]
    return self.trial.record

  @property
  def feasible(self) -> bool:
    return self.trial.feasible

  @property
  def reason(self) -> Optional[str]:
    return self.trial.reason

  @property
  def diagnosis(self) -> Optional[RunDiagnosis]:
    return self.trial.diagnosis

  @property
  def label(self) -> str:
    """The run's label (``"error"`` if the training function raised)."""
    return self.trial.label

  @property
  def recovered(self) -> Optional[bool]:
    return self.trial.recovered

  @property
  def unstable(self) -> bool:
    """Infeasible, or labelled anything but stable."""
    return self.trial.unstable


@dataclasses.dataclass(frozen=True)
class SweepTrial(RecordView):
  """One judged trial: its record, feasibility, metric value and label.

  Attributes:
    record: the trial record (result or error).
    feasible: by the sweep's ``FeasibilityRule``.
    reason: why it is infeasible, if it is.
    metric_value: what lr* is chosen by (NaN if infeasible).
    label: one of ``LABELS`` (``ERROR`` if the training function raised),
      never milder than the feasibility verdict.
    recovered: for an early-unstable trial, whether training recovered.
    diagnosis: ``classify_run`` of its curve, with the sweep's context
      (``None`` if the training function raised).
  """

  record: TrialRecord
  feasible: bool
  reason: Optional[str]
  metric_value: float
  label: str = ERROR
  recovered: Optional[bool] = None
  diagnosis: Optional[RunDiagnosis] = None

  @property
  def unstable(self) -> bool:
    """Infeasible, or labelled anything but ``"stable"``."""
    return not self.feasible or self.label != STABLE

  @property
  def headline(self) -> str:
    """The label, with ``(then recovered)`` / ``(did not recover)`` for early instability."""
    if self.label == EARLY_UNSTABLE:
      return self.label + (" (then recovered)" if self.recovered else " (did not recover)")
    return self.label

  def describe(self) -> str:
    """One clause: the label, its evidence, and the feasibility verdict (never contradicting)."""
    if self.diagnosis is None:
      return f"{ERROR}: the training function raised {self.record.error}"
    # Raised above the curve's own label by the feasibility verdict: the
    # verdict's reason is the evidence, not "no loss spike".
    parts = self.diagnosis.evidence(include_none=self.label == self.diagnosis.label)
    if not self.feasible:
      parts.append(f"infeasible: {self.reason}")
    return f"{self.headline}: " + "; ".join(parts)

  def to_dict(self) -> dict[str, Any]:
    return {
        "learning_rate": self.learning_rate,
        "feasible": self.feasible,
        "reason": self.reason,
        "metric_value": self.metric_value if math.isfinite(self.metric_value) else None,
        "label": self.label,
        "recovered": self.recovered,
        "summary": self.describe(),
        "seconds": self.record.seconds,
    }


def _label(verdict: Feasibility, diagnosis: RunDiagnosis) -> tuple[str, Optional[bool]]:
  """The curve's label, raised to what the feasibility verdict implies (never milder)."""
  implied = STABLE
  if verdict.kind == "nonfinite" or (verdict.kind == "loss_ratio" and verdict.at_last_step):
    implied = DIVERGED
  elif verdict.kind == "loss_ratio":
    implied = EARLY_UNSTABLE if verdict.step <= diagnosis.early_steps else MID_TRAINING_UNSTABLE
  elif verdict.kind == "metric_threshold":
    implied = FAILED_TO_TRAIN
  label = most_severe(diagnosis.label, implied)
  if label != EARLY_UNSTABLE:
    return label, None
  if diagnosis.label == EARLY_UNSTABLE:
    return label, diagnosis.recovered
  return label, bool(diagnosis.first_nonfinite_step is None
                     and diagnosis.final_loss < diagnosis.initial_loss)


def judge(record: TrialRecord, rule: FeasibilityRule, metric: str, mode: str, reduce: str, *,
          thresholds: Optional[DetectorThresholds] = None, trivial_loss: Optional[float] = None,
          reference_loss: Optional[float] = None) -> SweepTrial:
  """Feasibility, metric value and label of one finished trial.

  Args:
    record: the trial.
    rule, metric, mode, reduce: as in ``learning_rate_sweep``.
    thresholds: detector thresholds (default ``DetectorThresholds()``).
    trivial_loss, reference_loss: ``classify_run``'s context.

  Returns:
    A ``SweepTrial``.
  """
  if record.result is None:
    return SweepTrial(record, False, f"the training function raised {record.error}", math.nan)
  verdict = check_feasibility(record.result, rule)
  value = math.nan
  if verdict.feasible:
    value = metric_value(record.result, metric, mode, reduce)
    if math.isnan(value):
      verdict = Feasibility(False, f"{metric} is not finite", "nonfinite")
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  diagnosis = classify_run(record.result.train_loss, record.result.grad_norms, thresholds,
                           trivial_loss=trivial_loss, reference_loss=reference_loss)
  label, recovered = _label(verdict, diagnosis)
  return SweepTrial(record, verdict.feasible, verdict.reason, value, label, recovered, diagnosis)


def _best_index(trials: Sequence[SweepTrial], mode: str) -> Optional[int]:
  """Index of lr* among the feasible trials (ties: the smaller rate)."""
  values = np.array([t.metric_value for t in trials])
  ok = np.array([t.feasible for t in trials], dtype=bool) & np.isfinite(values)
  if not ok.any():
    return None
  scores = np.where(ok, values if mode == "min" else -values, np.inf)
  return int(np.argmin(scores))


def judge_sweep(records: Sequence[TrialRecord], rule: FeasibilityRule, metric: str, mode: str,
                reduce: str, *, thresholds: Optional[DetectorThresholds] = None,
                trivial_loss: Optional[float] = None) -> tuple[tuple[SweepTrial, ...], Optional[float]]:
  """Judges a sweep's trials with its context: ``(trials, reference_loss)``.

  lr* is found first (by feasibility and the metric, which the labels do not
  change); its final training-loss level (``final_loss_level``) is then every
  trial's ``reference_loss``.
  """
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  first = [judge(r, rule, metric, mode, reduce, thresholds=thresholds, trivial_loss=trivial_loss)
           for r in records]
  i = _best_index(first, mode)
  if i is None:
    return tuple(first), None
  reference = final_loss_level(first[i].result.train_loss, thresholds)
  if not math.isfinite(reference):
    return tuple(first), None
  return tuple(judge(r, rule, metric, mode, reduce, thresholds=thresholds,
                     trivial_loss=trivial_loss, reference_loss=reference)
               for r in records), reference


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """A learning-rate sweep's outcome, trials sorted by learning rate.

  Attributes:
    trials: one ``SweepTrial`` per rate, ascending.
    base_config: the configuration every trial copies (all but the rate).
    metric, mode, reduce: how trials were ranked.
    rule: the feasibility rule applied.
    thresholds: the detector thresholds the labels used.
    trivial_loss: the trivial loss level given to the sweep, if any.
    reference_loss: lr*'s final training-loss level, every trial's
      ``reference_loss`` (``None`` without a feasible trial).
    ignored_store_lines: lines of the trial store that were not records and
      were skipped when it was loaded (``TrialStore.ignored_lines``).
  """

  trials: tuple[SweepTrial, ...]
  base_config: TrialConfig
  metric: str
  mode: str
  reduce: str
  rule: FeasibilityRule
  thresholds: DetectorThresholds = DetectorThresholds()
  trivial_loss: Optional[float] = None
  reference_loss: Optional[float] = None
  ignored_store_lines: int = 0

  @property
  def learning_rates(self) -> np.ndarray:
    return np.array([t.learning_rate for t in self.trials])

  @property
  def metric_values(self) -> np.ndarray:
    return np.array([t.metric_value for t in self.trials])

  @property
  def feasible(self) -> np.ndarray:
    return np.array([t.feasible for t in self.trials], dtype=bool)

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(t.label for t in self.trials)

  @property
  def best_index(self) -> Optional[int]:
    """Index of lr* among the feasible trials (ties: the smaller rate)."""
    return _best_index(self.trials, self.mode)

  @property
  def best(self) -> Optional[SweepTrial]:
    i = self.best_index
    return None if i is None else self.trials[i]

  @property
  def best_learning_rate(self) -> Optional[float]:
    """lr*, or ``None`` if no trial is feasible."""
    best = self.best
    return None if best is None else best.learning_rate

  @property
  def at_grid_top(self) -> bool:
    """lr* is the largest rate of the grid: extend the grid upward."""
    i = self.best_index
    return i is not None and i == len(self.trials) - 1

  @property
  def at_edge_of_feasibility(self) -> bool:
    """lr*'s higher grid neighbour is unstable (infeasible, or not labelled stable).

    The FAQ's sign of instability: a failed-to-train or unstable trial just
    above lr* counts like an infeasible one.
    """
    i = self.best_index
    return i is not None and i + 1 < len(self.trials) and self.trials[i + 1].unstable

  @property
  def unstable_learning_rate(self) -> Optional[float]:
    """The smallest unstable rate above lr* (the FAQ's unstable_base_learning_rate)."""
    i = self.best_index
    if i is None:
      return None
    for trial in self.trials[i + 1:]:
      if trial.unstable:
        return trial.learning_rate
    return None

  def judge(self, record: TrialRecord, rule: Optional[FeasibilityRule] = None, *,
            use_reference: bool = True) -> SweepTrial:
    """Judges another trial (a confirmation run) with this sweep's context.

    Args:
      record: the trial.
      rule: feasibility rule (default: the sweep's).
      use_reference: hold the trial to lr*'s final loss level; ``False`` for
        runs much shorter than the sweep's (the warmup search), which cannot be.
    """
    return judge(record, self.rule if rule is None else rule, self.metric, self.mode, self.reduce,
                 thresholds=self.thresholds, trivial_loss=self.trivial_loss,
                 reference_loss=self.reference_loss if use_reference else None)

  def above_best(self, count: int = 2) -> tuple[SweepTrial, ...]:
    """The ``count`` trials at the grid rates just above lr*."""
    _validation.check_positive_int("count", count)
    i = self.best_index
    return () if i is None else self.trials[i + 1:i + 1 + count]

  def to_dict(self) -> dict[str, Any]:
    return {
        "metric": self.metric,
        "mode": self.mode,
        "reduce": self.reduce,
        "rule": self.rule.describe(),
        "base_config": self.base_config.to_dict(),
        "best_learning_rate": self.best_learning_rate,
        "at_edge_of_feasibility": self.at_edge_of_feasibility,
        "at_grid_top": self.at_grid_top,
        "unstable_learning_rate": self.unstable_learning_rate,
        "trivial_loss": self.trivial_loss,
        "reference_loss": self.reference_loss,
        "trials": [t.to_dict() for t in self.trials],
        "ignored_store_lines": self.ignored_store_lines,
    }


def learning_rate_sweep(
    train_fn: TrialFn,
    learning_rates: Sequence[float],
    num_steps: Optional[int] = None,
    *,
    base_config: Optional[TrialConfig] = None,
    metric: str = "loss",
    mode: str = "min",
    reduce: str = "final",
    rule: Optional[FeasibilityRule] = None,
    out_dir: Optional[PathLike] = None,
    store: Optional[TrialStore] = None,
    progress: bool = True,
    trivial_loss: Optional[float] = None,
    thresholds: Optional[DetectorThresholds] = None,
    executor: Optional[Executor] = None,
    trial_timeout: Optional[float] = None,
) -> SweepResult:
  """Trains at each learning rate, labels every trial and picks lr*.

  Args:
    train_fn: the user's training function (``TrialFn``).
    learning_rates: the grid (e.g. ``log_grid(1e-4, 1.0, 13)``); positive,
      distinct; run in ascending order.
    num_steps: training steps per trial (give this or ``base_config``).
    base_config: a ``TrialConfig`` every trial copies, replacing only its
      ``learning_rate`` (its own rate is ignored).
    metric: what lr* minimizes: an evaluation metric's name (default
      ``"loss"``) or ``"train_loss"``.
    mode: ``"min"`` (lower is better, default) or ``"max"``.
    reduce: ``"final"`` (last evaluation, default) or ``"best"`` (best
      evaluation: best-checkpoint selection).
    rule: the ``FeasibilityRule`` (default: NaN/Inf or any training loss above
      10 x the initial one).
    out_dir: folder to record trials in and resume from.
    store: an open ``TrialStore`` instead of ``out_dir``.
    progress: show a tqdm progress bar.
    trivial_loss: the loss of a model that learned nothing (e.g.
      ``math.log(num_classes)``): trials stalled there are failed-to-train.
    thresholds: the ``DetectorThresholds`` of the labels (default
      ``DetectorThresholds()``).
    executor: run the trials on this ``concurrent.futures.Executor`` (see
      ``run_trials``); ``None``: one after another in this process.
    trial_timeout: seconds one trial may run; a trial past it is recorded as
      timed out and the sweep goes on (``run_trials`` says what the limit can
      stop on each executor). ``None``: no limit.

  Returns:
    A ``SweepResult``: ``best_learning_rate`` (lr*), ``at_edge_of_feasibility``,
    ``unstable_learning_rate`` and every trial with its label and reason.

  What is checked when: the arguments before any trial runs; the names
  ``metric`` and ``rule.metric_thresholds`` (which only a result can tell)
  after the first trial, before the others run (that trial stays stored).

  Raises:
    ValueError: on an empty or scalar grid, a non-positive or repeated rate, a
      missing or non-positive ``num_steps``, a bad ``mode`` / ``reduce``; or,
      after the first trial, a metric it does not report.
  """
  rates = _check_learning_rates(learning_rates)
  if base_config is None:
    if num_steps is None:
      raise ValueError("learning_rate_sweep needs num_steps or base_config; got neither.")
    _validation.check_positive_int("num_steps", num_steps)
    base_config = TrialConfig(learning_rate=rates[0], num_steps=num_steps)
  elif num_steps is not None:
    _validation.check_positive_int("num_steps", num_steps)
    base_config = base_config.replace(num_steps=num_steps)
  check_ranking(metric, mode, reduce, rule)
  if trivial_loss is not None:
    _validation.check_in_range("trivial_loss", trivial_loss, -math.inf, math.inf)
  rule = FeasibilityRule() if rule is None else rule
  trial_timeout = executors.check_trial_timeout(trial_timeout)
  configs = [base_config.replace(learning_rate=rate) for rate in rates]
  if store is None and out_dir is not None:
    store = TrialStore(out_dir)
  records = []
  if executors.in_process(executor):
    # The first trial alone: a metric name it does not report fails before the rest run.
    # (On a parallel executor that would idle every other worker: the names are
    # checked once the trials are back, all of them already recorded.)
    records = run_trials(train_fn, configs[:1], store=store, progress=False, executor=executor,
                         trial_timeout=trial_timeout)
    if records[0].result is not None:
      check_metric_names(records[0].result, metric, rule)
  records += run_trials(
      train_fn, configs[len(records):], store=store, progress=progress,
      desc="learning-rate sweep", executor=executor, trial_timeout=trial_timeout,
  )
  first = next((r.result for r in records if r.result is not None), None)
  if first is not None:
    check_metric_names(first, metric, rule)
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  trials, reference = judge_sweep(records, rule, metric, mode, reduce, thresholds=thresholds,
                                  trivial_loss=trivial_loss)
  ignored = 0 if store is None else store.ignored_lines
  return SweepResult(trials, base_config, metric, mode, reduce, rule, thresholds, trivial_loss,
                     reference, ignored)
