"""A picklable ``TrialFn`` built from a model, a loss, data and an optimizer.

:func:`make_trial_fn` turns what a JAX user already has (a ``flax.nnx`` model
factory or ``init``/``apply`` functions, a loss, a batch factory, evaluation
batches, an optimizer factory) into the :class:`optstab.runner.Workload` of the
shared trial loop, :func:`optstab.runner.train`: one compilation per sweep,
metrics fetched every ``fetch_every`` steps, a diverged trial stopped early.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from optstab import _validation
from optstab import optimizers as _optimizers
from optstab import runner
from optstab import telemetry
from optstab.trial import FixSupport

__all__ = ["TrialSpec", "make_trial_fn", "DEFAULT_OPTIMIZERS"]

#: The optimizers a built trial can switch to when a ``TrialConfig`` asks (the
#: fix ladder's optimizer switch), unless ``make_trial_fn(optimizers=...)`` names
#: others. An entry that is the trial's own optimizer is left out.
DEFAULT_OPTIMIZERS: Mapping[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _optimizers.adam,
}

OptimizerFactory = Callable[..., optax.GradientTransformation]


def _identity(value: Any) -> Any:
  """A hashable stand-in for ``value``: equal for equal structure, even after pickling.

  Functions and classes are themselves (pickled by reference, unpickled to the
  same object); ``functools.partial`` objects and containers are compared by
  their parts, so a trial function unpickled in a worker finds the steps that
  worker compiled for the previous trial.
  """
  if isinstance(value, functools.partial):
    return ("partial", _identity(value.func), _identity(value.args),
            _identity(dict(value.keywords)))
  if value is None or isinstance(value, (str, bytes, bool, int, float)):
    return value
  if isinstance(value, (tuple, list)):
    return (type(value).__name__, tuple(_identity(v) for v in value))
  if isinstance(value, Mapping):
    return ("mapping", tuple(sorted((str(k), _identity(v)) for k, v in value.items())))
  try:
    hash(value)
  except TypeError:
    return ("id", id(value))
  return value


@dataclasses.dataclass(frozen=True, eq=False)
class TrialSpec:
  """What a trial built by :func:`make_trial_fn` trains (the runner's setup).

  :func:`make_trial_fn` checks the user's arguments and builds it; a trial's
  fixes are then set in the same-named fields (``clip_norm``, ``optimizer``,
  ``skip_spikes``, by :func:`optstab.runner.apply_fixes`) and its
  ``TrialConfig.extra`` in ``extra``. Two specs are equal when they would
  compile the same steps: the same functions (by identity; ``functools.partial``
  by its parts) and the same fixes.

  Attributes:
    model: an ``nnx.Module`` factory, called ``model(rngs=nnx.Rngs(seed),
      **extra)``; ``None`` for the ``init``/``apply`` form.
    init: ``init(key, **extra) -> params`` (the ``init``/``apply`` form).
    apply: ``apply(params, *inputs, **extra)`` (the ``init``/``apply`` form).
    loss_fn: ``loss_fn(model, batch) -> scalar``, ``model`` being the module
      or ``functools.partial(apply, params)``.
    train_batches: ``train_batches(seed) -> iterator of batches``.
    metrics: ``(name, metric_fn)`` pairs evaluated on every evaluation batch,
      ``"loss"`` first.
    base_optimizer: the trial's own optimizer factory,
      ``base_optimizer(learning_rate) -> optax.GradientTransformation``.
    optimizers: ``(name, factory)`` pairs a trial may switch to.
    architectures: name -> ``TrialConfig.extra`` entries of a model variant.
    extra: the model's keyword arguments from ``TrialConfig.extra`` (its
      ``"variant"`` label left out).
    clip_norm: clip the global gradient norm to this value before the
      optimizer; ``None``, no clipping.
    optimizer: the name of the optimizer to switch to; ``None``, the trial's own.
    skip_spikes: wrap the optimizer in :func:`optstab.skip_spikes`.
    fetch_every: fetch the on-device metrics every this many steps.
    prefetch: training batches placed on the devices ahead of the step.
  """

  model: Optional[Callable[..., Any]]
  init: Optional[Callable[..., Any]]
  apply: Optional[Callable[..., Any]]
  loss_fn: Callable[[Any, Any], Any]
  train_batches: Callable[[int], Iterable[Any]]
  metrics: tuple[tuple[str, Callable[[Any, Any], Any]], ...]
  base_optimizer: OptimizerFactory
  optimizers: tuple[tuple[str, OptimizerFactory], ...] = ()
  architectures: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  clip_norm: Optional[float] = None
  optimizer: Optional[str] = None
  skip_spikes: bool = False
  fetch_every: int = 50
  prefetch: int = 2

  def __post_init__(self):
    if self.clip_norm is not None:
      _validation.check_positive("clip_norm", self.clip_norm)
    names = [name for name, _ in self.optimizers]
    if self.optimizer is not None and self.optimizer not in names:
      raise ValueError(f"optimizer must be one of {names} (the optimizers given to "
                       f"make_trial_fn); got {self.optimizer!r}.")

  def _key(self) -> tuple:
    return tuple(_identity(getattr(self, f.name)) for f in dataclasses.fields(self))

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, TrialSpec) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def with_extra(self, extra: Mapping[str, Any]) -> "TrialSpec":
    """This spec with a trial's ``TrialConfig.extra`` as the model's keyword arguments."""
    return dataclasses.replace(self, extra={k: v for k, v in extra.items() if k != "variant"})

  def fix_support(self) -> FixSupport:
    """Clipping, the step guard, the named optimizers and the declared architectures."""
    return FixSupport(clipping=True, skip_spikes=True,
                      optimizers=tuple(name for name, _ in self.optimizers),
                      architectures=self.architectures)

  def make_optimizer(self) -> optax.GradientTransformation:
    """``[skip_spikes of: [clip_by_global_norm] -> optimizer]``, its rate injected per step."""
    factory = dict(self.optimizers)[self.optimizer] if self.optimizer else self.base_optimizer
    parts = runner.with_fixes([runner.injectable_learning_rate(factory)],
                              clip_norm=self.clip_norm, skip_spikes=self.skip_spikes)
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


# ----------------------------------------------------------------------------
# The workload's functions (module level, so a trial function pickles).


def _bind(spec: TrialSpec, graphdef: Any, params: Any, model_state: Any, *,
          evaluating: bool) -> tuple[Any, Callable[[], Any]]:
  """``(model, read_state)``: the user's model at ``params``; ``read_state()`` its state after use."""
  if spec.model is None:
    return functools.partial(spec.apply, params, **spec.extra), lambda: model_state
  from flax import nnx  # pylint: disable=import-outside-toplevel

  module = nnx.merge(graphdef, params, model_state, copy=True)
  if evaluating:
    module.eval()  # dropout off, batch norm's running averages
  return module, lambda: nnx.split(module, nnx.Param, ...)[2]


