"""Running a sweep's trials in parallel, on any ``concurrent.futures.Executor``.

The rule. Every diagnosis and figure of the FAQ is a sweep of independent
trials (S2: a learning-rate grid; S4: a warmup grid; the confirmation runs).
Independent trials can run side by side; the answer must not depend on it.

Our position.

* optstab depends on the ``concurrent.futures`` protocol (``submit`` returning
  a ``Future``), not on an engine. Every function that runs trials takes
  ``executor=``: ``None`` (the default) runs them one after another in this
  process, exactly as before; anything else gets ``run_trial(train_fn,
  config)`` submitted: a ``ProcessPool`` (below), ``ProcessPoolExecutor``,
  Dask's ``Client.get_executor()``, ``mpi4py.futures.MPIPoolExecutor``, a
  few lines around Ray's ``ObjectRef.future()`` (the README's recipe), or
  ``SubmititExecutor`` for SLURM.
* Workers only compute and return a ``TrialRecord``; the coordinating process
  alone appends to ``trials.jsonl`` (write, flush, fsync, as ``TrialStore``
  promises), in the order trials finish, and returns the records in the order
  of the configurations. So a coordinator killed with trials in flight loses
  none that finished, and the rerun runs only the missing ones.
* ``default_executor()`` fits the machine: on CPU, one single-threaded XLA
  process per core (``spawn``, never ``fork``: JAX is multithreaded); on one
  GPU or a TPU host, ``InProcessExecutor`` (one process owns the accelerator);
  on a host with several GPUs, one process per GPU, pinned to it with
  ``CUDA_VISIBLE_DEVICES``. One multi-threaded XLA:CPU process keeps about 1.2
  of 2 cores busy on small models; single-threaded processes side by side keep
  every core busy (``benchmarks/sweep_parallel.py`` measures it).
* A trial that kills its worker (``os._exit``, a segfault, the OOM killer)
  breaks a process pool, and every trial in flight fails with it (on Dask, a
  ``KilledWorker``). The trials that were in flight are then run again one at a
  time: the one that kills its worker alone is recorded with the reason, the
  others finish, and the sweep goes on. Anything else a trial does (raise,
  ``sys.exit()``, its own ``KeyboardInterrupt``, an invalid result) is
  recorded against it by ``run_trial``, wherever it runs.
* ``trial_timeout``: workers run each trial in a thread they give up on at
  the limit (``run_trial_with_limit``); the coordinator then kills a
  ``ProcessPool`` worker, and a Dask worker with a nanny restarts itself.

Where it breaks.

* ``train_fn`` must pickle: a module-level function, or an instance of a
  module-level class (e.g. a dataclass holding the setup and a description of
  the data, loaded in the worker). Closures and lambdas do not pickle with the
  standard library; a process pool rejects them before any trial starts.
  Dask and Ray pickle with cloudpickle and accept closures, but then ship
  whatever the closure holds (a whole data set) with every trial.
* Each worker compiles its own steps: the first trial of each model in each
  worker pays the compilation (a persistent compilation cache,
  ``jax_compilation_cache_dir``, shares it between workers and runs).
* Results are identical to a sequential run when the trial function is
  deterministic given its configuration and the process's settings. XLA:CPU
  sums some convolutions and matmuls in an order that depends on its thread
  count, so a single-threaded worker can differ from a multi-threaded
  in-process run in the float32 rounding, which an unstable trial amplifies
  (measured on the WideResNet demo's tiny preset: final test losses 6.46 vs
  6.42 at lr 1). With the same thread setting, results are identical whatever
  the number of workers and the order trials finish in (tested).
* A task that a worker cannot even unpickle kills a process-pool worker; so
  ``train_fn`` is unpickled once in a worker before any trial, and rejected if
  that fails (a function defined in a notebook cannot reach spawned workers).

This module sits below the runner and the diagnosis (it needs only
:mod:`optstab.trial`); ``optstab.diagnosis.executors`` re-exports its names.
"""

from __future__ import annotations

import collections
import contextlib
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

from optstab import _validation
from optstab.trial import TrialConfig, TrialFn, TrialRecord, TrialResult

__all__ = [
    "InProcessExecutor",
    "ProcessPool",
    "SubmititExecutor",
    "default_executor",
    "in_process",
    "plan_workers",
    "run_trial",
    "run_trial_with_limit",
    "execute_trials",
    "SINGLE_THREADED_ENV",
    "WORKER_CRASHED",
    "TRIAL_TIMEOUT",
    "CRASH_ERRORS",
    "TrialTimeout",
    "check_trial_timeout",
]

