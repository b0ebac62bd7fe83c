"""The training loop: a :class:`Workload` trained for one ``TrialConfig``.

The rule. A trial (``optstab.trial.TrialConfig`` -> ``TrialResult``) is
trained the same way whatever the model: seed the state, run
``config.total_steps`` steps at the schedule's learning rates, record the
training loss and the unclipped gradient norm of every step, evaluate after
each of ``config.eval_steps()``. Only the model, its loss and its data differ;
those come in a :class:`Workload`, a plain dataclass of functions (init2winit
keeps one trainer for every model the same way, without its registries).

Our position.

* One compiled step per model structure. The learning rate of step ``t`` is
  an *input* of the step (:mod:`optstab.runner.learning_rate`), so a sweep
  over rates, warmups or seeds compiles once per process: compiled steps are
  cached by ``Workload.key`` and the mesh (:func:`compiled_steps`).
* No per-step host syncs. Per-step metrics stay on the device and are fetched
  every ``LoopConfig.fetch_every`` steps; evaluations are queued the same way.
  Training batches are built on the host and moved to the device from a
  background thread (:mod:`optstab.runner.prefetch`).

Where it breaks. Each trial is its own run: vectorizing several trials in one
step with ``jax.vmap`` was measured slower on CPU (about 8x for 3 WRN-10-1
trials, XLA:CPU's batched convolutions; slower too for the small Transformer
in our measurements of the Transformer demo), so trials run one after another
in a process and in parallel across processes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optstab import _validation
from optstab import schedules
from optstab.runner.mesh import data_mesh, replicate, shard_batch
from optstab.runner.prefetch import prefetch_to_device
from optstab.trial import TrialConfig, TrialResult

__all__ = [
    "TrainState",
    "LoopConfig",
    "Workload",
    "CompiledSteps",
    "compiled_steps",
    "jit_train_step",
    "train",
]


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
      batch before the update and the unclipped global gradient norm, and
      ``"skipped"`` when a step guard may drop the update
      (:func:`~optstab.runner.step_metrics` builds the dict).
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
  skipped: list[int] = []  # 1-based steps a step guard skipped (``step_metrics``' "skipped")
  evals: list[dict[str, float]] = []
  pending: list[tuple[str, Any]] = []  # device metrics not fetched yet

  def fetch():
    for kind, value in jax.device_get(pending):
      if kind == "train":
        losses.append(float(value["loss"]))
        norms.append(float(value["grad_norm"]))
        if bool(value.get("skipped", False)):
          skipped.append(len(losses))
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
      skipped_steps=np.asarray(skipped, np.int64),
  )
