"""``optstab-transformer`` / ``python -m optstab.transformer``: the Post-LN vs Pre-LN warmup experiment.

Examples::

  optstab-transformer --preset quick --out runs/postln          # CPU, offline, minutes
  optstab-transformer --preset quick --out runs/q1 --workers 1  # every trial in this process
  optstab-transformer --preset gpu --out runs/postln-gpu        # one H100/H200, about an hour
  optstab-transformer --preset quick --corpus ~/books --out runs/books   # your own text

Re-running the same command into the same ``--out`` resumes: finished trials
are read back from ``<out>/trials.jsonl`` and skipped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
  from optstab import runner
  from optstab.transformer.presets import PRESETS

  lines = "\n".join(f"  {name:8s} {p.description}" for name, p in PRESETS.items())
  parser = argparse.ArgumentParser(
      prog="optstab-transformer",
      description="Reproduce the Deep Learning Tuning Playbook's Post-LN vs Pre-LN warmup "
                  "figures (Figures 6, 7 and 8) on a character-level Transformer, and run "
                  "optstab.diagnose on both models.",
      epilog=f"presets:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                      help="experiment scale (default: quick)")
  parser.add_argument("--out", required=True, help="output folder (created; resumes if it exists)")
  parser.add_argument("--corpus", default=None,
                      help="a text file or folder to train on (default: the running Python's "
                           "standard-library sources)")
  parser.add_argument("--learning-rates", type=runner.positive_float, nargs="+", default=None,
                      help="override the Figure 8 grid (must include the Figure 6 rate)")
  parser.add_argument("--num-steps", type=runner.int_at_least(1), default=None,
                      help="override the steps of every run (warmup included)")
  parser.add_argument("--no-diagnosis", action="store_true", help="skip optstab.diagnose")
  runner.add_process_options(parser)
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from optstab import runner

  runner.check_cli_args(parser, args)
  from optstab.transformer import experiment, presets

  preset = presets.get_preset(args.preset)
  changes = {}
  if args.learning_rates is not None:
    changes["learning_rates"] = tuple(sorted(args.learning_rates))
  if args.num_steps is not None:
    changes["num_steps"] = args.num_steps
  if args.no_diagnosis:
    changes["run_diagnosis"] = False
  if changes:
    try:
      preset = preset.replace(**changes)
    except ValueError as e:  # e.g. a grid without the Figure 6 rate: a usage error too
      parser.error(str(e))
  executor = runner.start_processes(args, "optstab-transformer")
  print(f"optstab-transformer: preset {preset.name} on {runner.describe_processes(executor)}; "
        f"writing {args.out}", flush=True)
  with executor:
    result = experiment.run_experiment(preset, args.out, corpus=args.corpus,
                                       progress=not args.no_progress, executor=executor,
                                       trial_timeout=args.trial_timeout)
  s = result.summary
  print("\n".join(experiment.verdicts(s)))
  print(f"wall time {s['wall_seconds']:.0f} s; report: {result.files['report']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
