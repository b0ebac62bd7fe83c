"""How often ``optstab.classify_run`` gives a run the label its outcome says it has.

Loads the labelled corpus (``benchmarks/diagnosis_corpus.jsonl.gz``, written by
``collect_diagnosis_corpus.py``; the outcome protocol that labelled it, which
never looks at optstab's detectors, is in ``benchmarks/DIAGNOSIS_CORPUS.md``),
classifies every run with the installed ``optstab.classify_run`` and prints,
per workload and label, the counts, the false alarms on stable runs, the
recall of every unstable kind, a confusion matrix, the clean synthetic curves
flagged at each noise level, and PASS/FAIL against the targets:

* false alarms (stable runs given any other label) <= 3%;
* recall of ``early-unstable`` and of ``failed-to-train`` >= 95%;
* at most 1 of the 50 clean synthetic curves flagged at each lognormal noise
  level (sigma 0.1, 0.3, 0.5, 0.8 in log space).

Each run is classified with the context the contract gives it:
``classify_run(train_loss, grad_norms, trivial_loss=run["trivial_loss"],
reference_loss=...)``, the reference being the lowest final level
(``final_level``) of the run's group among its runs not labelled
``diverged``. If the installed ``classify_run`` takes no such keywords, it is
called without them and the table says so.

Usage, from any checkout (the optstab on ``PYTHONPATH`` is the one measured)::

    PYTHONPATH=$PWD python benchmarks/diagnosis_accuracy.py
    python benchmarks/diagnosis_accuracy.py --workload wrn --show-errors
    python benchmarks/diagnosis_accuracy.py --plot-errors /tmp/errors
    python benchmarks/diagnosis_accuracy.py --corpus benchmarks/diagnosis_heldout.jsonl.gz  # other seeds

Exit status 0 whatever the verdict (it is a measurement, not a test; the
floors on a subset are in ``tests/test_diagnosis_accuracy.py``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import inspect
import json
import math
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

DEFAULT_CORPUS = pathlib.Path(__file__).resolve().parent / "diagnosis_corpus.jsonl.gz"

STABLE = "stable"
EARLY_UNSTABLE = "early-unstable"
MID_TRAINING_UNSTABLE = "mid-training-unstable"
FAILED_TO_TRAIN = "failed-to-train"
DIVERGED = "diverged"
#: The contract's labels, in precedence order (first wins).
LABELS = (DIVERGED, FAILED_TO_TRAIN, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, STABLE)
UNSTABLE_KINDS = (EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, FAILED_TO_TRAIN, DIVERGED)

#: Targets of issue 10.
MAX_FALSE_ALARM_RATE = 0.03
MIN_RECALL = {EARLY_UNSTABLE: 0.95, FAILED_TO_TRAIN: 0.95}
MAX_CLEAN_FLAGGED = 1
NOISE_LEVELS = (0.1, 0.3, 0.5, 0.8)

#: The final level of a run is the median of its last FINAL_FRACTION of steps
#: (at least FINAL_MIN_STEPS): one noisy minibatch does not move it.
FINAL_FRACTION = 0.1
FINAL_MIN_STEPS = 5


# ----------------------------------------------------------------------------
# The corpus.


def load_corpus(path: os.PathLike | str = DEFAULT_CORPUS) -> list[dict[str, Any]]:
  """The runs of a corpus file (gzipped or plain JSON lines)."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt") as f:
    return [json.loads(line) for line in f if line.strip()]


def as_array(values: Optional[Sequence[Optional[float]]]) -> Optional[np.ndarray]:
  """A float64 array with ``None`` (non-finite in the file) as NaN; ``None`` stays ``None``."""
  if values is None:
    return None
  return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def final_level(train_loss: np.ndarray) -> float:
  """Median of the last ``FINAL_FRACTION`` of the steps (NaN if one of them is not finite)."""
  loss = np.asarray(train_loss, dtype=np.float64)
  tail = loss[-max(FINAL_MIN_STEPS, int(math.ceil(FINAL_FRACTION * loss.size))):]
  return float(np.median(tail)) if np.all(np.isfinite(tail)) else math.nan


