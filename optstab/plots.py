"""Every figure optstab draws, with matplotlib, written to PNG.

Plot functions take plain numbers and arrays (never diagnosis or experiment
objects), so this module depends on nothing above optstab's base layer and any
layer can call it. Each function writes one PNG and returns its path. Figures
that only one demo draws live in that demo (the WideResNet's Figures 4 and 9
in ``optstab.wrn.figures``; ``optstab.plots`` still finds them by their names).
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, Mapping, Optional

# matplotlib.figure.Figure, not pyplot: no global state, no GUI backend needed,
# so plotting works the same headless, in CI and in a notebook.
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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
  """A log y axis that reads: plain tick labels ("3.5", not "3.5x10^0"), no minor labels, and
  ticks at 1, 2 and 5 of each decade when fewer than four powers of ten are in view; a linear
  axis where the data span less than a decade (a log scale shows nothing more there, and its
  ticks would crowd or be missing)."""
  low, high = ax.get_ylim()
  if low > 0 and high / low < 10:
    ax.set_yscale("linear")
    return
  if low > 0 and np.floor(np.log10(high)) - np.ceil(np.log10(low)) < 3:
    # Fewer than four powers of ten in view: label 1, 2 and 5 of each decade too, or the
    # axis may show a single tick label (a range such as 0.5 to 6).
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
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


#: Two curves coincide on a figure when, over 90% of their drawn length, they are closer than
#: this fraction of the y range: a few pixels at the figures' height, so a reader sees one curve
#: where the legend names two.
COINCIDE_FRACTION = 0.0125


def _coincides_with(items, i, log_x: bool = False) -> "tuple[str, float] | None":
  """An earlier curve that curve ``i`` coincides with (not identical, but drawn on top of it):
  its label and the gap that 90% of the drawn length stays within; ``None`` if none.

  Curves of the same length only (the same steps), compared where both are finite; the y range
  is every curve's finite values. Each step counts by the width it is drawn with (on a log step
  axis the first steps fill much of the plot, and curves that part there do not coincide). Runs
  that stall at one level with the same data order do this (e.g. two rates above lr* that both
  fail to train), and without a note the legend promises a curve the reader cannot find.
  """
  values = items[i][1]
  finite = np.concatenate([v[np.isfinite(v)] for _, v in items])
  span = float(np.ptp(finite)) if finite.size else 0.0
  if span <= 0:
    return None
  steps = np.arange(1, values.size + 1)
  width = np.log((steps + 0.5) / (steps - 0.5)) if log_x else np.ones(values.size)
  for other, earlier in items[:i]:
    if earlier.shape != values.shape:
      continue
    both = np.isfinite(earlier) & np.isfinite(values)
    if not both.any():
      continue
    gap, w = np.abs(earlier[both] - values[both]), width[both]
    order = np.argsort(gap)
    cumulative = np.cumsum(w[order])
    within = float(gap[order][np.searchsorted(cumulative, 0.9 * cumulative[-1])])
    if within <= COINCIDE_FRACTION * span:
      return other, within
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
                             title: str = "Learning-rate sweep", labels=None,
                             failed_to_train=None, failed_rule: Optional[str] = None) -> str:
  """FAQ Figure 7a: the hyperparameter-axis plot, metric vs base learning rate.

  Feasible trials are blue dots joined by a line; infeasible trials (NaN/Inf or
  abnormally high loss) are red crosses along the top edge; with ``labels``,
  trials that failed to train (finite, but stalled: ``"failed-to-train"``) are
  purple squares at their value (on the top edge if it is not finite), and
  other feasible trials not labelled ``"stable"`` are open triangles, their
  labels in the legend. lr* is a gold star with a dashed vertical line. The x
  axis is logarithmic.

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
    failed_to_train: optional booleans, one per rate: which trials failed to
      train, when a rule other than the labels' decides it (a trial labelled
      ``"failed-to-train"`` that this rule says trained is then an open
      triangle, its label in the legend). Default: the labels decide.
    failed_rule: the rule the squares follow, in words, for the legend (a
      reader comparing the figure with a report must know which rule it is).

  Returns:
    ``path``.
  """
  lrs = _curve(learning_rates)
  values = _curve(metric_values)
  ok = np.asarray(feasible, dtype=bool).ravel()
  names = None if labels is None else np.asarray([str(x) for x in labels], dtype=object)
  stalled = None if failed_to_train is None else np.asarray(failed_to_train, bool).ravel()
  if not (lrs.size == values.size == ok.size) or lrs.size == 0 or (
      names is not None and names.size != lrs.size) or (
      stalled is not None and stalled.size != lrs.size):
    raise ValueError(
        "learning_rates, metric_values, feasible (and labels, failed_to_train) must be non-empty "
        f"and of equal length; got {lrs.size}, {values.size}, {ok.size}"
        + ("" if names is None else f", {names.size}")
        + ("" if stalled is None else f", {stalled.size}") + ".")
  order = np.argsort(lrs)
  lrs, values, ok = lrs[order], values[order], ok[order]
  if stalled is not None:
    failed = stalled[order]
  else:
    failed = np.zeros(lrs.size, bool) if names is None else names[order] == "failed-to-train"
  odd = (np.zeros(lrs.size, bool) if names is None
         else ok & ~failed & (names[order] != "stable"))
  shown = ok & np.isfinite(values)
  fig = Figure(figsize=(7, 5), layout="constrained")
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
    rule = "" if failed_rule is None else f"\n({failed_rule})"
    ax.plot(lrs[failed], y, "s", color="tab:purple", ms=9, mfc="none", mew=2,
            label=f"failed to train ({failed.sum()}){rule}")
  if odd.any():
    kinds = ", ".join(dict.fromkeys(names[order][odd]))
    ax.plot(lrs[odd & shown], values[odd & shown], "^", color="tab:orange", ms=10, mfc="none",
            mew=1.5, label=(f"feasible, labelled {kinds} ({odd.sum()})" if stalled is None
                            else f"trained, though the run detector labels it {kinds} "
                                 f"({odd.sum()})"))
  if best_learning_rate is not None:
    i = int(np.argmin(np.abs(lrs - float(best_learning_rate))))
    ax.axvline(float(best_learning_rate), color="goldenrod", ls="--", lw=1)
    ax.plot([lrs[i]], [values[i]], "*", color="goldenrod", ms=16, mec="black",
            label=f"lr* = {float(best_learning_rate):.3g}")
  ax.set_xscale("log")
  ax.set_xlabel("base learning rate")
  ax.set_ylabel(metric_name)
  ax.set_title(title)
  # Below the axes: inside, a legend with a rule in it covers lr* or the failed trials.
  fig.legend(loc="outside lower center", ncols=2, fontsize="small")
  ax.grid(True, which="both", alpha=0.3)
  return _save(fig, path)


def plot_loss_curves(curves, path: PathLike, *, title: str = "Training loss",
                     log_x: bool = False, log_y: bool = True, ylabel: str = "training loss") -> str:
  """Training-loss curves (e.g. rates just above lr*, the playbook's Figure 7b).

  Args:
    curves: mapping label -> 1-D per-step loss (entry ``i`` is step ``i + 1``).
      A curve that turns NaN/Inf ends there, marked with an ``x``. A curve equal
      to an earlier one, or drawn on top of it (within ``COINCIDE_FRACTION``
      of the y range over 90% of its drawn length), says so in its legend entry.
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
    near = None if same is not None else _coincides_with(items, i, log_x)
    if same is not None:
      label += f" (identical to {same})"
    elif near is not None:
      label += f" (coincides with {near[0]}: within {near[1]:.2g} on 90% of steps)"
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


def plot_fix_curves(reference, fixes, path: PathLike, *,
                    title: str = "Training loss with each fix tried",
                    ylabel: str = "training loss") -> str:
  """Training-loss curves of the fixes tried, grouped: a colour per run kind, a line style per fix.

  With several fixes, each with a few runs (the fix, the same rate without it, lr* for the same
  steps, a longer run), one legend entry per curve grows past what a reader can match to lines;
  two short legends (which kind of run, which fix) stay readable. Colour tells the kinds apart,
  as noisy per-step curves need: the comparison a reader makes is with vs without the fix. A run
  equal to one already drawn (fixes compared with the same baseline) is drawn once.

  Args:
    reference: ``{label: per-step loss}``, the runs every fix is compared with
      (e.g. lr*'s sweep run), in black and greys, solid, one legend entry each.
    fixes: ``{fix label: {run kind: per-step loss}}``; a run kind (e.g. "with
      the fix", "same rate without the fix") keeps one colour across fixes.
    path: PNG file to write.
    title: figure title.
    ylabel: y-axis label.

  Returns:
    ``path``.
  """
  reference = [(str(k), _curve(v)) for k, v in dict(reference).items()]
  fixes = [(str(name), [(str(k), _curve(v)) for k, v in dict(runs).items()])
           for name, runs in dict(fixes).items()]
  if not reference and not any(runs for _, runs in fixes):
    raise ValueError("reference and fixes must hold at least one curve; got none.")
  kinds = list(dict.fromkeys(kind for _, runs in fixes for kind, _ in runs))
  fig = Figure(figsize=(10, 4.5), layout="constrained")
  ax = fig.add_subplot()
  positive = True
  drawn = []

  def draw(values, **style) -> None:
    nonlocal positive
    if any(v.shape == values.shape and np.array_equal(v, values, equal_nan=True) for v in drawn):
      return
    drawn.append(values)
    steps = np.arange(1, values.size + 1)
    # Shorter runs on top: a longer run (a fix trained longer) would hide them, not they it.
    ax.plot(steps, np.where(np.isfinite(values), values, np.nan), zorder=2 + 1 / values.size,
            **style)
    _mark_blowup(ax, steps, values, style["color"])
    finite = values[np.isfinite(values)]
    positive = positive and bool((finite > 0).all())

  greys = ("black", "dimgray", "darkgray")
  run_handles, fix_handles = [], []
  for i, (label, values) in enumerate(reference):
    color = greys[i % len(greys)]
    draw(values, color=color, lw=1.2, ls="-")
    run_handles.append(Line2D([], [], color=color, lw=1.5, label=label))
  # Colours after the greys, in the default cycle; C7 is grey, left out.
  colors = [f"C{c}" for c in range(10) if c != 7]
  for j, kind in enumerate(kinds):
    run_handles.append(Line2D([], [], color=colors[j % len(colors)], lw=2, label=kind))
  for i, (name, runs) in enumerate(fixes):
    ls, marker = _LINE_STYLES[i % len(_LINE_STYLES)], _MARKERS[i % len(_MARKERS)]
    for kind, values in runs:
      j = kinds.index(kind)
      draw(values, color=colors[j % len(colors)], lw=1.1, ls=ls, marker=marker, ms=5, mfc="none",
           markevery=(j % 4, max(1, values.size // 8)))
    fix_handles.append(Line2D([], [], color="gray", lw=1.2, ls=ls, marker=marker, ms=5,
                              mfc="none", label=name))
  if positive:
    ax.set_yscale("log")
    _plain_log_ticks(ax)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  # Beside the axes, not on them: the curves fill the plot. Figure legends, so the layout and
  # the saved image make room for both.
  fig.legend(handles=run_handles, title="run (colour)", loc="outside right upper",
             fontsize="small", title_fontsize="small", alignment="left")
  if fix_handles:
    fig.legend(handles=fix_handles, title="fix (line style, marker)", loc="outside right lower",
               fontsize="small", title_fontsize="small", alignment="left")
  return _save(fig, path)


#: The fewest points the coarse panel of ``plot_every_step_loss`` is drawn with: with fewer, a
#: line between them says nothing about the run, so the panel is left out and the title says why.
MIN_COARSE_POINTS = 3


def plot_every_step_loss(train_loss, path: PathLike, *, coarse_every: int = 100,
                         first_steps: int = 50, title: str = "Early training, every step") -> str:
  """FAQ Figure 5: what a rare evaluation schedule sees vs every step early on.

  Left panel: the loss sampled every ``coarse_every`` steps (and at the last
  step); right panel: every one of the first ``first_steps`` steps, where early
  instability that later recovers shows. A curve that turns NaN/Inf is marked
  with an ``x`` where it blew up. When the run is too short for the coarse
  schedule to give ``MIN_COARSE_POINTS`` points, the left panel is left out and
  the figure's title gives the few values it would show.

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
  # The steps the coarse schedule evaluates (and the last step), per curve.
  coarse = [np.unique(np.append(np.arange(coarse_every, v.size + 1, coarse_every), v.size)) - 1
            for _, v in items]
  with_coarse = max(c.size for c in coarse) >= MIN_COARSE_POINTS
  fig = Figure(figsize=(11, 4) if with_coarse else (7, 4), layout="constrained")
  if with_coarse:
    fig.get_layout_engine().set(wspace=0.08)  # the panels' edge tick labels must not touch
    left, right = fig.subplots(1, 2)
  else:
    left, right = None, fig.subplots()
  log_y = True
  shown_steps = 0
  for i, (label, values) in enumerate(items):
    color = f"C{i % 10}"
    steps = np.arange(1, values.size + 1)
    shown = np.where(np.isfinite(values), values, np.nan)
    finite = values[np.isfinite(values)]
    log_y = log_y and finite.size > 0 and bool((finite > 0).all())
    ls = _LINE_STYLES[i % len(_LINE_STYLES)]
    if left is not None:
      left.plot(steps[coarse[i]], shown[coarse[i]], marker=_MARKERS[i % len(_MARKERS)], ls=ls,
                color=color, label=label)
    k = min(int(first_steps), values.size)
    shown_steps = max(shown_steps, k)
    right.plot(steps[:k], shown[:k], marker=_MARKERS[i % len(_MARKERS)], ms=3, ls=ls,
               color=color, label=label)
    _mark_blowup(right, steps[:k], values[:k], color)
  right.set_title(f"evaluated every step, first {shown_steps} steps")
  if left is not None:
    left.set_title(f"evaluated every {int(coarse_every)} steps")
  else:
    # What the coarse schedule would have shown, in words: too few points for a panel.
    seen = "; ".join(
        (f"{label}: " if label is not None else "")
        + ", ".join(f"{values[j]:.3g} at step {j + 1}" for j in c)
        for (label, values), c in zip(items, coarse))
    title = title + "\n" + textwrap.fill(
        f"evaluating every {int(coarse_every)} steps would see only {seen} "
        "(too few points to plot)", width=90)
  for ax in (left, right):
    if ax is None:
      continue
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
      Each curve's lowest loss among its feasible trials is starred; stars of
      curves that share a best rate are set side by side, each tied to its point.
    path: PNG file to write.
    reference: a horizontal dotted line (e.g. the loss of a model that learned
      nothing), if given; when every run trained and it lies more than the
      curves' own range above them, the legend names it instead, so that the
      curves keep the axes.
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
  low = shown_all.min() if shown_all.size else 0.0
  any_off = any((~f | fl).any() for _, _, _, f, fl in parsed)
  # A reference far above curves that all trained would squash them into a sliver of the
  # axes: it is then named in the legend instead of drawn.
  reference_drawn = reference is not None and (
      any_off or float(reference) <= top + max(top - low, 1e-12))
  if reference_drawn:
    top = max(top, float(reference))
  edge = top + 0.05 * max(top - low, 1e-12)
  styles = ["o-", "s-", "o--", "s--", "^-", "v-"]
  any_failed = any_bad = False
  stars = []  # (best rate, its loss, colour) of each curve
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
      j = int(np.argmin(np.where(shown, losses, np.inf)))
      stars.append((lrs[j], losses[j], color))
  # Curves that share a best rate would stack their stars on one point, each hiding the next:
  # set them side by side along x (a few percent of the axis) and tie each to its point.
  all_lrs = np.concatenate([l[np.isfinite(l) & (l > 0)] for _, l, _, _, _ in parsed])
  decades = np.log10(all_lrs.max() / all_lrs.min()) if all_lrs.size else 1.0
  step = 0.03 * max(decades, 0.5)
  spread = False
  for lr in dict.fromkeys(x for x, _, _ in stars):
    group = [(y, c) for x, y, c in stars if x == lr]
    spread = spread or len(group) > 1
    for k, (y, c) in enumerate(group):
      x = lr * 10 ** (step * (k - (len(group) - 1) / 2))
      if x != lr:
        ax.plot([lr, x], [y, y], color=c, lw=1, zorder=4)
      ax.plot([x], [y], "*", color=c, ms=14, mec="black", zorder=5)
  # One legend entry per marker kind, not per curve.
  ax.plot([], [], "*", color="gray", ms=12, mec="black",
          label="best rate of each curve" + (" (stars on one rate set side by side)"
                                             if spread else ""))
  if any_failed:
    ax.plot([], [], "o", mfc="white", mec="gray", ms=10, mew=1.5, label="failed to train")
  if any_bad:
    ax.plot([], [], "x", color="gray", ms=9, mew=2, label="infeasible (drawn at the top)")
  if reference_drawn:
    ax.axhline(float(reference), color="gray", ls=":", label=reference_label)
  elif reference is not None:
    ax.plot([], [], color="gray", ls=":",
            label=f"{reference_label}: {float(reference):.3g}, above the axes")
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize="x-small")
  return _save(fig, path)
# --- end Transformer figures ---
