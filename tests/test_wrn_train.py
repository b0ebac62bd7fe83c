"""optstab.wrn.train: the jitted step, batch-norm modes, the loop and its TrialFn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optstab

from optstab.diagnosis import TrialConfig
from optstab.wrn import data as wrn_data
from optstab.wrn import train
from optstab.wrn.model import WideResNetConfig

MODEL = WideResNetConfig(depth=10, width=1, image_size=16, in_channels=1,
                         group_strides=((1, 1), (1, 1), (2, 2)))


@pytest.fixture(scope="module")
def digits():
  data = wrn_data.load_digits(image_size=16)
  # A small slice keeps the test fast; the test set stays whole.
  import dataclasses
  return dataclasses.replace(data, train_images=data.train_images[:256],
                             train_labels=data.train_labels[:256])


@pytest.fixture(scope="module")
def compiled():
  setup = train.TrainSetup(MODEL, batch_size=32)
  mesh = train.data_mesh()
  return setup, mesh, train._compile(setup, mesh)


def _fixed_batch(data, n=32):
  batch = next(wrn_data.epoch_batches(data, "train", n, augmentation=None))
  return jnp.asarray(batch.images), jnp.asarray(batch.labels)


def test_train_steps_decrease_loss_on_a_fixed_batch(digits, compiled):
  setup, _, c = compiled
  _, state = train.init_state(setup, seed=0)
  images, labels = _fixed_batch(digits)
  losses, norms = [], []
  for _ in range(5):
    state, metrics = c.train_step(state, images, labels, np.float32(0.05))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  assert np.all(np.isfinite(losses)) and np.all(np.asarray(norms) > 0)
  assert np.all(np.diff(losses) < 0), losses
  assert losses[-1] < 0.9 * losses[0], losses


def test_train_mode_updates_batch_stats_eval_mode_uses_them(digits, compiled):
  setup, _, c = compiled
  _, state = train.init_state(setup, seed=0)
  images, labels = _fixed_batch(digits)
  mask = jnp.ones(labels.shape)
  before = c.eval_step(state.params, state.batch_stats, images, labels, mask)
  new_state, _ = c.train_step(state, images, labels, np.float32(0.0))  # lr 0: params unchanged
  _, fresh = train.init_state(setup, seed=0)
  for a, b in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(a, b)
  # Running statistics moved towards the batch's (momentum 0.9) ...
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(fresh.batch_stats),
                                                  jax.tree.leaves(new_state.batch_stats))]
  assert all(moved)
  # ... and evaluation uses them: same params, different running stats, different loss.
  after = c.eval_step(new_state.params, new_state.batch_stats, images, labels, mask)
  assert float(after[0]) != pytest.approx(float(before[0]), rel=1e-4)
  # Evaluation itself leaves the state alone (pure function of its inputs).
  again = c.eval_step(new_state.params, new_state.batch_stats, images, labels, mask)
  assert float(again[0]) == float(after[0])


def test_trial_fn_returns_a_full_result_and_honours_the_schedule(digits, compiled):
  setup, mesh, _ = compiled
  trial_fn = train.make_trial_fn(setup, digits, mesh=mesh, progress=False)
  config = TrialConfig(0.1, num_steps=4, warmup_steps=2, schedule="cosine", eval_every=3)
  result = trial_fn(config)
  assert result.train_loss.shape == (6,) and result.grad_norms.shape == (6,)
  assert result.eval_steps.tolist() == [3, 6]
  assert set(result.eval_metrics) == {"loss", "error_rate"}
  assert np.all((result.eval_metrics["error_rate"] >= 0) & (result.eval_metrics["error_rate"] <= 1))
  # Step 0 runs at lr 0 (warmup starts at 0), so steps 0 and 1 see the same parameters
  # but different batches; the seed fixes everything: a rerun is identical.
  again = trial_fn(config)
  np.testing.assert_array_equal(result.train_loss, again.train_loss)
  # Evaluation every step (the FAQ's early-instability check).
  every = trial_fn(TrialConfig(0.1, num_steps=3, eval_every=1))
  assert every.eval_steps.tolist() == [1, 2, 3]
  assert every.eval_metrics["loss"].shape == (3,) and np.all(np.isfinite(every.eval_metrics["loss"]))


def test_setup_validation_and_extra_overrides():
  setup = train.TrainSetup(MODEL)
  changed = setup.with_extra({"variant": "x", "group_strides": [[1, 1], [1, 1], [1, 1]],
                              "optimizer": "adam", "clip_percentile": 90.0})
  assert changed.model.group_strides == ((1, 1), (1, 1), (1, 1))
  assert changed.optimizer == "adam" and changed.clip_percentile == 90.0
  with pytest.raises(ValueError, match="unknown TrialConfig.extra"):
    setup.with_extra({"learning_rate_typo": 1})
  with pytest.raises(ValueError, match="optimizer"):
    train.TrainSetup(MODEL, optimizer="lamb")
  with pytest.raises(ValueError, match="batch_size"):
    train.TrainSetup(MODEL, batch_size=0)


def test_setup_applies_the_diagnosis_fixes():
  setup = train.TrainSetup(MODEL, telemetry=True)
  support = setup.fix_support()
  assert support.clipping and support.skip_spikes and support.optimizers == ("adam",)
  assert train.TrainSetup(MODEL, optimizer="adam").fix_support().optimizers == ()
  fixed = optstab.runner.apply_fixes(
      setup, TrialConfig(0.1, 5, clip_norm=1.5, optimizer="adam", skip_spikes=True))
  assert (fixed.clip_norm, fixed.optimizer, fixed.skip_spikes) == (1.5, "adam", True)
  assert optstab.runner.apply_fixes(setup, TrialConfig(0.1, 5)) == setup
  # Telemetry first (the unclipped norm), then the guard around clipping and the optimizer;
  # the injected learning rate is still found and set.
  params = {"w": np.ones(3, np.float32)}
  tx = train.make_optimizer(fixed)
  state = tx.init(params)
  state = optstab.runner.set_learning_rate(state, 0.5)
  updates, state = tx.update({"w": np.full(3, 10.0, np.float32)}, state, params)
  # Adam's first step moves each coordinate by the learning rate, whatever the clipping.
  assert float(optstab.global_norm(updates)) == pytest.approx(0.5 * np.sqrt(3), rel=1e-4)
  assert optax.tree.get(state, "total_skipped") == 0