def reference_losses(runs: Iterable[Mapping[str, Any]]) -> dict[str, Optional[float]]:
  """Group -> the lowest final level among its runs not labelled diverged (``None``: all diverged)."""
  best: dict[str, Optional[float]] = {}
  for run in runs:
    best.setdefault(run["group"], None)
    if run["label"] == DIVERGED:
      continue
    level = final_level(as_array(run["train_loss"]))
    if math.isfinite(level) and (best[run["group"]] is None or level < best[run["group"]]):
      best[run["group"]] = level
  return best


# ----------------------------------------------------------------------------
# Classifying with the installed optstab.


def context_keywords_supported() -> bool:
  """Whether the installed ``classify_run`` takes ``trivial_loss`` and ``reference_loss``."""
  import optstab

  parameters = inspect.signature(optstab.classify_run).parameters
  return "trivial_loss" in parameters and "reference_loss" in parameters


class Prediction(NamedTuple):
  """What the installed ``classify_run`` says of one run."""

  label: str
  recovered: Optional[bool]


def classify(run: Mapping[str, Any], reference: Optional[float], with_context: bool) -> Prediction:
  """The installed ``optstab.classify_run``'s label (and ``recovered``) of one corpus run.

  A run it raises on gets the label ``"raised <error type>"`` (a miss, listed
  by ``--show-errors``), so one bad run does not hide the others' scores.
  """
  import optstab

  loss = as_array(run["train_loss"])
  norms = as_array(run["grad_norms"])
  try:
    if with_context:
      diagnosis = optstab.classify_run(loss, norms, trivial_loss=run["trivial_loss"],
                                       reference_loss=reference)
    else:
      diagnosis = optstab.classify_run(loss, norms)
  except Exception as e:  # pylint: disable=broad-except
    return Prediction(f"raised {type(e).__name__}", None)
  return Prediction(diagnosis.label, getattr(diagnosis, "recovered", None))


def predict(runs: Sequence[Mapping[str, Any]], references: Mapping[str, Optional[float]],
            with_context: Optional[bool] = None) -> list[Prediction]:
  """Predicted labels of ``runs`` (``references``: from the whole corpus, ``reference_losses``)."""
  if with_context is None:
    with_context = context_keywords_supported()
  return [classify(run, references[run["group"]], with_context) for run in runs]


# ----------------------------------------------------------------------------
# Scores.


class Scores:
  """Counts of (true, predicted) labels, with the issue's rates."""

  def __init__(self, truth: Sequence[str], predicted: Sequence[str]):
    self.pairs = collections.Counter(zip(truth, predicted))
    self.truth = collections.Counter(truth)

  def count(self, label: str) -> int:
    return self.truth[label]

  def false_alarms(self) -> int:
    """Stable runs given another label."""
    return self.truth[STABLE] - self.pairs[(STABLE, STABLE)]

  def false_alarm_rate(self) -> float:
    return self.false_alarms() / self.truth[STABLE] if self.truth[STABLE] else math.nan

  def hits(self, label: str) -> int:
    return self.pairs[(label, label)]

  def recall(self, label: str) -> float:
    return self.hits(label) / self.truth[label] if self.truth[label] else math.nan

  def flagged(self, label: str) -> int:
    """Runs of ``label`` given any label but stable (caught as some problem)."""
    return self.truth[label] - self.pairs[(label, STABLE)]


def _fraction(num: int, den: int) -> str:
  return f"{num}/{den} ({100.0 * num / den:.1f}%)" if den else "-"


