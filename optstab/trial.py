"""The trial interface: what a training function takes and returns.

A *trial* is one training run at one configuration. Everything that runs
trials -- the runner (``optstab.runner``), the executors
(``optstab.executors``) and the diagnosis (``optstab.diagnosis``: sweeps,
confirmation runs, detectors, warmup tuning, reports) -- drives a function
with this signature::

    def train(config: TrialConfig) -> TrialResult: ...

The function trains for ``config.num_steps`` steps at the learning-rate
schedule ``config.learning_rate_schedule()``, evaluates at
``config.eval_steps()`` and returns the per-step training loss, the evaluation
metrics and the unclipped global gradient norm of every step. A trial that
diverges should simply return its NaN/Inf losses; a trial that raises is
recorded (``TrialRecord``) as infeasible by the sweep, which then goes on.

This module is the base of that stack and imports nothing above it, so the
runner and the diagnosis share it without depending on each other. It was
``optstab.diagnosis.trial``, which still re-exports every name (objects pickled
under that path load).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from optstab import _validation

__all__ = ["TrialConfig", "TrialResult", "TrialRecord", "TrialFn", "SCHEDULES", "to_jsonable",
           "FixSupport", "fix_support", "with_fix_support", "FIX_FIELDS", "RATE_DIGITS"]

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

#: ``TrialConfig`` fields that ask the training function for a fix, with the
#: value that asks for none. They are left out of ``to_dict`` (and so of
#: ``key``) at that value, so trials stored before these fields existed resume.
FIX_FIELDS = {"clip_norm": None, "optimizer": None, "skip_spikes": False}

#: Significant digits of the learning rate in ``TrialConfig.key()``: rates that
#: differ only in float rounding (``10 * 0.031622776601683794`` and the grid's
#: ``0.31622776601683794``) are one trial.
RATE_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class TrialConfig:
  """One trial's configuration.

  Attributes:
    learning_rate: the base (peak) learning rate, eta / alpha in the FAQ.
    num_steps: training steps *after* warmup (the baseline's step budget).
    warmup_steps: linear warmup from 0 to ``learning_rate`` prepended to the
      base schedule (the playbook's warmup); 0 means no warmup. The trial then runs
      ``total_steps = warmup_steps + num_steps`` steps.
    schedule: the base schedule's shape after warmup, one of ``SCHEDULES``.
    eval_every: evaluate every this many steps (1 = every step, as the FAQ's
      early-instability check asks). The last step is always evaluated.
    seed: random seed for initialization and data order.
    extra: any other JSON-serializable knobs of the user's workload (model
      variant, clipping percentile, ...). Part of the trial's identity. An
      architecture fix (``FixSupport.architectures``) is a change of ``extra``.
      Checked and normalised at construction, so a trial that could not be
      stored never runs: keys must be strings; NumPy scalars become Python
      numbers, tuples and arrays lists, nested mappings sorted dicts; NaN,
      Inf and other objects raise ``ValueError`` naming the entry (e.g.
      ``extra['dropout']``).
    clip_norm: a fix: clip the global gradient norm to this value before the
      optimizer (``optax.clip_by_global_norm``); ``None``, no clipping. The
      training function must support it (``FixSupport.clipping``).
    optimizer: a fix: train with this optimizer instead of the function's own
      (one of ``FixSupport.optimizers``); ``None``, the function's own.
    skip_spikes: a fix: wrap the optimizer in ``optstab.skip_spikes``, which
      skips steps whose gradient norm or loss spikes (``FixSupport.skip_spikes``).
  """

  learning_rate: float
  num_steps: int
  warmup_steps: int = 0
  schedule: str = "constant"
  eval_every: int = 100
  seed: int = 0
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  clip_norm: Optional[float] = None
  optimizer: Optional[str] = None
  skip_spikes: bool = False

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
    if self.clip_norm is not None:
      _validation.check_positive("clip_norm", self.clip_norm)
      object.__setattr__(self, "clip_norm", float(self.clip_norm))
    if self.optimizer is not None and (not isinstance(self.optimizer, str) or not self.optimizer):
      raise ValueError(f"optimizer must be None or an optimizer's name; got {self.optimizer!r}.")
    if not isinstance(self.skip_spikes, (bool, np.bool_)):
      raise ValueError(f"skip_spikes must be True or False; got {self.skip_spikes!r}.")
    object.__setattr__(self, "skip_spikes", bool(self.skip_spikes))

  @property
  def fixes(self) -> dict[str, Any]:
    """The fixes this trial asks for: ``FIX_FIELDS`` not at their no-fix value."""
    return {k: getattr(self, k) for k, none in FIX_FIELDS.items() if getattr(self, k) != none}

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
    """The fields as a dict; the fix fields only where they ask for a fix."""
    data = dataclasses.asdict(self)
    for name, none in FIX_FIELDS.items():
      if data[name] == none:
        del data[name]
    return data

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "TrialConfig":
    return cls(**data)

  def key(self) -> str:
    """A stable identity string, used to resume sweeps and to match trials.

    The learning rate counts to ``RATE_DIGITS`` significant digits, so rates
    that mean the same (up to float rounding) are the same trial.
    """
    data = self.to_dict()
    data["learning_rate"] = float(f"{self.learning_rate:.{RATE_DIGITS}g}")
    return json.dumps(data, sort_keys=True)


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
    skipped_steps: the 1-based steps a step guard (``optstab.skip_spikes``)
      skipped, strictly increasing; empty when none was (or no guard ran).
      Their ``train_loss`` and ``grad_norms`` are still the batch's: a skipped
      step is measured, only its update is dropped.
  """

  config: TrialConfig
  train_loss: np.ndarray
  eval_steps: np.ndarray
  eval_metrics: dict[str, np.ndarray]
  grad_norms: np.ndarray
  skipped_steps: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0,), np.int64))

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
    _validation.check_steps("skipped_steps", self.skipped_steps, self.config.total_steps)
    self.skipped_steps = np.asarray(self.skipped_steps, dtype=np.int64).reshape(-1)
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
        # Only when a guard skipped a step, so results without one serialize as before.
        **({"skipped_steps": [int(s) for s in self.skipped_steps]} if len(self.skipped_steps) else {}),
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
        skipped_steps=np.asarray(data.get("skipped_steps", []), dtype=np.int64),
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


