"""Diagnosis of the runs you already have: one log file per learning rate.

Many sweeps are already trained, their curves logged to CSV, JSON Lines or
TensorBoard event files, one run per learning rate. ``diagnose_logs`` reads
them and applies the FAQ's judgement without training anything: every run's
label with its evidence, lr*, the edge of feasibility, the curves of the rates
above lr* (``rates_above_best``), written in ``diagnose``'s layout
(``diagnosis.md``, ``diagnosis.json``, ``sweep.png`` (Figure 7a),
``above_best_loss.png``...). The confirmation runs that need new training
(short and long checks, the warmup search) are not run: there is no training
function to run them with.

**One file per run**, read by ``read_run_log``:

* CSV (``.csv``, ``.tsv``): a header row, then one row per logged step; the
  layouts a W&B history export (``_step``, ``train/loss``...), a W&B chart
  export (``Step``, ``<run> - <metric>``, ``<run> - <metric>__MIN`` /
  ``__MAX``, the last two ignored) or a TensorBoard CSV download (``Wall
  time,Step,Value``: ``Value`` is then the training loss) gives;
* JSON Lines (``.jsonl``, ``.ndjson``): one object per line, nested objects
  flattened with ``/`` (``{"train": {"loss": 2.3}}`` is column ``train/loss``);
  a ``.json`` file holding a list of such objects, or a Hugging Face
  ``trainer_state.json`` (its ``log_history``), reads the same;
* TensorBoard event files (a run's folder, or one ``events.out.tfevents.*``
  file): scalar tags are columns and the events' steps the step column. Needs
  the ``tensorboard`` extra (``pip install "optstab[tensorboard]"``).

**Columns** are given (``step_column=``, ``loss_column=``, ...) or guessed from
common names, first match wins (``LOG_COLUMNS`` lists them; names are compared
without case and without a W&B chart export's ``<run> - `` prefix): the step
(``step``, ``_step``, ``global_step``...), the training loss (``loss``,
``train/loss``, ``train_loss``...), optionally the gradient norm
(``grad_norm``...), the evaluation loss (``eval/loss``, ``eval_loss``,
``val_loss``...: metric ``"loss"``) and the learning rate (``lr``,
``learning_rate``: its largest value, the schedule's peak). A run's learning
rate is, in this order, the one given, the learning-rate column's peak, or a
number after ``lr`` in the file's (or run folder's) name (``lr=0.1.csv``,
``run-lr_3e-4``). Every run says which it used (``RunLog.describe``), and the
report repeats it.

**Values.** ``nan``, ``inf``, JSON ``null`` and an empty CSV cell are the
divergence they usually are: a non-finite training loss (pandas writes NaN as
an empty cell). Three exceptions keep exports honest, because W&B and pandas
write every metric logged at a step into one row and leave the others empty:
a row whose training-loss cell is empty but which holds a finite evaluation
value is an evaluation row; if an empty training-loss cell comes before a later
logged loss, the file logs the loss on some rows only, and its empty cells
are rows where it was not logged (only empty cells after the last logged loss
are a divergence); and a JSON line without the training-loss key is not a
training row. A run whose log ends early (the training stopped at the NaN) is
padded with NaN to the sweep's length, provided its last logged loss is
non-finite.

**Sparse logs.** A training loss logged every N steps, not every step, is
judged on the logged points: point k is the k-th logged step, every window of
the detectors counts points, every step number of the report counts points
(the report says so, with the steps they stand for), and a spike between two
logged points cannot be seen. Evaluations are placed at the last training
point at or before their step (an evaluation before the first one, e.g. at
step 0, is dropped). Every run of a sweep must log the same steps.

**Gradient norms** are evidence (outliers never change a label; an early
gradient-norm jump corroborates an early loss jump), but a gap would read as an
outlier: a run whose gradient-norm column misses a point where its loss is
finite uses no gradient norms, and says so; so does a run without the column.
The report then has no gradient-norm finding and no clipping threshold, and a
borderline early loss jump that only the norm would corroborate reads as
stable (on the WideResNet demo's stride sweep, one early-unstable run of seven
does).

Bad input is a ``ValueError`` naming the file, the line (or entry) and the
column: a missing column, a non-numeric value, steps that do not increase,
runs that log different steps ("mixed step counts"), two runs at one rate,
a file that cannot be parsed.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from optstab import _validation
from optstab.diagnosis.confirm import rates_above_best
from optstab.diagnosis.detectors import DetectorThresholds
from optstab.diagnosis.feasibility import FeasibilityRule
from optstab.diagnosis.report import Diagnosis, make_diagnosis, write_report
from optstab.diagnosis.store import TrialRecord
from optstab.diagnosis.sweep import (TRAIN_LOSS, PathLike, SweepResult, check_metric_names,
                                     check_ranking, judge_sweep)
from optstab.trial import TrialConfig, TrialResult

__all__ = ["LOG_COLUMNS", "RunLog", "read_run_log", "sweep_from_logs", "diagnose_logs"]

#: Column names guessed, per role, in order of preference (compared without case).
LOG_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "step": ("step", "_step", "global_step", "train/global_step", "trainer/global_step", "steps",
             "iteration", "iter"),
    "loss": ("loss", "train/loss", "train_loss", "training_loss", "train/loss_step",
             "loss/train", "train-loss", "trainer/loss", "value"),
    "grad_norm": ("grad_norm", "train/grad_norm", "gradient_norm", "train/gradient_norm",
                  "global_grad_norm", "grad_norm/global", "grad_norm/total", "grad-norm",
                  "gradnorm"),
    "eval_loss": ("eval/loss", "eval_loss", "val/loss", "val_loss", "validation/loss",
                  "validation_loss", "valid/loss", "valid_loss", "test/loss", "test_loss",
                  "loss/eval", "loss/val", "loss/validation", "loss/test"),
    "learning_rate": ("lr", "learning_rate", "learning-rate", "train/lr", "train/learning_rate",
                      "trainer/learning_rate", "optimizer/lr"),
}

_EVENTS = "events.out.tfevents"
_CSV_SUFFIXES = (".csv", ".tsv")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
# A number after "lr" / "learning_rate" in a file or folder name: lr=0.1, lr_3e-4, lr1e-3.
_RATE_IN_NAME = re.compile(
    r"(?:^|[^a-z0-9])(?:lr|learning[_-]?rate)[=_-]?((?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)",
    re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class _Table:
  """A log file as rows: (where, {column: raw value}); a column absent from a row is not logged."""

  source: str
  columns: tuple[str, ...]
  rows: tuple[tuple[str, dict[str, Any]], ...]
  step_column: Optional[str] = None   # set when the format has its own steps (TensorBoard)


def _fail(source: str, message: str) -> None:
  raise ValueError(f"{source}: {message}")


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in obj.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8-sig") as f:
      return f.read()
  except UnicodeDecodeError as e:
    _fail(path, f"cannot be parsed: not UTF-8 text ({e.reason} at byte {e.start}); logs must be "
                "CSV, JSON Lines or TensorBoard event files")


def _read_csv(path: str) -> _Table:
  text = _read_text(path)
  delimiter = "\t" if path.lower().endswith(".tsv") else ","
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
  header: Optional[list[str]] = None
  rows = []
  try:
    for fields in reader:
      line = reader.line_num
      if not fields or all(not f.strip() for f in fields):
        continue
      if header is None:
        header = [f.strip() for f in fields]
        continue
      if len(fields) != len(header):
        _fail(path, f"line {line} has {len(fields)} fields, the header has {len(header)}: "
                    "cannot be parsed as CSV")
      rows.append((f"line {line}", dict(zip(header, fields))))
  except csv.Error as e:
    _fail(path, f"cannot be parsed as CSV at line {reader.line_num}: {e}")
  if header is None:
    _fail(path, "is empty: no header row and no values")
  return _Table(path, tuple(header), tuple(rows))


def _read_json_rows(path: str) -> _Table:
  text = _read_text(path)
  entries: list[tuple[str, Any]] = []
  whole = None
  if path.lower().endswith(".json") or text.lstrip().startswith("["):
    try:
      whole = json.loads(text)
    except json.JSONDecodeError:
      whole = None  # e.g. JSON Lines in a .json file: read line by line below
  if isinstance(whole, Mapping) and isinstance(whole.get("log_history"), list):
    entries = [(f"log_history[{i}]", e) for i, e in enumerate(whole["log_history"])]
  elif isinstance(whole, list):
    entries = [(f"entry {i}", e) for i, e in enumerate(whole)]
  else:
    for number, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        entries.append((f"line {number}", json.loads(line)))
      except json.JSONDecodeError as e:
        _fail(path, f"line {number} cannot be parsed as JSON Lines: {e.msg} at column {e.colno}")
  rows, columns = [], {}
  for where, entry in entries:
    if not isinstance(entry, Mapping):
      _fail(path, f"{where} is {type(entry).__name__}, not an object of logged values")
    cells = _flatten(entry)
    columns.update(dict.fromkeys(cells))
    rows.append((where, cells))
  if not rows:
    _fail(path, "is empty: no logged values")
  return _Table(path, tuple(columns), tuple(rows))


def _event_files(path: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(glob.escape(path), _EVENTS + "*")))
    if not files:
      _fail(path, f"is a folder without TensorBoard event files ({_EVENTS}.*)")
    return files
  return [path]


def _read_tensorboard(path: str) -> _Table:
  try:
    # pylint: disable-next=import-outside-toplevel
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path}: reading TensorBoard event files needs the tensorboard package: "
                      "pip install \"optstab[tensorboard]\" (or export the curves as CSV)") from e
  by_step: dict[int, dict[str, Any]] = {}
  columns: dict[str, None] = {}
  for file in _event_files(path):
    acc = event_accumulator.EventAccumulator(
        file, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    try:
      acc.Reload()
    except Exception as e:  # pylint: disable=broad-except  # corrupt records raise many kinds
      _fail(file, f"cannot be parsed as a TensorBoard event file: {type(e).__name__}: {e}")
    tags = acc.Tags()
    for tag in tags.get("scalars", []):
      columns[tag] = None
      for event in acc.Scalars(tag):
        by_step.setdefault(int(event.step), {})[tag] = float(event.value)
    for tag in tags.get("tensors", []):
      for event in acc.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.size != 1 or not np.issubdtype(value.dtype, np.number):
          break  # not a scalar summary (text, histogram...)
        columns[tag] = None
        by_step.setdefault(int(event.step), {})[tag] = float(value.reshape(()))
  if not by_step:
    _fail(path, "holds no scalar TensorBoard events")
  rows = tuple((f"step {step}", {"step": step, **cells}) for step, cells in sorted(by_step.items()))
  return _Table(path, ("step",) + tuple(columns), rows, step_column="step")


def _is_tensorboard(path: str) -> bool:
  return os.path.isdir(path) or os.path.basename(path).startswith(_EVENTS)


def _read_table(path: str) -> _Table:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  if _is_tensorboard(path):
    return _read_tensorboard(path)
  lower = path.lower()
  if lower.endswith(_CSV_SUFFIXES):
    return _read_csv(path)
  if lower.endswith(_JSONL_SUFFIXES + (".json",)):
    return _read_json_rows(path)
  head = _read_text(path).lstrip()[:1]
  return _read_json_rows(path) if head in ("{", "[") else _read_csv(path)


def _normal(name: str) -> str:
  name = name.strip()
  if " - " in name:  # W&B chart export: "<run name> - <metric>"
    name = name.rsplit(" - ", 1)[1]
  return name.lower()


def _is_aggregate(name: str) -> bool:
  return name.endswith(("__MIN", "__MAX"))


def _find(table: _Table, role: str, given: Optional[str], argument: str,
          required: bool) -> Optional[str]:
  """The column of ``role``: the one given, or the first common name the table has."""
  columns = [c for c in table.columns if c]
  if given is not None:
    if given in columns:
      return given
    matches = [c for c in columns if _normal(c) == _normal(given) and not _is_aggregate(c)]
    if len(matches) == 1:
      return matches[0]
    _fail(table.source, f"has no column {given!r} ({argument}); its columns are {columns}")
  candidates = [c for c in columns if not _is_aggregate(c)]
  for name in LOG_COLUMNS[role]:
    matches = [c for c in candidates if _normal(c) == name]
    if role == "learning_rate" and not matches:
      matches = [c for c in candidates if _normal(c).startswith(("lr-", "lr/"))]
    if len(matches) > 1:
      _fail(table.source, f"has several {role.replace('_', ' ')} columns {matches}: one file "
                          f"must hold one run; name the column with {argument}")
    if matches:
      return matches[0]
  if required:
    _fail(table.source, f"has no {role.replace('_', ' ')} column: none of its columns {columns} "
                        f"is one of {list(LOG_COLUMNS[role])}; name it with {argument}")
  return None


def _number(table: _Table, where: str, column: str, raw: Any) -> Optional[float]:
  """The value of a cell (NaN for nan/inf text), ``None`` if it is empty (``''`` or null)."""
  if raw is None:
    return None
  if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
    _fail(table.source, f"{where}, column {column!r}: {raw!r} is not a number")
  if isinstance(raw, str):
    text = raw.strip()
    if not text:
      return None
    try:
      return float(text)
    except ValueError:
      _fail(table.source, f"{where}, column {column!r}: {raw!r} is not a number")
  return float(raw)


def _step_of(table: _Table, where: str, column: str, raw: Any) -> int:
  value = _number(table, where, column, raw)
  if value is None or not math.isfinite(value) or value != round(value):
    _fail(table.source, f"{where}, column {column!r}: the step must be an integer; got {raw!r}")
  return int(value)


def _describe_steps(steps: np.ndarray) -> str:
  if steps.size == 1:
    return f"1 point, step {steps[0]}"
  gaps = np.unique(np.diff(steps))
  every = ("every step" if gaps.tolist() == [1] else
           f"every {gaps[0]} steps" if gaps.size == 1 else
           f"{gaps.min()} to {gaps.max()} steps apart")
  return f"{steps.size} points, steps {steps[0]} to {steps[-1]}, {every}"


@dataclasses.dataclass(frozen=True)
class RunLog:
  """One run read from its log.

  Attributes:
    path: the file (or TensorBoard run folder) it was read from.
    learning_rate: the run's (peak) learning rate.
    learning_rate_source: where the rate came from: ``"given"``, ``"column
      'lr' (its largest value)"`` or ``"file name"``.
    columns: role -> the column used (``None`` if absent): ``"step"``,
      ``"loss"``, ``"grad_norm"``, and ``"eval/<metric>"`` per evaluation
      metric.
    steps: shape ``[num_points]``, the logged step of each training-loss point.
    result: the run as a ``TrialResult`` over its logged points
      (``config.num_steps`` = number of points; evaluations at the point of
      their step; gradient norms NaN when not used).
    notes: what the reader did that the result does not show (gradient norms
      not used, evaluations dropped), as sentences.
  """

  path: str
  learning_rate: float
  learning_rate_source: str
  columns: Mapping[str, Optional[str]]
  steps: np.ndarray
  result: TrialResult
  notes: tuple[str, ...] = ()

  @property
  def has_grad_norms(self) -> bool:
    """Gradient norms were read (a column without gaps)."""
    return bool(np.isfinite(self.result.grad_norms).any())

  def describe(self) -> str:
    """One sentence: the rate and its source, the columns used, the steps logged."""
    used = ", ".join(f"{role} {'-' if col is None else repr(col)}"
                     for role, col in self.columns.items())
    text = (f"{self.path}: learning rate {self.learning_rate:.4g} ({self.learning_rate_source}); "
            f"columns: {used}; training loss at {_describe_steps(self.steps)}.")
    return " ".join((text,) + self.notes)


def _rate_from_name(path: str) -> Optional[float]:
  parts = [os.path.basename(os.path.normpath(path))]
  if _is_tensorboard(path) and not os.path.isdir(path):
    parts.append(os.path.basename(os.path.dirname(os.path.abspath(path))))
  for part in parts:
    stem = re.sub(r"\.(csv|tsv|jsonl|ndjson|json)$", "", part, flags=re.IGNORECASE)
    match = _RATE_IN_NAME.search(stem)
    if match:
      rate = float(match.group(1))
      if rate > 0:
        return rate
  return None


def read_run_log(
    path: PathLike,
    *,
    learning_rate: Optional[float] = None,
    step_column: Optional[str] = None,
    loss_column: Optional[str] = None,
    grad_norm_column: Optional[str] = None,
    eval_columns: Optional[Mapping[str, str]] = None,
    lr_column: Optional[str] = None,
) -> RunLog:
  """Reads one run's log (CSV, JSON Lines, JSON, or TensorBoard events).

  Args:
    path: the file, or a TensorBoard run folder.
    learning_rate: the run's learning rate; default: the learning-rate column's
      largest value, else a number after ``lr`` in the file's name.
    step_column, loss_column, grad_norm_column, lr_column: column names;
      default: guessed (``LOG_COLUMNS``). The gradient norm and learning rate
      are optional.
    eval_columns: evaluation metric name -> column (e.g. ``{"loss": "val/loss",
      "error_rate": "val/err"}``); default: the evaluation loss, as ``"loss"``,
      if a column of ``LOG_COLUMNS["eval_loss"]`` is there.

  Returns:
    A ``RunLog``.

  Raises:
    ValueError: naming the file, line and column: a missing column, a value
      that is not a number, steps that do not increase, no training-loss value,
      no learning rate, a file that cannot be parsed.
    ImportError: a TensorBoard file without the ``tensorboard`` extra.
    FileNotFoundError: no such file.

  Example:
    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "lr=0.1.csv"
    >>> _ = f.write_text("step,train/loss\\n1,2.3\\n2,1.9\\n3,1.7\\n")
    >>> run = read_run_log(f)
    >>> run.learning_rate, run.columns["loss"], run.result.train_loss.tolist()
    (0.1, 'train/loss', [2.3, 1.9, 1.7])
  """
  path = os.fspath(path)
  if learning_rate is not None:
    _validation.check_positive("learning_rate", learning_rate)
  _check_column_names(step_column=step_column, loss_column=loss_column,
                      grad_norm_column=grad_norm_column, lr_column=lr_column)
  if eval_columns is not None:
    if not isinstance(eval_columns, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in eval_columns.items()):
      raise ValueError("eval_columns must map metric names to column names, e.g. "
                       f"{{'loss': 'val/loss'}}; got {eval_columns!r}.")
  table = _read_table(path)
  roles = _roles(table, step_column, loss_column, grad_norm_column, eval_columns,
                 None if learning_rate is not None else lr_column, learning_rate is None)
  train, grads, eval_points, rates = _scan(table, roles)
  steps, loss = _training_points(table, roles, train)
  notes: list[str] = []
  grad_norms = _grad_norms(roles["grad_norm"], steps, loss, grads, notes)
  eval_steps, metrics = _evaluations(table, roles, steps, eval_points, notes)
  rate, source = _learning_rate(path, learning_rate, roles["learning_rate"], rates)
  gaps = np.diff(eval_steps)
  eval_every = int(np.median(gaps)) if gaps.size else int(steps.size)
  config = TrialConfig(learning_rate=rate, num_steps=int(steps.size), eval_every=eval_every,
                       extra={"log_file": path})
  result = TrialResult(config=config, train_loss=loss, eval_steps=eval_steps,
                       eval_metrics=metrics, grad_norms=grad_norms)
  columns = {r: c for r, c in roles.items() if r != "learning_rate"}
  return RunLog(path, rate, source, columns, steps, result, tuple(notes))


def _check_column_names(**names: Any) -> None:
  for name, value in names.items():
    if value is not None and (not isinstance(value, str) or not value):
      raise ValueError(f"{name} must be a column name (a non-empty str) or None; got {value!r}.")


def _check_judging(trivial_loss: Any, thresholds: Any) -> None:
  if trivial_loss is not None:
    _validation.check_in_range("trivial_loss", trivial_loss, -math.inf, math.inf)
  if thresholds is not None and not isinstance(thresholds, DetectorThresholds):
    raise ValueError(f"thresholds must be a DetectorThresholds or None; got {thresholds!r}.")


def _roles(table: _Table, step_column, loss_column, grad_norm_column, eval_columns, lr_column,
           want_rate: bool) -> dict[str, Optional[str]]:
  """Role (``step``, ``loss``, ``grad_norm``, ``learning_rate``, ``eval/<metric>``) -> column."""
  step_col = table.step_column or _find(table, "step", step_column, "step_column", True)
  if eval_columns is None:
    found = _find(table, "eval_loss", None, "eval_columns", False)
    evals = {} if found is None else {"loss": found}
  else:
    evals = {m: _find(table, "eval_loss", c, f"eval_columns[{m!r}]", True)
             for m, c in eval_columns.items()}
  roles = {
      "step": step_col,
      "loss": _find(table, "loss", loss_column, "loss_column", True),
      "grad_norm": _find(table, "grad_norm", grad_norm_column, "grad_norm_column", False),
      **{f"eval/{m}": c for m, c in evals.items()},
      "learning_rate": (_find(table, "learning_rate", lr_column, "lr_column", False)
                        if want_rate else None),
  }
  used = [c for c in roles.values() if c is not None]
  clash = next((c for c in used if used.count(c) > 1), None)
  if clash is not None:
    _fail(table.source, f"column {clash!r} cannot play two roles "
                        f"({[r for r, c in roles.items() if c == clash]}); name the columns")
  return roles


def _scan(table: _Table, roles: Mapping[str, Optional[str]]):
  """The rows' values: training points (step, loss or None if empty, where), gradient norms by
  step, evaluation points per metric, learning rates."""
  step_col, loss_col = roles["step"], roles["loss"]
  metrics = [r[len("eval/"):] for r in roles if r.startswith("eval/")]
  train: list[tuple[int, Optional[float], str]] = []
  grads: dict[int, float] = {}
  eval_points: dict[str, list[tuple[int, float, str]]] = {m: [] for m in metrics}
  rates: list[float] = []
  for where, cells in table.rows:
    values = {role: _number(table, where, column, cells[column])
              for role, column in roles.items()
              if role != "step" and column is not None and column in cells}
    if all(v is None for v in values.values()) and loss_col not in cells:
      continue  # a row logging nothing this run reads (e.g. a config line)
    if step_col not in cells or _number(table, where, step_col, cells[step_col]) is None:
      _fail(table.source, f"{where} logs values but no step (column {step_col!r})")
    step = _step_of(table, where, step_col, cells[step_col])
    evaluated = {m: values[f"eval/{m}"] for m in metrics if values.get(f"eval/{m}") is not None}
    for metric, value in evaluated.items():
      eval_points[metric].append((step, value, where))
    if values.get("grad_norm") is not None:
      grads[step] = values["grad_norm"]
    if values.get("learning_rate") is not None and math.isfinite(values["learning_rate"]):
      rates.append(values["learning_rate"])
    if loss_col not in cells:
      continue
    if values["loss"] is None and any(math.isfinite(v) for v in evaluated.values()):
      continue  # an evaluation row of an export that writes every column on every row
    train.append((step, values["loss"], where))
  return train, grads, eval_points, rates


def _increasing(table: _Table, points, what: str, column: str) -> None:
  for (s0, _, _), (s1, _, where) in zip(points, points[1:]):
    if s1 <= s0:
      _fail(table.source, f"{where}: {what} step {s1} comes after step {s0}: the steps must "
                          f"increase, one value per step (column {column!r})")


def _training_points(table: _Table, roles, train) -> tuple[np.ndarray, np.ndarray]:
  """(steps, loss) of the training points; empty cells read as NaN or as not logged."""
  # An empty training loss before a later logged one means "not logged in this row" (a
  # metric logged at its own steps); only empty cells after the last logged loss are a
  # divergence (a NaN that the exporter wrote as an empty cell).
  logged = [i for i, (_, v, _) in enumerate(train) if v is not None]
  empty = [i for i, (_, v, _) in enumerate(train) if v is None]
  if empty and logged and empty[0] < logged[-1]:
    train = [train[i] for i in logged]
  else:
    train = [(s, math.nan if v is None else v, w) for s, v, w in train]
  if not train:
    _fail(table.source, f"holds no training-loss value (column {roles['loss']!r})")
  _increasing(table, train, "training-loss", roles["step"])
  return (np.array([s for s, _, _ in train], dtype=np.int64),
          np.array([v for _, v, _ in train], dtype=np.float64))


def _grad_norms(column: Optional[str], steps: np.ndarray, loss: np.ndarray,
                grads: Mapping[int, float], notes: list[str]) -> np.ndarray:
  """The gradient norm of every point, or all NaN (with a note) when it has gaps."""
  if column is None:
    return np.full(steps.size, np.nan)
  gaps = np.array([s not in grads for s in steps.tolist()]) & np.isfinite(loss)
  if gaps.any():
    notes.append(f"Its gradient norm ({column!r}) is missing at {int(gaps.sum())} of "
                 f"{steps.size} points where the loss is finite (first at step "
                 f"{int(steps[np.argmax(gaps)])}), so its gradient norms were not used: a gap "
                 "cannot be told from an outlier.")
    return np.full(steps.size, np.nan)
  return np.array([grads.get(s, math.nan) for s in steps.tolist()])


def _evaluations(table: _Table, roles, steps: np.ndarray, eval_points,
                 notes: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(eval_steps, metrics): each evaluation at the last training point at or before its step."""
  point_steps = np.zeros(0, np.int64)
  metrics: dict[str, np.ndarray] = {}
  dropped = merged = 0
  for i, (metric, points) in enumerate(eval_points.items()):
    _increasing(table, points, "evaluation", roles[f"eval/{metric}"])
    at: dict[int, float] = {}
    for step, value, _ in points:
      point = int(np.searchsorted(steps, step, side="right"))  # 1-based: last point <= step
      if point == 0:
        dropped += 1
        continue
      merged += point in at
      at[point] = value
    here = np.array(sorted(at), dtype=np.int64)
    if i and not np.array_equal(here, point_steps):
      _fail(table.source, f"the evaluation columns {[roles['eval/' + m] for m in eval_points]} "
                          "are logged at different steps; give the ones logged together "
                          "(eval_columns=)")
    point_steps = here
    metrics[metric] = np.array([at[p] for p in here.tolist()])
  if dropped:
    notes.append(f"{dropped} evaluation value(s) logged before its first training loss (step "
                 f"{steps[0]}) were dropped.")
  if merged:
    notes.append(f"{merged} evaluation value(s) fell on the same training-loss point as a later "
                 "one and were replaced by it.")
  return point_steps, metrics


