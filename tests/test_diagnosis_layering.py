"""The diagnosis path is one way: trial -> sweep -> confirm / warmup -> report.

``detectors`` works on plain arrays and imports nothing, so every stage from
the sweep on (which labels its trials) may use it.

No module imports one downstream of it (style.md: "No module reaches back up
that path"), and plots imports nothing from optstab.
"""

from __future__ import annotations

import ast
import os

import optstab

# module -> the optstab.diagnosis modules it may import (its upstream).
ALLOWED = {
    "trial": set(),
    "store": {"trial"},
    "feasibility": {"trial"},
    "detectors": set(),
    "plan": set(),
    "executors": {"trial", "store"},
    "sweep": {"trial", "store", "feasibility", "detectors", "executors"},
    "confirm": {"trial", "store", "feasibility", "sweep", "detectors", "executors"},
    "warmup_tuner": {"trial", "store", "feasibility", "sweep", "detectors", "executors"},
    "verdict": {"sweep", "confirm", "detectors"},
    "fixes": {"trial", "store", "sweep", "detectors"},
    "report": {"trial", "store", "feasibility", "sweep", "detectors", "confirm", "fixes", "plan",
               "verdict", "executors"},
    "procedure": {"trial", "store", "feasibility", "sweep", "detectors", "confirm", "fixes",
                  "plan", "verdict", "report", "executors"},
    # Logs replace the training function: judged like a sweep, reported like diagnose.
    "logs": {"trial", "store", "feasibility", "sweep", "detectors", "confirm", "report"},
    "logs_cli": {"logs"},
}


def _imports(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return names


def test_diagnosis_modules_never_import_downstream():
  folder = os.path.dirname(optstab.diagnosis.__file__)
  for module, allowed in ALLOWED.items():
    used = {n.split(".")[2] for n in _imports(os.path.join(folder, f"{module}.py"))
            if n.startswith("optstab.diagnosis.")}
    assert used <= allowed, (module, used - allowed)
    assert "optstab.wrn" not in " ".join(_imports(os.path.join(folder, f"{module}.py")))


def test_plots_imports_nothing_from_optstab():
  assert not [n for n in _imports(optstab.plots.__file__) if n.startswith("optstab")]
