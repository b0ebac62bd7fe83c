"""``optstab-transformer`` / ``python -m optstab.transformer``: the Post-LN vs Pre-LN warmup experiment.

Examples::

  optstab-transformer --preset quick --out runs/postln          # CPU, offline, minutes
  optstab-transformer --preset quick --out runs/q1 --workers 1  # every trial in this process
  optstab-transformer --preset standard --out runs/std          # Figure 8 at 1000 steps, 3 seeds
  optstab-transformer --preset gpu --out runs/postln-gpu        # one H100/H200, about an hour
  optstab-transformer --preset spikes --out runs/spikes         # Figure 7b: a mid-training failure
  optstab-transformer --preset quick --corpus ~/books --out runs/books   # your own text

The shared options and the resuming into ``--out`` are ``optstab.harness.cli``'s.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
  """The ``optstab-transformer`` parser."""
  from optstab import runner
  from optstab.harness import cli
  from optstab.transformer.presets import PRESETS
  from optstab.transformer.spikes import SPIKE_STUDIES

  parser = cli.demo_parser(
      "optstab-transformer",
      "Reproduce the Deep Learning Tuning Playbook's Post-LN vs Pre-LN warmup figures "
      "(Figures 6, 7 and 8) on a character-level Transformer, and run optstab.diagnose on "
      "both models; --preset spikes runs Figure 7b's mid-training failure with the step "
      "guard and clipping.", {**PRESETS, **SPIKE_STUDIES})
  parser.add_argument("--corpus", default=None,
                      help="a text file or folder to train on (default: the running Python's "
                           "standard-library sources)")
  parser.add_argument("--learning-rates", type=runner.positive_float, nargs="+", default=None,
                      help="override the Figure 8 grid (must include the Figure 6 rate)")
  parser.add_argument("--num-steps", type=runner.int_at_least(1), default=None,
                      help="override the steps of every run (warmup included)")
  parser.add_argument("--learning-rate", type=runner.positive_float, default=None,
                      help="spikes only: override the study's constant rate after warmup")
  parser.add_argument("--seeds", type=runner.int_at_least(0), nargs="+", default=None,
                      help="run Figures 6-8 once per seed (e.g. --seeds 0 1 2); the report gives "
                           "every seed's best rates and says how many seeds support each verdict "
                           "(default: the preset's seeds: 0 1 2 for standard, 0 for the others)")
  diagnosis = parser.add_mutually_exclusive_group()
  diagnosis.add_argument("--no-diagnosis", action="store_true", help="skip optstab.diagnose")
  diagnosis.add_argument("--diagnosis", action="store_true",
                         help="run optstab.diagnose (on the first seed) where the preset skips "
                              "it (standard: it adds its own checks and fix trials to the "
                              "preset's cost)")
  cli.add_run_options(parser)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``optstab-transformer``; the exit status."""
  from optstab.harness import cli

  parser = build_parser()
  args = cli.parse_args(parser, argv)
  from optstab.transformer import experiment, presets, spikes

  if args.preset in spikes.SPIKE_STUDIES:
    return _run_spike_study(parser, args)
  if args.learning_rate is not None:
    parser.error(f"--learning-rate applies to --preset {' or '.join(spikes.SPIKE_STUDIES)} "
                 "(the Figure 6-8 presets take --learning-rates)")

  rates = None if args.learning_rates is None else tuple(sorted(args.learning_rates))
  preset = cli.preset_from_args(parser, presets.get_preset(args.preset), {
      "learning_rates": rates, "num_steps": args.num_steps,
      # A grid given on the command line is every curve's grid.
      "curve_learning_rates": None if rates is None else (),
      "run_diagnosis": False if args.no_diagnosis else True if args.diagnosis else None})

  def run(preset, out, executor, progress):
    return experiment.run_experiment(preset, out, corpus=args.corpus, progress=progress,
                                     executor=executor, trial_timeout=args.trial_timeout,
                                     seeds=args.seeds)

  return cli.run_demo("optstab-transformer", args, preset, run, experiment.verdicts)


def _run_spike_study(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  """``--preset spikes``: the Figure 7b study; the Figure 6-8 flags are usage errors."""
  from optstab.harness import cli
  from optstab.transformer import spikes

  for flag in ("learning_rates", "diagnosis", "no_diagnosis"):
    if getattr(args, flag):
      parser.error(f"--{flag.replace('_', '-')} does not apply to --preset {args.preset} "
                   "(it takes --learning-rate, --num-steps and --seeds)")
  study = cli.preset_from_args(parser, spikes.SPIKE_STUDIES[args.preset], {
      "learning_rate": args.learning_rate, "num_steps": args.num_steps,
      "seeds": None if args.seeds is None else tuple(args.seeds)})

  def run(study, out, executor, progress):
    return spikes.run_spike_study(study, out, corpus=args.corpus, progress=progress,
                                  executor=executor, trial_timeout=args.trial_timeout)

  return cli.run_demo("optstab-transformer", args, study, run, spikes.verdicts)


if __name__ == "__main__":
  sys.exit(main())
