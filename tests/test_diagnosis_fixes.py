"""The fix ladder: fixes as data, the search, the verification on seeds, the budget, the report."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import optstab
from optstab.diagnosis import (
    Checks,
    FixLadder,
    FixSupport,
    TrialConfig,
    TrialStore,
    diagnose,
    log_grid,
    run_trials,
    with_fix_support,
)
from optstab.diagnosis import fixes as fix_ladder
from test_diagnosis_problems import (early_instability_trial,
                                     early_instability_trial_with_clipping, noisy_numpy_trial,
                                     quadratic_trial)

GRID = log_grid(1e-3, 1.0, 13)


@pytest.fixture(scope="module")
def early(tmp_path_factory):
  """The early-instability problem diagnosed with clipping declared and every fix tried."""
  out = tmp_path_factory.mktemp("early")
  return out, diagnose(early_instability_trial_with_clipping, GRID, 300, out_dir=out,
                       progress=False, log=None, fixes=FixLadder(try_all=True))


def test_warmup_is_found_verified_on_two_seeds_and_recommended(early):
  out, d = early
  assert d.verdict == optstab.EARLY_UNSTABLE and d.sweep.best_learning_rate == pytest.approx(0.01)
  rec = d.recommendation
  assert rec.family.kind == fix_ladder.WARMUP and rec.status == fix_ladder.HELPS
  # The budget is 300 steps: the playbook's lengths leave one candidate under 10% of it,
  # so the search uses 1%, 3%, 10%, 30% of the budget.
  assert [f.changes["warmup_steps"] for f in rec.family.fixes] == [3, 9, 30, 90]
  # 10 x the unstable rate 0.0316 trains with 30 warmup steps: the first round succeeds.
  assert rec.chosen.config.warmup_steps == 30
  assert rec.chosen.learning_rate == pytest.approx(10 * 10 ** -1.5)
  assert rec.rates_tried == pytest.approx((10 * 10 ** -1.5,))
  assert rec.highest_training_rate == pytest.approx(10 * 10 ** -1.5)
  c = rec.comparison
  assert c.seeds == (0, 1) and all(c.fix_trains) and len(c.baseline_values) == 2
  assert c.better  # lr* for the same 330 steps ends higher than the warmed-up run
  assert rec.chosen.config.total_steps == 330
  # Trained twice as long, the same warmup still trains: the curvature has gone down.
  assert rec.longer_run.config.total_steps == 660 and rec.longer_run.config.warmup_steps == 30
  assert rec.longer_run.trains
  assert d.findings[-1].topic == "Next steps"
  assert d.findings[-1].text.startswith("Use warmup: prepend 30 warmup steps (optstab.prepend_warmup) "
                                        "and train at 0.3162")


def test_every_fix_has_a_row_that_says_what_was_tried(early):
  out, d = early
  statuses = {f.family.kind: f.status for f in d.fixes}
  assert statuses == {
      fix_ladder.WARMUP: fix_ladder.HELPS,
      fix_ladder.CLIPPING: fix_ladder.DOES_NOT_HELP,
      fix_ladder.SKIP_SPIKES: fix_ladder.NOT_SUPPORTED,
      fix_ladder.OPTIMIZER: fix_ladder.NOT_SUPPORTED,
      fix_ladder.ARCHITECTURE: fix_ladder.NOT_SUPPORTED,
  }
  clip = next(f for f in d.fixes if f.family.kind == fix_ladder.CLIPPING)
  # Clipping is tried at 10, 5, 3, 2, 1.5 and 1 x the unstable rate: its row names them.
  assert len(clip.rates_tried) == 6 and clip.rates_tried[0] == pytest.approx(10 ** -1.5)
  assert clip.reason.startswith("no run trained at rates 0.0316, 0.0474, 0.0632, 0.0949, 0.158, 0.316")
  assert "of their steps" in clip.reason  # the clip fraction, as the playbook asks
  threshold = optstab.clip_threshold(d.sweep.best.result.grad_norms, 90.0)
  assert all(t.config.clip_norm == pytest.approx(threshold) for t in clip.trials)
  md = open(d.files["markdown"], encoding="utf-8").read()
  assert "## Fixes tried" in md and "| warmup | 0.316 | 0.316 |" in md
  assert "lower learning rate (last resort)" in md
  data = json.load(open(d.files["json"], encoding="utf-8"))
  assert data["recommendation"] == "warmup"
  assert [f["status"] for f in data["fixes"]][:2] == ["helps", "does not help"]
  for name in ("learning-rate sweep", "rates above lr*", "short check, every step", "long checks",
               "gradient norm at lr*", "gradient norm histogram at lr*", "fixes", "markdown",
               "json"):
    assert (out / d.files[name].rsplit("/", 1)[-1]).exists(), name


def test_store_holds_each_trial_once_and_a_rerun_runs_nothing(early):
  out, d = early
  store = TrialStore(out)
  # 13 sweep rates; the short check at 2 x lr*; the 5 x long check (10 x lr* = 0.1 is a
  # grid rate: the same trial to 10 digits); lr* on seed 1 (the seed noise); warmup round:
  # 4 lengths and lr* for each of the 4 totals; 2 seeds: the fix's second seed and lr*'s
  # (its first is the round's), and the fix's rate without warmup on both seeds; the fix
  # trained twice as long; clipping: 6 rates (none trained: nothing to verify).
  assert len(store) == 13 + 1 + 1 + 1 + 8 + 2 + 2 + 1 + 6 and store.ignored_lines == 0
  calls = []

  def counting(config):
    calls.append(config)
    return early_instability_trial(config)

  again = diagnose(with_fix_support(counting, clipping=True), GRID, 300, out_dir=out,
                   progress=False, log=None, fixes=FixLadder(try_all=True))
  assert calls == [] and again.recommendation.family.kind == fix_ladder.WARMUP


def _resumed(early, tmp_path):
  """A folder holding the early fixture's trials: diagnoses there rerun only what is missing."""
  shutil.copy(early[0] / "trials.jsonl", tmp_path / "trials.jsonl")
  return tmp_path


