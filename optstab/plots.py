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
import numpy as _dnp  # (own alias: this section does not rely on other sections' imports)


def _curve(values) -> "_dnp.ndarray":
  return _dnp.asarray(values, dtype=_dnp.float64).ravel()


def _mark_blowup(ax, steps, values, color) -> None:
  """Marks a curve's first non-finite step with an 'x' at the last finite value."""
  bad = _dnp.flatnonzero(~_dnp.isfinite(values))
  if bad.size:
    finite = values[_dnp.isfinite(values)]
    y = finite.max() if finite.size else 1.0
    ax.plot([steps[bad[0]]], [y], "x", color=color, ms=9, mew=2)


def plot_learning_rate_sweep(learning_rates, metric_values, feasible, path: PathLike, *,
                             best_learning_rate=None, metric_name: str = "validation loss",
                             title: str = "Learning-rate sweep") -> str:
  """FAQ Figure 7a: the hyperparameter-axis plot, metric vs base learning rate.

  Feasible trials are blue dots joined by a line; infeasible trials (NaN/Inf or
  abnormally high loss) are red crosses along the top edge; lr* is a gold star
  with a dashed vertical line. The x axis is logarithmic.

  Args:
    learning_rates: 1-D array of base learning rates.
    metric_values: the metric per rate (NaN for infeasible trials is fine).
    feasible: booleans, one per rate.
    path: PNG file to write.
    best_learning_rate: lr*, highlighted if given.
    metric_name: y-axis label.
    title: figure title.

  Returns:
    ``path``.
  """
  lrs = _curve(learning_rates)
  values = _curve(metric_values)
  ok = _dnp.asarray(feasible, dtype=bool).ravel()
  if not (lrs.size == values.size == ok.size) or lrs.size == 0:
    raise ValueError(
        "learning_rates, metric_values and feasible must be non-empty and of equal length; got "
        f"{lrs.size}, {values.size}, {ok.size}.")
  order = _dnp.argsort(lrs)
  lrs, values, ok = lrs[order], values[order], ok[order]
  shown = ok & _dnp.isfinite(values)
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  ax.plot(lrs[shown], values[shown], "o-", color="tab:blue", label="feasible")
  if (~ok).any():
    top = values[shown].max() if shown.any() else 1.0
    low = values[shown].min() if shown.any() else 0.0
    edge = top + 0.1 * max(top - low, abs(top) * 0.1, 1e-12)
    ax.plot(lrs[~ok], _dnp.full((~ok).sum(), edge), "x", color="tab:red", ms=9, mew=2,
            label=f"infeasible ({(~ok).sum()})")
  if best_learning_rate is not None:
    i = int(_dnp.argmin(_dnp.abs(lrs - float(best_learning_rate))))
    ax.axvline(float(best_learning_rate), color="goldenrod", ls="--", lw=1)
    ax.plot([lrs[i]], [values[i]], "*", color="goldenrod", ms=16, mec="black",
            label=f"lr* = {float(best_learning_rate):.3g}")
  ax.set_xscale("log")
  ax.set_xlabel("base learning rate")
  ax.set_ylabel(metric_name)
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)


def plot_loss_curves(curves, path: PathLike, *, title: str = "Training loss",
                     log_x: bool = False, log_y: bool = True, ylabel: str = "training loss") -> str:
  """Training-loss curves (e.g. rates just above lr*, FAQ S2 / Figure 7b).

  Args:
    curves: mapping label -> 1-D per-step loss (entry ``i`` is step ``i + 1``).
      A curve that turns NaN/Inf ends there, marked with an ``x``.
    path: PNG file to write.
    title: figure title.
    log_x: logarithmic step axis.
    log_y: logarithmic loss axis (used only if every finite value is > 0).
    ylabel: y-axis label.

  Returns:
    ``path``.
  """
  items = [(str(k), _curve(v)) for k, v in dict(curves).items()]
  if not items:
    raise ValueError("curves must hold at least one curve; got none.")
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  positive = True
  for i, (label, values) in enumerate(items):
    steps = _dnp.arange(1, values.size + 1)
    color = f"C{i % 10}"
    ax.plot(steps, _dnp.where(_dnp.isfinite(values), values, _dnp.nan), lw=1, color=color,
            label=label)
    _mark_blowup(ax, steps, values, color)
    finite = values[_dnp.isfinite(values)]
    positive = positive and bool((finite > 0).all())
  if log_y and positive:
    ax.set_yscale("log")
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)


