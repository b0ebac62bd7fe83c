"""The labelled diagnosis corpus (benchmarks/diagnosis_corpus.jsonl.gz), its held-out split
(diagnosis_heldout.jsonl.gz: other seeds), and floors on a subset of each.

The full accuracy table is ``benchmarks/diagnosis_accuracy.py``; here a fixed
subset of 30 runs, spread over workloads and labels, must meet floors derived
from the issue's targets (false alarms <= 3%, recall of early-unstable and of
failed-to-train >= 95%, at most 1 of 50 clean curves flagged per noise level).
"""

import hashlib
import importlib.util
import math
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and the collector's own import find it there
  spec.loader.exec_module(module)
  return module


acc = _load("diagnosis_accuracy")


SPLIT_FILES = {"corpus": acc.DEFAULT_CORPUS,
               "held-out": acc.DEFAULT_CORPUS.with_name("diagnosis_heldout.jsonl.gz")}


@pytest.fixture(scope="module", params=sorted(SPLIT_FILES))
def corpus(request):
  return acc.load_corpus(SPLIT_FILES[request.param])


# ----------------------------------------------------------------------------
# The corpus file keeps the contract.


def test_corpus_format(corpus):
  ids = [r["id"] for r in corpus]
  assert len(ids) == len(set(ids))
  for run in corpus:
    assert run["label"] in acc.LABELS, run["id"]
    assert run["workload"] in ("wrn", "transformer", "mlp", "cnn", "synthetic"), run["id"]
    assert isinstance(run["group"], str) and run["protocol"], run["id"]
    n = len(run["train_loss"])
    assert n > 0
    if run["grad_norms"] is not None:
      assert len(run["grad_norms"]) == n, run["id"]
    for values in run["eval_metrics"].values():
      assert len(values) == len(run["eval_steps"]), run["id"]
    assert run["recovered"] in (None, True, False)
    if run.get("by_eye"):
      assert run["by_eye_reason"], run["id"]


def test_corpus_size(corpus):
  real = [r for r in corpus if r["workload"] != "synthetic"]
  assert len(real) >= 200
  assert len({r["workload"] for r in real}) >= 3
  for label in (acc.STABLE, acc.EARLY_UNSTABLE, acc.FAILED_TO_TRAIN, acc.DIVERGED):
    assert any(r["label"] == label for r in real), label
  clean = acc.clean_curve_flags(corpus, [acc.STABLE] * len(corpus))
  assert sorted(clean) == list(acc.NOISE_LEVELS)
  assert all(total == 50 for _, total in clean.values())


def test_real_labels_follow_the_protocol(corpus):
  """Every real run's label is what the documented protocol gives (or a recorded by-eye override)."""
  collect = _load("collect_diagnosis_corpus")
  groups = {}
  for run in corpus:
    if run["workload"] != "synthetic":
      groups.setdefault(run["group"], []).append(run)
  for runs in groups.values():
    labels = collect.label_group([acc.as_array(r["train_loss"]) for r in runs], runs[0]["trivial_loss"],
                                 [collect._final_error(r["eval_metrics"].get("error_rate")) for r in runs])
    for run, (label, recovered, _) in zip(runs, labels):
      if not run.get("by_eye"):
        assert (label, recovered) == (run["label"], run["recovered"]), run["id"]


# ----------------------------------------------------------------------------
# Floors on a subset.

#: Runs of the subset per label; the rest of the 30 are spread as evenly as the
#: corpus allows over workloads (and, for the clean curves, noise levels).
QUOTA = {acc.STABLE: 12, acc.EARLY_UNSTABLE: 8, acc.FAILED_TO_TRAIN: 8, acc.DIVERGED: 2}

#: A detector exactly at a target fails a floor with probability at most ALPHA.
ALPHA = 0.1


def _stratum(run):
  sigma = run["meta"].get("sigma") if run["meta"].get("kind", "").startswith("clean") else None
  return run["workload"], sigma


def subset(corpus):
  """QUOTA runs per label, round-robin over strata, each stratum in a fixed hash order."""
  chosen = []
  for label, quota in QUOTA.items():
    strata = {}
    for run in sorted((r for r in corpus if r["label"] == label),
                      key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest()):
      strata.setdefault(_stratum(run), []).append(run)
    queues = [strata[k] for k in sorted(strata, key=str)]
    picked = []
    while len(picked) < quota and any(queues):
      for queue in queues:
        if queue and len(picked) < quota:
          picked.append(queue.pop(0))
    chosen.extend(picked)
  return chosen


def allowed_misses(n: int, miss_rate: float) -> int:
  """Smallest k with P(Binomial(n, miss_rate) > k) <= ALPHA."""
  k = 0
  while sum(math.comb(n, i) * miss_rate**i * (1 - miss_rate)**(n - i) for i in range(k + 1, n + 1)) > ALPHA:
    k += 1
  return k


def test_allowed_misses():
  assert allowed_misses(12, 0.03) == 1
  assert allowed_misses(8, 0.05) == 1
  assert allowed_misses(8, 0.5) >= 5


@pytest.mark.xfail(not acc.context_keywords_supported(), strict=False,
                   reason="floors for the new detectors (issue 10): the installed classify_run "
                          "takes no trivial_loss/reference_loss and has no failed-to-train label")
def test_accuracy_floors_on_subset(corpus):
  runs = subset(corpus)
  assert len(runs) == sum(QUOTA.values())
  predicted = [p.label for p in acc.predict(runs, acc.reference_losses(corpus))]
  scores = acc.Scores([r["label"] for r in runs], predicted)
  failures = []
  n_stable = scores.count(acc.STABLE)
  if scores.false_alarms() > allowed_misses(n_stable, acc.MAX_FALSE_ALARM_RATE):
    failures.append(f"false alarms {scores.false_alarms()}/{n_stable}")
  for label, floor in acc.MIN_RECALL.items():
    n = scores.count(label)
    misses = n - scores.hits(label)
    if misses > allowed_misses(n, 1.0 - floor):
      failures.append(f"{label} recall {scores.hits(label)}/{n}")
  clean = [(r, p) for r, p in zip(runs, predicted) if _stratum(r)[1] is not None]
  flagged = sum(p != acc.STABLE for _, p in clean)
  if flagged > allowed_misses(len(clean), acc.MAX_CLEAN_FLAGGED / 50):
    failures.append(f"clean curves flagged {flagged}/{len(clean)}")
  wrong = [f"{r['id']}: {r['label']} -> {p}" for r, p in zip(runs, predicted) if p != r["label"]]
  assert not failures, "; ".join(failures) + "\n" + "\n".join(wrong)
