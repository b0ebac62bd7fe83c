"""optstab.wrn.experiment and the optstab-wrn command, end to end on the tiny preset."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from optstab.diagnosis import SINGLE_THREADED_ENV, ProcessPool, TrialStore
from optstab.wrn import cli, experiment
from optstab.harness.seeds import verdict_support
from optstab.wrn import report as wrn_report
from optstab.wrn import train as wrn_train
from optstab.wrn import presets
from optstab.wrn.presets import PRESETS, get_preset

EXPECTED_FILES = ("trials.jsonl", "results.json", "report.md", "fig4_test_error_vs_lr.png",
                  "fig5_loss_first_steps.png", "fig9_grad_norms.png")


def _drop_seconds(tree):
  """A results.json subtree without its wall-clock fields."""
  if isinstance(tree, dict):
    return {k: _drop_seconds(v) for k, v in tree.items() if k != "seconds"}
  if isinstance(tree, list):
    return [_drop_seconds(v) for v in tree]
  return tree


def _results_by_key(out_dir):
  return {r.key: r.result for r in TrialStore(out_dir).records()}


def test_cli_tiny_end_to_end_then_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch):
  # 1. The command, uninterrupted (no compile cache: keep tmp_path small and the run honest).
  full = tmp_path / "full"
  assert cli.main(["--preset", "tiny", "--out", str(full), "--no-progress",
                   "--compile-cache", "none", "--workers", "1"]) == 0
  for name in EXPECTED_FILES:
    assert (full / name).stat().st_size > 0, name
  summary = json.loads((full / "results.json").read_text())
  preset = get_preset("tiny")
  num_sweep = 4 * len(preset.learning_rates)  # 2 models x (no warmup, warmup)
  records = TrialStore(full).records()
  assert len(records) == num_sweep + len(preset.clip_percentiles)
  assert all(r.error is None for r in records)
  assert set(summary["figure4"]) == {"standard", "standard+warmup2", "stride_1x1",
                                     "stride_1x1+warmup2"}
  for curve in summary["figure4"].values():
    assert [t["learning_rate"] for t in curve["trials"]] == list(preset.learning_rates)
  assert [r["mitigation"] for r in summary["mitigations"]][:2] == ["none (baseline)",
                                                                    "warmup 2 steps"]
  report = (full / "report.md").read_text()
  assert "## What reproduced" in report and "published" in report
  # Honest about the machine, the seeds and the labels.
  env = summary["environment"]
  assert env["versions"]["jax"] and env["versions"]["optax"] and env["versions"]["flax"]
  assert env["cpu"] and env["backend"] == "cpu"
  assert "Results vary across machines" in report and env["versions"]["jax"] in report
  assert summary["seeds"] == [0] and "per_seed" not in summary
  claims = [v for v in summary["verdicts"] if v["status"] is not None]
  assert claims and all(v["seeds_agreeing"] == [0] for v in claims)
  # Every verdict is a claim with a seed count, the mitigations' included.
  assert all(line.endswith("[1 of 1 seeds]") for line in experiment.verdicts(summary))
  assert any(line.startswith("Mitigation ") for line in experiment.verdicts(summary))
  for curve in summary["figure4"].values():
    for t in curve["trials"]:
      assert t["label"] in ("stable", "early-unstable", "mid-training-unstable",
                            "failed-to-train", "diverged")
      assert t["diagnosis"].startswith(t["label"])

  # 2. The same command, stopped by Ctrl-C after 3 trials (the user's interrupt
  # is not caught as a failed trial), then run again: only the missing trials run.
  part = tmp_path / "part"
  calls = []
  real = wrn_train.make_trial_fn

  def counting(*args, limit, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(config):
      if len(calls) == limit:
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, during a trial
      calls.append(config.key())
      return fn(config)

    return wrapped

  monkeypatch.setattr(wrn_train, "make_trial_fn", lambda *a, **k: counting(*a, limit=3, **k))
  with pytest.raises(KeyboardInterrupt):
    experiment.run_experiment("tiny", part, progress=False)
  assert len(TrialStore(part)) == 3
  first = list(calls)
  monkeypatch.setattr(wrn_train, "make_trial_fn", lambda *a, **k: counting(*a, limit=99, **k))
  experiment.run_experiment("tiny", part, progress=False)
  resumed = calls[3:]
  assert not set(first) & set(resumed)  # nothing ran twice
  assert len(first) + len(resumed) == len(records)

  # Same results as the uninterrupted run, trial by trial.
  want, got = _results_by_key(full), _results_by_key(part)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_allclose(got[key].train_loss, want[key].train_loss, rtol=1e-6)
    np.testing.assert_allclose(got[key].eval_metrics["error_rate"],
                               want[key].eval_metrics["error_rate"])
  got_summary = json.loads((part / "results.json").read_text())
  assert _drop_seconds(got_summary["figure4"]) == _drop_seconds(summary["figure4"])
  assert _drop_seconds(got_summary["mitigations"]) == _drop_seconds(summary["mitigations"])
  # A third run finds everything and trains nothing.
  before = len(calls)
  experiment.run_experiment("tiny", part, progress=False)
  assert len(calls) == before


def test_cli_on_two_worker_processes_equals_one_worker_trial_by_trial(tmp_path):
  """Parallel trials: the same numbers whatever the number of workers and the finishing order.

  Both runs use single-threaded XLA workers: an in-process run with XLA's own
  thread pool may sum in another order (see optstab.diagnosis.executors).
  """
  parallel, cache = tmp_path / "parallel", tmp_path / "cache"
  assert cli.main(["--preset", "tiny", "--out", str(parallel), "--no-progress",
                   "--compile-cache", str(cache), "--workers", "2"]) == 0
  assert any(cache.iterdir())  # the workers wrote the shared compilation cache...
  one = tmp_path / "one"
  # ...which the next run's worker reads instead of compiling again.
  env = {**SINGLE_THREADED_ENV, "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  with ProcessPool(1, env=env) as pool:
    experiment.run_experiment("tiny", one, progress=False, executor=pool)
  want, got = _results_by_key(one), _results_by_key(parallel)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_array_equal(got[key].train_loss, want[key].train_loss)
    np.testing.assert_array_equal(got[key].grad_norms, want[key].grad_norms)
  a, b = (json.loads((d / "results.json").read_text()) for d in (one, parallel))
  for part in ("figure4", "figure5", "figure9", "mitigations"):
    assert _drop_seconds(a[part]) == _drop_seconds(b[part]), part
  with pytest.raises(ValueError, match="mesh or executor"):
    experiment.run_experiment("tiny", tmp_path / "x", mesh=wrn_train.data_mesh(), executor=pool)
  with pytest.raises(SystemExit, match="--workers"):
    cli.main(["--preset", "tiny", "--out", str(tmp_path / "y"), "--workers", "0"])


def test_presets_are_consistent():
  for preset in PRESETS.values():
    assert preset.high_learning_rate in preset.learning_rates
    assert preset.changed_strides != preset.standard_strides
  with pytest.raises(ValueError, match="preset"):
    get_preset("huge")
  with pytest.raises(ValueError, match="high_learning_rate"):
    get_preset("quick").replace(high_learning_rate=0.5)


def test_module_entry_point_help():
  proc = subprocess.run([sys.executable, "-m", "optstab.wrn", "--help"], capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr
  assert "--preset" in proc.stdout and "quick" in proc.stdout


def _summary(errors, labels, warmup_errors=None, warmup_labels=None, n_test=359):
  """A results.json-like summary over a grid: per variant, error and label per rate."""
  grid = sorted(errors["standard"])
  warmup_errors = warmup_errors or errors
  warmup_labels = warmup_labels or labels

  def trials(errs, labs):
    return [{"learning_rate": lr, "final_test_error": errs[lr], "label": labs[lr],
             "recovered": labs[lr] == "early-unstable", "feasible": labs[lr] != "diverged",
             "trained": labs[lr] in ("stable", "early-unstable"), "total_steps": 100}
            for lr in grid]

  f4 = {}
  for v in ("standard", "stride_1x1"):
    f4[v] = {"trials": trials(errors[v], labels[v]), "best_learning_rate": 0.1,
             "unstable_from": None}
    f4[v + "+warmup20"] = {"trials": trials(warmup_errors[v], warmup_labels[v]),
                           "best_learning_rate": 0.1, "unstable_from": None}
  f5 = {v: {"early_peak_loss": None, "initial_loss": 2.3, "label": "stable"}
        for v in ("standard", "stride_1x1")}
  return {"figure4": f4, "figure5": f5, "mitigations": [{"mitigation": "none"}],
          "preset": {"warmup_steps": 20, "high_learning_rate": 0.1, "num_steps": 100, "seed": 0},
          "data": {"test_images": n_test}}


def test_low_rate_parity_is_two_sided_where_both_models_train():
  grid = (0.01, 0.03, 0.1)
  errors = {"standard": dict(zip(grid, (0.245, 0.05, 0.02))),
            "stride_1x1": dict(zip(grid, (0.025, 0.03, 0.5)))}
  labels = {"standard": dict(zip(grid, ("failed-to-train", "stable", "stable"))),
            "stride_1x1": dict(zip(grid, ("stable", "stable", "early-unstable")))}
  # 0.01: the standard model did not train, so parity is judged at 0.03, without warmup.
  (parity,) = [v for v in wrn_report.claims(_summary(errors, labels)) if v[0] == "parity"]
  assert parity[1] == "REPRODUCED" and "lr 0.03, the lowest such grid point" in parity[2]
  # Two-sided: the stride model being much *better* is not parity either (24.5% vs 2.5% at 0.01
  # would have passed the old one-sided test).
  errors["stride_1x1"][0.03] = 0.005
  (parity,) = [v for v in wrn_report.claims(_summary(errors, labels)) if v[0] == "parity"]
  assert parity[1] == "NOT reproduced" and "outside the two-sided tolerance" in parity[2]
  # Nothing trains without warmup: the warmup curves give the parity point.
  bad = {v: dict.fromkeys(grid, "failed-to-train") for v in labels}
  (parity,) = [v for v in wrn_report.claims(_summary(errors, bad, warmup_labels=labels))
               if v[0] == "parity"]
  assert "lr 0.03 with 20 warmup steps" in parity[2]


def test_verdicts_count_the_seeds_that_support_them():
  grid = (0.01, 0.03, 0.1)
  errors = {"standard": dict(zip(grid, (0.2, 0.03, 0.02))),
            "stride_1x1": dict(zip(grid, (0.03, 0.03, 0.5)))}
  labels = {v: dict.fromkeys(grid, "stable") for v in errors}
  other = {"standard": dict(errors["standard"]), "stride_1x1": {**errors["stride_1x1"], 0.01: 0.2}}
  support = verdict_support([_summary(errors, labels), _summary(other, labels),
                           _summary(errors, labels)], (0, 1, 2), wrn_report.claims)
  (parity,) = [v for v in support if v["key"] == "parity"]
  # Seeds 0 and 2: 20% vs 3% at 0.01 is not parity; seed 1: 20% vs 20% is.
  assert parity["status"] == "NOT reproduced" and parity["seeds_agreeing"] == [0, 2]
  assert parity["statuses"] == ["NOT reproduced", "REPRODUCED", "NOT reproduced"]
  lines = experiment.verdicts({**_summary(errors, labels), "verdicts": support, "seeds": [0, 1, 2]})
  assert any("[2 of 3 seeds; seed 1: REPRODUCED]" in line for line in lines)
  # The warmup verdict states the warmup run's own label and the budgets.
  (warm,) = [v for v in support if v["key"] == "warmup"]
  assert "with warmup (stable)" in warm["text"] and "Budgets differ by the warmup" in warm["text"]


def test_run_experiment_rejects_bad_seeds(tmp_path):
  for seeds, match in (((), "at least one seed"), ((0, 0), "distinct"), ((-1,), r"seeds\[0\]")):
    with pytest.raises(ValueError, match=match):
      experiment.run_experiment("tiny", tmp_path, seeds=seeds, progress=False)


def test_every_preset_plans_its_independent_trials():
  # The trial plan of each preset builds (no training): both models, with and without
  # warmup, on the whole grid, plus the mitigations that need no other trial.
  for name, preset in PRESETS.items():
    configs = experiment._independent_configs(preset)
    warmups = 2 if preset.warmup_steps else 1
    grid = len(experiment.VARIANTS) * warmups * len(preset.learning_rates)
    assert len(configs) >= grid, name
    assert len({c.key() for c in configs}) == len(configs), name
    assert {c.extra["variant"] for c in configs} == set(experiment.VARIANTS), name


def test_standard_preset_plan_fits_its_budget():
  # Figure 4 on >= 3 rates per decade from 0.003 to 1, 4 curves, 3 seeds; no training.
  preset = get_preset("standard")
  grid = sorted(preset.learning_rates)
  assert grid[0] <= 0.003 and grid[-1] >= 1.0
  for low in (0.003, 0.01, 0.1):  # every decade of the grid holds >= 3 of its rates
    assert sum(low <= lr < 10 * low for lr in grid) >= 3, low
  assert 0.02 in grid and 0.2 in grid  # the published edge and best rate are grid points
  plan = experiment.trial_plan(preset)
  assert plan.seeds == (0, 1, 2)
  per_seed = len(experiment.VARIANTS) * 2 * len(grid) + 4  # + adam, norm, zero-init, pool
  assert plan.counts() == {"seeds": 3, "trials": 3 * (per_seed + 2), "listed": 3 * per_seed,
                           "dependent": 6, "steps": 3 * (len(grid) * 2 * (100 + 120) + 6 * 100),
                           "models": 6}
  assert {c.seed for c in plan.configs} == {0, 1, 2}
  assert all(c.warmup_steps in (0, 20) and c.num_steps == 100 for c in plan.configs)
  estimate = plan.estimate(presets.CPU_COST, workers=2)
  assert estimate.wall_seconds <= 20 * 60, estimate.describe()
  # The quick preset is unchanged: one seed, 4 rates.
  quick = experiment.trial_plan("quick")
  assert quick.seeds == (0,) and quick.counts()["trials"] == 22
  assert experiment.trial_plan("quick", seeds=(3, 4)).seeds == (3, 4)
  with pytest.raises(ValueError, match="distinct"):
    get_preset("standard").replace(seeds=(0, 0))
