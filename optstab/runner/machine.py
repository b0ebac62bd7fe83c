"""The machine record: library versions and the machine a demo's results were measured on.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax

__all__ = ["environment", "environment_line"]


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
