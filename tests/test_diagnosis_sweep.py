"""Learning-rate sweeps, feasibility and lr* on problems with known answers (S2)."""

from __future__ import annotations

import numpy as np
import pytest

import optstab
from optstab.diagnosis import (
    FeasibilityRule,
    TrialConfig,
    TrialResult,
    check_feasibility,
    learning_rate_sweep,
    log_grid,
    metric_value,
)
from test_diagnosis_problems import QUADRATIC_CURVATURES, noisy_numpy_trial, quadratic_trial

TWO_OVER_L = 2.0 / max(QUADRATIC_CURVATURES)  # 0.2


def test_log_grid():
  np.testing.assert_allclose(log_grid(1e-3, 1.0, 4), [1e-3, 1e-2, 1e-1, 1.0])
  assert log_grid(0.5, 0.5, 1).tolist() == [0.5]
  g = log_grid(3e-4, 0.1, 7)
  assert g[0] == 3e-4 and g[-1] == 0.1
  np.testing.assert_allclose(np.diff(np.log(g)), np.log(0.1 / 3e-4) / 6)


@pytest.mark.parametrize("args, match", [
    ((0.0, 1.0, 5), "low"),
    ((-1.0, 1.0, 5), "low"),
    ((1e-3, 1.0, 0), "num"),
    ((1e-3, 1.0, 2.5), "num"),
    ((1.0, 0.1, 3), "high must be > low"),
    ((0.1, 0.2, 1), "high must equal low"),
])
def test_log_grid_rejects_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    log_grid(*args)


def test_quadratic_sweep_marks_exactly_the_rates_above_two_over_l():
  grid = log_grid(1e-3, 1.0, 13)
  sweep = learning_rate_sweep(quadratic_trial, grid, 300, progress=False)
  np.testing.assert_array_equal(sweep.feasible, grid < TWO_OVER_L)
  assert sweep.best_learning_rate < TWO_OVER_L
  assert sweep.best_learning_rate == pytest.approx(grid[grid < TWO_OVER_L].max())
  assert sweep.at_edge_of_feasibility  # the FAQ's sign of instability
  assert sweep.unstable_learning_rate == pytest.approx(grid[grid > TWO_OVER_L].min())
  for t in sweep.trials:
    assert (t.reason is None) == t.feasible
    if not t.feasible:
      assert "step" in t.reason and np.isnan(t.metric_value)


def test_quadratic_tight_grid_around_two_over_l():
  # Rates within 0.5% of 2/L: |1 - lr L| = 0.99 converges, 1.01 diverges.
  grid = [0.19, 0.199, 0.201, 0.21]
  sweep = learning_rate_sweep(quadratic_trial, grid, 1000, progress=False)
  assert sweep.feasible.tolist() == [True, True, False, False]
  # At 0.199 the stiffest direction contracts only by 0.99 a step, so 0.19
  # ends lower: lr* is below 2/L, and not at the edge here.
  assert sweep.best_learning_rate == 0.19 and not sweep.at_edge_of_feasibility
  assert sweep.unstable_learning_rate == 0.201


def test_metric_choices_and_max_mode():
  cfg = TrialConfig(learning_rate=0.1, num_steps=4, eval_every=2)
  r = TrialResult(cfg, np.array([4.0, 3.0, 2.0, 2.5]), np.array([2, 4]),
                  {"loss": np.array([3.0, 2.5]), "accuracy": np.array([0.7, 0.6])}, np.ones(4))
  assert metric_value(r) == 2.5
  assert metric_value(r, "train_loss") == 2.5
  assert metric_value(r, "loss", reduce="best") == 2.5
  assert metric_value(r, "train_loss", reduce="best") == 2.0
  assert metric_value(r, "accuracy", mode="max", reduce="best") == 0.7
  with pytest.raises(ValueError, match="'error_rate' is not among"):
    metric_value(r, "error_rate")


def test_sweep_by_named_metric_higher_is_better():
  def trial(config):
    acc = np.full(config.eval_steps().size, 1.0 - abs(np.log10(config.learning_rate) + 2))
    loss = np.linspace(2.0, 1.0, config.total_steps)  # a flat loss would be failed-to-train
    return TrialResult(config, loss, config.eval_steps(), {"accuracy": acc}, loss)

  sweep = learning_rate_sweep(trial, log_grid(1e-4, 1.0, 5), 10, metric="accuracy", mode="max",
                              progress=False)
  assert sweep.best_learning_rate == pytest.approx(1e-2)
  assert not sweep.at_edge_of_feasibility and not sweep.at_grid_top
  assert sweep.labels == ("stable",) * 5


def test_feasibility_rule_reasons():
  cfg = TrialConfig(learning_rate=0.1, num_steps=4, eval_every=2)

  def result(loss, evals=(1.0, 1.0)):
    return TrialResult(cfg, np.array(loss, float), np.array([2, 4]),
                       {"loss": np.array(evals, float), "error_rate": np.array([0.9, 0.9])},
                       np.ones(4))

  ok = result([2.0, 1.5, 1.0, 0.5])
  assert check_feasibility(ok) == (True, None, None, None, False)
  nan = check_feasibility(result([2.0, np.nan, np.nan, np.nan]))
  assert not nan.feasible and "step 2" in nan.reason
  assert (nan.kind, nan.step) == ("nonfinite", 2)
  inf_eval = check_feasibility(result([2.0, 1.0, 1.0, 1.0], evals=(1.0, np.inf)))
  assert not inf_eval.feasible and "loss" in inf_eval.reason and "step 4" in inf_eval.reason
  spike = result([2.0, 25.0, 1.0, 0.5])  # recovers, but 12.5 x the initial loss at step 2
  assert "step 2" in check_feasibility(spike).reason
  assert check_feasibility(spike)[2:] == ("loss_ratio", 2, False)
  assert check_feasibility(spike, FeasibilityRule(scope="final")).feasible
  assert check_feasibility(spike, FeasibilityRule(max_loss_ratio=20)).feasible
  high = check_feasibility(ok, FeasibilityRule(metric_thresholds={"error_rate": 0.5}))
  assert not high.feasible and "error_rate" in high.reason
  with pytest.raises(ValueError, match="max_loss_ratio"):
    FeasibilityRule(max_loss_ratio=0.5)
  with pytest.raises(ValueError, match="scope"):
    FeasibilityRule(scope="sometimes")
  with pytest.raises(ValueError, match="accuracy"):
    check_feasibility(ok, FeasibilityRule(metric_thresholds={"accuracy": 0.5}))