@dataclasses.dataclass(frozen=True)
class TrialRecord:
  """One finished trial: its result, or the error it raised.

  Attributes:
    config: the trial's configuration.
    result: what the training function returned (``None`` if it raised). Always
      the JSON round-tripped form, so a resumed sweep sees exactly what an
      uninterrupted one saw (Inf is stored, like NaN, as non-finite ``NaN``).
    error: ``"ExceptionType: message"`` if the training function raised.
    seconds: wall-clock seconds the trial took.
  """

  config: TrialConfig
  result: Optional[TrialResult]
  error: Optional[str] = None
  seconds: float = 0.0

  @property
  def key(self) -> str:
    return self.config.key()

  def to_dict(self) -> dict[str, Any]:
    return {
        "key": self.key,
        "status": "ok" if self.error is None else "error",
        "config": self.config.to_dict(),
        "result": None if self.result is None else self.result.to_dict(),
        "error": self.error,
        "seconds": float(self.seconds),
    }

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> "TrialRecord":
    """The record of one stored line; ``ValueError`` if ``data`` is not one."""
    if not isinstance(data, dict):
      raise ValueError(f"a trial record is a JSON object; got {type(data).__name__}")
    result = data.get("result")
    if result is None and data.get("error") is None:
      raise ValueError("a trial record holds a result or an error; this one holds neither "
                       f"(status {data.get('status')!r})")
    return cls(
        config=TrialConfig.from_dict(data["config"]),
        result=None if result is None else TrialResult.from_dict(result),
        error=data.get("error"),
        seconds=float(data.get("seconds", 0.0)),
    )

  def round_tripped(self) -> "TrialRecord":
    """The record as a reload from disk would return it."""
    return TrialRecord.from_dict(json.loads(json.dumps(self.to_dict())))


class TrialFn(Protocol):
  """A user's training function."""

  def __call__(self, config: TrialConfig) -> TrialResult: ...