#: Environment of a single-threaded XLA:CPU worker. ``NPROC`` is what XLA's
#: CPU client sizes its thread pool by (jax 0.5-0.10); the flag is the older
#: switch; the rest keep NumPy's BLAS to one thread.
SINGLE_THREADED_ENV: dict[str, str] = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "NPROC": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

#: Start of the error recorded for a trial whose worker process died.
WORKER_CRASHED = "WorkerCrashed"

#: Start of the error recorded for a trial stopped at its time limit (``trial_timeout``).
TRIAL_TIMEOUT = "TrialTimeout"

#: Seconds past ``trial_timeout`` after which a ``ProcessPool`` worker that has not
#: answered at all (its trial holds the interpreter lock, so the worker's own
#: watch cannot run) is killed with its pool. Counted from submission, so it
#: also covers a fresh worker's start-up.
TRIAL_TIMEOUT_GRACE = 60.0

#: Seconds between an orphaned worker's checks that its coordinator is alive.
_ORPHAN_CHECK_SECONDS = 0.5


# ----------------------------------------------------------------------------
# One trial: the unit of work every executor runs.


class TrialTimeout(BaseException):
  """Raised in a trial that runs past its time limit, in this process (``trial_timeout``).

  A ``BaseException``, like ``KeyboardInterrupt``, so that a trial's own
  ``except Exception`` does not swallow it.
  """


class _UserInterrupt(KeyboardInterrupt):
  """The user's Ctrl-C (SIGINT) during an in-process trial: it stops the sweep."""


def check_trial_timeout(trial_timeout: Any) -> Optional[float]:
  """``None``, or a finite number of seconds > 0 (``ValueError`` otherwise)."""
  if trial_timeout is None:
    return None
  return float(_validation.check_positive("trial_timeout", trial_timeout))


@contextlib.contextmanager
def _user_interrupts() -> Iterator[bool]:
  """Tells the user's Ctrl-C apart from a ``KeyboardInterrupt`` the trial raises itself.

  Yields whether a ``KeyboardInterrupt`` that is not ``_UserInterrupt`` is the
  trial's own: true off the main thread (SIGINT only reaches the main thread)
  and where SIGINT is ours or ignored (a process-pool worker); false where some
  other handler is installed, which may raise it for the user.
  """
  if threading.current_thread() is not threading.main_thread():
    yield True
    return
  previous = signal.getsignal(signal.SIGINT)
  if previous is signal.SIG_IGN:
    yield True
    return
  if previous is not signal.default_int_handler:
    yield False
    return

  def interrupted(signum, frame):
    del signum, frame
    raise _UserInterrupt()

  signal.signal(signal.SIGINT, interrupted)
  try:
    yield True
  finally:
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _alarm(seconds: Optional[float]) -> Iterator[None]:
  """Raises ``TrialTimeout`` in this (main) thread after ``seconds``, where a timer is free.

  Only the main thread receives signals, and a timer the caller already set
  is left alone: then nothing is stopped.
  """
  if (seconds is None or not hasattr(signal, "setitimer")
      or threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None)
      or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
    yield
    return

  def expired(signum, frame):
    del signum, frame
    raise TrialTimeout(f"the trial ran past its time limit of {seconds:g} s and was stopped")

  signal.signal(signal.SIGALRM, expired)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _error_record(config: TrialConfig, error: BaseException, seconds: float) -> TrialRecord:
  message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
  return TrialRecord(config, None, message, seconds).round_tripped()


