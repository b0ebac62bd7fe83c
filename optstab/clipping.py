"""Gradient clipping by global norm (the FAQ's "Gradient clipping"), with a fixed or a percentile threshold.

The FAQ's rule: if :math:`\\|g\\| > \\lambda` then :math:`g' = \\lambda g / \\|g\\|`,
with :math:`\\|g\\|` the L2 norm of the *whole* gradient (all parameters
together) and :math:`\\lambda` chosen at the 90th percentile of the unclipped
gradient norms seen in training.

* Fixed :math:`\\lambda`: ``optax.clip_by_global_norm`` is exactly this rule
  (re-exported here as :func:`clip_by_global_norm`; ``tests/test_clipping.py``
  proves it against a NumPy reference). Pick :math:`\\lambda` from a recorded
  log of unclipped norms with :func:`clip_threshold`.
* Adaptive :math:`\\lambda`: :func:`percentile_clip` keeps the last
  ``window_size`` unclipped norms on the device and clips at their percentile.

Positions on the FAQ's two open questions
-----------------------------------------

*Clipping during warmup.* Clip from step 0 when you know a threshold: pass
``initial_threshold`` (e.g. :func:`clip_threshold` of a previous run's log)
and it is in force until the window holds ``min_history`` norms; after that the
percentile takes over. Without ``initial_threshold``, :func:`percentile_clip`
does *not* clip until it has ``min_history`` finite norms: the 90th percentile
of a handful of samples is noise, and in an early-unstable run those first
samples are precisely the outliers (the FAQ's Figure 9 starts near 1e5 and
settles near 2-4), so a threshold estimated from them would not bind anyway.
Early instability is what warmup is for; the two compose (warmup keeps
the first updates small while the window fills).

*Adaptive thresholds.* :func:`percentile_clip` is optstab's adaptive
technique. A percentile of a sliding window tracks the "typical" norm as it
drifts during training (the FAQ wants the threshold "just above the typical
norm"), and unlike a mean or a mean + k std rule it is robust: one spike moves
the 90th percentile by at most one order statistic. Its failure mode is that it
follows the norm: a norm that grows slowly (a run drifting towards divergence)
raises the threshold with it, so it is cut only by the window's lag (a few
percent) and never brought back down; and a burst of large norms
longer than ``(1 - percentile / 100) * window_size`` steps becomes the new
"typical". ``max_threshold`` caps the threshold against that drift. When a
recorded log is available, the FAQ's own procedure (a fixed :math:`\\lambda`
from :func:`clip_threshold`) is the simpler, more predictable choice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optstab import _validation
from optstab.telemetry import global_norm

__all__ = [
    "clip_by_global_norm",
    "clip_threshold",
    "thresholds_in_force",
    "percentile_clip",
    "PercentileClipState",
]

#: ``PercentileClipState.threshold`` while no threshold is in force, and the
#: padding of the window's unused slots: the largest float32, a finite stand-in
#: for +inf (no finite norm exceeds it, and it keeps ``jax_debug_infs`` quiet).
NO_THRESHOLD = float(np.finfo(np.float32).max)

# The percentile's rank is computed in float32, exact for integers up to 2**24.
_MAX_WINDOW = 2**24

# The FAQ's fixed-threshold rule, as is: optax computes ||g|| with
# optax.tree.norm over all leaves and returns g when ||g|| < lambda, else
# (g / ||g||) * lambda (at ||g|| == lambda both branches give g).
clip_by_global_norm = optax.clip_by_global_norm


def clip_threshold(norms: Any, percentile: float = 90.0) -> float:
  """The clipping threshold :math:`\\lambda` from a log of unclipped norms (the FAQ's recipe).

  The FAQ chooses :math:`\\lambda` at the 90th percentile of the gradient
  norms; the percentile is computed as ``numpy.percentile(finite_norms,
  percentile)`` with NumPy's default ``method="linear"`` (Hyndman & Fan type 7:
  with the ``n`` finite norms sorted as ``x_0 <= ... <= x_{n-1}``, position
  ``h = (n - 1) * percentile / 100`` and the result
  ``x_floor(h) + (h - floor(h)) * (x_floor(h)+1 - x_floor(h))``). NaN and
  infinite entries (diverged steps) are ignored.

  Args:
    norms: a 1-D array-like of recorded unclipped global gradient norms.
    percentile: in (0, 100] (default 90).

  Returns:
    The threshold, a Python float.

  Raises:
    ValueError: if ``percentile`` is outside (0, 100], or ``norms`` is empty,
      not 1-D, or has no finite entry.

  Example:
    >>> import optstab
    >>> optstab.clip_threshold([1.0, 2.0, 3.0, 4.0, float("nan"), 5.0])
    4.6
  """
  _validation.check_percentile("percentile", percentile)
  arr = _validation.check_norm_log("norms", norms)
  return float(np.percentile(arr[np.isfinite(arr)], float(percentile)))


def thresholds_in_force(norms: Any, percentile: float = 90.0, *, window_size: int = 1000,
                        min_history: int | None = None,
                        initial_threshold: float | None = None) -> np.ndarray:
  r"""The threshold :func:`percentile_clip` applied at each step, replayed from its norm log.

  For a plot of an adaptive threshold as it adapted: entry ``t`` is
  :math:`\lambda_t` of :func:`percentile_clip` (the percentile of the last
  ``window_size`` finite, non-zero norms before step ``t``, once there are
  ``min_history`` of them; ``initial_threshold``, or ``inf`` for none, before),
  computed in float64 on the host, so it can differ from the device's float32
  value in the last digits.

  Args:
    norms: 1-D unclipped global norms, one per step (what
      :func:`optstab.record_grad_norm` logs).
    percentile: in (0, 100] (default 90).
    window_size: as in :func:`percentile_clip`, an integer >= 1.
    min_history: as in :func:`percentile_clip`, in [1, window_size];
      ``None`` means ``min(100, window_size)``.
    initial_threshold: as in :func:`percentile_clip`.

  Returns:
    A float64 array, one threshold per step (``inf`` where none was in force).

  Example:
    >>> import optstab
    >>> optstab.thresholds_in_force([1.0, 2.0, 3.0, 4.0], 50.0, window_size=2,
    ...                             min_history=2, initial_threshold=10.0).tolist()
    [10.0, 10.0, 1.5, 2.5]
  """
  _validation.check_percentile("percentile", percentile)
  window = _as_int("window_size", window_size, minimum=1)
  need = min(100, window) if min_history is None else _as_int("min_history", min_history,
                                                               minimum=1)
  if need > window:
    raise ValueError(f"min_history must be in [1, window_size={window}]; got {min_history!r}.")
  if initial_threshold is not None:
    _validation.check_positive("initial_threshold", initial_threshold)
  arr = _validation.check_norm_log("norms", norms)
  start = np.inf if initial_threshold is None else float(initial_threshold)
  out = np.empty(arr.size, np.float64)
  history: list[float] = []
  for t, norm in enumerate(arr):
    out[t] = np.percentile(history, float(percentile)) if len(history) >= need else start
    if np.isfinite(norm) and norm != 0:
      history = (history + [float(norm)])[-window:]
  return out


class PercentileClipState(NamedTuple):
  """State of :func:`percentile_clip`.

  Field names are unique within optax and optstab states, so
  ``optax.tree.get(opt_state, "grad_norm")`` (or ``"threshold"``,
  ``"clipped"``, ``"num_clipped"``...) finds them anywhere in a chain.

  Attributes:
    norm_history: float32 ``[window_size]`` ring buffer of the last finite,
      non-zero unclipped norms, in arrival order (unused slots hold the
      finite placeholder :data:`NO_THRESHOLD`, the largest float32).
    sorted_history: the same norms sorted ascending (placeholders last),
      kept sorted incrementally: one O(window) removal and insertion per
      step instead of an O(window log window) sort.
    history_size: int32, number of valid entries in ``norm_history``.
    history_index: int32, the slot the next finite norm is written to.
    grad_norm: float32, the unclipped global norm of the last update.
    threshold: float32, the threshold in force at the last update
      (:data:`NO_THRESHOLD` while no threshold is in force).
    clipped: bool, whether the last update was clipped.
    num_steps: int32, updates seen (saturates at the int32 maximum).
    num_clipped: int32, updates clipped.
    num_nonfinite: int32, updates whose norm was NaN or Inf (passed through
      unchanged, not recorded).

  No field ever holds NaN or Inf unless the gradient did, so the state works
  under ``jax_debug_nans`` and ``jax_debug_infs`` (what one turns on to chase
  an instability).
  """

  norm_history: jax.Array
  sorted_history: jax.Array
  history_size: jax.Array
  history_index: jax.Array
  grad_norm: jax.Array
  threshold: jax.Array
  clipped: jax.Array
  num_steps: jax.Array
  num_clipped: jax.Array
  num_nonfinite: jax.Array


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _as_int(name: str, value: Any, *, minimum: int) -> int:
  """Checks a concrete integer (Python int or 0-d integer array) and returns it."""
  _validation.check_positive_int(name, value, minimum=minimum)
  return int(value)


def _replace_sorted(sorted_history: jax.Array, outgoing: jax.Array, incoming: jax.Array,
                    full: jax.Array) -> jax.Array:
  """Removes ``outgoing`` (if ``full``) from, and inserts ``incoming`` into, a sorted window.

  ``sorted_history`` is ascending with ``NO_THRESHOLD`` padding; ``outgoing`` is one of
  its finite entries when ``full``. Two O(window) elementwise passes.
  """
  window = sorted_history.shape[0]
  idx = jnp.arange(window)
  pad = jnp.full([1], NO_THRESHOLD, sorted_history.dtype)
  # Remove the first occurrence of `outgoing`: shift the tail left by one.
  j = jnp.sum(sorted_history < outgoing)
  left = jnp.concatenate([sorted_history[1:], pad])
  removed = jnp.where(full & (idx >= j), left, sorted_history)
  # Insert `incoming` at its rank: shift the tail right by one (drops a pad).
  k = jnp.sum(removed < incoming)
  right = jnp.concatenate([pad, removed[:-1]])
  return jnp.where(idx < k, removed, jnp.where(idx == k, incoming, right))


def _window_percentile(sorted_history: jax.Array, size: jax.Array, q: jax.Array) -> jax.Array:
  """``numpy.percentile(sorted_history[:size], 100 * q)`` ("linear"), for size >= 1."""
  n = size.astype(jnp.float32)
  h = (n - 1.0) * q
  lo_f = jnp.floor(h)
  gamma = h - lo_f
  lo = lo_f.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, size - 1)
  a = sorted_history[lo]
  b = sorted_history[hi]
  # NumPy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5.
  diff = b - a
  return jnp.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma)


def percentile_clip(
    percentile: float = 90.0,
    window_size: int = 1000,
    min_history: int | None = None,
    initial_threshold: float | None = None,
    max_threshold: float | None = None,
) -> optax.GradientTransformation:
  r"""Clips by global norm at a percentile of recent unclipped norms (the FAQ's recipe).

  At step :math:`t`, with :math:`H_t` the last ``window_size`` *finite,
  non-zero* unclipped global norms before step :math:`t` (step :math:`t`'s own
  norm is not included) and :math:`n_t = |H_t|`:

  .. math::

    \lambda_t = \begin{cases}
      \min(P_p(H_t), \lambda_{\max}), & n_t \geq \text{min\_history} \\
      \lambda_{\text{init}} \text{ (or } \infty \text{ if None)}, & \text{otherwise}
    \end{cases}
    \qquad
    g'_t = \begin{cases}
      \lambda_t \, g_t / \|g_t\|, & \|g_t\| > \lambda_t \\
      g_t, & \text{otherwise}
    \end{cases}

  where :math:`P_p` is ``numpy.percentile`` with the default linear
  interpolation (see :func:`clip_threshold`), computed on the device in
  float32, and the clipped update is computed as :math:`g_t \cdot
  (\lambda_t / \|g_t\|)`. A NaN or Inf norm is never recorded and its update passes through
  unchanged (combine with ``optax.apply_if_finite`` to skip such steps). The
  norm is :func:`optstab.global_norm`, which does not overflow: a finite
  update of norm ``3e19`` is clipped like any other.

  Zero norms are not recorded either: an all-zero gradient (a frozen model, a
  masked batch, the first steps of some schedules) is no evidence of the
  typical scale, and recording it would drag the percentile to 0 and zero
  every following update until the zeros leave the window. A zero update passes
  through unchanged (clipping cannot change it); ``num_steps`` counts it.

  Memory and cost are independent of the number of steps: the state holds
  two float32 buffers of ``window_size`` norms (8 KB for the default 1000),
  one in arrival order and one kept sorted by an O(``window_size``)
  removal/insertion per step, so the percentile is two reads; no host
  synchronisation (see ``benchmarks/clipping_telemetry.py`` for the measured
  overhead).

  Positions (see the module docstring): no clipping until ``min_history``
  finite norms are recorded unless ``initial_threshold`` is given; the
  threshold adapts, so a slowly growing norm raises it (cap it with
  ``max_threshold``).

  With ``optax.inject_hyperparams``, ``percentile``, ``initial_threshold`` and
  ``max_threshold`` are injectable; name the integer arguments static and keep
  the hyperparameters in float32 (inject_hyperparams casts them to the
  parameters' dtype otherwise, and bfloat16 rounds a percentile of 99.9 to
  100; a bfloat16 or float16 hyperparameter raises ``ValueError``):
  ``optax.inject_hyperparams(percentile_clip, static_args=("window_size",
  "min_history"), hyperparam_dtype=jnp.float32)(percentile=95.0)``. An
  injected percentile set to a concrete value is checked like the argument;
  inside a jitted update, where it has no value to check, it is clamped to
  [0, 100] and a NaN one means no adaptive threshold (``initial_threshold``,
  or no clipping, stays in force).

  Args:
    percentile: the percentile of recent norms to clip at, in (0, 100].
    window_size: number of recent norms kept, an integer in [1, 2**24] (the
      window's ranks are computed in float32, exact up to 2**24; two float32
      buffers of that size take 128 MB).
    min_history: finite norms needed before the percentile is used, an integer
      in [1, window_size]; ``None`` (default) means ``min(100, window_size)``.
    initial_threshold: threshold in force until then (a finite real > 0), or
      ``None`` for no clipping until then.
    max_threshold: optional upper bound on the adaptive threshold (a finite
      real > 0).

  Returns:
    An ``optax.GradientTransformation`` with state :class:`PercentileClipState`.

  Raises:
    ValueError: at construction, for an argument outside its range.
    TypeError: at the first update, for an integer update leaf (clipping would
      truncate it; ``optax.clip_by_global_norm`` raises too).

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> opt = optax.chain(optstab.percentile_clip(90.0, window_size=100,
    ...                                           min_history=2), optax.sgd(0.1))
    >>> params = jnp.zeros(3)
    >>> state = opt.init(params)
    >>> for g in ([1.0, 0, 0], [2.0, 0, 0], [30.0, 0, 0]):
    ...   updates, state = opt.update(jnp.array(g), state, params)
    >>> float(optax.tree.get(state, "grad_norm")), float(optax.tree.get(state, "threshold"))
    (30.0, 1.899999976158142)
    >>> bool(optax.tree.get(state, "clipped")), int(optax.tree.get(state, "num_clipped"))
    (True, 1)

  .. warning::
    Unlike ``optax.clip_by_global_norm``, the threshold is not an argument but
    a statistic of the run, a clipped update is ``g * (lambda / ||g||)``
    rather than ``(g / ||g||) * lambda`` (equal up to float rounding, and it
    fuses into the next transformation); and unlike AutoClip-style implementations that keep
    every norm in a host-side list and read it back each step, the history is a
    fixed-size device buffer (the percentile is over the last ``window_size``
    norms, not all of them).
  """
  _validation.check_percentile("percentile", percentile)
  if initial_threshold is not None:
    _validation.check_positive("initial_threshold", initial_threshold)
  if max_threshold is not None:
    _validation.check_positive("max_threshold", max_threshold)
  for name, value in (("percentile", percentile), ("initial_threshold", initial_threshold),
                      ("max_threshold", max_threshold)):
    _validation.check_full_precision(name, value)
  # window_size is only needed (as a Python int) by init; update reads the
  # window length from the state, so traced values are fine there.
  if not _is_tracer(window_size):
    _validation.check_positive_int("window_size", window_size, maximum=_MAX_WINDOW,
                                   why=" (ranks are computed in float32, exact up to 2**24)")
    window_size = int(window_size)
    if min_history is None:
      min_history = min(100, window_size)
    if not _is_tracer(min_history):
      min_history = _as_int("min_history", min_history, minimum=1)
      _validation.check_in_range("min_history", min_history, 1, window_size,
                                 high_inclusive=True)

  def init_fn(params: optax.Params) -> PercentileClipState:
    del params
    if _is_tracer(window_size):
      raise ValueError("window_size must be a concrete integer when the state is initialised; "
                       "with optax.inject_hyperparams pass static_args=('window_size', 'min_history').")
    # A fresh array per field (no shared buffers), so the state can be donated.
    zero = lambda: jnp.zeros([], jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
    return PercentileClipState(
        norm_history=jnp.full([window_size], NO_THRESHOLD, jnp.float32),
        sorted_history=jnp.full([window_size], NO_THRESHOLD, jnp.float32),
        history_size=zero(),
        history_index=zero(),
        grad_norm=jnp.zeros([], jnp.float32),
        threshold=jnp.full([], NO_THRESHOLD, jnp.float32),
        clipped=jnp.zeros([], jnp.bool_),
        num_steps=zero(),
        num_clipped=zero(),
        num_nonfinite=zero(),
    )

  def threshold_in_force(state: PercentileClipState) -> jax.Array:
    """lambda_t from the window *before* this step (or the fallback)."""
    window = state.norm_history.shape[0]
    size = state.history_size
    q = jnp.asarray(percentile, jnp.float32) / 100.0
    use_window = size >= (min(100, window) if min_history is None else min_history)
    if _is_tracer(percentile):
      # Injected and traced: no value to check here (see the docstring).
      use_window &= ~jnp.isnan(q)
      q = jnp.clip(q, 0.0, 1.0)
    adaptive = _window_percentile(state.sorted_history, jnp.maximum(size, 1), q)
    if max_threshold is not None:
      adaptive = jnp.minimum(adaptive, jnp.asarray(max_threshold, jnp.float32))
    fallback = jnp.asarray(NO_THRESHOLD if initial_threshold is None else initial_threshold,
                           jnp.float32)
    return jnp.where(use_window, adaptive, fallback)

  def clip(updates, norm32: jax.Array, threshold: jax.Array):
    """The FAQ's rule, with one scalar factor lambda / ||g|| times each leaf.

    optax computes (g / ||g||) * lambda: a multiply by a scalar fuses into the
    optimizer's update kernels, whereas XLA materialises the divided gradient
    once per leaf (an extra pass over memory; see the benchmark).
    """
    clipped = jnp.isfinite(norm32) & (norm32 > threshold)
    # Divide only where clipping (norm > lambda > 0): no inf/NaN from 0 / 0.
    factor = threshold / jnp.where(clipped, norm32, 1.0)

    def clip_leaf(t):
      # A scalar predicate (as in optax): broadcasting it would drop the
      # leaf's sharding under explicit-sharding meshes.
      return jax.lax.select(clipped, t * factor.astype(t.dtype), t)

    return jax.tree.map(clip_leaf, updates), clipped

  def record(state: PercentileClipState, norm32: jax.Array) -> tuple[jax.Array, ...]:
    """The window after this step: the norm enters if finite and non-zero."""
    window = state.norm_history.shape[0]
    size, index = state.history_size, state.history_index
    enters = jnp.isfinite(norm32) & (norm32 > 0)
    history = state.norm_history.at[index].set(
        jnp.where(enters, norm32, state.norm_history[index]))
    sorted_history = jnp.where(
        enters,
        _replace_sorted(state.sorted_history, state.norm_history[index], norm32, size >= window),
        state.sorted_history)
    size = jnp.where(enters, jnp.minimum(size + 1, window), size).astype(jnp.int32)
    index = jnp.where(enters, (index + 1) % window, index).astype(jnp.int32)
    return history, sorted_history, size, index

  def update_fn(updates, state: PercentileClipState, params=None):
    del params
    _validation.check_float_leaves("updates", updates)
    norm32 = global_norm(updates).astype(jnp.float32)
    threshold = threshold_in_force(state)
    updates, clipped = clip(updates, norm32, threshold)
    history, sorted_history, size, index = record(state, norm32)
    finite = jnp.isfinite(norm32)
    new_state = PercentileClipState(
        norm_history=history,
        sorted_history=sorted_history,
        history_size=size,
        history_index=index,
        grad_norm=norm32,
        threshold=threshold,
        clipped=clipped,
        num_steps=optax.safe_increment(state.num_steps),
        num_clipped=jnp.where(clipped, optax.safe_increment(state.num_clipped), state.num_clipped),
        num_nonfinite=jnp.where(finite, state.num_nonfinite,
                                optax.safe_increment(state.num_nonfinite)),
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)