def test_later_fixes_are_not_tried_once_one_helps(early, tmp_path):
  tmp_path = _resumed(early, tmp_path)
  d = diagnose(early_instability_trial_with_clipping, GRID, 300, out_dir=tmp_path,
               progress=False, log=None)
  clip = next(f for f in d.fixes if f.family.kind == fix_ladder.CLIPPING)
  assert clip.status == fix_ladder.NOT_TRIED and clip.trials == ()
  assert clip.reason == "an earlier fix (warmup) helped"


def test_a_budget_drops_the_ladder_and_the_report_says_so(early, tmp_path):
  tmp_path = _resumed(early, tmp_path)
  need = 13 * 300 + 300 + 2 * 300
  d = diagnose(early_instability_trial, GRID, 300, out_dir=tmp_path, progress=False, log=None,
               budget=need + 100)
  (warmup,) = d.fixes[:1]
  assert warmup.status == fix_ladder.DROPPED and d.recommendation is None
  assert d.plan.dropped and d.plan.steps_run == need
  (budget,) = [f for f in d.findings if f.topic == "Budget"]
  assert (f"ran within the budget of {need + 100}; dropped: lr* on more seeds: 1 trials, 300 "
          "training steps; warmup: search") in budget.text
  with pytest.raises(ValueError, match=rf"budget must be an integer >= {need}"):
    diagnose(early_instability_trial, GRID, 300, out_dir=tmp_path, log=None, budget=need - 1)


def test_without_a_fix_ladder_nothing_is_searched(early, tmp_path):
  tmp_path = _resumed(early, tmp_path)
  d = diagnose(early_instability_trial, GRID, 300, out_dir=tmp_path, progress=False, log=None,
               fixes=None)
  assert d.fixes == () and d.recommendation is None
  assert d.findings[-1].text.startswith("Early instability: the playbook's fixes")


def test_a_stable_workload_searches_no_fix(tmp_path):
  d = diagnose(noisy_numpy_trial, [0.01, 0.03, 0.1], 200, out_dir=tmp_path, progress=False,
               log=None, checks=Checks(long_factors=(2.0,)))
  assert d.verdict == "stable" and d.fixes == () and d.recommendation is None


def test_the_plan_is_logged_before_training(tmp_path):
  lines = []
  diagnose(noisy_numpy_trial, [0.01, 0.03], 40, out_dir=tmp_path, progress=False,
           log=lines.append, checks=Checks(short_steps=500))
  assert lines[0].startswith("optstab.diagnose plan: sweep 2 rates x 40 steps; checks: the "
                             "short check runs 40 steps, not 500")