def run_trial(train_fn: TrialFn, config: TrialConfig,
              trial_timeout: Optional[float] = None) -> TrialRecord:
  """Runs one trial and returns its record, in the form a reload from disk gives.

  Every way the trial itself can end gives a record: a result, or the error
  for anything it raises (``Exception``, and ``BaseException`` such as
  ``SystemExit`` from ``sys.exit()`` or a ``KeyboardInterrupt`` of its own),
  or for a result that fails its checks (not a ``TrialResult``, another
  configuration's, or changed after construction so that it is no longer
  valid or cannot be stored). Only the user's Ctrl-C on this process
  propagates: it stops the sweep.

  Args:
    train_fn: the user's training function (``TrialFn``).
    config: the trial.
    trial_timeout: seconds; in the main thread a timer raises ``TrialTimeout``
      in the trial at the limit. That stops Python code (a loop, a wait on a
      lock or a queue, between two jitted steps) but not one call that never
      returns to Python (a stuck collective, a blocked C extension), and not
      a trial that catches ``BaseException`` itself. Off the main thread it
      stops nothing (workers use ``run_trial_with_limit``).

  Returns:
    A round-tripped ``TrialRecord`` (``TrialRecord.round_tripped``).
  """
  start = time.perf_counter()
  with _user_interrupts() as interrupts_are_the_trials:
    try:
      with _alarm(trial_timeout):
        result = train_fn(config)
      if not isinstance(result, TrialResult):
        raise TypeError(f"the training function returned {type(result).__name__}, not TrialResult")
      result.check()  # it may have been changed after construction
      if result.config.key() != config.key():
        raise ValueError("the training function returned a TrialResult of another config")
      return TrialRecord(config, result, None, time.perf_counter() - start).round_tripped()
    except _UserInterrupt as e:
      raise KeyboardInterrupt().with_traceback(e.__traceback__) from None
    except KeyboardInterrupt as e:
      if not interrupts_are_the_trials:
        raise
      return _error_record(config, e, time.perf_counter() - start)
    except BaseException as e:  # pylint: disable=broad-except
      return _error_record(config, e, time.perf_counter() - start)


class _TimedOut(NamedTuple):
  """A worker's answer for a trial still running at its limit (its thread cannot be stopped)."""

  record: TrialRecord
  pid: int


def run_trial_with_limit(train_fn: TrialFn, config: TrialConfig,
                         trial_timeout: float) -> "TrialRecord | _TimedOut":
  """``run_trial`` in a thread of this worker, given up on after ``trial_timeout`` seconds.

  What an executor runs for a trial with a time limit. A trial still running
  at the limit is answered with a ``TrialTimeout`` record and this process's
  id, so that the coordinator can stop the process (``ProcessPool``); on a
  Dask worker run by a nanny, the worker leaves once the answer has been
  collected, and the nanny starts a fresh one. Elsewhere the hung thread stays
  until its worker process exits.
  """
  box: list[TrialRecord] = []
  start = time.perf_counter()
  thread = threading.Thread(target=lambda: box.append(run_trial(train_fn, config)),
                            name=f"trial lr={config.learning_rate:g}", daemon=True)
  thread.start()
  thread.join(trial_timeout)
  if box:
    return box[0]
  elapsed = time.perf_counter() - start
  record = TrialRecord(config, None, f"{TRIAL_TIMEOUT}: the trial was still running after "
                       f"{elapsed:.3g} s, past its time limit of {trial_timeout:g} s", elapsed).round_tripped()
  _leave_dask_worker_when_collected()
  return _TimedOut(record, os.getpid())


def _leave_dask_worker_when_collected() -> None:
  """On a Dask worker with a nanny: once this task's answer is collected, restart the worker.

  Gracefully, as Dask's ``--lifetime`` does: the scheduler moves the tasks
  waiting on this worker elsewhere (no failure counted against them), and
  the nanny starts a fresh process without the hung thread.
  """
  module = sys.modules.get("distributed")
  if module is None:
    return
  try:
    worker = module.get_worker()
    key = worker.get_current_task()
  except Exception:  # pylint: disable=broad-except
    return  # not in a Dask task
  if not getattr(worker, "nanny", None):
    return  # no nanny: the worker may be the coordinator's own process

  def leave() -> None:
    deadline = time.monotonic() + 600
    while key in worker.state.tasks and time.monotonic() < deadline:
      time.sleep(0.05)
    worker.loop.add_callback(worker.close_gracefully, restart=True, reason="a trial hung")
    time.sleep(120)
    os._exit(75)  # pylint: disable=protected-access  # still here: a stuck close

  threading.Thread(target=leave, daemon=True).start()


class InProcessExecutor(cf.Executor):
  """Runs each task at ``submit``, in the calling thread: ``executor=None`` as an object.

  ``default_executor`` returns it where one process fits the machine (one GPU,
  a TPU host, one core), so that ``with optstab.default_executor() as pool:``
  works everywhere; the trial functions treat it exactly like ``None``.
  """

  max_workers = 1

  def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
    """Runs ``fn(*args, **kwargs)`` now, here; returns its finished ``Future``."""
    future: cf.Future = cf.Future()
    future.set_running_or_notify_cancel()
    try:
      future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future


def in_process(executor: Optional[cf.Executor]) -> bool:
  """Whether trials on ``executor`` run in this process, one after another."""
  return executor is None or isinstance(executor, InProcessExecutor)


# ----------------------------------------------------------------------------
# Worker processes.


