"""The learning rate as an input of the compiled step.

The optimizer is wrapped by :func:`injectable_learning_rate`
(``optax.inject_hyperparams``) and the step sets the rate of step ``t`` with
:func:`set_learning_rate`, so a sweep over rates, warmups or seeds compiles
once per model structure.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import optax

from optstab import spike_guard

__all__ = ["injectable_learning_rate", "set_learning_rate"]


def injectable_learning_rate(
    make_optimizer: Callable[[Any], optax.GradientTransformation]) -> optax.GradientTransformation:
  """``make_optimizer(learning_rate)`` with its rate held in the state, set per step.

  ``optax.inject_hyperparams(make_optimizer)(learning_rate=0.0)``: the rate is
  a float32 leaf of the optimizer state that :func:`set_learning_rate`
  overwrites inside the compiled step, so every rate and schedule shares one
  compilation (a schedule closed over a Python float would recompile per rate,
  optax issue 577). Bind the other hyperparameters with ``functools.partial``
  so they stay constants.
  """
  return optax.inject_hyperparams(make_optimizer)(learning_rate=0.0)


def set_learning_rate(opt_state: Any, learning_rate: Any) -> Any:
  """``opt_state`` with the injected learning rate replaced.

  ``opt_state`` is the state of :func:`injectable_learning_rate`'s
  transformation, of an ``optax.chain`` whose *last* element is one (the
  rate is applied after clipping and telemetry), or of ``optstab.skip_spikes``
  around either.
  """
  if isinstance(opt_state, spike_guard.SkipSpikesState):  # optstab.skip_spikes around the optimizer
    return opt_state._replace(inner_state=set_learning_rate(opt_state.inner_state, learning_rate))
  if hasattr(opt_state, "hyperparams"):
    hyperparams = dict(opt_state.hyperparams)
    old = hyperparams["learning_rate"]
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.asarray(old).dtype)
    return opt_state._replace(hyperparams=hyperparams)
  if isinstance(opt_state, tuple) and opt_state:
    *rest, inner = opt_state
    return type(opt_state)((*rest, set_learning_rate(inner, learning_rate)))
  raise TypeError(f"opt_state has no injected learning rate: expected an "
                  f"optax.inject_hyperparams state, or a chain ending in one; got "
                  f"{type(opt_state).__name__}.")
