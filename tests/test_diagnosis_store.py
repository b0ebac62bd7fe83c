"""Nothing lost: durable trial records, resume, half-written lines, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from optstab.diagnosis import TrialConfig, TrialRecord, TrialStore, learning_rate_sweep
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


def test_corrupt_line_in_the_middle_is_skipped(tmp_path):
  store = TrialStore(tmp_path)
  c1, c2 = TrialConfig(learning_rate=0.1, num_steps=3), TrialConfig(learning_rate=0.2, num_steps=3)
  store.append(TrialRecord(c1, noisy_numpy_trial(c1)))
  with open(store.path, "a", encoding="utf-8") as f:
    f.write("not json\n")
  store.append(TrialRecord(c2, noisy_numpy_trial(c2)))
  reloaded = TrialStore(tmp_path)
  assert len(reloaded) == 2 and reloaded.ignored_lines == 1
