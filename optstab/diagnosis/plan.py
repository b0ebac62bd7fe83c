"""What a diagnosis ran, and what it dropped for its budget: rounds of trials and their cost."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

__all__ = ["PlannedRound", "Plan"]


@dataclasses.dataclass(frozen=True)
class PlannedRound:
  """One round of trials sent as a batch: what it is, how many trials, how many steps."""

  name: str
  trials: int
  steps: int
  ran: bool = True

  def describe(self) -> str:
    return f"{self.name}: {self.trials} trials, {self.steps} training steps"


@dataclasses.dataclass(frozen=True)
class Plan:
  """The diagnosis's rounds and what they cost, as planned and as run.

  Attributes:
    budget: the cap on training steps (``None``: none).
    rounds: every round, in order; ``ran=False`` for a round dropped for the
      budget (later rounds are dropped before earlier ones).
  """

  budget: Optional[int]
  rounds: tuple[PlannedRound, ...] = ()

  @property
  def steps_run(self) -> int:
    return sum(r.steps for r in self.rounds if r.ran)

  @property
  def dropped(self) -> tuple[PlannedRound, ...]:
    return tuple(r for r in self.rounds if not r.ran)

  def to_dict(self) -> dict[str, Any]:
    return {"budget": self.budget, "steps_run": self.steps_run,
            "rounds": [dataclasses.asdict(r) for r in self.rounds]}