def _learning_rate(path: str, given: Optional[float], column: Optional[str],
                   rates: Sequence[float]) -> tuple[float, str]:
  """(rate, where it came from): given, the column's peak, or the file's name."""
  if given is not None:
    return float(given), "given"
  if rates:
    rate, source = max(rates), f"column {column!r} (its largest value)"
  else:
    rate, source = _rate_from_name(path), "file name"
    if rate is None:
      _fail(path, "has no learning rate: give it (learning_rate=, or --learning-rates), log "
                  f"it in a column ({', '.join(LOG_COLUMNS['learning_rate'])}) or name the "
                  "file after it (e.g. lr=0.1.csv)")
    if column is not None:
      source += f" (column {column!r} holds no finite value)"
  if not (rate > 0 and math.isfinite(rate)):
    _fail(path, f"the learning rate must be > 0; got {rate!r} from the {source}")
  return float(rate), source


def _padded(run: RunLog, steps: np.ndarray) -> TrialResult:
  """``run``'s result over the sweep's ``steps``: NaN after its own last point."""
  r = run.result
  extra = steps.size - run.steps.size
  config = r.config.replace(num_steps=int(steps.size))
  return TrialResult(config=config, train_loss=np.r_[r.train_loss, np.full(extra, np.nan)],
                     eval_steps=r.eval_steps, eval_metrics=r.eval_metrics,
                     grad_norms=np.r_[r.grad_norms, np.full(extra, np.nan)])


