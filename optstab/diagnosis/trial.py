"""The trial interface: what a user's training function takes and returns.

A *trial* is one training run at one configuration. Everything in
``optstab.diagnosis`` (sweeps, confirmation runs, detectors, warmup tuning,
reports) drives a user-supplied function with this signature::

    def train(config: TrialConfig) -> TrialResult: ...

The function trains for ``config.num_steps`` steps at the learning-rate
schedule ``config.learning_rate_schedule()``, evaluates at
``config.eval_steps()`` and returns the per-step training loss, the evaluation
metrics and the unclipped global gradient norm of every step. A trial that
diverges should simply return its NaN/Inf losses; a trial that raises is
recorded as infeasible by the sweep, which then goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from optstab import _validation

__all__ = ["TrialConfig", "TrialResult", "TrialFn", "SCHEDULES", "to_jsonable"]

def to_jsonable(value: Any) -> Any:
  """``value`` with NumPy scalars and arrays made Python, NaN/Inf made ``None``.

  The result dumps as strict JSON (``json.dump(..., allow_nan=False)``);
  mappings get string keys and tuples become lists.
  """
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist())
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    x = float(value)
    return x if math.isfinite(x) else None
  return value


#: Base (post-warmup) schedule shapes a ``TrialConfig`` can name.
SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrialConfig:
  """One trial's configuration.

  Attributes:
    learning_rate: the base (peak) learning rate, eta / alpha in the FAQ.
    num_steps: training steps *after* warmup (the baseline's step budget).
    warmup_steps: linear warmup from 0 to ``learning_rate`` prepended to the
      base schedule (FAQ S4); 0 means no warmup. The trial then runs
      ``total_steps = warmup_steps + num_steps`` steps.
    schedule: the base schedule's shape after warmup, one of ``SCHEDULES``.
    eval_every: evaluate every this many steps (1 = every step, as the FAQ's
      early-instability check asks). The last step is always evaluated.
    seed: random seed for initialization and data order.
    extra: any other JSON-serializable knobs of the user's workload (model
      variant, clipping percentile, ...). Part of the trial's identity.
      Checked and normalised at construction, so a trial that could not be
      stored never runs: keys must be strings; NumPy scalars become Python
      numbers, tuples and arrays lists, nested mappings sorted dicts; NaN,
      Inf and other objects raise ``ValueError`` naming the entry (e.g.
      ``extra['dropout']``).
  """

  learning_rate: float
  num_steps: int
  warmup_steps: int = 0
  schedule: str = "constant"
  eval_every: int = 100
  seed: int = 0
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _validation.check_positive("learning_rate", self.learning_rate)
    _validation.check_positive_int("num_steps", self.num_steps)
    _validation.check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
    _validation.check_positive_int("eval_every", self.eval_every)
    _validation.check_positive_int("seed", self.seed, minimum=0)
    _validation.check_one_of("schedule", self.schedule, SCHEDULES)
    # Normalize so that equal configs hash and serialize identically.
    object.__setattr__(self, "learning_rate", float(self.learning_rate))
    if not isinstance(self.extra, Mapping):
      raise ValueError(f"extra must be a mapping of str keys to JSON values; got {self.extra!r}.")
    object.__setattr__(self, "extra", _validation.check_json_value("extra", self.extra))

  @property
  def total_steps(self) -> int:
    """Steps the trial runs: warmup plus the base schedule."""
    return self.warmup_steps + self.num_steps

  def eval_steps(self) -> np.ndarray:
    """The 1-based steps after which the trial evaluates (always the last)."""
    steps = np.arange(self.eval_every, self.total_steps + 1, self.eval_every)
    if steps.size == 0 or steps[-1] != self.total_steps:
      steps = np.append(steps, self.total_steps)
    return steps.astype(np.int64)

  def learning_rate_schedule(self) -> Callable[[Any], Any]:
    """The optax schedule of this trial: warmup prepended to the base shape."""
    import optax  # local: keep the dataclass importable without jax set up

    from optstab import schedules

    if self.schedule == "constant":
      base = optax.constant_schedule(self.learning_rate)
    elif self.schedule == "cosine":
      base = optax.cosine_decay_schedule(self.learning_rate, self.num_steps)
    else:
      base = optax.linear_schedule(self.learning_rate, 0.0, self.num_steps)
    if self.warmup_steps == 0:
      return base
    return schedules.prepend_warmup(base, self.warmup_steps)

  def replace(self, **changes: Any) -> "TrialConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "TrialConfig":
    return cls(**data)

  def key(self) -> str:
    """A stable identity string, used to resume sweeps."""
    return json.dumps(self.to_dict(), sort_keys=True)


@dataclasses.dataclass
class TrialResult:
  """What a trial returns.

  Attributes:
    config: the configuration that produced it.
    train_loss: shape ``[total_steps]``, the training loss of every step
      (NaN/Inf allowed: that is how divergence shows).
    eval_steps: shape ``[num_evals]``, the 1-based steps evaluated: strictly
      increasing integers in ``[1, total_steps]``.
    eval_metrics: name -> shape ``[num_evals]`` array aligned with
      ``eval_steps`` (e.g. ``{"loss": ..., "error_rate": ...}``).
    grad_norms: shape ``[total_steps]``, the unclipped global L2 gradient norm
      of every step.
  """

  config: TrialConfig
  train_loss: np.ndarray
  eval_steps: np.ndarray
  eval_metrics: dict[str, np.ndarray]
  grad_norms: np.ndarray

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    """Checks (and normalises) every field; ``ValueError`` naming the first bad one.

    Runs at construction, and again when the trial returns, since a
    ``TrialResult`` can be changed after it was built.
    """
    if not isinstance(self.config, TrialConfig):
      raise ValueError(f"config must be a TrialConfig; got {type(self.config).__name__}.")
    if not isinstance(self.eval_metrics, Mapping):
      raise ValueError("eval_metrics must be a mapping of metric names to arrays; got "
                       f"{type(self.eval_metrics).__name__}.")
    for name in self.eval_metrics:
      if not isinstance(name, str):
        raise ValueError(f"eval_metrics keys must be strings (metric names); got {name!r}.")
    self.train_loss = _real_array("train_loss", self.train_loss)
    self.grad_norms = _real_array("grad_norms", self.grad_norms)
    _validation.check_steps("eval_steps", self.eval_steps, self.config.total_steps)
    self.eval_steps = np.asarray(self.eval_steps, dtype=np.int64)
    self.eval_metrics = {
        k: _real_array(f"eval_metrics[{k!r}]", v) for k, v in self.eval_metrics.items()
    }
    n = self.config.total_steps
    if self.train_loss.shape != (n,):
      raise ValueError(f"train_loss must have shape ({n},); got {self.train_loss.shape}.")
    if self.grad_norms.shape != (n,):
      raise ValueError(f"grad_norms must have shape ({n},); got {self.grad_norms.shape}.")
    for name, values in self.eval_metrics.items():
      if values.shape != self.eval_steps.shape:
        raise ValueError(
            f"eval_metrics[{name!r}] must align with eval_steps "
            f"{self.eval_steps.shape}; got {values.shape}."
        )

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready (NaN/Inf become None)."""

    def clean(a: np.ndarray) -> list:
      return to_jsonable(np.asarray(a, np.float64))

    return {
        "config": self.config.to_dict(),
        "train_loss": clean(self.train_loss),
        "eval_steps": [int(s) for s in self.eval_steps],
        "eval_metrics": {k: clean(v) for k, v in self.eval_metrics.items()},
        "grad_norms": clean(self.grad_norms),
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "TrialResult":
    def restore(xs: list) -> np.ndarray:
      return np.array([np.nan if x is None else x for x in xs], dtype=np.float64)

    return cls(
        config=TrialConfig.from_dict(data["config"]),
        train_loss=restore(data["train_loss"]),
        eval_steps=np.asarray(data["eval_steps"], dtype=np.int64),
        eval_metrics={k: restore(v) for k, v in data["eval_metrics"].items()},
        grad_norms=restore(data["grad_norms"]),
    )


def _real_array(name: str, values: Any) -> np.ndarray:
  """``values`` as float64; ``ValueError`` naming ``name`` if they are not real numbers."""
  try:
    array = np.asarray(values)
    if np.iscomplexobj(array):
      raise TypeError("complex values")
    return array.astype(np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must hold real numbers; got {type(values).__name__} ({e}).") from e


class TrialFn(Protocol):
  """A user's training function."""

  def __call__(self, config: TrialConfig) -> TrialResult: ...
