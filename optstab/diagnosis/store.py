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
JSON, JSON nested too deep to parse, JSON that is not an object such as
``123``, ``null`` or ``[1, 2]``, an object missing a field, a record with
neither a result nor an error, or one whose result belongs to another
configuration than its own, such as a 30-step curve under a 100-step
configuration) is skipped and counted in ``TrialStore.ignored_lines``, which
the sweep (``SweepResult.ignored_store_lines``) and the diagnosis report
repeat; its trial simply runs again.

One writer per folder. Opening a store takes a lock on ``<out_dir>/trials.lock``
(``fcntl.flock``; not on Windows) that holds this process's id, until the
store is closed or dropped: a second process opening the same folder fails at
once with ``StoreInUse`` naming the first one's PID, or waits for it with
``wait=True``. Stores opened in one process share the lock. ``out_dir`` and
``trials.jsonl`` must be a real folder and a regular file, not symbolic
links: the store cuts and appends to its own file only.

Record format (one line)::

  {"key": <TrialConfig.key()>, "status": "ok" | "error",
   "result": <TrialResult.to_dict()> | null, "error": <str> | null,
   "seconds": <float>}
"""

from __future__ import annotations

import errno
import json
import os
import threading
import weakref
from typing import Any, Optional, Union

try:
  import fcntl
except ImportError:  # Windows: no advisory locks
  fcntl = None

from optstab.trial import TrialConfig, TrialRecord, TrialResult

__all__ = ["TrialRecord", "TrialStore", "StoreInUse", "TRIALS_FILE", "LOCK_FILE"]

#: File name of the store inside an output folder.
TRIALS_FILE = "trials.jsonl"

#: File name of the lock (holding the writer's process id) inside an output folder.
LOCK_FILE = "trials.lock"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class StoreInUse(RuntimeError):
  """Another process holds the lock on the output folder (``TrialStore``)."""


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

  def __init__(self, out_dir: Union[str, "os.PathLike[str]"], *, wait: bool = False):
    self.out_dir = os.fspath(out_dir)
    _check_folder(self.out_dir)
    os.makedirs(self.out_dir, exist_ok=True)
    self.path = os.path.join(self.out_dir, TRIALS_FILE)
    self._records: dict[str, TrialRecord] = {}
    self.ignored_lines = 0
    _check_regular_file(self.out_dir, self.path)
    lock = _lock_folder(self.out_dir, wait)
    self._unlock = weakref.finalize(self, _unlock_folder, lock)
    try:  # fail now, not after the first trial has run
      with _open_append(self.path):
        pass
    except OSError as e:
      self.close()
      raise OSError(e.errno, f"out_dir {self.out_dir!r} is not writable ({e.strerror}); "
                    "no trial ran", self.path) from e
    self._load()

  def close(self) -> None:
    """Releases the folder's lock (also done when the store is dropped)."""
    self._unlock()

  def __enter__(self) -> "TrialStore":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

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
      with os.fdopen(os.open(self.path, os.O_RDWR | _NOFOLLOW), "r+b") as f:
        f.truncate(complete_end)
        f.flush()
        os.fsync(f.fileno())
    for line in data[:complete_end].splitlines():
      if not line.strip():
        continue
      try:
        record = TrialRecord.from_dict(json.loads(line))
      except Exception:  # pylint: disable=broad-except
        # Whatever the content (a RecursionError on deep nesting included), not a record.
        self.ignored_lines += 1
        continue
      if record.result is not None and record.result.config.key() != record.key:
        self.ignored_lines += 1  # another configuration's result: not this trial's
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
    with _open_append(self.path) as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    self._records[record.key] = record


def _open_append(path: str):
  """``open(path, "a")`` that refuses to follow a symbolic link."""
  return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644),
                   "a", encoding="utf-8")


def _link_description(path: str) -> str:
  target = os.readlink(path)
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return f"a symbolic link to {target!r} that loops back on itself"
    return f"a symbolic link to {target!r}, which does not exist"
  return f"a symbolic link to {target!r}"


def _check_folder(out_dir: str) -> None:
  if os.path.islink(out_dir):
    raise ValueError(f"out_dir {out_dir!r} is {_link_description(out_dir)}; give the folder "
                     "itself (the store locks, cuts and appends to files in it, and does not "
                     "follow links).")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"out_dir {out_dir!r} is a file, not a folder.")


def _check_regular_file(out_dir: str, path: str) -> None:
  if os.path.islink(path):
    raise ValueError(f"out_dir {out_dir!r} holds {TRIALS_FILE} as {_link_description(path)}; "
                     "the store cuts and appends to its own file only: replace the link by a "
                     "copy of the file.")
  if os.path.exists(path) and not os.path.isfile(path):
    kind = "a folder" if os.path.isdir(path) else "not a regular file"
    raise OSError(errno.EISDIR if os.path.isdir(path) else errno.EINVAL,
                  f"out_dir {out_dir!r} is not writable ({TRIALS_FILE} is {kind}); no trial ran",
                  path)


#: Folder locks this process holds: real path -> [file descriptor, open stores].
_HELD: dict[str, list] = {}
_HELD_LOCK = threading.Lock()


def _lock_folder(out_dir: str, wait: bool) -> Optional[str]:
  """Locks ``out_dir`` for this process (shared by its stores); the key to unlock it."""
  if fcntl is None:
    return None
  key = os.path.realpath(out_dir)
  path = os.path.join(out_dir, LOCK_FILE)
  with _HELD_LOCK:
    if key in _HELD:
      _HELD[key][1] += 1
      return key
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
      raise OSError(e.errno, f"out_dir {out_dir!r} is not writable ({e.strerror}); no trial ran",
                    path) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      other = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
      os.close(fd)
      raise StoreInUse(
          f"out_dir {out_dir!r} is in use by another process (PID {other}) that is writing "
          "trials there; two runs into one folder would both run every trial. Wait for it to "
          "finish or stop it, use another out_dir, or open TrialStore(out_dir, wait=True) and "
          "pass it as store= to wait for it.") from None
    except BaseException:
      os.close(fd)
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _HELD[key] = [fd, 1]
  return key


def _unlock_folder(key: Optional[str]) -> None:
  if key is None:
    return
  with _HELD_LOCK:
    held = _HELD.get(key)
    if held is None:
      return
    held[1] -= 1
    if held[1] == 0:
      del _HELD[key]
      os.close(held[0])  # releases the flock