def _same_steps(runs: Sequence[RunLog]) -> tuple[np.ndarray, list[TrialResult]]:
  longest = max(runs, key=lambda r: r.steps.size)
  steps = longest.steps
  results = []
  for run in runs:
    n = run.steps.size
    if not np.array_equal(run.steps, steps[:n]):
      raise ValueError(
          f"mixed step counts: {run.path} logs the training loss at {_describe_steps(run.steps)}, "
          f"but {longest.path} at {_describe_steps(steps)}; every run of a sweep must log the "
          "same steps")
    if n < steps.size and math.isfinite(run.result.train_loss[-1]):
      raise ValueError(
          f"mixed step counts: {run.path} ends at step {run.steps[-1]} with a finite loss "
          f"({run.result.train_loss[-1]:.4g}), but {longest.path} goes on to step {steps[-1]}; "
          "only a run that stopped at a NaN/Inf is read as diverged from there: give runs "
          "of one length")
    results.append(run.result if n == steps.size else _padded(run, steps))
  return steps, results


def sweep_from_logs(
    runs: Sequence[RunLog],
    *,
    metric: Optional[str] = None,
    mode: str = "min",
    reduce: str = "final",
    rule: Optional[FeasibilityRule] = None,
    trivial_loss: Optional[float] = None,
    thresholds: Optional[DetectorThresholds] = None,
) -> SweepResult:
  """The learning-rate sweep of runs read from logs, judged like ``learning_rate_sweep``'s.

  Args:
    runs: ``read_run_log``'s runs, one per learning rate, all logging the same
      steps (a run that stopped at a NaN/Inf may end early: it is padded with
      NaN).
    metric: what lr* minimizes; default ``"loss"`` (the evaluation loss) if
      every run logs it, else ``"train_loss"``.
    mode, reduce, rule, trivial_loss, thresholds: as in ``learning_rate_sweep``.

  Returns:
    A ``SweepResult`` over the runs' logged points, sorted by learning rate.

  Raises:
    ValueError: no run, two runs at one rate, runs logging different steps, a
      metric some run does not log.
  """
  runs = list(_validation.check_sequence("runs", runs, allow_empty=False))
  for i, run in enumerate(runs):
    if not isinstance(run, RunLog):
      raise ValueError(f"runs[{i}] must be a RunLog (read_run_log); got {type(run).__name__}.")
  by_rate: dict[float, RunLog] = {}
  for run in runs:
    if run.learning_rate in by_rate:
      raise ValueError(f"two runs at learning rate {run.learning_rate:.6g}: "
                       f"{by_rate[run.learning_rate].path} and {run.path}; give one run per rate")
    by_rate[run.learning_rate] = run
  runs = sorted(runs, key=lambda r: r.learning_rate)
  if metric is None:
    metric = "loss" if all("loss" in r.result.eval_metrics for r in runs) else TRAIN_LOSS
  check_ranking(metric, mode, reduce, rule)
  _check_judging(trivial_loss, thresholds)
  rule = FeasibilityRule() if rule is None else rule
  _, results = _same_steps(runs)
  for run, result in zip(runs, results):
    try:
      check_metric_names(result, metric, rule)
    except ValueError as e:
      raise ValueError(f"{run.path}: {e}") from None
  records = [TrialRecord(r.config, r) for r in results]
  thresholds = DetectorThresholds() if thresholds is None else thresholds
  trials, reference = judge_sweep(records, rule, metric, mode, reduce, thresholds=thresholds,
                                  trivial_loss=trivial_loss)
  return SweepResult(trials, records[0].config, metric, mode, reduce, rule, thresholds,
                     trivial_loss, reference)