def plot_every_step_loss(train_loss, path: PathLike, *, coarse_every: int = 100,
                         first_steps: int = 50, title: str = "Early training, every step") -> str:
  """FAQ Figure 5: what a rare evaluation schedule sees vs every step early on.

  Left panel: the loss sampled every ``coarse_every`` steps; right panel: every
  one of the first ``first_steps`` steps, where early instability that later
  recovers shows.

  Args:
    train_loss: 1-D per-step loss (entry ``i`` is step ``i + 1``).
    path: PNG file to write.
    coarse_every: sampling interval of the left panel.
    first_steps: steps shown in the right panel.
    title: figure title.

  Returns:
    ``path``.
  """
  values = _curve(train_loss)
  if values.size == 0 or int(coarse_every) < 1 or int(first_steps) < 1:
    raise ValueError(
        "train_loss must be non-empty and coarse_every, first_steps >= 1; got "
        f"{values.size} steps, coarse_every={coarse_every!r}, first_steps={first_steps!r}.")
  steps = _dnp.arange(1, values.size + 1)
  shown = _dnp.where(_dnp.isfinite(values), values, _dnp.nan)
  finite = values[_dnp.isfinite(values)]
  log_y = finite.size > 0 and bool((finite > 0).all())
  fig = Figure(figsize=(11, 4))
  left, right = fig.subplots(1, 2)
  coarse = _dnp.unique(_dnp.append(_dnp.arange(coarse_every, values.size + 1, coarse_every),
                                   values.size)) - 1
  left.plot(steps[coarse], shown[coarse], "o-", color="tab:blue")
  left.set_title(f"evaluated every {int(coarse_every)} steps")
  k = min(int(first_steps), values.size)
  right.plot(steps[:k], shown[:k], "o-", ms=3, color="tab:red")
  _mark_blowup(right, steps[:k], values[:k], "tab:red")
  right.set_title(f"every step, first {k} steps")
  for ax in (left, right):
    if log_y:
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path)


def plot_warmup_sweep(warmup_steps, curves, stable, path: PathLike, *, base_learning_rate=None,
                      title: str = "Warmup sweep") -> str:
  """FAQ Figure 6: training loss per warmup length, on a log step axis.

  Args:
    warmup_steps: 1-D array of warmup lengths, one per curve.
    curves: sequence of 1-D per-step losses, aligned with ``warmup_steps``.
    stable: booleans, aligned: stable runs are solid, ones that blew up dashed
      and marked with an ``x`` where they turned NaN/Inf.
    path: PNG file to write.
    base_learning_rate: the peak rate, shown in the title.
    title: figure title.

  Returns:
    ``path``.
  """
  lengths = [int(w) for w in _dnp.asarray(warmup_steps).ravel()]
  curves = [_curve(c) for c in curves]
  flags = [bool(s) for s in _dnp.asarray(stable, dtype=bool).ravel()]
  if not lengths or not (len(lengths) == len(curves) == len(flags)):
    raise ValueError(
        "warmup_steps, curves and stable must be non-empty and of equal length; got "
        f"{len(lengths)}, {len(curves)}, {len(flags)}.")
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  positive = True
  for i, (w, values, ok) in enumerate(zip(lengths, curves, flags)):
    steps = _dnp.arange(1, values.size + 1)
    color = f"C{i % 10}"
    ax.plot(steps, _dnp.where(_dnp.isfinite(values), values, _dnp.nan), lw=1.2, color=color,
            ls="-" if ok else "--", label=f"warmup {w}" + ("" if ok else " (blew up)"))
    _mark_blowup(ax, steps, values, color)
    finite = values[_dnp.isfinite(values)]
    positive = positive and bool((finite > 0).all())
  ax.set_xscale("log")
  if positive:
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  if base_learning_rate is not None:
    title = f"{title} (base learning rate {float(base_learning_rate):.3g})"
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)
# --- end sweeps and diagnosis ---

# --- WideResNet figures (S6) ---
import numpy as _wnp  # own alias: this section relies on no other section's imports


