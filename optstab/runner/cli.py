"""The demo command lines' shared process setup: argument types, cross-flag checks, the executor.

The argument types (:func:`int_at_least`, :func:`positive_float`) are defined
in the base layer, where the diagnosis's command line uses them too.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax

from optstab._arguments import int_at_least, positive_float
from optstab.executors import ProcessPool, default_executor
from optstab.runner.mesh import maybe_initialize_distributed

__all__ = [
    "int_at_least",
    "positive_float",
    "check_cli_args",
    "add_process_options",
    "start_processes",
    "describe_processes",
]


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
  if isinstance(executor, ProcessPool):
    return f"{executor.max_workers} worker processes"
  return (f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es)")