def _init_state(spec: TrialSpec, seed: int) -> tuple[Any, runner.TrainState]:
  tx = spec.make_optimizer()
  if spec.model is None:
    params = spec.init(jax.random.key(seed), **spec.extra)
    return None, runner.TrainState(params, {}, tx.init(params))
  from flax import nnx  # pylint: disable=import-outside-toplevel

  module = spec.model(rngs=nnx.Rngs(seed), **spec.extra)
  if not isinstance(module, nnx.Module):
    raise TypeError(f"model(rngs=...) must return a flax.nnx.Module; got "
                    f"{type(module).__name__}. For init/apply functions (pure JAX, linen) "
                    "pass init= and apply= instead of model=.")
  graphdef, params, model_state = nnx.split(module, nnx.Param, ...)
  return graphdef, runner.TrainState(params, model_state, tx.init(params))


def _train_step(spec: TrialSpec, graphdef: Any) -> Callable[..., Any]:
  tx = spec.make_optimizer()

  def train_step(state: runner.TrainState, batch: Any, learning_rate: Any):
    def objective(params):
      model, read_state = _bind(spec, graphdef, params, state.model_state, evaluating=False)
      return spec.loss_fn(model, batch), read_state()

    (loss, model_state), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    opt_state = runner.set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (runner.TrainState(params, model_state, opt_state),
            runner.step_metrics(loss, telemetry.global_norm(grads), opt_state))

  return train_step


