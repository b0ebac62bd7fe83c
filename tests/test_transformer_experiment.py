"""optstab.transformer.experiment and the optstab-transformer command, end to end on the tiny preset."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import optstab
from optstab.diagnosis import TrialStore
from optstab.transformer import cli, experiment
from optstab.transformer import train as transformer_train
from optstab.transformer.presets import CURVES, PRESETS, get_preset

EXPECTED_FILES = ("trials.jsonl", "results.json", "report.md", "fig8_loss_vs_lr.png",
                  "fig6_warmup_sweep.png", "fig7a_post_ln_sweep.png", "fig7b_long_checks.png",
                  "diagnosis/post_ln/diagnosis.md", "diagnosis/pre_ln/diagnosis.md")


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
  # 1. The command, uninterrupted, in this process (worker processes run single-threaded
  # XLA, which may sum in another order: see optstab.diagnosis.executors).
  full = tmp_path / "full"
  assert cli.main(["--preset", "tiny", "--out", str(full), "--no-progress",
                   "--compile-cache", "none", "--workers", "1"]) == 0
  for name in EXPECTED_FILES:
    assert (full / name).stat().st_size > 0, name
  summary = json.loads((full / "results.json").read_text())
  preset = get_preset("tiny")
  # Four sweeps, the Figure 6 warmups not already in them, the long checks.
  new_fig6 = [w for w in preset.figure6_warmups if w not in (0, preset.warmup_steps)]
  records = TrialStore(full).records()
  assert len(records) == (4 * len(preset.learning_rates) + len(new_fig6)
                          + len(preset.long_check_factors))
  assert all(r.error is None for r in records)
  f8 = summary["figure8"]
  assert set(f8["best_learning_rate"]) == {name for name, _, _ in CURVES}
  for curve in f8["curves"].values():
    assert [t["learning_rate"] for t in curve["trials"]] == list(preset.learning_rates)
    assert all(t["total_steps"] == preset.num_steps for t in curve["trials"])
  assert set(summary["figure6"]["final_eval_loss"]) == {str(w) for w in preset.figure6_warmups}
  assert summary["corpus"]["num_files"] > 0 and "python_version" in summary["corpus"]
  assert summary["trivial_loss"] == pytest.approx(summary["corpus"]["unigram_entropy"])
  env = summary["environment"]
  assert {"jax", "jaxlib", "optax", "flax"} <= set(env["versions"]) and env["cpu"] and env["devices"]
  assert set(summary["diagnosis"]) == {"post_ln", "pre_ln"}
  report = (full / "report.md").read_text()
  assert "## What reproduced" in report and "published" in report

  # 2. The same experiment in this process, stopped by Ctrl-C after 3 trials (the
  # user's interrupt is not caught as a failed trial), then run again: only the
  # missing trials run.
  part = tmp_path / "part"
  calls = []
  real = transformer_train.make_trial_fn

  def counting(*args, limit, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(config):
      if len(calls) == limit:
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, during a trial
      calls.append(config.key())
      return fn(config)

    return optstab.with_fix_support(wrapped, clipping=fn.fix_support.clipping,
                                    optimizers=fn.fix_support.optimizers,
                                    architectures=fn.fix_support.architectures)

  monkeypatch.setattr(transformer_train, "make_trial_fn",
                      lambda *a, **k: counting(*a, limit=3, **k))
  with pytest.raises(KeyboardInterrupt):
    experiment.run_experiment("tiny", part, progress=False)
  assert len(TrialStore(part)) == 3
  first = list(calls)
  monkeypatch.setattr(transformer_train, "make_trial_fn",
                      lambda *a, **k: counting(*a, limit=999, **k))
  experiment.run_experiment("tiny", part, progress=False)
  resumed = calls[3:]
  assert not set(first) & set(resumed)  # nothing ran twice
  # Same results as the uninterrupted run, trial by trial (main store and diagnoses).
  for sub in ("", "diagnosis/post_ln", "diagnosis/pre_ln"):
    want, got = _results_by_key(full / sub), _results_by_key(part / sub)
    assert want.keys() == got.keys(), sub
    for key in want:
      np.testing.assert_array_equal(got[key].train_loss, want[key].train_loss)
      np.testing.assert_array_equal(got[key].eval_metrics["loss"], want[key].eval_metrics["loss"])
  got_summary = json.loads((part / "results.json").read_text())
  for section in ("figure8", "figure6", "figure7b"):
    assert _drop_seconds(got_summary[section]) == _drop_seconds(summary[section]), section
  assert [d["verdict"] for d in got_summary["diagnosis"].values()] == \
      [d["verdict"] for d in summary["diagnosis"].values()]
  # A third run finds everything and trains nothing.
  before = len(calls)
  experiment.run_experiment("tiny", part, progress=False)
  assert len(calls) == before


def test_presets_are_consistent():
  for preset in PRESETS.values():
    assert preset.figure6_learning_rate in preset.learning_rates
    assert all(w < preset.num_steps for w in preset.figure6_warmups)
  with pytest.raises(ValueError, match="preset"):
    get_preset("huge")
  with pytest.raises(ValueError, match="figure6_learning_rate"):
    get_preset("quick").replace(figure6_learning_rate=0.5)
  with pytest.raises(ValueError, match="warmup lengths"):
    get_preset("quick").replace(warmup_steps=400)


def test_a_missing_corpus_fails_before_any_training(tmp_path):
  from optstab.transformer.data import CorpusNotFoundError

  with pytest.raises(CorpusNotFoundError, match="does not exist"):
    experiment.run_experiment("tiny", tmp_path / "out", corpus=tmp_path / "missing.txt",
                              progress=False)
  assert not (tmp_path / "out" / "trials.jsonl").exists()


def test_module_entry_point_help():
  proc = subprocess.run([sys.executable, "-m", "optstab.transformer", "--help"],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr
  assert "--preset" in proc.stdout and "quick" in proc.stdout and "--corpus" in proc.stdout


def test_figure8_plot_marks_failed_and_infeasible_trials_and_checks_lengths(tmp_path):
  from optstab import plots

  curves = {"Post-LN": ([1e-3, 3e-3, 1e-2], [2.1, 3.1, None], [True, True, False],
                        [False, True, True]),
            "Pre-LN": ([1e-3, 3e-3, 1e-2], [2.2, 2.0, 2.3], [True, True, True],
                       [False, False, False])}
  path = plots.plot_loss_vs_learning_rate(curves, tmp_path / "f8.png", reference=3.08)
  assert os.path.getsize(path) > 0
  with pytest.raises(ValueError, match="same length"):
    plots.plot_loss_vs_learning_rate({"x": ([1e-3], [1.0, 2.0], [True], [False])},
                                     tmp_path / "bad.png")
  with pytest.raises(ValueError, match="at least one curve"):
    plots.plot_loss_vs_learning_rate({}, tmp_path / "none.png")
