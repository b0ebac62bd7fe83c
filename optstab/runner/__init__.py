"""The trial runner: one training loop for every demo, and a picklable ``TrialFn`` around it.

The rule. A trial (``optstab.diagnosis.TrialConfig`` -> ``TrialResult``) is
trained the same way whatever the model: seed the state, run
``config.total_steps`` steps at the schedule's learning rates, record the
training loss and the unclipped gradient norm of every step, evaluate after
each of ``config.eval_steps()``. Only the model, its loss and its data differ;
those come in a :class:`Workload`, a plain dataclass of functions (init2winit
keeps one trainer for every model the same way, without its registries).

Our position.

* One compiled step per model structure. The learning rate of step ``t`` is
  an *input* of the step (the optimizer is wrapped by
  :func:`injectable_learning_rate`, i.e. ``optax.inject_hyperparams``), so a
  sweep over rates, warmups or seeds compiles once per process: compiled steps
  are cached by ``Workload.key`` and the mesh (:func:`compiled_steps`).
* No per-step host syncs. Per-step metrics stay on the device and are fetched
  every ``LoopConfig.fetch_every`` steps; evaluations are queued the same way.
  Training batches are built on the host and moved to the device from a
  background thread (:func:`prefetch_to_device`).
* Data parallelism with ``jax.sharding``: a one-axis ``'data'`` mesh over
  every device (of every process, after ``jax.distributed.initialize``), the
  batch split along it, the state replicated. The result does not depend on
  the device count up to float32 reduction order.
* A :class:`TrialFunction` is picklable: it holds the setup and a
  :class:`DataSource` (how to load the data, not the data), loads the data
  lazily once per process and compiles once per process, so a process pool or
  a Dask cluster can run trials in parallel (``pickle.dumps(trial_fn)`` is a
  few hundred bytes).

Where it breaks. Each trial is its own run: vectorizing several trials in one
step with ``jax.vmap`` was measured slower on CPU (about 8x for 3 WRN-10-1
trials, XLA:CPU's batched convolutions; slower too for the small Transformer
in our measurements of the Transformer demo), so trials run one after another in a
process and in parallel across processes. A
``TrialFunction`` given an in-memory data set pickles that data with it (fine
for the shipped digits, wasteful for CIFAR-10: give a ``DataSource`` instead).
With several processes (``jax.distributed``) every process must build the same
global batch from the same seed; each contributes only its own rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import queue
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optstab import _validation
from optstab import schedules
from optstab import spike_guard
from optstab.diagnosis.trial import FixSupport, TrialConfig, TrialResult

__all__ = [
    "TrainState",
    "Workload",
    "LoopConfig",
    "CompiledSteps",
    "DataSource",
    "TrialFunction",
    "environment",
    "environment_line",
    "ExperimentResult",
    "add_process_options",
    "check_cli_args",
    "int_at_least",
    "positive_float",
    "start_processes",
    "describe_processes",
    "train",
    "compiled_steps",
    "jit_train_step",
    "load_data",
    "data_mesh",
    "check_batch_size",
    "maybe_initialize_distributed",
    "shard_batch",
    "replicate",
    "injectable_learning_rate",
    "set_learning_rate",
    "with_fixes",
    "apply_fixes",
    "Prefetcher",
    "prefetch_to_device",
]


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


def check_batch_size(batch_size: int, mesh: Optional[Mesh] = None) -> None:
  """Raises unless ``batch_size`` splits evenly over ``mesh`` (default: every device)."""
  n_dev = jax.device_count() if mesh is None else mesh.size
  if batch_size % n_dev:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {n_dev} devices of the "
                     "'data' mesh axis.")


def shard_batch(mesh: Mesh, batch: Any) -> Any:
  """Places a global host batch (a pytree of arrays, batch axis first) split along ``'data'``.

  With several processes (``jax.distributed``), every process holds the same
  global batch (same seed) and contributes only its own rows.
  """
  sharding = NamedSharding(mesh, P("data"))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)

  def put(a):
    a = np.asarray(a)
    rows = a.shape[0] // jax.process_count()
    local = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    return jax.make_array_from_process_local_data(sharding, a[local], a.shape)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
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


# ----------------------------------------------------------------------------
# The learning rate as an input of the step.


def injectable_learning_rate(
    make_optimizer: Callable[[Any], optax.GradientTransformation]) -> optax.GradientTransformation:
  """``make_optimizer(learning_rate)`` with its rate held in the state, set per step.

  ``optax.inject_hyperparams(make_optimizer)(learning_rate=0.0)``: the rate is
  a float32 leaf of the optimizer state that :func:`set_learning_rate`
  overwrites inside the compiled step, so every rate and schedule shares one
  compilation (a schedule closed over a Python float would recompile per rate,
  optax issue 577). Bind the other hyperparameters with ``functools.partial``
  so they stay constants.
  """
  return optax.inject_hyperparams(make_optimizer)(learning_rate=0.0)


def set_learning_rate(opt_state: Any, learning_rate: Any) -> Any:
  """``opt_state`` with the injected learning rate replaced.

  ``opt_state`` is the state of :func:`injectable_learning_rate`'s
  transformation, of an ``optax.chain`` whose *last* element is one (the
  rate is applied after clipping and telemetry), or of ``optstab.skip_spikes``
  around either.
  """
  if isinstance(opt_state, spike_guard.SkipSpikesState):  # optstab.skip_spikes around the optimizer
    return opt_state._replace(inner_state=set_learning_rate(opt_state.inner_state, learning_rate))
  if hasattr(opt_state, "hyperparams"):
    hyperparams = dict(opt_state.hyperparams)
    old = hyperparams["learning_rate"]
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.asarray(old).dtype)
    return opt_state._replace(hyperparams=hyperparams)
  if isinstance(opt_state, tuple) and opt_state:
    *rest, inner = opt_state
    return type(opt_state)((*rest, set_learning_rate(inner, learning_rate)))
  raise TypeError(f"opt_state has no injected learning rate: expected an "
                  f"optax.inject_hyperparams state, or a chain ending in one; got "
                  f"{type(opt_state).__name__}.")


# ----------------------------------------------------------------------------
# Device prefetch.


class _Raised(NamedTuple):
  error: BaseException


_DONE = object()


def _put_unless_stopped(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _produce(source: Iterator[Any], sharding: Any, q: queue.Queue, stop: threading.Event) -> None:
  # A plain function holding no reference to the Prefetcher, so an abandoned
  # Prefetcher is garbage collected, and its __del__ stops this thread.
  try:
    for item in source:
      if stop.is_set():
        return
      item = jax.device_put(item) if sharding is None else jax.device_put(item, sharding)
      if not _put_unless_stopped(q, stop, item):
        return
  except BaseException as e:  # re-raised in the consumer's thread
    _put_unless_stopped(q, stop, _Raised(e))
    return
  _put_unless_stopped(q, stop, _DONE)


class Prefetcher:
  """Iterator that device-puts the items of another one from a background thread.

  Up to ``buffer_size`` items are transferred ahead of the consumer. Errors in
  the source iterator are re-raised by ``next``. Call :meth:`close` (or use it as
  a context manager) to stop the thread early; an abandoned ``Prefetcher`` stops
  it when garbage collected.
  """

  def __init__(self, iterator: Iterable[Any], buffer_size: int = 2, *,
               sharding: Any = None):
    _validation.check_positive_int("buffer_size", buffer_size)
    self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(
        target=_produce, args=(iter(iterator), sharding, self._queue, self._stop),
        name="optstab-prefetch", daemon=True)
    self._thread.start()

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self) -> Any:
    if self._finished:
      raise StopIteration
    item = self._queue.get()
    if item is _DONE:
      self._finished = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._finished = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the background thread and drops the buffered items."""
    self._stop.set()
    self._finished = True
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=5.0)

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __del__(self) -> None:
    stop = getattr(self, "_stop", None)
    if stop is not None:
      stop.set()


