"""Every figure optstab draws, with matplotlib, written to PNG.

Plot functions take plain numbers and arrays (never diagnosis or experiment
objects), so this module depends on nothing else in optstab and any layer can
call it. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from typing import Union

# matplotlib.figure.Figure, not pyplot: no global state, no GUI backend needed,
# so plotting works the same headless, in CI and in a notebook.
from matplotlib.figure import Figure

PathLike = Union[str, "os.PathLike[str]"]


def _save(fig: Figure, path: PathLike) -> str:
  """Writes ``fig`` to ``path`` (PNG), creating parent folders; returns the path."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path

# --- gradient norms (telemetry, S5) ---
# --- end gradient norms ---

# --- sweeps and diagnosis (S2, S4) ---
# --- end sweeps and diagnosis ---

# --- WideResNet figures (S6) ---
# --- end WideResNet figures ---
