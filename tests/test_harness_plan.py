"""optstab.harness.plan: a trial plan's counts and its estimated cost."""

import pytest

from optstab.harness import CostModel, TrialPlan
from optstab.trial import TrialConfig


def _config(lr, variant="a", warmup=0, **extra):
  return TrialConfig(learning_rate=lr, num_steps=100, warmup_steps=warmup,
                     extra={"variant": variant, **extra})


def test_plan_counts_trials_steps_and_models_once():
  configs = [_config(0.1), _config(0.2, warmup=20), _config(0.1),  # the repeat runs once
             _config(0.1, "b", head="pool")]
  plan = TrialPlan.build((0,), configs, [("b", 50)])
  assert plan.counts() == {"seeds": 1, "trials": 4, "listed": 3, "dependent": 1,
                           "steps": 100 + 120 + 100 + 50, "models": 2}
  with pytest.raises(ValueError, match="distinct"):
    TrialPlan((0,), (configs[0], configs[0]))
  with pytest.raises(ValueError, match="steps"):
    TrialPlan.build((0,), configs, [("b", 0)])


def test_estimate_uses_each_variants_step_cost_and_one_compilation_per_model_and_worker():
  plan = TrialPlan.build((0,), [_config(0.1), _config(0.1, "b", head="pool")], [("b", 100)])
  cost = CostModel({"a": 0.01, "*": 0.1}, compile_cpu_seconds=5.0, measured="test")
  estimate = plan.estimate(cost, workers=2)
  assert estimate.cpu_seconds == pytest.approx(100 * 0.01 + 200 * 0.1 + 2 * 2 * 5.0)
  assert estimate.wall_seconds == pytest.approx(estimate.cpu_seconds / 2)
  assert "idle cores" in estimate.describe()
  with pytest.raises(ValueError, match="'\\*'"):
    CostModel({"a": 0.01}, 1.0, "test")
  with pytest.raises(ValueError, match="step_cpu_seconds"):
    CostModel({"*": 0.0}, 1.0, "test")
  with pytest.raises(ValueError, match="workers"):
    plan.estimate(cost, workers=0)