def _batch_size(batch: Any) -> int:
  """Examples in ``batch``: the leading axis of its first array (1 for scalars only)."""
  shapes = [jnp.shape(x) for x in jax.tree.leaves(batch)]
  return next((s[0] for s in shapes if s), 1)


def _eval_step(spec: TrialSpec, graphdef: Any) -> Callable[..., tuple]:
  def evaluate(params: Any, model_state: Any, batch: Any) -> tuple:
    model, _ = _bind(spec, graphdef, params, model_state, evaluating=True)
    size = _batch_size(batch)
    sums = []
    for name, metric in spec.metrics:
      value = jnp.asarray(metric(model, batch), jnp.float32)
      if value.shape != ():
        raise ValueError(f"metrics[{name!r}] must return a scalar (the batch's mean); got an "
                         f"array of shape {value.shape}.")
      sums.append(value * size)
    return (*sums, jnp.float32(size))

  return evaluate


def _eval_metrics(names: tuple[str, ...], *sums: Any) -> dict[str, Any]:
  *totals, count = sums
  return {name: total / count for name, total in zip(names, totals)}


def _train_batches(spec: TrialSpec, seed: int) -> Iterator[tuple]:
  drawn = 0
  for batch in spec.train_batches(seed):
    drawn += 1
    yield (batch,)
  raise ValueError(f"train_batches({seed}) ended after {drawn} batches; it must yield one for "
                   "every step of the trial (config.total_steps): make it endless, e.g. a "
                   "`while True` loop over epochs.")


def _eval_list(eval_batches: Any) -> list:
  """The evaluation batches as a list: a list as it is, anything else as one batch."""
  return list(eval_batches) if isinstance(eval_batches, list) else [eval_batches]


def _eval_batches(batches: list, batch_size: int) -> Iterator[tuple]:
  del batch_size  # the user's batches are evaluated as they are
  for batch in batches:
    yield (batch,)


def _workload(spec: TrialSpec, eval_data: Any) -> runner.Workload:
  batches = _eval_list(eval_data)
  return runner.Workload(
      key=spec,
      init_state=functools.partial(_init_state, spec),
      train_step=functools.partial(_train_step, spec),
      eval_step=functools.partial(_eval_step, spec),
      eval_metrics=functools.partial(_eval_metrics, tuple(name for name, _ in spec.metrics)),
      train_batches=functools.partial(_train_batches, spec),
      eval_batches=functools.partial(_eval_batches, batches),
      num_eval_examples=sum(_batch_size(b) for b in batches),
      data=eval_data,
      loop=runner.LoopConfig(fetch_every=spec.fetch_every, prefetch=spec.prefetch),
  )


@dataclasses.dataclass(frozen=True)
class _EvalLoader:
  """Evaluation batches loaded by a function, once per process (a ``runner.DataSource``)."""

  load_fn: Callable[[], Any]

  def load(self) -> Any:
    return self.load_fn()


# ----------------------------------------------------------------------------
# The builder.


def _check_optimizer(name: str, factory: Any) -> None:
  _validation.check_callable(name, factory, "an optimizer factory called as "
                             "factory(learning_rate=...) -> optax.GradientTransformation")
  try:
    tx = factory(learning_rate=0.1)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{name} must be an optimizer factory called as factory(learning_rate=...) "
                     f"(e.g. optstab.momentum, optax.adam, functools.partial(optax.adamw, "
                     f"weight_decay=1e-4)); {name}(learning_rate=0.1) raised "
                     f"{type(e).__name__}: {e}") from e
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(f"{name}(learning_rate=0.1) must return an optax.GradientTransformation; "
                     f"got {type(tx).__name__}.")


def _check_functions(name: str, functions: Any, what: str) -> tuple[tuple[str, Any], ...]:
  if not isinstance(functions, Mapping):
    raise ValueError(f"{name} must be a mapping of names to functions, each {what}; got "
                     f"{functions!r}.")
  for key, fn in functions.items():
    if not isinstance(key, str) or not key:
      raise ValueError(f"{name} keys must be non-empty strings (names); got {key!r}.")
    _validation.check_callable(f"{name}[{key!r}]", fn, what)
  return tuple(functions.items())


