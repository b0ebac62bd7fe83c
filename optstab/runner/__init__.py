"""The trial runner: one training loop for every demo, and a picklable ``TrialFn`` around it.

A trial (``optstab.trial.TrialConfig`` -> ``TrialResult``) is trained the same
way whatever the model; only the model, its loss and its data differ, and those
come in a :class:`Workload`. The runner is split by job:

* :mod:`optstab.runner.mesh` -- the one-axis ``'data'`` mesh, sharding and
  replication (``jax.sharding``), ``jax.distributed`` start-up.
* :mod:`optstab.runner.learning_rate` -- the learning rate as an input of the
  compiled step, so a sweep compiles once per model structure.
* :mod:`optstab.runner.fixes` -- a trial's fixes (clipping, optimizer, step
  guard) in an optimizer chain and in a setup.
* :mod:`optstab.runner.prefetch` -- training batches moved to the devices
  from a background thread.
* :mod:`optstab.runner.loop` -- :class:`Workload`, the compiled-step cache and
  :func:`train`, the loop itself.
* :mod:`optstab.runner.trial_function` -- :class:`TrialFunction`, a picklable
  ``TrialFn`` that loads its :class:`DataSource` once per process.
* :mod:`optstab.runner.machine` -- the machine record a demo keeps beside
  its numbers.
* :mod:`optstab.runner.cli` -- the demo command lines' argument types and
  process setup (``--workers``, the compilation cache).

The runner needs only :mod:`optstab.trial` and :mod:`optstab.executors`, never
the diagnosis: both sit on the same base. This package re-exports every name
of those modules, so ``optstab.runner.<name>`` works as before the split.
``ExperimentResult`` moved to :mod:`optstab.harness.experiment`, with the rest
of the demos' shared experiment skeleton; ``optstab.runner.ExperimentResult``
still finds it, looked up on first use: no runner module imports from a layer
above its own.
"""

from typing import Any

from optstab.runner.cli import add_process_options as add_process_options
from optstab.runner.cli import check_cli_args as check_cli_args
from optstab.runner.cli import describe_processes as describe_processes
from optstab.runner.cli import int_at_least as int_at_least
from optstab.runner.cli import positive_float as positive_float
from optstab.runner.cli import start_processes as start_processes
from optstab.runner.machine import environment as environment
from optstab.runner.machine import environment_line as environment_line
from optstab.runner.fixes import apply_fixes as apply_fixes
from optstab.runner.fixes import with_fixes as with_fixes
from optstab.runner.fixes import step_metrics as step_metrics
from optstab.runner.learning_rate import injectable_learning_rate as injectable_learning_rate
from optstab.runner.learning_rate import set_learning_rate as set_learning_rate
from optstab.runner.loop import CompiledSteps as CompiledSteps
from optstab.runner.loop import LoopConfig as LoopConfig
from optstab.runner.loop import TrainState as TrainState
from optstab.runner.loop import Workload as Workload
from optstab.runner.loop import compiled_steps as compiled_steps
from optstab.runner.loop import jit_train_step as jit_train_step
from optstab.runner.loop import train as train
from optstab.runner.mesh import check_batch_size as check_batch_size
from optstab.runner.mesh import data_mesh as data_mesh
from optstab.runner.mesh import maybe_initialize_distributed as maybe_initialize_distributed
from optstab.runner.mesh import replicate as replicate
from optstab.runner.mesh import shard_batch as shard_batch
from optstab.runner.prefetch import Prefetcher as Prefetcher
from optstab.runner.prefetch import prefetch_to_device as prefetch_to_device
from optstab.runner.trial_function import DataSource as DataSource
from optstab.runner.trial_function import TrialFunction as TrialFunction
from optstab.runner.trial_function import load_data as load_data

__all__ = [
    "TrainState",
    "Workload",
    "LoopConfig",
    "CompiledSteps",
    "DataSource",
    "TrialFunction",
    "environment",
    "environment_line",
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
    "step_metrics",
    "Prefetcher",
    "prefetch_to_device",
]

#: Names that moved to a layer above the runner: name -> the module that defines it now.
_MOVED_UP = {"ExperimentResult": "optstab.harness.experiment"}


def __getattr__(name: str) -> Any:
  """``optstab.runner.ExperimentResult``, from the harness, loaded on first use."""
  if name in _MOVED_UP:
    import importlib  # pylint: disable=import-outside-toplevel

    return getattr(importlib.import_module(_MOVED_UP[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
