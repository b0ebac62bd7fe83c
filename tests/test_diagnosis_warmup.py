"""Warmup tuning (S4) on a problem whose early instability warmup fixes."""

from __future__ import annotations

import numpy as np
import pytest

import optstab
from optstab.diagnosis import TrialResult, learning_rate_sweep, log_grid, tune_warmup
from test_diagnosis_problems import early_instability_trial, quadratic_trial

CANDIDATES = (1, 3, 10, 30, 100, 300)


def test_sweep_then_warmup_unlocks_ten_times_the_unstable_rate():
  sweep = learning_rate_sweep(early_instability_trial, log_grid(1e-3, 1.0, 13), 300, progress=False)
  unstable = sweep.unstable_learning_rate
  assert unstable == pytest.approx(10 ** -1.5)  # 0.0316: curvature 100 at init
  assert "step" in sweep.trials[list(sweep.learning_rates).index(unstable)].reason
  result = tune_warmup(early_instability_trial, unstable, 3000, candidates=CANDIDATES,
                       progress=False)
  (search,) = result.searches
  assert search.base_learning_rate == pytest.approx(10 * unstable)
  assert result.grid == CANDIDATES  # all <= 10% of 3000
  assert [t.feasible for t in search.trials] == [False, False, False, True, True, True]
  assert result.warmup_steps == 30 and result.base_learning_rate == pytest.approx(10 * unstable)
  assert result.advice is None  # 30 <= 5% of 3000
  for t in search.trials:
    assert t.post_warmup_steps == 2 * t.warmup_steps
    assert t.record.config.total_steps == 3 * t.warmup_steps
    assert t.record.config.schedule == "constant"
  # The stable warmup trains far below the best loss the sweep reached without warmup.
  best_warm = search.trials[3].record.result.eval_metrics["loss"][-1]
  assert best_warm < sweep.best.metric_value
  assert result.comparisons == () and result.recommendation is None  # no baseline given


def test_s4_in_full_prepends_the_warmup_for_the_baselines_budget_and_compares():
  sweep = learning_rate_sweep(early_instability_trial, log_grid(1e-3, 1.0, 13), 300, progress=False)
  result = tune_warmup(early_instability_trial, sweep.unstable_learning_rate, 3000,
                       candidates=CANDIDATES, baseline=sweep, progress=False)
  (comparison,) = result.comparisons
  run = comparison.run.config
  # S4: the baseline's schedule shifted by the warmup: 300 -> 30 + 300 steps, at 10 x the unstable rate.
  assert (run.warmup_steps, run.num_steps, run.total_steps) == (30, 300, 330)
  assert run.schedule == sweep.best.config.schedule and run.seed == sweep.best.config.seed
  assert run.learning_rate == pytest.approx(10 * sweep.unstable_learning_rate)
  # Best-checkpoint selection on the sweep's metric, for both runs.
  assert comparison.baseline_value == np.nanmin(sweep.best.result.eval_metrics["loss"])
  assert comparison.run_value == np.nanmin(comparison.run.result.eval_metrics["loss"])
  assert comparison.outcome == "beats" and comparison.recommended
  assert result.recommendation is comparison
  assert "300 -> 330 steps" in comparison.describe()


def _warmup_trains_but_generalizes_worse(config):
  """Above lr 0.05 the loss blows up unless warmed up for >= 10 steps; the
  evaluation loss is best at lr 0.01 whatever the warmup (0.1 + 0.1 |log10(lr / 0.01)|)."""
  n = config.total_steps
  loss = 0.1 + 2.0 * np.exp(-np.arange(n) / 50.0)
  if config.learning_rate > 0.05 and config.warmup_steps < 10:
    loss[2:] = np.nan
  steps = config.eval_steps()
  value = 0.1 + 0.1 * abs(np.log10(config.learning_rate / 0.01))
  return TrialResult(config, loss, steps, {"loss": np.full(steps.size, value)}, np.ones(n))


