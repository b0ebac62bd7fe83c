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
import numpy as _np


def _checked_norms(norms) -> "_np.ndarray":
  arr = _np.asarray(norms, dtype=_np.float64).ravel()
  if arr.size == 0:
    raise ValueError("norms must be a non-empty 1-D array of gradient norms; got 0 values.")
  if not _np.isfinite(arr).any():
    raise ValueError(f"norms must contain at least one finite value; got {arr.size} NaN/Inf entries.")
  return arr


def plot_grad_norms(norms, path: PathLike, *, threshold=None, steps=None,
                    title: str = "Unclipped gradient norm") -> str:
  """FAQ S5 default plot 1: unclipped global gradient norm vs step, log-y.

  Args:
    norms: 1-D array of unclipped norms, one per step (NaN/Inf steps are
      marked along the top edge, not drawn as values).
    path: PNG file to write.
    threshold: optional clipping threshold: a number (drawn as a horizontal
      line) or a per-step array (an adaptive threshold; ``inf`` where none
      was in force), drawn as a step curve.
    steps: optional step index of each norm (default ``0..n-1``).
    title: figure title.

  Returns:
    ``path``.
  """
  arr = _checked_norms(norms)
  x = _np.arange(arr.size) if steps is None else _np.asarray(steps)
  finite = _np.isfinite(arr) & (arr > 0)
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  ax.plot(x[finite], arr[finite], lw=0.8, color="tab:blue", label="unclipped norm")
  bad = ~_np.isfinite(arr)
  if bad.any():
    top = arr[finite].max() if finite.any() else 1.0
    ax.plot(x[bad], _np.full(bad.sum(), top), "x", color="tab:red", label=f"NaN/Inf ({bad.sum()})")
  if threshold is not None:
    thr = _np.asarray(threshold, dtype=_np.float64)
    if thr.ndim == 0:
      ax.axhline(float(thr), color="tab:orange", ls="--", label=f"threshold {float(thr):.3g}")
    else:
      shown = _np.where(_np.isfinite(thr), thr, _np.nan)
      ax.step(x, shown, where="post", color="tab:orange", lw=1.0, label="threshold")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("global gradient L2 norm")
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)


def plot_grad_norm_histogram(norms, path: PathLike, *, threshold=None, bins: int = 50,
                             title: str = "Gradient norms over all steps") -> str:
  """FAQ S5 default plot 2: histogram of unclipped norms over all steps.

  Bins are logarithmically spaced (norms span orders of magnitude early in
  training); NaN/Inf norms are left out and counted in the legend.

  Args:
    norms: 1-D array of unclipped norms.
    path: PNG file to write.
    threshold: optional threshold: a number, or a per-step array whose last
      finite value is drawn (a vertical line).
    bins: number of bins.
    title: figure title.

  Returns:
    ``path``.
  """
  arr = _checked_norms(norms)
  good = arr[_np.isfinite(arr) & (arr > 0)]
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  lo, hi = (good.min(), good.max()) if good.size else (1e-3, 1.0)
  if hi <= lo:
    lo, hi = lo / 2, hi * 2
  edges = _np.geomspace(lo, hi, int(bins) + 1)
  nonfinite = int((~_np.isfinite(arr)).sum())
  label = "norms" + (f" ({nonfinite} NaN/Inf left out)" if nonfinite else "")
  ax.hist(good, bins=edges, color="tab:blue", alpha=0.8, label=label)
  if threshold is not None:
    thr = _np.asarray(threshold, dtype=_np.float64).ravel()
    thr = thr[_np.isfinite(thr)]
    if thr.size:
      frac = float((good > thr[-1]).mean()) if good.size else 0.0
      ax.axvline(thr[-1], color="tab:orange", ls="--",
                 label=f"threshold {thr[-1]:.3g} ({100 * frac:.3g}% above)")
  ax.set_xscale("log")
  ax.set_xlabel("global gradient L2 norm")
  ax.set_ylabel("steps")
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  return _save(fig, path)
# --- end gradient norms ---

# --- sweeps and diagnosis (S2, S4) ---
# --- end sweeps and diagnosis ---

# --- WideResNet figures (S6) ---
# --- end WideResNet figures ---
