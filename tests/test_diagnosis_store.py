"""Nothing lost: durable trial records, resume, half-written lines, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from optstab.diagnosis import TrialConfig, TrialRecord, TrialStore, learning_rate_sweep
from optstab.diagnosis.trial import TrialResult
from optstab.diagnosis.store import TRIALS_FILE
from _executor_trials import GRID, numpy_trial
from test_diagnosis_problems import noisy_numpy_trial

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# The trial the killed subprocess and the reference run both use: cheap numpy;
# 0.7 raises, >= 2 diverges. In the subprocess, the 5th trial hangs
# (OPTSTAB_TEST_HANG_LRS), so the SIGKILL lands in the middle of a trial after
# exactly 4 were recorded.
HANG_AT = GRID[4]


def _summary(sweep):
  return [(t.learning_rate, t.feasible, t.reason, t.metric_value if t.feasible else None,
           None if t.result is None else t.result.train_loss.tolist()) for t in sweep.trials]


def _lines(path):
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    return f.read().count(b"\n")


def test_sweep_killed_with_sigkill_resumes_to_the_same_results(tmp_path):
  trial, grid = numpy_trial, GRID
  killed_dir = tmp_path / "killed"
  script = tmp_path / "run_sweep.py"
  script.write_text(textwrap.dedent(f'''
      from _executor_trials import GRID, numpy_trial
      from optstab.diagnosis.sweep import learning_rate_sweep
      learning_rate_sweep(numpy_trial, GRID, 40, out_dir={str(killed_dir)!r}, progress=False)
  '''))
  env = dict(os.environ, JAX_PLATFORMS="cpu", OPTSTAB_TEST_HANG_LRS=str(HANG_AT),
             PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.Popen([sys.executable, str(script)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  store_file = killed_dir / TRIALS_FILE
  deadline = time.monotonic() + 120
  while _lines(store_file) < 4 and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  finished = _lines(store_file)
  assert finished == 4  # killed in the middle of the 5th trial

  calls = []

  def counting(config):
    calls.append(config.learning_rate)
    return trial(config)

  resumed = learning_rate_sweep(counting, grid, 40, out_dir=killed_dir, progress=False)
  assert len(calls) == len(grid) - finished  # finished trials were skipped
  reference = learning_rate_sweep(trial, grid, 40, out_dir=tmp_path / "reference", progress=False)
  assert _summary(resumed) == _summary(reference)
  assert resumed.best_learning_rate == reference.best_learning_rate
  assert resumed.to_dict()["trials"] == [
      {**t, "seconds": r["seconds"]} for t, r in zip(reference.to_dict()["trials"],
                                                     resumed.to_dict()["trials"])]
  # The crash and the divergence were recorded, and the sweep went on past them.
  reasons = {t.learning_rate: t.reason for t in resumed.trials}
  assert "RuntimeError: simulated crash" in reasons[0.7]
  assert "step" in reasons[2.5] and reasons[0.4] is None
  # Running it a third time runs nothing.
  calls.clear()
  learning_rate_sweep(counting, grid, 40, out_dir=killed_dir, progress=False)
  assert calls == []


def test_half_written_last_line_is_ignored_and_cut_off(tmp_path):
  store = TrialStore(tmp_path)
  configs = [TrialConfig(learning_rate=lr, num_steps=5) for lr in (0.1, 0.2, 0.3)]
  for c in configs[:2]:
    store.append(TrialRecord(c, noisy_numpy_trial(c)))
  with open(store.path, "a", encoding="utf-8") as f:
    f.write('{"key": "{\\"learning_rate\\": 0.3, "status": "o')  # killed mid-write
  reloaded = TrialStore(tmp_path)
  assert len(reloaded) == 2 and reloaded.ignored_lines == 1
  assert configs[0] in reloaded and configs[2] not in reloaded
  reloaded.append(TrialRecord(configs[2], None, "ValueError: x"))
  again = TrialStore(tmp_path)
  assert len(again) == 3 and again.ignored_lines == 0
  assert again.get(configs[2]).error == "ValueError: x"
  with open(again.path, encoding="utf-8") as f:
    assert all(json.loads(line)["key"] for line in f)


def test_record_round_trip_keeps_results(tmp_path):
  config = TrialConfig(learning_rate=2.5, num_steps=30, eval_every=7, extra={"b": 1, "a": [1, 2]})
  result = noisy_numpy_trial(config)
  result.train_loss[-3:] = [np.nan, np.inf, -np.inf]
  store = TrialStore(tmp_path)
  store.append(TrialRecord(config, result, None, 1.5))
  back = TrialStore(tmp_path).get(config)
  assert back.config == config and back.seconds == 1.5 and back.error is None
  np.testing.assert_array_equal(back.result.train_loss[:-3], result.train_loss[:-3])
  assert np.isnan(back.result.train_loss[-3:]).all()  # non-finite is stored as NaN
  np.testing.assert_array_equal(back.result.eval_steps, config.eval_steps())
  # Another config (other seed) has another key: not found.
  assert TrialStore(tmp_path).get(config.replace(seed=1)) is None
  assert back.result.skipped_steps.size == 0 and "skipped_steps" not in result.to_dict()


def test_skipped_steps_round_trip_and_are_checked():
  config = TrialConfig(learning_rate=0.1, num_steps=20, eval_every=20)
  result = TrialResult(config, np.ones(20), [20], {"loss": [1.0]}, np.ones(20), skipped_steps=[3, 9])
  back = TrialResult.from_dict(json.loads(json.dumps(result.to_dict())))
  np.testing.assert_array_equal(back.skipped_steps, [3, 9])
  with pytest.raises(ValueError, match=r"skipped_steps must be .*steps in \[1, 20\]"):
    TrialResult(config, np.ones(20), [20], {"loss": [1.0]}, np.ones(20), skipped_steps=[0, 3])
  with pytest.raises(ValueError, match="skipped_steps must be .*strictly increasing"):
    TrialResult(config, np.ones(20), [20], {"loss": [1.0]}, np.ones(20), skipped_steps=[9, 3])


def test_corrupt_line_in_the_middle_is_skipped(tmp_path):
  store = TrialStore(tmp_path)
  c1, c2 = TrialConfig(learning_rate=0.1, num_steps=3), TrialConfig(learning_rate=0.2, num_steps=3)
  store.append(TrialRecord(c1, noisy_numpy_trial(c1)))
  with open(store.path, "a", encoding="utf-8") as f:
    f.write("not json\n")
  store.append(TrialRecord(c2, noisy_numpy_trial(c2)))
  reloaded = TrialStore(tmp_path)
  assert len(reloaded) == 2 and reloaded.ignored_lines == 1


# --- bad lines, bad extras, bad eval steps (issue 14) -----------------------


def test_non_record_lines_are_ignored_counted_and_reported(tmp_path):
  from optstab.diagnosis import make_diagnosis
  store = TrialStore(tmp_path)
  c1, c2 = TrialConfig(learning_rate=0.1, num_steps=3), TrialConfig(learning_rate=0.2, num_steps=3)
  store.append(TrialRecord(c1, noisy_numpy_trial(c1)))
  ok_without_result = {"key": c2.key(), "status": "ok", "config": c2.to_dict(), "result": None,
                       "error": None, "seconds": 1.0}
  with open(store.path, "a", encoding="utf-8") as f:
    for line in ("123", "null", "[1, 2]", '"text"', json.dumps(ok_without_result)):
      f.write(line + "\n")
  reloaded = TrialStore(tmp_path)  # no AttributeError: the folder can be resumed
  assert len(reloaded) == 1 and reloaded.ignored_lines == 5
  assert c2 not in reloaded  # so it runs again, instead of "the training function raised None"
  calls = []

  def trial(config):
    calls.append(config.learning_rate)
    return noisy_numpy_trial(config)

  sweep = learning_rate_sweep(trial, [0.1, 0.2], 3, out_dir=tmp_path, progress=False)
  assert calls == [0.2] and all(t.feasible for t in sweep.trials)
  assert sweep.ignored_store_lines == 5 and sweep.to_dict()["ignored_store_lines"] == 5
  report = make_diagnosis(sweep).to_markdown()
  assert "5 line(s) of trials.jsonl were not trial records" in report


def test_extra_is_validated_and_normalised_at_construction():
  config = TrialConfig(learning_rate=0.1, num_steps=3,
                       extra={"b": np.float32(0.5), "a": (1, np.int64(2)),
                              "n": {"z": np.array([1.0, 2.0]), "flag": np.bool_(True)}})
  assert config.extra == {"a": [1, 2], "b": 0.5, "n": {"flag": True, "z": [1.0, 2.0]}}
  assert type(config.extra["b"]) is float and type(config.extra["a"][1]) is int
  assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
  for extra, match in [({"dropout": float("nan")}, r"extra\['dropout'\] must be a finite number"),
                       ({"d": {"q": np.inf}}, r"extra\['d'\]\['q'\] must be a finite number"),
                       ({1: 2, "a": 3}, r"extra keys must be strings"),
                       ({"s": {1, 2}}, r"extra\['s'\] must be JSON-serializable"),
                       ([("a", 1)], r"extra must be a mapping")]:
    with pytest.raises(ValueError, match=match):
      TrialConfig(learning_rate=0.1, num_steps=3, extra=extra)


def test_an_extra_nan_no_longer_loses_a_finished_trial(tmp_path):
  # It used to run the trial and then fail the strict-JSON append, aborting the sweep.
  base = TrialConfig(learning_rate=0.1, num_steps=3)
  with pytest.raises(ValueError, match=r"extra\['percentile'\]"):
    base.replace(extra={"percentile": float("nan")})


@pytest.mark.parametrize("steps, match", [([10**6], r"steps in \[1, 200\]"), ([0, 200], r"\[1, 200\]"),
                                          ([100, 50, 200], "strictly increasing"),
                                          ([[1, 2]], "1-D"), ([1.5, 200], "integer")])
def test_eval_steps_must_lie_within_the_trial(steps, match):
  config = TrialConfig(learning_rate=0.1, num_steps=200, eval_every=100)
  n = len(np.ravel(steps))
  with pytest.raises(ValueError, match=f"eval_steps must be .*{match}"):
    TrialResult(config, np.ones(200), steps, {"loss": np.ones(n)}, np.ones(200))


def test_unwritable_out_dir_fails_before_the_first_trial(tmp_path):
  calls = []
  blocked = tmp_path / "out"
  (blocked / TRIALS_FILE).mkdir(parents=True)  # the store's file cannot be opened for appending
  with pytest.raises(OSError, match="not writable"):
    learning_rate_sweep(lambda c: calls.append(c), [0.1, 0.2], 3, out_dir=blocked, progress=False)
  assert calls == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only folders")
def test_read_only_out_dir_fails_before_the_first_trial(tmp_path):
  calls = []
  tmp_path.chmod(0o500)
  try:
    with pytest.raises(OSError, match="not writable"):
      learning_rate_sweep(lambda c: calls.append(c), [0.1, 0.2], 3, out_dir=tmp_path, progress=False)
  finally:
    tmp_path.chmod(0o700)
  assert calls == []


# --- a store that checks what it reuses ------------------------------------


def test_a_record_whose_result_is_another_configs_is_ignored(tmp_path):
  config = TrialConfig(learning_rate=0.1, num_steps=100, eval_every=10)
  short = config.replace(num_steps=30)
  line = TrialRecord(config, noisy_numpy_trial(config)).to_dict()
  line["result"] = noisy_numpy_trial(short).to_dict()  # a 30-step curve under a 100-step key
  with open(tmp_path / TRIALS_FILE, "w", encoding="utf-8") as f:
    f.write(json.dumps(line) + "\n")
  store = TrialStore(tmp_path)
  assert config not in store and short not in store and store.ignored_lines == 1
  calls = []

  def trial(c):
    calls.append(c.num_steps)
    return noisy_numpy_trial(c)

  sweep = learning_rate_sweep(trial, [0.1], base_config=config, out_dir=tmp_path, progress=False)
  assert calls == [100] and sweep.ignored_store_lines == 1
  assert sweep.trials[0].result.train_loss.shape == (100,)


@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000,
                                  '{"config": ' + '{"a": ' * 5000 + "1" + "}" * 5001,
                                  '{"config": {"learning_rate": 1e999, "num_steps": 1}, "error": "x"}',
                                  '{"config": {"learning_rate": 0.1, "num_steps": 3}, "error": "x", '
                                  '"seconds": ' + "9" * 400 + "}",
                                  '{"config": {"learning_rate": 0.1, "num_steps": 3}, '
                                  '"result": {"eval_metrics": [1]}}'])
def test_no_line_content_makes_loading_raise(tmp_path, line):
  c = TrialConfig(learning_rate=0.2, num_steps=3)
  with open(tmp_path / TRIALS_FILE, "w", encoding="utf-8") as f:
    f.write(line + "\n")
    f.write(json.dumps(TrialRecord(c, noisy_numpy_trial(c)).to_dict()) + "\n")
  store = TrialStore(tmp_path)
  assert store.ignored_lines == 1 and c in store and len(store) == 1


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_symbolic_links_are_refused_with_what_they_are(tmp_path):
  elsewhere = tmp_path / "elsewhere.jsonl"
  elsewhere.write_text("someone else's file, no newline at the end")
  out = tmp_path / "out"
  out.mkdir()
  os.symlink(elsewhere, out / TRIALS_FILE)
  with pytest.raises(ValueError, match=f"holds {TRIALS_FILE} as a symbolic link to "
                                       f"'{elsewhere}'"):
    TrialStore(out)
  assert elsewhere.read_text() == "someone else's file, no newline at the end"  # untouched
  real = tmp_path / "real"
  real.mkdir()
  os.symlink(real, tmp_path / "link")
  with pytest.raises(ValueError, match=r"out_dir '.*link' is a symbolic link to '.*real'; give"):
    TrialStore(tmp_path / "link")
  os.symlink(tmp_path / "loop", tmp_path / "loop")
  with pytest.raises(ValueError, match="is a symbolic link to .* that loops back on itself"):
    learning_rate_sweep(numpy_trial, [0.1], 3, out_dir=tmp_path / "loop", progress=False)
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    TrialStore(tmp_path / "file")


@pytest.mark.skipif(os.name != "posix", reason="fcntl locks")
def test_a_second_process_on_one_out_dir_fails_at_once_naming_the_first(tmp_path):
  from optstab.diagnosis.store import StoreInUse
  script = ("import sys, time\nfrom optstab.diagnosis import TrialStore\n"
            "store = TrialStore(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(600)\n")
  holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(StoreInUse, match=rf"in use by another process \(PID {holder.pid}\)"):
      learning_rate_sweep(numpy_trial, [0.1], 3, out_dir=tmp_path, progress=False)
    # Stores of one process share the lock; asked to wait, a store waits for the other process.
    opened = []
    waiter = threading.Thread(target=lambda: opened.append(TrialStore(tmp_path, wait=True)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not opened
  finally:
    holder.kill()
    holder.wait()
  waiter.join(60)
  assert len(opened) == 1
  again = TrialStore(tmp_path)  # this process holds it now: shared
  opened[0].close()
  again.close()
  assert open(tmp_path / "trials.lock", encoding="ascii").read().strip() == str(os.getpid())