def _merged_env(env: Mapping[str, str]) -> dict[str, str]:
  """``env`` over this process's environment; ``XLA_FLAGS`` are appended, not replaced."""
  merged = {}
  for name, value in env.items():
    if name == "XLA_FLAGS" and os.environ.get(name):
      value = f"{os.environ[name]} {value}"
    merged[name] = value
  return merged


def _exit_when_orphaned(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(_ORPHAN_CHECK_SECONDS)
  os._exit(1)  # the coordinator died (e.g. SIGKILL): do not compute for nobody


def _parse_like(text: str, current: Any) -> Any:
  if isinstance(current, bool):
    return text.strip().lower() in ("1", "true", "yes", "on")
  if isinstance(current, (int, float)):
    return type(current)(float(text)) if isinstance(current, int) else float(text)
  return text


def _apply_jax_options(env: Mapping[str, str]) -> None:
  """Sets ``JAX_*`` options of ``env`` in ``jax.config`` when JAX is already imported.

  JAX reads its ``JAX_*`` variables when it is imported, and unpickling the
  initializer (or the parent's main module) may import it first; XLA's flags,
  read when the backend starts, need nothing more.
  """
  jax = sys.modules.get("jax")
  if jax is None:
    return
  for name, value in env.items():
    option = name.lower()
    if not option.startswith("jax_"):
      continue
    try:
      current = getattr(jax.config, option)
    except AttributeError:
      continue  # a variable JAX does not know as an option
    jax.config.update(option, _parse_like(value, current))


def _initialize_worker(env: Mapping[str, str], slots, parent: int) -> None:
  """Runs first in each worker, before it touches JAX's backend (XLA reads these at start-up)."""
  env = _merged_env(env)
  if slots is not None:
    env.update(_merged_env(slots.get()))
  os.environ.update(env)
  _apply_jax_options(env)
  # The user's Ctrl-C reaches every process of the terminal's group: the
  # coordinator stops the sweep; a worker would record it as its trial's error.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _wait_until_broken(pool: cf.ProcessPoolExecutor) -> None:
  """After killing workers: wait until the pool knows, so the next submit starts a fresh one."""
  deadline = time.monotonic() + 30
  while not getattr(pool, "_broken", True) and time.monotonic() < deadline:
    time.sleep(0.01)


class ProcessPool(cf.Executor):
  """A process pool for trials: spawned workers with their own environment, respawned after a crash.

  Each worker starts with ``env`` (and its own entry of ``worker_envs``) in its
  environment before JAX starts there, exits when the coordinating process dies,
  and runs one task at a time. When a task kills its worker, the pool breaks
  (``concurrent.futures.process.BrokenProcessPool`` for every task in flight);
  the next ``submit`` starts a fresh pool (``restarts`` counts them).

  Args:
    max_workers: the number of worker processes, >= 1.
    env: variables set in every worker (``XLA_FLAGS`` is appended to the
      inherited value); e.g. ``SINGLE_THREADED_ENV``.
    worker_envs: one mapping per worker, e.g. ``[{"CUDA_VISIBLE_DEVICES":
      "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]`` to pin one worker per GPU; its
      length must be ``max_workers``.

  Example:
    >>> import os
    >>> with ProcessPool(1, env={"OPTSTAB_EXAMPLE": "1"}) as pool:
    ...   pool.submit(os.getenv, "OPTSTAB_EXAMPLE").result()
    '1'
  """

  def __init__(self, max_workers: int, *, env: Optional[Mapping[str, str]] = None,
               worker_envs: Optional[Sequence[Mapping[str, str]]] = None):
    _validation.check_positive_int("max_workers", max_workers)
    if worker_envs is not None and len(worker_envs) != max_workers:
      raise ValueError(f"worker_envs must hold one mapping per worker ({max_workers}); "
                       f"got {len(worker_envs)}.")
    self.max_workers = int(max_workers)
    self.env = dict(env or {})
    self.worker_envs = None if worker_envs is None else [dict(e) for e in worker_envs]
    self.restarts = 0
    self._context = multiprocessing.get_context("spawn")
    self._lock = threading.Lock()
    self._pool = self._new_pool()

  def _new_pool(self) -> cf.ProcessPoolExecutor:
    slots = None
    if self.worker_envs is not None:
      slots = self._context.SimpleQueue()
      for e in self.worker_envs:
        slots.put(e)
    return cf.ProcessPoolExecutor(
        self.max_workers, mp_context=self._context, initializer=_initialize_worker,
        initargs=(self.env, slots, os.getpid()))

  def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
    """Schedules ``fn(*args, **kwargs)`` on a worker; a broken pool is replaced first."""
    with self._lock:
      try:
        return self._pool.submit(fn, *args, **kwargs)
      except cf.BrokenExecutor:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self.restarts += 1
        return self._pool.submit(fn, *args, **kwargs)

  def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
    with self._lock:
      self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

  def stop_worker(self, pid: int) -> bool:
    """Kills the worker process ``pid`` (a trial past its time limit); whether it was one.

    The pool breaks, as after a crash: the tasks in flight fail with
    ``BrokenProcessPool`` and the next ``submit`` starts a fresh pool.
    """
    with self._lock:
      pool = self._pool
      process = (getattr(pool, "_processes", None) or {}).get(pid)
    if process is None:
      return False
    process.kill()
    process.join(30)
    _wait_until_broken(pool)
    return True

  def stop_workers(self) -> None:
    """Kills every worker (the user stopped the sweep); the next ``submit`` starts a fresh pool."""
    with self._lock:
      pool = self._pool
      processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
      with contextlib.suppress(Exception):
        process.kill()
    for process in processes:
      process.join(30)
    _wait_until_broken(pool)

  def __repr__(self) -> str:
    return f"ProcessPool(max_workers={self.max_workers}, env={self.env}, worker_envs={self.worker_envs})"


# ----------------------------------------------------------------------------
# The machine-fitting default.


def _visible_devices() -> tuple[str, int]:
  """``(platform, device count)`` of JAX's default backend.

  Asked in a subprocess unless this process has already started a backend: on
  a GPU host, starting one here would claim memory on every GPU the workers
  need.
  """
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel

  if xla_bridge.backends_are_initialized():
    import jax  # pylint: disable=import-outside-toplevel

    return jax.default_backend(), jax.local_device_count()
  probe = "import jax; print(jax.default_backend(), jax.local_device_count())"
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                       check=True, timeout=300)
  platform, count = out.stdout.split()[-2:]
  return platform, int(count)


