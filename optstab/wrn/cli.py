"""``optstab-wrn`` / ``python -m optstab.wrn``: run the stride-instability experiment.

Examples::

  optstab-wrn --preset quick --out runs/quick            # CPU, offline, a few minutes
  optstab-wrn --preset quick --out runs/quick --seeds 0 1 2 3   # four seeds, verdicts counted
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
  from optstab import runner
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
  parser.add_argument("--learning-rates", type=runner.positive_float, nargs="+", default=None,
                      help="override the Figure 4 grid (must include --high-learning-rate)")
  parser.add_argument("--high-learning-rate", type=runner.positive_float, default=None,
                      help="override the rate of Figures 5/9 and the mitigation table")
  parser.add_argument("--num-steps", type=runner.int_at_least(1), default=None,
                      help="override post-warmup steps")
  parser.add_argument("--warmup-steps", type=runner.int_at_least(0), default=None,
                      help="override warmup steps")
  parser.add_argument("--batch-size", type=runner.int_at_least(1), default=None,
                      help="override the global batch size")
  parser.add_argument("--seeds", type=runner.int_at_least(0), nargs="+", default=None,
                      help="run the whole experiment once per seed (e.g. --seeds 0 1 2 3); the "
                           "report says how many seeds support each verdict (default: the "
                           "preset's one seed)")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host: run the same "
                           "command on every host)")
  runner.add_process_options(parser)
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from optstab import runner

  runner.check_cli_args(parser, args)
  if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
    parser.error(f"argument --seeds: must be distinct; got {args.seeds}")
  import jax

  from optstab.wrn import experiment, presets

  preset = presets.get_preset(args.preset)
  changes = {}
  if args.learning_rates is not None:
    changes["learning_rates"] = tuple(sorted(args.learning_rates))
  for name in ("high_learning_rate", "num_steps", "warmup_steps", "batch_size"):
    if getattr(args, name) is not None:
      changes[name] = getattr(args, name)
  if changes:
    try:
      preset = preset.replace(**changes)
    except ValueError as e:  # e.g. --high-learning-rate off the grid: a usage error too
      parser.error(str(e))
  executor = runner.start_processes(args, "optstab-wrn", distributed=args.distributed)
  lead = jax.process_index() == 0
  out = args.out if lead else os.path.join(args.out, f".process{jax.process_index()}")
  if lead:
    print(f"optstab-wrn: preset {preset.name} on {runner.describe_processes(executor)}; "
          f"writing {args.out}", flush=True)
  with executor:
    result = experiment.run_experiment(preset, out, data_dir=args.data_dir,
                                       progress=lead and not args.no_progress, executor=executor,
                                       seeds=args.seeds, trial_timeout=args.trial_timeout)
  if lead:
    s = result.summary
    print("\n".join(experiment.verdicts(s)))
    print(f"wall time {s['wall_seconds']:.0f} s; report: {result.files['report']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