@dataclasses.dataclass(frozen=True)
class FixSupport:
  """Which fixes a training function can apply when a ``TrialConfig`` asks.

  Warmup (``TrialConfig.warmup_steps``) and a lower learning rate are part of
  every trial's schedule, so every training function supports them. The
  others are changes the function must make to its own optimizer or model;
  ``diagnose`` tries only the ones declared here and says in its report which
  it could not try.

  Attributes:
    clipping: honours ``TrialConfig.clip_norm`` (clip the global gradient norm
      before the optimizer).
    optimizers: names accepted in ``TrialConfig.optimizer`` (e.g. ``("adam",)``
      for a function that trains with momentum by default).
    architectures: name -> ``TrialConfig.extra`` entries that switch the model
      to a variant the playbook recommends (e.g. ``{"pre-LN": {"norm_position":
      "pre"}}``, a ReZero variant).
    skip_spikes: honours ``TrialConfig.skip_spikes``.
  """

  clipping: bool = False
  optimizers: tuple[str, ...] = ()
  architectures: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  skip_spikes: bool = False

  def __post_init__(self):
    object.__setattr__(self, "clipping", bool(self.clipping))
    object.__setattr__(self, "skip_spikes", bool(self.skip_spikes))
    optimizers = tuple(_validation.check_sequence("optimizers", self.optimizers))
    for i, name in enumerate(optimizers):
      if not isinstance(name, str) or not name:
        raise ValueError(f"optimizers[{i}] must be an optimizer's name; got {name!r}.")
    object.__setattr__(self, "optimizers", optimizers)
    if not isinstance(self.architectures, Mapping):
      raise ValueError(f"architectures must map a name to TrialConfig.extra entries; got "
                       f"{self.architectures!r}.")
    checked = {}
    for name, extra in self.architectures.items():
      if not isinstance(name, str) or not isinstance(extra, Mapping) or not extra:
        raise ValueError(f"architectures must map a name to a non-empty mapping of "
                         f"TrialConfig.extra entries; got {name!r}: {extra!r}.")
      checked[name] = _validation.check_json_value(f"architectures[{name!r}]", extra)
    object.__setattr__(self, "architectures", checked)

  def unsupported(self, config: TrialConfig) -> list[str]:
    """The fixes ``config`` asks for that this support does not cover."""
    missing = []
    if config.clip_norm is not None and not self.clipping:
      missing.append(f"clip_norm={config.clip_norm:g}")
    if config.optimizer is not None and config.optimizer not in self.optimizers:
      missing.append(f"optimizer={config.optimizer!r}")
    if config.skip_spikes and not self.skip_spikes:
      missing.append("skip_spikes=True")
    return missing


def fix_support(train_fn: Any) -> FixSupport:
  """What ``train_fn`` declares it supports (its ``fix_support`` attribute), else warmup only."""
  support = getattr(train_fn, "fix_support", None)
  if support is None:
    return FixSupport()
  if not isinstance(support, FixSupport):
    raise ValueError(f"train_fn.fix_support must be a FixSupport; got {support!r}.")
  return support


@dataclasses.dataclass(frozen=True)
class FixAwareTrialFn:
  """A training function with its declared ``FixSupport`` (picklable if ``fn`` is)."""

  fn: Callable[[TrialConfig], TrialResult]
  fix_support: FixSupport

  def __call__(self, config: TrialConfig) -> TrialResult:
    return self.fn(config)


def with_fix_support(train_fn: Callable[[TrialConfig], TrialResult], *, clipping: bool = False,
                     optimizers: Sequence[str] = (),
                     architectures: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     skip_spikes: bool = False) -> FixAwareTrialFn:
  """Declares which fixes ``train_fn`` applies, so ``diagnose`` can try them.

  Example:
    >>> def train(config):  # applies config.clip_norm and config.optimizer
    ...   ...
    >>> train_fn = with_fix_support(train, clipping=True, optimizers=("adam",))
    >>> train_fn.fix_support.optimizers
    ('adam',)
  """
  support = FixSupport(clipping, tuple(optimizers), dict(architectures or {}), skip_spikes)
  return FixAwareTrialFn(train_fn, support)