def test_warmup_that_trains_but_loses_to_the_baseline_is_not_recommended():
  sweep = learning_rate_sweep(_warmup_trains_but_generalizes_worse, [0.003, 0.01, 0.03, 0.1], 400,
                              progress=False)
  assert sweep.best_learning_rate == 0.01 and sweep.unstable_learning_rate == 0.1
  result = tune_warmup(_warmup_trains_but_generalizes_worse, 0.1, 4000, candidates=(3, 10, 30),
                       baseline=sweep, progress=False)
  assert result.warmup_steps == 10  # the search finds a warmup that trains at 1.0...
  (comparison,) = result.comparisons
  assert comparison.run.config.total_steps == 410
  assert comparison.outcome == "worse" and result.recommendation is None  # ...which does not help
  assert comparison.run_value == pytest.approx(0.3) and comparison.baseline_value == pytest.approx(0.1)
  assert "warmup did not help" in comparison.describe()
  # Within the margin it matches, and is recommended.
  matched = tune_warmup(_warmup_trains_but_generalizes_worse, 0.1, 4000, candidates=(3, 10, 30),
                        baseline=sweep, match_margin=0.25, progress=False)
  assert matched.comparisons[0].outcome == "matches" and matched.recommendation is not None


def test_a_warmup_trial_stalled_at_the_trivial_level_does_not_train():
  def stalls_without_long_warmup(config):
    n = config.total_steps
    loss = np.full(n, np.log(10.0)) if config.warmup_steps < 30 else np.linspace(2.3, 0.3, n)
    return TrialResult(config, loss, config.eval_steps(), {"loss": loss[config.eval_steps() - 1]},
                       np.ones(n))

  result = tune_warmup(stalls_without_long_warmup, 0.1, 3000, candidates=(3, 10, 30),
                       trivial_loss=np.log(10.0), progress=False)
  (search,) = result.searches
  assert [t.feasible for t in search.trials] == [True, True, True]  # nothing blows up...
  assert [t.label for t in search.trials] == ["failed-to-train", "failed-to-train", "stable"]
  assert result.warmup_steps == 30  # ...but only 30 steps train


def test_hundred_x_needs_a_longer_warmup_and_gets_the_five_percent_advice():
  result = tune_warmup(early_instability_trial, 10 ** -1.5, 3000, factors=(10.0, 100.0),
                       candidates=CANDIDATES, stop_at_first_stable=True, progress=False)
  ten, hundred = result.searches
  assert ten.shortest_training_warmup == 30 and len(ten.trials) == 4  # stopped at the first stable
  assert hundred.shortest_training_warmup == 300
  assert result.base_learning_rate == pytest.approx(100 * 10 ** -1.5)
  assert result.warmup_steps == 300
  assert "increase max_train_steps to at least 6000" in result.advice
  d = result.to_dict()
  assert d["warmup_steps"] == 300 and len(d["searches"]) == 2


def test_warmup_cannot_fix_a_constant_curvature():
  # On a quadratic the curvature never shrinks: 10 x the unstable rate always diverges.
  result = tune_warmup(quadratic_trial, 0.3162, 3000, candidates=(10, 100, 300), progress=False)
  assert result.warmup_steps is None and result.best is None and result.advice is None
  assert all(not t.feasible and "step" in t.reason for t in result.searches[0].trials)


def test_grid_is_capped_at_ten_percent_and_resumes(tmp_path):
  calls = []

  def counting(config):
    calls.append(config.warmup_steps)
    return early_instability_trial(config)

  result = tune_warmup(counting, 10 ** -1.5, 500, candidates=CANDIDATES, out_dir=tmp_path,
                       progress=False)
  assert result.grid == (1, 3, 10, 30)  # 100 > 10% of 500
  assert calls == [1, 3, 10, 30]
  assert "increase max_train_steps to at least 600" in result.advice  # 30 > 5% of 500
  tune_warmup(counting, 10 ** -1.5, 500, candidates=CANDIDATES, out_dir=tmp_path, progress=False)
  assert calls == [1, 3, 10, 30]  # all four were on disk


@pytest.mark.parametrize("kwargs, match", [
    ({"unstable_base_learning_rate": 0.0}, "unstable_base_learning_rate"),
    ({"unstable_base_learning_rate": -1.0}, "unstable_base_learning_rate"),
    ({"max_train_steps": 0}, "max_train_steps"),
    ({"max_train_steps": 50}, "max_train_steps"),  # every candidate above 10% of 50
    ({"factors": (0.5,)}, "factors"),
    ({"post_warmup_factor": 0}, "post_warmup_factor"),
])
def test_bad_input(kwargs, match):
  args = {"unstable_base_learning_rate": 0.1, "max_train_steps": 10_000}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    optstab.tune_warmup(early_instability_trial, candidates=(10, 1000), progress=False, **args)