def _cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


#: The variable that pins a process to some GPUs, per JAX platform name.
_PIN_VARIABLES = {"gpu": "CUDA_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES",
                  "rocm": "HIP_VISIBLE_DEVICES"}


def plan_workers(platform: str, device_count: int, cpu_cores: int,
                 workers: Optional[int] = None) -> Optional[dict[str, Any]]:
  """The worker layout ``default_executor`` builds, as plain data (``None``: in-process).

  Args:
    platform: JAX's default backend (``"cpu"``, ``"gpu"``, ``"tpu"``, ...).
    device_count: its local devices.
    cpu_cores: the CPU cores this process may use.
    workers: the number of workers wanted (default: one per core on CPU, one
      per GPU); ``1`` means in-process.

  Returns:
    ``None`` for in-process sequential trials, or ``{"max_workers": n, "env":
    {...}, "worker_envs": [...] or None}``, the arguments of ``ProcessPool``.
  """
  if workers is not None:
    _validation.check_positive_int("workers", workers)
  if platform == "cpu":
    n = cpu_cores if workers is None else workers
    return None if n == 1 else {"max_workers": n, "env": dict(SINGLE_THREADED_ENV),
                                "worker_envs": None}
  pin = _PIN_VARIABLES.get(platform)
  if pin is None or device_count == 1:
    return None  # a TPU host or one GPU: one process owns the accelerator
  n = device_count if workers is None else min(workers, device_count)
  if n == 1:
    return None
  # Devices spread round-robin when there are fewer workers than GPUs.
  groups = [[str(d) for d in range(device_count) if d % n == w] for w in range(n)]
  return {"max_workers": n, "env": {}, "worker_envs": [{pin: ",".join(g)} for g in groups]}


def default_executor(workers: Optional[int] = None, *,
                     env: Optional[Mapping[str, str]] = None) -> cf.Executor:
  """The executor that fits this machine.

  * CPU backend: ``ProcessPool`` of one single-threaded XLA process per core
    (``SINGLE_THREADED_ENV``);
  * one GPU, a TPU host, or one core: ``InProcessExecutor`` (trials in this
    process, one after another, as with ``executor=None``);
  * several GPUs: one worker per GPU, pinned with ``CUDA_VISIBLE_DEVICES``
    (``HIP_VISIBLE_DEVICES`` on ROCm).

  Shut it down when done: ``with optstab.default_executor() as pool: ...``.

  Args:
    workers: override the number of workers; ``1`` gives ``InProcessExecutor``.
    env: more variables for every worker, e.g. ``{"JAX_COMPILATION_CACHE_DIR":
      path}`` to share compiled programs between the workers and across runs.

  Returns:
    A ``ProcessPool``, or an ``InProcessExecutor``.
  """
  if workers is not None:
    _validation.check_positive_int("workers", workers)
  if workers == 1:
    return InProcessExecutor()
  platform, devices = _visible_devices()
  plan = plan_workers(platform, devices, _cpu_cores(), workers)
  if plan is None:
    return InProcessExecutor()
  return ProcessPool(plan["max_workers"], env={**plan["env"], **dict(env or {})},
                     worker_envs=plan["worker_envs"])


