"""Training a WideResNet with optstab: the step, the loop, and a ``TrialFn``.

The training state is split the ``flax.nnx`` way into a graph definition and
two pure pytrees, ``params`` (``nnx.Param``) and ``batch_stats``
(``nnx.BatchStat``). The train step merges them into a model in *train* mode
(batch statistics from the batch, running averages updated and returned), the
eval step into a model in *eval* mode (running averages used, nothing updated).

The step is compiled once per model/optimizer structure and reused across
trials: the learning rate of step ``t`` is an *input* of the step (the
optimizer is wrapped in ``optax.inject_hyperparams``), so a learning-rate sweep
never recompiles. Per-step metrics (cross-entropy, unclipped global gradient
norm) stay on the device and are fetched every ``fetch_every`` steps, so the
host never waits on the device between steps.

Trials run one after another. Vectorizing a sweep's trials with ``jax.vmap``
(one step over stacked states with a per-trial learning rate) was measured
and rejected: on CPU, one vmapped step of 3 WRN-10-1 trials (batch 64) took
about 8x as long as the 3 steps run in turn (XLA:CPU's batched convolutions).

Data parallelism uses ``jax.sharding``: a one-axis mesh named ``'data'`` over
every device (of every process, after ``jax.distributed.initialize``), the
batch sharded along it and everything else replicated. With one device this
is plain single-device training; the result does not depend on the device
count up to floating-point reduction order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optstab
from optstab import _validation
from optstab.diagnosis.trial import TrialConfig, TrialFn, TrialResult
from optstab.wrn import data as wrn_data
from optstab.wrn.model import WideResNetConfig, apply_model, create_model, split_model

__all__ = [
    "TrainSetup",
    "TrainState",
    "OPTIMIZERS",
    "data_mesh",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "train",
    "make_trial_fn",
    "model_config_for",
    "maybe_initialize_distributed",
]

#: Optimizer names a ``TrainSetup`` (or a trial's ``extra["optimizer"]``) accepts.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")

#: ``TrialConfig.extra`` keys that change the model (``WideResNetConfig`` fields).
MODEL_KEYS = ("depth", "width", "group_strides", "head", "block_norm", "zero_init_residual")

#: ``TrialConfig.extra`` keys that change the training setup.
SETUP_KEYS = ("optimizer", "momentum", "weight_decay", "clip_percentile", "clip_window",
              "clip_min_history", "clip_initial_threshold", "telemetry")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything about a training run except its learning-rate schedule and seed.

  Attributes:
    model: the WideResNet configuration.
    batch_size: global batch size (split over the ``'data'`` mesh axis).
    optimizer: one of ``OPTIMIZERS``; ``"nesterov"`` (momentum 0.9) is the WRN
      paper's and the reference's choice.
    momentum: momentum / Adam's ``b1``.
    weight_decay: L2 penalty coefficient: the loss gets
      ``0.5 * weight_decay * sum(w**2)`` over the conv and dense kernels
      (batch-norm scales and biases excluded); the reference uses an L2
      penalty of 1e-4 on CIFAR-10. 0 disables it.
    clip_percentile: if set, ``optstab.percentile_clip(clip_percentile)`` is
      chained before the optimizer (FAQ S5).
    clip_window: window of recent gradient norms the percentile is taken over.
    clip_min_history: norms recorded before the percentile is used.
    clip_initial_threshold: threshold in force until then (``None``: no
      clipping until then). The experiment sets it to the percentile of an
      unclipped run's norms, the FAQ's recipe, so the earliest steps (where
      early instability lives) are clipped too.
    telemetry: chain optstab's gradient-norm telemetry transformation (an
      on-device record of every unclipped norm), as a user would.
    compute_dtype: ``"float32"`` or ``"bfloat16"`` activations/matmuls
      (parameters and optimizer state stay float32).
    augment: apply the data set's own training augmentation
      (``ImageDataset.augmentation``: CIFAR-10 random 4-pixel crops and
      horizontal flips; digits crops only, a mirrored digit being another symbol).
    fetch_every: fetch on-device metrics to the host every this many steps.
    eval_batch_size: batch size of evaluation passes.
  """

  model: WideResNetConfig
  batch_size: int = 128
  optimizer: str = "nesterov"
  momentum: float = 0.9
  weight_decay: float = 1e-4
  clip_percentile: Optional[float] = None
  clip_window: int = 100
  clip_min_history: int = 10
  clip_initial_threshold: Optional[float] = None
  telemetry: bool = False
  compute_dtype: str = "float32"
  augment: bool = False
  fetch_every: int = 50
  eval_batch_size: int = 1000

  def __post_init__(self):
    _validation.check_positive_int("batch_size", self.batch_size)
    _validation.check_one_of("optimizer", self.optimizer, OPTIMIZERS)
    _validation.check_in_range("momentum", self.momentum, 0.0, 1.0)
    _validation.check_non_negative("weight_decay", self.weight_decay)
    if self.clip_percentile is not None:
      _validation.check_percentile("clip_percentile", self.clip_percentile)
    _validation.check_positive_int("clip_window", self.clip_window)
    _validation.check_positive_int("clip_min_history", self.clip_min_history)
    if self.clip_initial_threshold is not None:
      _validation.check_positive("clip_initial_threshold", self.clip_initial_threshold)
    _validation.check_one_of("compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
    _validation.check_positive_int("fetch_every", self.fetch_every)
    _validation.check_positive_int("eval_batch_size", self.eval_batch_size)

  def replace(self, **changes: Any) -> "TrainSetup":
    return dataclasses.replace(self, **changes)

  def with_extra(self, extra: Mapping[str, Any]) -> "TrainSetup":
    """This setup with a trial's ``extra`` overrides (model and setup keys)."""
    model_changes = {k: extra[k] for k in MODEL_KEYS if k in extra}
    if "group_strides" in model_changes:
      model_changes["group_strides"] = tuple(tuple(s) for s in model_changes["group_strides"])
    setup_changes = {k: extra[k] for k in SETUP_KEYS if k in extra}
    unknown = set(extra) - set(MODEL_KEYS) - set(SETUP_KEYS) - {"variant"}
    if unknown:
      raise ValueError(f"unknown TrialConfig.extra keys {sorted(unknown)}; allowed: "
                       f"{sorted(MODEL_KEYS + SETUP_KEYS + ('variant',))}.")
    return self.replace(model=dataclasses.replace(self.model, **model_changes), **setup_changes)


def model_config_for(setup: TrainSetup) -> WideResNetConfig:
  """The model configuration with the setup's compute dtype."""
  dtype = jnp.bfloat16 if setup.compute_dtype == "bfloat16" else jnp.float32
  return dataclasses.replace(setup.model, dtype=dtype)


# ----------------------------------------------------------------------------
# Devices.


def maybe_initialize_distributed(enabled: bool) -> None:
  """Calls ``jax.distributed.initialize()`` (multi-host) when ``enabled``.

  On TPU pods and SLURM/MPI clusters the coordinator address, process count
  and id are found from the environment; elsewhere set
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``.
  """
  if enabled:
    jax.distributed.initialize()


def data_mesh(devices: Optional[list] = None) -> Mesh:
  """A one-axis ``'data'`` mesh over ``devices`` (default: all, every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


# ----------------------------------------------------------------------------
# Optimizer.


def _base_optimizer(name: str, momentum: float) -> Callable[..., optax.GradientTransformation]:
  """optstab's optimizer constructor, as a function of the learning rate."""
  if name == "sgd":
    return optstab.sgd
  if name == "momentum":
    return functools.partial(optstab.momentum, momentum=momentum)
  if name == "nesterov":
    return functools.partial(optstab.nesterov, momentum=momentum)
  return functools.partial(optstab.adam, b1=momentum)


def make_optimizer(setup: TrainSetup) -> optax.GradientTransformation:
  """The setup's gradient transformation, with an injectable learning rate.

  ``[record_grad_norm] -> [percentile_clip] -> inject_hyperparams(optimizer)``; the
  learning rate lives in ``opt_state[-1].hyperparams["learning_rate"]`` and
  the train step overwrites it every step with the schedule's value.
  """
  parts = []
  if setup.telemetry:  # first: it must see the unclipped gradient
    parts.append(optstab.record_grad_norm())
  if setup.clip_percentile is not None:
    parts.append(optstab.percentile_clip(
        percentile=setup.clip_percentile, window_size=setup.clip_window,
        min_history=min(setup.clip_min_history, setup.clip_window),
        initial_threshold=setup.clip_initial_threshold))
  parts.append(optax.inject_hyperparams(_base_optimizer(setup.optimizer, setup.momentum))(
      learning_rate=0.0))
  return optax.chain(*parts)


def _set_learning_rate(opt_state, learning_rate):
  *rest, inner = opt_state
  hyperparams = dict(inner.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.asarray(
      inner.hyperparams["learning_rate"]).dtype)
  return type(opt_state)((*rest, inner._replace(hyperparams=hyperparams)))


# ----------------------------------------------------------------------------
# State and steps.


class TrainState(NamedTuple):
  """The pure-pytree training state (``graphdef`` lives in the step closures)."""

  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(setup: TrainSetup, seed: int) -> tuple[nnx.GraphDef, TrainState]:
  """Builds the model (seeded) and returns ``(graphdef, state)``.

  The initialisation key is ``jax.random.key(seed, impl="unsafe_rbg")``: on
  CPU its init program compiles several times faster than threefry's (the
  values differ from ``create_model(config, seed)``, the distribution does not).
  """
  key = jax.random.key(seed, impl="unsafe_rbg")
  graphdef, params, batch_stats = split_model(create_model(model_config_for(setup), key))
  opt_state = make_optimizer(setup).init(params)
  return graphdef, TrainState(params, batch_stats, opt_state)


def _l2_penalty(params) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  return 0.5 * sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def make_train_step(setup: TrainSetup, graphdef, mesh: Optional[Mesh] = None):
  """A jitted ``step(state, images, labels, learning_rate) -> (state, metrics)``.

  ``metrics`` is ``{"loss": cross-entropy of the batch (before the update, no
  L2 term), "grad_norm": unclipped global L2 norm of the full loss gradient}``.
  With a ``mesh``, ``state`` is kept replicated and the batch is expected to be
  sharded along ``'data'``; the state buffers are donated.
  """
  tx = make_optimizer(setup)
  weight_decay = setup.weight_decay

  def step(state: TrainState, images, labels, learning_rate):
    def loss_fn(params):
      logits, batch_stats = apply_model(graphdef, params, state.batch_stats, images, train=True)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      total = ce + weight_decay * _l2_penalty(params) if weight_decay else ce
      return total, (ce, batch_stats)

    (_, (ce, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optstab.global_norm(grads)
    opt_state = _set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, batch_stats, opt_state), {"loss": ce, "grad_norm": grad_norm}

  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def make_eval_step(graphdef):
  """A jitted ``eval(params, batch_stats, images, labels, mask)`` returning sums.

  Returns ``(sum of cross-entropy, number correct, number counted)`` over the
  rows where ``mask`` is true (padding rows of the last batch are masked).
  """

  def evaluate(params, batch_stats, images, labels, mask):
    logits, _ = apply_model(graphdef, params, batch_stats, images, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    mask = mask.astype(jnp.float32)
    return jnp.sum(ce * mask), jnp.sum(correct * mask), jnp.sum(mask)

  return jax.jit(evaluate)


# ----------------------------------------------------------------------------
# Data feeding.


def _put_batch(mesh: Mesh, batch: "wrn_data.Batch") -> "wrn_data.Batch":
  """Places a global host batch sharded along ``'data'``.

  With several processes (``jax.distributed``), every process holds the same
  global batch (same seed) and contributes only its own rows.
  """
  sharding = NamedSharding(mesh, P("data"))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  rows = batch.images.shape[0] // jax.process_count()
  local = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  return wrn_data.Batch(*(
      jax.make_array_from_process_local_data(sharding, np.asarray(a)[local], np.shape(a))
      for a in batch))


def _replicate(tree, mesh: Mesh):
  """Places a pytree replicated on every device of ``mesh`` (of every process).

  Every process computes the same initial state (same seed), so with several
  processes each one contributes its own copy of every leaf.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def _train_batches(setup: TrainSetup, data: "wrn_data.ImageDataset", mesh: Mesh, seed: int):
  """Endless sharded training batches, prefetched from a background thread."""
  augmentation = "default" if setup.augment else None
  host = wrn_data.batch_iterator(data, "train", setup.batch_size, seed=seed,
                                 augmentation=augmentation)
  if jax.process_count() == 1:
    return wrn_data.prefetch_to_device(host, 2, sharding=NamedSharding(mesh, P("data")))
  return _Closing(_put_batch(mesh, b) for b in host)


class _Closing:
  """An iterator with a no-op ``close`` (the multi-process feed is not prefetched)."""

  def __init__(self, it):
    self._it = it

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def close(self):
    pass


# ----------------------------------------------------------------------------
# The loop.


def _schedule_values(schedule: Callable[[Any], Any], total_steps: int) -> np.ndarray:
  """The schedule at steps ``0..total_steps-1`` (one small compiled program)."""
  steps = np.arange(total_steps)
  try:
    values = np.asarray(jax.jit(schedule)(jnp.asarray(steps)), dtype=np.float64)
    if values.shape == (total_steps,):
      return values
  except Exception:  # a schedule that is not vectorized
    pass
  return np.asarray([float(schedule(int(t))) for t in steps], dtype=np.float64)


class _Evaluator:
  """Evaluates on a test set kept on the devices (padded to whole batches, masked)."""

  def __init__(self, mesh: Mesh, eval_step, data: "wrn_data.ImageDataset", batch_size: int):
    n_dev = mesh.size
    batch_size = max(n_dev, min(batch_size, len(data.test_images)))
    batch_size = int(math.ceil(batch_size / n_dev) * n_dev)
    self._eval_step = eval_step
    self._batches = [_put_batch(mesh, b) for b in wrn_data.epoch_batches(
        data, "test", batch_size, augmentation=None, remainder="pad")]

  def __call__(self, state: TrainState):
    """Device scalars ``(loss, error_rate)`` (not fetched)."""
    total = jnp.zeros(()), jnp.zeros(()), jnp.zeros(())
    for b in self._batches:
      out = self._eval_step(state.params, state.batch_stats, b.images, b.labels, b.mask)
      total = tuple(a + o for a, o in zip(total, out))
    ce, correct, count = total
    return ce / count, 1.0 - correct / count


def train(setup: TrainSetup, data: "wrn_data.ImageDataset", config: TrialConfig, *,
          mesh: Optional[Mesh] = None, progress: bool = True,
          compiled: Optional[_Compiled] = None) -> TrialResult:
  """Trains one model for ``config.total_steps`` steps; returns its ``TrialResult``.

  The learning rate of step ``t`` (0-based) is
  ``config.learning_rate_schedule()(t)``; ``train_loss[t]`` and
  ``grad_norms[t]`` are the batch's cross-entropy and the unclipped gradient
  norm at the parameters *before* update ``t``. The test set is evaluated
  after each of ``config.eval_steps()`` (1-based), giving
  ``eval_metrics = {"loss", "error_rate"}``. ``config.extra`` must already be
  folded into ``setup`` (``TrainSetup.with_extra``; ``make_trial_fn`` does it).

  Args:
    setup: model and optimizer setup.
    data: an ``optstab.wrn.data.ImageDataset``.
    config: the trial (learning rate, schedule, warmup, steps, eval cadence, seed).
    mesh: a ``'data'`` mesh (default: every device).
    progress: show a tqdm bar.
    compiled: reuse compiled steps (``make_trial_fn`` caches them).
  """
  mesh = data_mesh() if mesh is None else mesh
  if setup.batch_size % mesh.size:
    raise ValueError(f"batch_size {setup.batch_size} is not divisible by the "
                     f"{mesh.size} devices of the 'data' mesh axis.")
  if compiled is None:
    compiled = _compile(setup, mesh)
  _, state = init_state(setup, config.seed)
  state = _replicate(state, mesh)
  evaluator = compiled.evaluator(mesh, data, setup.eval_batch_size)
  total = config.total_steps
  lrs = _schedule_values(config.learning_rate_schedule(), total).astype(np.float32)
  eval_set = set(int(s) for s in config.eval_steps())

  losses: list[float] = []
  norms: list[float] = []
  evals: list[tuple[float, float]] = []
  pending: list[tuple[str, Any]] = []  # device metrics not fetched yet

  def fetch():
    for kind, value in jax.device_get(pending):
      if kind == "train":
        losses.append(float(value["loss"]))
        norms.append(float(value["grad_norm"]))
      else:
        evals.append((float(value[0]), float(value[1])))
    pending.clear()

  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=_describe(config), leave=False, dynamic_ncols=True)
  batches = _train_batches(setup, data, mesh, config.seed)
  try:
    for t in range(total):
      batch = next(batches)
      state, metrics = compiled.train_step(state, batch.images, batch.labels, lrs[t])
      pending.append(("train", metrics))
      if (t + 1) in eval_set:
        pending.append(("eval", evaluator(state)))
      if (t + 1) % setup.fetch_every == 0 or t + 1 == total:
        fetch()
        if bar is not None:
          bar.update(len(losses) - bar.n)
          bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
  finally:
    batches.close()
    if bar is not None:
      bar.close()
  return TrialResult(
      config=config,
      train_loss=np.asarray(losses),
      eval_steps=config.eval_steps(),
      eval_metrics={"loss": np.asarray([e[0] for e in evals]),
                    "error_rate": np.asarray([e[1] for e in evals])},
      grad_norms=np.asarray(norms),
  )


def _describe(config: TrialConfig) -> str:
  variant = config.extra.get("variant", "")
  warm = f" warmup={config.warmup_steps}" if config.warmup_steps else ""
  return f"{variant} lr={config.learning_rate:g}{warm}".strip()


@dataclasses.dataclass
class _Compiled:
  """Compiled steps of one setup, and the test sets placed for it."""

  graphdef: Any
  train_step: Callable
  eval_step: Callable
  _evaluators: dict = dataclasses.field(default_factory=dict)

  def evaluator(self, mesh: Mesh, data, batch_size: int) -> _Evaluator:
    key = (id(mesh), id(data), batch_size)
    if key not in self._evaluators:
      self._evaluators.clear()  # keep one test set on the devices, not one per data set seen
      self._evaluators[key] = (_Evaluator(mesh, self.eval_step, data, batch_size), mesh, data)
    return self._evaluators[key][0]


#: Compiled steps per (setup, mesh), shared by every trial function of the process
#: (a notebook or a test re-running an experiment does not compile again).
_COMPILED: dict[tuple, _Compiled] = {}


def _compile(setup: TrainSetup, mesh: Mesh) -> _Compiled:
  key = (setup, tuple(d.id for d in mesh.devices.flat), mesh.axis_names)
  if key not in _COMPILED:
    graphdef, _ = init_state(setup, 0)
    _COMPILED[key] = _Compiled(graphdef, make_train_step(setup, graphdef, mesh),
                               make_eval_step(graphdef))
  return _COMPILED[key]


def make_trial_fn(setup: TrainSetup, data: "wrn_data.ImageDataset", *,
                  mesh: Optional[Mesh] = None, progress: bool = True) -> TrialFn:
  """A diagnosis ``TrialFn`` training this model on this data.

  ``config.extra`` may override model fields (``MODEL_KEYS``: e.g.
  ``{"group_strides": [[1, 1], [1, 1], [2, 2]]}``) and setup fields
  (``SETUP_KEYS``: ``optimizer``, ``clip_percentile``, ...); ``"variant"`` is
  a free label. Compiled steps are cached per resulting setup, so a sweep over
  learning rates, warmup lengths or seeds compiles once.

  Example:
    >>> from optstab.diagnosis import learning_rate_sweep, TrialConfig
    >>> from optstab.wrn import data, train, WideResNetConfig
    >>> digits = data.load_digits(image_size=16)
    >>> setup = train.TrainSetup(WideResNetConfig(depth=10, width=1, image_size=16,
    ...     in_channels=1, group_strides=((1, 1), (1, 1), (2, 2))), batch_size=64)
    >>> trial_fn = train.make_trial_fn(setup, digits, progress=False)
    >>> sweep = learning_rate_sweep(trial_fn, [0.1, 1.0], base_config=TrialConfig(
    ...     0.1, num_steps=20, schedule="cosine", eval_every=20), progress=False)  # doctest: +SKIP
  """
  the_mesh = data_mesh() if mesh is None else mesh

  def trial_fn(config: TrialConfig) -> TrialResult:
    trial_setup = setup.with_extra(config.extra)
    return train(trial_setup, data, config, mesh=the_mesh, progress=progress,
                 compiled=_compile(trial_setup, the_mesh))

  return trial_fn
