"""Character-level text for the Transformer demo: the running Python's standard library, or yours.

The default corpus exists offline on every machine: the ``.py`` sources of the
running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``),
skipping ``site-packages``/``dist-packages``, test folders (``test``,
``tests``, ``idle_test``), ``idlelib``, ``tkinter`` and ``turtledemo``. Files
are taken in sorted order of their relative paths and every 10th one, from
the first (indices 0, 10, 20, ...), is held out for validation, so the split is deterministic for
a given Python version (recorded, with the file and character counts, in
``CharCorpus.facts``). :func:`load_text` reads any text file or folder
instead.

Symbols: the characters occurring at least ``min_char_count`` times in the
training text, sorted, plus one "other" symbol for every rarer or unseen
character. The loss of a model that learned nothing beyond symbol frequencies
is the training text's unigram entropy (:attr:`CharCorpus.unigram_entropy`,
in nats), the level a stalled Post-LN Transformer sits at.

Batches: :func:`train_batches` draws ``batch_size`` random windows of
``seq_len + 1`` tokens per step from ``np.random.default_rng(seed)``
(deterministic); :func:`eval_batches` covers a fixed set of evenly spaced
validation windows, padded to whole batches with a mask.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import sysconfig
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from optstab import _validation

__all__ = [
    "CorpusNotFoundError",
    "CorpusTooSmallError",
    "CharCorpus",
    "CorpusSource",
    "STDLIB_SKIPPED_DIRS",
    "stdlib_files",
    "load_stdlib",
    "load_text",
    "train_batches",
    "eval_windows",
    "eval_batches",
]

#: Folder names never read from the standard library.
STDLIB_SKIPPED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib",
                       "tkinter", "turtledemo", "__pycache__")

#: Every ``HOLDOUT_EVERY``-th file (sorted) is validation data.
HOLDOUT_EVERY = 10

_OTHER = "\N{REPLACEMENT CHARACTER}"


class CorpusNotFoundError(FileNotFoundError):
  """The named text file or folder does not exist, or holds no matching file."""


class CorpusTooSmallError(ValueError):
  """The corpus has too few characters for the requested windows."""


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
  """A character corpus held in memory as token ids.

  Attributes:
    name: ``"stdlib"`` or the path read.
    train, valid: uint8/uint16 token ids of the two splits, concatenated.
    symbols: the symbol of each token id; the last is the "other" symbol.
    facts: JSON-ready provenance (Python version, file and character counts).
  """

  name: str
  train: np.ndarray
  valid: np.ndarray
  symbols: str
  facts: dict

  @property
  def vocab_size(self) -> int:
    return len(self.symbols)

  @property
  def unigram_entropy(self) -> float:
    """Entropy (nats) of the training text's symbol frequencies: the trivial loss level."""
    counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

  def unigram_loss(self, tokens: Any) -> float:
    """Cross-entropy (nats) of ``tokens`` under the training text's symbol frequencies.

    The loss of a model that learned only symbol frequencies: the trivial level
    of a loss measured on ``tokens`` (add-1/2 smoothing keeps unseen symbols finite).
    """
    train = np.bincount(self.train, minlength=self.vocab_size) + 0.5
    seen = np.bincount(np.ravel(tokens), minlength=self.vocab_size).astype(np.float64)
    return float(-(seen * np.log(train / train.sum())).sum() / max(seen.sum(), 1.0))

  @property
  def valid_unigram_loss(self) -> float:
    """:meth:`unigram_loss` of the whole validation split."""
    return self.unigram_loss(self.valid)

  def decode(self, tokens: Sequence[int]) -> str:
    return "".join(self.symbols[int(t)] for t in tokens)


def _encode(text: str, lookup: dict[str, int], other: int, dtype) -> np.ndarray:
  codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
  table_size = max(max(map(ord, lookup)) + 1, 128) if lookup else 128
  table = np.full(table_size, other, dtype)
  for ch, i in lookup.items():
    table[ord(ch)] = i
  ids = np.full(codes.shape, other, dtype)
  inside = codes < table_size
  ids[inside] = table[codes[inside]]
  return ids


def _corpus(name: str, train_texts: list[str], valid_texts: list[str], facts: dict, *,
            min_char_count: int) -> CharCorpus:
  train_text, valid_text = "".join(train_texts), "".join(valid_texts)
  chars, counts = np.unique(np.frombuffer(train_text.encode("utf-32-le"), dtype=np.uint32),
                            return_counts=True)
  kept = "".join(chr(c) for c, n in zip(chars, counts) if n >= min_char_count)
  symbols = kept + _OTHER
  lookup = {ch: i for i, ch in enumerate(kept)}
  dtype = np.uint8 if len(symbols) <= 256 else np.uint16
  train = _encode(train_text, lookup, len(kept), dtype)
  valid = _encode(valid_text, lookup, len(kept), dtype)
  facts = dict(facts, train_chars=int(train.size), valid_chars=int(valid.size),
               vocab_size=len(symbols), min_char_count=min_char_count,
               other_fraction_train=float(np.mean(train == len(kept))) if train.size else 0.0)
  corpus = CharCorpus(name, train, valid, symbols, facts)
  facts["unigram_entropy"] = corpus.unigram_entropy
  facts["valid_unigram_loss"] = corpus.valid_unigram_loss
  return corpus


