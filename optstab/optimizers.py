r"""The playbook FAQ's six optimizers (its update rules) as exact optax transformations.

Every optimizer here returns an :class:`optax.GradientTransformation` whose
updates are :math:`\theta_{t+1} - \theta_t`, to be applied with
:func:`optax.apply_updates`. The step :math:`t` counts from 0, so a schedule
``learning_rate(t)`` gives the rate of the first update at ``t = 0``.

Where optax already computes the FAQ's equation (SGD, Momentum, Nesterov), the
optimizer is built from optax's own blocks (:func:`optax.trace`,
:func:`optax.scale_by_learning_rate`) and the tests prove the equality. Where it
does not (Adam's and NAdam's placement of :math:`\epsilon` and bias
correction), the learning-rate-free block is written here
(:func:`scale_by_faq_adam`, :func:`scale_by_faq_nadam`) and the tests show that
the difference from optax's namesake is exactly the one documented.
RMSProp puts the learning rate *inside* its momentum accumulator, so it has no
learning-rate-free block: :func:`rmsprop` is one transformation that takes the
schedule.

Dtypes: each update leaf has the dtype of the incoming gradient leaf (for
gradients from :func:`jax.grad` that is the parameter's dtype), whatever the
dtype of the state or of an injected hyperparameter. The state has the
parameter's dtype unless a ``mu_dtype`` / ``accumulator_dtype`` is given; step
counters are ``int32`` and saturate instead of overflowing
(:func:`optax.safe_increment`). Adam's bias correction is a scalar computed
in ``float32`` (``float64`` with ``jax_enable_x64``), never in a
low-precision parameter dtype.

Complex parameters: as in optax, the second moments accumulate
:math:`|g|^2 = g \bar g` (real; stored in the parameter's complex dtype with
a zero imaginary part), so :math:`g^2` in the equations below reads
:math:`|g|^2` for complex :math:`g`. Feed the optimizers the conjugate of
``jax.grad`` (``jnp.conj(jax.grad(loss)(z))``), the steepest-descent
direction for a real loss of complex parameters, as with optax. Real
parameters take exactly the ``g * g`` path they always did.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optstab import _validation

__all__ = [
    "FaqRmsPropState",
    "ScaleByFaqAdamState",
    "adam",
    "momentum",
    "nadam",
    "nesterov",
    "rmsprop",
    "scale_by_faq_adam",
    "scale_by_faq_nadam",
    "sgd",
]


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _check_decay(name: str, value: Any) -> Any:
  return _validation.check_in_range(name, value, 0.0, 1.0)


def _abs_sq(g: jax.Array) -> jax.Array:
  """:math:`|g|^2`: ``g * g`` for real ``g``; ``re(g)^2 + im(g)^2`` for complex ``g``."""
  if jnp.iscomplexobj(g):
    return g.real * g.real + g.imag * g.imag
  return g * g


def _one_minus_power(beta: jax.typing.ArrayLike, t: jax.Array) -> jax.Array:
  """``1 - beta**t`` without the cancellation of the naive form.

  ``1 - 0.999**t`` in float32 loses ~1e-5 relative accuracy at ``t = 1``
  (``0.999`` itself rounds); ``-expm1(t * log(beta))`` with ``log(beta)``
  taken in double precision when ``beta`` is a Python number keeps it to a few
  float32 ulps. ``beta = 0`` gives 1 for every ``t >= 1``.
  """
  if isinstance(beta, numbers.Real) and not isinstance(beta, bool):
    log_beta = math.log(beta) if beta > 0 else -math.inf
  else:
    log_beta = jnp.log(jnp.asarray(beta, t.dtype))
  return -jnp.expm1(t * log_beta)


def _bias_correction(
    b1: jax.typing.ArrayLike, b2: jax.typing.ArrayLike, count: jax.Array
) -> jax.Array:
  r"""The FAQ's single bias correction :math:`b_{t+1}`.

  .. math::
    b_{t+1} = \frac{\sqrt{1 - \beta_2^{t+1}}}{1 - \beta_1^{t+1}}

  Args:
    b1: :math:`\beta_1`.
    b2: :math:`\beta_2`.
    count: :math:`t + 1` (the already incremented int32 step counter, >= 1).

  Returns:
    A scalar in the default float dtype (float32 unless x64 is enabled), never
    in a low-precision parameter dtype.
  """
  t = count.astype(jnp.result_type(float))
  return jnp.sqrt(_one_minus_power(b2, t)) / _one_minus_power(b1, t)


def _cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
  return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.asarray(y).dtype), tree, like)


def _keep_dtypes(
    tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Keeps update dtypes equal to the gradients' and state dtypes constant.

  optax's :func:`optax.scale_by_learning_rate` keeps the dtype for a Python
  float or a schedule, but an array learning rate (what
  :func:`optax.inject_hyperparams` passes) promotes ``bfloat16`` updates to
  ``float32``; likewise :func:`optax.trace` with an array ``decay`` turns a
  ``bfloat16`` accumulator into ``float32`` after the first step (which also
  retraces a jitted step). Casting each update leaf to its gradient's dtype
  and each state leaf to its previous dtype fixes both; the casts are no-ops
  (and compile to nothing) otherwise.
  """
  inner = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    return _cast_like(new_updates, updates), _cast_like(new_state, state)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