def recovered_agreement(runs: Sequence[Mapping[str, Any]], predictions: Sequence[Prediction]) -> tuple[int, int]:
  """(runs whose ``recovered`` matches, runs compared): unstable runs given their own label."""
  pairs = [(r["recovered"], p.recovered) for r, p in zip(runs, predictions)
           if r["recovered"] is not None and p.label == r["label"]]
  return sum(truth == bool(said) for truth, said in pairs), len(pairs)


def clean_curve_flags(runs: Sequence[Mapping[str, Any]], predicted: Sequence[str]) -> dict[float, tuple[int, int]]:
  """Noise level -> (clean synthetic curves flagged, clean curves)."""
  out: dict[float, list[int]] = {}
  for run, label in zip(runs, predicted):
    kind = run["meta"].get("kind", "") if run["workload"] == "synthetic" else ""
    if kind.startswith("clean-sigma"):
      entry = out.setdefault(float(run["meta"]["sigma"]), [0, 0])
      entry[0] += label != STABLE
      entry[1] += 1
  return {sigma: (flagged, total) for sigma, (flagged, total) in sorted(out.items())}


def verdicts(scores: Scores, clean: Mapping[float, tuple[int, int]]) -> list[tuple[str, bool]]:
  """``(target, met)`` for every target that the selection has runs for."""
  out = []
  if scores.count(STABLE):
    out.append((f"false alarms on stable runs {_fraction(scores.false_alarms(), scores.count(STABLE))} "
                f"<= {100 * MAX_FALSE_ALARM_RATE:g}%", scores.false_alarm_rate() <= MAX_FALSE_ALARM_RATE))
  for label, floor in MIN_RECALL.items():
    if scores.count(label):
      out.append((f"recall of {label} {_fraction(scores.hits(label), scores.count(label))} "
                  f">= {100 * floor:g}%", scores.recall(label) >= floor))
  for sigma, (flagged, total) in clean.items():
    out.append((f"clean synthetic curves flagged at sigma {sigma:g}: {flagged}/{total} "
                f"<= {MAX_CLEAN_FLAGGED}", flagged <= MAX_CLEAN_FLAGGED))
  return out


def format_table(runs: Sequence[Mapping[str, Any]], predicted: Sequence[str]) -> str:
  """The per-workload table, the confusion matrix and the clean-curve flags."""
  lines = []
  workloads = sorted(set(r["workload"] for r in runs))
  header = (f"{'workload':11s} {'runs':>5s} {'stable':>7s} {'false alarms':>15s}"
            + "".join(f" {('recall ' + k):>28s}" for k in UNSTABLE_KINDS))
  lines.append(header)
  for workload in workloads + ["all"]:
    idx = [i for i, r in enumerate(runs) if workload in ("all", r["workload"])]
    s = Scores([runs[i]["label"] for i in idx], [predicted[i] for i in idx])
    cells = "".join(f" {_fraction(s.hits(k), s.count(k)):>28s}" for k in UNSTABLE_KINDS)
    lines.append(f"{workload:11s} {len(idx):5d} {s.count(STABLE):7d} "
                 f"{_fraction(s.false_alarms(), s.count(STABLE)):>15s}{cells}")
  lines.append("")
  lines.append("(recall: given exactly the true label; flagged: given any label but stable)")
  s = Scores([r["label"] for r in runs], predicted)
  lines.append("flagged as some problem: " + ", ".join(
      f"{k} {_fraction(s.flagged(k), s.count(k))}" for k in UNSTABLE_KINDS if s.count(k)))
  lines.append("")
  lines.append("confusion matrix (rows: protocol label, columns: classify_run's label)")
  predicted_labels = [k for k in LABELS if any(p == k for p in predicted)]
  predicted_labels += sorted(set(predicted) - set(LABELS))
  width = max(len(k) for k in predicted_labels) + 2
  lines.append(f"{'':24s}" + "".join(f"{k:>{width}s}" for k in predicted_labels) + f"{'total':>8s}")
  for true in LABELS:
    if s.count(true):
      lines.append(f"{true:24s}" + "".join(f"{s.pairs[(true, k)]:{width}d}" for k in predicted_labels)
                   + f"{s.count(true):8d}")
  clean = clean_curve_flags(runs, predicted)
  if clean:
    lines.append("")
    lines.append("clean synthetic curves flagged (any label but stable), per lognormal noise sigma")
    lines.append("  " + "  ".join(f"sigma {sigma:g}: {f}/{t}" for sigma, (f, t) in clean.items()))
  lines.append("")
  for text, met in verdicts(s, clean):
    lines.append(f"{'PASS' if met else 'FAIL'}  {text}")
  return "\n".join(lines)