# ----------------------------------------------------------------------------
# SLURM through submitit.


class SubmititExecutor(cf.Executor):
  """A ``concurrent.futures`` view of a ``submitit`` executor (SLURM, or local).

  ``submit`` submits one job per call (``submitit_executor.submit``) and
  returns a ``Future`` completed by a watcher thread that polls the jobs every
  ``poll_seconds`` (submitit's own job watcher batches the ``sacct`` calls).

  Args:
    executor: a ``submitit.AutoExecutor``, ``SlurmExecutor``, ``LocalExecutor``
      or ``DebugExecutor``, with its parameters set (``update_parameters``).
    poll_seconds: how often finished jobs are looked for.

  Example (not run here: it needs a SLURM cluster)::

    import submitit
    slurm = submitit.AutoExecutor(folder="runs/slurm_logs")
    slurm.update_parameters(timeout_min=240, gpus_per_node=1, slurm_partition="gpu")
    with optstab.SubmititExecutor(slurm) as executor:
      sweep = optstab.learning_rate_sweep(train_fn, grid, 10_000, out_dir="runs/c10",
                                          executor=executor)
  """

  def __init__(self, executor: Any, *, poll_seconds: float = 1.0):
    _validation.check_positive("poll_seconds", poll_seconds)
    self.executor = executor
    self.poll_seconds = float(poll_seconds)
    self._jobs: dict[Any, cf.Future] = {}
    self._lock = threading.Lock()
    self._closed = threading.Event()
    self._watcher: Optional[threading.Thread] = None

  def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
    """Submits ``fn(*args, **kwargs)`` as one submitit job; returns its ``Future``."""
    if self._closed.is_set():
      raise RuntimeError("cannot submit to a SubmititExecutor after shutdown")
    job = self.executor.submit(fn, *args, **kwargs)
    future: cf.Future = cf.Future()
    future.set_running_or_notify_cancel()
    with self._lock:
      self._jobs[job] = future
      if self._watcher is None:
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
    return future

  def _watch(self) -> None:
    while True:
      with self._lock:
        jobs = list(self._jobs.items())
      if not jobs and self._closed.is_set():
        return
      for job, future in jobs:
        if not job.done():
          continue
        try:
          future.set_result(job.result())
        except Exception as e:  # pylint: disable=broad-except
          future.set_exception(e)
        with self._lock:
          del self._jobs[job]
      time.sleep(self.poll_seconds)

  def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
    if cancel_futures:
      with self._lock:
        for job, future in list(self._jobs.items()):
          job.cancel(check=False)
          future.cancel()
          del self._jobs[job]
    self._closed.set()
    if wait and self._watcher is not None:
      self._watcher.join()


# ----------------------------------------------------------------------------
# Scheduling.


def _capacity(executor: cf.Executor) -> Optional[int]:
  """How many trials can run at once, when the executor says; ``None``: no limit known.

  For Dask's ``Client.get_executor()``, the cluster's worker threads when the
  sweep starts: a trial waiting on a worker behind one that kills it would die
  with it (``KilledWorker``) and have to run again.
  """
  for name in ("max_workers", "_max_workers"):
    n = getattr(executor, name, None)
    if isinstance(n, int) and n > 0:
      return n
  client = getattr(executor, "_client", None)
  if client is not None and hasattr(client, "nthreads"):
    try:
      n = sum(client.nthreads().values())
    except Exception:  # pylint: disable=broad-except
      return None
    return n if n > 0 else None
  return None


def _respawnable(executor: cf.Executor) -> bool:
  return isinstance(executor, ProcessPool)


