"""Devices: the one-axis ``'data'`` mesh, and placing batches and states on it.

Data parallelism with ``jax.sharding``: a mesh over every device (of every
process, after ``jax.distributed.initialize``), the batch split along it, the
state replicated. The result does not depend on the device count up to
float32 reduction order. With several processes every process builds the same
global batch from the same seed and contributes only its own rows.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "maybe_initialize_distributed",
    "data_mesh",
    "check_batch_size",
    "shard_batch",
    "replicate",
]


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
