"""optstab.make_trial_fn: a TrialFn from a model, a loss, data and an optimizer.

One compilation per sweep (counted through ``jax.monitoring``), per-step
records, the evaluation cadence, the early stop, every fix a ``TrialConfig``
asks for, both model forms, pickling and a spawned worker, and bad input.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
import pathlib
import pickle
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optstab
from optstab import runner
from optstab.diagnosis import TrialConfig, learning_rate_sweep, run_trials
from optstab.trial_builder import TrialSpec
from _compile_counter import COMPILES

# ----------------------------------------------------------------------------
# A tiny regression, its models and its data: module level, so trials pickle.

_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(96, 4)).astype(np.float32)
Y = np.tanh(X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))
X_EVAL, Y_EVAL = X[64:], Y[64:]


class MLP(nnx.Module):
  def __init__(self, width: int, *, rngs: nnx.Rngs, scale: float = 1.0):
    self.hidden = nnx.Linear(4, width, rngs=rngs)
    self.out = nnx.Linear(width, 1, rngs=rngs)
    self.scale = scale

  def __call__(self, x):
    return self.scale * self.out(jnp.tanh(self.hidden(x)))[:, 0]


class BatchNormMLP(nnx.Module):
  """Batch statistics: non-parameter state the trial must carry and use in evaluation."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.norm(self.hidden(x))))[:, 0]


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(jnp.tanh(nn.Dense(8)(x)))[:, 0]


def mse(model, batch):
  x, y = batch
  return jnp.mean((model(x) - y) ** 2)


def max_error(model, batch):
  x, y = batch
  return jnp.max(jnp.abs(model(x) - y))


DRAWN = {"batches": 0}


def batches(seed, batch_size=16):
  """Endless batches of the first 64 rows, in a seed's order."""
  rng = np.random.default_rng(seed)
  while True:
    DRAWN["batches"] += 1
    i = rng.integers(0, 64, batch_size)
    yield X[i], Y[i]


def one_batch(seed):
  """The same full batch at every step (deterministic losses)."""
  del seed
  while True:
    yield X[:64], Y[:64]


def nan_at_step_5(seed):
  """The full batch, but with NaN inputs at step 5 (0-based)."""
  del seed
  step = 0
  while True:
    x = X[:64].copy()
    if step == 5:
      x[:] = np.nan
    step += 1
    yield x, Y[:64]


def frozen(learning_rate):
  """An optimizer that never moves (its updates are zero)."""
  return optax.sgd(learning_rate * 0.0)


def linen_init(key):
  return LinenMLP().init(key, X[:1])


def pure_init(key):
  return {"w": jax.random.normal(key, (4,)) * 0.1}


def pure_apply(params, x):
  return x @ params["w"]


def nnx_trial(**kwargs):
  kwargs = {"loss_fn": mse, "train_batches": batches, "eval_batches": [(X_EVAL[:16], Y_EVAL[:16]),
                                                       (X_EVAL[16:], Y_EVAL[16:])],
            "fetch_every": 7, **kwargs}
  return optstab.make_trial_fn(functools.partial(MLP, 8), **kwargs)


# ----------------------------------------------------------------------------
# Compilations, counted through jax.monitoring (one event per backend compile).


def test_a_sweep_of_four_rates_and_warmups_compiles_the_step_once():
  trial_fn = nnx_trial(optimizer=functools.partial(optstab.momentum, momentum=0.8))
  base = TrialConfig(0.01, num_steps=20, eval_every=10, schedule="cosine")
  with COMPILES.counting() as compiled:
    sweep = learning_rate_sweep(trial_fn, [0.01, 0.03, 0.1, 0.3], base_config=base,
                                progress=False)
    warm = run_trials(trial_fn, [base.replace(learning_rate=1.0, warmup_steps=w) for w in (4, 9)])
    seeded = trial_fn(base.replace(seed=3))
  assert compiled.count("jit(train_step)") == 1, compiled  # 7 trials, 4 rates, 3 lengths: once
  assert compiled.count("jit(evaluate)") == 1, compiled
  assert all(t.feasible for t in sweep.trials)
  assert [r.result.train_loss.shape for r in warm] == [(24,), (29,)]
  assert not np.array_equal(seeded.train_loss, sweep.trials[0].result.train_loss)
  # A new fix is a new structure: it compiles once more, and only once.
  with COMPILES.counting() as compiled:
    run_trials(trial_fn, [base.replace(clip_norm=0.5, learning_rate=r) for r in (0.1, 0.3)])
  assert compiled.count("jit(train_step)") == 1, compiled


