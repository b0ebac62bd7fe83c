"""Picklable trial functions: a :class:`TrialFunction` trains a workload for each ``TrialConfig``.

A :class:`TrialFunction` holds the setup and a :class:`DataSource` (how to
load the data, not the data), loads the data lazily once per process and
compiles once per process, so a process pool or a Dask cluster can run trials
in parallel (``pickle.dumps(trial_fn)`` is a few hundred bytes).

Where it breaks. A ``TrialFunction`` given an in-memory data set pickles that
data with it (fine for the shipped digits, wasteful for CIFAR-10: give a
``DataSource`` instead). A function with an explicit mesh does not pickle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

from jax.sharding import Mesh

from optstab.runner.fixes import apply_fixes
from optstab.runner.loop import Workload, train
from optstab.trial import FixSupport, TrialConfig, TrialResult

__all__ = ["DataSource", "TrialFunction", "load_data"]


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