def prefetch_to_device(iterator: Iterable[Any], buffer_size: int = 2, *,
                       sharding: Any = None) -> Prefetcher:
  """Moves an iterator's items (pytrees of host arrays) to device ahead of use.

  Args:
    iterator: yields pytrees of host arrays.
    buffer_size: items transferred ahead of the consumer (2 hides one
      host-to-device copy behind one training step).
    sharding: passed to ``jax.device_put``: ``None`` (default device), a
      ``jax.Device``, a ``jax.sharding.Sharding`` such as
      ``NamedSharding(mesh, PartitionSpec("data"))`` to split the batch axis
      over devices (the batch size must be divisible by their number), or a
      pytree of those matching the items.

  Returns:
    A :class:`Prefetcher` yielding the same items as ``iterator``, on device.
  """
  return Prefetcher(iterator, buffer_size, sharding=sharding)


# ----------------------------------------------------------------------------
# The workload interface.


class TrainState(NamedTuple):
  """A training state the runner can evaluate: ``(params, model_state, opt_state)``.

  ``model_state`` is the model's non-trainable state (batch statistics; an
  empty pytree for a model without). A workload may use its own NamedTuple with
  these three fields first, in this order (the WideResNet calls its model state
  ``batch_stats``): the runner passes ``state[0], state[1]`` to the eval step.
  """

  params: Any
  model_state: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How the loop moves data and metrics (never what it computes).

  Attributes:
    fetch_every: fetch on-device metrics to the host every this many steps.
    eval_batch_size: examples per evaluation batch (rounded up to a multiple
      of the device count, capped at the evaluation set's size).
    prefetch: training batches placed on the devices ahead of the step.
  """

  fetch_every: int = 50
  eval_batch_size: int = 1000
  prefetch: int = 2

  def __post_init__(self):
    _validation.check_positive_int("fetch_every", self.fetch_every)
    _validation.check_positive_int("eval_batch_size", self.eval_batch_size)
    _validation.check_positive_int("prefetch", self.prefetch)


@dataclasses.dataclass(frozen=True)
class Workload:
  """What the runner needs from one model on one data set: plain functions.

  Attributes:
    key: the identity of the compiled steps (hashable; the demos use their
      ``TrainSetup``). Workloads with equal keys must build the same steps.
    init_state: ``seed -> (graphdef, state)``, state a :class:`TrainState`-like
      NamedTuple of arrays.
    train_step: ``graphdef -> step(state, *batch, learning_rate) -> (state,
      {"loss": scalar, "grad_norm": scalar})``, not jitted: the loss of the
      batch before the update and the unclipped global gradient norm.
    eval_step: ``graphdef -> evaluate(params, model_state, *batch) -> tuple of
      scalar sums`` over the batch's valid examples, not jitted.
    eval_metrics: ``(*sums over the evaluation set) -> {name: scalar}`` (e.g.
      the mean loss from a loss sum and a count), traced on device.
    train_batches: ``seed -> endless iterator of host batches``, each a tuple
      of arrays with the global batch first (the step's ``*batch``).
    eval_batches: ``batch_size -> iterable of host batches`` covering the
      evaluation set once, padded to whole batches and masked.
    num_eval_examples: size of the evaluation set.
    data: the data set the batches come from; while trials use the same object
      the runner keeps its evaluation batches on the devices.
    loop: the :class:`LoopConfig`.
  """

  key: Hashable
  init_state: Callable[[int], tuple[Any, Any]]
  train_step: Callable[[Any], Callable[..., tuple[Any, dict[str, Any]]]]
  eval_step: Callable[[Any], Callable[..., tuple]]
  eval_metrics: Callable[..., dict[str, Any]]
  train_batches: Callable[[int], Iterator[tuple]]
  eval_batches: Callable[[int], Iterable[tuple]]
  num_eval_examples: int
  data: Any = None
  loop: LoopConfig = LoopConfig()


@dataclasses.dataclass
class CompiledSteps:
  """One workload structure's compiled steps on one mesh."""

  graphdef: Any
  train_step: Callable
  eval_step: Callable


#: Compiled steps per (workload key, mesh), shared by every trial of the process
#: (a notebook or a test re-running an experiment does not compile again).
_COMPILED: dict[tuple, CompiledSteps] = {}


def _mesh_key(mesh: Mesh) -> tuple:
  return tuple(d.id for d in mesh.devices.flat), mesh.axis_names


def jit_train_step(step: Callable, mesh: Optional[Mesh] = None) -> Callable:
  """``jax.jit`` of a train step: the state donated, outputs replicated over ``mesh``."""
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def compiled_steps(workload: Workload, mesh: Mesh) -> CompiledSteps:
  """The workload's jitted train and eval steps for ``mesh``, cached per process."""
  key = (workload.key, _mesh_key(mesh))
  if key not in _COMPILED:
    graphdef, _ = workload.init_state(0)
    _COMPILED[key] = CompiledSteps(graphdef, jit_train_step(workload.train_step(graphdef), mesh),
                                   jax.jit(workload.eval_step(graphdef)))
  return _COMPILED[key]


# One evaluation set kept on the devices: (data id, batch size, mesh) -> (batches, data).
# The data object is held so its id cannot be reused while the entry lives.
_EVAL_SET: dict[tuple, tuple[list, Any]] = {}


def _eval_set(workload: Workload, mesh: Mesh) -> list:
  n_dev = mesh.size
  size = max(n_dev, min(workload.loop.eval_batch_size, workload.num_eval_examples))
  size = int(math.ceil(size / n_dev) * n_dev)
  key = (id(workload.data), size, _mesh_key(mesh))
  if key not in _EVAL_SET:
    _EVAL_SET.clear()
    batches = [shard_batch(mesh, tuple(b)) for b in workload.eval_batches(size)]
    _EVAL_SET[key] = (batches, workload.data)
  return _EVAL_SET[key][0]


def _evaluate(compiled: CompiledSteps, workload: Workload, batches: list, state) -> dict:
  """Device scalars (not fetched): the eval metrics over every evaluation batch."""
  totals = None
  for batch in batches:
    sums = compiled.eval_step(state[0], state[1], *batch)
    totals = sums if totals is None else tuple(a + s for a, s in zip(totals, sums))
  return workload.eval_metrics(*totals)


class _Feed:
  """Endless training batches on the devices, prefetched when one process feeds them."""

  def __init__(self, workload: Workload, mesh: Mesh, seed: int):
    host = (tuple(b) for b in workload.train_batches(seed))
    if jax.process_count() == 1:
      self._it = prefetch_to_device(host, workload.loop.prefetch,
                                    sharding=NamedSharding(mesh, P("data")))
      self.close = self._it.close
    else:  # several processes: each places its own rows in step with the others, unprefetched
      self._it = (shard_batch(mesh, b) for b in host)
      self.close = lambda: None

  def __next__(self):
    return next(self._it)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """Whether every leaf of ``tree`` is finite (one device scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def with_fixes(parts: list[optax.GradientTransformation], *, clip_norm: Optional[float] = None,
               skip_spikes: bool = False) -> list[optax.GradientTransformation]:
  """``parts`` (the optimizer, its learning rate injected last) with the diagnosis's fixes.

  The clipping fix, ``optax.clip_by_global_norm(clip_norm)``, goes first; the
  step guard, ``optstab.skip_spikes``, wraps the whole, so that it sees the
  gradient before any clipping. Chain telemetry (which must see the unclipped
  gradient too) before the result. Without fixes, ``parts`` as they are.
  """
  fixed = ([] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]) + list(parts)
  return [spike_guard.skip_spikes(optax.chain(*fixed))] if skip_spikes else fixed


def apply_fixes(setup: Any, config: TrialConfig) -> Any:
  """``setup`` (a dataclass) with the fixes ``config`` asks for set in its same-named fields.

  E.g. ``TrialConfig(..., clip_norm=1.5, optimizer="adam")`` sets the setup's
  ``clip_norm`` and ``optimizer``; the setup's own validation checks the values.
  """
  return dataclasses.replace(setup, **config.fixes)


def _describe(config: TrialConfig) -> str:
  variant = config.extra.get("variant", "")
  warm = f" warmup={config.warmup_steps}" if config.warmup_steps else ""
  return f"{variant} lr={config.learning_rate:g}{warm}".strip()


def train(workload: Workload, config: TrialConfig, *, mesh: Optional[Mesh] = None,
          progress: bool = True, compiled: Optional[CompiledSteps] = None) -> TrialResult:
  """Trains one model for ``config.total_steps`` steps; returns its ``TrialResult``.

  The learning rate of step ``t`` (0-based) is
  ``config.learning_rate_schedule()(t)``; ``train_loss[t]`` and
  ``grad_norms[t]`` are the batch's loss and the unclipped gradient norm at
  the parameters *before* update ``t``. The evaluation set is evaluated after
  each of ``config.eval_steps()`` (1-based), giving the workload's
  ``eval_metrics``. A diverging run simply returns its NaN/Inf losses.

  Args:
    workload: the model, loss and data (``config.extra`` already folded in).
    config: the trial (learning rate, schedule, warmup, steps, eval cadence, seed).
    mesh: a ``'data'`` mesh (default: every device).
    progress: show a tqdm bar.
    compiled: the steps to use (default: :func:`compiled_steps`, cached).
  """
  mesh = data_mesh() if mesh is None else mesh
  compiled = compiled_steps(workload, mesh) if compiled is None else compiled
  _, state = workload.init_state(config.seed)
  state = replicate(state, mesh)
  eval_batches = _eval_set(workload, mesh)
  total = config.total_steps
  lrs = schedules.schedule_values(config.learning_rate_schedule(), total, np.float32)
  eval_set = set(int(s) for s in config.eval_steps())
  fetch_every = workload.loop.fetch_every

  losses: list[float] = []
  norms: list[float] = []
  evals: list[dict[str, float]] = []
  pending: list[tuple[str, Any]] = []  # device metrics not fetched yet

  def fetch():
    for kind, value in jax.device_get(pending):
      if kind == "train":
        losses.append(float(value["loss"]))
        norms.append(float(value["grad_norm"]))
      else:
        evals.append({k: float(v) for k, v in value.items()})
    pending.clear()

  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=_describe(config), leave=False, dynamic_ncols=True)
  batches = _Feed(workload, mesh, config.seed)
  try:
    for t in range(total):
      batch = next(batches)
      state, metrics = compiled.train_step(state, *batch, lrs[t])
      pending.append(("train", metrics))
      if (t + 1) in eval_set:
        pending.append(("eval", _evaluate(compiled, workload, eval_batches, state)))
      if (t + 1) % fetch_every == 0 or t + 1 == total:
        fetch()
        if bar is not None:
          bar.update(len(losses) - bar.n)
          bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
        if not math.isfinite(losses[-1]) and not bool(_all_finite(state[0])):
          # Non-finite parameters stay non-finite: every later loss and metric is
          # NaN, so stopping here and filling them in gives the same result.
          if not evals:
            evals.append({k: math.nan for k in jax.device_get(
                _evaluate(compiled, workload, eval_batches, state))})
          break
  finally:
    batches.close()
    if bar is not None:
      bar.close()
  names = list(evals[0]) if evals else []
  missing = total - len(losses)
  losses += [math.nan] * missing
  norms += [math.nan] * missing
  evals += [{k: math.nan for k in names}] * (len(eval_set) - len(evals))
  return TrialResult(
      config=config,
      train_loss=np.asarray(losses),
      eval_steps=config.eval_steps(),
      eval_metrics={k: np.asarray([e[k] for e in evals]) for k in names},
      grad_norms=np.asarray(norms),
  )


# ----------------------------------------------------------------------------
# The demo command lines' shared process setup.


def environment() -> dict[str, Any]:
  """Library versions and the machine a demo's results were measured on (``results.json``).

  Results vary across machines (float32 reduction order, XLA thread counts), so
  every demo records these beside its numbers.
  """
  import importlib.metadata as metadata  # pylint: disable=import-outside-toplevel
  import platform  # pylint: disable=import-outside-toplevel

  versions = {}
  for name in ("jax", "jaxlib", "optax", "flax", "numpy"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  cpu = platform.processor() or None
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  except OSError:
    pass
  devices = jax.devices()
  return {
      "versions": versions,
      "python": platform.python_version(),
      "platform": platform.platform(),
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
      "backend": devices[0].platform,
      "devices": [getattr(d, "device_kind", str(d)) for d in devices],
      "process_count": jax.process_count(),
  }


def environment_line(env: Optional[dict[str, Any]]) -> str:
  """One report sentence for ``environment()``'s record."""
  if not env:
    return "Machine: not recorded."
  v = env["versions"]
  return (f"Machine: {env['cpu']} ({env['cpu_count']} CPUs), {env['backend']} backend "
          f"({', '.join(sorted(set(env['devices'])))}); jax {v['jax']}, jaxlib {v['jaxlib']}, "
          f"optax {v['optax']}, flax {v['flax']}, Python {env['python']}.")


@dataclasses.dataclass
class ExperimentResult:
  """What a demo's ``run_experiment`` produced: every number, and the files written."""

  summary: dict[str, Any]
  files: dict[str, str]


def int_at_least(minimum: int):
  """An argparse type: an integer >= ``minimum`` (a bad value is a usage error, exit 2)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
    return value

  return parse


def positive_float(text: str) -> float:
  """An argparse type: a finite real > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}") from None
  if not 0.0 < value < float("inf"):
    raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
  return value


def check_cli_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Checks across flags; each failure is a one-line usage error (exit 2)."""
  rates = args.learning_rates
  if rates is not None and len(set(rates)) != len(rates):
    duplicates = sorted({r for r in rates if rates.count(r) > 1})
    parser.error(f"argument --learning-rates: must be distinct; got duplicates {duplicates}")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    parser.error(f"argument --out: {args.out!r} is a file, not a folder")


def add_process_options(parser: Any) -> None:
  """Adds ``--workers``, ``--trial-timeout`` and ``--compile-cache`` to a demo's ``argparse`` parser."""
  parser.add_argument("--workers", default="auto",
                      help="trials run side by side: 'auto' (default) fits the machine: one "
                           "single-threaded process per CPU core, one process per GPU on a "
                           "multi-GPU host, this process on one GPU or a TPU host; N: that many "
                           "worker processes; 1: every trial in this process")
  parser.add_argument("--trial-timeout", type=positive_float, default=None, metavar="SECONDS",
                      help="seconds one trial may run; a trial past it is recorded as timed out "
                           "and the run goes on (default: no limit)")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent XLA compilation cache folder (default: <out>/.jax_cache; "
                           "'none' disables)")


def start_processes(args: Any, prog: str, *, distributed: bool = False) -> Any:
  """The executor for ``--workers`` (``default_executor``), with the compilation cache set up.

  ``args`` holds ``workers``, ``compile_cache`` and ``out``. With
  ``distributed`` (``jax.distributed``: every host shares each trial) only
  ``--workers 1`` is allowed, and ``jax.distributed.initialize()`` is called.
  The workers share the persistent compilation cache; when they own the GPUs
  this process only coordinates, on the CPU, claiming no accelerator memory.
  """
  from optstab.diagnosis.executors import ProcessPool, default_executor

  workers = None
  if args.workers != "auto":
    workers = int(args.workers) if str(args.workers).isdigit() else 0
    if workers < 1:
      raise SystemExit(f"{prog}: --workers must be 'auto' or an integer >= 1; got "
                       f"{args.workers!r}.")
  elif distributed:
    workers = 1  # several hosts already share each trial
  if distributed and workers != 1:
    raise SystemExit(f"{prog}: --distributed trains every trial on every host's devices; use "
                     "--workers 1 with it.")
  cache = args.compile_cache or os.path.join(args.out, ".jax_cache")
  cache_env = {}
  if cache.lower() != "none":
    cache_env = {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(cache),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  executor = default_executor(workers, env=cache_env)
  if isinstance(executor, ProcessPool) and executor.worker_envs:
    jax.config.update("jax_platforms", "cpu")
  maybe_initialize_distributed(distributed)
  if cache_env:
    jax.config.update("jax_compilation_cache_dir", cache_env["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return executor


def describe_processes(executor: Any) -> str:
  """Where a demo's trials run, for its first line of output."""
  from optstab.diagnosis.executors import ProcessPool

  if isinstance(executor, ProcessPool):
    return f"{executor.max_workers} worker processes"
  return (f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es)")


# ----------------------------------------------------------------------------
# Picklable trial functions.


class DataSource(Protocol):
  """How to load a data set, not the data: hashable, picklable, with ``load()``.

  A frozen dataclass of a few fields (a path, a size) is the usual form; its
  ``load()`` result is cached per process by :func:`load_data`.
  """

  def load(self) -> Any: ...


#: Loaded data per source, one per process (a worker loads each source once).
_LOADED: dict[Any, Any] = {}


def load_data(data: Any) -> Any:
  """``data.load()``, once per process per source, if ``data`` is a source; else ``data``."""
  if not callable(getattr(data, "load", None)):
    return data
  if data not in _LOADED:
    _LOADED[data] = data.load()
  return _LOADED[data]


@dataclasses.dataclass(frozen=True)
class TrialFunction:
  """A picklable ``TrialFn``: ``make_workload(setup.with_extra(config.extra), data)``, trained.

  A setup with ``fix_support() -> FixSupport`` and fields named like the
  ``TrialConfig`` fix fields (``clip_norm``, ``optimizer``, ``skip_spikes``)
  also applies the fixes a trial asks for (:func:`apply_fixes`); ``diagnose``
  reads ``fix_support``.

  Attributes:
    make_workload: ``(setup, data) -> Workload``, a module-level function
      (pickled by reference).
    setup: the workload's setup, with a ``with_extra(extra) -> setup`` method
      folding a trial's ``TrialConfig.extra`` in.
    data: a :class:`DataSource` (loaded lazily, once per process) or the data
      itself (then pickled with the function).
    progress: show a tqdm bar per trial.
    mesh: a ``'data'`` mesh; ``None`` (default) means every device of the
      process the trial runs in. A function with an explicit mesh cannot be
      pickled: devices belong to one process.
  """

  make_workload: Callable[[Any, Any], Workload]
  setup: Any
  data: Any
  progress: bool = True
  mesh: Optional[Mesh] = None

  @property
  def fix_support(self) -> FixSupport:
    """The fixes the setup can apply (its ``fix_support()``; warmup only without one)."""
    declared = getattr(self.setup, "fix_support", None)
    return FixSupport() if declared is None else declared()

  def __call__(self, config: TrialConfig) -> TrialResult:
    setup = self.setup.with_extra(config.extra)
    if config.fixes:
      setup = apply_fixes(setup, config)
    workload = self.make_workload(setup, load_data(self.data))
    return train(workload, config, mesh=self.mesh, progress=self.progress)

  def __reduce__(self):
    if self.mesh is not None:
      raise TypeError("a TrialFunction with an explicit mesh runs in its own process only; "
                      "use mesh=None to send it to other processes (each then trains on its "
                      "own devices).")
    return (TrialFunction, (self.make_workload, self.setup, self.data, self.progress, None))