def test_records_every_step_and_evaluates_at_the_config_cadence():
  trial_fn = nnx_trial(metrics={"max_error": max_error})
  result = trial_fn(TrialConfig(0.1, num_steps=17, warmup_steps=3, eval_every=6))
  assert result.train_loss.shape == (20,) and result.grad_norms.shape == (20,)
  assert np.all(np.isfinite(result.train_loss)) and np.all(result.grad_norms > 0)
  assert result.eval_steps.tolist() == [6, 12, 18, 20]
  assert list(result.eval_metrics) == ["loss", "max_error"]
  assert np.all(result.eval_metrics["max_error"] ** 2 >= result.eval_metrics["loss"])
  # Warmup starts at rate 0: the first update leaves the model unchanged, so with one
  # full batch the second step's loss and gradient norm equal the first's.
  same = nnx_trial(train_batches=one_batch)(TrialConfig(0.1, num_steps=4, warmup_steps=3))
  assert same.train_loss[1] == same.train_loss[0] and same.grad_norms[1] == same.grad_norms[0]
  assert same.train_loss[3] < same.train_loss[2]


def test_the_evaluation_is_the_weighted_mean_over_the_evaluation_batches():
  trial_fn = nnx_trial(optimizers={"frozen": frozen})
  config = TrialConfig(0.1, num_steps=2, eval_every=2, optimizer="frozen")
  split = trial_fn(config).eval_metrics["loss"]
  whole = nnx_trial(optimizers={"frozen": frozen},
                    eval_batches=(X_EVAL, Y_EVAL))(config).eval_metrics["loss"]
  np.testing.assert_allclose(split, whole, rtol=1e-5)


def test_a_diverged_trial_stops_early_and_is_nan_from_there():
  trial_fn = nnx_trial(optimizer=optstab.sgd, fetch_every=5)
  before = DRAWN["batches"]
  result = trial_fn(TrialConfig(1e4, num_steps=400, eval_every=100))
  drawn = DRAWN["batches"] - before
  assert np.isnan(result.train_loss[-1]) and np.isnan(result.eval_metrics["loss"][-1])
  assert drawn < 100, drawn  # stopped at a fetch, plus the prefetch thread's read-ahead


def test_the_fixes_a_config_asks_for_are_applied_and_declared():
  trial_fn = nnx_trial(train_batches=one_batch)
  support = trial_fn.fix_support
  assert support.clipping and support.skip_spikes and support.optimizers == ("adam",)
  assert optstab.diagnosis.fix_support(trial_fn) == support
  base = TrialConfig(0.05, num_steps=8, eval_every=8)
  plain = trial_fn(base)
  # Clipping to a tiny norm makes the updates tiny: the loss barely moves.
  clipped = trial_fn(base.replace(clip_norm=1e-6))
  assert clipped.grad_norms[0] == plain.grad_norms[0]  # the norm recorded is the unclipped one
  assert abs(clipped.train_loss[-1] - clipped.train_loss[0]) < 1e-5
  assert plain.train_loss[-1] < plain.train_loss[0] - 1e-3
  # The optimizer switch: Adam's first update differs from momentum's.
  adam = trial_fn(base.replace(optimizer="adam"))
  assert adam.train_loss[0] == plain.train_loss[0] and adam.train_loss[1] != plain.train_loss[1]
  # A user's optimizer, by its name: this one never moves.
  frozen_fn = nnx_trial(train_batches=one_batch, optimizers={"frozen": frozen})
  assert frozen_fn.fix_support.optimizers == ("frozen",)
  still = frozen_fn(base.replace(optimizer="frozen"))
  assert np.all(still.train_loss == still.train_loss[0])
  with pytest.raises(ValueError, match=r"optimizer must be one of \['adam'\].*'lion'"):
    trial_fn(base.replace(optimizer="lion"))
  # The step guard skips the step whose batch is NaN; without it the run is lost.
  config = base.replace(num_steps=12, eval_every=12)
  lost = nnx_trial(train_batches=nan_at_step_5)(config)
  guarded = nnx_trial(train_batches=nan_at_step_5)(config.replace(skip_spikes=True))
  assert np.isnan(guarded.train_loss[5]) and np.all(np.isfinite(guarded.train_loss[6:]))
  assert np.all(np.isnan(lost.train_loss[6:]))
  # The skipped step is recorded (1-based), and only under the guard.
  np.testing.assert_array_equal(guarded.skipped_steps, [6])
  assert lost.skipped_steps.size == 0 and plain.skipped_steps.size == 0
  assert np.isfinite(guarded.eval_metrics["loss"][-1])


