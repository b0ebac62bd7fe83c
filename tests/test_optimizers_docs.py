"""The guide's quickstart and symbol table (docs/guide/optimizers.md), and the six-optimizers example."""

import contextlib
import inspect
import io
import pathlib
import re

import optstab
from optstab.examples import six_optimizers

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide" / "optimizers.md"


def _section(name):
  text = GUIDE.read_text(encoding="utf-8")
  match = re.search(rf"<!-- {name} -->(.*?)<!-- end {name} -->", text, re.S)
  assert match, f"optimizers.md has no <!-- {name} --> section"
  return match.group(1)


def test_readme_quickstart_runs_and_trains():
  blocks = re.findall(r"```python\n(.*?)```", _section("quickstart"), re.S)
  assert len(blocks) == 1
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(blocks[0], "optimizers.md:quickstart", "exec"), namespace)  # pylint: disable=exec-used
  first, final = float(namespace["first_loss"]), float(namespace["loss_fn"](namespace["params"]))
  assert final < 1e-3 * first, (first, final)
  assert out.getvalue().startswith("loss ")


def test_readme_symbol_table_defaults_match_signatures():
  table = _section("symbols")
  rows = [r for r in table.splitlines() if r.startswith("| ") and "`" in r and "FAQ symbol" not in r]
  header = [c.strip(" `") for c in table.split("| FAQ symbol |")[1].splitlines()[0].split("|")]
  names = [h for h in header if h][1:]
  assert names == ["sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam"]
  checked = 0
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    if len(cells) != 2 + len(names):
      continue
    for name, cell in zip(names, cells[2:]):
      m = re.match(r"`(\w+)(?:=([^`]+))?`", cell)
      if not m:
        continue
      params = inspect.signature(getattr(optstab, name)).parameters
      assert m.group(1) in params, (name, cell)
      if m.group(2) is not None:
        assert params[m.group(1)].default == float(m.group(2)), (name, cell)
        checked += 1
  assert checked >= 10


def test_six_optimizers_example_trains_every_optimizer(capsys):
  assert six_optimizers.main(["--steps", "120"]) == 0
  out = capsys.readouterr().out
  rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
  assert sorted(rows) == sorted(six_optimizers.OPTIMIZERS)
  for name, cells in rows.items():
    initial, final = float(cells[2]), float(cells[3])
    assert final < 0.5 * initial, (name, initial, final)
