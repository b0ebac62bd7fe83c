"""The pieces every demo's report shares: number formats and the timing line."""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["finite", "fmt", "pct", "timing_line"]


def finite(x: Any) -> Optional[float]:
  """``x`` as a float, or ``None`` when it is ``None``, NaN or infinite (JSON-ready)."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def fmt(x: Optional[float], spec: str = ".3g", none: str = "n/a") -> str:
  """``x`` formatted with ``spec``, or ``none`` when there is no value."""
  return none if x is None else format(x, spec)


def pct(x: Optional[float]) -> str:
  """A fraction as a percentage with one decimal (``0.123`` -> ``12.3%``), or ``n/a``."""
  return "n/a" if x is None else f"{100 * x:.1f}%"


def timing_line(summary: dict[str, Any]) -> str:
  """The report sentence on the run's wall time and the trials' summed time."""
  return (f"Wall time of the last invocation: {summary['wall_seconds']:.0f} s; the trials took "
          f"{summary['trial_seconds']:.0f} s in all (summed over every invocation that ran them).")
