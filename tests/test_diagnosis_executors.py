"""Trials on executors: process pools, Dask, submitit; crashes, SIGKILL, one compile per sweep.

Every parallel run is compared with the sequential one: the same records, in
the configurations' order, whatever order the trials finished in.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

import optstab
from optstab.diagnosis import (
    Checks,
    SINGLE_THREADED_ENV,
    WORKER_CRASHED,
    InProcessExecutor,
    ProcessPool,
    SubmititExecutor,
    TrialConfig,
    diagnose,
    learning_rate_sweep,
    plan_workers,
    run_trials,
)
from optstab.diagnosis.store import TRIALS_FILE
from _compile_counter import COMPILES
from _executor_trials import GRID, UnpicklableInWorker, jax_option, mlp_trial, numpy_trial
from test_diagnosis_store import _lines, _summary

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The sequential, in-process sweep every parallel run must equal."""
  return learning_rate_sweep(numpy_trial, GRID, 40, out_dir=tmp_path_factory.mktemp("seq"),
                             progress=False)


def test_process_pool_sweep_equals_sequential(tmp_path, reference):
  cache = str(tmp_path / "cache")
  env = {**SINGLE_THREADED_ENV, "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  with ProcessPool(2, env=env) as pool:
    assert pool.submit(os.getenv, "NPROC").result() == "1"
    assert "--xla_cpu_multi_thread_eigen=false" in pool.submit(os.getenv, "XLA_FLAGS").result()
    # JAX options apply though the worker imported JAX before its initializer ran.
    assert pool.submit(jax_option, "jax_compilation_cache_dir").result() == cache
    assert pool.submit(jax_option, "jax_persistent_cache_min_compile_time_secs").result() == 0.0
    parallel = learning_rate_sweep(numpy_trial, GRID, 40, out_dir=tmp_path, progress=False,
                                   executor=pool)
  assert _summary(parallel) == _summary(reference)
  assert parallel.best_learning_rate == reference.best_learning_rate
  assert "RuntimeError: simulated crash" in parallel.trials[GRID.index(0.7)].reason
  # The coordinator wrote every trial once; a rerun reads them all back.
  assert _lines(tmp_path / TRIALS_FILE) == len(GRID)
  calls = []
  again = learning_rate_sweep(calls.append, GRID, 40, out_dir=tmp_path, progress=False)
  assert calls == [] and _summary(again) == _summary(reference)


def test_jax_trials_on_a_plain_process_pool_equal_sequential(tmp_path):
  configs = [TrialConfig(learning_rate=lr, num_steps=30, eval_every=10) for lr in (0.3, 0.01, 0.1)]
  sequential = run_trials(mlp_trial, configs, progress=False)
  context = multiprocessing.get_context("spawn")
  with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
    parallel = run_trials(mlp_trial, configs, out_dir=tmp_path, progress=False, executor=pool)
  assert [r.config for r in parallel] == configs  # the configurations' order
  for a, b in zip(parallel, sequential):
    assert a.error is None and b.error is None
    np.testing.assert_array_equal(a.result.train_loss, b.result.train_loss)
    np.testing.assert_array_equal(a.result.grad_norms, b.result.grad_norms)


def test_dask_local_cluster_equals_sequential(tmp_path, reference):
  distributed = pytest.importorskip("distributed")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                dashboard_address=None) as cluster, \
      distributed.Client(cluster) as client:
    parallel = learning_rate_sweep(numpy_trial, GRID, 40, out_dir=tmp_path, progress=False,
                                   executor=client.get_executor())
  assert _summary(parallel) == _summary(reference)
  assert _lines(tmp_path / TRIALS_FILE) == len(GRID)


def test_submitit_adapter_equals_sequential(tmp_path, reference, monkeypatch):
  submitit = pytest.importorskip("submitit")
  grid = GRID[:2]
  # LocalExecutor runs each job in its own process, as SLURM would, with this environment.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
  local = submitit.LocalExecutor(folder=str(tmp_path / "logs"))
  local.update_parameters(timeout_min=5)
  with SubmititExecutor(local, poll_seconds=0.05) as executor:
    parallel = learning_rate_sweep(numpy_trial, grid, 40, out_dir=tmp_path / "out",
                                   progress=False, executor=executor)
  assert _summary(parallel) == _summary(reference)[:2]


def test_a_trial_that_kills_its_worker_is_recorded_and_the_sweep_goes_on(tmp_path, reference):
  crash_at = 0.4
  with ProcessPool(2, env={"OPTSTAB_TEST_CRASH_LRS": str(crash_at)}) as pool:
    parallel = learning_rate_sweep(numpy_trial, GRID, 40, out_dir=tmp_path, progress=False,
                                   executor=pool)
    assert pool.restarts >= 1
  crashed = parallel.trials[GRID.index(crash_at)]
  assert not crashed.feasible and WORKER_CRASHED in crashed.reason
  assert "BrokenProcessPool" in crashed.reason
  others = [s for s in _summary(parallel) if s[0] != crash_at]
  assert others == [s for s in _summary(reference) if s[0] != crash_at]
  # Recorded: a rerun does not run the crashing trial again.
  stored = json.loads(open(tmp_path / TRIALS_FILE, encoding="utf-8").read().splitlines()[-1])
  assert _lines(tmp_path / TRIALS_FILE) == len(GRID) and stored["key"]