# ----------------------------------------------------------------------------
# SGD, Momentum, Nesterov: optax's own blocks compute the FAQ's equations.
# ----------------------------------------------------------------------------


def sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  r"""Plain stochastic gradient descent, as the FAQ writes it.

  .. math::
    \theta_{t+1} = \theta_t - \eta_t \, g_t

  FAQ symbols: :math:`\eta` -> ``learning_rate``.

  Built as ``optax.scale_by_learning_rate(learning_rate)``; it computes the
  same updates as ``optax.sgd(learning_rate)`` (no momentum). The state is
  optax's (an empty state, or a ``ScaleByScheduleState`` with an int32
  ``count`` when ``learning_rate`` is a schedule).

  Args:
    learning_rate: :math:`\eta_t`: a finite real >= 0, or an optax schedule
      mapping the step ``t`` (counted from 0) to the rate.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: if ``learning_rate`` is negative or not finite.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> tx = optstab.sgd(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([0.5, 1.0]), state, params)
    >>> print(optax.apply_updates(params, updates))
    [ 0.95 -2.1 ]
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  return _keep_dtypes(optax.scale_by_learning_rate(learning_rate))


def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,  # pylint: disable=redefined-outer-name
    *,
    accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Heavy-ball momentum with the learning rate OUTSIDE the accumulator.

  .. math::
    v_0 = 0, \qquad
    v_{t+1} = \gamma v_t + g_t, \qquad
    \theta_{t+1} = \theta_t - \eta_t \, v_{t+1}

  FAQ symbols: :math:`\eta` -> ``learning_rate``, :math:`\gamma` ->
  ``momentum``.

  Built as ``chain(optax.trace(momentum), optax.scale_by_learning_rate(lr))``:
  the learning-rate-free block is :func:`optax.trace` itself. It computes the
  same updates as ``optax.sgd(learning_rate, momentum=momentum)``; the state is
  ``(optax.TraceState(trace=v), <learning-rate state>)``.

  .. warning::
    Because the rate multiplies :math:`v_{t+1}` (not each gradient as it
    enters the accumulator), a schedule change at step :math:`t` rescales the
    whole accumulated velocity at once. PyTorch's ``SGD(momentum=...)`` does the
    same; TF1's ``MomentumOptimizer`` and optstab's :func:`rmsprop` put the
    rate inside the accumulator instead.

  Args:
    learning_rate: :math:`\eta_t`: a finite real >= 0 or an optax schedule.
    momentum: :math:`\gamma \in [0, 1)`. Default 0.9.
    accumulator_dtype: optional dtype of :math:`v` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a negative or non-finite ``learning_rate`` or a
      ``momentum`` outside ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> tx = optstab.momentum(learning_rate=0.1, momentum=0.5)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):  # v = 1, then v = 0.5 * 1 + 1 = 1.5
    ...   updates, state = tx.update(jnp.array([1.0]), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params)  # 1 - 0.1 * 1 - 0.1 * 1.5
    [0.75]
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  momentum = _check_decay("momentum", momentum)
  accumulator_dtype = _validation.check_float_dtype("accumulator_dtype", accumulator_dtype)
  return _keep_dtypes(
      optax.chain(
          optax.trace(decay=momentum, nesterov=False, accumulator_dtype=accumulator_dtype),
          optax.scale_by_learning_rate(learning_rate),
      )
  )


def nesterov(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,  # pylint: disable=redefined-outer-name
    *,
    accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Nesterov momentum, as the FAQ writes it.

  .. math::
    v_0 = 0, \qquad
    v_{t+1} = \gamma v_t + g_t, \qquad
    \theta_{t+1} = \theta_t - \eta_t \, (\gamma v_{t+1} + g_t)

  FAQ symbols: :math:`\eta` -> ``learning_rate``, :math:`\gamma` ->
  ``momentum``.

  Built as ``chain(optax.trace(momentum, nesterov=True),
  optax.scale_by_learning_rate(lr))``; it computes the same updates as
  ``optax.sgd(learning_rate, momentum=momentum, nesterov=True)``. The state is
  ``(optax.TraceState(trace=v), <learning-rate state>)``.

  Args:
    learning_rate: :math:`\eta_t`: a finite real >= 0 or an optax schedule.
    momentum: :math:`\gamma \in [0, 1)`. Default 0.9.
    accumulator_dtype: optional dtype of :math:`v` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a negative or non-finite ``learning_rate`` or a
      ``momentum`` outside ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> tx = optstab.nesterov(learning_rate=0.1, momentum=0.5)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1.0]), state, params)
    >>> print(updates)  # -0.1 * (0.5 * 1 + 1)
    [-0.15]
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  momentum = _check_decay("momentum", momentum)
  accumulator_dtype = _validation.check_float_dtype("accumulator_dtype", accumulator_dtype)
  return _keep_dtypes(
      optax.chain(
          optax.trace(decay=momentum, nesterov=True, accumulator_dtype=accumulator_dtype),
          optax.scale_by_learning_rate(learning_rate),
      )
  )


# ----------------------------------------------------------------------------
# RMSProp: the learning rate sits inside the momentum accumulator.
# ----------------------------------------------------------------------------


class FaqRmsPropState(NamedTuple):
  """State of :func:`rmsprop`."""

  count: jax.Array  # shape=(), dtype=jnp.int32: the step t, indexes the schedule.
  nu: optax.Updates  # v_t, the moving average of g^2; v_0 = 1.
  mom: Optional[optax.Updates]  # m_t (None when momentum is None).


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: Optional[float] = None,  # pylint: disable=redefined-outer-name
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSProp as the FAQ writes it (TF1's form).

  .. math::
    \begin{align*}
      v_0 &= 1, \quad m_0 = 0 \\
      v_{t+1} &= \rho v_t + (1 - \rho) g_t^2 \\
      m_{t+1} &= \gamma m_t + \frac{\eta_t}{\sqrt{v_{t+1} + \epsilon}} g_t \\
      \theta_{t+1} &= \theta_t - m_{t+1}
    \end{align*}

  FAQ symbols: :math:`\eta` -> ``learning_rate``, :math:`\rho` -> ``decay``,
  :math:`\gamma` -> ``momentum``, :math:`\epsilon` -> ``eps``.

  The learning rate multiplies each gradient as it *enters* the momentum
  accumulator :math:`m`, so a schedule change affects only future steps
  (unlike :func:`momentum`, where it rescales the whole velocity). This is why
  RMSProp has no learning-rate-free ``scale_by_*`` block here: it is one
  transformation that takes the schedule and keeps its own ``count``.

  Defaults: ``decay=0.9``, ``momentum=None``, ``eps=1e-8`` (TF1 used
  ``1e-10``; optax's ``rmsprop`` uses ``1e-8``, also inside the square root).
  With ``momentum=None`` (as in optax) the accumulator is not stored
  (``state.mom is None``) and :math:`m_{t+1}` is the current step, i.e.
  :math:`\gamma = 0`; any number, ``0.0`` included, keeps it. So the state's
  structure depends only on whether ``momentum`` is ``None``, the same under
  :func:`optax.inject_hyperparams` (which leaves ``None`` alone and turns
  numbers into arrays) as without: a checkpoint of one restores into the other.

  .. warning::
    optax's ``rmsprop`` defaults differ: it starts :math:`v_0 = 0`
    (``initial_scale=0.0``), which makes the first steps up to
    :math:`1/\sqrt{1-\rho}` times larger. With ``initial_scale=1.0``,
    ``eps_in_sqrt=True`` and ``momentum=gamma``, optax 0.2.8's ``rmsprop``
    computes these same updates, for a constant or a varying learning rate
    (optax also scales by the rate before its ``trace``; its trace stores
    :math:`-m`). PyTorch's ``RMSprop`` differs more: :math:`v_0 = 0`,
    :math:`\epsilon` outside the square root, and the rate outside the
    momentum buffer.

  Args:
    learning_rate: :math:`\eta_t`: a finite real >= 0 or an optax schedule.
    decay: :math:`\rho \in [0, 1)`. Default 0.9.
    momentum: :math:`\gamma \in [0, 1)`, or ``None`` (default): no
      accumulator, the same updates as ``0.0``.
    eps: :math:`\epsilon \ge 0`, added inside the square root. Default 1e-8.
    accumulator_dtype: optional dtype of :math:`m` (default: the
      parameter's). :math:`v` always has the parameter's dtype.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with state
    :class:`FaqRmsPropState` (extra keyword arguments to ``update`` are
    accepted and ignored, as by the other optimizers here).

  Raises:
    ValueError: for a negative or non-finite ``learning_rate``, ``decay`` or
      ``momentum`` outside ``[0, 1)``, or a negative or non-finite ``eps``.

  Example:
    >>> import jax.numpy as jnp, optax, optstab
    >>> tx = optstab.rmsprop(learning_rate=0.1, decay=0.75, eps=0.0)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([2.0]), state, params)
    >>> print(state.nu, updates.round(5))  # v = 0.75 + 0.25 * 4; -0.2 / sqrt(1.75)
    [1.75] [-0.15119]

  References:
    Tieleman and Hinton, Lecture 6.5, COURSERA: Neural Networks for Machine
    Learning, 2012; ``tf.compat.v1.train.RMSPropOptimizer``.
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  decay = _check_decay("decay", decay)
  keep_mom = momentum is not None
  if keep_mom:
    momentum = _check_decay("momentum", momentum)
  eps = _validation.check_non_negative("eps", eps)
  accumulator_dtype = _validation.check_float_dtype("accumulator_dtype", accumulator_dtype)

  def init_fn(params):
    nu = optax.tree.full_like(params, 1.0)  # v_0 = 1
    mom = optax.tree.zeros_like(params, dtype=accumulator_dtype) if keep_mom else None
    return FaqRmsPropState(count=jnp.zeros([], jnp.int32), nu=nu, mom=mom)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
    # v_{t+1} = rho v_t + (1 - rho) g_t^2   (|g_t|^2 for complex g)
    nu = jax.tree.map(lambda g, v: decay * v + (1.0 - decay) * _abs_sq(g), updates, state.nu)
    # eta_t / sqrt(v_{t+1} + eps) * g_t
    step = jax.tree.map(lambda g, v: eta * jax.lax.rsqrt(v + eps) * g, updates, nu)
    if keep_mom:
      # m_{t+1} = gamma m_t + eta_t / sqrt(v_{t+1} + eps) g_t
      mom = jax.tree.map(lambda m, s: momentum * m + s, state.mom, step)
      new_updates = jax.tree.map(lambda m: -m, mom)  # theta_{t+1} - theta_t = -m_{t+1}
      mom = _cast_like(mom, state.mom)
    else:
      mom = None
      new_updates = jax.tree.map(lambda s: -s, step)
    new_state = FaqRmsPropState(
        count=optax.safe_increment(state.count),
        nu=_cast_like(nu, state.nu),
        mom=mom,
    )
    return _cast_like(new_updates, updates), _cast_like(new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Adam and NAdam: eps outside the single bias correction.
# ----------------------------------------------------------------------------


class ScaleByFaqAdamState(NamedTuple):
  """State of :func:`scale_by_faq_adam` and :func:`scale_by_faq_nadam`."""

  count: jax.Array  # shape=(), dtype=jnp.int32: t, the number of updates so far.
  mu: optax.Updates  # m_t, first moment (mu_dtype or the parameter's dtype).
  nu: optax.Updates  # v_t, second moment (the parameter's dtype).


def _scale_by_faq_adam_family(
    b1: jax.typing.ArrayLike,
    b2: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    mu_dtype: Optional[jax.typing.DTypeLike],
    nesterov: bool,
) -> optax.GradientTransformation:
  b1 = _check_decay("b1", b1)
  b2 = _check_decay("b2", b2)
  eps = _validation.check_non_negative("eps", eps)
  mu_dtype = _validation.check_float_dtype("mu_dtype", mu_dtype)

  def init_fn(params):
    return ScaleByFaqAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),  # m_0 = 0
        nu=optax.tree.zeros_like(params),  # v_0 = 0
    )

  def update_fn(updates, state, params=None):
    del params
    # m_{t+1} = beta1 m_t + (1 - beta1) g_t ;  v_{t+1} = beta2 v_t + (1 - beta2) g_t^2
    mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * _abs_sq(g), updates, state.nu)
    count_inc = optax.safe_increment(state.count)
    b = _bias_correction(b1, b2, count_inc)  # b_{t+1}
    if nesterov:
      # (beta1 m_{t+1} + (1 - beta1) g_t) / (sqrt(v_{t+1}) + eps) * b_{t+1}
      new_updates = jax.tree.map(
          lambda g, m, v: (b1 * m + (1.0 - b1) * g) / (jnp.sqrt(v) + eps) * b,
          updates, mu, nu,
      )
    else:
      # m_{t+1} / (sqrt(v_{t+1}) + eps) * b_{t+1}
      new_updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps) * b, mu, nu)
    new_state = ScaleByFaqAdamState(
        count=count_inc, mu=_cast_like(mu, state.mu), nu=_cast_like(nu, state.nu)
    )
    return _cast_like(new_updates, updates), _cast_like(new_state, state)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_faq_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""Adam's learning-rate-free direction, as the FAQ writes it.

  .. math::
    \begin{align*}
      m_0 &= v_0 = 0 \\
      m_{t+1} &= \beta_1 m_t + (1 - \beta_1) g_t \\
      v_{t+1} &= \beta_2 v_t + (1 - \beta_2) g_t^2 \\
      b_{t+1} &= \sqrt{1 - \beta_2^{t+1}} \,/\, (1 - \beta_1^{t+1}) \\
      u_t &= \frac{m_{t+1}}{\sqrt{v_{t+1}} + \epsilon} \, b_{t+1}
    \end{align*}

  FAQ symbols: :math:`\beta_1` -> ``b1``, :math:`\beta_2` -> ``b2``,
  :math:`\epsilon` -> ``eps`` (the learning rate :math:`\alpha` is not here).
  The output :math:`u_t` is not negated; :func:`adam` chains it with
  :func:`optax.scale_by_learning_rate`.

  .. warning::
    :func:`optax.scale_by_adam` computes
    :math:`\hat m / (\sqrt{\hat v} + \epsilon)` with both moments
    bias-corrected. Since
    :math:`u_t = \hat m / (\sqrt{\hat v} + \epsilon / \sqrt{1 - \beta_2^{t+1}})`,
    this block equals optax's with :math:`\epsilon` replaced by the
    step-dependent :math:`\epsilon / \sqrt{1 - \beta_2^{t+1}}` (here
    :math:`\epsilon` sits outside the bias correction). The two agree exactly
    when ``eps=0``.

  Args:
    b1: :math:`\beta_1 \in [0, 1)`. Default 0.9.
    b2: :math:`\beta_2 \in [0, 1)`. Default 0.999.
    eps: :math:`\epsilon \ge 0`. Default 1e-8.
    mu_dtype: optional dtype of :math:`m` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByFaqAdamState`.

  Raises:
    ValueError: for ``b1`` or ``b2`` outside ``[0, 1)`` or a negative or
      non-finite ``eps``.

  Example:
    >>> import jax.numpy as jnp, optstab
    >>> tx = optstab.scale_by_faq_adam(eps=0.0)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([3.0, -0.5]), state)
    >>> print(u.round(5))  # the first step is sign(g) when eps = 0
    [ 1. -1.]
  """
  return _scale_by_faq_adam_family(b1, b2, eps, mu_dtype, nesterov=False)


