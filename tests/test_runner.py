"""optstab.runner: the one trial loop, its compile cache, and picklable trial functions."""

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab
from optstab import runner
from optstab.diagnosis import TrialConfig, learning_rate_sweep
from optstab.wrn import train as wrn_train
from optstab.wrn.model import WideResNetConfig

# ----------------------------------------------------------------------------
# A linear-regression workload: the loop's contract without a real model.

TRACES = {"train": 0}


@dataclasses.dataclass(frozen=True)
class LinearSetup:
  dim: int = 4
  batch_size: int = 8
  fetch_every: int = 3

  def with_extra(self, extra):
    return dataclasses.replace(self, **{k: v for k, v in extra.items() if k != "variant"})


@dataclasses.dataclass(frozen=True)
class LinearData:
  """A DataSource: y = x . w_true, 64 training and 20 evaluation rows."""

  dim: int = 4

  def load(self):
    rng = np.random.default_rng(0)
    w = rng.normal(size=self.dim).astype(np.float32)
    x = rng.normal(size=(84, self.dim)).astype(np.float32)
    return {"x": x[:64], "y": x[:64] @ w, "eval_x": x[64:], "eval_y": x[64:] @ w}


def _init(setup, seed):
  params = {"w": jax.random.normal(jax.random.key(seed), (setup.dim,)) * 0.1}
  tx = runner.injectable_learning_rate(optstab.sgd)
  return None, runner.TrainState(params, {}, tx.init(params))


