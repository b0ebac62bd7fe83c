"""Nothing lost: an append-only JSONL record of finished trials, for resuming.

Every trial a sweep, confirmation run or warmup search finishes is appended to
``<out_dir>/trials.jsonl`` at once, one JSON object per line, flushed and
``fsync``-ed before the next trial starts. The line is keyed by
``TrialConfig.key()``, so running the same procedure into the same folder again
skips every trial already recorded and runs only the missing ones.

A process killed in the middle of a write leaves at most one half-written last
line. Loading ignores it, and the store cuts it off before appending, so the
next record starts on a fresh line. A trial that raised is recorded too (with
its error), so a resumed sweep does not retry it.

Loading never fails on the file's content: a line that is not a record (not
JSON, JSON that is not an object such as ``123``, ``null`` or ``[1, 2]``, an
object missing a field, or a record with neither a result nor an error) is
skipped and counted in ``TrialStore.ignored_lines``, which the sweep
(``SweepResult.ignored_store_lines``) and the diagnosis report repeat; its
trial simply runs again.

Record format (one line)::

  {"key": <TrialConfig.key()>, "status": "ok" | "error",
   "result": <TrialResult.to_dict()> | null, "error": <str> | null,
   "seconds": <float>}
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

from optstab.diagnosis.trial import TrialConfig, TrialResult

__all__ = ["TrialRecord", "TrialStore", "TRIALS_FILE"]

#: File name of the store inside an output folder.
TRIALS_FILE = "trials.jsonl"


class RecordView:
  """Read-only shortcuts for a judged trial that holds its ``record``.

  Shared by the sweep's and the confirmation runs' per-trial results.
  """

  record: "TrialRecord"

  @property
  def config(self) -> TrialConfig:
    return self.record.config

  @property
  def learning_rate(self) -> float:
    return self.record.config.learning_rate

  @property
  def result(self) -> Optional[TrialResult]:
    return self.record.result


@dataclasses.dataclass(frozen=True)
class TrialRecord:
  """One finished trial: its result, or the error it raised.

  Attributes:
    config: the trial's configuration.
    result: what the training function returned (``None`` if it raised). Always
      the JSON round-tripped form, so a resumed sweep sees exactly what an
      uninterrupted one saw (Inf is stored, like NaN, as non-finite ``NaN``).
    error: ``"ExceptionType: message"`` if the training function raised.
    seconds: wall-clock seconds the trial took.
  """

  config: TrialConfig
  result: Optional[TrialResult]
  error: Optional[str] = None
  seconds: float = 0.0

  @property
  def key(self) -> str:
    return self.config.key()

  def to_dict(self) -> dict[str, Any]:
    return {
        "key": self.key,
        "status": "ok" if self.error is None else "error",
        "config": self.config.to_dict(),
        "result": None if self.result is None else self.result.to_dict(),
        "error": self.error,
        "seconds": float(self.seconds),
    }

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> "TrialRecord":
    """The record of one stored line; ``ValueError`` if ``data`` is not one."""
    if not isinstance(data, dict):
      raise ValueError(f"a trial record is a JSON object; got {type(data).__name__}")
    result = data.get("result")
    if result is None and data.get("error") is None:
      raise ValueError("a trial record holds a result or an error; this one holds neither "
                       f"(status {data.get('status')!r})")
    return cls(
        config=TrialConfig.from_dict(data["config"]),
        result=None if result is None else TrialResult.from_dict(result),
        error=data.get("error"),
        seconds=float(data.get("seconds", 0.0)),
    )

  def round_tripped(self) -> "TrialRecord":
    """The record as a reload from disk would return it."""
    return TrialRecord.from_dict(json.loads(json.dumps(self.to_dict())))


class TrialStore:
  """Finished trials of one output folder, keyed by ``TrialConfig.key()``.

  Opening a store creates ``out_dir`` and opens ``trials.jsonl`` for
  appending, so an unwritable folder fails here (``OSError``), before any
  trial runs.

  Example:
    >>> import tempfile
    >>> store = TrialStore(tempfile.mkdtemp())
    >>> len(store)
    0
  """

  def __init__(self, out_dir: Union[str, "os.PathLike[str]"]):
    self.out_dir = os.fspath(out_dir)
    os.makedirs(self.out_dir, exist_ok=True)
    self.path = os.path.join(self.out_dir, TRIALS_FILE)
    self._records: dict[str, TrialRecord] = {}
    self.ignored_lines = 0
    try:  # fail now, not after the first trial has run
      with open(self.path, "a", encoding="utf-8"):
        pass
    except OSError as e:
      raise OSError(e.errno, f"out_dir {self.out_dir!r} is not writable ({e.strerror}); "
                    "no trial ran", self.path) from e
    self._load()

  def _load(self) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb") as f:
      data = f.read()
    complete_end = data.rfind(b"\n") + 1  # bytes up to the last full line
    if complete_end < len(data):
      # A half-written last line (killed mid-write): cut it off so the next
      # append starts on a clean line.
      self.ignored_lines += 1
      with open(self.path, "r+b") as f:
        f.truncate(complete_end)
        f.flush()
        os.fsync(f.fileno())
    for line in data[:complete_end].splitlines():
      if not line.strip():
        continue
      try:
        record = TrialRecord.from_dict(json.loads(line))
      except (ValueError, KeyError, TypeError):
        self.ignored_lines += 1
        continue
      self._records[record.key] = record

  def __len__(self) -> int:
    return len(self._records)

  def __contains__(self, config: TrialConfig) -> bool:
    return config.key() in self._records

  def get(self, config: TrialConfig) -> Optional[TrialRecord]:
    """The stored record of ``config``, or ``None``."""
    return self._records.get(config.key())

  def records(self) -> list[TrialRecord]:
    """All stored records, in the order they were first written."""
    return list(self._records.values())

  def append(self, record: TrialRecord) -> None:
    """Appends ``record`` durably (write, flush, fsync) before returning."""
    line = json.dumps(record.to_dict(), allow_nan=False) + "\n"
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    self._records[record.key] = record
