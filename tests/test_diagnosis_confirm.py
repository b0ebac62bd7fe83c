"""Confirmation runs (S2): rates above lr*, the short every-step check, the long checks."""

from __future__ import annotations

import numpy as np
import pytest

from optstab.diagnosis import (
    DIVERGED,
    EARLY_UNSTABLE,
    MID_TRAINING_UNSTABLE,
    STABLE,
    TrialResult,
    learning_rate_sweep,
    long_check,
    rates_above_best,
    short_check,
)


def synthetic_trial(config):
  """Deterministic curves with a known kind of instability per learning rate.

  lr <= 0.1: a steady decline, faster for larger rates. 0.1 < lr <= 0.4: the
  loss swings to 5 x its initial value at steps 3-6, then recovers and trains
  slowly (feasible: 5 x < 10 x). 0.4 < lr <= 0.6: a steady decline, then a
  sudden 2 x jump at 60 % of the run that only half recovers (Figure 7b).
  lr > 0.6: NaN from step 10.
  """
  lr, n = config.learning_rate, config.total_steps
  t = np.arange(n)
  if lr <= 0.1:
    loss = 0.1 + 2.0 * np.exp(-lr * t / 5.0)
  elif lr <= 0.4:
    loss = 0.2 + 1.9 * np.exp(-0.02 * t / 5.0)
    loss[2:6] = 10.5
  elif lr <= 0.6:
    loss = 0.1 + 2.0 * np.exp(-t / 40.0)
    jump = int(0.6 * n)
    loss[jump:] = 0.3 + 0.3 * np.exp(-(t[jump:] - jump) / 20.0) + 0.05 * np.exp(-t[jump:] / 40.0)
  else:
    loss = 0.1 + 2.0 * np.exp(-t / 40.0)
    loss[9:] = np.nan
  steps = config.eval_steps()
  return TrialResult(config, loss, steps, {"loss": loss[steps - 1]}, np.full(n, 1.0))


@pytest.fixture(scope="module")
def sweep():
  return learning_rate_sweep(synthetic_trial, [0.025, 0.05, 0.1, 0.2, 0.8], 400, progress=False)


def test_sweep_of_the_synthetic_trial(sweep):
  assert sweep.best_learning_rate == 0.1
  assert sweep.feasible.tolist() == [True, True, True, True, False]
  assert sweep.labels == ("stable", "stable", "stable", "early-unstable", "diverged")
  # 0.2 is feasible but early-unstable: lr* sits at the edge all the same.
  assert sweep.at_edge_of_feasibility and sweep.unstable_learning_rate == 0.2


def test_rates_above_best_uses_the_sweep_trials(sweep):
  above = rates_above_best(sweep, count=3)
  assert [r.learning_rate for r in above] == [0.2, 0.8]
  assert above[0].label == EARLY_UNSTABLE and above[0].diagnosis.recovered
  assert above[0].feasible and above[0].factor == pytest.approx(2.0)
  assert above[1].label == DIVERGED and not above[1].feasible
  assert "step 10" in above[1].describe()


def test_short_check_runs_500_steps_at_twice_lr_star_at_the_sweeps_cadence(sweep, tmp_path):
  seen = []

  def trial(config):
    seen.append(config)
    return synthetic_trial(config)

  run = short_check(trial, sweep, out_dir=tmp_path, progress=False)
  (config,) = seen
  assert config.learning_rate == pytest.approx(0.2) and config.num_steps == 500
  # The every-step view is the per-step training loss: evaluation keeps the sweep's cadence.
  assert config.eval_every == sweep.best.config.eval_every == 100 and config.warmup_steps == 0
  assert run.result.eval_steps.tolist() == [100, 200, 300, 400, 500]
  assert run.label == EARLY_UNSTABLE and run.recovered  # unstable early, then recovers
  assert run.diagnosis.early_max_loss_ratio == pytest.approx(5.0)
  assert "training loss at every step, evaluating every 100 steps" in run.describe()
  short_check(trial, sweep, out_dir=tmp_path, progress=False)
  assert len(seen) == 1  # resumed from the store
  every = short_check(trial, sweep, eval_every=1, out_dir=tmp_path, progress=False)
  assert every.result.eval_steps.tolist() == list(range(1, 501))
  assert "evaluating every step" in every.describe() and every.label == EARLY_UNSTABLE
  with pytest.raises(ValueError, match="eval_every"):
    short_check(trial, sweep, eval_every=0, progress=False)


def test_long_check_finds_the_figure_7b_spike(sweep):
  runs = long_check(synthetic_trial, sweep, factors=(5.0, 10.0), progress=False)
  five, ten = runs
  assert five.learning_rate == pytest.approx(0.5) and five.config.num_steps == 400
  assert five.label == MID_TRAINING_UNSTABLE and five.feasible
  (spike,) = five.diagnosis.loss_spikes
  assert spike.step == 241 and not spike.recovered and spike.size > 2
  assert ten.label == DIVERGED and ten.diagnosis.first_nonfinite_step == 10
  assert ten.diagnosis.early_unstable
  longer = long_check(synthetic_trial, sweep, factors=(5.0,), num_steps=1000, progress=False)
  assert longer[0].config.num_steps == 1000 and longer[0].diagnosis.loss_spikes[0].step == 601


def test_stable_rates_give_stable_labels(sweep):
  runs = long_check(synthetic_trial, sweep, factors=(0.5,), progress=False)
  assert runs[0].label == STABLE and not runs[0].unstable


def test_bad_input(sweep):
  with pytest.raises(ValueError, match="factor"):
    short_check(synthetic_trial, sweep, factor=0.0, progress=False)
  with pytest.raises(ValueError, match="num_steps"):
    short_check(synthetic_trial, sweep, num_steps=0, progress=False)
  with pytest.raises(ValueError, match="factors"):
    long_check(synthetic_trial, sweep, factors=(), progress=False)
  with pytest.raises(ValueError, match=r"factors\[1\]"):
    long_check(synthetic_trial, sweep, factors=(5.0, -1.0), progress=False)
  nothing = learning_rate_sweep(synthetic_trial, [0.8, 0.9], 50, progress=False)
  with pytest.raises(ValueError, match="no feasible learning rate"):
    short_check(synthetic_trial, nothing, progress=False)
