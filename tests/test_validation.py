"""The one argument-checking helper every constructor calls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optstab import _validation


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1", None, True])
def test_learning_rate_errors_name_argument_value_and_range(value):
  with pytest.raises(ValueError) as e:
    _validation.check_learning_rate("learning_rate", value)
  message = str(e.value)
  assert message.startswith("learning_rate must be")
  assert "[0, inf)" in message and "schedule" in message
  assert repr(value) in message


def test_interval_ends_follow_inclusiveness():
  _validation.check_in_range("b1", 0.0, 0.0, 1.0)
  with pytest.raises(ValueError, match=r"b1 must be a finite real number in \[0, 1\); got 1.0"):
    _validation.check_in_range("b1", 1.0, 0.0, 1.0)
  _validation.check_percentile("percentile", 100.0)
  with pytest.raises(ValueError, match=r"\(0, 100\]"):
    _validation.check_percentile("percentile", 0.0)


def test_schedules_numpy_and_low_precision_scalars_are_accepted():
  _validation.check_learning_rate("learning_rate", lambda step: 0.1)
  _validation.check_in_range("b1", np.float32(0.9), 0.0, 1.0)
  _validation.check_in_range("b1", jnp.asarray(0.9, jnp.bfloat16), 0.0, 1.0)
  _validation.check_positive_int("window_size", np.int32(5))
  _validation.check_positive_int("window_size", jnp.asarray(5))


def test_low_precision_rounding_out_of_range_explains_the_cast():
  # 0.999 rounds to 1.0 in bfloat16, as inject_hyperparams may cast it.
  with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
    _validation.check_in_range("b2", jnp.asarray(0.999, jnp.bfloat16), 0.0, 1.0)


def test_traced_values_pass_concrete_ones_are_checked():
  @jax.jit
  def f(x):
    _validation.check_in_range("decay", x, 0.0, 1.0)
    _validation.check_positive_int("window_size", x.astype(jnp.int32))
    return x

  assert float(f(jnp.asarray(5.0))) == 5.0  # traced: no value to check
  with pytest.raises(ValueError, match="decay"):
    _validation.check_in_range("decay", jnp.asarray(5.0), 0.0, 1.0)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "3"])
def test_positive_int_rejects_non_integers_and_small_values(value):
  with pytest.raises(ValueError, match=r"window_size must be an integer >= 1"):
    _validation.check_positive_int("window_size", value)


def test_one_of_lists_the_choices():
  _validation.check_one_of("head", "pool8", ("pool8", "global_pool"))
  with pytest.raises(ValueError, match="head must be 'pool8' or 'global_pool'; got 'avg'"):
    _validation.check_one_of("head", "avg", ("pool8", "global_pool"))


# --- sequences, JSON values and steps ---------------------------------------


@pytest.mark.parametrize("value", [0.1, "0.1", None, 3, np.float32(0.1), np.zeros((2, 2))])
def test_sequence_refuses_scalars_strings_and_matrices_by_name(value):
  with pytest.raises(ValueError, match="^learning_rates must be a .*sequence"):
    _validation.check_sequence("learning_rates", value)


def test_sequence_accepts_lists_tuples_arrays_and_generators():
  assert _validation.check_sequence("x", (1, 2)) == [1, 2]
  assert _validation.check_sequence("x", np.array([0.5, 1.0])) == [0.5, 1.0]
  assert _validation.check_sequence("x", (v for v in [3])) == [3]
  with pytest.raises(ValueError, match="non-empty"):
    _validation.check_sequence("x", [], allow_empty=False)


# --- diagnose: everything checkable before any trial (issue 14) ------------


def _diagnose(tmp_path, calls, **kwargs):
  from optstab.diagnosis import diagnose
  from test_diagnosis_problems import noisy_numpy_trial

  def trial(config):
    calls.append(config)
    return noisy_numpy_trial(config)

  args = {"learning_rates": [0.1, 0.2, 0.4], "num_steps": 50, "out_dir": tmp_path,
          "progress": False, "log": None, **kwargs}
  return diagnose(trial, **args)


@pytest.mark.parametrize("kwargs, match", [
    ({"checks": 3}, "checks must be a Checks"),
    ({"fixes": {"seeds": 2}}, "fixes must be a FixLadder"),
    ({"learning_rates": 0.1}, "learning_rates must be a sequence"),
    ({"metric": 3}, "metric must be the name"),
    ({"mode": "lowest"}, "mode must be"),
    ({"rule": {"max_loss_ratio": 3}}, "rule must be a FeasibilityRule"),
    ({"thresholds": 3.0}, "thresholds must be a DetectorThresholds"),
    ({"budget": 0}, "budget"),
    ({"base_config": {"learning_rate": 0.1}}, "base_config must be a TrialConfig"),
])
def test_diagnose_refuses_before_any_trial(tmp_path, kwargs, match):
  calls = []
  with pytest.raises(ValueError, match=match):
    _diagnose(tmp_path, calls, **kwargs)
  assert calls == []


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "accuracy"}, r"metric must be one of the metrics .* \['loss'\]"),
    ({"rule_thresholds": {"error_rate": 0.5}}, r"rule.metric_thresholds must name .*'error_rate'"),
])
def test_metric_names_fail_after_the_first_trial_and_before_any_on_resume(tmp_path, kwargs, match):
  from optstab.diagnosis import FeasibilityRule, TrialStore
  if "rule_thresholds" in kwargs:
    kwargs = {"rule": FeasibilityRule(metric_thresholds=kwargs.pop("rule_thresholds"))}
  calls = []
  with pytest.raises(ValueError, match=match):
    _diagnose(tmp_path, calls, **kwargs)
  assert len(calls) == 1 and len(TrialStore(tmp_path)) == 1  # one trial, kept
  calls.clear()
  with pytest.raises(ValueError, match=match):  # resuming: the stored result tells at once
    _diagnose(tmp_path, calls, **kwargs)
  assert calls == []


def test_learning_rate_sweep_scalar_grid_message():
  from optstab.diagnosis import learning_rate_sweep
  with pytest.raises(ValueError, match=r"learning_rates must be a sequence .*; got 0.1\."):
    learning_rate_sweep(lambda c: None, 0.1, 10, progress=False)


# --- the WRN command line: bad flags are usage errors (issue 14) ------------


@pytest.mark.parametrize("flags, match", [
    (["--num-steps", "-5"], "argument --num-steps: must be an integer >= 1; got '-5'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1; got '0'"),
    (["--warmup-steps", "x"], "argument --warmup-steps: must be an integer >= 0; got 'x'"),
    (["--learning-rates", "0.1", "nan"], "argument --learning-rates: must be a finite number > 0"),
    (["--learning-rates", "0.1", "0.1"], "argument --learning-rates: must be distinct"),
    (["--high-learning-rate", "7.7"], "high_learning_rate 7.7 must be on the grid"),
])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, match):
  from optstab.wrn import cli
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "tiny", "--out", str(tmp_path / "run"), *flags])
  assert e.value.code == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert lines[0].startswith("usage: optstab-wrn") and "Traceback" not in err
  assert lines[-1].startswith("optstab-wrn: error: ") and match in lines[-1], err


def test_cli_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
  from optstab.wrn import cli
  target = tmp_path / "notes.txt"
  target.write_text("x")
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "tiny", "--out", str(target)])
  assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_missing_cifar10_message_names_the_offline_preset(tmp_path):
  from optstab.wrn import data
  with pytest.raises(data.DataNotFoundError, match=r"optstab-wrn --preset quick"):
    data.load_cifar10(tmp_path, download=False)
