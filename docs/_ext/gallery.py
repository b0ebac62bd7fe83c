"""The figure gallery: every demo's figures, drawn by its ``tiny`` preset at build time.

A demo is any public subpackage ``optstab.<demo>`` with an ``experiment``
module defining ``run_experiment(preset, out_dir, ...)`` (returning an object
whose ``files`` maps a name such as ``"fig4"`` to a written file) and a
``presets`` module defining ``get_preset(name)`` with a ``"tiny"`` preset: the
WideResNet demo, ``optstab.wrn``, and any later demo (the Transformer demo)
that keeps the same two modules joins the gallery without a change here. When the build
starts, each demo's ``tiny`` preset runs into a fresh temporary folder; its
PNG figures and its ``report.md`` are copied into ``_gallery/<demo>/`` in the
source tree (ignored by git) and ``_gallery/figures.md``, which
``gallery.md`` includes, shows them. No image is committed: the figures are
always the current code's.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import tempfile

import optstab_api

GALLERY_DIR = "_gallery"
PRESET = "tiny"


def demo_packages() -> list[str]:
  """The public optstab subpackages that follow the demo layout above."""
  demos = []
  for module in optstab_api.public_modules():
    name = module.__name__
    if not hasattr(module, "__path__") or name == optstab_api.ROOT_PACKAGE:
      continue
    try:
      experiment = importlib.import_module(name + ".experiment")
      presets = importlib.import_module(name + ".presets")
    except ImportError:
      continue
    if callable(getattr(experiment, "run_experiment", None)) and callable(getattr(presets, "get_preset", None)):
      demos.append(name)
  return demos


def _caption(key: str, filename: str, demo: str) -> str:
  label = f"Figure {key[3:]}" if key.startswith("fig") and key[3:] else key
  return f"{label} (`{filename}`), drawn by `{demo}`'s `{PRESET}` preset."


def run_demo(demo: str, out_dir: str) -> dict[str, str]:
  """Runs ``demo``'s tiny preset into a temporary folder; copies its figures and report."""
  experiment = importlib.import_module(demo + ".experiment")
  presets = importlib.import_module(demo + ".presets")
  kwargs = {"progress": False} if "progress" in inspect.signature(experiment.run_experiment).parameters else {}
  os.makedirs(out_dir, exist_ok=True)
  copied = {}
  with tempfile.TemporaryDirectory() as run_dir:
    result = experiment.run_experiment(presets.get_preset(PRESET), run_dir, **kwargs)
    for key, path in sorted(result.files.items()):
      if path.endswith((".png", ".md")):
        shutil.copyfile(path, os.path.join(out_dir, os.path.basename(path)))
        copied[key] = os.path.basename(path)
  return copied


def write_gallery(srcdir: str) -> str:
  """Renders every demo's figures into ``srcdir/_gallery``; returns the page fragment."""
  root = os.path.join(srcdir, GALLERY_DIR)
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  parts = []
  for demo in demo_packages():
    files = run_demo(demo, os.path.join(root, demo))
    title = (inspect.getdoc(importlib.import_module(demo)) or demo).splitlines()[0].rstrip(".")
    parts.append(f"## `{demo}`: {title}\n")
    for key, filename in files.items():
      if filename.endswith(".png"):
        parts.append(f"```{{figure}} /{GALLERY_DIR}/{demo}/{filename}\n:width: 90%\n\n"
                     f"{_caption(key, filename, demo)}\n```\n")
    reports = [f for f in files.values() if f.endswith(".md")]
    for report in reports:
      parts.append(f"The `{report}` this run wrote (a `{PRESET}` run: it tests the plumbing, "
                   "its numbers mean nothing):\n\n"
                   f"```{{literalinclude}} /{GALLERY_DIR}/{demo}/{report}\n:language: markdown\n```\n")
  fragment = "\n".join(parts) if parts else "No demo was found.\n"
  with open(os.path.join(root, "figures.md"), "w", encoding="utf-8") as f:
    f.write(fragment)
  return fragment


def _on_builder_inited(app) -> None:
  write_gallery(app.srcdir)


def setup(app):
  app.connect("builder-inited", _on_builder_inited)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
