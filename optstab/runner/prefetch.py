"""Device prefetch: a background thread moves an iterator's items to the devices ahead of use.

Training batches are built on the host; :func:`prefetch_to_device` transfers
the next ones while the current step runs.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, NamedTuple

import jax

from optstab import _validation

__all__ = ["Prefetcher", "prefetch_to_device"]


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
