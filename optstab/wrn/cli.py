"""``optstab-wrn`` / ``python -m optstab.wrn``: run the stride-instability experiment.

Examples::

  optstab-wrn --preset quick --out runs/quick            # CPU, offline, a few minutes
  optstab-wrn --preset quick --out runs/q1 --workers 1   # every trial in this process
  optstab-wrn --preset cifar10-gpu --out runs/c10 --data-dir ~/data
  optstab-wrn --preset cifar10-tpu --out gs-mounted/run --distributed   # every TPU host

Re-running the same command into the same ``--out`` resumes: finished trials
are read back from ``<out>/trials.jsonl`` and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
  from optstab.wrn.presets import PRESETS

  lines = "\n".join(f"  {name:12s} {p.description}" for name, p in PRESETS.items())
  parser = argparse.ArgumentParser(
      prog="optstab-wrn",
      description="Reproduce the Deep Learning Tuning Playbook's WideResNet stride-instability "
                  "experiment (Figures 4, 5 and 9) and a mitigation table.",
      epilog=f"presets:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                      help="experiment scale (default: quick)")
  parser.add_argument("--out", required=True, help="output folder (created; resumes if it exists)")
  parser.add_argument("--data-dir", default=None,
                      help="folder with cifar-10-batches-py (CIFAR-10 presets); default "
                           "$OPTSTAB_DATA_DIR or ~/.cache/optstab")
  parser.add_argument("--learning-rates", type=float, nargs="+", default=None,
                      help="override the Figure 4 grid (must include --high-learning-rate)")
  parser.add_argument("--high-learning-rate", type=float, default=None,
                      help="override the rate of Figures 5/9 and the mitigation table")
  parser.add_argument("--num-steps", type=int, default=None, help="override post-warmup steps")
  parser.add_argument("--warmup-steps", type=int, default=None, help="override warmup steps")
  parser.add_argument("--batch-size", type=int, default=None, help="override the global batch size")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host: run the same "
                           "command on every host)")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent XLA compilation cache folder (default: <out>/.jax_cache; "
                           "'none' disables)")
  parser.add_argument("--workers", default="auto",
                      help="trials run side by side: 'auto' (default) fits the machine: one "
                           "single-threaded process per CPU core, one process per GPU on a "
                           "multi-GPU host, this process on one GPU or a TPU host; N: that many "
                           "worker processes; 1: every trial in this process")
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  import jax

  from optstab.diagnosis.executors import ProcessPool, default_executor
  from optstab.wrn import experiment, presets, train

  if args.workers != "auto":
    try:
      workers = int(args.workers)
    except ValueError:
      workers = 0
    if workers < 1:
      raise SystemExit(f"optstab-wrn: --workers must be 'auto' or an integer >= 1; got "
                       f"{args.workers!r}.")
  else:
    workers = 1 if args.distributed else None  # several hosts already share each trial
  if args.distributed and workers != 1:
    raise SystemExit("optstab-wrn: --distributed trains every trial on every host's devices; "
                     "use --workers 1 with it.")
  cache = args.compile_cache or os.path.join(args.out, ".jax_cache")
  cache_env = {}
  if cache.lower() != "none":
    cache_env = {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(cache),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  executor = default_executor(workers, env=cache_env)  # the workers share the cache
  if isinstance(executor, ProcessPool) and executor.worker_envs:
    # The workers own the GPUs: this process only coordinates, on the CPU, so
    # that it claims no accelerator memory.
    jax.config.update("jax_platforms", "cpu")
  train.maybe_initialize_distributed(args.distributed)
  if cache_env:
    jax.config.update("jax_compilation_cache_dir", cache_env["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  preset = presets.get_preset(args.preset)
  changes = {}
  if args.learning_rates is not None:
    changes["learning_rates"] = tuple(sorted(args.learning_rates))
  for name in ("high_learning_rate", "num_steps", "warmup_steps", "batch_size"):
    if getattr(args, name) is not None:
      changes[name] = getattr(args, name)
  if changes:
    preset = preset.replace(**changes)
  lead = jax.process_index() == 0
  out = args.out if lead else os.path.join(args.out, f".process{jax.process_index()}")
  if lead:
    where = (f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
             f"{jax.process_count()} process(es)")
    if isinstance(executor, ProcessPool):
      where = f"{executor.max_workers} worker processes"
    print(f"optstab-wrn: preset {preset.name} on {where}; writing {args.out}", flush=True)
  with executor:
    result = experiment.run_experiment(preset, out, data_dir=args.data_dir,
                                       progress=lead and not args.no_progress, executor=executor)
  if lead:
    s = result.summary
    print("\n".join(experiment.verdicts(s)))
    print(f"wall time {s['wall_seconds']:.0f} s; report: {result.files['report']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