def plot_run(run: Mapping[str, Any], predicted: str, path: os.PathLike | str) -> None:
  """A PNG of one run: training loss (log scale) and gradient norm, both labels in the title."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  loss = as_array(run["train_loss"])
  norms = as_array(run["grad_norms"])
  fig, axes = plt.subplots(1, 2 if norms is not None else 1, figsize=(10 if norms is not None else 5.5, 3.2),
                           squeeze=False)
  steps = np.arange(1, loss.size + 1)
  axes[0, 0].semilogy(steps, loss, lw=0.8)
  if run["trivial_loss"]:
    axes[0, 0].axhline(run["trivial_loss"], color="gray", lw=0.6, ls="--", label="trivial loss")
    axes[0, 0].legend(fontsize=7)
  axes[0, 0].set_xlabel("step")
  axes[0, 0].set_ylabel("training loss")
  if norms is not None:
    axes[0, 1].semilogy(steps, norms, lw=0.8, color="tab:orange")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_ylabel("gradient norm")
  fig.suptitle(f"{run['id']}\nprotocol: {run['label']} ({run['protocol'][:70]}); classify_run: {predicted}",
               fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--corpus", type=pathlib.Path, default=DEFAULT_CORPUS)
  parser.add_argument("--workload", default=None, help="only this workload (wrn, mlp, cnn, transformer, synthetic)")
  parser.add_argument("--show-errors", action="store_true", help="list the misclassified runs")
  parser.add_argument("--plot-errors", type=pathlib.Path, default=None, metavar="DIR",
                      help="write a PNG of every misclassified run into DIR")
  args = parser.parse_args(argv)

  import optstab

  corpus = load_corpus(args.corpus)
  references = reference_losses(corpus)  # from the whole group, whatever is selected
  runs = [r for r in corpus if args.workload in (None, r["workload"])]
  if not runs:
    raise SystemExit(f"no runs of workload {args.workload!r} in {args.corpus}")
  with_context = context_keywords_supported()
  print(f"corpus: {args.corpus} ({len(runs)} of {len(corpus)} runs)")
  print(f"optstab: {os.path.dirname(optstab.__file__)}")
  if not with_context:
    print("NOTE: the installed classify_run takes no trivial_loss/reference_loss keywords; "
          "called without them (failed-to-train can then only come from the curve).")
  predictions = predict(runs, references, with_context)
  predicted = [p.label for p in predictions]
  print()
  print(format_table(runs, predicted))
  agree, compared = recovered_agreement(runs, predictions)
  print(f"\n'recovered' agrees with the protocol on {_fraction(agree, compared)} of the early- and "
        "mid-training-unstable runs given their own label")
  errors = [(r, p) for r, p in zip(runs, predicted) if p != r["label"]]
  if args.show_errors:
    print()
    print(f"misclassified runs ({len(errors)}): id | protocol label | classify_run | protocol rule")
    for run, label in errors:
      print(f"  {run['id']} | {run['label']} | {label} | {run['protocol']}")
  if args.plot_errors is not None:
    args.plot_errors.mkdir(parents=True, exist_ok=True)
    for run, label in errors:
      name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run["id"]) + ".png"
      plot_run(run, label, args.plot_errors / name)
    print(f"\nwrote {len(errors)} plots to {args.plot_errors}")


if __name__ == "__main__":
  main()
