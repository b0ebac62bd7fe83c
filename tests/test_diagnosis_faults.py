"""Sweeps that survive anything a trial does, on every executor.

Each trial of ``misbehaving_trial`` does one thing (``config.extra["do"]``):
raise, ``sys.exit()``, raise ``KeyboardInterrupt``, ``os._exit``, segfault,
hang, or return a result changed after construction. Whatever it does is
recorded against that trial alone, the trials around it finish, and the
user's Ctrl-C on the coordinator still stops the sweep with every finished
trial kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from optstab.diagnosis import (
    WORKER_CRASHED,
    ProcessPool,
    SubmititExecutor,
    TrialRecord,
    TrialResult,
    learning_rate_sweep,
    run_trials,
)
from optstab.diagnosis.executors import TRIAL_TIMEOUT, execute_trials
from optstab.diagnosis.store import TRIALS_FILE
from _executor_trials import misbehaving_configs, misbehaving_trial, numpy_trial
from test_diagnosis_executors import _alive
from test_diagnosis_store import _lines

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

#: The start of the error each behaviour is recorded with, on every executor.
EXPECTED = {
    "ok": None,
    "raise": "RuntimeError: simulated failure",
    "exit": "SystemExit: 3",
    "interrupt": "KeyboardInterrupt",
    "shrunk_result": "ValueError: train_loss must have shape (20,); got (3,)",
    "int_metric_key": "ValueError: eval_metrics keys must be strings",
    "other_config": "ValueError",
    "os_exit": WORKER_CRASHED,
    "segfault": WORKER_CRASHED,
    "hang": TRIAL_TIMEOUT,
}

#: Seconds a hanging trial is given; the others take well under 1 s.
LIMIT = 3.0


def _check(records, behaviours, tmp_path=None):
  assert [r.config.extra["do"] for r in records] == list(behaviours)
  for record, do in zip(records, behaviours):
    expected = EXPECTED[do]
    if expected is None:
      assert record.error is None and record.result is not None, (do, record.error)
      plain = numpy_trial(record.config.replace(extra={}))
      np.testing.assert_array_equal(record.result.train_loss, plain.train_loss)
    else:
      assert record.result is None and record.error.startswith(expected), (do, record.error)
    if do == "hang":
      assert record.seconds >= LIMIT and f"time limit of {LIMIT:g} s" in record.error
  if tmp_path is not None:  # each recorded once; a rerun runs nothing
    assert _lines(tmp_path / TRIALS_FILE) == len(behaviours)
    calls = []
    again = run_trials(calls.append, [r.config for r in records], out_dir=tmp_path,
                       progress=False)
    assert calls == [] and [r.error for r in again] == [r.error for r in records]


def test_in_process_every_way_a_trial_ends_is_recorded_against_it(tmp_path):
  behaviours = ("ok", "raise", "exit", "interrupt", "shrunk_result", "int_metric_key",
                "other_config", "hang", "ok")
  assert threading.current_thread() is threading.main_thread()  # the timer needs it
  records = run_trials(misbehaving_trial, misbehaving_configs(*behaviours), out_dir=tmp_path,
                       progress=False, trial_timeout=LIMIT)
  _check(records, behaviours, tmp_path)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_process_pool_every_way_a_trial_ends_is_recorded_and_healthy_trials_retried(tmp_path):
  behaviours = ("ok", "exit", "os_exit", "interrupt", "hang", "shrunk_result", "segfault", "ok")
  with ProcessPool(2) as pool:
    records = run_trials(misbehaving_trial, misbehaving_configs(*behaviours), out_dir=tmp_path,
                         progress=False, executor=pool, trial_timeout=LIMIT)
    assert pool.restarts >= 3  # two crashes and a stopped hang
    # The pool still works after all that.
    assert pool.submit(os.getpid).result() > 0
  _check(records, behaviours, tmp_path)


def test_dask_every_way_a_trial_ends_is_recorded_and_healthy_trials_retried(tmp_path):
  distributed = pytest.importorskip("distributed")
  dask = pytest.importorskip("dask")
  behaviours = ("ok", "exit", "hang", "shrunk_result", "segfault", "ok")
  # One worker of two threads, no retries by Dask: the trial running beside the
  # segfault dies with it (KilledWorker) and must run again.
  with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
      distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                               dashboard_address=None) as cluster, \
      distributed.Client(cluster) as client:
    records = run_trials(misbehaving_trial, misbehaving_configs(*behaviours), out_dir=tmp_path,
                         progress=False, executor=client.get_executor(), trial_timeout=LIMIT)
    # The hung trial's worker was replaced: no worker still runs its thread.
    deadline = time.monotonic() + 60
    while _hung_threads(client) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert not _hung_threads(client)
  _check(records, behaviours, tmp_path)
  assert "KilledWorker" in records[behaviours.index("segfault")].error


def _trial_threads() -> int:
  return sum(t.name.startswith("trial ") for t in threading.enumerate())


def _hung_threads(client) -> int:
  try:
    return sum(client.run(_trial_threads).values())
  except Exception:  # pylint: disable=broad-except
    return 1  # a worker restarting


def test_submitit_every_way_a_trial_ends_is_recorded(tmp_path, monkeypatch):
  submitit = pytest.importorskip("submitit")
  behaviours = ("exit", "os_exit", "hang")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
  local = submitit.LocalExecutor(folder=str(tmp_path / "logs"))
  local.update_parameters(timeout_min=5)
  with SubmititExecutor(local, poll_seconds=0.05) as executor:
    records = run_trials(misbehaving_trial, misbehaving_configs(*behaviours),
                         out_dir=tmp_path / "out", progress=False, executor=executor,
                         trial_timeout=LIMIT)
  _check(records, behaviours, tmp_path / "out")


def test_trial_timeout_is_checked_before_any_trial(tmp_path):
  calls = []
  for bad in (0, -1.0, float("nan"), float("inf"), "10"):
    with pytest.raises(ValueError, match="trial_timeout must be"):
      learning_rate_sweep(calls.append, [0.1, 0.2], 5, out_dir=tmp_path, progress=False,
                          trial_timeout=bad)
    with pytest.raises(ValueError, match="trial_timeout must be"):
      execute_trials(calls.append, [], lambda i, r: None, trial_timeout=bad)
  assert calls == []


_COORDINATOR = '''
import sys
from _executor_trials import misbehaving_configs, misbehaving_trial
from optstab.diagnosis import ProcessPool, run_trials

if __name__ == "__main__":
  configs = misbehaving_configs("ok", "ok", "hang", "hang")
  if sys.argv[2] == "pool":
    with ProcessPool(2) as pool:
      run_trials(misbehaving_trial, configs, out_dir=sys.argv[1], progress=False, executor=pool)
  else:
    run_trials(misbehaving_trial, configs, out_dir=sys.argv[1], progress=False)
'''


@pytest.mark.parametrize("where", ["in_process", "pool"])
def test_the_users_ctrl_c_stops_the_sweep_and_keeps_every_finished_trial(tmp_path, where):
  out, pid_dir = tmp_path / "out", tmp_path / "pids"
  pid_dir.mkdir()
  script = tmp_path / "coordinator.py"
  script.write_text(textwrap.dedent(_COORDINATOR))
  env = dict(os.environ, JAX_PLATFORMS="cpu", OPTSTAB_TEST_PID_DIR=str(pid_dir),
             PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
  # Its own process group, as a terminal's Ctrl-C signals the whole group.
  proc = subprocess.Popen([sys.executable, str(script), str(out), where], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
  hanging = 1 if where == "in_process" else 2
  deadline = time.monotonic() + 120
  while ((_lines(out / TRIALS_FILE) < 2 or len(_hangs(pid_dir)) < hanging)
         and proc.poll() is None and time.monotonic() < deadline):
    time.sleep(0.02)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  os.killpg(proc.pid, signal.SIGINT)
  try:
    _, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    raise
  assert proc.returncode != 0 and b"KeyboardInterrupt" in err, err.decode()[-2000:]
  # The two finished trials are kept, the interrupted ones were not recorded as errors.
  assert _lines(out / TRIALS_FILE) == 2
  workers = _hangs(pid_dir)
  deadline = time.monotonic() + 30
  while any(_alive(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not any(_alive(p) for p in workers)  # no worker left computing
  calls = []

  def counting(config):
    calls.append(config.extra["do"])
    plain = numpy_trial(config.replace(extra={}))
    return TrialResult(config, plain.train_loss, plain.eval_steps, plain.eval_metrics,
                       plain.grad_norms)

  records = run_trials(counting, misbehaving_configs("ok", "ok", "hang", "hang"), out_dir=out,
                       progress=False)
  assert calls == ["hang", "hang"] and all(isinstance(r, TrialRecord) for r in records)


def _hangs(pid_dir) -> set[int]:
  return {int(name.split("-")[1]) for name in os.listdir(pid_dir) if name.startswith("hang-")}


def test_process_pool_kills_a_worker_whose_trial_holds_the_interpreter_lock(tmp_path, monkeypatch):
  """Its worker's own watch cannot run: the coordinator gives up on it after the grace."""
  from optstab import executors
  monkeypatch.setattr(executors, "TRIAL_TIMEOUT_GRACE", 15.0)  # covers a fresh worker's start
  behaviours = ("gil_hang", "ok")
  with ProcessPool(1) as pool:  # warmed up by the pickling check: the clock starts at once
    records = run_trials(misbehaving_trial, misbehaving_configs(*behaviours), out_dir=tmp_path,
                         progress=False, executor=pool, trial_timeout=1.0)
  (hung, ok) = records
  assert hung.error.startswith(TRIAL_TIMEOUT) and "interpreter lock" in hung.error
  assert hung.seconds >= 16.0
  assert ok.error is None


@pytest.mark.parametrize("demo", ["wrn", "transformer"])
def test_the_demos_pass_trial_timeout_to_their_experiment(demo, tmp_path, monkeypatch):
  import importlib
  cli = importlib.import_module(f"optstab.{demo}.cli")
  experiment = importlib.import_module(f"optstab.{demo}.experiment")
  seen = {}

  def fake_run_experiment(preset, out, **kwargs):
    seen.update(kwargs)
    return type("Result", (), {"summary": {"wall_seconds": 0.0}, "files": {"report": out}})()

  monkeypatch.setattr(experiment, "run_experiment", fake_run_experiment)
  monkeypatch.setattr(experiment, "verdicts", lambda summary: [])
  argv = ["--preset", "tiny", "--out", str(tmp_path), "--workers", "1", "--compile-cache", "none",
          "--no-progress"]
  assert cli.main(argv + ["--trial-timeout", "2.5"]) == 0 and seen["trial_timeout"] == 2.5
  assert cli.main(argv) == 0 and seen["trial_timeout"] is None
  with pytest.raises(SystemExit):  # a usage error, before anything runs
    cli.main(argv + ["--trial-timeout", "0"])