def make_trial_fn(
    model: Optional[Callable[..., Any]] = None,
    *,
    init: Optional[Callable[..., Any]] = None,
    apply: Optional[Callable[..., Any]] = None,
    loss_fn: Callable[[Any, Any], Any],
    train_batches: Callable[[int], Iterable[Any]],
    eval_batches: Any,
    metrics: Optional[Mapping[str, Callable[[Any, Any], Any]]] = None,
    optimizer: OptimizerFactory = _optimizers.momentum,
    optimizers: Optional[Mapping[str, OptimizerFactory]] = None,
    architectures: Optional[Mapping[str, Mapping[str, Any]]] = None,
    fetch_every: int = 50,
    prefetch: int = 2,
    progress: bool = False,
) -> runner.TrialFunction:
  r"""Builds a picklable ``TrialFn`` from a model, a loss, data and an optimizer.

  The trial trains ``config.total_steps`` steps of

  .. math::

    \theta_{t+1} = \theta_t + \mathrm{opt}_{\eta_t}\big(\nabla_\theta\,
    \mathrm{loss\_fn}(\mathrm{model}_{\theta_t}, b_t)\big),
    \quad \eta_t = \mathrm{schedule}(t),

  records every step's loss and unclipped global gradient norm on the device,
  fetches them every ``fetch_every`` steps (no per-step host sync), evaluates
  every metric after each of ``config.eval_steps()``, and stops a trial whose
  parameters went non-finite (its remaining steps are NaN). The learning rate
  is an input of the compiled step (``optax.inject_hyperparams``), so a sweep
  over rates, warmups, schedules and seeds compiles the step once per process.

  Every fix a ``TrialConfig`` can ask for is applied, and declared in the
  result's ``fix_support`` so that :func:`optstab.diagnose` tries it: warmup
  (the schedule), ``clip_norm`` (``optax.clip_by_global_norm`` before the
  optimizer), ``optimizer`` (a name of ``optimizers``) and ``skip_spikes``
  (:func:`optstab.skip_spikes` around the whole). ``TrialConfig.extra`` entries
  other than ``"variant"`` are passed to the model as keyword arguments
  (``architectures`` declares the variants the fix ladder may try).

  Args:
    model: a ``flax.nnx`` model factory, called ``model(rngs=nnx.Rngs(seed))``
      (e.g. ``functools.partial(MLP, 64)`` for ``MLP(width, *, rngs)``). The
      loss sees the module as built (nnx's training mode); metrics see it after
      ``.eval()``. Its non-parameter state (batch statistics, dropout counters)
      is carried from step to step. Give either ``model`` or ``init`` and
      ``apply``.
    init: ``init(key) -> params`` for a pure-JAX or linen model (e.g.
      ``lambda key: net.init(key, x[:1])``), ``key`` a ``jax.random.key(seed)``.
    apply: ``apply(params, *inputs)`` (e.g. linen's ``net.apply``); the loss and
      metrics get ``functools.partial(apply, params)`` as their model.
    loss_fn: ``loss_fn(model, batch) -> scalar``, the mean training loss of a
      batch, e.g. ``lambda model, batch: jnp.mean((model(batch[0]) - batch[1])**2)``.
    train_batches: ``train_batches(seed) -> iterator of batches``, fresh for
      every trial and endless (one batch per step); a batch is any pytree of
      arrays, batch axis first (e.g. ``(x, y)``).
    eval_batches: the evaluation set: one batch, a ``list`` of batches, or a
      function ``() -> either``, called once per process where trials run (to
      load a large set there rather than pickle it with the trial). Give
      batches of one shape, so the evaluation compiles once.
    metrics: name -> ``metric(model, batch) -> scalar`` (a batch mean), averaged
      over the evaluation set weighted by batch size. ``"loss"`` (``loss_fn``)
      is always there unless named here.
    optimizer: the trial's optimizer factory, ``optimizer(learning_rate) ->
      optax.GradientTransformation`` (default :func:`optstab.momentum`); bind
      its other hyperparameters with ``functools.partial``.
    optimizers: name -> factory like ``optimizer``: the optimizers a trial may
      switch to (``TrialConfig.optimizer``). Default ``DEFAULT_OPTIMIZERS``
      (``{"adam": optstab.adam}``) without the trial's own optimizer; ``{}``
      offers none.
    architectures: name -> ``TrialConfig.extra`` entries (the model's keyword
      arguments) of a variant the playbook's fix ladder may try, e.g.
      ``{"Pre-LN": {"norm_position": "pre"}}``.
    fetch_every: fetch the on-device metrics every this many steps.
    prefetch: training batches placed on the devices ahead of the step (from
      a background thread).
    progress: show a tqdm bar per trial.

  Returns:
    A :class:`optstab.runner.TrialFunction`: ``trial_fn(config) ->
    TrialResult``, with ``trial_fn.fix_support``. It pickles when every
    function given is importable (module level, or a ``functools.partial`` of
    one), so process pools, Dask and submitit can run its trials; a worker
    compiles once for all the trials it runs.

  Raises:
    ValueError: a bad argument, named with its value, before anything runs.

  Example:
    >>> import functools, jax, jax.numpy as jnp, numpy as np, optstab
    >>> from flax import nnx
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    >>> def batches(seed):
    ...   rng = np.random.default_rng(seed)
    ...   while True:
    ...     i = rng.integers(0, 64, 16)
    ...     yield x[i], y[i]
    >>> trial_fn = optstab.make_trial_fn(
    ...     functools.partial(nnx.Linear, 4, 1),
    ...     loss_fn=lambda model, b: jnp.mean((model(b[0])[:, 0] - b[1]) ** 2),
    ...     train_batches=batches, eval_batches=(x, y))
    >>> result = trial_fn(optstab.TrialConfig(0.05, num_steps=40, eval_every=20))
    >>> result.train_loss.shape, result.eval_steps.tolist(), sorted(result.eval_metrics)
    ((40,), [20, 40], ['loss'])
    >>> bool(result.eval_metrics["loss"][-1] < result.train_loss[0])
    True
    >>> trial_fn.fix_support.optimizers
    ('adam',)
  """
  if (model is None) == (init is None and apply is None) or (init is None) != (apply is None):
    raise ValueError("give the model either as model= (a flax.nnx.Module factory) or as init= "
                     f"and apply= (pure JAX, linen); got model={model!r}, init={init!r}, "
                     f"apply={apply!r}.")
  if model is not None:
    _validation.check_callable("model", model, "a flax.nnx.Module factory called as "
                               "model(rngs=nnx.Rngs(seed))")
  else:
    _validation.check_callable("init", init, "a function init(key) -> params")
    _validation.check_callable("apply", apply, "a function apply(params, *inputs)")
  _validation.check_callable("loss_fn", loss_fn, "a function loss_fn(model, batch) -> scalar")
  _validation.check_callable("train_batches", train_batches,
                             "a function train_batches(seed) -> iterator of batches")
  if eval_batches is None or (isinstance(eval_batches, list) and not eval_batches):
    raise ValueError("eval_batches must be a batch, a non-empty list of batches, or a function "
                     f"returning either; got {eval_batches!r}.")
  named = _check_functions("metrics", {} if metrics is None else metrics,
                           "a function metric(model, batch) -> scalar")
  if "loss" not in dict(named):
    named = (("loss", loss_fn), *named)
  _check_optimizer("optimizer", optimizer)
  if optimizers is None:
    optimizers = {k: v for k, v in DEFAULT_OPTIMIZERS.items() if v is not optimizer}
  switches = _check_functions("optimizers", optimizers, "an optimizer factory")
  for name, factory in switches:
    _check_optimizer(f"optimizers[{name!r}]", factory)
  _validation.check_positive_int("fetch_every", fetch_every)
  _validation.check_positive_int("prefetch", prefetch)
  if not isinstance(progress, bool):
    raise ValueError(f"progress must be True or False; got {progress!r}.")
  # FixSupport checks the architectures (names -> non-empty JSON mappings).
  support = FixSupport(architectures=dict(architectures or {}))
  spec = TrialSpec(model=model, init=init, apply=apply, loss_fn=loss_fn,
                   train_batches=train_batches, metrics=named, base_optimizer=optimizer,
                   optimizers=switches, architectures=support.architectures,
                   fetch_every=fetch_every, prefetch=prefetch)
  data = _EvalLoader(eval_batches) if callable(eval_batches) else eval_batches
  return runner.TrialFunction(_workload, spec, data, progress=progress)
