"""The Colab notebooks in ``colabs/``: committed clean, and executed on CPU.

Each notebook is executed end to end with nbclient in a kernel running this
very Python: the test writes a ``python3`` kernel spec whose argv is
``sys.executable`` into a temporary ``JUPYTER_PATH`` (which wins over any user
or system kernel of that name), and a first cell checks ``sys.prefix``. Like papermill,
the test inserts a cell right after the one tagged ``parameters`` that shrinks
the notebook's sizes, so each runs in well under a minute on 2 CPU
cores. One test per notebook, so ``pytest -n 2`` runs them in parallel.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

import ipykernel  # noqa: F401  (the kernel below runs ipykernel from this environment)
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLABS = ROOT / "colabs"
README = ROOT / "README.md"

INSTALL_HEADER = "# ---- Install optstab: the one cell to edit ----"
INSTALL_LINE = "%pip install -q {OPTSTAB_SOURCE}"
INSTALL_GUIDE = ROOT / "docs" / "guide" / "install.md"

# The CI-sized parameters of every notebook. A notebook in colabs/ without an
# entry here fails `test_every_notebook_has_ci_parameters`.
CI_PARAMETERS: dict[str, dict[str, object]] = {
    "quickstart": {"num_steps": 100},
    "diagnose_your_model": {
        "num_steps": 200, "num_learning_rates": 3, "eval_every": 50, "short_check_steps": 50,
        "warmup_candidates": (10, 20), "batch_size": 64,
    },
    # "tiny" is the experiment's seconds-long plumbing preset.
    "stride_instability": {"preset_name": "tiny", "progress": False},
    "postln_warmup": {"preset_name": "tiny", "progress": False},
}

# Extra environment of a notebook's kernel, appended to the variable's current
# value. Two simulated CPU devices make the stride notebook's data-parallel path
# ("every local device") run in CI.
CI_ENV: dict[str, dict[str, str]] = {
    "stride_instability": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
}

# Text a notebook must print when executed with the CI parameters and environment.
CI_EXPECTED_OUTPUT: dict[str, str] = {
    "stride_instability": "preset 'tiny', 2 device(s) of 2",
}

# Seconds one cell may take before nbclient gives up.
CELL_TIMEOUT = 240


def _notebook_names() -> list[str]:
  return sorted(p.stem for p in COLABS.glob("*.ipynb"))


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(COLABS / f"{name}.ipynb", as_version=4)


def _parameters_index(nb: nbformat.NotebookNode) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
  assert nb.cells[tagged[0]].cell_type == "code"
  return tagged[0]


def _assigned_names(source: str) -> set[str]:
  names = set()
  for node in ast.parse(source).body:
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign) else [])
    for target in targets:
      for leaf in ast.walk(target):
        if isinstance(leaf, ast.Name):
          names.add(leaf.id)
  return names


def _injected_cell(overrides: dict[str, object]) -> nbformat.NotebookNode:
  lines = ["# Parameters injected by tests/test_colabs.py (CI sizes)."]
  lines += [f"{name} = {value!r}" for name, value in overrides.items()]
  return nbformat.v4.new_code_cell(
      "\n".join(lines), metadata={"tags": ["injected-parameters"]})


def _this_python_kernel(root: Path) -> Path:
  """A JUPYTER_PATH whose ``python3`` kernel is ``sys.executable``."""
  spec = root / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (the test's interpreter)",
      "language": "python",
  }))
  return root


def test_every_notebook_has_ci_parameters():
  assert _notebook_names() == sorted(CI_PARAMETERS)


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_committed_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{name}.ipynb cell {i} has outputs: clear them before committing"
      assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_layout(name):
  """First code cell installs optstab (guarded) and prints the backend; a parameters cell exists."""
  nb = _read(name)
  assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  src = first_code.source
  assert src.startswith(INSTALL_HEADER + "\n")
  assert re.search(r'^OPTSTAB_SOURCE = ""$', src, re.M), "the address is the user's to set"
  assert INSTALL_LINE in src
  # The install runs only where optstab is not importable (Colab), never in CI.
  guarded = src.split('if importlib.util.find_spec("optstab") is None:\n', 1)
  assert len(guarded) == 2 and INSTALL_LINE in guarded[1] and INSTALL_LINE not in guarded[0]
  assert "jax.default_backend()" in src and "jax.devices()" in src
  params = nb.cells[_parameters_index(nb)]
  overrides = CI_PARAMETERS[name]
  missing = set(overrides) - _assigned_names(params.source)
  assert not missing, f"CI overrides {sorted(missing)} are not assigned in the parameters cell"


def test_readme_links_every_notebook():
  text = README.read_text()
  section = text.split("<!-- colabs -->", 1)[1].split("<!-- end colabs -->", 1)[0]
  for name in _notebook_names():
    assert f"](colabs/{name}.ipynb)" in section, f"README colabs section lacks {name}"


def _guide_notebook_rows() -> dict[str, list[str]]:
  """The install guide's notebook table: name -> its cells."""
  text = INSTALL_GUIDE.read_text()
  rows = {}
  for line in text.split("## Notebooks", 1)[1].splitlines():
    m = re.match(r"\| `(\w+)\.ipynb` \|(.*)\|$", line)
    if m:
      rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
  return rows


