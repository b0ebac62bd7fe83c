"""optstab.transformer.data: the standard-library corpus, user text, batches. No network."""

import math
import sys

import numpy as np
import pytest

from optstab import runner
from optstab.transformer import data as D


def _fake_stdlib(root):
  """A small library tree with every kind of folder the corpus must skip."""
  for rel in ["a.py", "b.py", "pkg/__init__.py", "pkg/c.py", "pkg/test/test_c.py",
              "tests/t.py", "idlelib/x.py", "tkinter/y.py", "turtledemo/z.py",
              "site-packages/lib.py", "pkg/__pycache__/c.py", "notes.txt"]:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {rel}\nprint('{rel}')\n" * 3)
  for i in range(8):  # enough files for a held-out one
    (root / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
  return root


def test_stdlib_split_is_deterministic_and_skips_the_right_folders(tmp_path):
  root = _fake_stdlib(tmp_path / "lib")
  names = [p.relative_to(root).as_posix() for p in D.stdlib_files(str(root))]
  assert names == sorted(names)
  assert names == ["a.py", "b.py", "m0.py", "m1.py", "m2.py", "m3.py", "m4.py", "m5.py",
                   "m6.py", "m7.py", "pkg/__init__.py", "pkg/c.py"]
  corpus = D.load_stdlib(root=str(root), min_char_count=1)
  again = D.load_stdlib(root=str(root), min_char_count=1)
  np.testing.assert_array_equal(corpus.train, again.train)
  np.testing.assert_array_equal(corpus.valid, again.valid)
  # Every 10th file from the first (indices 0 and 10) is validation data.
  texts = [(root / n).read_text() for n in names]
  assert corpus.decode(corpus.train) == "".join(t for i, t in enumerate(texts) if i % 10)
  other = corpus.symbols[-1]  # validation characters never seen in training become it
  assert corpus.decode(corpus.valid) == "".join(
      ch if ch in corpus.symbols[:-1] else other for ch in texts[0] + texts[10])
  f = corpus.facts
  assert (f["num_files"], f["train_files"], f["valid_files"]) == (12, 10, 2)
  assert f["train_chars"] == corpus.train.size and f["valid_chars"] == corpus.valid.size
  assert f["python_version"] == sys.version.split()[0]
  assert corpus.symbols[-1] == "\N{REPLACEMENT CHARACTER}"  # the "other" symbol comes last


def test_the_real_stdlib_corpus_records_its_facts():
  corpus = D.load_stdlib()
  f = corpus.facts
  assert f["num_files"] > 100 and f["valid_files"] == math.ceil(f["num_files"] / 10)
  assert f["train_chars"] > 1_000_000 and f["valid_chars"] > 100_000
  # Source code: the unigram entropy of characters is ~3.2-3.3 nats (3.27 on CPython 3.11).
  assert 2.5 < corpus.unigram_entropy < 4.0
  assert 50 < corpus.vocab_size < 256 and corpus.train.dtype == np.uint8


def test_rare_characters_become_the_other_symbol_and_entropy_is_exact(tmp_path):
  text = tmp_path / "t.txt"
  text.write_text("aab" * 30 + "é" + "ab")  # é once: rarer than min_char_count
  corpus = D.load_text(text, min_char_count=2)
  assert corpus.symbols == "ab\N{REPLACEMENT CHARACTER}"
  p = np.bincount(corpus.train, minlength=3) / corpus.train.size
  p = p[p > 0]
  assert corpus.unigram_entropy == pytest.approx(float(-(p * np.log(p)).sum()))
  # A single file: the last 10% of the characters are held out.
  assert corpus.train.size + corpus.valid.size == 93 and corpus.valid.size == 93 // 10
  # The unigram level of a text under its own frequencies is (smoothed) its entropy.
  assert corpus.unigram_loss(corpus.train) == pytest.approx(corpus.unigram_entropy, rel=0.05)


def test_missing_or_too_small_corpus_says_what_to_do(tmp_path):
  with pytest.raises(D.CorpusNotFoundError, match="does not exist"):
    D.load_text(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(D.CorpusNotFoundError, match="no file matching"):
    D.load_text(tmp_path / "empty")
  with pytest.raises(D.CorpusNotFoundError, match="no .py files"):
    D.load_stdlib(root=str(tmp_path / "empty"))
  small = tmp_path / "small.txt"
  small.write_text("hello world\n" * 20)
  corpus = D.load_text(small)
  with pytest.raises(D.CorpusTooSmallError, match="training characters"):
    D.check_size(corpus, seq_len=32, batch_size=16, eval_sequences=4)
  with pytest.raises(D.CorpusTooSmallError, match="validation characters"):
    D.check_size(corpus, seq_len=4, batch_size=2, eval_sequences=100)


def test_batches_are_deterministic_windows_of_the_corpus(tmp_path):
  folder = tmp_path / "texts"
  folder.mkdir()
  for i in range(3):  # under 10 files: split by characters
    (folder / f"{i}.txt").write_text("".join(chr(97 + (i + j) % 26) for j in range(500)))
  corpus = D.CorpusSource(str(folder)).load()
  assert corpus.facts["num_files"] == 3
  a = [b[0] for _, b in zip(range(3), D.train_batches(corpus, 8, 4, seed=5))]
  b = [b[0] for _, b in zip(range(3), D.train_batches(corpus, 8, 4, seed=5))]
  c = next(D.train_batches(corpus, 8, 4, seed=6))[0]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c)
  assert a[0].shape == (4, 9) and a[0].dtype == np.int32
  # Every row is a contiguous window of the training text.
  train = corpus.train.astype(np.int32)
  for row in a[0]:
    starts = [s for s in range(train.size - 8) if np.array_equal(train[s:s + 9], row)]
    assert starts
  windows = D.eval_windows(corpus, 8, 5)
  np.testing.assert_array_equal(windows, D.eval_windows(corpus, 8, 5))
  batches = list(D.eval_batches(windows, 4))
  assert [b[0].shape for b in batches] == [(4, 9), (4, 9)]
  assert batches[1][1].tolist() == [1.0, 0.0, 0.0, 0.0]  # padding rows are masked
  # A CorpusSource is a runner DataSource: loaded once per process.
  assert runner.load_data(D.CorpusSource(str(folder))) is runner.load_data(
      D.CorpusSource(str(folder)))
