"""Learning-rate warmup (the FAQ's "Learning rate warmup") and the arithmetic of a warmup sweep.

The FAQ's warmup ramps the learning rate linearly from 0 to a
``base_learning_rate`` over ``warmup_steps`` steps, then trains at that rate;
to use warmup with an existing decay schedule it is *prepended* to that
schedule, shifting it by ``warmup_steps``. Every schedule here is an optax
schedule (``step -> value``), safe to call with a traced step under ``jax.jit``.

One compile per sweep. A schedule built from a trial's rate (``optax.cosine_decay_schedule(lr,
...)``, ``TrialConfig.learning_rate_schedule()``) holds that rate as a Python
constant, so a jitted training loop that calls it compiles again for every
rate (optax issue 577). ``schedule_values`` evaluates the schedule on the host
once per trial, without compiling anything per rate; the loop takes the
per-step rates as an input array (``jax.lax.scan`` over them, or
``optax.inject_hyperparams`` fed one value per step), so every rate of a
sweep reuses one compiled program.

The sweep helpers encode the FAQ's rules of thumb: sweep ``warmup_steps`` over
orders of magnitude but never above 10% of ``max_train_steps``, pair it with
``post_warmup_steps = 2 * warmup_steps``, aim for a base learning rate 10x (or
100x) the unstable one, and lengthen training when stable training needs more
than 5% of it for warmup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optstab import _validation

__all__ = [
    "warmup",
    "prepend_warmup",
    "total_steps_with_warmup",
    "warmup_sweep_grid",
    "post_warmup_steps_for",
    "warmup_base_learning_rates",
    "warmup_length_advice",
    "schedule_values",
]


def _check_warmup_steps(warmup_steps: int) -> None:
  # Steps are int32 counters in optax states (they saturate at 2**31 - 1).
  _validation.check_positive_int("warmup_steps", warmup_steps, maximum=2**31 - 1,
                                 why=" (optax's step counters are int32)")


def _linear_ramp(peak: jax.typing.ArrayLike, warmup_steps: int) -> optax.Schedule:
  """``peak * min(max(t, 0), warmup_steps) / warmup_steps``."""

  def schedule(step: jax.typing.ArrayLike) -> jax.Array:
    # Fraction first, then one multiply: value(t) = peak * (t / W). optax's
    # linear_schedule computes (I - E) * (1 - t / W) + E instead, which
    # cancels digits near t = 0 (about 1e-5 relative error at t = 1 for
    # W = 1000 in float32); this form is exact at t = 0 and t = W and within
    # one float32 rounding of peak * t / W elsewhere.
    # Under jit XLA may turn t / W into t * (1 / W), which is not exactly 1 at
    # t = W; the select makes the value at and after W exactly `peak`.
    t = jnp.clip(jnp.asarray(step), 0, warmup_steps)
    return jnp.where(t >= warmup_steps, peak, peak * (t / warmup_steps))

  return schedule


def warmup(base_learning_rate: float, warmup_steps: int) -> optax.Schedule:
  r"""Linear warmup from 0 to ``base_learning_rate``, then constant (the FAQ's warmup).

  .. math::

    \eta_t = \eta_{\text{base}} \cdot \frac{\min(t, W)}{W}

  where :math:`W` is ``warmup_steps`` and :math:`t` counts from 0. The values
  at the boundaries are, exactly (up to one float32 rounding of the product):

  ========================  =====================================
  step                      learning rate
  ========================  =====================================
  ``0``                     ``0`` (the FAQ ramps "from 0"; the first update does nothing)
  ``1``                     ``base_learning_rate / warmup_steps``
  ``warmup_steps - 1``      ``base_learning_rate * (warmup_steps - 1) / warmup_steps``
  ``warmup_steps`` and on   ``base_learning_rate``
  ========================  =====================================

  Negative steps give 0. The FAQ's "constant for ``post_warmup_steps``" is
  this schedule run for ``warmup_steps + post_warmup_steps`` steps (see
  :func:`post_warmup_steps_for`).

  Args:
    base_learning_rate: the learning rate reached at the end of the warmup, a
      finite real >= 0.
    warmup_steps: length of the ramp, an integer in [1, 2**31 - 1].

  Returns:
    An optax schedule ``step -> learning rate``, jit-safe (``step`` may be
    traced).

  Example:
    >>> import optstab
    >>> lr = optstab.warmup(0.1, warmup_steps=1000)
    >>> float(lr(0)), float(lr(500)), float(lr(1000)), float(lr(5000))
    (0.0, 0.05000000074505806, 0.10000000149011612, 0.10000000149011612)

  .. warning::
    ``optax.warmup_constant_schedule`` / ``optax.linear_schedule`` compute the
    ramp as ``(I - E) * (1 - t / W) + E``; the values agree mathematically but
    theirs loses about four digits at ``t = 1`` in float32 by cancellation.
  """
  base_learning_rate = _validation.check_non_negative("base_learning_rate", base_learning_rate)
  _check_warmup_steps(warmup_steps)
  return _linear_ramp(base_learning_rate, warmup_steps)


def prepend_warmup(schedule: optax.Schedule | float, warmup_steps: int) -> optax.Schedule:
  r"""Prepends a linear warmup to an existing schedule, shifting it (the FAQ's warmup).

  .. math::

    \eta_t = \begin{cases}
      s(0) \cdot t / W, & t < W \\
      s(t - W), & t \geq W
    \end{cases}

  where :math:`s` is ``schedule`` and :math:`W` is ``warmup_steps``. The ramp
  ends at the schedule's first value, so the rate is continuous at ``t = W``,
  and the whole original schedule runs after the warmup: a schedule built for
  ``N`` steps now needs :func:`total_steps_with_warmup` ``(N, W) = N + W``.

  This is ``optax.join_schedules([ramp, schedule], [W])``; ``s(0)`` is
  evaluated once, here, so ``schedule`` must accept a concrete step, and it
  must be a finite real >= 0 (``ValueError`` otherwise: a negative rate would
  make every optimizer ascend). Later values are not checked.

  Args:
    schedule: the baseline schedule (``step -> value``), or a constant.
    warmup_steps: length of the ramp, an integer in [1, 2**31 - 1].

  Returns:
    An optax schedule, jit-safe if ``schedule`` is.

  Example:
    >>> import optax, optstab
    >>> cosine = optax.cosine_decay_schedule(0.1, decay_steps=10_000)
    >>> lr = optstab.prepend_warmup(cosine, warmup_steps=1000)
    >>> float(lr(0)), float(lr(1000)), bool(lr(6000) == cosine(5000))
    (0.0, 0.10000000149011612, True)
  """
  _check_warmup_steps(warmup_steps)
  if not callable(schedule):
    schedule = optax.constant_schedule(_validation.check_non_negative("schedule", schedule))
  peak = schedule(0)
  # A negative (or NaN) peak would ramp to an ascending rate: refused here, where s(0) is known.
  _validation.check_non_negative("schedule(0)", peak)
  return optax.join_schedules([_linear_ramp(peak, warmup_steps), schedule], [warmup_steps])


def total_steps_with_warmup(num_steps: int, warmup_steps: int) -> int:
  """Training length once a warmup is prepended: ``num_steps + warmup_steps``.

  The FAQ's example: a 10,000-step baseline with 1,000 warmup steps becomes an
  11,000-step run (compare the two with best-checkpoint selection).

  Args:
    num_steps: the baseline's number of steps, an integer >= 1.
    warmup_steps: an integer >= 0 (0: no warmup).

  Returns:
    ``num_steps + warmup_steps``.

  Example:
    >>> import optstab
    >>> optstab.total_steps_with_warmup(10_000, 1_000)
    11000
  """
  _validation.check_positive_int("num_steps", num_steps)
  _validation.check_positive_int("warmup_steps", warmup_steps, minimum=0)
  return int(num_steps) + int(warmup_steps)


def warmup_sweep_grid(
    max_train_steps: int,
    candidates: Sequence[int] = (10, 1000, 10000, 100000),
    max_fraction: float = 0.1,
) -> tuple[int, ...]:
  """The ``warmup_steps`` values to sweep (the FAQ's warmup recipe).

  The FAQ sweeps ``warmup_steps`` over orders of magnitude, e.g.
  ``[10, 1000, 10000, 100000]``, and the largest point must not exceed 10% of
  ``max_train_steps``: candidates above ``max_fraction * max_train_steps`` are
  dropped (a candidate exactly at the limit is kept).

  Args:
    max_train_steps: the training budget, an integer >= 1.
    candidates: warmup lengths to consider, integers >= 1.
    max_fraction: the largest allowed ``warmup_steps / max_train_steps``, in
      (0, 1].

  Returns:
    The kept candidates, sorted ascending, without duplicates.

  Raises:
    ValueError: on bad arguments, or when every candidate is above the limit
      (the message names ``max_train_steps``).

  Example:
    >>> import optstab
    >>> optstab.warmup_sweep_grid(100_000)
    (10, 1000, 10000)
  """
  _validation.check_positive_int("max_train_steps", max_train_steps)
  _validation.check_in_range("max_fraction", max_fraction, 0.0, 1.0,
                             low_inclusive=False, high_inclusive=True)
  candidates = tuple(candidates)
  if not candidates:
    raise ValueError("candidates must be a non-empty sequence of integers >= 1; got ().")
  for c in candidates:
    _validation.check_positive_int("candidates", c)
  limit = max_fraction * max_train_steps
  kept = tuple(sorted({int(c) for c in candidates if c <= limit}))
  if not kept:
    raise ValueError(
        f"max_train_steps must be large enough that some warmup candidate is at most "
        f"{max_fraction:g} * max_train_steps; got {max_train_steps!r} (limit {limit:g}, "
        f"smallest candidate {min(candidates)}).")
  return kept


def post_warmup_steps_for(warmup_steps: int, factor: float = 2) -> int:
  """Steps to train at the constant base rate after warmup (the FAQ's warmup recipe).

  The FAQ: ``post_warmup_steps = 2 * warmup_steps`` is usually fine.

  Args:
    warmup_steps: an integer >= 1.
    factor: a finite real > 0 (default 2).

  Returns:
    ``round(factor * warmup_steps)``, at least 1.

  Example:
    >>> import optstab
    >>> optstab.post_warmup_steps_for(1000)
    2000
  """
  _validation.check_positive_int("warmup_steps", warmup_steps)
  _validation.check_positive("factor", factor)
  return max(1, int(round(float(factor) * int(warmup_steps))))


def warmup_base_learning_rates(
    unstable_base_learning_rate: float,
    factors: Sequence[float] = (10.0,),
) -> tuple[float, ...]:
  """Base learning rates to try with warmup (the FAQ's warmup recipe).

  Warmup should give access to a base learning rate at least an order of
  magnitude above ``unstable_base_learning_rate`` (the rate at which the model
  goes unstable, found with a learning-rate sweep). The default tries 10x; pass
  ``factors=(10.0, 100.0)`` to also try 100x (the FAQ: "100x is possible by
  re-running").

  Args:
    unstable_base_learning_rate: a finite real > 0.
    factors: multipliers, each a finite real > 1 (the FAQ asks for >= 10).

  Returns:
    ``unstable_base_learning_rate * f`` for each factor, in the given order.

  Example:
    >>> import optstab
    >>> optstab.warmup_base_learning_rates(0.01, factors=(10.0, 100.0))
    (0.1, 1.0)
  """
  _validation.check_positive("unstable_base_learning_rate", unstable_base_learning_rate)
  factors = tuple(factors)
  if not factors:
    raise ValueError("factors must be a non-empty sequence of reals > 1; got ().")
  for f in factors:
    _validation.check_in_range("factors", f, 1.0, math.inf, low_inclusive=False)
  return tuple(float(unstable_base_learning_rate) * float(f) for f in factors)


def warmup_length_advice(
    warmup_steps: int, max_train_steps: int, max_fraction: float = 0.05
) -> str | None:
  """Advice when stable training needs a long warmup (the FAQ's warmup recipe).

  If stable training needs ``warmup_steps`` above 5% of ``max_train_steps``,
  the FAQ says to increase ``max_train_steps``.

  Args:
    warmup_steps: the warmup length that trained stably, an integer >= 1.
    max_train_steps: the training budget, an integer >= 1.
    max_fraction: the threshold fraction, in (0, 1] (default 0.05).

  Returns:
    ``None`` when ``warmup_steps <= max_fraction * max_train_steps``, else a
    sentence saying by how much to raise ``max_train_steps``.

  Example:
    >>> import optstab
    >>> optstab.warmup_length_advice(1000, 100_000) is None
    True
    >>> print(optstab.warmup_length_advice(1000, 10_000))
    warmup_steps=1000 is 10% of max_train_steps=10000 (more than 5%): increase max_train_steps to at least 20000.
  """
  _validation.check_positive_int("warmup_steps", warmup_steps)
  _validation.check_positive_int("max_train_steps", max_train_steps)
  _validation.check_in_range("max_fraction", max_fraction, 0.0, 1.0,
                             low_inclusive=False, high_inclusive=True)
  if warmup_steps <= max_fraction * max_train_steps:
    return None
  needed = math.ceil(warmup_steps / max_fraction)
  return (f"warmup_steps={warmup_steps} is {100 * warmup_steps / max_train_steps:.3g}% of "
          f"max_train_steps={max_train_steps} (more than {100 * max_fraction:g}%): "
          f"increase max_train_steps to at least {needed}.")


def schedule_values(
    schedule: optax.Schedule | float, num_steps: int, dtype: np.dtype = np.float32
) -> np.ndarray:
  r"""A schedule's values at steps ``0`` to ``num_steps - 1``, as a host array.

  .. math::

    v_t = s(t), \quad t = 0, \dots, \text{num\_steps} - 1

  Pass ``v`` to a compiled training loop as data (e.g. ``jax.lax.scan(step,
  carry, v)``, each step setting ``opt_state.hyperparams["learning_rate"]`` of
  an ``optax.inject_hyperparams`` optimizer): the compiled program then depends
  on the run's length only, not on the rate, so a sweep compiles once per
  model. The schedule is vectorized with ``jax.vmap`` and run op by op (not
  under ``jit``), so a new rate compiles nothing here either; a schedule that
  does not vectorize is called step by step.

  Args:
    schedule: an optax schedule (``step -> value``), or a constant.
    num_steps: how many steps, an integer >= 1.
    dtype: the array's dtype (float32 by default, as the loop's).

  Returns:
    A NumPy array of shape ``[num_steps]``.

  Example:
    >>> import optstab
    >>> optstab.schedule_values(optstab.warmup(0.1, warmup_steps=4), 6).tolist()
    [0.0, 0.02500000037252903, 0.05000000074505806, 0.07500000298023224, 0.10000000149011612, 0.10000000149011612]
  """
  _validation.check_positive_int("num_steps", num_steps)
  if not callable(schedule):
    return np.full(num_steps, schedule, dtype=dtype)
  try:
    values = np.asarray(jax.vmap(schedule)(jnp.arange(num_steps)), dtype=dtype)
    if values.shape == (num_steps,):
      return values
  except Exception:  # pylint: disable=broad-except
    pass  # a schedule written for concrete Python steps
  return np.asarray([schedule(t) for t in range(num_steps)], dtype=dtype)
