"""Tiny training problems with known answers, shared by the diagnosis tests.

* ``quadratic_trial``: SGD on 0.5 * sum(c_i w_i^2) with largest curvature L.
  Gradient descent diverges exactly when lr > 2 / L.
* ``early_instability_trial``: f(w, v) = 0.5 (1 + K v^2) w^2 + 0.5 m v^2 from
  (w, v) = (1, 1). The curvature along w is 1 + K v^2 = 100 at init and shrinks
  to 1 as training drives v to 0: rates above ~2/100 blow up at init, while a
  warmup lets the run reach the flat region first and then train at 10x that.
* ``noisy_numpy_trial``: a cheap deterministic numpy trial for store/resume
  tests (diverges above lr = 1).

Both JAX trials use ``optstab.sgd`` with the trial's own
``TrialConfig.learning_rate_schedule()`` (evaluated per step, passed as an
array so one compiled scan serves every trial of the same length).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab
from optstab.diagnosis.trial import TrialConfig, TrialResult

QUADRATIC_CURVATURES = (10.0, 3.0, 1.0, 0.3)  # L = 10: diverges iff lr > 0.2


def _schedule_values(config: TrialConfig) -> np.ndarray:
  schedule = config.learning_rate_schedule()
  return np.asarray(jax.vmap(schedule)(jnp.arange(config.total_steps)), dtype=np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(loss_name: str, total_steps: int, rates: jax.Array, init: jax.Array,
           clip_norm: jax.Array = jnp.inf):
  loss_fn = _LOSSES[loss_name]
  # clip_norm is an input (inf: no clipping), so clipped trials share the compiled scan.
  tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                   optstab.sgd(lambda count: rates[jnp.minimum(count, total_steps - 1)]))
  state = tx.init(init)

  def step(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (loss, optax.tree.norm(grads), loss_fn(params))

  _, (losses, norms, after) = jax.lax.scan(step, (init, state), length=total_steps)
  return losses, norms, after


def _quadratic_loss(w):
  return 0.5 * jnp.sum(jnp.asarray(QUADRATIC_CURVATURES) * w**2)


def _early_loss(p, big=99.0, small=0.1):
  w, v = p[0], p[1]
  return 0.5 * (1.0 + big * v**2) * w**2 + 0.5 * small * v**2


_LOSSES = {"quadratic": _quadratic_loss, "early": _early_loss}


def _result(config: TrialConfig, losses, norms, after) -> TrialResult:
  eval_steps = config.eval_steps()
  after = np.asarray(after, np.float64)
  return TrialResult(
      config=config,
      train_loss=np.asarray(losses, np.float64),
      eval_steps=eval_steps,
      eval_metrics={"loss": after[eval_steps - 1]},
      grad_norms=np.asarray(norms, np.float64),
  )


def quadratic_trial(config: TrialConfig) -> TrialResult:
  """SGD on a quadratic with curvatures QUADRATIC_CURVATURES from w = 1."""
  init = jnp.ones(len(QUADRATIC_CURVATURES))
  out = _train("quadratic", config.total_steps, _schedule_values(config), init)
  return _result(config, *out)


def early_instability_trial(config: TrialConfig) -> TrialResult:
  """SGD on the shrinking-curvature problem from (w, v) = (1, 1); applies ``config.clip_norm``."""
  init = jnp.array([1.0, 1.0])
  clip = jnp.inf if config.clip_norm is None else config.clip_norm
  out = _train("early", config.total_steps, _schedule_values(config), init, jnp.float32(clip))
  return _result(config, *out)


#: The same problem, declaring that it applies the clipping fix.
early_instability_trial_with_clipping = optstab.with_fix_support(early_instability_trial,
                                                                  clipping=True)


def noisy_numpy_trial(config: TrialConfig) -> TrialResult:
  """Gradient descent on 0.5 x^2 with seeded noise; diverges for lr > 2."""
  rng = np.random.default_rng(config.seed)
  n = config.total_steps
  x, losses, norms = 1.0, [], []
  for t in range(n):
    losses.append(0.5 * x * x + 0.01 * rng.random())
    norms.append(abs(x))
    x = x - config.learning_rate * x
  losses = np.array(losses)
  steps = config.eval_steps()
  return TrialResult(config, losses, steps, {"loss": losses[steps - 1]}, np.array(norms))


def test_quadratic_diverges_exactly_above_two_over_l():
  ok = quadratic_trial(TrialConfig(learning_rate=0.199, num_steps=400))
  bad = quadratic_trial(TrialConfig(learning_rate=0.201, num_steps=400))
  assert ok.train_loss[-1] < ok.train_loss[0]
  assert bad.train_loss[-1] > 10 * bad.train_loss[0]


def test_trial_uses_the_configured_warmup_schedule():
  config = TrialConfig(learning_rate=0.1, num_steps=4, warmup_steps=4)
  rates = _schedule_values(config)
  np.testing.assert_allclose(rates, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)


def test_early_problem_sharpness_is_high_at_init_and_low_at_the_optimum():
  # Why warmup works here: the top Hessian eigenvalue at init exceeds 2 / lr
  # for the unstable rate (~0.03) but at the optimum is below 2 / (10 x that).
  def top_eigenvalue(p):
    return float(jnp.linalg.eigvalsh(jax.hessian(_early_loss)(p)).max())

  unstable = 10 ** -1.5
  assert top_eigenvalue(jnp.array([1.0, 1.0])) > 2 / unstable > 2 / (10 * unstable)
  assert top_eigenvalue(jnp.array([0.0, 0.0])) < 2 / (10 * unstable)