def _check_picklable(train_fn: TrialFn, executor: cf.Executor) -> None:
  """Process pools pickle with the standard library: say so before any trial starts."""
  if not isinstance(executor, (ProcessPool, cf.ProcessPoolExecutor)):
    return  # threads need nothing; Dask, Ray and submitit use cloudpickle
  advice = ("Define it at module level in an importable module (a function, or an instance of "
            "a module-level class such as a dataclass holding its setup), not as a closure or "
            "lambda.")
  try:
    blob = pickle.dumps(train_fn)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"train_fn must pickle to run on a process pool; {train_fn!r} does not "
                    f"({type(e).__name__}: {e}). {advice}") from e
  # A task a worker cannot unpickle kills the worker, which would read as a crash
  # of every trial: try once, in a worker, where the error can be returned.
  error = executor.submit(_unpickling_error, blob).result()
  if error is not None:
    raise TypeError(f"train_fn {train_fn!r} pickles here but not in a worker process ({error}); "
                    f"a function defined in a notebook or a REPL cannot reach spawned workers. "
                    f"{advice}")


def _unpickling_error(blob: bytes) -> Optional[str]:
  try:
    pickle.loads(blob)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


#: Names of the exceptions by which engines say that the process running a task
#: died (Dask, submitit, Ray), rather than that the task could not be sent.
CRASH_ERRORS = ("KilledWorker", "UncompletedJobError", "FailedJobError", "WorkerCrashedError",
                "OutOfMemoryError", "NodeDiedError")


def _crashed(config: TrialConfig, error: BaseException) -> TrialRecord:
  return TrialRecord(config, None, f"{WORKER_CRASHED}: the worker process running this trial "
                     f"died ({type(error).__name__}: {error})", 0.0)


class _Again:
  """A trial's task submitted again: a new task to engines that key tasks by their arguments.

  Dask gives a resubmitted ``(function, arguments)`` the key of the first
  try, and with it that try's error (``KilledWorker``) instead of a new run.
  """

  def __init__(self, task: Callable[..., Any]):
    self.task = task
    self.token = uuid.uuid4().hex
    self.__name__ = f"{task.__name__}_again"  # Dask names the task after it

  def __call__(self, *args: Any) -> Any:
    return self.task(*args)

  def __dask_tokenize__(self) -> str:
    return self.token


def _is_crash(error: BaseException, executor: cf.Executor) -> bool:
  """Whether ``error`` says that the process running a task died."""
  if isinstance(error, cf.BrokenExecutor):
    return _respawnable(executor)
  return type(error).__name__ in CRASH_ERRORS