def test_an_optimizer_that_is_the_trials_own_is_not_offered_as_a_switch():
  assert nnx_trial(optimizer=optstab.adam).fix_support.optimizers == ()
  assert nnx_trial(optimizers={}).fix_support.optimizers == ()


def test_extra_entries_are_model_keyword_arguments_and_architectures_are_declared():
  trial_fn = nnx_trial(train_batches=one_batch, architectures={"scaled": {"scale": 3.0}})
  assert trial_fn.fix_support.architectures == {"scaled": {"scale": 3.0}}
  config = TrialConfig(0.01, num_steps=2, eval_every=2)
  plain = trial_fn(config.replace(extra={"variant": "a label only"}))
  scaled = trial_fn(config.replace(extra={"scale": 3.0}))
  assert scaled.train_loss[0] != plain.train_loss[0]
  np.testing.assert_array_equal(trial_fn(config).train_loss, plain.train_loss)


def test_batch_statistics_are_carried_and_evaluation_uses_the_running_averages():
  trial_fn = optstab.make_trial_fn(BatchNormMLP, loss_fn=mse, train_batches=batches,
                                   eval_batches=(X_EVAL, Y_EVAL))
  result = trial_fn(TrialConfig(0.05, num_steps=30, eval_every=15))
  assert np.all(np.isfinite(result.train_loss))
  assert result.eval_metrics["loss"][-1] < result.train_loss[0]


@pytest.mark.parametrize("form", ["linen", "pure"])
def test_init_and_apply_functions_train_like_a_module(form):
  init = linen_init if form == "linen" else pure_init
  apply = LinenMLP().apply if form == "linen" else pure_apply
  trial_fn = optstab.make_trial_fn(init=init, apply=apply, loss_fn=mse, train_batches=batches,
                                   eval_batches=(X_EVAL, Y_EVAL), fetch_every=4)
  result = trial_fn(TrialConfig(0.1, num_steps=40, eval_every=20, seed=1))
  assert result.train_loss.shape == (40,) and np.all(np.isfinite(result.grad_norms))
  assert result.eval_metrics["loss"][-1] < result.train_loss[0]
  clipped = trial_fn(TrialConfig(0.1, num_steps=3, clip_norm=1e-6, seed=1))
  assert clipped.grad_norms[0] == result.grad_norms[0]


def test_pickles_and_runs_in_a_spawned_worker_with_the_same_result():
  trial_fn = nnx_trial(eval_batches=functools.partial(list, [(X_EVAL, Y_EVAL)]))
  blob = pickle.dumps(trial_fn)
  assert len(blob) < 3000, len(blob)  # functions by reference; the evaluation set is loaded there
  again = pickle.loads(blob)
  assert again.setup == trial_fn.setup and hash(again.setup) == hash(trial_fn.setup)
  configs = [TrialConfig(r, num_steps=12, eval_every=6) for r in (0.03, 0.1)]
  here = run_trials(trial_fn, configs)
  with concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")) as pool:
    there = run_trials(trial_fn, configs, executor=pool)
  for a, b in zip(here, there):
    assert b.result is not None, b.error
    np.testing.assert_allclose(b.result.train_loss, a.result.train_loss, rtol=1e-5)
    np.testing.assert_allclose(b.result.eval_metrics["loss"], a.result.eval_metrics["loss"],
                               rtol=1e-5)


