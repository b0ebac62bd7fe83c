"""Counts XLA compilations through ``jax.monitoring``, for the tests that assert compile-once.

One listener for the whole test process: ``jax.monitoring`` has no way to remove one.
"""

from __future__ import annotations

import contextlib

import jax


class CompileCounter:
  """Counts XLA compilations through ``jax.monitoring`` (one event per backend compile)."""

  def __init__(self):
    self.names: list[str] = []
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    del duration
    if self.active and event.endswith("backend_compile_duration"):
      self.names.append(str(kwargs.get("fun_name", "?")))

  @contextlib.contextmanager
  def counting(self):
    self.names.clear()
    self.active = True
    try:
      yield self.names
    finally:
      self.active = False


#: The process's one counter: ``with COMPILES.counting() as names: ...``.
COMPILES = CompileCounter()