def test_install_guide_states_the_install_cell():
  text = INSTALL_GUIDE.read_text()
  assert INSTALL_HEADER in text and INSTALL_LINE in text and "`OPTSTAB_SOURCE`" in text
  assert sorted(_guide_notebook_rows()) == _notebook_names()


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_auto_preset_is_the_one_the_guide_names(name):
  """``preset_name = "auto"`` resolves to the preset the install guide's table names, a
  minutes-long one; every other preset the guide lists is opt-in and named with its cost."""
  nb = _read(name)
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  auto_cell, opt_in = _guide_notebook_rows()[name][:2]
  if 'preset_name = "auto"' not in code:
    assert auto_cell == "none" and opt_in == "none"
    return
  # The one place the notebook resolves "auto": a plain assignment, whatever the backend.
  found = re.findall(r'if preset_name == "auto":\n\s+preset_name = "([\w-]+)"', code)
  assert len(found) == 1, "auto must resolve to one named preset, not one per backend"
  assert auto_cell.startswith(f"`{found[0]}`: minutes"), (auto_cell, found)
  module = {"stride_instability": "optstab.wrn.presets",
            "postln_warmup": "optstab.transformer.presets"}[name]
  presets = importlib.import_module(module)
  assert "minutes" in presets.get_preset(found[0]).description
  # Each opt-in preset is named, with its cost, in the parameters cell too.
  params = nb.cells[_parameters_index(nb)].source
  for preset in re.findall(r"`([\w-]+)`", opt_in):
    presets.get_preset(preset)  # a real preset
    assert f'"{preset}"' in params, f"the parameters cell does not name the opt-in {preset!r}"


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_executes_on_cpu(name, tmp_path, monkeypatch):
  nb = _read(name)
  at = _parameters_index(nb)
  nb.cells.insert(at + 1, _injected_cell(CI_PARAMETERS[name]))
  run_dir = tmp_path / "run"  # the notebook's working directory
  run_dir.mkdir()
  # Fail loudly if the kernel is not this Python (e.g. a stray system kernel).
  nb.cells.insert(0, nbformat.v4.new_code_cell(
      f"import sys\nassert sys.prefix == {sys.prefix!r}, (sys.executable, sys.prefix)"))
  monkeypatch.setenv("JUPYTER_PATH", str(_this_python_kernel(tmp_path / "jupyter")))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for key, value in CI_ENV.get(name, {}).items():
    monkeypatch.setenv(key, f"{os.environ.get(key, '')} {value}".strip())  # appended to any set flags
  client = nbclient.NotebookClient(
      nb,
      kernel_name="python3",
      timeout=CELL_TIMEOUT,
      resources={"metadata": {"path": str(run_dir)}},
  )
  start = time.perf_counter()
  try:
    client.execute()
  finally:
    # Keep the executed copy for debugging a failure.
    nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")
  elapsed = time.perf_counter() - start
  print(f"{name}.ipynb executed in {elapsed:.1f} s")
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}.ipynb displayed no figure"
  if name in CI_EXPECTED_OUTPUT:
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert CI_EXPECTED_OUTPUT[name] in printed, printed
