"""The committed figure gallery (``docs/gallery.md``, ``docs/gallery/``).

``python docs/make_gallery.py`` copies the demos' ``quick`` runs into
``docs/gallery/`` and writes the pages; the docs build trains nothing. These
checks need no Sphinx and train nothing:

* every figure a gallery page references exists, and every committed PNG is
  shown on a page;
* every PNG the demos' figure code can write is in the gallery (a new figure
  must be regenerated into it);
* the pages and the measured tables equal what the script writes from the
  committed ``results.json`` (no hand edits, no stale numbers);
* the PNGs are optimized: palette images, the whole gallery well under 2 MB.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GALLERY = DOCS / "gallery"
# The modules that draw the quick presets' figures.
FIGURE_CODE = ["optstab/wrn/figures.py", "optstab/transformer/figures.py",
               "optstab/transformer/spikes.py", "optstab/diagnosis/report.py"]


def _make_gallery():
  spec = importlib.util.spec_from_file_location("make_gallery", DOCS / "make_gallery.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _pages() -> list[pathlib.Path]:
  return [DOCS / "gallery.md"] + sorted(p for p in GALLERY.rglob("*.md") if p.name != "measured.md")


def _referenced() -> set[pathlib.Path]:
  """Every image a gallery page shows, resolved against the page's folder."""
  found = set()
  for page in _pages():
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"```\{figure\} (\S+)", text) + re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
      found.add((page.parent / target).resolve())
  return found


def test_every_referenced_figure_exists_and_every_png_is_shown():
  referenced = _referenced()
  missing = sorted(str(p.relative_to(ROOT)) for p in referenced if not p.is_file())
  assert not missing, f"gallery pages reference missing figures: {missing}"
  pngs = {p.resolve() for p in GALLERY.rglob("*.png")}
  assert pngs, "docs/gallery/ has no figures: run python docs/make_gallery.py"
  unshown = sorted(str(p.relative_to(ROOT)) for p in pngs - referenced)
  assert not unshown, f"PNGs no gallery page shows: {unshown}"


def test_every_figure_the_demos_draw_is_in_the_gallery():
  names = set()
  for path in FIGURE_CODE:
    names |= set(re.findall(r"\"([\w-]+\.png)\"", (ROOT / path).read_text(encoding="utf-8")))
  assert {"fig4_test_error_vs_lr.png", "fig8_loss_vs_lr.png", "sweep.png"} <= names
  shown = {p.name for p in _referenced()}
  assert not names - shown, (f"figures the demos draw that the gallery lacks: {sorted(names - shown)}"
                             "; run python docs/make_gallery.py")


def test_every_png_the_runs_wrote_is_committed():
  for demo in ("wrn", "transformer"):
    results = (GALLERY / demo / "results.json").read_text(encoding="utf-8")
    for name in set(re.findall(r"\"([\w-]+\.png)\"", results)):
      assert list((GALLERY / demo).rglob(name)), f"{demo}'s results.json names {name}, not committed"


def test_pages_and_tables_are_what_the_script_writes(monkeypatch, tmp_path):
  make_gallery = _make_gallery()
  committed = {p: p.read_text(encoding="utf-8")
               for p in [DOCS / "gallery.md", *GALLERY.rglob("*.md")]}
  written = {}
  monkeypatch.setattr(pathlib.Path, "write_text",
                      lambda self, text, encoding=None: written.__setitem__(self, text))
  make_gallery.write_pages()
  assert written, "make_gallery.write_pages wrote nothing"
  for path, text in written.items():
    assert committed.get(path) == text, (
        f"{path.relative_to(ROOT)} is not what docs/make_gallery.py writes from the committed "
        "results.json: run python docs/make_gallery.py --no-run")


@pytest.mark.parametrize("demo, folder", [("wrn", ""), ("wrn", "standard/"), ("transformer", ""),
                                          ("transformer", "standard/"),
                                          ("transformer", "spikes/")])
def test_figures_md_includes_the_measured_tables(demo, folder):
  figures = (DOCS / "guide" / "figures.md").read_text(encoding="utf-8")
  assert (GALLERY / demo / folder / "results.json").is_file()
  assert f"```{{include}} ../gallery/{demo}/{folder}measured.md" in figures


def test_the_pngs_are_small():
  from PIL import Image  # pylint: disable=import-outside-toplevel

  pngs = sorted(GALLERY.rglob("*.png"))
  for png in pngs:
    with Image.open(png) as image:
      assert image.mode == "P", f"{png.name} is not palette-quantized ({image.mode})"
  total = sum(p.stat().st_size for p in GALLERY.rglob("*") if p.is_file())
  assert total < 2_000_000, f"docs/gallery/ is {total / 1e6:.2f} MB"
