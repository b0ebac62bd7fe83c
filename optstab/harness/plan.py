"""A demo's trial plan, built without training: which trials, how many steps, what it costs.

A demo builds its :class:`TrialPlan` from a preset and its seeds: the trials
that need no other trial's result are listed as configs; the trials whose
config depends on another trial's result (a clipping threshold read from an
unclipped run's gradient norms, a long check at a multiple of a sweep's lr*)
are counted with their lengths. :meth:`TrialPlan.estimate` turns the plan and a
measured per-step cost into CPU seconds and a wall time on ``workers`` cores,
so a preset's documented cost can be checked without running it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from optstab import _validation
from optstab.trial import TrialConfig

__all__ = ["TrialPlan", "CostModel", "Estimate"]

#: ``TrialConfig.extra`` keys that label a trial but do not change what is compiled.
LABEL_KEYS = ("variant",)


@dataclasses.dataclass(frozen=True)
class CostModel:
  """A measured cost of one demo's trials on one machine, in CPU seconds.

  Attributes:
    step_cpu_seconds: one training step, steady state (compiled), evaluations
      included at the preset's cadence, per trial variant (``TrialConfig.extra
      ["variant"]``); the key ``"*"`` is every other variant's.
    compile_cpu_seconds: what the first trial of a model costs beyond its
      steps (tracing, compilation, the first evaluation's compilation), paid
      once per compiled model and worker process.
    measured: how and where it was measured (a sentence for the docs).
  """

  step_cpu_seconds: Mapping[str, float]
  compile_cpu_seconds: float
  measured: str

  def __post_init__(self):
    if "*" not in self.step_cpu_seconds:
      raise ValueError("step_cpu_seconds must hold the key '*' (every other variant's cost); "
                       f"got {sorted(self.step_cpu_seconds)}.")
    for k, v in self.step_cpu_seconds.items():
      _validation.check_positive(f"step_cpu_seconds[{k!r}]", v)
    _validation.check_in_range("compile_cpu_seconds", self.compile_cpu_seconds, 0.0, float("inf"))

  def step_cost(self, variant: Optional[str]) -> float:
    """CPU seconds of one step of ``variant``."""
    return self.step_cpu_seconds.get(variant, self.step_cpu_seconds["*"])


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A plan's estimated cost: ``cpu_seconds`` in all, ``wall_seconds`` on ``workers`` idle cores."""

  cpu_seconds: float
  wall_seconds: float
  workers: int

  def describe(self) -> str:
    return (f"~{self.cpu_seconds:.0f} CPU s, ~{self.wall_seconds / 60:.1f} min wall on "
            f"{self.workers} idle cores")


@dataclasses.dataclass(frozen=True)
class TrialPlan:
  """Every trial of an experiment, before training.

  Attributes:
    seeds: the seeds the plan covers (each seed is the whole experiment again).
    configs: the trials that need no other trial's result, every seed, in the
      order they run (duplicates removed: a trial two figures share is run once).
    dependent: ``(variant, steps)`` of each trial whose config depends on
      another trial's result (steps: warmup included); counted, not built.
  """

  seeds: tuple[int, ...]
  configs: tuple[TrialConfig, ...]
  dependent: tuple[tuple[str, int], ...] = ()

  def __post_init__(self):
    keys = [c.key() for c in self.configs]
    if len(set(keys)) != len(keys):
      raise ValueError("a TrialPlan's configs must be distinct (a shared trial runs once).")
    for i, (_, n) in enumerate(self.dependent):
      _validation.check_positive_int(f"dependent[{i}] steps", n)

  @classmethod
  def build(cls, seeds: Sequence[int], configs: Sequence[TrialConfig],
            dependent: Sequence[tuple[str, int]] = ()) -> "TrialPlan":
    """A plan from ``configs`` in order, a repeated trial kept once (its first place)."""
    unique: dict[Any, TrialConfig] = {}
    for c in configs:
      unique.setdefault(c.key(), c)
    return cls(tuple(seeds), tuple(unique.values()), tuple((str(v), int(n)) for v, n in dependent))

  @property
  def num_trials(self) -> int:
    """Every trial: the listed ones and the dependent ones."""
    return len(self.configs) + len(self.dependent)

  @property
  def num_steps(self) -> int:
    """Training steps of every trial together (warmup included)."""
    return sum(c.total_steps for c in self.configs) + sum(n for _, n in self.dependent)

  @property
  def num_models(self) -> int:
    """Distinct compiled models among the listed trials (``extra`` less its labels).

    The learning rate and the warmup are inputs of the compiled step, so
    trials that differ only in them share one compilation.
    """
    return len({tuple(sorted((k, repr(v)) for k, v in c.extra.items() if k not in LABEL_KEYS))
                for c in self.configs})

  def counts(self) -> dict[str, int]:
    """``seeds``, ``trials``, ``listed``, ``dependent``, ``steps`` and ``models``, for a report."""
    return {"seeds": len(self.seeds), "trials": self.num_trials, "listed": len(self.configs),
            "dependent": len(self.dependent), "steps": self.num_steps,
            "models": self.num_models}

  def estimate(self, cost: CostModel, workers: int = 2) -> Estimate:
    """The plan's cost under ``cost``, on ``workers`` idle cores (one worker process each).

    CPU seconds: every step at its variant's ``cost.step_cpu_seconds`` plus
    one compilation per model and worker. Wall seconds: that over ``workers``, the trials
    assumed to keep every worker busy (the harness runs the listed trials in
    one batch).
    """
    _validation.check_positive_int("workers", workers)
    cpu = sum(c.total_steps * cost.step_cost(c.extra.get("variant")) for c in self.configs)
    cpu += sum(n * cost.step_cost(v) for v, n in self.dependent)
    cpu += self.num_models * min(workers, max(1, self.num_trials)) * cost.compile_cpu_seconds
    return Estimate(cpu_seconds=cpu, wall_seconds=cpu / workers, workers=workers)