def _notes(runs: Sequence[RunLog], sweep: SweepResult) -> list[str]:
  """What the report must say about reading logs: the sources, the steps, the gaps."""
  runs = sorted(runs, key=lambda r: r.learning_rate)
  notes = [f"Read from logs, nothing trained: {run.describe()}" for run in runs]
  steps = max((r.steps for r in runs), key=len)
  if not np.array_equal(steps, np.arange(1, steps.size + 1)):
    notes.append(
        f"The logs hold the training loss at {_describe_steps(steps)}: every run was judged on "
        "these logged points, and every step number in this report counts them (point k is the "
        f"k-th logged step, so point 1 is step {steps[0]} and point {steps.size} step "
        f"{steps[-1]})" + ("." if np.all(np.diff(steps) == 1) else
                          "; a spike between two logged points cannot be seen, and the "
                          "detectors' windows span more steps than their number of points."))
  short = [r for r in runs if r.steps.size < steps.size]
  if short:
    notes.append("Ended early at a NaN/Inf and read as diverged from there: "
                 + ", ".join(f"{r.path} (last step {r.steps[-1]})" for r in short) + ".")
  without = [r for r in runs if not r.has_grad_norms]
  if len(without) == len(runs):
    notes.append("No gradient norms were used (none logged, or logged with gaps): there is no "
                 "gradient-norm evidence and no clipping threshold from the logs, and an early "
                 "loss jump is judged on the loss alone, without a gradient-norm jump to "
                 "corroborate it, so a borderline early instability can read as stable.")
  elif without:
    notes.append("No gradient norms were used for " + ", ".join(r.path for r in without)
                 + " (none logged, or logged with gaps): their early loss jumps are judged on "
                 "the loss alone.")
  if sweep.metric == TRAIN_LOSS:
    notes.append("lr* is ranked by the final training loss: not every run logs an evaluation "
                 "loss (name one with eval_columns= or --eval-column).")
  notes.append("The short and long checks and the warmup search need new training runs, "
               "which logs cannot give: run optstab.diagnose with a training function for them.")
  return notes


