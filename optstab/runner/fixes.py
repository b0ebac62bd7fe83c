"""A trial's fixes in a setup: the clipping, optimizer and step-guard fixes ``TrialConfig`` asks for.

:func:`with_fixes` builds them into an optimizer chain, :func:`apply_fixes`
sets them in a setup dataclass's same-named fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import optax

from optstab import spike_guard
from optstab.trial import TrialConfig

__all__ = ["with_fixes", "apply_fixes", "step_metrics"]


def with_fixes(parts: list[optax.GradientTransformation], *, clip_norm: Optional[float] = None,
               skip_spikes: bool = False) -> list[optax.GradientTransformation]:
  """``parts`` (the optimizer, its learning rate injected last) with the diagnosis's fixes.

  The clipping fix, ``optax.clip_by_global_norm(clip_norm)``, goes first; the
  step guard, ``optstab.skip_spikes``, wraps the whole, so that it sees the
  gradient before any clipping. Chain telemetry (which must see the unclipped
  gradient too) before the result. Without fixes, ``parts`` as they are.
  """
  fixed = ([] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]) + list(parts)
  return [spike_guard.skip_spikes(optax.chain(*fixed))] if skip_spikes else fixed


def apply_fixes(setup: Any, config: TrialConfig) -> Any:
  """``setup`` (a dataclass) with the fixes ``config`` asks for set in its same-named fields.

  E.g. ``TrialConfig(..., clip_norm=1.5, optimizer="adam")`` sets the setup's
  ``clip_norm`` and ``optimizer``; the setup's own validation checks the values.
  """
  return dataclasses.replace(setup, **config.fixes)


def step_metrics(loss: jax.Array, grad_norm: jax.Array, opt_state: Any) -> dict[str, jax.Array]:
  """A training step's metrics for the runner's loop: ``{"loss", "grad_norm"}``, and ``"skipped"``.

  ``"skipped"`` (whether ``optstab.skip_spikes`` dropped this step's update)
  is there only when the optimizer state holds a step guard, so the loop
  records the skipped steps (``TrialResult.skipped_steps``) without a
  per-step transfer.
  """
  metrics = {"loss": loss, "grad_norm": grad_norm}
  skipped = optax.tree.get(opt_state, "skipped")
  if skipped is not None:
    metrics["skipped"] = skipped
  return metrics
