"""Every figure optstab draws, with matplotlib, written to PNG.

Plot functions take plain numbers and arrays (never diagnosis or experiment
objects), so this module depends on nothing above optstab's base layer and any
layer can call it. Each function writes one PNG and returns its path. Figures
that only one demo draws live in that demo (the WideResNet's Figures 4 and 9
in ``optstab.wrn.figures``; ``optstab.plots`` still finds them by their names).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

# matplotlib.figure.Figure, not pyplot: no global state, no GUI backend needed,
# so plotting works the same headless, in CI and in a notebook.
from matplotlib.figure import Figure
from matplotlib import ticker
import numpy as np

from optstab._types import PathLike

#: Figures that moved to the demo that draws them: name -> its module now.
_MOVED = {"plot_stride_error_vs_learning_rate": "optstab.wrn.figures",
          "plot_stride_grad_norms": "optstab.wrn.figures"}


def __getattr__(name: str) -> Any:
  """The WideResNet demo's figures, at their former path (looked up on first use)."""
  if name in _MOVED:
    import importlib  # pylint: disable=import-outside-toplevel

    return getattr(importlib.import_module(_MOVED[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _save(fig: Figure, path: PathLike) -> str:
  """Writes ``fig`` to ``path`` (PNG), creating parent folders; returns the path."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def _plain_log_ticks(ax) -> None:
  """A log y axis that reads: plain tick labels ("3.5", not "3.5x10^0") and no minor labels;
  a linear axis where the data span less than a decade (a log scale shows nothing more there,
  and its ticks would crowd or be missing)."""
  low, high = ax.get_ylim()
  if low > 0 and high / low < 10:
    ax.set_yscale("linear")
    return
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


#: Line styles and markers cycled over curves, so that curves that coincide stay distinguishable.
_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "v", "D", "P")


def _same_as(items, i) -> "str | None":
  """The label of an earlier curve identical to curve ``i`` (NaNs equal), if any."""
  label, values = items[i]
  for other, earlier in items[:i]:
    if earlier.shape == values.shape and np.array_equal(earlier, values, equal_nan=True):
      return other
  return None

# --- gradient norms (telemetry, the FAQ's "Gradient clipping") ---


def _checked_norms(norms) -> "np.ndarray":
  arr = np.asarray(norms, dtype=np.float64).ravel()
  if arr.size == 0:
    raise ValueError("norms must be a non-empty 1-D array of gradient norms; got 0 values.")
  if not np.isfinite(arr).any():
    raise ValueError(f"norms must contain at least one finite value; got {arr.size} NaN/Inf entries.")
  return arr


#: A threshold at or above this means none was in force: ``inf``, or the finite
#: placeholder that a clipping state holds (``optstab.clipping.NO_THRESHOLD``,
#: the largest float32; not imported: plots imports nothing from optstab).
_NO_THRESHOLD = float(np.finfo(np.float32).max)


def _thresholds_in_force(threshold) -> np.ndarray:
  """``threshold`` as float64, NaN where no threshold was in force."""
  thr = np.asarray(threshold, dtype=np.float64)
  with np.errstate(invalid="ignore"):
    return np.where(np.isfinite(thr) & (thr < _NO_THRESHOLD), thr, np.nan)


def plot_grad_norms(norms, path: PathLike, *, threshold=None, steps=None,
                    title: str = "Unclipped gradient norm") -> str:
  """The FAQ's first default plot: unclipped global gradient norm vs step, log-y.

  Args:
    norms: 1-D array of unclipped norms, one per step (NaN/Inf steps are
      marked along the top edge, not drawn as values).
    path: PNG file to write.
    threshold: optional clipping threshold: a number (drawn as a horizontal
      line) or a per-step array (an adaptive threshold; ``inf``, or a clipping
      state's ``NO_THRESHOLD``, where none was in force), drawn as a step curve.
    steps: optional step index of each norm (default ``0..n-1``).
    title: figure title.

  Returns:
    ``path``.
  """
  arr = _checked_norms(norms)
  x = np.arange(arr.size) if steps is None else np.asarray(steps)
  finite = np.isfinite(arr) & (arr > 0)
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  ax.plot(x[finite], arr[finite], lw=0.8, color="tab:blue", label="unclipped norm")
  bad = ~np.isfinite(arr)
  if bad.any():
    top = arr[finite].max() if finite.any() else 1.0
    ax.plot(x[bad], np.full(bad.sum(), top), "x", color="tab:red", label=f"NaN/Inf ({bad.sum()})")
  if threshold is not None:
    thr = _thresholds_in_force(threshold)
    if thr.ndim == 0:
      if np.isfinite(thr):
        ax.axhline(float(thr), color="tab:orange", ls="--", label=f"threshold {float(thr):.3g}")
    elif np.isfinite(thr).any():
      ax.step(x, thr, where="post", color="tab:orange", lw=1.0, label="threshold")
  ax.set_yscale("log")
  _plain_log_ticks(ax)
  ax.set_xlabel("step")
  ax.set_ylabel("global gradient L2 norm")
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)


def plot_grad_norm_histogram(norms, path: PathLike, *, threshold=None, bins: int = 50,
                             title: str = "Gradient norms over all steps") -> str:
  """The FAQ's second default plot: histogram of unclipped norms over all steps.

  Bins are logarithmically spaced (norms span orders of magnitude early in
  training); NaN/Inf norms are left out and counted in the legend.

  Args:
    norms: 1-D array of unclipped norms.
    path: PNG file to write.
    threshold: optional threshold: a number, or a per-step array whose last
      value in force is drawn (a vertical line).
    bins: number of bins.
    title: figure title.

  Returns:
    ``path``.
  """
  arr = _checked_norms(norms)
  good = arr[np.isfinite(arr) & (arr > 0)]
  fig = Figure(figsize=(7, 4))
  ax = fig.add_subplot()
  lo, hi = (good.min(), good.max()) if good.size else (1e-3, 1.0)
  if hi <= lo:
    lo, hi = lo / 2, hi * 2
  edges = np.geomspace(lo, hi, int(bins) + 1)
  nonfinite = int((~np.isfinite(arr)).sum())
  label = "norms" + (f" ({nonfinite} NaN/Inf left out)" if nonfinite else "")
  ax.hist(good, bins=edges, color="tab:blue", alpha=0.8, label=label)
  if threshold is not None:
    thr = _thresholds_in_force(threshold).ravel()
    thr = thr[np.isfinite(thr)]
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

# --- sweeps and diagnosis (identifying unstable workloads, warmup) ---


def _curve(values) -> "np.ndarray":
  return np.asarray(values, dtype=np.float64).ravel()


def _mark_blowup(ax, steps, values, color) -> None:
  """Marks a curve's first non-finite step with an 'x' at the last finite value."""
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    finite = values[np.isfinite(values)]
    y = finite.max() if finite.size else 1.0
    ax.plot([steps[bad[0]]], [y], "x", color=color, ms=9, mew=2)


def plot_learning_rate_sweep(learning_rates, metric_values, feasible, path: PathLike, *,
                             best_learning_rate=None, metric_name: str = "validation loss",
                             title: str = "Learning-rate sweep", labels=None) -> str:
  """FAQ Figure 7a: the hyperparameter-axis plot, metric vs base learning rate.

  Feasible trials are blue dots joined by a line; infeasible trials (NaN/Inf or
  abnormally high loss) are red crosses along the top edge; with ``labels``,
  trials that failed to train (finite, but stalled: ``"failed-to-train"``) are
  purple squares at their value (on the top edge if it is not finite), and
  other feasible trials not labelled ``"stable"`` are open triangles. lr* is a
  gold star with a dashed vertical line. The x axis is logarithmic.

  Args:
    learning_rates: 1-D array of base learning rates.
    metric_values: the metric per rate (NaN for infeasible trials is fine).
    feasible: booleans, one per rate.
    path: PNG file to write.
    best_learning_rate: lr*, highlighted if given.
    metric_name: y-axis label.
    title: figure title.
    labels: optional run label per rate (``optstab.diagnosis`` labels, e.g.
      ``"stable"``, ``"failed-to-train"``).

  Returns:
    ``path``.
  """
  lrs = _curve(learning_rates)
  values = _curve(metric_values)
  ok = np.asarray(feasible, dtype=bool).ravel()
  names = None if labels is None else np.asarray([str(x) for x in labels], dtype=object)
  if not (lrs.size == values.size == ok.size) or lrs.size == 0 or (
      names is not None and names.size != lrs.size):
    raise ValueError(
        "learning_rates, metric_values, feasible (and labels) must be non-empty and of equal "
        f"length; got {lrs.size}, {values.size}, {ok.size}"
        + ("" if names is None else f", {names.size}") + ".")
  order = np.argsort(lrs)
  lrs, values, ok = lrs[order], values[order], ok[order]
  failed = np.zeros(lrs.size, bool) if names is None else names[order] == "failed-to-train"
  odd = (np.zeros(lrs.size, bool) if names is None
         else ok & ~failed & (names[order] != "stable"))
  shown = ok & np.isfinite(values)
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  ax.plot(lrs[shown], values[shown], "o-", color="tab:blue", label="feasible")
  top = values[shown].max() if shown.any() else 1.0
  low = values[shown].min() if shown.any() else 0.0
  edge = top + 0.1 * max(top - low, abs(top) * 0.1, 1e-12)
  if (~ok & ~failed).any():
    ax.plot(lrs[~ok & ~failed], np.full((~ok & ~failed).sum(), edge), "x", color="tab:red",
            ms=9, mew=2, label=f"infeasible ({(~ok & ~failed).sum()})")
  if failed.any():
    y = np.where(np.isfinite(values[failed]), values[failed], edge)
    ax.plot(lrs[failed], y, "s", color="tab:purple", ms=9, mfc="none", mew=2,
            label=f"failed to train ({failed.sum()})")
  if odd.any():
    ax.plot(lrs[odd & shown], values[odd & shown], "^", color="tab:orange", ms=10, mfc="none",
            mew=1.5, label=f"feasible, not stable ({odd.sum()})")
  if best_learning_rate is not None:
    i = int(np.argmin(np.abs(lrs - float(best_learning_rate))))
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
  """Training-loss curves (e.g. rates just above lr*, the playbook's Figure 7b).

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
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.add_subplot()
  positive = True
  for i, (label, values) in enumerate(items):
    steps = np.arange(1, values.size + 1)
    color = f"C{i % 10}"
    same = _same_as(items, i)
    if same is not None:
      label += f" (identical to {same})"
    # A line style and sparse markers per curve: curves that lie on each other stay visible.
    ax.plot(steps, np.where(np.isfinite(values), values, np.nan), lw=1.2, color=color,
            ls=_LINE_STYLES[i % len(_LINE_STYLES)], marker=_MARKERS[i % len(_MARKERS)],
            ms=5, mfc="none", markevery=(i % 4, max(1, values.size // 8)), label=label)
    _mark_blowup(ax, steps, values, color)
    finite = values[np.isfinite(values)]
    positive = positive and bool((finite > 0).all())
  if log_y and positive:
    ax.set_yscale("log")
    _plain_log_ticks(ax)
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

  Left panel: the loss sampled every ``coarse_every`` steps (and at the last
  step); right panel: every one of the first ``first_steps`` steps, where early
  instability that later recovers shows. A curve that turns NaN/Inf is marked
  with an ``x`` where it blew up.

  Args:
    train_loss: one 1-D per-step loss (entry ``i`` is step ``i + 1``), or a
      mapping ``label -> per-step loss`` to compare runs (e.g. two model
      variants at one learning rate).
    path: PNG file to write.
    coarse_every: sampling interval of the left panel.
    first_steps: steps shown in the right panel.
    title: figure title.

  Returns:
    ``path``.
  """
  labelled = isinstance(train_loss, Mapping)
  items = ([(str(k), _curve(v)) for k, v in train_loss.items()] if labelled
           else [(None, _curve(train_loss))])
  if not items or any(v.size == 0 for _, v in items) or int(coarse_every) < 1 \
      or int(first_steps) < 1:
    raise ValueError(
        "train_loss must hold non-empty curves and coarse_every, first_steps must be >= 1; "
        f"got {[v.size for _, v in items]} steps, coarse_every={coarse_every!r}, "
        f"first_steps={first_steps!r}.")
  fig = Figure(figsize=(11, 4), layout="constrained")
  fig.get_layout_engine().set(wspace=0.08)  # the panels' edge tick labels must not touch
  left, right = fig.subplots(1, 2)
  log_y = True
  shown_steps = 0
  for i, (label, values) in enumerate(items):
    color = f"C{i % 10}"
    steps = np.arange(1, values.size + 1)
    shown = np.where(np.isfinite(values), values, np.nan)
    finite = values[np.isfinite(values)]
    log_y = log_y and finite.size > 0 and bool((finite > 0).all())
    coarse = np.unique(np.append(np.arange(coarse_every, values.size + 1, coarse_every),
                                 values.size)) - 1
    ls = _LINE_STYLES[i % len(_LINE_STYLES)]
    left.plot(steps[coarse], shown[coarse], marker=_MARKERS[i % len(_MARKERS)], ls=ls,
              color=color, label=label)
    k = min(int(first_steps), values.size)
    shown_steps = max(shown_steps, k)
    right.plot(steps[:k], shown[:k], marker=_MARKERS[i % len(_MARKERS)], ms=3, ls=ls,
               color=color, label=label)
    _mark_blowup(right, steps[:k], values[:k], color)
  left.set_title(f"evaluated every {int(coarse_every)} steps")
  right.set_title(f"evaluated every step, first {shown_steps} steps")
  for ax in (left, right):
    if log_y:
      ax.set_yscale("log")
      _plain_log_ticks(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_xlim(left=0)
    ax.grid(True, which="both", alpha=0.3)
    if labelled:
      ax.legend(loc="best", fontsize="small")
  fig.suptitle(title)
  return _save(fig, path)


def plot_warmup_sweep(warmup_steps, curves, stable, path: PathLike, *, base_learning_rate=None,
                      title: str = "Warmup sweep", labels=None) -> str:
  """FAQ Figure 6: training loss per warmup length, on a log step axis.

  Args:
    warmup_steps: 1-D array of warmup lengths, one per curve.
    curves: sequence of 1-D per-step losses, aligned with ``warmup_steps``.
    stable: booleans, aligned: runs that trained are solid, the others dashed
      and marked with an ``x`` where they turned NaN/Inf.
    path: PNG file to write.
    base_learning_rate: the peak rate, shown in the title.
    title: figure title.
    labels: optional run label per curve, shown in the legend for the runs
      that are not ``stable`` (default: "blew up").

  Returns:
    ``path``.
  """
  lengths = [int(w) for w in np.asarray(warmup_steps).ravel()]
  curves = [_curve(c) for c in curves]
  flags = [bool(s) for s in np.asarray(stable, dtype=bool).ravel()]
  if not lengths or not (len(lengths) == len(curves) == len(flags)) or (
      labels is not None and len(list(labels)) != len(lengths)):
    raise ValueError(
        "warmup_steps, curves, stable (and labels) must be non-empty and of equal length; got "
        f"{len(lengths)}, {len(curves)}, {len(flags)}.")
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  positive = True
  names = ["blew up"] * len(flags) if labels is None else [str(x) for x in labels]
  for i, (w, values, ok) in enumerate(zip(lengths, curves, flags)):
    steps = np.arange(1, values.size + 1)
    color = f"C{i % 10}"
    note = "" if (ok and labels is None) or names[i] == "stable" else f" ({names[i]})"
    ax.plot(steps, np.where(np.isfinite(values), values, np.nan), lw=1.2, color=color,
            ls="-" if ok else "--", label=f"warmup {w}{note}")
    _mark_blowup(ax, steps, values, color)
    finite = values[np.isfinite(values)]
    positive = positive and bool((finite > 0).all())
  ax.set_xscale("log")
  if positive:
    ax.set_yscale("log")
    _plain_log_ticks(ax)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  if base_learning_rate is not None:
    title = f"{title} (base learning rate {float(base_learning_rate):.3g})"
  ax.set_title(title)
  ax.legend(loc="best", fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)
# --- end sweeps and diagnosis ---

# --- Transformer figures ---


def plot_loss_vs_learning_rate(curves, path: PathLike, *, reference=None,
                               reference_label: str = "trivial level",
                               ylabel: str = "validation loss",
                               title: str = "Loss vs learning rate") -> str:
  """Playbook Figure 8: a loss at a fixed step vs peak learning rate, one curve per model.

  Args:
    curves: ``{label: (learning_rates, losses, feasible, failed_to_train)}``;
      ``losses`` may hold NaN/None. Trials that trained are filled markers;
      failed-to-train ones (finite but stalled) hollow markers at their loss;
      infeasible ones (NaN/Inf or abnormally high loss) an ``x`` at the top edge.
      Each curve's lowest loss among its feasible trials is starred.
    path: PNG file to write.
    reference: a horizontal dotted line (e.g. the loss of a model that learned
      nothing), if given.
    reference_label: its legend entry.
    ylabel: y-axis label.
    title: figure title.

  Returns:
    ``path``.
  """
  if not curves:
    raise ValueError("curves must hold at least one curve; got none.")
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  parsed = []
  for label, (lrs, losses, feasible, failed) in curves.items():
    lrs = _curve(lrs)
    losses = np.asarray([np.nan if v is None else v for v in losses], np.float64)
    feasible = np.asarray(feasible, bool).ravel()
    failed = np.asarray(failed, bool).ravel()
    if not (lrs.shape == losses.shape == feasible.shape == failed.shape):
      raise ValueError(f"curve {label!r}: learning_rates, losses, feasible and failed_to_train "
                       f"must have the same length; got {lrs.size}, {losses.size}, "
                       f"{feasible.size}, {failed.size}.")
    parsed.append((label, lrs, losses, feasible, failed))
  shown_all = np.concatenate([l[f & np.isfinite(l)] for _, _, l, f, _ in parsed])
  top = shown_all.max() if shown_all.size else 1.0
  if reference is not None:
    top = max(top, float(reference))
  low = shown_all.min() if shown_all.size else 0.0
  edge = top + 0.05 * max(top - low, 1e-12)
  styles = ["o-", "s-", "o--", "s--", "^-", "v-"]
  any_failed = any_bad = False
  for i, (label, lrs, losses, feasible, failed) in enumerate(parsed):
    shown = feasible & np.isfinite(losses)
    line, = ax.plot(lrs[shown], losses[shown], styles[i % len(styles)], label=label)
    color = line.get_color()
    stalled = shown & failed
    if stalled.any():
      any_failed = True
      ax.plot(lrs[stalled], losses[stalled], "o", mfc="white", mec=color, ms=11, mew=1.5)
    bad = ~feasible
    if bad.any():
      any_bad = True
      ax.plot(lrs[bad], np.full(bad.sum(), edge), "x", color=color, ms=9, mew=2)
    if shown.any():
      # Smaller for each later curve, so stars that fall on one point stay visible.
      j = int(np.argmin(np.where(shown, losses, np.inf)))
      ax.plot([lrs[j]], [losses[j]], "*", color=color, ms=max(19 - 4 * i, 7), mec="black",
              zorder=3 + i)
  # One legend entry per marker kind, not per curve.
  ax.plot([], [], "*", color="gray", ms=12, mec="black", label="best rate of each curve")
  if any_failed:
    ax.plot([], [], "o", mfc="white", mec="gray", ms=10, mew=1.5, label="failed to train")
  if any_bad:
    ax.plot([], [], "x", color="gray", ms=9, mew=2, label="infeasible (drawn at the top)")
  if reference is not None:
    ax.axhline(float(reference), color="gray", ls=":", label=reference_label)
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize="x-small")
  return _save(fig, path)
# --- end Transformer figures ---
