"""``argparse`` argument types shared by optstab's command lines: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["int_at_least", "positive_float"]


def int_at_least(minimum: int) -> Callable[[str], int]:
  """An argparse type: an integer >= ``minimum`` (a bad value is a usage error, exit 2)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
    return value

  return parse


def positive_float(text: str) -> float:
  """An argparse type: a finite real > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}") from None
  if not 0.0 < value < float("inf"):
    raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
  return value