def diagnose_logs(
    paths: Sequence[PathLike],
    out_dir: Optional[PathLike] = None,
    *,
    learning_rates: Optional[Sequence[float]] = None,
    step_column: Optional[str] = None,
    loss_column: Optional[str] = None,
    grad_norm_column: Optional[str] = None,
    eval_columns: Optional[Mapping[str, str]] = None,
    lr_column: Optional[str] = None,
    metric: Optional[str] = None,
    mode: str = "min",
    reduce: str = "final",
    rule: Optional[FeasibilityRule] = None,
    trivial_loss: Optional[float] = None,
    thresholds: Optional[DetectorThresholds] = None,
    above_count: int = 2,
) -> Diagnosis:
  """Diagnoses a learning-rate sweep from its logs: one file per run, nothing trained.

  Args:
    paths: one log per run (CSV, JSON Lines, JSON, or a TensorBoard run folder
      or event file), one run per learning rate.
    out_dir: where to write ``diagnosis.md``, ``diagnosis.json`` and the
      figures; ``None``: write nothing.
    learning_rates: the runs' rates, in the order of ``paths``; default: each
      run's learning-rate column or file name (``read_run_log``).
    step_column, loss_column, grad_norm_column, eval_columns, lr_column: the
      column names, the same in every file; default: guessed.
    metric, mode, reduce, rule, trivial_loss, thresholds: as in
      ``learning_rate_sweep`` (``metric`` default: see ``sweep_from_logs``).
    above_count: how many rates above lr* to look at (``rates_above_best``).

  Returns:
    A ``Diagnosis`` (``files`` filled in when ``out_dir`` is given), whose
    notes name each run's source columns and how its steps were read.

  Raises:
    ValueError: bad arguments, or a log that cannot be read (see
      ``read_run_log`` and ``sweep_from_logs``), before anything is written.
  """
  paths = [os.fspath(p) for p in _validation.check_sequence("paths", paths, allow_empty=False)]
  if learning_rates is not None:
    learning_rates = _validation.check_sequence("learning_rates", learning_rates)
    if len(learning_rates) != len(paths):
      raise ValueError(f"learning_rates must give one rate per file ({len(paths)}); got "
                       f"{len(learning_rates)}.")
    for i, rate in enumerate(learning_rates):
      _validation.check_positive(f"learning_rates[{i}]", rate)
  _validation.check_positive_int("above_count", above_count)
  check_ranking(TRAIN_LOSS if metric is None else metric, mode, reduce, rule)
  _check_judging(trivial_loss, thresholds)
  _check_column_names(step_column=step_column, loss_column=loss_column,
                      grad_norm_column=grad_norm_column, lr_column=lr_column)
  runs = [read_run_log(p, learning_rate=None if learning_rates is None else learning_rates[i],
                       step_column=step_column, loss_column=loss_column,
                       grad_norm_column=grad_norm_column, eval_columns=eval_columns,
                       lr_column=lr_column)
          for i, p in enumerate(paths)]
  sweep = sweep_from_logs(runs, metric=metric, mode=mode, reduce=reduce, rule=rule,
                          trivial_loss=trivial_loss, thresholds=thresholds)
  above = () if sweep.best is None else rates_above_best(sweep, count=above_count)
  steps = max((r.steps for r in runs), key=len)
  diagnosis = make_diagnosis(sweep, above_best=above, notes=_notes(runs, sweep),
                             logged_steps=_describe_steps(steps))
  return diagnosis if out_dir is None else write_report(diagnosis, out_dir)
