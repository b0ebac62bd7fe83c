"""The documentation: the site builds with warnings as errors, and no example can rot.

* The Sphinx build (``docs/``, as ``sphinx-build -W --keep-going -b html``)
  succeeds, documents every public name and renders the figure gallery.
* Every docstring example (``>>>``) of every optstab module runs (``+SKIP``
  marks the few that would train for minutes).
* Every ``python`` code block of the guide and of README.md runs, page by page,
  in order, in one namespace per page. A block inside a ``<!-- section -->``
  that another test executes with its own checks (listed in EXECUTED_ELSEWHERE)
  runs there instead of twice.

CI installs the ``docs`` extra (``.ci/run``); without Sphinx the build test is
skipped, the example tests still run.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest

import optstab

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# README.md and the site's pages (not the files a build writes under docs/_*).
PAGES = ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")
                               if not p.relative_to(DOCS).parts[0].startswith("_"))

# (page, section marker) -> the test file that executes that section's block.
EXECUTED_ELSEWHERE = {
    ("docs/guide/optimizers.md", "quickstart"): "tests/test_optimizers_docs.py",
    ("docs/guide/clipping.md", "warmup-clipping"): "tests/test_telemetry.py",
    ("docs/guide/diagnosis.md", "diagnosis"): "tests/test_diagnosis_report.py",
    ("docs/guide/diagnosis.md", "diagnosis-nnx"): "tests/test_trial_builder.py",
}

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _optstab_modules() -> list[str]:
  """Every optstab module, private ones included (``__main__`` would run a CLI)."""
  names = ["optstab"]
  for info in pkgutil.walk_packages(optstab.__path__, "optstab."):
    if not info.name.endswith("__main__"):
      names.append(info.name)
  return sorted(names)


def _sections(text: str) -> list[tuple[str, int, int]]:
  return [(m.group(1), m.start(), m.end())
          for m in re.finditer(r"<!-- ([\w-]+) -->.*?<!-- end \1 -->", text, re.S)]


def _blocks(page: str) -> list[tuple[str, str]]:
  """(code, section marker or '') of every python block of ``page``, in order."""
  text = (ROOT / page).read_text(encoding="utf-8")
  sections = _sections(text)
  blocks = []
  for match in _BLOCK.finditer(text):
    marker = next((name for name, start, end in sections if start <= match.start() < end), "")
    blocks.append((match.group(1), marker))
  return blocks


def _run_block(code: str, name: str, namespace: dict) -> None:
  if code.lstrip().startswith(">>>"):
    test = doctest.DocTestParser().get_doctest(code, namespace, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=False)
    assert runner.failures == 0, f"{name}: {runner.failures} doctest failures"
  else:
    exec(compile(code, name, "exec"), namespace)  # pylint: disable=exec-used


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_of_the_page_runs(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # examples write their output folders here
  monkeypatch.setenv("MPLBACKEND", "Agg")
  namespace = {"__name__": "docs_example"}
  for index, (code, marker) in enumerate(_blocks(page)):
    if (page, marker) in EXECUTED_ELSEWHERE:
      continue
    with contextlib.redirect_stdout(io.StringIO()):
      _run_block(code, f"{page}:block{index}", namespace)


@pytest.mark.parametrize(("page", "marker"), sorted(EXECUTED_ELSEWHERE))
def test_blocks_run_elsewhere_are_run_there(page, marker):
  blocks = [code for code, m in _blocks(page) if m == marker]
  assert blocks, f"{page} has no python block in <!-- {marker} -->"
  test_source = (ROOT / EXECUTED_ELSEWHERE[page, marker]).read_text(encoding="utf-8")
  assert pathlib.PurePosixPath(page).name in test_source and marker in test_source, (
      f"{EXECUTED_ELSEWHERE[page, marker]} no longer reads {page}'s {marker} section")


def test_the_guide_has_every_page_in_order():
  index = (DOCS / "index.md").read_text(encoding="utf-8")
  order = ["install", "optimizers", "warmup", "clipping", "diagnosis", "figures", "scaling",
           "terminology"]
  positions = [index.index(f"guide/{name}\n") for name in order]
  assert positions == sorted(positions)
  for name in order:
    assert (DOCS / "guide" / f"{name}.md").exists()


@pytest.mark.parametrize("module_name", _optstab_modules())
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                           report=True)
  assert result.failed == 0, f"{module_name}: {result.failed} of {result.attempted} examples failed"


def _documented_names(inventory_path: pathlib.Path) -> set[str]:
  """Every Python object the built site documents (its objects.inv)."""
  from sphinx.util.inventory import InventoryFile  # pylint: disable=import-outside-toplevel

  with open(inventory_path, "rb") as f:
    inventory = InventoryFile.load(f, "", lambda base, uri: uri)
  return {name for role, entries in inventory.items() if role.startswith("py:") for name in entries}


def test_site_builds_without_warnings_and_documents_every_public_name(tmp_path):
  pytest.importorskip("sphinx", reason="the docs extra: pip install -e '.[docs]'")
  pytest.importorskip("myst_parser", reason="the docs extra: pip install -e '.[docs]'")
  src = tmp_path / "src"
  shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "_generated"))
  out = tmp_path / "html"
  build = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(src), str(out)],
      capture_output=True, text=True, cwd=ROOT, check=False, env={**os.environ, "MPLBACKEND": "Agg"})
  assert build.returncode == 0, build.stderr[-5000:]

  sys.path.insert(0, str(DOCS / "_ext"))
  try:
    optstab_api = importlib.import_module("optstab_api")
  finally:
    sys.path.remove(str(DOCS / "_ext"))
  documented = _documented_names(out / "objects.inv")
  documented_objects = {id(_resolve(name)) for name in documented}
  undocumented = []
  for module in optstab_api.public_modules():
    assert module.__name__ in documented, f"module {module.__name__} has no page"
    for name in optstab_api.public_names(module):
      if id(getattr(module, name)) not in documented_objects:
        undocumented.append(f"{module.__name__}.{name}")
  assert not undocumented, f"public names missing from the API reference: {undocumented}"
  for public in ("optstab.adam", "optstab.diagnose", "optstab.plots.plot_grad_norms", "optstab.wrn.WideResNet"):
    assert public in documented, public

  # The update rules render as math; the gallery shows the demos' figures.
  api_page = (out / "api" / "_generated" / "optstab.html").read_text(encoding="utf-8")
  assert 'class="math notranslate nohighlight"' in api_page and "\\epsilon" in api_page
  # The committed gallery (tests/test_gallery.py checks its files) renders its
  # figures, and the demos' reports as pages: tables, not code blocks.
  gallery = (out / "gallery.html").read_text(encoding="utf-8")
  for figure in ("fig4_test_error_vs_lr.png", "fig5_loss_first_steps.png", "fig9_grad_norms.png",
                 "fig8_loss_vs_lr.png", "fig6_warmup_sweep.png"):
    assert figure in gallery, figure
    assert (out / "_images" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for report in ("gallery/wrn/report.html", "gallery/transformer/report.html",
                 "gallery/transformer/diagnosis/post_ln/diagnosis.html"):
    page = (out / report).read_text(encoding="utf-8")
    assert "<table" in page and "highlight-markdown" not in page, report
  figures_page = (out / "guide" / "figures.html").read_text(encoding="utf-8")
  assert figures_page.count("<table") >= 4  # the measured tables, included from gallery/


def _resolve(dotted: str):
  parts = dotted.split(".")
  for split in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for attr in parts[split:]:
      value = getattr(value, attr, None)
    return value
  return None