def test_equal_structures_share_their_compiled_steps():
  spec = nnx_trial().setup
  assert isinstance(spec, TrialSpec)
  assert spec == nnx_trial().setup  # partial(MLP, 8) twice: the same structure
  assert spec != nnx_trial(loss_fn=max_error).setup
  assert spec.with_extra({"variant": "x"}) == spec
  assert spec.with_extra({"scale": 2.0}) != spec
  assert runner.apply_fixes(spec, TrialConfig(0.1, 1, clip_norm=1.0)) != spec


def test_a_finite_batch_iterator_fails_naming_the_steps():
  def three(seed):
    del seed
    return iter([(X[:8], Y[:8])] * 3)

  trial_fn = nnx_trial(train_batches=three)
  with pytest.raises(ValueError, match=r"ended after 3 batches.*total_steps"):
    trial_fn(TrialConfig(0.1, num_steps=5))


@pytest.mark.parametrize("kwargs, match", [
    ({"model": None}, "either as model="),
    ({"init": pure_init, "apply": pure_apply}, "either as model="),
    ({"model": None, "init": pure_init}, "either as model="),
    ({"model": 3}, "model must be a flax.nnx.Module factory"),
    ({"loss_fn": "mse"}, "loss_fn must be a function loss_fn"),
    ({"train_batches": [1, 2]}, "train_batches must be a function"),
    ({"eval_batches": None}, "eval_batches must be a batch"),
    ({"eval_batches": []}, "eval_batches must be a batch"),
    ({"metrics": {"acc": 1.0}}, r"metrics\['acc'\] must be a function metric\(model, batch\)"),
    ({"metrics": [max_error]}, "metrics must be a mapping"),
    ({"optimizer": optax.scale}, r"optimizer must be an optimizer factory .*raised TypeError"),
    ({"optimizer": lambda learning_rate: 1.0}, "must return an optax.GradientTransformation"),
    ({"optimizers": {"": optstab.adam}}, "optimizers keys must be non-empty strings"),
    ({"optimizers": {"adam": "adam"}}, r"optimizers\['adam'\] must be an optimizer factory"),
    ({"architectures": {"pre": {}}}, "architectures must map a name to a non-empty mapping"),
    ({"fetch_every": 0}, "fetch_every must be an integer >= 1; got 0"),
    ({"prefetch": 1.5}, "prefetch must be an integer >= 1; got 1.5"),
    ({"progress": "yes"}, "progress must be True or False"),
])
def test_bad_input_fails_naming_the_argument(kwargs, match):
  args = {"model": functools.partial(MLP, 8), "loss_fn": mse, "train_batches": batches,
          "eval_batches": (X_EVAL, Y_EVAL), **kwargs}
  model = args.pop("model")
  with pytest.raises(ValueError, match=match):
    optstab.make_trial_fn(model, **args)


def test_a_model_factory_that_returns_no_module_fails_at_the_first_trial():
  trial_fn = optstab.make_trial_fn(dict, loss_fn=mse, train_batches=batches,
                                   eval_batches=(X_EVAL, Y_EVAL))
  with pytest.raises(TypeError, match="must return a flax.nnx.Module.*init= and apply="):
    trial_fn(TrialConfig(0.1, num_steps=2))


GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide" / "diagnosis.md"


def test_the_guides_nnx_example_diagnoses_compiling_once_per_optimizer_setup(
    tmp_path, monkeypatch, capsys):
  text = GUIDE.read_text(encoding="utf-8")
  section = text[text.index("<!-- diagnosis-nnx -->"):text.index("<!-- end diagnosis-nnx -->")]
  (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  monkeypatch.chdir(tmp_path)
  with COMPILES.counting() as compiled:
    exec(compile(code, "diagnosis.md", "exec"), {"__name__": "guide_nnx"})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert "verdict: early-unstable" in out
  with open(tmp_path / "nnx_diagnosis" / "trials.jsonl", encoding="utf-8") as f:
    configs = [TrialConfig.from_dict(json.loads(line)["config"]) for line in f if line.strip()]
  setups = {(c.clip_norm, c.optimizer, c.skip_spikes) for c in configs}
  assert len(configs) > 20 and len(setups) >= 2, (len(configs), setups)
  # Every rate, warmup, length and seed of every round shares its setup's one compilation.
  assert compiled.count("jit(train_step)") == len(setups), (compiled, setups)
  assert compiled.count("jit(evaluate)") == len(setups), compiled
