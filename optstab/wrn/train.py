"""Training a WideResNet with optstab: the step, the evaluation, and a ``TrialFn``.

The training state is split the ``flax.nnx`` way into a graph definition and
two pure pytrees, ``params`` (``nnx.Param``) and ``batch_stats``
(``nnx.BatchStat``). The train step merges them into a model in *train* mode
(batch statistics from the batch, running averages updated and returned), the
eval step into a model in *eval* mode (running averages used, nothing updated).

The loop is the shared trial runner's (:mod:`optstab.runner`, the same one
the Transformer demo uses): this module supplies the WideResNet
:class:`~optstab.runner.Workload` (:func:`workload`). The step is compiled once
per model/optimizer structure and reused across trials: the learning rate of
step ``t`` is an *input* of the step (the optimizer is wrapped in
``optax.inject_hyperparams``), so a learning-rate sweep never recompiles.
Per-step metrics (cross-entropy, unclipped global gradient norm) stay on the
device and are fetched every ``fetch_every`` steps.

Trials run one after another in a process. Vectorizing a sweep's trials with
``jax.vmap`` (one step over stacked states with a per-trial learning rate) was
measured and rejected: on CPU, one vmapped step of 3 WRN-10-1 trials (batch
64) took about 8x as long as the 3 steps run in turn (XLA:CPU's batched
convolutions). ``make_trial_fn`` returns a picklable
:class:`~optstab.runner.TrialFunction`, so trials can run in parallel
processes instead.

Data parallelism uses ``jax.sharding``: a one-axis mesh named ``'data'`` over
every device (of every process, after ``jax.distributed.initialize``), the
batch sharded along it and everything else replicated. With one device this
is plain single-device training; the result does not depend on the device
count up to floating-point reduction order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

import optstab
from optstab import _validation
from optstab import runner
from optstab.diagnosis.trial import FixSupport, TrialConfig, TrialResult
from optstab.runner import data_mesh as data_mesh
from optstab.runner import maybe_initialize_distributed as maybe_initialize_distributed
from optstab.wrn import data as wrn_data
from optstab.wrn.model import WideResNetConfig, apply_model, create_model, split_model

__all__ = [
    "TrainSetup",
    "TrainState",
    "ImageDataSource",
    "OPTIMIZERS",
    "data_mesh",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "workload",
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
      chained before the optimizer (the playbook's percentile clipping).
    clip_window: window of recent gradient norms the percentile is taken over.
    clip_min_history: norms recorded before the percentile is used.
    clip_initial_threshold: threshold in force until then (``None``: no
      clipping until then). The experiment sets it to the percentile of an
      unclipped run's norms, the FAQ's recipe, so the earliest steps (where
      early instability lives) are clipped too.
    clip_norm: clip the global gradient norm to this value before the
      optimizer (the diagnosis's clipping fix, a threshold taken from an
      unclipped run's norms); ``None``, no such clipping.
    skip_spikes: wrap the optimizer in ``optstab.skip_spikes`` (the
      diagnosis's step-guard fix).
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
  clip_norm: Optional[float] = None
  skip_spikes: bool = False
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
    if self.clip_norm is not None:
      _validation.check_positive("clip_norm", self.clip_norm)
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


  def fix_support(self) -> FixSupport:
    """The fixes ``runner.apply_fixes`` sets in this setup: clipping, the step guard, Adam for the momentum optimizers."""
    return FixSupport(clipping=True, skip_spikes=True,
                      optimizers=() if self.optimizer == "adam" else ("adam",))


def model_config_for(setup: TrainSetup) -> WideResNetConfig:
  """The model configuration with the setup's compute dtype."""
  dtype = jnp.bfloat16 if setup.compute_dtype == "bfloat16" else jnp.float32
  return dataclasses.replace(setup.model, dtype=dtype)


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

  ``[record_grad_norm] -> [skip_spikes of: [clip_by_global_norm] -> [percentile_clip]
  -> inject_hyperparams(optimizer)]``; the
  learning rate lives in ``opt_state[-1].hyperparams["learning_rate"]`` and
  the train step overwrites it every step with the schedule's value.
  """
  parts = []
  if setup.telemetry:  # first: it must see the unclipped gradient
    parts.append(optstab.record_grad_norm())
  body = []
  if setup.clip_percentile is not None:
    body.append(optstab.percentile_clip(
        percentile=setup.clip_percentile, window_size=setup.clip_window,
        min_history=min(setup.clip_min_history, setup.clip_window),
        initial_threshold=setup.clip_initial_threshold))
  body.append(runner.injectable_learning_rate(_base_optimizer(setup.optimizer, setup.momentum)))
  return optax.chain(*parts, *runner.with_fixes(body, clip_norm=setup.clip_norm,
                                                skip_spikes=setup.skip_spikes))


# ----------------------------------------------------------------------------
# State and steps.


class TrainState(NamedTuple):
  """The pure-pytree training state (``graphdef`` lives in the step closures).

  The runner's ``(params, model_state, opt_state)`` layout, the model state
  being the batch-norm statistics.
  """

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
  return runner.jit_train_step(_train_step(setup, graphdef), mesh)


def _train_step(setup: TrainSetup, graphdef):
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
    opt_state = runner.set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, batch_stats, opt_state), runner.step_metrics(ce, grad_norm, opt_state)

  return step


def make_eval_step(graphdef):
  """A jitted ``eval(params, batch_stats, images, labels, mask)`` returning sums.

  Returns ``(sum of cross-entropy, number correct, number counted)`` over the
  rows where ``mask`` is true (padding rows of the last batch are masked).
  """
  return jax.jit(_eval_step(graphdef))


def _eval_step(graphdef):
  def evaluate(params, batch_stats, images, labels, mask):
    logits, _ = apply_model(graphdef, params, batch_stats, images, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    mask = mask.astype(jnp.float32)
    return jnp.sum(ce * mask), jnp.sum(correct * mask), jnp.sum(mask)

  return evaluate


# ----------------------------------------------------------------------------
# Data and the runner's workload.


@dataclasses.dataclass(frozen=True)
class ImageDataSource:
  """How to load the demo's image data (a picklable :class:`optstab.runner.DataSource`).

  Attributes:
    dataset: ``"digits"`` (shipped, offline) or ``"cifar10"``.
    image_size: side of the digits images (CIFAR-10 is 32x32).
    data_dir: where CIFAR-10's python batches are (default
      ``wrn_data.default_data_dir()``).
    train_size: keep only the first this many training images (``None``: all).
  """

  dataset: str = "digits"
  image_size: int = 32
  data_dir: Optional[str] = None
  train_size: Optional[int] = None

  def __post_init__(self):
    _validation.check_one_of("dataset", self.dataset, ("digits", "cifar10"))
    _validation.check_positive_int("image_size", self.image_size, minimum=8)
    if self.train_size is not None:
      _validation.check_positive_int("train_size", self.train_size)

  def load(self) -> "wrn_data.ImageDataset":
    if self.dataset == "digits":
      data = wrn_data.load_digits(image_size=self.image_size)
    else:
      data = wrn_data.load_cifar10(self.data_dir)
    if self.train_size is not None and self.train_size < len(data.train_labels):
      data = dataclasses.replace(data, train_images=data.train_images[:self.train_size],
                                 train_labels=data.train_labels[:self.train_size])
    return data


def _train_batches(setup: TrainSetup, data: "wrn_data.ImageDataset", seed: int):
  augmentation = "default" if setup.augment else None
  for batch in wrn_data.batch_iterator(data, "train", setup.batch_size, seed=seed,
                                       augmentation=augmentation):
    yield batch.images, batch.labels


def _test_batches(data: "wrn_data.ImageDataset", batch_size: int):
  return wrn_data.epoch_batches(data, "test", batch_size, augmentation=None, remainder="pad")


def _test_metrics(ce, correct, count):
  return {"loss": ce / count, "error_rate": 1.0 - correct / count}


def workload(setup: TrainSetup, data: Optional["wrn_data.ImageDataset"]) -> runner.Workload:
  """The runner's :class:`~optstab.runner.Workload` for this setup and data.

  Training batches are ``(images, labels)`` (cross-entropy plus the setup's L2
  penalty); evaluation runs over the whole test set, giving
  ``{"loss", "error_rate"}``. ``data=None`` gives a workload that can only be
  compiled (:func:`optstab.runner.compiled_steps`).
  """
  return runner.Workload(
      key=setup,
      init_state=functools.partial(init_state, setup),
      train_step=functools.partial(_train_step, setup),
      eval_step=_eval_step,
      eval_metrics=_test_metrics,
      train_batches=functools.partial(_train_batches, setup, data),
      eval_batches=functools.partial(_test_batches, data),
      num_eval_examples=0 if data is None else len(data.test_labels),
      data=data,
      loop=runner.LoopConfig(fetch_every=setup.fetch_every,
                             eval_batch_size=setup.eval_batch_size),
  )


def _compile(setup: TrainSetup, mesh: Mesh) -> runner.CompiledSteps:
  """The setup's compiled steps on ``mesh`` (the runner's per-process cache)."""
  return runner.compiled_steps(workload(setup, None), mesh)


def train(setup: TrainSetup, data: "wrn_data.ImageDataset", config: TrialConfig, *,
          mesh: Optional[Mesh] = None, progress: bool = True,
          compiled: Optional[runner.CompiledSteps] = None) -> TrialResult:
  """Trains one model for ``config.total_steps`` steps; returns its ``TrialResult``.

  The runner's loop (:func:`optstab.runner.train`) on :func:`workload`. The
  learning rate of step ``t`` (0-based) is ``config.learning_rate_schedule()(t)``;
  ``train_loss[t]`` and ``grad_norms[t]`` are the batch's cross-entropy and the
  unclipped gradient norm at the parameters *before* update ``t``. The test
  set is evaluated after each of ``config.eval_steps()`` (1-based), giving
  ``eval_metrics = {"loss", "error_rate"}``. ``config.extra`` must already be
  folded into ``setup`` (``TrainSetup.with_extra``; ``make_trial_fn`` does it).

  Args:
    setup: model and optimizer setup.
    data: an ``optstab.wrn.data.ImageDataset``.
    config: the trial (learning rate, schedule, warmup, steps, eval cadence, seed).
    mesh: a ``'data'`` mesh (default: every device).
    progress: show a tqdm bar.
    compiled: the compiled steps to use (default: the runner's cached ones).
  """
  runner.check_batch_size(setup.batch_size, mesh)
  return runner.train(workload(setup, data), config, mesh=mesh, progress=progress,
                      compiled=compiled)


def make_trial_fn(setup: TrainSetup,
                  data: Union["wrn_data.ImageDataset", ImageDataSource], *,
                  mesh: Optional[Mesh] = None, progress: bool = True) -> runner.TrialFunction:
  """A diagnosis ``TrialFn`` training this model on this data (picklable).

  ``config.extra`` may override model fields (``MODEL_KEYS``: e.g.
  ``{"group_strides": [[1, 1], [1, 1], [2, 2]]}``) and setup fields
  (``SETUP_KEYS``: ``optimizer``, ``clip_percentile``, ...); ``"variant"`` is
  a free label. Compiled steps are cached per resulting setup and process, so
  a sweep over learning rates, warmup lengths or seeds compiles once.

  The result is an :class:`optstab.runner.TrialFunction`: with ``mesh=None``
  it pickles, for process pools and clusters. Given an
  :class:`ImageDataSource`, a worker loads the data itself (once); given an
  in-memory ``ImageDataset``, the data is pickled with the function.

  Example:
    >>> from optstab.diagnosis import learning_rate_sweep, TrialConfig
    >>> from optstab.wrn import train, WideResNetConfig
    >>> setup = train.TrainSetup(WideResNetConfig(depth=10, width=1, image_size=16,
    ...     in_channels=1, group_strides=((1, 1), (1, 1), (2, 2))), batch_size=64)
    >>> trial_fn = train.make_trial_fn(setup, train.ImageDataSource("digits", image_size=16),
    ...                                progress=False)
    >>> sweep = learning_rate_sweep(trial_fn, [0.1, 1.0], base_config=TrialConfig(
    ...     0.1, num_steps=20, schedule="cosine", eval_every=20), progress=False)  # doctest: +SKIP
  """
  runner.check_batch_size(setup.batch_size, mesh)
  return runner.TrialFunction(workload, setup, data, progress=progress, mesh=mesh)
