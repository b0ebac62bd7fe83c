"""The Figure 7b study (``optstab-transformer --preset spikes``): its plan, its run, its verdicts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from optstab.transformer import cli, presets, spikes

TINY = spikes.SpikeStudy(name="tiny-spikes", description="test", base="tiny", learning_rate=1e-2,
                         warmup_steps=4, num_steps=24, eval_every=12, seeds=(0, 1))


def test_the_spikes_plan_is_every_variant_on_every_seed_within_ten_minutes():
  study = spikes.SPIKE_STUDIES["spikes"]
  plan = spikes.study_plan(study)
  assert len(plan.configs) == len(study.seeds) * len(spikes.VARIANTS) == 9
  for seed in study.seeds:
    runs = [c for c in plan.configs if c.seed == seed]
    assert [(c.skip_spikes, c.clip_norm) for c in runs] == [(False, None), (True, None),
                                                            (False, study.clip_norm)]
    assert all(c.total_steps == study.num_steps and c.warmup_steps == study.warmup_steps
               and c.learning_rate == study.learning_rate for c in runs)
  estimate = plan.estimate(presets.CPU_COST, workers=2)
  assert estimate.wall_seconds <= 10 * 60, estimate.describe()


@pytest.mark.parametrize("change, match", [
    ({"warmup_steps": 24}, r"warmup_steps must be in \[0, num_steps=24\).*got 24"),
    ({"base": "huge"}, "base must be .*'tiny'; got 'huge'"),
    ({"norm_position": "middle"}, "norm_position must be .*got 'middle'"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"seeds": (1, 1)}, "seeds"),
])
def test_bad_studies_are_refused_naming_the_field(change, match):
  with pytest.raises(ValueError, match=match):
    TINY.replace(**change)


def test_tiny_study_runs_resumes_and_reports_every_run(tmp_path):
  out = tmp_path / "study"
  first = spikes.run_spike_study(TINY, out, progress=False)
  s = first.summary
  assert sorted(s["runs"]) == ["0", "1"]
  assert all(sorted(r) == sorted(spikes.VARIANTS) for r in s["runs"].values())
  for name in ("results", "report", "fig7b"):
    assert os.path.getsize(first.files[name]) > 0
  report = open(first.files["report"], encoding="utf-8").read()
  assert report.count("| step guard |") == 2 and "![Figure 7b](fig7b_midtraining.png)" in report
  assert json.load(open(first.files["results"], encoding="utf-8"))["plan"]["trials"] == 6
  # Resuming trains nothing and gives the same numbers.
  again = spikes.run_spike_study(TINY, out, progress=False)
  assert again.summary["runs"] == s["runs"]
  assert again.summary["trial_seconds"] == s["trial_seconds"]


def _run(lost: float, learned_nothing: bool, skipped=()) -> dict:
  return {"setback": {"lost": lost, "final_lost": lost}, "failed_to_train": learned_nothing,
          "skipped_steps": list(skipped)}


def test_verdicts_count_the_seeds_a_fix_rescues_from_a_failure_without_it():
  runs = {
      "0": {"no fix": _run(1.1, True), "step guard": _run(1.0, True, [310]),
            "clipping": _run(0.3, False)},
      "1": {"no fix": _run(0.9, False), "step guard": _run(0.2, False, [5, 6]),
            "clipping": _run(0.1, True)},  # no setback, but it learned nothing: not rescued
      "2": {"no fix": _run(0.2, False), "step guard": _run(0.9, False),
            "clipping": _run(0.1, False)},  # nothing to rescue: not counted
  }
  counts = {v: {"fail_mid_training": sum(spikes.fails_mid_training(r[v]) for r in runs.values()),
                "learned_nothing": sum(r[v]["failed_to_train"] for r in runs.values())}
            for v in spikes.VARIANTS}
  lines = spikes.verdicts({"seeds": [0, 1, 2], "runs": runs, "counts": counts})
  assert lines[0].startswith("Without a fix, the run fails mid-training (gives back more than "
                             "50% of what it had learned) on 2 of 3 seeds")
  assert "ends having learned nothing on 1 of 3" in lines[0]
  assert "step guard prevents the mid-training failure on 1 of the 2 seeds" in lines[1]
  assert "(fails mid-training: 2 of 3 seeds; learned nothing: 1 of 3) [1 of 2 seeds]." in lines[1]
  assert lines[2].startswith("Clipping prevents the mid-training failure on 1 of the 2 seeds")


def test_setback_is_the_share_of_what_was_learned_given_back_after_the_warmup():
  trivial = 3.27
  learn = np.r_[np.linspace(4.0, 2.6, 200), np.full(100, 2.6)]
  collapse = spikes.setback(np.r_[learn, np.full(100, 3.3)], trivial, after=200)
  assert collapse["lost"] == pytest.approx((3.3 - 2.6) / (trivial - 2.6))
  assert collapse["final_lost"] == pytest.approx(collapse["lost"])
  assert collapse["peak_step"] == 350  # the first step whose 50-step mean is all at 3.3
  assert 200 <= collapse["from_step"] <= 300
  assert spikes.fails_mid_training({"setback": collapse})
  # A bump of 0.1 nats that goes away: 15% given back, 0 at the end.
  bump = spikes.setback(np.r_[learn, np.full(50, 2.7), np.full(100, 2.6)], trivial, after=200)
  assert bump["lost"] == pytest.approx(0.1 / (trivial - 2.6)) and bump["final_lost"] == 0.0
  assert not spikes.fails_mid_training({"setback": bump})
  # A rise during the warmup is not counted; a non-finite loss is everything lost.
  early = np.r_[np.linspace(4.0, 2.6, 100), np.full(50, 3.2), np.full(150, 2.5)]
  assert spikes.setback(early, trivial, after=200)["lost"] == 0.0  # the 50-step mean is past it
  assert spikes.setback(early, trivial, after=50)["lost"] > 0.5
  assert spikes.setback(np.r_[learn, np.full(10, np.nan)], trivial, after=200)["lost"] == np.inf
  assert spikes.setback(np.full(300, 3.3), trivial, after=200) is None  # it never learned


@pytest.mark.parametrize("argv, message", [
    (["--preset", "spikes", "--learning-rates", "1e-3"], "--learning-rates does not apply"),
    (["--preset", "spikes", "--diagnosis"], "--diagnosis does not apply"),
    (["--preset", "quick", "--learning-rate", "1e-3"], "--learning-rate applies to --preset spikes"),
])
def test_flags_of_the_other_kind_of_preset_are_usage_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv + ["--out", "unused"])
  assert e.value.code == 2 and message in capsys.readouterr().err