def execute_trials(
    train_fn: TrialFn,
    configs: Sequence[TrialConfig],
    finished: Callable[[int, TrialRecord], None],
    executor: Optional[cf.Executor] = None,
    *,
    trial_timeout: Optional[float] = None,
) -> None:
  """Runs every configuration once, calling ``finished(index, record)`` as each ends.

  ``finished`` runs in the calling thread, in the order trials finish (the
  configurations' order when ``executor`` is ``None``). At most as many trials
  as the executor has workers are in flight. When a worker dies (``os._exit``,
  a segfault, the OOM killer: ``BrokenProcessPool``, Dask's ``KilledWorker``,
  ``CRASH_ERRORS``), the trials that were in flight become suspects: they run
  again one at a time, and only one that kills its worker when alone is
  recorded as ``WORKER_CRASHED``; the others finish normally.

  With ``trial_timeout``, each trial on an executor runs under
  ``run_trial_with_limit``: one still running at the limit is recorded as
  ``TRIAL_TIMEOUT`` with its elapsed seconds, its ``ProcessPool`` worker is
  killed (the trials sharing the pool run again) or its Dask worker replaced
  by its nanny, and the sweep goes on. In this process (``executor=None``) a
  timer interrupts the trial instead, which stops Python code but not a call
  stuck in C (``run_trial``).

  The user's Ctrl-C (``KeyboardInterrupt`` in this thread) stops everything:
  the trials in flight are cancelled (a ``ProcessPool``'s workers killed),
  every finished trial has been passed to ``finished``, and the interrupt
  propagates.

  Args:
    train_fn: the user's training function.
    configs: the trials.
    finished: called with each trial's index in ``configs`` and its record.
    executor: ``None`` runs the trials in turn in this process.
    trial_timeout: seconds a trial may run (``None``: no limit).

  Raises:
    TypeError: a process pool was given a ``train_fn`` that does not pickle.
    concurrent.futures.BrokenExecutor: an executor other than ``ProcessPool``
      broke (its unfinished trials are not recorded, so a rerun runs them).
    RuntimeError: the executor could not run a trial for another reason than
      its worker dying (``CRASH_ERRORS``); nothing is recorded for it.
  """
  trial_timeout = check_trial_timeout(trial_timeout)
  if in_process(executor):
    for i, config in enumerate(configs):
      finished(i, run_trial(train_fn, config, trial_timeout))
    return
  _check_picklable(train_fn, executor)
  limit = _capacity(executor) or max(len(configs), 1)
  queue = collections.deque(range(len(configs)))
  in_flight: dict[cf.Future, int] = {}
  suspects: list[int] = []
  requeue: set[int] = set()  # in flight when this process broke the pool on purpose
  tries = collections.Counter()
  sent: dict[cf.Future, float] = {}  # ProcessPool with a limit: when each trial was submitted

  def submit(i: int) -> Optional[cf.Future]:
    task = run_trial if trial_timeout is None else run_trial_with_limit
    extra = () if trial_timeout is None else (trial_timeout,)
    tries[i] += 1
    if tries[i] > 1:
      task = _Again(task)
    try:
      future = executor.submit(task, train_fn, configs[i], *extra)
    except cf.BrokenExecutor:
      if not _respawnable(executor):
        raise
      suspects.append(i)
      return None
    in_flight[future] = i
    if trial_timeout is not None:
      sent[future] = time.monotonic()
    return future

  def outcome(future: cf.Future, i: int, alone: bool) -> Optional[TrialRecord]:
    """The record, or ``None`` when the trial must run again."""
    error = future.exception()
    if error is None:
      value = future.result()
      if isinstance(value, _TimedOut):
        if isinstance(executor, ProcessPool) and executor.stop_worker(value.pid):
          requeue.update(in_flight.values())
        return value.record
      return value
    if _is_crash(error, executor):
      if i in requeue:
        requeue.discard(i)
        queue.appendleft(i)  # healthy: its pool was stopped under it
        return None
      if alone:
        return _crashed(configs[i], error)
      suspects.append(i)
      return None
    if isinstance(error, cf.BrokenExecutor):
      raise error
    # The task never ran as a trial (it could not be sent or unpickled): not a
    # result to record, since a rerun would then skip it.
    raise RuntimeError(f"the executor could not run the trial {configs[i].key()}: "
                       f"{type(error).__name__}: {error}") from error

  def collect(done: set[cf.Future], alone: bool) -> None:
    # No reference to a finished future may outlive this call: Dask keeps the
    # result on its worker, and recomputes it if that worker dies, while any is held.
    while done:
      future = done.pop()
      i = in_flight.pop(future)
      sent.pop(future, None)
      record = outcome(future, i, alone)
      del future
      if record is not None:
        finished(i, record)

  patience = None if trial_timeout is None else trial_timeout + TRIAL_TIMEOUT_GRACE

  def overdue() -> None:
    # A worker that does not answer long after the limit is stuck where its own
    # watch cannot run (a call holding the interpreter lock): kill the pool. On
    # another engine (a Dask cluster whose workers all died) the trial is given
    # up on, so the sweep cannot wait forever.
    now = time.monotonic()
    late = [(f, i) for f, i in in_flight.items() if sent[f] + patience <= now]
    for future, i in late:
      del in_flight[future]
      future.cancel()
    if isinstance(executor, ProcessPool):
      requeue.update(in_flight.values())
      executor.stop_workers()
    for future, i in late:
      elapsed = now - sent.pop(future)
      finished(i, TrialRecord(
          configs[i], None, f"{TRIAL_TIMEOUT}: no answer from the trial's worker {elapsed:.3g} s "
          f"after it was sent, past its time limit of {trial_timeout:g} s (a call that holds "
          "Python's interpreter lock cannot be interrupted, or no worker was left to run it); "
          + ("its worker was killed" if isinstance(executor, ProcessPool) else
             "it was given up on"),
          elapsed).round_tripped())

  try:
    while queue or in_flight or suspects:
      alone = not in_flight and bool(suspects)
      if alone:  # a worker died and nothing is in flight: run each suspect alone
        submit(suspects.pop(0))
      else:
        while queue and len(in_flight) < limit and not suspects:
          submit(queue.popleft())
      if not in_flight:
        continue
      timeout = None
      if sent:
        timeout = max(0.0, min(sent.values()) + patience - time.monotonic())
      done = cf.wait(in_flight, timeout=timeout, return_when=cf.FIRST_COMPLETED).done
      if done:
        collect(done, alone)
      else:
        overdue()
  except BaseException:
    # The user's Ctrl-C, or an error: stop what is in flight; nothing finished is lost.
    for future in in_flight:
      future.cancel()
    if isinstance(executor, ProcessPool) and in_flight:
      executor.stop_workers()
    raise
