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
from optstab.transformer import cli, experiment, presets
from optstab.transformer import report as transformer_report
from optstab.harness.seeds import verdict_support
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


def test_standard_preset_plan_fits_its_budget():
  # Figure 8's four curves at >= 1000 steps, each on a window of >= 3 rates per decade
  # around its optimum, and Figure 6, on 3 seeds; built without training.
  preset = get_preset("standard")
  assert preset.num_steps >= 1000 and not preset.run_diagnosis
  for name, _, _ in CURVES:
    grid = preset.curve_grid(name)
    assert len(grid) >= 3
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) <= 10 ** (1 / 3) + 1e-9, (name, grid)  # >= 3 points per decade
  plan = experiment.trial_plan(preset)
  grid_trials = sum(len(preset.curve_grid(n)) for n, _, _ in CURVES)
  # Figure 6 reuses a Figure 8 trial where its rate is on the Post-LN curve of the same warmup.
  rate = preset.figure6_learning_rate
  shared = {0: rate in preset.curve_grid("post_ln"),
            preset.warmup_steps: rate in preset.curve_grid("post_ln_warmup")}
  fig6_new = sum(not shared.get(w, False) for w in preset.figure6_warmups)
  assert plan.counts() == {"seeds": 3, "trials": 3 * (grid_trials + fig6_new),
                           "listed": 3 * (grid_trials + fig6_new), "dependent": 0,
                           "steps": 3 * (grid_trials + fig6_new) * preset.num_steps,
                           "models": 2}
  assert all(c.total_steps == preset.num_steps for c in plan.configs)
  assert {c.seed for c in plan.configs} == {0, 1, 2}
  estimate = plan.estimate(presets.CPU_COST, workers=2)
  assert estimate.wall_seconds <= 20 * 60, estimate.describe()
  # The quick preset is unchanged: one seed, one grid for every curve.
  quick = get_preset("quick")
  assert quick.seeds is None and experiment.trial_plan(quick).seeds == (0,)
  assert all(quick.curve_grid(n) == quick.learning_rates for n, _, _ in CURVES)


def test_curve_grids_are_checked():
  quick = get_preset("quick")
  with pytest.raises(ValueError, match="one grid per curve"):
    quick.replace(curve_learning_rates=((1e-3,),))
  with pytest.raises(ValueError, match="post_ln grid"):
    quick.replace(curve_learning_rates=((7e-3,), (1e-3,), (1e-3,), (1e-3,)))
  with pytest.raises(ValueError, match="curve"):
    quick.curve_grid("post")
  # A grid on the command line is every curve's grid.
  args = ["--preset", "standard", "--out", "x", "--learning-rates", "1e-3", "4.6e-3"]
  parsed = cli.build_parser().parse_args(args)
  assert parsed.learning_rates == [1e-3, 4.6e-3]
  with pytest.raises(SystemExit):
    cli.main(["--preset", "quick", "--out", "x", "--seeds", "1", "1"])


def _fake_summary(best, post_fail=2.2e-3, seed=0):
  """A results.json-like summary of one seed with the given best rates."""
  curves = {}
  for name in ("post_ln", "post_ln_warmup", "pre_ln", "pre_ln_warmup"):
    grid = [best[name] / 2, best[name], best[name] * 2]
    fail = post_fail if name == "post_ln" else None
    trials = [{"learning_rate": lr, "feasible": True,
               "failed_to_train": fail is not None and lr >= fail} for lr in grid]
    up = max((t["learning_rate"] for t in trials if not t["failed_to_train"]), default=None)
    curves[name] = {"grid": grid, "trials": trials, "best_learning_rate": best[name],
                    "at_grid_top": False, "at_grid_bottom": False,
                    "failed_to_train_from": fail, "trains_up_to": up}
  return {
      "preset": {"seed": seed, "long_check_factors": []},
      "figure8": {"best_learning_rate": dict(best), "curves": curves,
                  "trains_up_to": {k: v["trains_up_to"] for k, v in curves.items()}},
      "figure6": {"learning_rate": 4.6e-3,
                  "runs": {"0": {"failed_to_train": True}, "200": {"failed_to_train": False}}},
      "figure7b": {"runs": []},
      "diagnosis": {},
  }


def test_verdicts_are_two_sided_and_count_seeds():
  ordered = {"post_ln": 1e-3, "post_ln_warmup": 2.2e-3, "pre_ln": 3.2e-3, "pre_ln_warmup": 4.6e-3}
  flat = {"post_ln": 2.2e-3, "post_ln_warmup": 2.2e-3, "pre_ln": 3.2e-3, "pre_ln_warmup": 3.2e-3}
  seeds = (0, 1, 2)
  summaries = [_fake_summary(ordered), _fake_summary(flat, post_fail=4.4e-3),
               _fake_summary(ordered)]
  support = verdict_support(summaries, seeds, transformer_report.claims)
  status = {v["key"]: v for v in support}
  order = status["published_order"]
  assert order["status"] == "REPRODUCED" and order["seeds_agreeing"] == [0, 2]
  assert order["statuses"][1] == "NOT reproduced"
  # Seed 1: warmup leaves Post-LN's best rate where it was: said both ways.
  lines = transformer_report.verdicts({**summaries[0], "verdicts": support, "seeds": list(seeds)})
  assert all(" of 3 seeds" in line for line in lines)
  (warm,) = [l for l in lines if "warmup raises Post-LN's best rate" in l]
  assert warm.endswith("[2 of 3 seeds; seed 1: NOT reproduced]")
  flat_lines = transformer_report.verdicts(summaries[1])
  (warm1,) = [l for l in flat_lines if "warmup raises Post-LN's best rate" in l]
  assert warm1.startswith("NOT reproduced") and "is equal to" in warm1
  assert warm1.endswith("[1 of 1 seeds]")
  # The table of every seed's best rates, their spread and the order count.
  from optstab.transformer.summary import seed_table
  table = seed_table(summaries, seeds)
  assert table["order_holds"] == [True, False, True] and table["order_holds_on"] == [0, 2]
  assert table["spread"]["post_ln"] == [1e-3, 2.2e-3]
  with pytest.raises(ValueError, match="one summary per seed"):
    seed_table(summaries, (0, 1))


def test_claims_on_windows_say_what_the_grids_cannot_show():
  claims = dict((k, (status, text)) for k, status, text in transformer_report.claims(
      _fake_summary({"post_ln": 1e-3, "post_ln_warmup": 2.2e-3, "pre_ln": 3.2e-3,
                     "pre_ln_warmup": 4.6e-3}, post_fail=None)))
  # Post-LN trains on its whole window: its failure edge is not on the grid, so not judged.
  for key in ("post_ln_fails_first", "highest_trainable_raised"):
    status, text = claims[key]
    assert status == "NOT reproduced" and "not judged: Post-LN trains on its whole grid" in text
  # Warmup's gains x2.2 (Post-LN) and x1.44 (Pre-LN) are apart by more than half a grid step
  # (the fake grids step by 2): it helps Post-LN more.
  assert claims["warmup_helps_post_ln_more"][0] == "REPRODUCED"
  # x2.2 against x2 is grid rounding, not a larger gain.
  (_, status, text), = [c for c in transformer_report.claims(_fake_summary(
      {"post_ln": 1e-3, "post_ln_warmup": 2.2e-3, "pre_ln": 3.2e-3, "pre_ln_warmup": 6.4e-3}))
      if c[0] == "warmup_helps_post_ln_more"]
  assert status == "NOT reproduced" and "within half a grid step (x2) of each other" in text