def stdlib_files(root: Optional[str] = None) -> list[pathlib.Path]:
  """The standard library's ``.py`` files the corpus reads, in sorted relative-path order."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"] if root is None else root)
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIPPED_DIRS)
    found += [pathlib.Path(dirpath) / f for f in filenames if f.endswith(".py")]
  return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read(path: pathlib.Path) -> str:
  return path.read_text(encoding="utf-8", errors="replace")


def _split_files(name: str, files: list[pathlib.Path], facts: dict,
                 min_char_count: int) -> CharCorpus:
  texts = [_read(f) for f in files]
  valid = [t for i, t in enumerate(texts) if i % HOLDOUT_EVERY == 0]
  train = [t for i, t in enumerate(texts) if i % HOLDOUT_EVERY != 0]
  facts = dict(facts, num_files=len(files), train_files=len(train), valid_files=len(valid),
               split=f"every {HOLDOUT_EVERY}th file (sorted by path, from the first) held out")
  return _corpus(name, train, valid, facts, min_char_count=min_char_count)


def load_stdlib(*, root: Optional[str] = None, min_char_count: int = 100) -> CharCorpus:
  """The standard-library corpus (see the module docstring).

  Args:
    root: the library folder (default: the running Python's).
    min_char_count: rarer characters become the "other" symbol.
  """
  _validation.check_positive_int("min_char_count", min_char_count)
  files = stdlib_files(root)
  where = sysconfig.get_paths()["stdlib"] if root is None else root
  if not files:
    raise CorpusNotFoundError(f"no .py files under the standard library folder {where}; pass "
                              "a text file or folder instead (CorpusSource(path=...)).")
  facts = {"source": "stdlib", "root": os.fspath(where),
           "python_version": sys.version.split()[0], "implementation": sys.implementation.name,
           "skipped_dirs": list(STDLIB_SKIPPED_DIRS)}
  return _split_files("stdlib", files, facts, min_char_count)


def load_text(path: str | os.PathLike, *, pattern: str = "*", min_char_count: int = 1) -> CharCorpus:
  """A corpus from a text file or a folder of text files.

  A folder's files matching ``pattern`` (recursively, sorted) are split like
  the standard library (every 10th file held out) when there are at least 10;
  otherwise, and for a single file, the last 10% of the characters are held out.

  Raises:
    CorpusNotFoundError: ``path`` does not exist or holds no matching file.
  """
  _validation.check_positive_int("min_char_count", min_char_count)
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise CorpusNotFoundError(f"text corpus {os.fspath(p)!r} does not exist; name an existing "
                              "text file or folder, or use the default standard-library corpus "
                              "(path=None).")
  facts: dict[str, Any] = {"source": "text", "path": os.fspath(p)}
  if p.is_dir():
    files = sorted((f for f in p.rglob(pattern) if f.is_file()),
                   key=lambda f: f.relative_to(p).as_posix())
    if not files:
      raise CorpusNotFoundError(f"no file matching {pattern!r} under {os.fspath(p)!r}.")
    if len(files) >= HOLDOUT_EVERY:
      return _split_files(os.fspath(p), files, facts, min_char_count)
    text = "".join(_read(f) for f in files)
    facts["num_files"] = len(files)
  else:
    text = _read(p)
    facts["num_files"] = 1
  cut = len(text) - len(text) // HOLDOUT_EVERY
  facts["split"] = f"last {100 // HOLDOUT_EVERY}% of the characters held out"
  return _corpus(os.fspath(p), [text[:cut]], [text[cut:]], facts, min_char_count=min_char_count)


@dataclasses.dataclass(frozen=True)
class CorpusSource:
  """How to load a corpus (a picklable ``optstab.runner.DataSource``).

  Attributes:
    path: a text file or folder; ``None`` for the standard-library corpus.
    pattern: file pattern inside a folder.
    min_char_count: rarer characters become the "other" symbol (default:
      100 for the standard library, 1 for a user's text).
  """

  path: Optional[str] = None
  pattern: str = "*"
  min_char_count: Optional[int] = None

  def load(self) -> CharCorpus:
    if self.path is None:
      return load_stdlib(min_char_count=self.min_char_count or 100)
    return load_text(self.path, pattern=self.pattern, min_char_count=self.min_char_count or 1)


def check_size(corpus: CharCorpus, seq_len: int, batch_size: int, eval_sequences: int) -> None:
  """Raises :class:`CorpusTooSmallError` unless both splits fit the requested windows."""
  window = seq_len + 1
  need_train = max(window * batch_size, 10 * window)
  if corpus.train.size < need_train:
    raise CorpusTooSmallError(
        f"corpus {corpus.name!r} has {corpus.train.size} training characters; seq_len {seq_len} "
        f"and batch_size {batch_size} need at least {need_train}. Name a larger text.")
  if corpus.valid.size < window + eval_sequences - 1:
    raise CorpusTooSmallError(
        f"corpus {corpus.name!r} has {corpus.valid.size} validation characters; "
        f"{eval_sequences} windows of {window} need at least {window + eval_sequences - 1}.")


def train_batches(corpus: CharCorpus, seq_len: int, batch_size: int, seed: int) -> Iterator[tuple]:
  """Endless ``(tokens [batch_size, seq_len + 1] int32,)`` batches of random training windows."""
  rng = np.random.default_rng(seed)
  offsets = np.arange(seq_len + 1)
  last = corpus.train.size - seq_len - 1
  while True:
    starts = rng.integers(0, last + 1, size=batch_size)
    yield (corpus.train[starts[:, None] + offsets].astype(np.int32),)


def eval_windows(corpus: CharCorpus, seq_len: int, num_sequences: int) -> np.ndarray:
  """``[num_sequences, seq_len + 1]`` int32 validation windows, evenly spaced (no randomness)."""
  starts = np.linspace(0, corpus.valid.size - seq_len - 1, num_sequences).astype(np.int64)
  return corpus.valid[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def eval_batches(windows: np.ndarray, batch_size: int) -> Iterator[tuple]:
  """``(tokens, mask)`` batches covering ``windows`` once; the last padded with masked rows."""
  n = windows.shape[0]
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    yield windows[rows % n], (rows < n).astype(np.float32)
