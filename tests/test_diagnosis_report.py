"""diagnose(): the report (markdown, JSON, figures), plots, and the README example."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import optstab
from optstab import plots
from optstab.diagnosis import EARLY_UNSTABLE, diagnose, log_grid
from test_diagnosis_problems import early_instability_trial, noisy_numpy_trial

# The README example moved to the guide page "Diagnosing your own model".
README = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "guide", "diagnosis.md")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == PNG_MAGIC


def test_unstable_rate_comes_from_the_confirmation_runs_too():
  from test_diagnosis_confirm import synthetic_trial  # pylint: disable=import-outside-toplevel
  from optstab.diagnosis import learning_rate_sweep, short_check, unstable_learning_rate
  sweep = learning_rate_sweep(synthetic_trial, [0.025, 0.05, 0.1, 0.2, 0.8], 400, progress=False)
  # 0.2 = 2 x lr* is feasible in the sweep but early-unstable: its label makes it the unstable rate.
  assert sweep.unstable_learning_rate == 0.2
  assert unstable_learning_rate(sweep) == (0.2, "in the sweep: early-unstable (then recovered)")
  # The short check at 2 x lr* sees the same early instability.
  run = short_check(synthetic_trial, sweep, progress=False)
  rate, where = unstable_learning_rate(sweep, (run,))
  assert rate == pytest.approx(0.2)
  # A confirmation run can find a rate the sweep's grid does not have.
  run = short_check(synthetic_trial, sweep, factor=1.5, progress=False)
  rate, where = unstable_learning_rate(sweep, (run,))
  assert rate == pytest.approx(0.15) and "short check" in where and "early-unstable" in where


def test_diagnose_stable_workload_skips_the_fixes(tmp_path):
  d = diagnose(noisy_numpy_trial, [0.01, 0.03, 0.1], 200, out_dir=tmp_path, progress=False,
               log=None, checks=optstab.Checks(long_factors=(2.0,)))
  assert d.verdict == "stable" and d.fixes == ()
  assert d.sweep.at_grid_top
  assert any(f.topic == "Grid too small" for f in d.findings)
  assert d.findings[-1].text.startswith("No instability found")


def test_diagnose_no_feasible_rate(tmp_path):
  d = diagnose(noisy_numpy_trial, [3.0, 4.0], 50, out_dir=tmp_path, progress=False, log=None)
  assert d.verdict == "no-feasible-rate" and os.path.exists(d.files["markdown"])


def test_the_sweep_figure_names_the_model_and_its_metric(tmp_path, monkeypatch):
  """The title names the model given; the y axis says the ranking metric is an evaluation one."""
  drawn = {}

  def keep(fig, path):
    ax = fig.axes[0]
    drawn[os.path.basename(path)] = (ax.get_title(), ax.get_ylabel())
    return str(path)

  monkeypatch.setattr(plots, "_save", keep)
  diagnose(noisy_numpy_trial, [3.0, 4.0], 50, out_dir=tmp_path, progress=False, log=None,
           name="Toy model")
  assert drawn["sweep.png"] == ("Toy model: Learning-rate sweep", "final evaluation loss")


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rates": []}, "empty grid"),
    ({"learning_rates": [0.1, -0.1]}, r"learning_rates\[1\]"),
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": None}, "num_steps or base_config"),
    ({"checks": {"short_steps": 10}}, "checks must be a Checks"),
    ({"fixes": (10,)}, "fixes must be a FixLadder"),
    ({"budget": 0}, "budget"),
    ({"budget": 100}, r"budget must be an integer >= 500 \(the sweep needs 200"),
    ({"name": 3}, "name must be a string or None"),
])
def test_diagnose_bad_input_fails_before_any_trial(tmp_path, kwargs, match):
  calls = []
  args = {"learning_rates": [0.1, 0.2], "num_steps": 100, "log": None}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    diagnose(lambda c: calls.append(c), out_dir=tmp_path, progress=False, **args)
  assert calls == []


def test_plot_functions_take_plain_arrays(tmp_path):
  p = plots.plot_learning_rate_sweep([1e-3, 1e-2, 1e-1], [0.5, 0.2, np.nan], [True, True, False],
                                     tmp_path / "a.png", best_learning_rate=1e-2)
  assert _is_png(p)
  p = plots.plot_loss_curves({"x": [3.0, 2.0, np.inf], "y": np.linspace(3, 1, 10)},
                             tmp_path / "b.png", log_x=True)
  assert _is_png(p)
  assert _is_png(plots.plot_every_step_loss(np.linspace(3, 1, 300), tmp_path / "c.png",
                                            coarse_every=50, first_steps=20))
  # Several labelled runs (Figure 5's two model variants), one blowing up.
  assert _is_png(plots.plot_every_step_loss(
      {"stable": np.linspace(3, 1, 300), "spiky": np.r_[3.0, 40.0, np.inf, np.ones(297)]},
      tmp_path / "c2.png", coarse_every=50, first_steps=20))
  with pytest.raises(ValueError, match="train_loss"):
    plots.plot_every_step_loss({}, tmp_path / "c3.png")
  assert _is_png(plots.plot_warmup_sweep([10, 100], [[1.0, np.nan], np.linspace(2, 1, 30)],
                                         [False, True], tmp_path / "d.png", base_learning_rate=0.3))
  with pytest.raises(ValueError, match="equal length"):
    plots.plot_learning_rate_sweep([1e-3], [0.5, 0.2], [True], tmp_path / "e.png")
  # Figure 7a with labels: failed-to-train (finite, feasible) drawn apart from infeasible.
  assert _is_png(plots.plot_learning_rate_sweep(
      [1e-3, 1e-2, 1e-1, 1.0], [0.5, 0.2, 0.9, np.nan], [True, True, True, False],
      tmp_path / "e2.png", best_learning_rate=1e-2,
      labels=["stable", "stable", "failed-to-train", "diverged"]))
  with pytest.raises(ValueError, match="labels"):
    plots.plot_learning_rate_sweep([1e-3], [0.5], [True], tmp_path / "e3.png", labels=[])
  with pytest.raises(ValueError, match="at least one curve"):
    plots.plot_loss_curves({}, tmp_path / "f.png")


def _readme_example() -> str:
  with open(README, encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("<!-- diagnosis -->"):text.index("<!-- end diagnosis -->")]
  (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  return code


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  code = _readme_example()
  assert "optstab.make_trial_fn(init=init, apply=apply" in code
  exec(compile(code, "diagnosis.md", "exec"), {"__name__": "readme_example"})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert "lr* = 0.01, at the edge of feasibility: True" in out
  assert "verdict: early-unstable" in out
  for name in ("diagnosis.md", "diagnosis.json", "sweep.png", "trials.jsonl"):
    assert (tmp_path / "diagnosis_out" / name).exists()
  assert optstab.diagnose is diagnose


def test_report_says_warmup_did_not_help_when_it_loses_to_lr_star(tmp_path):
  from test_diagnosis_warmup import _warmup_trains_but_generalizes_worse  # pylint: disable=import-outside-toplevel
  d = diagnose(_warmup_trains_but_generalizes_worse, [0.003, 0.01, 0.03, 0.1], 400, out_dir=tmp_path,
               progress=False, log=None, fixes=optstab.FixLadder(kinds=("warmup",)))
  (warmup,) = d.fixes
  assert warmup.status == "does not help" and d.recommendation is None
  # Warmups of >= 10 steps (12, 40, 120 of 4, 12, 40, 120) train at every rate tried, but
  # the metric is worse than lr*'s 0.1 for the same steps at each: the search backs off to
  # 1 x the unstable rate and verifies the best there, the shortest warmup.
  assert warmup.chosen.learning_rate == pytest.approx(0.1)
  assert warmup.rates_tried == pytest.approx((0.1, 0.15, 0.2, 0.3, 0.5, 1.0))
  assert warmup.reason.startswith("12 warmup steps at 0.1: best loss 0.2 vs lr*'s 0.1 for the "
                                  "same 412 steps")
  assert warmup.reason.endswith("worse beyond the seed noise")
  assert d.findings[-1].text.startswith("No fix tried helped (warmup: 12 warmup steps at 0.1")
  assert "Use " not in d.findings[-1].text