def test_checks_are_never_longer_short_than_long():
  assert Checks().lengths(200)[:2] == (200, 200)
  assert Checks().lengths(2000)[:2] == (500, 2000)
  assert Checks(long_steps=300).lengths(2000)[:2] == (300, 300)
  with pytest.raises(ValueError, match=r"long_factors\[0\]"):
    Checks(long_factors=(-1.0,))


def test_warmup_lengths_are_dense_for_short_budgets():
  ladder = FixLadder()
  assert fix_ladder.warmup_lengths(600, ladder) == (6, 18, 60, 180)
  assert fix_ladder.warmup_lengths(100_000, ladder) == (10, 1000, 10000)
  assert fix_ladder.warmup_lengths(20, ladder) == (1, 2, 6)


@pytest.mark.parametrize("kwargs, match", [
    ({"kinds": ("warmup", "magic")}, r"kinds\[1\]"),
    ({"rate_factors": (10.0, 0.5)}, r"rate_factors\[1\]"),
    ({"rate_factors": ()}, "rate_factors"),
    ({"seeds": 1}, "seeds"),
    ({"warmup_fractions": (0.0,)}, r"warmup_fractions\[0\]"),
    ({"clip_percentile": 0.0}, "clip_percentile"),
    ({"min_rate_gain": 0.5}, "min_rate_gain"),
])
def test_fix_ladder_refuses_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    FixLadder(**kwargs)


def test_fix_ladder_orders_and_deduplicates():
  ladder = FixLadder(kinds=("clipping", "warmup"), rate_factors=(2, 10, 2))
  assert ladder.kinds == ("warmup", "clipping") and ladder.rate_factors == (10.0, 2.0)


def test_a_fix_is_a_change_of_the_config_extra_merged():
  config = TrialConfig(0.1, 10, extra={"variant": "x", "norm_position": "post"})
  fix = fix_ladder.Fix(fix_ladder.ARCHITECTURE, "Pre-LN", {"extra": {"norm_position": "pre"}})
  assert fix.apply(config).extra == {"variant": "x", "norm_position": "pre"}
  clip = fix_ladder.Fix(fix_ladder.CLIPPING, "clip", {"clip_norm": 2.0}).apply(config)
  assert clip.clip_norm == 2.0 and clip.fixes == {"clip_norm": 2.0}


def test_trial_config_keys_match_rates_to_ten_digits_and_keep_old_keys():
  grid_rate = 0.31622776601683794
  assert TrialConfig(10 * 0.031622776601683794, 10).key() == TrialConfig(grid_rate, 10).key()
  assert TrialConfig(0.3162, 10).key() != TrialConfig(0.31621, 10).key()
  # No fix: the dict (and key) has no fix fields, as stored before they existed.
  plain = TrialConfig(0.1, 10)
  assert set(plain.to_dict()) == {"learning_rate", "num_steps", "warmup_steps", "schedule",
                                  "eval_every", "seed", "extra"}
  fixed = TrialConfig(0.1, 10, clip_norm=1.5, optimizer="adam", skip_spikes=True)
  assert TrialConfig.from_dict(fixed.to_dict()) == fixed and fixed.key() != plain.key()
  for kwargs, match in (({"clip_norm": 0.0}, "clip_norm"), ({"optimizer": ""}, "optimizer"),
                        ({"skip_spikes": "yes"}, "skip_spikes")):
    with pytest.raises(ValueError, match=match):
      TrialConfig(0.1, 10, **kwargs)


def test_a_fix_the_function_does_not_declare_is_refused_before_any_trial():
  calls = []
  with pytest.raises(ValueError, match=r"clip_norm=1.*with_fix_support"):
    run_trials(lambda c: calls.append(c), [TrialConfig(0.1, 10, clip_norm=1.0)], progress=False)
  assert calls == []
  declared = with_fix_support(noisy_numpy_trial, clipping=True)
  (record,) = run_trials(declared, [TrialConfig(0.1, 10, clip_norm=1.0)], progress=False)
  assert record.result is not None


def test_fix_support_is_checked():
  assert optstab.diagnosis.fix_support(noisy_numpy_trial) == FixSupport()
  with pytest.raises(ValueError, match=r"optimizers\[0\]"):
    FixSupport(optimizers=("",))
  with pytest.raises(ValueError, match="architectures"):
    FixSupport(architectures={"pre": {}})
  support = FixSupport(clipping=True, optimizers=("adam",))
  assert support.unsupported(TrialConfig(0.1, 5, optimizer="sgd", skip_spikes=True)) == [
      "optimizer='sgd'", "skip_spikes=True"]


