"""One experiment run: where its trials run, its store, its sweeps, its outputs.

A demo's ``run_experiment`` is::

    run = harness.start(out_dir, mesh=mesh, executor=executor, progress=progress,
                        trial_timeout=trial_timeout)
    data = ...                                   # the demo's data and setup
    run.use(make_trial_fn(setup, source, mesh=mesh, progress=run.trial_progress))
    run.run_ahead(configs)                       # every independent trial, one batch
    sweep = run.sweep(learning_rates, base_config, metric=..., rule=...)
    ...                                          # the demo's own trials and summary
    summary = run.measured(summary)              # machine record and timings
    files = harness.write_outputs(run.out_dir, summary, figures, render_report)
    return harness.ExperimentResult(summary, files)

Every trial is appended to ``<out_dir>/trials.jsonl`` as it finishes
(``TrialStore``); running again into the same folder skips finished trials, so
an interrupted run resumes. With an executor the trials that need no other
trial's result run first, in one batch, so the workers stay busy; the sweeps
then read them back from the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import Executor
from typing import Any, Callable, Optional, Sequence

from optstab import runner
from optstab._types import PathLike
from optstab.diagnosis import SweepResult, TrialStore, in_process, learning_rate_sweep, run_trials
from optstab.trial import TrialConfig, TrialFn, TrialRecord, to_jsonable

__all__ = ["ExperimentResult", "Run", "start", "check_placement", "write_outputs"]


@dataclasses.dataclass
class ExperimentResult:
  """What a demo's ``run_experiment`` produced: every number, and the files written."""

  summary: dict[str, Any]
  files: dict[str, str]


def check_placement(mesh: Any, executor: Optional[Executor]) -> None:
  """Raises unless the trials run on ``mesh`` or on ``executor``, not both."""
  if mesh is not None and not in_process(executor):
    raise ValueError("give mesh or executor, not both: a mesh's devices belong to this process, "
                     "and each worker of an executor trains on its own devices.")


@dataclasses.dataclass
class Run:
  """One experiment's shared state: its folder, its store, its trial function, where trials run.

  Attributes:
    out_dir: the output folder.
    store: the folder's resumable trial store, opened by :meth:`use` (so data that
      fails to load leaves no store behind).
    executor: where trials run (``None``: one after another in this process).
    progress: show progress bars.
    trial_timeout: seconds one trial may run (``None``: no limit).
    started: ``time.perf_counter()`` when the run started.
    trial_fn: the demo's training function, set by :meth:`use` once the data is loaded.
  """

  out_dir: str
  executor: Optional[Executor]
  progress: bool
  trial_timeout: Optional[float]
  started: float
  trial_fn: Optional[TrialFn] = None
  store: Optional[TrialStore] = None

  @property
  def trial_progress(self) -> bool:
    """Whether each trial shows its own bar: not with an executor (workers' bars would interleave)."""
    return self.progress and in_process(self.executor)

  @property
  def options(self) -> dict[str, Any]:
    """``progress``, ``executor`` and ``trial_timeout``, for any ``optstab.diagnosis`` call."""
    return {"progress": self.progress, "executor": self.executor,
            "trial_timeout": self.trial_timeout}

  def use(self, trial_fn: TrialFn) -> None:
    """Trains every trial of this run with ``trial_fn``; opens the folder's trial store."""
    self.trial_fn = trial_fn
    if self.store is None:
      self.store = TrialStore(self.out_dir)

  def _fn(self) -> TrialFn:
    if self.trial_fn is None:
      raise ValueError("call Run.use(trial_fn) before running trials.")
    return self.trial_fn

  def trials(self, configs: Sequence[TrialConfig], desc: str) -> list[TrialRecord]:
    """The records of ``configs`` (read back from the store, or run), in their order."""
    return run_trials(self._fn(), list(configs), store=self.store, desc=desc, **self.options)

  def run_ahead(self, configs: Sequence[TrialConfig]) -> None:
    """With an executor, runs every trial that needs no other trial's result, in one batch."""
    if not in_process(self.executor):
      self.trials(configs, "trials")

  def sweep(self, learning_rates: Sequence[float], base_config: TrialConfig,
            **kwargs: Any) -> SweepResult:
    """``learning_rate_sweep`` over ``learning_rates`` in this run's store (``kwargs``: metric, rule, ...)."""
    return learning_rate_sweep(self._fn(), learning_rates, base_config=base_config,
                               store=self.store, **self.options, **kwargs)

  def measured(self, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the machine record and the timings added (in place, and returned).

    ``environment``: ``runner.environment()``; ``wall_seconds``: this
    invocation; ``trial_seconds``: every stored trial, summed over every
    invocation that ran one.
    """
    summary["environment"] = runner.environment()
    summary["wall_seconds"] = time.perf_counter() - self.started
    summary["trial_seconds"] = sum(r.seconds for r in self.store.records())
    return summary


def start(out_dir: PathLike, *, mesh: Any = None, executor: Optional[Executor] = None,
          progress: bool = True, trial_timeout: Optional[float] = None) -> Run:
  """Starts an experiment into ``out_dir``: the placement check, the folder, the clock.

  Args:
    out_dir: the output folder (created; a finished trial in it is not run again).
    mesh: the ``'data'`` mesh the demo's trial function uses, if any; not with
      ``executor``.
    executor: where trials run (``None``: one after another in this process).
    progress: show progress bars.
    trial_timeout: seconds one trial may run (``None``: no limit).
  """
  check_placement(mesh, executor)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  started = time.perf_counter()
  return Run(out_dir, executor, progress, trial_timeout, started)


def write_outputs(out_dir: str, summary: dict[str, Any], figures: dict[str, str],
                  render_report: Callable[[dict[str, Any]], str]) -> dict[str, str]:
  """Writes ``results.json`` and ``report.md`` beside the figures; returns every file (name -> path).

  ``summary["files"]`` is set to the files' base names first, so the report and
  ``results.json`` can name them; ``results.json`` is strict JSON (NaN/Inf
  become ``null``).
  """
  files = dict(figures)
  files["results"] = os.path.join(out_dir, "results.json")
  summary["files"] = {k: os.path.basename(v) for k, v in files.items()}
  with open(files["results"], "w", encoding="utf-8") as f:
    json.dump(to_jsonable(summary), f, indent=1, allow_nan=False)
  files["report"] = os.path.join(out_dir, "report.md")
  with open(files["report"], "w", encoding="utf-8") as f:
    f.write(render_report(summary))
  return files
