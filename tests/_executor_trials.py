"""Picklable trial functions for the executor tests (module level, so workers import them).

``numpy_trial`` is cheap and deterministic: 0.7 raises, rates >= 2 diverge.
Worker behaviour is steered by environment variables, which a ``ProcessPool``
sets in its workers (``env=``) or a coordinator subprocess passes down:

* ``OPTSTAB_TEST_CRASH_LRS``: comma-separated rates whose trial kills its
  worker process (``os._exit``), as a segfault or the OOM killer would;
* ``OPTSTAB_TEST_HANG_LRS``: rates whose trial hangs (until killed);
* ``OPTSTAB_TEST_PID_DIR``: every trial writes its process id there.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab
from optstab.diagnosis.trial import TrialConfig, TrialResult

GRID = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 1.9, 2.1, 2.5, 3.0, 4.0)


def _rates(name: str) -> set[float]:
  return {float(r) for r in os.environ.get(name, "").split(",") if r}


def numpy_trial(config: TrialConfig) -> TrialResult:
  """Gradient descent on 0.5 x^2 with a little seeded noise."""
  pid_dir = os.environ.get("OPTSTAB_TEST_PID_DIR")
  if pid_dir:
    with open(os.path.join(pid_dir, str(os.getpid())), "w", encoding="utf-8"):
      pass
  if config.learning_rate in _rates("OPTSTAB_TEST_CRASH_LRS"):
    os._exit(3)  # pylint: disable=protected-access
  if config.learning_rate in _rates("OPTSTAB_TEST_HANG_LRS"):
    time.sleep(600)
  time.sleep(0.05)  # long enough that both workers of a pool get trials
  if abs(config.learning_rate - 0.7) < 1e-12:
    raise RuntimeError("simulated crash")
  x, losses = 1.0, []
  rng = np.random.default_rng(config.seed)
  for _ in range(config.total_steps):
    losses.append(0.5 * x * x + 0.001 * rng.random())
    x -= config.learning_rate * x
  losses = np.array(losses)
  steps = config.eval_steps()
  return TrialResult(config, losses, steps, {"loss": losses[steps - 1]}, np.abs(losses))


# A tiny MLP regression whose compiled run takes the learning rates as data.
_X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
_Y = np.tanh(_X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))
_TX = optax.inject_hyperparams(optstab.momentum)(learning_rate=0.0, momentum=0.9)


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"])
  return jnp.mean((h @ params["w2"] - y) ** 2)


@jax.jit
def mlp_run(seed, learning_rates):
  """Trains from ``seed`` with one rate per step; compiled once per run length."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"w1": jax.random.normal(k1, (4, 16)) / 2, "w2": jax.random.normal(k2, (16,)) / 4}

  def step(carry, learning_rate):
    params, state = carry
    loss, grads = jax.value_and_grad(_loss)(params, _X, _Y)
    state.hyperparams["learning_rate"] = learning_rate
    updates, state = _TX.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), (loss, optstab.global_norm(grads))

  _, (losses, norms) = jax.lax.scan(step, (params, _TX.init(params)), learning_rates)
  return losses, norms


def mlp_trial(config: TrialConfig) -> TrialResult:
  """The MLP as a ``TrialFn``: every rate of a sweep reuses one compiled ``mlp_run``."""
  rates = optstab.schedule_values(config.learning_rate_schedule(), config.total_steps)
  losses, norms = jax.device_get(mlp_run(config.seed, rates))
  steps = config.eval_steps()
  return TrialResult(config, losses, steps, {"loss": losses[steps - 1]}, norms)


def jax_option(name: str):
  """The value of a ``jax.config`` option in the calling process."""
  return getattr(jax.config, name)


def _rebuild_in(parent: int) -> "UnpicklableInWorker":
  if os.getpid() != parent:
    raise ImportError("this trial function cannot be rebuilt in a worker process")
  return UnpicklableInWorker(parent)


class UnpicklableInWorker:
  """A trial function that pickles here but fails to unpickle in any other process."""

  def __init__(self, parent: int):
    self.parent = parent

  def __call__(self, config: TrialConfig) -> TrialResult:
    return numpy_trial(config)

  def __reduce__(self):
    return (_rebuild_in, (self.parent,))


#: What ``misbehaving_trial`` does, by ``config.extra["do"]``.
MISBEHAVIOURS = ("ok", "raise", "exit", "interrupt", "os_exit", "segfault", "hang", "gil_hang",
                 "shrunk_result", "int_metric_key", "other_config")


def misbehaving_trial(config: TrialConfig) -> TrialResult:
  """``numpy_trial``, after doing what ``config.extra["do"]`` names (one of ``MISBEHAVIOURS``).

  ``hang`` sleeps in short steps, so a timer can interrupt it in this process;
  ``gil_hang`` runs one regular expression that backtracks for ever, holding
  the interpreter lock (nothing in its process can interrupt it);
  ``OPTSTAB_TEST_PID_DIR`` as in ``numpy_trial``.
  """
  do = config.extra.get("do", "ok")
  plain = config.replace(extra={})
  time.sleep(0.02)
  if do == "raise":
    raise RuntimeError("simulated failure")
  if do == "exit":
    sys.exit(3)
  if do == "interrupt":
    raise KeyboardInterrupt
  if do == "os_exit":
    os._exit(3)  # pylint: disable=protected-access
  if do == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
  if do == "hang":
    pid_dir = os.environ.get("OPTSTAB_TEST_PID_DIR")
    if pid_dir:
      open(os.path.join(pid_dir, f"hang-{os.getpid()}"), "w", encoding="utf-8").close()
    for _ in range(60_000):
      time.sleep(0.01)
  if do == "gil_hang":
    re.match(r"(a+)+$", "a" * 64 + "b")  # 2**64 steps in C, never releasing the lock
  result = numpy_trial(plain)
  result = TrialResult(config, result.train_loss, result.eval_steps, result.eval_metrics,
                       result.grad_norms)
  if do == "shrunk_result":
    result.train_loss = result.train_loss[:3]
  if do == "int_metric_key":
    result.eval_metrics[7] = result.eval_metrics["loss"]
  if do == "other_config":
    result.config = config.replace(num_steps=config.num_steps + 1)
  return result


def misbehaving_configs(*behaviours: str, num_steps: int = 20) -> list[TrialConfig]:
  """One configuration per behaviour, at distinct rates that ``numpy_trial`` trains well."""
  return [TrialConfig(learning_rate=0.1 + 0.01 * i, num_steps=num_steps, eval_every=10,
                      extra={"do": do}) for i, do in enumerate(behaviours)]
