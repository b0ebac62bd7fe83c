"""A spike guard: skip outlier steps on the device.

The rule: at step :math:`t`, with :math:`x_t` the global norm of the incoming
gradient (and, separately, the loss when ``update`` is given ``loss=``) and
:math:`W_t` the window of recent *accepted* values of the same quantity, the
step is an outlier when

.. math::

  x_t \\notin \\mathbb{R} \\quad\\text{or}\\quad x_t - c(W_t) > k \\, s(W_t),

with :math:`(c, s)` the window's median and normal-consistent median absolute
deviation (``rule="robust"``, the default) or its mean and Bessel-corrected
standard deviation (``rule="mean_std"``). An outlier step is *skipped*: the
update is zero and the inner transformation's state is left as it was, so
momentum and second-moment buffers never see the spike. The decision is made on
the device, with no host synchronisation.

Positions on the FAQ's open questions
-------------------------------------

*Warmup.* Nothing is skipped (except non-finite steps) until the window holds
``min_history`` values: the spread of a handful of early values is noise, and
early instability is what learning-rate warmup is for. The guard and warmup
compose (warmup keeps the first updates small while the window fills).

*Spikes must not raise their own threshold.* Only accepted steps enter the
window (unlike MaxText and OLMo-core, which record every step), so a burst of
spikes is judged against the level before the burst.

*A lasting shift (a new normal level).* When a level shift is real (a new data
mixture, a learning-rate change), every step after it looks like an outlier.
After ``max_consecutive_skips`` consecutive skips, the next finite step is
accepted whatever its value and the window is *re-seeded* with it alone:
training never freezes, and the guard is back in force after ``min_history``
accepted steps at the new level. Non-finite steps are never accepted.

*Adaptive, robust thresholds.* A median and MAD move by at most one order
statistic per outlier in the window, where a mean and standard deviation jump
with it; and the norm's distribution is heavy-tailed, so a mean + k std
threshold is loose. The failure mode is the same as
:func:`optstab.percentile_clip`'s: a slow drift (a norm growing a little every
step) moves the window with it and is never flagged; the guard is for spikes,
not for slow divergence.

The spike score in the state (``spike_score``) is the fraction of the last
``window_size`` steps flagged as outliers by the rule (skipped, or accepted by a
re-seed), a running measure of how spiky training is, read whenever convenient
(no per-step transfer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optstab import _validation
from optstab.clipping import NO_THRESHOLD
from optstab.clipping import _window_percentile
from optstab.telemetry import global_norm

__all__ = [
    "skip_spikes",
    "SkipSpikesState",
]

#: The outlier rules :func:`skip_spikes` knows.
RULES = ("robust", "mean_std")

#: ``1 / Phi^-1(3/4)``: the median absolute deviation of a normal sample times
#: this estimates its standard deviation.
MAD_TO_STD = 1.482602218505602

# The window's ranks are computed in float32 (see optstab.clipping).
_MAX_WINDOW = 2**24


class SkipSpikesState(NamedTuple):
  """State of :func:`skip_spikes`.

  Field names are unique within optax and optstab states, so
  ``optax.tree.get(opt_state, "total_skipped")`` (or any other field) finds
  them anywhere in a chain.

  Attributes:
    inner_state: the wrapped transformation's state (left untouched by a
      skipped step).
    norm_window: float32 ``[window_size]`` ring buffer of accepted gradient
      norms; the first ``window_count`` slots are valid.
    loss_window: the same for the accepted losses (unused while ``update`` is
      never given ``loss=``).
    window_count: int32, number of valid values in the windows.
    window_index: int32, the slot the next accepted value is written to.
    guard_grad_norm: float32, the gradient norm of the last step.
    guard_loss: float32, the loss of the last step (0 when none was given).
    norm_threshold: float32, the norm above which the last step was an outlier
      (the largest float32, as in ``optstab.percentile_clip``'s state, while none
      is in force).
    loss_threshold: the same for the loss.
    skipped: bool, whether the last step was skipped.
    total_skipped: int32, steps skipped so far.
    consecutive_skipped: int32, steps skipped since the last accepted one.
    last_skipped_step: int32, index (from 0) of the last skipped step, or -1.
    num_reseeds: int32, times the window was re-seeded after
      ``max_consecutive_skips`` consecutive skips.
    guard_steps: int32, steps seen (saturates at the int32 maximum).
    spike_flags: bool ``[window_size]`` ring buffer, whether each of the last
      ``window_size`` steps was an outlier (slot ``step % window_size``).
    spike_score: float32, the fraction of outliers among the last
      ``min(guard_steps, window_size)`` steps.
  """

  inner_state: optax.OptState
  norm_window: jax.Array
  loss_window: jax.Array
  window_count: jax.Array
  window_index: jax.Array
  guard_grad_norm: jax.Array
  guard_loss: jax.Array
  norm_threshold: jax.Array
  loss_threshold: jax.Array
  skipped: jax.Array
  total_skipped: jax.Array
  consecutive_skipped: jax.Array
  last_skipped_step: jax.Array
  num_reseeds: jax.Array
  guard_steps: jax.Array
  spike_flags: jax.Array
  spike_score: jax.Array


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _robust_center_spread(window: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Median and ``MAD_TO_STD * MAD`` of ``window[:count]`` (count >= 1), as numpy.median."""
  valid = jnp.arange(window.shape[0]) < count
  pad = jnp.asarray(NO_THRESHOLD, window.dtype)
  median = _window_percentile(jnp.sort(jnp.where(valid, window, pad)), count, 0.5)
  deviations = jnp.sort(jnp.where(valid, jnp.abs(window - median), pad))
  return median, MAD_TO_STD * _window_percentile(deviations, count, 0.5)


