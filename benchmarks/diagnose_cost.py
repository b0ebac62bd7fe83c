"""What a ``diagnose`` run cost: training steps by round, trial seconds, and what early stopping saved.

Reads the output folders ``benchmarks/fix_outcome.py`` (or any ``diagnose``)
wrote: ``diagnosis.json`` (the plan: every round, its trials and steps) and
``trials.jsonl`` (each trial's seconds and curve). A trial whose parameters went
non-finite is stopped by the demos' loop at the first metrics fetch after it
(every ``--fetch-every`` steps); its remaining steps are filled with NaN, so
they are counted here as steps not trained.

  python benchmarks/diagnose_cost.py runs/fix_outcome/post_ln runs/fix_outcome/wrn_stride ...

Prints one markdown table: workload, steps in the sweep, the checks and the fix
ladder, the total, the summed trial seconds, and the steps early stopping saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from optstab.diagnosis import TrialStore


def _saved_steps(train_loss: np.ndarray, fetch_every: int) -> int:
  """Steps after the fetch that saw the first non-finite loss (the loop stopped there)."""
  bad = np.flatnonzero(~np.isfinite(train_loss))
  if bad.size == 0:
    return 0
  stop = int(math.ceil((bad[0] + 1) / fetch_every) * fetch_every)
  return max(0, train_loss.size - stop)


def cost(folder: str, fetch_every: int) -> dict:
  with open(os.path.join(folder, "diagnosis.json"), encoding="utf-8") as f:
    plan = json.load(f)["plan"] or {"rounds": []}
  by_kind = {"sweep": 0, "checks": 0, "ladder": 0}
  for r in plan["rounds"]:
    if not r["ran"]:
      continue
    kind = ("sweep" if r["name"] == "learning-rate sweep" else
            "checks" if r["name"] == "confirmation checks" else "ladder")
    by_kind[kind] += r["steps"]
  store = TrialStore(folder)
  records = store.records()
  seconds = sum(r.seconds for r in records)
  saved = sum(_saved_steps(r.result.train_loss, fetch_every) for r in records
              if r.result is not None)
  store.close()
  return {"folder": folder, **by_kind, "total": sum(by_kind.values()), "trial_seconds": seconds,
          "early_stop_saved_steps": saved, "trials": len(records)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folders", nargs="+")
  parser.add_argument("--fetch-every", type=int, default=50)
  args = parser.parse_args(argv)
  print("| workload | sweep steps | checks steps | fix-ladder steps | total steps | trials | "
        "trial seconds | steps early stopping saved |")
  print("|---|---|---|---|---|---|---|---|")
  for folder in args.folders:
    c = cost(folder, args.fetch_every)
    print(f"| {os.path.basename(folder.rstrip('/'))} | {c['sweep']} | {c['checks']} | "
          f"{c['ladder']} | {c['total']} | {c['trials']} | {c['trial_seconds']:.0f} | "
          f"{c['early_stop_saved_steps']} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
