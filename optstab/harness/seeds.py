"""Seeds: checking them, and counting on how many of them each verdict holds.

A demo may run its whole experiment once per seed. Its verdicts are
``(key, status, sentence)`` triples judged on one seed's summary (``status``
``None`` for a line that is a list, not a claim); :func:`verdict_support`
counts, for each verdict of the first seed, the seeds on which the same
status comes out, and :func:`verdict_lines` writes each sentence with that
count.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from optstab import _validation

__all__ = ["check_seeds", "summary_seeds", "verdict_support", "verdict_lines"]

#: ``summary -> [(key, status, sentence)]``: a demo's verdicts on one seed.
Judge = Callable[[dict[str, Any]], list[tuple[str, Optional[str], str]]]


def check_seeds(seeds: Optional[Sequence[int]], default: int) -> tuple[int, ...]:
  """``seeds`` (default: ``(default,)``), checked: at least one, integers >= 0, distinct."""
  seeds = (default,) if seeds is None else tuple(seeds)
  if not seeds:
    raise ValueError("seeds must hold at least one seed; got ().")
  for i, seed in enumerate(seeds):
    _validation.check_positive_int(f"seeds[{i}]", seed, minimum=0)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct; got {list(seeds)}.")
  return seeds


def summary_seeds(summary: dict[str, Any]) -> list[int]:
  """The seeds a demo's ``results.json`` covers: its ``seeds``, else its preset's one ``seed``."""
  return summary["seeds"] if "seeds" in summary else [summary["preset"]["seed"]]


def verdict_support(summaries: Sequence[dict[str, Any]], seeds: Sequence[int],
                    judge: Judge) -> list[dict[str, Any]]:
  """Each verdict of the first seed, with the seeds that reach the same status."""
  per_seed = [{key: status for key, status, _ in judge(s)} for s in summaries]
  out = []
  for key, status, text in judge(summaries[0]):
    agree = [seed for seed, st in zip(seeds, per_seed) if status is not None and st.get(key) == status]
    out.append({"key": key, "status": status, "text": text,
                "seeds_agreeing": agree if status is not None else None,
                "statuses": [st.get(key) for st in per_seed]})
  return out


def verdict_lines(support: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[str]:
  """Each verdict's sentence; a claim's ends with ``[k of n seeds]``.

  ``k`` counts the seeds that reach the first seed's status; when some do not,
  the bracket names them with their status, e.g. ``[2 of 3 seeds; seed 1: NOT
  reproduced]``. A line that is a list, not a claim (status ``None``), is
  written as it is.
  """
  out = []
  for v in support:
    text = v["text"]
    if v["status"] is not None:
      agree = set(v["seeds_agreeing"])
      others = [f"seed {seed}: {st if st is not None else 'not judged'}"
                for seed, st in zip(seeds, v["statuses"]) if seed not in agree]
      text += (f" [{len(agree)} of {len(seeds)} seeds"
               + (f"; {'; '.join(others)}" if others else "") + "]")
    out.append(text)
  return out