def plot_stride_error_vs_learning_rate(curves, path: PathLike, *,
                                       title: str = "WideResNet stride change") -> str:
  """Playbook Figure 4: final test error vs base learning rate, one curve per model.

  Args:
    curves: ``{label: (learning_rates, error_rates, feasible)}``; error rates in
      [0, 1] (NaN for a trial that produced none); infeasible trials are drawn
      as hollow markers (and plotted at their error if it is finite, else at
      the top edge with an ``x``).
    path: PNG file to write.
    title: figure title.

  Returns:
    ``path``.
  """
  if not curves:
    raise ValueError("curves must hold at least one curve; got none.")
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  styles = ["o-", "s-", "o--", "s--", "^-", "v-"]
  for i, (label, (lrs, errors, feasible)) in enumerate(curves.items()):
    lrs = _wnp.asarray(lrs, _wnp.float64)
    errors = _wnp.asarray(errors, _wnp.float64)
    feasible = _wnp.asarray(feasible, bool)
    if not (lrs.shape == errors.shape == feasible.shape):
      raise ValueError(f"curve {label!r}: learning_rates, error_rates and feasible must have the "
                       f"same shape; got {lrs.shape}, {errors.shape}, {feasible.shape}.")
    shown = _wnp.where(_wnp.isfinite(errors), errors, 1.0)
    line, = ax.plot(lrs, 100 * shown, styles[i % len(styles)], label=label)
    bad = ~feasible
    if bad.any():
      ax.plot(lrs[bad], 100 * shown[bad], "o", mfc="white", mec=line.get_color(), ms=10,
              label=f"{label}: infeasible")
  ax.set_xscale("log")
  ax.set_xlabel("base learning rate")
  ax.set_ylabel("test error rate (%)")
  ax.set_ylim(bottom=0)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize="small")
  return _save(fig, path)


def plot_stride_loss_panels(coarse, fine, path: PathLike, *, coarse_every: int = 1000,
                            learning_rate=None) -> str:
  """Playbook Figure 5: training loss as a rare cadence sees it, and every step early on.

  Args:
    coarse: ``{label: per-step training loss}`` (entry ``i`` is step ``i + 1``),
      drawn sampled every ``coarse_every`` steps (left panel).
    fine: ``{label: per-step training loss of the first steps}`` (right panel,
      every step, log-y).
    path: PNG file to write.
    coarse_every: sampling interval of the left panel.
    learning_rate: the rate, for the title.

  Returns:
    ``path``.
  """
  if int(coarse_every) < 1:
    raise ValueError(f"coarse_every must be an integer >= 1; got {coarse_every!r}.")
  fig = Figure(figsize=(11, 4))
  left, right = fig.subplots(1, 2)
  for label, loss in coarse.items():
    loss = _wnp.asarray(loss, _wnp.float64)
    idx = _wnp.unique(_wnp.append(_wnp.arange(coarse_every, loss.size + 1, coarse_every),
                                  loss.size)) - 1
    left.plot(idx + 1, loss[idx], "o-", label=label)
  left.set_title(f"evaluated every {int(coarse_every)} steps")
  for label, loss in fine.items():
    loss = _wnp.asarray(loss, _wnp.float64)
    right.plot(_wnp.arange(1, loss.size + 1), _wnp.where(_wnp.isfinite(loss), loss, _wnp.nan),
               "o-", ms=3, label=label)
  right.set_title(f"evaluated every step, first {max((len(v) for v in fine.values()), default=0)} steps")
  right.set_yscale("log")
  for ax in (left, right):
    ax.set_xlabel("global step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
  if learning_rate is not None:
    fig.suptitle(f"Conv stride (2,2) vs (1,1), learning rate {learning_rate:g}")
  return _save(fig, path)


def plot_stride_grad_norms(curves, thresholds, path: PathLike, *, learning_rate=None) -> str:
  """Playbook Figure 9: unclipped gradient norm vs step, with and without clipping.

  Args:
    curves: ``{label: per-step unclipped global gradient norm}``.
    thresholds: ``{label: initial clipping threshold}`` (dotted lines, same colour).
    path: PNG file to write.
    learning_rate: the rate, for the title.

  Returns:
    ``path``.
  """
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for label, norms in curves.items():
    norms = _wnp.asarray(norms, _wnp.float64)
    line, = ax.plot(_wnp.arange(1, norms.size + 1),
                    _wnp.where(_wnp.isfinite(norms), norms, _wnp.nan), label=label, lw=1)
    if label in thresholds and thresholds[label] is not None:
      ax.axhline(thresholds[label], ls=":", color=line.get_color(),
                 label=f"{label}: initial threshold {thresholds[label]:.3g}")
  ax.set_yscale("log")
  ax.set_xlabel("global step")
  ax.set_ylabel("gradient L2 norm (unclipped)")
  title = "Stride (1,1) WideResNet: gradient norm"
  if learning_rate is not None:
    title += f", learning rate {learning_rate:g}"
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  if curves:
    ax.legend(fontsize="small")
  return _save(fig, path)
# --- end WideResNet figures ---