def _train_step(setup, graphdef):
  tx = runner.injectable_learning_rate(optstab.sgd)

  def step(state, x, y, learning_rate):
    TRACES["train"] += 1  # runs once per trace (compilation), not per step

    def loss_fn(p):
      return jnp.mean((x @ p["w"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    opt_state = runner.set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    return (runner.TrainState(optax.apply_updates(state.params, updates), state.model_state,
                              opt_state),
            {"loss": loss, "grad_norm": optstab.global_norm(grads)})

  return step


def _eval_step(graphdef):
  def evaluate(params, model_state, x, y, mask):
    return jnp.sum(mask * (x @ params["w"] - y) ** 2), jnp.sum(mask)

  return evaluate


def _train_batches(setup, data, seed):
  rng = np.random.default_rng(seed)
  while True:
    idx = rng.choice(64, setup.batch_size, replace=False)
    yield data["x"][idx], data["y"][idx]


def _eval_batches(data, batch_size):
  n = len(data["eval_y"])
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    mask = (np.arange(start, start + batch_size) < n).astype(np.float32)
    yield data["eval_x"][idx], data["eval_y"][idx], mask


def linear_workload(setup, data):
  return runner.Workload(
      key=setup, init_state=functools.partial(_init, setup),
      train_step=functools.partial(_train_step, setup), eval_step=_eval_step,
      eval_metrics=lambda sq, count: {"loss": sq / count},
      train_batches=functools.partial(_train_batches, setup, data),
      eval_batches=functools.partial(_eval_batches, data),
      num_eval_examples=len(data["eval_y"]), data=data,
      loop=runner.LoopConfig(fetch_every=setup.fetch_every, eval_batch_size=8))


def test_loop_records_every_step_evaluates_on_schedule_and_compiles_once_per_structure():
  trial_fn = runner.TrialFunction(linear_workload, LinearSetup(), LinearData(), progress=False)
  before = TRACES["train"]
  # 7 steps with fetch_every=3: the last, partial fetch must not lose steps.
  sweep = learning_rate_sweep(trial_fn, [0.01, 0.03, 0.1], base_config=TrialConfig(
      0.01, num_steps=5, warmup_steps=2, eval_every=3), progress=False)
  assert TRACES["train"] - before == 1  # three rates, one compilation
  for t in sweep.trials:
    r = t.result
    assert r.train_loss.shape == (7,) and r.grad_norms.shape == (7,)
    assert r.eval_steps.tolist() == [3, 6, 7]
    assert set(r.eval_metrics) == {"loss"} and np.all(np.isfinite(r.eval_metrics["loss"]))
  # Warmup starts at rate 0: the first update leaves the parameters unchanged, so the
  # first two losses differ only by batch; a higher rate trains faster.
  finals = [t.result.eval_metrics["loss"][-1] for t in sweep.trials]
  assert finals[2] < finals[1] < finals[0]
  # Another structure compiles again (once).
  trial_fn(TrialConfig(0.1, num_steps=2, extra={"dim": 4, "batch_size": 4}))
  assert TRACES["train"] - before == 2


def test_eval_metrics_are_means_over_the_whole_evaluation_set_despite_padding():
  data = LinearData().load()
  workload = linear_workload(LinearSetup(), data)
  config = TrialConfig(1e-9, num_steps=1, eval_every=1)
  result = runner.train(workload, config, progress=False)
  # With lr ~0 the evaluated parameters are the initial ones: recompute on the host.
  _, state = workload.init_state(0)
  w = np.asarray(state.params["w"])
  want = np.mean((data["eval_x"] @ w - data["eval_y"]) ** 2)
  np.testing.assert_allclose(result.eval_metrics["loss"][0], want, rtol=1e-5)


def test_set_learning_rate_finds_the_injected_rate_or_says_why_not():
  params = {"w": jnp.ones(3)}
  bare = runner.injectable_learning_rate(optstab.sgd).init(params)
  assert float(runner.set_learning_rate(bare, 0.5).hyperparams["learning_rate"]) == 0.5
  chained = optax.chain(optstab.record_grad_norm(),
                        runner.injectable_learning_rate(optstab.sgd)).init(params)
  out = runner.set_learning_rate(chained, 0.25)
  assert float(out[-1].hyperparams["learning_rate"]) == 0.25
  assert out[-1].hyperparams["learning_rate"].dtype == jnp.float32
  with pytest.raises(TypeError, match="no injected learning rate"):
    runner.set_learning_rate(optstab.sgd(0.1).init(params), 0.1)


def test_load_data_loads_a_source_once_per_process_and_passes_data_through():
  a = runner.load_data(LinearData(dim=3))
  assert runner.load_data(LinearData(dim=3)) is a
  plain = {"x": np.zeros(1)}
  assert runner.load_data(plain) is plain


# ----------------------------------------------------------------------------
# Picklable trial functions (process pools, Dask).

WRN_SETUP = wrn_train.TrainSetup(
    WideResNetConfig(depth=10, width=1, image_size=16, in_channels=1,
                     group_strides=((1, 1), (1, 1), (2, 2))),
    batch_size=16, fetch_every=2)
WRN_DATA = wrn_train.ImageDataSource("digits", image_size=16, train_size=128)
WRN_CONFIG = TrialConfig(0.1, num_steps=3, schedule="cosine", eval_every=3)


def test_trial_function_pickles_small_and_refuses_an_explicit_mesh():
  trial_fn = wrn_train.make_trial_fn(WRN_SETUP, WRN_DATA, progress=False)
  blob = pickle.dumps(trial_fn)
  assert len(blob) < 2000, len(blob)  # the setup and how to load the data, not the data
  assert pickle.loads(blob) == trial_fn
  meshed = wrn_train.make_trial_fn(WRN_SETUP, WRN_DATA, mesh=runner.data_mesh(), progress=False)
  with pytest.raises(TypeError, match="explicit mesh"):
    pickle.dumps(meshed)


def test_trial_function_runs_in_a_spawned_worker_with_the_same_result():
  trial_fn = wrn_train.make_trial_fn(WRN_SETUP, WRN_DATA, progress=False)
  here = trial_fn(WRN_CONFIG)
  with concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")) as pool:
    there = pool.submit(trial_fn, WRN_CONFIG).result(timeout=300)
  # The same program on the same CPU: only XLA's thread partitioning of reductions may
  # differ between the processes (float32 rounding, ~1e-7 relative per sum).
  np.testing.assert_allclose(there.train_loss, here.train_loss, rtol=1e-5)
  np.testing.assert_allclose(there.eval_metrics["loss"], here.eval_metrics["loss"], rtol=1e-5)


def test_a_run_whose_parameters_went_non_finite_stops_and_fills_in_nan():
  drawn = []

  def counted(setup, data):
    workload = linear_workload(setup, data)
    batches = workload.train_batches

    def counting(seed):
      for batch in batches(seed):
        drawn.append(1)
        yield batch

    return dataclasses.replace(workload, train_batches=counting)

  trial_fn = runner.TrialFunction(counted, LinearSetup(fetch_every=3), LinearData(),
                                  progress=False)
  result = trial_fn(TrialConfig(1e3, num_steps=60, eval_every=10))
  first = int(np.argmax(~np.isfinite(result.train_loss)))
  assert 0 < first < 30 and not np.isfinite(result.train_loss[first:]).any()
  assert result.train_loss.shape == (60,) and np.isnan(result.grad_norms[-1])
  assert np.isnan(result.eval_metrics["loss"][-1])
  # It stopped at the first fetch after its parameters went non-finite, well before step
  # 60 (the prefetch thread draws batches ahead of the step, more of them on a busy machine).
  assert len(drawn) <= 30
  healthy = trial_fn(TrialConfig(1e-2, num_steps=60, eval_every=10))
  assert np.all(np.isfinite(healthy.train_loss))
