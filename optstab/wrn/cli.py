"""``optstab-wrn`` / ``python -m optstab.wrn``: run the stride-instability experiment.

Examples::

  optstab-wrn --preset quick --out runs/quick            # CPU, offline, a few minutes
  optstab-wrn --preset quick --out runs/quick --seeds 0 1 2 3   # four seeds, verdicts counted
  optstab-wrn --preset standard --out runs/std           # Figure 4, 9 rates, 3 seeds
  optstab-wrn --preset quick --out runs/q1 --workers 1   # every trial in this process
  optstab-wrn --preset cifar10-gpu --out runs/c10 --data-dir ~/data
  optstab-wrn --preset cifar10-tpu --out gs-mounted/run --distributed   # every TPU host

The shared options and the resuming into ``--out`` are ``optstab.harness.cli``'s.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
  """The ``optstab-wrn`` parser."""
  from optstab import runner
  from optstab.harness import cli
  from optstab.wrn.presets import PRESETS

  parser = cli.demo_parser(
      "optstab-wrn",
      "Reproduce the Deep Learning Tuning Playbook's WideResNet stride-instability "
      "experiment (Figures 4, 5 and 9) and a mitigation table.", PRESETS, name_width=12)
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
                           "preset's seeds: 0 1 2 for standard, 0 for the others)")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host: run the same "
                           "command on every host)")
  cli.add_run_options(parser)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``optstab-wrn``; the exit status."""
  from optstab.harness import cli

  parser = build_parser()
  args = cli.parse_args(parser, argv)
  from optstab.wrn import experiment, presets

  rates = None if args.learning_rates is None else tuple(sorted(args.learning_rates))
  preset = cli.preset_from_args(parser, presets.get_preset(args.preset), {
      "learning_rates": rates, "high_learning_rate": args.high_learning_rate,
      "num_steps": args.num_steps, "warmup_steps": args.warmup_steps,
      "batch_size": args.batch_size})

  def run(preset, out, executor, progress):
    return experiment.run_experiment(preset, out, data_dir=args.data_dir, progress=progress,
                                     executor=executor, seeds=args.seeds,
                                     trial_timeout=args.trial_timeout)

  return cli.run_demo("optstab-wrn", args, preset, run, experiment.verdicts,
                      distributed=args.distributed)


if __name__ == "__main__":
  sys.exit(main())
