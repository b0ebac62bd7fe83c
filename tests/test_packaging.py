"""The release artifacts: ``python -m build`` gives an sdist and a wheel that work installed.

The wheel is built from the sdist (``build``'s default), so a file missing from
the sdist fails here too. The installed wheel, outside the source tree, runs
both demos' ``tiny`` presets with the data it ships, and the logs command.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("build", reason="the test extra installs `build`")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  out = tmp_path_factory.mktemp("dist")
  # An isolated build fetches setuptools from the package index, as a release build does.
  done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  (sdist,) = out.glob("optstab-*.tar.gz")
  (wheel,) = out.glob("optstab-*.whl")
  return sdist, wheel


def _tracked_package_files() -> set[str]:
  listed = subprocess.run(["git", "ls-files", "optstab"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  if listed.returncode != 0:
    pytest.skip("not a git checkout: the tracked files are unknown")
  return {p for p in listed.stdout.split() if p}


def test_the_wheel_holds_every_tracked_module_and_data_file(dist):
  _, wheel = dist
  names = set(zipfile.ZipFile(wheel).namelist())
  tracked = _tracked_package_files()
  missing = sorted(p for p in tracked if p not in names)
  assert not missing, f"tracked files the wheel leaves out: {missing}"
  assert "optstab/py.typed" in names and "optstab/wrn/digits.csv.gz" in names
  metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
  scripts = zipfile.ZipFile(wheel).read(metadata).decode()
  for script in ("optstab-wrn", "optstab-transformer", "optstab-diagnose-logs"):
    assert script in scripts


def test_the_sdist_holds_the_sources_the_license_and_the_tests(dist):
  sdist, _ = dist
  with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
  for name in ("pyproject.toml", "README.md", "LICENSE", "optstab/wrn/digits.csv.gz",
               "optstab/wrn/DATA_NOTICE.md"):
    assert name in names
  assert not (_tracked_package_files() - names)


def test_the_installed_wheel_runs_both_demos_tiny_presets(dist, tmp_path):
  _, wheel = dist
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-index", "--target", str(target), str(wheel)], check=True, timeout=300)
  # Only the installed copy is importable: no source tree on the path, and a folder
  # outside it as the working directory.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(target)
  env.setdefault("MPLBACKEND", "Agg")
  where = subprocess.run([sys.executable, "-c", "import optstab; print(optstab.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
  assert pathlib.Path(where.stdout.strip()).is_relative_to(target)
  for demo in ("wrn", "transformer"):
    out = tmp_path / demo
    done = subprocess.run(
        [sys.executable, "-m", f"optstab.{demo}", "--preset", "tiny", "--out", str(out),
         "--workers", "1", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results and (out / "report.md").exists()