def test_sigkill_with_trials_in_flight_loses_no_finished_trial(tmp_path, reference):
  """Two workers hang on two trials; the coordinator is killed; the rerun runs only the rest."""
  killed_dir, pid_dir = tmp_path / "killed", tmp_path / "pids"
  pid_dir.mkdir()
  script = tmp_path / "coordinator.py"
  script.write_text(textwrap.dedent(f'''
      from _executor_trials import GRID, numpy_trial
      from optstab.diagnosis import ProcessPool, learning_rate_sweep

      if __name__ == "__main__":
        with ProcessPool(2) as pool:
          learning_rate_sweep(numpy_trial, GRID, 40, out_dir={str(killed_dir)!r}, progress=False,
                              executor=pool)
  '''))
  hang = GRID[6:8]  # 1.5 and 1.9: both workers stuck, 6 trials finished before them
  env = dict(os.environ, JAX_PLATFORMS="cpu", OPTSTAB_TEST_HANG_LRS=",".join(map(str, hang)),
             OPTSTAB_TEST_PID_DIR=str(pid_dir),
             PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  store_file = killed_dir / TRIALS_FILE
  deadline = time.monotonic() + 120
  while ((_lines(store_file) < 6 or len(os.listdir(pid_dir)) < 2) and proc.poll() is None
         and time.monotonic() < deadline):
    time.sleep(0.01)
  time.sleep(0.3)  # nothing else can finish: both workers hang
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  assert _lines(store_file) == 6
  # The orphaned workers notice and exit instead of computing for nobody.
  workers = {int(p) for p in os.listdir(pid_dir)}
  assert len(workers) == 2
  deadline = time.monotonic() + 30
  while any(_alive(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not any(_alive(p) for p in workers)

  calls = []

  def counting(config):
    calls.append(config.learning_rate)
    return numpy_trial(config)

  resumed = learning_rate_sweep(counting, GRID, 40, out_dir=killed_dir, progress=False)
  assert sorted(calls) == sorted(GRID[6:])  # only the trials that had not finished
  assert _summary(resumed) == _summary(reference)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", encoding="utf-8") as f:
    return f.read().split()[2] != "Z"  # a zombie has exited
  return True


def test_a_closure_is_rejected_before_any_trial(tmp_path):
  offset = 0.0

  def closure(config):
    return numpy_trial(config.replace(learning_rate=config.learning_rate + offset))

  with ProcessPool(1) as pool, pytest.raises(TypeError, match="train_fn must pickle"):
    learning_rate_sweep(closure, GRID, 40, out_dir=tmp_path, progress=False, executor=pool)
  assert _lines(tmp_path / TRIALS_FILE) == 0


def test_a_function_workers_cannot_load_is_rejected_before_any_trial(tmp_path):
  with ProcessPool(1) as pool, pytest.raises(TypeError, match="not in a worker process"):
    learning_rate_sweep(UnpicklableInWorker(os.getpid()), GRID[:2], 40, out_dir=tmp_path,
                        progress=False, executor=pool)
  assert _lines(tmp_path / TRIALS_FILE) == 0  # not recorded as crashes: a rerun runs them


def test_diagnose_on_a_thread_pool_equals_sequential(tmp_path):
  kwargs = dict(num_steps=40, checks=Checks(short_steps=20), progress=False, log=None)
  grid = GRID[:6]
  sequential = diagnose(numpy_trial, grid, out_dir=tmp_path / "seq", **kwargs)
  with cf.ThreadPoolExecutor(3) as pool:
    parallel = diagnose(numpy_trial, grid, out_dir=tmp_path / "par", executor=pool, **kwargs)
  assert parallel.verdict == sequential.verdict
  assert [f.text for f in parallel.findings] == [f.text for f in sequential.findings]


class RecordingPool(cf.ThreadPoolExecutor):
  """A thread pool that records when each trial was submitted and when it finished."""

  def __init__(self, workers):
    super().__init__(workers)
    self.events = []
    self._lock = threading.Lock()

  def submit(self, fn, /, *args, **kwargs):
    config = next(a for a in args if isinstance(a, TrialConfig))
    with self._lock:
      self.events.append(("submit", config.learning_rate))
    future = super().submit(fn, *args, **kwargs)
    future.add_done_callback(lambda _: self._record(("done", config.learning_rate)))
    return future

  def _record(self, event):
    with self._lock:
      self.events.append(event)


def test_diagnose_sends_the_short_and_long_checks_in_one_batch(tmp_path):
  with RecordingPool(3) as pool:
    diagnosis = diagnose(numpy_trial, GRID[:6], num_steps=40, checks=Checks(short_steps=20),
                         progress=False, fixes=None, out_dir=tmp_path, executor=pool, log=None)
  best = diagnosis.sweep.best_learning_rate
  checks = [f * best for f in (2.0, 5.0, 10.0)]
  order = [(kind, i) for i, (kind, lr) in enumerate(pool.events) if np.isclose(checks, lr).any()]
  submitted = [i for kind, i in order if kind == "submit"]
  finished = [i for kind, i in order if kind == "done"]
  assert len(submitted) == 3 and max(submitted) < min(finished)


@pytest.mark.parametrize("platform, devices, cores, workers, expected", [
    ("cpu", 1, 2, None, {"max_workers": 2, "env": SINGLE_THREADED_ENV, "worker_envs": None}),
    ("cpu", 1, 1, None, None),
    ("cpu", 1, 16, 1, None),
    ("cpu", 1, 16, 3, {"max_workers": 3, "env": SINGLE_THREADED_ENV, "worker_envs": None}),
    ("gpu", 1, 16, None, None),
    ("tpu", 8, 96, None, None),
    ("gpu", 8, 96, None, {"max_workers": 8, "env": {},
                          "worker_envs": [{"CUDA_VISIBLE_DEVICES": str(d)} for d in range(8)]}),
    ("gpu", 4, 96, 2, {"max_workers": 2, "env": {},
                       "worker_envs": [{"CUDA_VISIBLE_DEVICES": "0,2"},
                                       {"CUDA_VISIBLE_DEVICES": "1,3"}]}),
])
def test_plan_workers_fits_the_machine(platform, devices, cores, workers, expected):
  assert plan_workers(platform, devices, cores, workers) == expected


def test_one_worker_means_this_process(tmp_path, reference):
  executor = optstab.default_executor(1)
  assert isinstance(executor, InProcessExecutor)
  offset = 0.0

  def closure(config):  # in this process nothing is pickled: closures are fine
    return numpy_trial(config.replace(learning_rate=config.learning_rate + offset))

  with executor:
    sweep = learning_rate_sweep(closure, GRID, 40, out_dir=tmp_path, progress=False,
                                executor=executor)
  assert _summary(sweep) == _summary(reference)
  with pytest.raises(ValueError, match="workers"):
    optstab.default_executor(0)


def test_workers_are_pinned_by_their_own_environment(tmp_path):
  envs = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
  with ProcessPool(2, worker_envs=envs) as pool:
    futures = [pool.submit(_getenv_when_both_run, "CUDA_VISIBLE_DEVICES", str(tmp_path))
               for _ in range(2)]
    seen = {f.result() for f in futures}
  assert seen == {"0", "1"}
  with pytest.raises(ValueError, match="worker_envs must hold one mapping per worker"):
    ProcessPool(3, worker_envs=envs)
  with pytest.raises(ValueError, match="max_workers"):
    ProcessPool(0)


def _getenv_when_both_run(name, folder):
  """``os.environ[name]`` once two workers run this at the same time (so both get one)."""
  open(os.path.join(folder, str(os.getpid())), "w", encoding="utf-8").close()
  deadline = time.monotonic() + 120
  while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
  return os.environ.get(name)




def test_a_four_rate_sweep_compiles_the_model_once():
  rates = (0.01, 0.03, 0.1, 0.3)
  jax.clear_caches()
  with COMPILES.counting() as first:
    learning_rate_sweep(mlp_trial, rates[:1], 50, progress=False)
  assert any("mlp_run" in n for n in first), first  # the counter sees compilations
  with COMPILES.counting() as rest:
    sweep = learning_rate_sweep(mlp_trial, rates, 50, progress=False)
  assert rest == [], rest  # the other three rates (and a rerun of the first) compile nothing
  assert all(t.feasible for t in sweep.trials[:2])


def test_the_guide_recipe_compiles_once_per_sweep():
  # The README's diagnosis example moved to the guide page "Diagnosing your own model".
  with open(os.path.join(TESTS_DIR, os.pardir, "docs", "guide", "diagnosis.md"), encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("<!-- diagnosis -->"):text.index("<!-- end diagnosis -->")]
  code = section.split("```python\n", 1)[1].split("# 1. The learning-rate sweep", 1)[0]
  namespace: dict = {"__name__": "guide_recipe"}
  exec(compile(code, "diagnosis.md", "exec"), namespace)  # pylint: disable=exec-used
  with COMPILES.counting() as compiled:
    learning_rate_sweep(namespace["trial_fn"], (0.001, 0.01, 0.03, 0.1), 50, progress=False)
  assert compiled.count("jit(train_step)") == 1, compiled  # make_trial_fn's step, once