def test_seed_comparison_uses_the_larger_range_as_noise():
  c = fix_ladder.SeedComparison("loss", "min", (0, 1), (1.0, 1.2), (True, True), (1.1, 1.15),
                                0.2, 1.3)
  assert c.gain == pytest.approx(0.025) and c.not_worse and not c.better  # better by < noise
  worse = fix_ladder.SeedComparison("loss", "min", (0, 1), (1.5, 1.5), (True, True),
                                    (1.1, 1.15), 0.05, 1.3)
  assert not worse.not_worse
  failed = fix_ladder.SeedComparison("loss", "min", (0, 1), (1.0, math.nan), (True, False),
                                     (1.1, 1.15), 0.05, 1.3)
  assert not failed.trains_on_every_seed and not failed.better
  assert math.isnan(failed.fix_mean)
  assert np.isfinite(failed.baseline_mean)


def test_a_fix_is_not_credited_with_a_rate_that_trains_as_well_without_it():
  common = ("loss", "min", (0, 1), (0.50, 0.52), (True, True), (0.80, 0.82), 0.02, 0.9, None)
  # The same rate without the fix is as good: the fix is neither better nor what made it train.
  same = fix_ladder.SeedComparison(*common, (0.51, 0.52), (True, True))
  assert same.gain > same.noise and not same.better and same.without_matches
  # Without the fix the rate fails on a seed: the fix is better, and its rate is the fix's.
  fails = fix_ladder.SeedComparison(*common, (0.51, 3.0), (True, False))
  assert fails.better and not fails.without_matches and math.isnan(fails.without_mean)
  # Without the fix the rate trains, but worse than lr*: the fix made it train well.
  worse = fix_ladder.SeedComparison(*common, (0.95, 0.97), (True, True))
  assert worse.better and not worse.without_matches
  # The fix chosen at lr*'s own rate: nothing to compare against but lr*.
  alone = fix_ladder.SeedComparison(*common)
  assert alone.better and not alone.without_matches


def test_a_fix_that_only_delays_a_divergence_does_not_help(tmp_path):
  # A quadratic's curvature never goes down: above 2 / L = 0.2 every rate diverges in the
  # end. lr* is 0.18 and the unstable rate 0.21, just above 2 / L: a warmup first shrinks
  # the stiff direction far enough that its growth at 0.21 stays unseen for a 60-step budget,
  # but not when the run is twice as long.
  d = diagnose(quadratic_trial, [0.02, 0.06, 0.18, 0.21], 60, out_dir=tmp_path, progress=False,
               log=None, fixes=FixLadder(kinds=("warmup",), rate_factors=(1.0,)))
  (warmup,) = d.fixes
  assert d.sweep.best_learning_rate == pytest.approx(0.18)
  assert warmup.longer_run is not None and warmup.status == fix_ladder.DOES_NOT_HELP
  assert "only holds off" in warmup.reason and d.recommendation is None


def test_no_fix_is_searched_when_lr_star_is_the_grids_largest_rate(early, tmp_path):
  tmp_path = _resumed(early, tmp_path)
  d = diagnose(early_instability_trial, GRID[:5], 300, out_dir=tmp_path, progress=False, log=None)
  assert d.sweep.at_grid_top and d.verdict != "stable"  # the checks at 5 x and 10 x diverge
  assert d.fixes == () and d.recommendation is None
  assert any(f.topic == "Note" and f.text.startswith("No fix was searched: lr* is the largest rate")
             for f in d.findings)


@pytest.mark.parametrize("rate, without_trains, counts", [
    (0.25, (), True),               # beyond 2 x: more than a finer grid could find
    (0.15, (), False),              # 1.5 x, never tried without the fix: a finer grid may find it
    (0.15, (False, False), True),   # 1.5 x, and without the fix it failed on every seed
    (0.15, (True, False), False),   # 1.5 x, but it trained without the fix on a seed
    (0.10, (False, False), False),  # not above the baseline at all
    (0.08, (False, False), False),
])
def test_a_higher_rate_counts_beyond_the_gain_or_when_it_fails_without_the_fix(
    rate, without_trains, counts):
  assert fix_ladder.higher_rate_counts(rate, 0.1, 2.0, without_trains) is counts
