"""optstab is a stack of layers; no module imports from a layer above its own.

From the bottom:

0. the library proper: ``_validation``, ``_types``, ``_arguments``, ``schedules``,
   ``telemetry``, ``clipping``, ``spike_guard``, ``optimizers``, ``plots``;
1. ``trial``: what a training function takes and returns;
2. ``executors``: running trials, in this process or in parallel;
3. ``runner`` (the training loop) and ``diagnosis`` (the FAQ's procedure),
   side by side: neither imports the other;
4. the ``optstab`` package's own re-exports (``import optstab``);
5. ``harness``: the demos' shared experiment skeleton;
6. the demos, ``wrn`` and ``transformer`` (and ``examples``), side by side:
   no demo imports another.

Inside the diagnosis the path is one way too: trial -> sweep -> confirm /
warmup -> report. ``detectors`` works on plain arrays and imports nothing, so
every stage from the sweep on (which labels its trials) may use it. No module
imports one downstream of it (style.md: "No module reaches back up that
path"), and plots imports nothing above the base layer.

Names kept at their former paths after a move down (``optstab.diagnosis.trial``,
``optstab.diagnosis.executors``) are re-exports of the lower module, which is
allowed; names kept at their former paths after a move *up*
(``optstab.runner.ExperimentResult``, ``optstab.plots``' WideResNet figures)
are looked up on first use, with no import statement, and are listed in
``MOVED_UP`` below.
"""

from __future__ import annotations

import ast
import os

import optstab

ROOT = os.path.dirname(optstab.__file__)

#: Top-level module or package -> its layer.
LAYERS = {
    "_validation": 0, "_types": 0, "_arguments": 0, "schedules": 0, "telemetry": 0, "clipping": 0,
    "spike_guard": 0, "optimizers": 0, "plots": 0,
    "trial": 1,
    "executors": 2,
    "runner": 3, "diagnosis": 3, "trial_builder": 3,
    "": 4,  # optstab/__init__.py
    "harness": 5,
    "wrn": 6, "transformer": 6, "examples": 6,
}

#: Parts on one layer that must not import each other.
SIDE_BY_SIDE = ({"runner", "diagnosis"}, {"trial_builder", "diagnosis"},
                {"wrn", "transformer", "examples"})

# module -> the optstab.diagnosis modules it may import (its upstream). ``trial``
# and ``executors`` moved below the diagnosis (layers 1 and 2); their modules
# here only re-export them.
ALLOWED = {
    "trial": set(),
    "store": set(),
    "feasibility": set(),
    "detectors": set(),
    "plan": set(),
    "executors": set(),
    "sweep": {"store", "feasibility", "detectors"},
    "confirm": {"store", "feasibility", "sweep", "detectors"},
    "warmup_tuner": {"store", "feasibility", "sweep", "detectors"},
    "verdict": {"sweep", "confirm", "detectors"},
    "fixes": {"store", "sweep", "detectors"},
    "report": {"store", "feasibility", "sweep", "detectors", "confirm", "fixes", "plan",
               "verdict"},
    "procedure": {"store", "feasibility", "sweep", "detectors", "confirm", "fixes",
                  "plan", "verdict", "report"},
    # Logs replace the training function: judged like a sweep, reported like diagnose.
    "logs": {"store", "feasibility", "sweep", "detectors", "confirm", "report"},
    "logs_cli": {"logs"},
}

#: Names kept at a lower module's path after they moved up: (module, name) -> new home.
MOVED_UP = {
    ("optstab.runner", "ExperimentResult"): "optstab.harness.experiment",
    ("optstab.plots", "plot_stride_error_vs_learning_rate"): "optstab.wrn.figures",
    ("optstab.plots", "plot_stride_grad_norms"): "optstab.wrn.figures",
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


def _modules():
  """``(dotted name, path)`` of every module of the optstab package."""
  for folder, _, files in os.walk(ROOT):
    for file in sorted(files):
      if file.endswith(".py"):
        path = os.path.join(folder, file)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _is_module(dotted):
  path = os.path.join(os.path.dirname(ROOT), *dotted.split("."))
  return os.path.isdir(path) or os.path.isfile(path + ".py")


def _part(dotted):
  """The top-level part of optstab a dotted name lies in ('' for the package's re-exports)."""
  parts = dotted.split(".")
  if len(parts) == 1 or not _is_module(".".join(parts[:2])):
    return ""  # ``import optstab`` or ``from optstab import adam``
  return parts[1]


def _optstab_imports(path):
  """The parts of optstab a module imports from (``from optstab import plots`` is ``plots``)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  used = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:  # a submodule by name, else a name the module binds
        full = f"{node.module}.{alias.name}"
        used.add(full if _is_module(full) else node.module)
    elif isinstance(node, ast.Import):
      used.update(a.name for a in node.names)
  return {_part(n) for n in used if n == "optstab" or n.startswith("optstab.")}


def test_every_part_has_a_layer():
  parts = {_part(name) for name, _ in _modules()}
  assert parts <= set(LAYERS), parts - set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
  for name, path in _modules():
    own = _part(name)
    for used in _optstab_imports(path):
      assert LAYERS[used] <= LAYERS[own], (name, used)
      assert not any(used != own and {used, own} <= group for group in SIDE_BY_SIDE), (
          f"{name} imports {used}, its neighbour on layer {LAYERS[own]}")


def test_runner_does_not_depend_on_the_diagnosis():
  for name, path in _modules():
    if _part(name) == "runner":
      assert not {n for n in _imports(path) if n.startswith(("optstab.diagnosis",
                                                               "optstab.harness"))}, name


def test_names_kept_at_their_former_paths_after_a_move_up():
  import importlib

  for (module, name), home in MOVED_UP.items():
    assert getattr(importlib.import_module(module), name) is getattr(
        importlib.import_module(home), name), (module, name)


def test_diagnosis_modules_never_import_downstream():
  folder = os.path.dirname(optstab.diagnosis.__file__)
  for module, allowed in ALLOWED.items():
    used = {n.split(".")[2] for n in _imports(os.path.join(folder, f"{module}.py"))
            if n.startswith("optstab.diagnosis.")}
    assert used <= allowed, (module, used - allowed)
    assert "optstab.wrn" not in " ".join(_imports(os.path.join(folder, f"{module}.py")))


def test_plots_imports_only_the_base_layer():
  assert {_part(n) for n in _imports(optstab.plots.__file__) if n.startswith("optstab")} <= {
      part for part, layer in LAYERS.items() if layer == 0}
