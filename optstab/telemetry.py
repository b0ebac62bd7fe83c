"""Unclipped gradient-norm telemetry without a host sync per step (the FAQ's
"Identifying unstable workloads" and "Gradient clipping").

The FAQ asks to log the L2 norm of the full (unclipped) gradient during
training: the log shows outliers behind mid-training instability and tells how
aggressively to clip. Reading a scalar back to the host every step
(``float(norm)``, ``.item()``) stalls JAX's asynchronous dispatch, so here:

* :func:`record_grad_norm` is a ``GradientTransformation`` that leaves the
  updates unchanged and writes their global norm into a fixed-size float32
  ring buffer in its state (:class:`GradNormLogState`), on the device. Put it
  first in the chain (before any clipping) so it sees the unclipped gradient.
* :func:`recorded_grad_norms` reads that buffer back (one transfer) as NumPy.
* :class:`GradNormRecorder` is the host-side reader for a whole run: call
  :meth:`GradNormRecorder.observe` every step; it fetches the buffer only every
  ``fetch_every`` steps (default: the buffer's capacity), so a run of any length
  is logged completely with one transfer per ``capacity`` steps.
* :func:`summarize_clipping` / :func:`summarize_clip_state` report the fraction
  of clipped updates and say plainly, above 50%, to lower the learning rate
  instead (the FAQ's "Gradient clipping").

For the last norm alone, ``optax.snapshot("grad_norm", optax.tree.norm)`` is
enough; and :func:`optstab.percentile_clip` already exposes ``grad_norm``,
``threshold`` and ``clipped`` in its state. The default plots (norm vs step,
histogram) are :func:`optstab.plots.plot_grad_norms` and
:func:`optstab.plots.plot_grad_norm_histogram`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optstab import _validation

__all__ = [
    "global_norm",
    "GradNormLogState",
    "record_grad_norm",
    "recorded_grad_norms",
    "GradNormRecorder",
    "ClippingSummary",
    "summarize_clipping",
    "summarize_clip_state",
]


def _squares_sum(leaves: list, scale: Any = None) -> jax.Array:
  """``sum_i (x_i / scale)^2`` over every leaf, in at least float32."""
  total = jnp.zeros([], jnp.float32)
  for x in leaves:
    if scale is not None:
      x = x / scale.astype(x.dtype)
    # The barrier keeps XLA from merging this x * x with an optimizer's own
    # g * g (Adam's second moment): merged, the square is written to memory
    # for both users instead of being fused into each (on CPU, a third more
    # traffic for Adam with a norm). It changes no value, and two global norms
    # of the same tree are still computed once.
    x = jax.lax.optimization_barrier(x)
    total = total + jnp.sum(x * x)
  return total


def _rescaled_norm(leaves: list, dtype: Any) -> jax.Array:
  """``m * sqrt(sum (x / m)^2)`` with ``m = max |x|``: no overflow or underflow."""
  m = jnp.zeros([], dtype)
  for x in leaves:
    m = jnp.maximum(m, jnp.max(jnp.abs(x), initial=0.0).astype(dtype))
  usable = jnp.isfinite(m) & (m > 0)
  scale = jnp.where(usable, m, 1.0)
  # m = 0: the norm is 0; a NaN or Inf leaf makes m (and the norm) NaN or Inf.
  norm = scale * jnp.sqrt(_squares_sum(leaves, scale).astype(dtype))
  return jnp.where(usable | (m == 0), norm, m)


# record_grad_norm's largest ring buffer (64 MB of float32 norms).
_MAX_CAPACITY = 2**24

# Below this sum of squares, float32 squares may have lost digits to underflow.
_UNDERFLOW_RISK = float(np.finfo(np.float32).tiny / np.finfo(np.float32).eps)


def global_norm(tree: Any) -> jax.Array:
  r"""The global L2 norm of a gradient pytree, accumulated in at least float32.

  This is the norm the FAQ says to log and clip by: every leaf of the
  full loss gradient together.

  Like ``optax.tree.norm`` (complex leaves count ``|z|^2``), but bfloat16 /
  float16 leaves are squared and summed in float32, so the norm keeps float32
  precision; for float32 leaves the two give the same value. Two
  ``global_norm`` of the same tree in one step (the guard's, the recorder's,
  the clipper's) are computed once; a ``global_norm`` and an
  ``optax.tree.norm`` are not merged, because the squares are kept apart from
  an optimizer's own ``g * g`` (see ``benchmarks/spike_guard.py``).

  Unlike ``optax.tree.norm``, a finite gradient has a finite, accurate norm
  (unless the norm itself exceeds the float32 range, about ``3.4e38``): when
  the float32 sum of squares overflows (a norm above about ``1.8e19``) or is
  so small that squares may have underflowed (below ``2**-103``), the norm is
  recomputed as :math:`m \sqrt{\sum_i (g_i / m)^2}` with :math:`m = \max_i
  |g_i|`. The recomputation sits in a ``lax.cond``, so an ordinary step pays
  one scalar comparison, not a second pass over the gradient.
  """
  leaves = []
  for x in jax.tree.leaves(tree):
    x = jnp.abs(x) if jnp.iscomplexobj(x) else x
    leaves.append(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
  total = _squares_sum(leaves)
  in_range = (total >= _UNDERFLOW_RISK) & (total < jnp.inf)
  return jax.lax.cond(in_range, lambda t, _: jnp.sqrt(t),
                      lambda t, xs: _rescaled_norm(xs, t.dtype), total, leaves)


class GradNormLogState(NamedTuple):
  """State of :func:`record_grad_norm`.

  Attributes:
    grad_norm_log: float32 ``[capacity]`` ring buffer; the norm of step ``t``
      (counting from 0) is at index ``t % capacity`` until overwritten ``capacity``
      steps later. Unwritten slots hold 0, a finite placeholder (the count
      says which slots are valid), so the state works under ``jax_debug_nans``.
    grad_norm_log_count: int32, number of norms written so far (saturates at
      the int32 maximum, after which the last slot is overwritten).
    spike_norm_window: float32 ``[spike_window]`` ring buffer of the last
      ``spike_window`` norms (slot ``t % spike_window``), the spike statistics'
      window.
    grad_norm_spike_flags: bool ``[spike_score_window]`` ring buffer, whether
      each of the last judged steps was a spike (the ``j``-th judged step, from
      0, at slot ``j % spike_score_window``).
    grad_norm_spikes_in_window: int32, the spikes among the last
      ``min(judged, spike_score_window)`` judged steps.
    grad_norm_judged_steps: int32, steps judged so far (every step once the
      window is full; saturates at the int32 maximum).
    grad_norm_spike_total: int32, spikes so far (``total / judged`` is the
      whole run's spike rate).
    grad_norm_spike_score: float32, the spike score: the fraction of spikes
      among the last ``min(judged, spike_score_window)`` judged steps (0 before
      any step is judged).
  """

  grad_norm_log: jax.Array
  grad_norm_log_count: jax.Array
  spike_norm_window: jax.Array
  grad_norm_spike_flags: jax.Array
  grad_norm_spikes_in_window: jax.Array
  grad_norm_judged_steps: jax.Array
  grad_norm_spike_total: jax.Array
  grad_norm_spike_score: jax.Array


def record_grad_norm(capacity: int = 1000, spike_window: int = 128, spike_threshold: float = 6.0,
                     spike_score_window: int = 10_000) -> optax.GradientTransformation:
  r"""Records the global L2 norm of the updates every step, and a spike score, on the device.

  .. math::

    \text{log}[t \bmod C] \leftarrow x_t = \|g_t\|_2 = \sqrt{\textstyle\sum_i g_{t,i}^2},
    \qquad g'_t = g_t

  The updates pass through unchanged. Memory is ``4 * capacity`` bytes
  whatever the run length; the cost is one global-norm reduction per step (on
  sharded arrays, XLA inserts the cross-device sum) and a one-element write.

  *Spike score.* OLMo-core's definition (its ``StabilityMonitorCallback``,
  used for the spike score of the OLMo 2 report, Team OLMo 2024, "2 OLMo 2
  Furious"): with :math:`W` = ``spike_window``, :math:`k` = ``spike_threshold``
  and :math:`\mu_t, \sigma_t` the mean and (population) standard deviation of
  the finite norms among :math:`x_{t-W}, \dots, x_{t-1}` (every step's norm,
  spikes included), step :math:`t \geq W` is *judged* and is a spike when

  .. math::

    s_t = \lnot\,\mathrm{isfinite}(x_t) \;\lor\; \big(\sigma_t > 0 \,\land\,
      x_t > \mu_t + k\,\sigma_t\big),
    \qquad \text{score}_t = \frac{1}{n_t} \sum_{j \in J_t} s_j,

  with :math:`J_t` the last :math:`n_t = \min(\#\text{judged}, R)` judged
  steps and :math:`R` = ``spike_score_window``. OLMo-core lets a NaN norm
  into the window, where it turns the mean into NaN and hides every spike for
  :math:`W` steps; here a non-finite norm is a spike and is left out of the
  statistics, and a window of identical norms (:math:`\sigma_t = 0`) flags
  nothing, as OLMo-core's ``std < 1e-10`` does. Read it anywhere in a chain with
  ``optax.tree.get(state, "grad_norm_spike_score")``: a device scalar, no
  transfer until you convert it (for instance every ``capacity`` steps, with
  the log). :func:`optstab.skip_spikes` keeps a ``spike_score`` of its own
  rule (the steps it flags as outliers against its window of accepted steps);
  this one sees every step, which is what a monitor of a run should do.

  Where it goes in a chain: first, before any clipping, so it sees the
  unclipped gradient; and *outside* ``optax.apply_if_finite``::

    optax.chain(optstab.record_grad_norm(),
                optax.apply_if_finite(optax.chain(optstab.percentile_clip(), optstab.adam(lr)),
                                      max_consecutive_errors=5))

  There it records every step, a skipped non-finite one as NaN or Inf, so the
  log stays aligned with the steps. Inside ``apply_if_finite`` a skipped step
  would restore the recorder's previous state and drop that step's entry
  without a trace; :func:`recorded_grad_norms` and :class:`GradNormRecorder`
  therefore refuse such a state with a ``ValueError`` saying where to move it.

  Args:
    capacity: length of the ring buffer, an integer in [1, 2**24]. A reader must fetch
      at least every ``capacity`` steps to lose nothing (:class:`GradNormRecorder`
      does).
    spike_window: :math:`W`, the number of previous norms the spike statistics
      are computed over, an integer in [2, 2**24] (OLMo-core's 128 by default).
    spike_threshold: :math:`k`, standard deviations above the mean beyond which
      a norm is a spike, a finite real > 0 (OLMo-core's 6 by default).
    spike_score_window: :math:`R`, the number of recent judged steps the
      score is the fraction of, an integer in [1, 2**24] (OLMo-core's 10,000
      by default; one byte each).

  Returns:
    An ``optax.GradientTransformation`` with state :class:`GradNormLogState`.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> opt = optax.chain(optstab.record_grad_norm(capacity=8), optax.sgd(0.1))
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> for g in ([3.0, 4.0], [0.0, 1.0]):
    ...   _, state = opt.update(jnp.array(g), state, params)
    >>> optstab.recorded_grad_norms(state)
    array([5., 1.], dtype=float32)
    >>> opt = optstab.record_grad_norm(spike_window=4, spike_score_window=10)
    >>> state = opt.init(params)
    >>> for n in (1.0, 1.1, 0.9, 1.0, 1.05, 30.0, 1.0, 0.95):
    ...   _, state = opt.update(jnp.array([n, 0.0]), state, params)
    >>> float(optax.tree.get(state, "grad_norm_spike_score"))  # 1 spike in 4 judged steps
    0.25
  """
  _validation.check_positive_int("capacity", capacity, maximum=_MAX_CAPACITY,
                                 why=" (64 MB of norms; fetch more often instead)")
  _validation.check_positive_int("spike_window", spike_window, minimum=2, maximum=_MAX_CAPACITY)
  _validation.check_positive("spike_threshold", spike_threshold)
  _validation.check_positive_int("spike_score_window", spike_score_window,
                                 maximum=_MAX_CAPACITY)
  spike_threshold = float(spike_threshold)

  def init_fn(params: optax.Params) -> GradNormLogState:
    del params
    int32 = lambda: jnp.zeros([], jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
    return GradNormLogState(
        grad_norm_log=jnp.zeros([capacity], jnp.float32),
        grad_norm_log_count=int32(),
        spike_norm_window=jnp.zeros([spike_window], jnp.float32),
        grad_norm_spike_flags=jnp.zeros([spike_score_window], jnp.bool_),
        grad_norm_spikes_in_window=int32(),
        grad_norm_judged_steps=int32(),
        grad_norm_spike_total=int32(),
        grad_norm_spike_score=jnp.zeros([], jnp.float32),
    )

  def update_fn(updates, state: GradNormLogState, params=None):
    del params
    norm = global_norm(updates).astype(jnp.float32)
    count = state.grad_norm_log_count
    log = state.grad_norm_log.at[count % capacity].set(norm)
    judged = count >= spike_window
    spike = judged & _is_spike(norm, state.spike_norm_window, spike_threshold)
    # The flags of the last spike_score_window judged steps, and their sum kept
    # exactly (integers), so a long score window costs nothing per step.
    j = state.grad_norm_judged_steps
    slot = j % spike_score_window
    dropped = state.grad_norm_spike_flags[slot] & (j >= spike_score_window)
    flags = state.grad_norm_spike_flags.at[slot].set(
        jnp.where(judged, spike, state.grad_norm_spike_flags[slot]))
    in_window = state.grad_norm_spikes_in_window + jnp.where(
        judged, spike.astype(jnp.int32) - dropped.astype(jnp.int32), 0)
    j = jnp.where(judged, optax.safe_increment(j), j)
    n = jnp.minimum(j, spike_score_window)
    score = in_window.astype(jnp.float32) / jnp.maximum(n, 1).astype(jnp.float32)
    return updates, GradNormLogState(
        grad_norm_log=log,
        grad_norm_log_count=optax.safe_increment(count),
        spike_norm_window=state.spike_norm_window.at[count % spike_window].set(norm),
        grad_norm_spike_flags=flags,
        grad_norm_spikes_in_window=in_window.astype(jnp.int32),
        grad_norm_judged_steps=j.astype(jnp.int32),
        grad_norm_spike_total=jnp.where(spike, optax.safe_increment(state.grad_norm_spike_total),
                                        state.grad_norm_spike_total),
        grad_norm_spike_score=score,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _is_spike(norm: jax.Array, window: jax.Array, threshold: float) -> jax.Array:
  """``norm`` is non-finite, or above mean + threshold * std of the window's finite values."""
  finite = jnp.isfinite(window)
  n = jnp.maximum(jnp.sum(finite), 1).astype(jnp.float32)
  mean = jnp.sum(jnp.where(finite, window, 0.0)) / n
  std = jnp.sqrt(jnp.sum(jnp.where(finite, (window - mean) ** 2, 0.0)) / n)
  return ~jnp.isfinite(norm) | ((std > 0) & (norm > mean + threshold * std))


def _find_log(opt_state: Any) -> GradNormLogState:
  """The log in ``opt_state``; refuses one whose steps could be skipped silently."""
  if isinstance(opt_state, GradNormLogState):
    return opt_state
  found = optax.tree.get(opt_state, "GradNormLogState")
  if found is None:
    raise ValueError("opt_state must contain a GradNormLogState (chain optstab.record_grad_norm() "
                     "into the optimizer); none found.")
  for _, guarded in optax.tree.get_all_with_path(opt_state, "ApplyIfFiniteState"):
    if optax.tree.get(guarded.inner_state, "GradNormLogState") is not None:
      raise ValueError(
          "opt_state has its GradNormLogState inside optax.apply_if_finite, which skips the "
          "recorder on non-finite steps, so the log would lose its alignment with the steps. "
          "Put optstab.record_grad_norm() before apply_if_finite: "
          "optax.chain(optstab.record_grad_norm(), optax.apply_if_finite(inner, ...)).")
  return found


def _unroll(log: np.ndarray, count: int, start: int) -> np.ndarray:
  """Norms of steps ``[start, count)`` from a ring buffer, oldest first."""
  capacity = log.shape[0]
  steps = np.arange(start, count)
  return log[steps % capacity]


def recorded_grad_norms(opt_state: Any, *, with_steps: bool = False):
  """The norms still held in the ring buffer, oldest first, as NumPy.

  One device-to-host transfer. Returns the last ``min(count, capacity)`` norms,
  i.e. all of them if the run is no longer than the buffer; use
  :class:`GradNormRecorder` to keep every step of a longer run.

  Args:
    opt_state: an optimizer state containing a :class:`GradNormLogState`
      (anywhere in a chain; found with ``optax.tree.get``).
    with_steps: also return the step index (from 0) of each norm.

  Returns:
    ``norms`` (float32 ``[n]``), or ``(steps, norms)`` if ``with_steps``.
  """
  found = _find_log(opt_state)
  log, count = jax.device_get((found.grad_norm_log, found.grad_norm_log_count))
  count = int(count)
  start = max(0, count - log.shape[0])
  norms = _unroll(np.asarray(log), count, start)
  if with_steps:
    return np.arange(start, count), norms
  return norms


class GradNormRecorder:
  """Host-side log of every step's unclipped norm, fetched in batches.

  Call :meth:`observe` once per training step with the current optimizer
  state: it only counts, except every ``fetch_every`` calls, when it copies the
  device ring buffer to the host once and appends the norms written since the
  previous fetch. :meth:`norms` fetches what remains and returns the whole run.

  After a checkpoint restore, continue with :meth:`resume` (the recorder's
  norms so far, e.g. saved beside the checkpoint, and the restored state),
  not with a fresh recorder: that one would take the restored step count for
  norms it never fetched.

  Args:
    fetch_every: steps between fetches, an integer in [1, capacity]; ``None``
      (default) uses the buffer's capacity (one transfer per ``capacity``
      steps). A value above the capacity fails at the first :meth:`observe`
      (the capacity is the state's static shape: no transfer).

  Example:
    >>> import jax, jax.numpy as jnp, optax, optstab
    >>> opt = optax.chain(optstab.record_grad_norm(capacity=4), optax.sgd(0.1))
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> recorder = optstab.GradNormRecorder()
    >>> for step in range(10):
    ...   _, state = opt.update(jnp.array([float(step)]), state, params)
    ...   recorder.observe(state)   # fetches at steps 3 and 7 only
    >>> recorder.norms(state)
    array([0., 1., 2., 3., 4., 5., 6., 7., 8., 9.], dtype=float32)
  """

  def __init__(self, fetch_every: int | None = None):
    if fetch_every is not None:
      _validation.check_positive_int("fetch_every", fetch_every)
    self._fetch_every = fetch_every
    self._calls = 0
    self._fetched = 0  # device count at the last fetch
    self._chunks: list[np.ndarray] = []
    self._capacity: int | None = None
    self.num_fetches = 0

  @classmethod
  def resume(cls, opt_state: Any, norms: Any, fetch_every: int | None = None) -> "GradNormRecorder":
    """A recorder continuing a run restored from a checkpoint.

    ``opt_state`` is the restored state; ``norms`` the norms recorded before
    (``recorder.norms()`` saved with the checkpoint, or saved later: rolling
    back to an older checkpoint is fine). With ``c`` the restored step count,
    the new recorder holds ``norms[:c]``, completed from the state's ring
    buffer if ``norms`` is shorter (NaN for steps neither holds), and records
    on from step ``c``. One transfer.

    Example:
      >>> import jax.numpy as jnp, optax, optstab
      >>> opt = optax.chain(optstab.record_grad_norm(capacity=4), optax.sgd(0.1))
      >>> params, state = jnp.zeros(1), None
      >>> state = opt.init(params)
      >>> recorder = optstab.GradNormRecorder()
      >>> for step in range(6):
      ...   _, state = opt.update(jnp.array([float(step)]), state, params)
      ...   recorder.observe(state)
      ...   if step == 2:
      ...     checkpoint, saved = state, recorder.norms(state)
      >>> recorder = optstab.GradNormRecorder.resume(checkpoint, saved)  # roll back to step 3
      >>> _, state = opt.update(jnp.array([30.0]), checkpoint, params)
      >>> recorder.observe(state)
      >>> recorder.norms(state)
      array([ 0.,  1.,  2., 30.], dtype=float32)
    """
    recorder = cls(fetch_every)
    before = np.asarray(norms, np.float32).ravel()
    log = _find_log(opt_state)
    recorder._check_capacity(log)
    ring, count = jax.device_get((log.grad_norm_log, log.grad_norm_log_count))
    count = int(count)
    kept = before[:count]
    if kept.size < count:
      recorder._fetched = kept.size
      recorder._chunks.append(kept)
      recorder._append_from(np.asarray(ring), count, warn=False)
    else:
      recorder._chunks.append(kept)
      recorder._fetched = count
    recorder._calls = count
    return recorder

  def _check_capacity(self, log: GradNormLogState) -> int:
    capacity = log.grad_norm_log.shape[0]  # static shape: no sync
    if self._fetch_every is not None and self._fetch_every > capacity:
      raise ValueError(f"fetch_every must be an integer in [1, capacity={capacity}]; "
                       f"got {self._fetch_every!r}.")
    return capacity

  def observe(self, opt_state: Any) -> None:
    """Records one step; transfers only every ``fetch_every`` calls."""
    self._calls += 1
    if self._capacity is None:
      self._capacity = self._check_capacity(_find_log(opt_state))
    every = self._capacity if self._fetch_every is None else self._fetch_every
    if self._calls % every == 0:
      self.fetch(opt_state)

  def fetch(self, opt_state: Any) -> None:
    """Copies the buffer to the host now and appends the new norms."""
    state = _find_log(opt_state)
    self._check_capacity(state)
    log, count = jax.device_get((state.grad_norm_log, state.grad_norm_log_count))
    count = int(count)
    self.num_fetches += 1
    if count < self._fetched:
      raise ValueError("opt_state's grad_norm_log_count went backwards (a checkpoint restore? "
                       "continue with GradNormRecorder.resume(restored_state, norms)); "
                       "otherwise use one recorder per run.")
    self._append_from(np.asarray(log), count, warn=True)

  def _append_from(self, log: np.ndarray, count: int, *, warn: bool) -> None:
    """Appends the norms of steps [fetched, count) held in ``log``, NaN for lost ones."""
    start = max(self._fetched, count - log.shape[0])
    if start > self._fetched:
      lost = start - self._fetched
      if warn:
        warnings.warn(f"GradNormRecorder: {lost} norms were overwritten before being fetched "
                      "(fetch at least every `capacity` steps); they are recorded as NaN.",
                      RuntimeWarning, stacklevel=3)
      self._chunks.append(np.full([lost], np.nan, np.float32))
    self._chunks.append(_unroll(log, count, start))
    self._fetched = count

  def norms(self, opt_state: Any | None = None) -> np.ndarray:
    """All recorded norms (step 0 first); fetches first if ``opt_state`` is given."""
    if opt_state is not None:
      self.fetch(opt_state)
    if not self._chunks:
      return np.zeros([0], np.float32)
    return np.concatenate(self._chunks)


_ADVICE = ("{pct:.3g}% of updates were clipped (more than 50%): clipping this aggressively "
           "is a strange way to lower the learning rate (the FAQ's \"Gradient clipping\"). Lower the learning rate "
           "instead, or raise the clipping threshold.")


@dataclasses.dataclass(frozen=True)
class ClippingSummary:
  """How much clipping a run did (the FAQ's "Gradient clipping").

  Attributes:
    num_steps: updates considered.
    num_clipped: updates clipped.
    fraction_clipped: ``num_clipped / num_steps``.
    num_nonfinite: updates whose norm was NaN or Inf (never clipped).
    threshold: the (final, for an adaptive threshold) threshold, or ``None``.
    median_norm: median of the finite unclipped norms (NaN if unknown).
    p90_norm: their 90th percentile, the FAQ's default threshold (NaN if unknown).
    max_norm: their maximum (NaN if unknown).
    advice: ``None``, or, when more than 50% of updates were clipped, the
      advice to lower the learning rate instead.
  """

  num_steps: int
  num_clipped: int
  fraction_clipped: float
  num_nonfinite: int
  threshold: float | None
  median_norm: float
  p90_norm: float
  max_norm: float
  advice: str | None

  def __str__(self) -> str:
    lines = [f"clipped {self.num_clipped} of {self.num_steps} updates "
             f"({100 * self.fraction_clipped:.3g}%)"]
    if self.threshold is not None:
      lines.append(f"threshold: {self.threshold:.4g}")
    if np.isfinite(self.median_norm):
      lines.append(f"unclipped norm: median {self.median_norm:.4g}, 90th percentile "
                   f"{self.p90_norm:.4g}, max {self.max_norm:.4g}")
    if self.num_nonfinite:
      lines.append(f"non-finite norms: {self.num_nonfinite}")
    if self.advice:
      lines.append(self.advice)
    return "\n".join(lines)


def _make_summary(num_steps, num_clipped, num_nonfinite, threshold, finite_norms):
  fraction = num_clipped / num_steps if num_steps else 0.0
  if finite_norms is not None and finite_norms.size:
    median, p90, top = (float(np.median(finite_norms)), float(np.percentile(finite_norms, 90.0)),
                        float(np.max(finite_norms)))
  else:
    median = p90 = top = float("nan")
  advice = _ADVICE.format(pct=100 * fraction) if fraction > 0.5 else None
  return ClippingSummary(num_steps=int(num_steps), num_clipped=int(num_clipped),
                         fraction_clipped=float(fraction), num_nonfinite=int(num_nonfinite),
                         threshold=threshold, median_norm=median, p90_norm=p90, max_norm=top,
                         advice=advice)


def summarize_clipping(norms: Any, threshold: Any) -> ClippingSummary:
  """Summary of clipping a log of unclipped norms at ``threshold``.

  An update counts as clipped when its norm is finite and above the threshold
  in force at that step (the FAQ's rule ``||g|| > lambda``).

  Args:
    norms: 1-D array-like of unclipped global norms, one per update.
    threshold: a finite real > 0 (fixed clipping), or a 1-D array-like of the
      per-step thresholds (adaptive clipping, e.g. the ``threshold`` field of
      :class:`optstab.PercentileClipState` recorded each step; ``inf`` where
      no clipping was in force).

  Returns:
    A :class:`ClippingSummary`; its ``threshold`` is the fixed one or the last
    per-step one.

  Raises:
    ValueError: if ``norms`` is empty or has no finite entry, or
      ``threshold`` is not positive / not the same length as ``norms``.

  Example:
    >>> import optstab
    >>> s = optstab.summarize_clipping([1.0, 5.0, 6.0, 7.0], threshold=2.0)
    >>> s.fraction_clipped, s.advice is not None
    (0.75, True)
  """
  arr = _validation.check_norm_log("norms", norms)
  finite = np.isfinite(arr)
  thr = np.asarray(threshold, dtype=np.float64)
  if thr.ndim == 0:
    _validation.check_positive("threshold", float(thr))
    last = float(thr)
  else:
    if thr.shape != arr.shape:
      raise ValueError(f"threshold must be a positive scalar or an array shaped like norms "
                       f"{arr.shape}; got shape {thr.shape}.")
    if np.any(np.isnan(thr)) or np.any(thr <= 0):
      raise ValueError("threshold must be > 0 (inf allowed) at every step; got a NaN or a value <= 0.")
    last = float(thr[-1])
  clipped = finite & (arr > thr)
  return _make_summary(arr.size, int(clipped.sum()), int((~finite).sum()), last, arr[finite])


def summarize_clip_state(opt_state: Any, norms: Any | None = None) -> ClippingSummary:
  """Summary from the counters of :func:`optstab.percentile_clip`'s state.

  Reads ``num_steps``, ``num_clipped``, ``num_nonfinite`` and ``threshold``
  with ``optax.tree.get`` (one transfer), so it works anywhere in a chain.

  Args:
    opt_state: an optimizer state containing a ``PercentileClipState``.
    norms: optional log of unclipped norms for the median/percentile/max
      fields (e.g. from :class:`GradNormRecorder`).

  Returns:
    A :class:`ClippingSummary` over every update the state has seen.
  """
  fields = ("num_steps", "num_clipped", "num_nonfinite", "threshold")
  values = [optax.tree.get(opt_state, f) for f in fields]
  if any(v is None for v in values):
    raise ValueError("opt_state must contain a PercentileClipState (num_steps, num_clipped, "
                     "num_nonfinite, threshold); none found.")
  num_steps, num_clipped, num_nonfinite, threshold = jax.device_get(values)
  finite_norms = None
  if norms is not None:
    arr = np.asarray(norms, dtype=np.float64)
    finite_norms = arr[np.isfinite(arr)]
  thr = float(threshold)
  # percentile_clip stores the largest float32 (a finite +inf) when no threshold is in force.
  in_force = np.isfinite(thr) and thr < float(np.finfo(np.float32).max)
  return _make_summary(int(num_steps), int(num_clipped), int(num_nonfinite),
                       thr if in_force else None, finite_norms)
