"""``optstab-diagnose-logs``: the FAQ's diagnosis of a sweep you already ran, from its logs.

Examples::

  optstab-diagnose-logs runs/lr=0.01.csv runs/lr=0.1.csv runs/lr=1.csv --out diagnosis
  optstab-diagnose-logs a.jsonl b.jsonl c.jsonl --learning-rates 0.01 0.1 1 --out diagnosis
  optstab-diagnose-logs tb/lr_0.1 tb/lr_1 --loss-column train/loss --out diagnosis  # TensorBoard
  optstab-diagnose-logs runs/*.csv --eval-column loss=val/loss --trivial-loss 2.303 --out d

One file per run (CSV, JSON Lines, JSON, or a TensorBoard run folder); see
``optstab.diagnosis.logs`` for the columns guessed and how values are read.
Writes ``diagnosis.md``, ``diagnosis.json`` and the figures into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def _metric_column(text: str) -> tuple[str, str]:
  name, sep, column = text.partition("=")
  if not sep or not name or not column:
    raise argparse.ArgumentTypeError(f"must be METRIC=COLUMN (e.g. loss=val/loss); got {text!r}")
  return name, column


def build_parser() -> argparse.ArgumentParser:
  from optstab._arguments import positive_float  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(
      prog="optstab-diagnose-logs",
      description="Diagnose optimization instability from the logs of a learning-rate sweep "
                  "(one file per run): each run's label with its evidence, lr*, the edge of "
                  "feasibility, Figure 7a and the curves above lr*. Nothing is trained.")
  parser.add_argument("run_files", nargs="+", metavar="RUN_FILE",
                      help="one log per run: .csv/.tsv, .jsonl, .json, or a TensorBoard run "
                           "folder or event file (needs optstab[tensorboard])")
  parser.add_argument("--out", required=True, help="output folder (created)")
  parser.add_argument("--learning-rates", type=positive_float, nargs="+", default=None,
                      help="the runs' learning rates, in the order of the files (default: each "
                           "file's lr / learning_rate column, else its name, e.g. lr=0.1.csv)")
  parser.add_argument("--step-column", default=None, help="default: guessed (step, _step, "
                                                          "global_step...)")
  parser.add_argument("--loss-column", default=None, help="training loss; default: guessed "
                                                          "(loss, train/loss, train_loss...)")
  parser.add_argument("--grad-norm-column", default=None,
                      help="unclipped gradient norm; default: guessed (grad_norm...), optional")
  parser.add_argument("--eval-column", type=_metric_column, action="append", default=None,
                      metavar="METRIC=COLUMN",
                      help="an evaluation metric and its column (repeat for several); default: "
                           "the evaluation loss as 'loss' if found (eval/loss, val_loss...)")
  parser.add_argument("--lr-column", default=None, help="default: guessed (lr, learning_rate)")
  parser.add_argument("--metric", default=None,
                      help="what lr* minimizes: an evaluation metric or 'train_loss' (default: "
                           "'loss' if every run logs an evaluation loss, else 'train_loss')")
  parser.add_argument("--mode", default="min", choices=("min", "max"))
  parser.add_argument("--reduce", default="final", choices=("final", "best"))
  parser.add_argument("--trivial-loss", type=float, default=None,
                      help="the loss of a model that learned nothing (e.g. ln(num_classes))")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    parser.error(f"argument --out: {args.out!r} is a file, not a folder")
  from optstab.diagnosis import logs  # pylint: disable=import-outside-toplevel

  evals = None
  if args.eval_column:
    evals = dict(args.eval_column)
    if len(evals) != len(args.eval_column):
      parser.error("argument --eval-column: each metric once")
  try:
    diagnosis = logs.diagnose_logs(
        args.run_files, args.out, learning_rates=args.learning_rates,
        step_column=args.step_column, loss_column=args.loss_column,
        grad_norm_column=args.grad_norm_column, eval_columns=evals, lr_column=args.lr_column,
        metric=args.metric, mode=args.mode, reduce=args.reduce, trivial_loss=args.trivial_loss)
  except (ValueError, ImportError, FileNotFoundError) as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  sweep = diagnosis.sweep
  print(f"verdict: {diagnosis.verdict}")
  best = sweep.best_learning_rate
  print(f"lr* = {best:.4g}" if best is not None else "lr*: none (no feasible run)")
  for trial in sweep.trials:
    print(f"  {trial.learning_rate:.4g}: {trial.describe()}")
  print(f"report: {diagnosis.files['markdown']}")
  sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