def _mean_std(window: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and Bessel-corrected standard deviation of ``window[:count]`` (count >= 1).

  Sums over the whole masked buffer, as MaxText does, so the same values give
  the same float32 result.
  """
  valid = jnp.arange(window.shape[0]) < count
  n = count.astype(window.dtype)
  mean = jnp.sum(jnp.where(valid, window, 0.0)) / n
  squares = jnp.where(valid, (window - mean) ** 2, 0.0)
  return mean, jnp.sqrt(jnp.sum(squares) / jnp.maximum(n - 1.0, 1.0))


def skip_spikes(
    inner: optax.GradientTransformation,
    threshold: float = 6.0,
    window_size: int = 128,
    min_history: int | None = None,
    max_consecutive_skips: int | None = 20,
    rule: str = "robust",
    record_skipped: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Skips a step whose gradient norm or loss spikes; otherwise applies ``inner``.

  With :math:`x_t` the global norm of the incoming updates (or the
  ``grad_norm=`` extra argument when given) and, when ``update`` is given
  ``loss=``, the loss :math:`\ell_t`; :math:`W^x_t, W^\ell_t` the last
  ``window_size`` accepted values before step :math:`t`, :math:`n_t` their
  number and :math:`k` the ``threshold``:

  .. math::

    \text{out}_t(v, W) = \lnot\,\mathrm{isfinite}(v) \;\lor\;
      \big(n_t \geq \text{min\_history} \,\land\, v - c(W) > k\, s(W)\big)

    \text{skip}_t = \big(\text{out}_t(x_t, W^x_t) \lor \text{out}_t(\ell_t, W^\ell_t)\big)
      \land \lnot\big(\text{consecutive}_t \geq N \land \mathrm{isfinite}(x_t, \ell_t)\big)

    (u_t, S_{t+1}) = \begin{cases}
      (0, S_t), & \text{skip}_t \\
      \text{inner.update}(g_t, S_t), & \text{otherwise}
    \end{cases}

  with :math:`N` = ``max_consecutive_skips``, :math:`c, s` the median and
  :math:`1.4826 \cdot` median absolute deviation (``rule="robust"``) or the
  mean and Bessel-corrected standard deviation (``rule="mean_std"``), computed
  on the device in float32. An accepted step's finite values enter the windows
  (a zero gradient norm, no evidence of the typical scale, does not); with
  ``record_skipped=True`` a skipped step's finite values enter too. When the
  :math:`N`-th consecutive skip is followed by a finite step, that step is
  accepted and the windows are re-seeded with its values alone. The module
  docstring gives the reasons (warmup, level shifts, robustness). A window of
  (mostly, for the median) identical values has zero spread: any larger value
  is then an outlier, until a re-seed.

  How to use it: wrap the optimizer (clipping included, if any) and pass the
  loss to ``update``; the guard forwards every extra argument to ``inner``::

    tx = optax.chain(optstab.record_grad_norm(),   # sees every step, skipped or not
                     optstab.skip_spikes(optax.chain(optstab.percentile_clip(),
                                                     optstab.adam(1e-3))))
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, loss=loss)

  Without ``loss=`` only the gradient norm is watched. Read the counters
  anywhere in a chain with ``optax.tree.get(state, "total_skipped")`` (and
  ``"skipped"``, ``"consecutive_skipped"``, ``"last_skipped_step"``,
  ``"spike_score"``, ...): no transfer until you convert one.

  Memory and cost: three ``window_size`` buffers (1.5 KB for the default
  128), a sort of each window per step under the robust rule, one global-norm
  reduction (shared with ``record_grad_norm`` or a clipper in the same chain,
  or none when ``grad_norm=`` is passed) and one select per update and state
  leaf. The selects are the expensive part on CPU: with the state donated,
  XLA's CPU backend copies every state buffer before it updates it in place
  (the parameter update reads the old state while the selected new state
  overwrites it), one more read and write of the optimizer state per step,
  as it does for ``optax.apply_if_finite``. A ``lax.cond`` instead copies the
  state in its skip branch and again after it, and costs more. Measured on
  CPU against the update alone (10M parameters): about 1.1x for SGD, 1.5x for
  momentum and 2.9x for Adam (``optax.apply_if_finite``: 5.7x, 3.5x, 2.6x);
  next to a training step's forward and backward pass it is small
  (``benchmarks/spike_guard.py`` measures it).

  *MaxText's* ``skip_step_on_spikes(inner, interval=128, scaling_factor=6)``
  makes the same decisions as ``skip_spikes(inner, threshold=6.0,
  window_size=128, min_history=63, rule="mean_std", record_skipped=True,
  max_consecutive_skips=None)`` given the same ``loss=`` and ``grad_norm=``
  (its ``min_history`` is ``max(2, interval // 2) - 1`` recorded steps), on
  finite values; the tests check this against a float64 model of both rules
  over 10,000 steps.

  With ``optax.inject_hyperparams``, ``threshold`` is injectable; name the
  integer arguments static: ``optax.inject_hyperparams(skip_spikes,
  static_args=("window_size", "min_history", "max_consecutive_skips"),
  hyperparam_dtype=jnp.float32)(inner=optstab.adam(1e-3), threshold=6.0)``.

  Args:
    inner: the transformation to guard (an optimizer, or a chain with
      clipping).
    threshold: :math:`k`, the number of spreads above the centre beyond which
      a value is an outlier, a finite real > 0.
    window_size: number of recent accepted values kept, an integer in [2, 2**24].
    min_history: values needed in the window before anything finite is
      skipped, an integer in [2, window_size]; ``None`` (default) means
      ``min(32, window_size)``.
    max_consecutive_skips: :math:`N`, an integer >= 1, or ``None`` to skip for
      as long as the rule says so (a run whose level shifted then freezes).
    rule: ``"robust"`` (median and MAD, the default) or ``"mean_std"``.
    record_skipped: whether skipped steps' finite values enter the windows too
      (as in MaxText and OLMo-core). Default ``False``: a spike cannot raise
      its own threshold.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`SkipSpikesState`.

  Raises:
    ValueError: at construction, for an argument outside its range; at the
      first update, for a ``loss`` that is not a real scalar.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> tx = optstab.skip_spikes(optax.sgd(0.1), window_size=8, min_history=4)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for g in ([1.0, 0.0], [1.1, 0.0], [0.9, 0.0], [1.0, 0.1], [50.0, 0.0]):
    ...   updates, state = tx.update(jnp.array(g), state, params, loss=1.0)
    >>> updates, bool(state.skipped), int(optax.tree.get(state, "total_skipped"))
    (Array([0., 0.], dtype=float32), True, 1)

  .. warning::
    MaxText and OLMo-core record every step in the window, skipped ones
    included; a NaN loss there enters the window and every comparison with the
    resulting NaN mean fails, so MaxText skips every step until the NaN leaves
    the window (and accepts a NaN step before its ``min_history``). Here a
    non-finite step is always skipped and never recorded. OLMo-core's
    optimizer skips on a *two-sided* z-score (a sudden drop in the loss too);
    this guard, like MaxText, only on a rise.
  """
  _validation.check_one_of("rule", rule, RULES)
  _validation.check_positive("threshold", threshold)
  _validation.check_full_precision("threshold", threshold)
  if not isinstance(record_skipped, bool):
    raise ValueError(f"record_skipped must be True or False; got {record_skipped!r}.")
  if not isinstance(inner, (optax.GradientTransformation, optax.GradientTransformationExtraArgs)):
    raise ValueError(f"inner must be an optax.GradientTransformation; got {type(inner).__name__}.")
  if not _is_tracer(window_size):
    _validation.check_positive_int("window_size", window_size, minimum=2, maximum=_MAX_WINDOW,
                                   why=" (ranks are computed in float32, exact up to 2**24)")
    window_size = int(window_size)
    if min_history is None:
      min_history = min(32, window_size)
    if not _is_tracer(min_history):
      _validation.check_positive_int("min_history", min_history, minimum=2, maximum=window_size)
      min_history = int(min_history)
  if max_consecutive_skips is not None and not _is_tracer(max_consecutive_skips):
    _validation.check_positive_int("max_consecutive_skips", max_consecutive_skips)
    max_consecutive_skips = int(max_consecutive_skips)
  inner = optax.with_extra_args_support(inner)
  center_spread = _robust_center_spread if rule == "robust" else _mean_std

  def init_fn(params: optax.Params) -> SkipSpikesState:
    if _is_tracer(window_size):
      raise ValueError("window_size must be a concrete integer when the state is initialised; "
                       "with optax.inject_hyperparams pass static_args=('window_size', "
                       "'min_history', 'max_consecutive_skips').")
    # A fresh array per field (no shared buffers), so the state can be donated.
    int32 = lambda value=0: jnp.full([], value, jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
    no_threshold = lambda: jnp.full([], NO_THRESHOLD, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
    return SkipSpikesState(
        inner_state=inner.init(params),
        norm_window=jnp.zeros([window_size], jnp.float32),
        loss_window=jnp.zeros([window_size], jnp.float32),
        window_count=int32(),
        window_index=int32(),
        guard_grad_norm=jnp.zeros([], jnp.float32),
        guard_loss=jnp.zeros([], jnp.float32),
        norm_threshold=no_threshold(),
        loss_threshold=no_threshold(),
        skipped=jnp.zeros([], jnp.bool_),
        total_skipped=int32(),
        consecutive_skipped=int32(),
        last_skipped_step=int32(-1),
        num_reseeds=int32(),
        guard_steps=int32(),
        spike_flags=jnp.zeros([window_size], jnp.bool_),
        spike_score=jnp.zeros([], jnp.float32),
    )

  def judge(value: jax.Array, window: jax.Array, count: jax.Array, in_force: jax.Array):
    """(outlier?, threshold in force) for one watched value."""
    center, spread = center_spread(window, jnp.maximum(count, 1))
    k = jnp.asarray(threshold, jnp.float32)
    # (v - c) > k s, in this order (MaxText's), not v > c + k s: another rounding.
    above = in_force & (value - center > k * spread)
    shown = jnp.where(in_force, center + k * spread, NO_THRESHOLD)
    return above | ~jnp.isfinite(value), shown

  def update_fn(updates, state: SkipSpikesState, params=None, **extra_args):
    loss = extra_args.get("loss")
    given_norm = extra_args.get("grad_norm")
    if given_norm is None:
      norm = global_norm(updates).astype(jnp.float32)
    else:
      norm = _as_scalar("grad_norm", given_norm)
    count = state.window_count
    in_force = count >= min_history
    norm_out, norm_threshold = judge(norm, state.norm_window, count, in_force)
    if loss is None:
      loss32 = jnp.zeros([], jnp.float32)
      loss_out, loss_threshold = jnp.zeros([], jnp.bool_), jnp.full([], NO_THRESHOLD, jnp.float32)
    else:
      loss32 = _as_scalar("loss", loss)
      loss_out, loss_threshold = judge(loss32, state.loss_window, count, in_force)
    finite = jnp.isfinite(norm) & jnp.isfinite(loss32)
    outlier = norm_out | loss_out
    if max_consecutive_skips is None:
      reseed = jnp.zeros([], jnp.bool_)
    else:
      reseed = outlier & finite & (state.consecutive_skipped >= max_consecutive_skips)
    skip = outlier & ~reseed

    inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    # A scalar predicate per leaf (as optax does): broadcasting it would drop
    # a leaf's sharding under explicit-sharding meshes.
    keep = lambda new, old: jax.lax.select(skip, old, new)  # pylint: disable=unnecessary-lambda-assignment
    inner_updates = jax.tree.map(lambda u: keep(u, jnp.zeros_like(u)), inner_updates)
    inner_state = jax.tree.map(keep, inner_state, state.inner_state)

    # The windows: re-seeding empties them first; then this step's values enter
    # if accepted (or recorded anyway) and finite, with a non-zero norm.
    enters = finite & (norm > 0) & (~skip | record_skipped)
    count = jnp.where(reseed, 0, count)
    index = jnp.where(reseed, 0, state.window_index)
    norm_window = state.norm_window.at[index].set(jnp.where(enters, norm, state.norm_window[index]))
    loss_window = state.loss_window
    if loss is not None:
      loss_window = loss_window.at[index].set(jnp.where(enters, loss32, loss_window[index]))
    window = state.norm_window.shape[0]
    count = jnp.where(enters, jnp.minimum(count + 1, window), count).astype(jnp.int32)
    index = jnp.where(enters, (index + 1) % window, index).astype(jnp.int32)

    step = state.guard_steps
    flags = state.spike_flags.at[step % window].set(outlier)
    seen = jnp.minimum(step + 1, window)
    spike_score = jnp.sum(flags.astype(jnp.float32)) / seen.astype(jnp.float32)
    new_state = SkipSpikesState(
        inner_state=inner_state,
        norm_window=norm_window,
        loss_window=loss_window,
        window_count=count,
        window_index=index,
        guard_grad_norm=norm,
        guard_loss=loss32,
        norm_threshold=norm_threshold,
        loss_threshold=loss_threshold,
        skipped=skip,
        total_skipped=jnp.where(skip, optax.safe_increment(state.total_skipped),
                                state.total_skipped),
        consecutive_skipped=jnp.where(skip, optax.safe_increment(state.consecutive_skipped),
                                      0).astype(jnp.int32),
        last_skipped_step=jnp.where(skip, step, state.last_skipped_step).astype(jnp.int32),
        num_reseeds=jnp.where(reseed, optax.safe_increment(state.num_reseeds),
                              state.num_reseeds),
        guard_steps=optax.safe_increment(step),
        spike_flags=flags,
        spike_score=spike_score,
    )
    return inner_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _as_scalar(name: str, value: Any) -> jax.Array:
  """A real scalar extra argument (the loss, a norm) as float32; refuses anything else."""
  shape = np.shape(value)
  dtype = jnp.result_type(value)
  if shape != () or not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} must be a real scalar (the step's {name.replace('_', ' ')}); got "
                     f"shape {shape} and dtype {dtype}.")
  return jnp.asarray(value).astype(jnp.float32)