def _trial_of(losses_by_rate, evals=None):
  """A TrialFn replaying fixed curves (one per rate), evaluated at the end."""
  def trial(config):
    loss = np.asarray(losses_by_rate[config.learning_rate], float)
    value = loss[-1] if evals is None else evals[config.learning_rate]
    steps = config.eval_steps()
    return TrialResult(config, loss, steps, {"loss": np.full(steps.size, value)},
                       np.ones(loss.size))
  return trial


def test_labels_agree_with_feasibility_and_failed_to_train_marks_the_edge():
  n = 200
  falling = np.linspace(2.3, 0.2, n)
  spike = falling.copy()
  spike[1] = 81.0  # 35 x the initial loss for one step, then trains: infeasible by the rule
  stalled = np.full(n, 2.303)
  blown = np.r_[np.linspace(2.3, 2.0, 20), np.full(n - 20, 40.0)]
  curves = {0.01: np.linspace(2.3, 1.0, n), 0.1: falling, 0.3: spike, 1.0: stalled, 3.0: blown}
  sweep = learning_rate_sweep(_trial_of(curves), sorted(curves), n, trivial_loss=np.log(10.0),
                              progress=False)
  assert sweep.best_learning_rate == 0.1
  assert sweep.reference_loss == pytest.approx(np.median(falling[-20:]))  # its final level: last 10%
  assert sweep.feasible.tolist() == [True, True, False, True, False]
  assert sweep.labels == ("stable", "stable", "early-unstable", "failed-to-train", "diverged")
  assert sweep.at_edge_of_feasibility and sweep.unstable_learning_rate == 0.3
  for t in sweep.trials:
    text = t.describe()
    assert text.startswith(t.headline + ": ")
    assert ("infeasible" in text) == (not t.feasible)
    assert not (t.label != "stable" and "no loss spike" in text), text
  assert sweep.trials[2].describe().startswith(
      "early-unstable (then recovered): at step 2 the loss jumped to 81")
  # Without the spike, the stalled run alone marks lr*'s edge: failed-to-train counts.
  del curves[0.3]
  sweep = learning_rate_sweep(_trial_of(curves), sorted(curves), n, progress=False)
  assert sweep.at_edge_of_feasibility and sweep.unstable_learning_rate == 1.0
  assert sweep.trials[2].label == "failed-to-train" and sweep.trials[2].feasible


def test_raising_and_misbehaving_trials_are_recorded_and_the_sweep_goes_on():
  def trial(config):
    if config.learning_rate == 0.3:
      raise FloatingPointError("boom")
    if config.learning_rate == 0.5:
      return "not a result"
    return noisy_numpy_trial(config)

  sweep = learning_rate_sweep(trial, [0.1, 0.3, 0.5, 0.7], 20, progress=False)
  assert sweep.feasible.tolist() == [True, False, False, True]
  assert "FloatingPointError: boom" in sweep.trials[1].reason
  assert "TypeError" in sweep.trials[2].reason
  assert sweep.trials[1].result is None and sweep.trials[1].record.error.startswith("Floating")


def test_no_feasible_rate():
  sweep = learning_rate_sweep(noisy_numpy_trial, [3.0, 5.0], 50, progress=False)
  assert sweep.best_learning_rate is None and sweep.unstable_learning_rate is None
  assert not sweep.at_edge_of_feasibility


@pytest.mark.parametrize("rates, steps, match", [
    ([], 10, "empty grid"),
    ([0.1, 0.0], 10, r"learning_rates\[1\]"),
    ([0.1, -1.0], 10, r"learning_rates\[1\]"),
    ([0.1, float("nan")], 10, r"learning_rates\[1\]"),
    ([0.1, 0.1], 10, "distinct"),
    ([0.1], 0, "num_steps"),
    ([0.1], -5, "num_steps"),
    ([0.1], None, "num_steps or base_config"),
])
def test_sweep_rejects_bad_input(rates, steps, match):
  with pytest.raises(ValueError, match=match):
    learning_rate_sweep(noisy_numpy_trial, rates, steps, progress=False)


def test_base_config_is_copied_and_public_names_exist():
  base = TrialConfig(learning_rate=1.0, num_steps=30, eval_every=10, seed=3, extra={"variant": "a"})
  sweep = optstab.learning_rate_sweep(noisy_numpy_trial, [0.5, 0.1], base_config=base,
                                      progress=False)
  assert [t.config.seed for t in sweep.trials] == [3, 3]
  assert [t.learning_rate for t in sweep.trials] == [0.1, 0.5]  # ascending
  assert sweep.trials[0].config.extra == {"variant": "a"}
  d = sweep.to_dict()
  assert d["best_learning_rate"] == 0.5 and len(d["trials"]) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "lowest"}, "mode must be 'min' or 'max'"),
    ({"reduce": "mean"}, "reduce must be 'final' or 'best'"),
])
def test_sweep_rejects_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    learning_rate_sweep(noisy_numpy_trial, [0.1], 10, progress=False, **kwargs)