def scale_by_faq_nadam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""NAdam's learning-rate-free direction, as the FAQ writes it.

  :math:`m, v, b` as in :func:`scale_by_faq_adam`;

  .. math::
    u_t = \frac{\beta_1 m_{t+1} + (1 - \beta_1) g_t}{\sqrt{v_{t+1}} + \epsilon}
      \, b_{t+1}

  One bias correction :math:`b_{t+1}` multiplies both terms. FAQ symbols:
  :math:`\beta_1` -> ``b1``, :math:`\beta_2` -> ``b2``, :math:`\epsilon` ->
  ``eps``. The output is not negated; :func:`nadam` chains it with
  :func:`optax.scale_by_learning_rate`.

  .. warning::
    :func:`optax.scale_by_adam` with ``nesterov=True`` (``optax.nadam``)
    corrects the two terms separately,
    :math:`\beta_1 m_{t+1} / (1 - \beta_1^{t+2}) + (1 - \beta_1) g_t / (1 -
    \beta_1^{t+1})`, and places :math:`\epsilon` after the bias correction of
    :math:`v`. With ``eps=0`` the two differ only in the first term's
    correction, :math:`1 - \beta_1^{t+1}` here versus :math:`1 - \beta_1^{t+2}`.

  Args:
    b1: :math:`\beta_1 \in [0, 1)`. Default 0.9.
    b2: :math:`\beta_2 \in [0, 1)`. Default 0.999.
    eps: :math:`\epsilon \ge 0`. Default 1e-8.
    mu_dtype: optional dtype of :math:`m` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformation` with state
    :class:`ScaleByFaqAdamState`.

  Raises:
    ValueError: for ``b1`` or ``b2`` outside ``[0, 1)`` or a negative or
      non-finite ``eps``.

  Example:
    >>> import jax.numpy as jnp, optstab
    >>> tx = optstab.scale_by_faq_nadam(eps=0.0)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([3.0, -0.5]), state)
    >>> print(u.round(5))  # 0.19 g / (0.0316 |g|) * 0.0316 / 0.1 = 1.9 sign(g)
    [ 1.9 -1.9]
  """
  return _scale_by_faq_adam_family(b1, b2, eps, mu_dtype, nesterov=True)


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with the FAQ's placement of :math:`\epsilon` (outside the bias correction).

  .. math::
    \begin{align*}
      m_0 &= v_0 = 0 \\
      m_{t+1} &= \beta_1 m_t + (1 - \beta_1) g_t \\
      v_{t+1} &= \beta_2 v_t + (1 - \beta_2) g_t^2 \\
      b_{t+1} &= \sqrt{1 - \beta_2^{t+1}} \,/\, (1 - \beta_1^{t+1}) \\
      \theta_{t+1} &= \theta_t - \alpha_t \,
        \frac{m_{t+1}}{\sqrt{v_{t+1}} + \epsilon} \, b_{t+1}
    \end{align*}

  FAQ symbols: :math:`\alpha` -> ``learning_rate``, :math:`\beta_1` -> ``b1``,
  :math:`\beta_2` -> ``b2``, :math:`\epsilon` -> ``eps``.

  Built as ``chain(scale_by_faq_adam(b1, b2, eps),
  optax.scale_by_learning_rate(learning_rate))``; the state is
  ``(ScaleByFaqAdamState(count, mu, nu), <learning-rate state>)``.

  .. warning::
    ``optax.adam`` adds :math:`\epsilon` after bias-correcting :math:`v`.
    This update equals ``optax.adam``'s with :math:`\epsilon` replaced by the
    step-dependent :math:`\epsilon / \sqrt{1 - \beta_2^{t+1}}`, so early
    steps here are damped more by :math:`\epsilon` (by up to
    :math:`1/\sqrt{1-\beta_2} \approx 31.6` times at ``t = 0`` for the
    defaults, fading as :math:`\beta_2^{t+1} \to 0`). With ``eps=0`` they are
    identical.

  Args:
    learning_rate: :math:`\alpha_t`: a finite real >= 0 or an optax schedule.
    b1: :math:`\beta_1 \in [0, 1)`. Default 0.9.
    b2: :math:`\beta_2 \in [0, 1)`. Default 0.999.
    eps: :math:`\epsilon \ge 0`. Default 1e-8.
    mu_dtype: optional dtype of :math:`m` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a negative or non-finite ``learning_rate``, ``b1`` or
      ``b2`` outside ``[0, 1)``, or a negative or non-finite ``eps``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optstab
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> tx = optstab.adam(learning_rate=0.1)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(bool(loss(params) < 1e-4))
    True

  References:
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014 (Section 2's "efficient" form).
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  return _keep_dtypes(
      optax.chain(
          scale_by_faq_adam(b1, b2, eps, mu_dtype=mu_dtype),
          optax.scale_by_learning_rate(learning_rate),
      )
  )


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam with the FAQ's single bias correction.

  :math:`m, v, b` as in :func:`adam`;

  .. math::
    \theta_{t+1} = \theta_t - \alpha_t \,
      \frac{\beta_1 m_{t+1} + (1 - \beta_1) g_t}{\sqrt{v_{t+1}} + \epsilon}
      \, b_{t+1}

  FAQ symbols: :math:`\alpha` -> ``learning_rate``, :math:`\beta_1` -> ``b1``,
  :math:`\beta_2` -> ``b2``, :math:`\epsilon` -> ``eps``.

  Built as ``chain(scale_by_faq_nadam(b1, b2, eps),
  optax.scale_by_learning_rate(learning_rate))``.

  .. warning::
    ``optax.nadam`` bias-corrects :math:`\beta_1 m_{t+1}` with
    :math:`1 - \beta_1^{t+2}` and :math:`(1 - \beta_1) g_t` with
    :math:`1 - \beta_1^{t+1}` (Dozat's form) and adds :math:`\epsilon` after
    bias-correcting :math:`v`; here one :math:`b_{t+1}` multiplies both terms
    and :math:`\epsilon` sits outside it.

  Args:
    learning_rate: :math:`\alpha_t`: a finite real >= 0 or an optax schedule.
    b1: :math:`\beta_1 \in [0, 1)`. Default 0.9.
    b2: :math:`\beta_2 \in [0, 1)`. Default 0.999.
    eps: :math:`\epsilon \ge 0`. Default 1e-8.
    mu_dtype: optional dtype of :math:`m` (default: the parameter's).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a negative or non-finite ``learning_rate``, ``b1`` or
      ``b2`` outside ``[0, 1)``, or a negative or non-finite ``eps``.

  Example:
    >>> import jax.numpy as jnp, optstab
    >>> tx = optstab.nadam(learning_rate=0.01, eps=0.0)
    >>> params = jnp.zeros(1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([4.0]), state, params)
    >>> print(updates.round(6))  # -0.01 * 1.9 on the first step (see scale_by_faq_nadam)
    [-0.019]

  References:
    Dozat, `Incorporating Nesterov Momentum into Adam
    <https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
  """
  learning_rate = _validation.check_learning_rate("learning_rate", learning_rate)
  return _keep_dtypes(
      optax.chain(
          scale_by_faq_nadam(b1, b2, eps, mu_dtype=mu_dtype),
          optax.scale_by_learning_rate(learning_rate),
      )
  )
