"""A demo's command line: the shared options, the preset overrides, the run.

A demo's ``cli.py`` builds its parser with :func:`demo_parser`, adds its own
options, then :func:`add_run_options`; its ``main`` parses, turns the flags
into preset changes and hands over to :func:`run_demo`::

  parser = demo_parser("optstab-wrn", "Reproduce ...", PRESETS)
  parser.add_argument("--data-dir", ...)          # the demo's own options
  add_run_options(parser)                         # --workers, ..., --no-progress

  args = parse_args(parser, argv)
  preset = preset_from_args(parser, PRESETS[args.preset], {"num_steps": args.num_steps})
  return run_demo("optstab-wrn", args, preset, run, verdicts)

Re-running the same command into the same ``--out`` resumes: finished trials
are read back from ``<out>/trials.jsonl`` and skipped.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from optstab import runner
from optstab.harness.experiment import ExperimentResult
from optstab.harness.seeds import check_seeds

__all__ = ["demo_parser", "add_run_options", "parse_args", "preset_from_args", "run_demo"]


def demo_parser(prog: str, description: str, presets: Mapping[str, Any], *,
                name_width: int = 8) -> argparse.ArgumentParser:
  """A parser with ``--preset`` (default ``quick``) and ``--out``; the presets listed in its epilog."""
  lines = "\n".join(f"  {name:{name_width}s} {p.description}" for name, p in presets.items())
  parser = argparse.ArgumentParser(
      prog=prog, description=description, epilog=f"presets:\n{lines}",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="quick", choices=sorted(presets),
                      help="experiment scale (default: quick)")
  parser.add_argument("--out", required=True, help="output folder (created; resumes if it exists)")
  return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
  """Adds ``--workers``, ``--trial-timeout``, ``--compile-cache`` and ``--no-progress``."""
  runner.add_process_options(parser)
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_args(parser: argparse.ArgumentParser,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The parsed flags, checked across flags (``runner.check_cli_args``) and ``--seeds``
  (``check_seeds``): a usage error exits 2."""
  args = parser.parse_args(argv)
  runner.check_cli_args(parser, args)
  if getattr(args, "seeds", None) is not None:
    try:
      check_seeds(args.seeds, 0)
    except ValueError as e:
      parser.error(f"argument --seeds: {e}")
  return args


def preset_from_args(parser: argparse.ArgumentParser, preset: Any,
                     changes: Mapping[str, Any]) -> Any:
  """``preset.replace(**changes)``, the ``None`` changes left out; a bad value is a usage error."""
  changes = {k: v for k, v in changes.items() if v is not None}
  if not changes:
    return preset
  try:
    return preset.replace(**changes)
  except ValueError as e:  # e.g. a grid without the rate a figure needs: a usage error too
    parser.error(str(e))


def run_demo(prog: str, args: argparse.Namespace, preset: Any,
             run: Callable[[Any, str, Any, bool], ExperimentResult],
             verdicts: Callable[[dict[str, Any]], list[str]], *,
             distributed: bool = False) -> int:
  """Starts the trial processes, runs the experiment, prints its verdicts; the exit status.

  Args:
    prog: the command's name, for its messages.
    args: the parsed flags (``out``, ``workers``, ``compile_cache``,
      ``no_progress``).
    preset: the preset, overrides applied.
    run: ``(preset, out_dir, executor, progress) -> ExperimentResult``: the
      demo's ``run_experiment`` with its own flags bound.
    verdicts: ``summary -> sentences`` printed at the end.
    distributed: every host shares each trial (``jax.distributed``): only
      process 0 writes ``--out`` and prints; the others write under
      ``<out>/.process<i>``.
  """
  executor = runner.start_processes(args, prog, distributed=distributed)
  index = 0
  if distributed:
    import jax  # pylint: disable=import-outside-toplevel

    index = jax.process_index()
  lead = index == 0
  out = args.out if lead else os.path.join(args.out, f".process{index}")
  if lead:
    print(f"{prog}: preset {preset.name} on {runner.describe_processes(executor)}; "
          f"writing {args.out}", flush=True)
  with executor:
    result = run(preset, out, executor, lead and not args.no_progress)
  if lead:
    s = result.summary
    print("\n".join(verdicts(s)))
    print(f"wall time {s['wall_seconds']:.0f} s; report: {result.files['report']}")
  return 0
