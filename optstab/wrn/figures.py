"""The stride experiment's figures: the playbook's Figures 4, 5 and 9.

Figures 4 and 9 are drawn only by this demo, so they live here (``optstab.plots``
still finds them by name); Figure 5 is the library's
``optstab.plots.plot_every_step_loss``. Like every optstab figure, the plot
functions take plain numbers and arrays and write one PNG.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure

from optstab import clipping, plots
from optstab._types import PathLike
from optstab.diagnosis import SweepResult
from optstab.trial import TrialRecord
from optstab.wrn.presets import VARIANTS, Preset
from optstab.wrn.report import pretty

__all__ = ["plot_stride_error_vs_learning_rate", "plot_stride_grad_norms", "write_figures"]


def plot_stride_error_vs_learning_rate(curves, path: PathLike, *,
                                       title: str = "WideResNet stride change",
                                       unstable_from=None) -> str:
  """Playbook Figure 4: final test error vs base learning rate, one curve per model.

  Each curve has its own marker, so curves that meet at a low error stay apart,
  and the error axis is logarithmic (linear if an error is 0): the good runs sit
  within a point or two of each other, which a linear axis up to the failed runs'
  error squeezes into one line.

  Args:
    curves: ``{label: (learning_rates, error_rates, feasible)}``; error rates in
      [0, 1] (NaN for a trial that produced none); infeasible trials are drawn
      as hollow markers (and plotted at their error if it is finite, else at
      the top edge with an ``x``).
    path: PNG file to write.
    title: figure title.
    unstable_from: optional ``{label: learning rate}``: the lowest rate at
      which that curve is unstable (``None`` for none), marked on the curve with
      an arrow in its colour, named in the legend.

  Returns:
    ``path``.
  """
  if not curves:
    raise ValueError("curves must hold at least one curve; got none.")
  unstable_from = dict(unstable_from or {})
  fig = Figure(figsize=(9.5, 4.8), layout="constrained")  # the legend sits beside the axes
  ax = fig.subplots()
  markers = ("o", "s", "^", "D", "v", "P")
  notes = []  # (rate, error, colour, label) of each curve's first unstable rate
  lowest = np.inf
  for i, (label, (lrs, errors, feasible)) in enumerate(curves.items()):
    lrs = np.asarray(lrs, np.float64)
    errors = np.asarray(errors, np.float64)
    feasible = np.asarray(feasible, bool)
    if not (lrs.shape == errors.shape == feasible.shape):
      raise ValueError(f"curve {label!r}: learning_rates, error_rates and feasible must have the "
                       f"same shape; got {lrs.shape}, {errors.shape}, {feasible.shape}.")
    shown = np.where(np.isfinite(errors), errors, 1.0)
    lowest = min(lowest, float(shown.min()))
    line, = ax.plot(lrs, 100 * shown, marker=markers[i % len(markers)], ms=7,
                    ls=plots._LINE_STYLES[(i // 2) % len(plots._LINE_STYLES)], label=label)
    bad = ~feasible
    if bad.any():
      ax.plot(lrs[bad], 100 * shown[bad], "o", mfc="white", mec=line.get_color(), ms=13,
              zorder=line.get_zorder() - 0.1, label=f"{label}: infeasible")
    lr = unstable_from.get(label)
    if lr is not None and np.isclose(lrs, lr).any():
      j = int(np.flatnonzero(np.isclose(lrs, lr))[0])
      notes.append((lrs[j], 100 * shown[j], line.get_color(), label))
  ax.set_xscale("log")
  if lowest > 0:
    ax.set_yscale("log")
    plots._plain_log_ticks(ax)
  else:
    ax.set_ylim(bottom=0)
  # An arrow in the curve's colour onto that curve's point, its words in the legend: text on
  # the axes would cross the curves and other notes.
  for lr, err, color, label in notes:
    ax.annotate("", (lr, err), xytext=(0, 30), textcoords="offset points",
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.5, "shrinkB": 6})
    ax.plot([], [], ls="none", marker=r"$\downarrow$", ms=12, color=color,
            label=f"{label}: unstable from {lr:g}")
  ax.set_xlabel("base learning rate")
  ax.set_ylabel("test error rate (%)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return plots._save(fig, path)


def plot_stride_grad_norms(curves, thresholds, path: PathLike, *, learning_rate=None,
                           labels=None) -> str:
  """Playbook Figure 9: unclipped gradient norm vs step, with and without clipping.

  Args:
    curves: ``{label: per-step unclipped global gradient norm}``.
    thresholds: ``{label: clipping threshold}``, a number (a fixed threshold, a
      dotted line in the curve's colour) or one per step (an adaptive one, e.g.
      :func:`optstab.thresholds_in_force`, drawn as it adapted; ``inf`` where
      none was in force).
    path: PNG file to write.
    learning_rate: the rate, for the title.
    labels: optional ``{label: run label}`` (``optstab.diagnosis`` labels): a run
      not ``"stable"`` shows its label in the legend, and a run that failed to
      train gets a note: its norm is low because it stopped training, not
      because it trained well.

  Returns:
    ``path``.
  """
  labels = dict(labels or {})
  fig = Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  stopped = []
  for i, (label, norms) in enumerate(curves.items()):
    norms = np.asarray(norms, np.float64)
    run_label = labels.get(label)
    shown_label = label if run_label in (None, "stable") else f"{label} ({run_label})"
    if run_label == "failed-to-train":
      stopped.append(label)
    line, = ax.plot(np.arange(1, norms.size + 1),
                    np.where(np.isfinite(norms), norms, np.nan), label=shown_label, lw=1,
                    ls=plots._LINE_STYLES[i % len(plots._LINE_STYLES)])
    if thresholds.get(label) is None:
      continue
    thr = plots._thresholds_in_force(thresholds[label])
    if thr.ndim == 0:
      ax.axhline(float(thr), ls=":", color=line.get_color(),
                 label=f"{label}: threshold {float(thr):.3g}")
    elif np.isfinite(thr).any():
      fixed = np.nanmin(thr) == np.nanmax(thr)
      ax.step(np.arange(1, thr.size + 1), thr, where="post", ls=":", lw=1.5,
              color=line.get_color(),
              label=f"{label}: threshold " + (f"{np.nanmin(thr):.3g} (did not adapt)" if fixed
                                              else "as it adapted"))
  ax.set_yscale("log")
  plots._plain_log_ticks(ax)
  ax.set_xlabel("global step")
  ax.set_ylabel("gradient L2 norm (unclipped)")
  title = "Stride (1,1) WideResNet: gradient norm"
  if learning_rate is not None:
    title += f", learning rate {learning_rate:g}"
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  if curves:
    ax.legend(fontsize="small")
  if stopped:
    # A lower norm usually reads as a healthier run; for a run that stopped training it is not.
    fig.text(0.01, 0.0, textwrap.fill(
        f"{' and '.join(stopped)} failed to train: {'its' if len(stopped) == 1 else 'their'} "
        "gradient norm is low because the model stopped learning, not because it trains "
        "better than the other runs.", width=100), fontsize="small", va="top")
  return plots._save(fig, path)


def write_figures(preset: Preset, out_dir: str, sweeps: dict[str, SweepResult],
                  clip_records: dict[float, TrialRecord], unstable: TrialRecord) -> dict[str, str]:
  """Figures 4, 5 and 9 of one seed's trials into ``out_dir``: name -> path.

  Figure 5 is left out when both models' trials at the high rate raised.
  """
  files = {}
  curves = {}
  for name, sweep in sweeps.items():
    errors = [t.result.eval_metrics["error_rate"][-1] if t.result is not None else np.nan
              for t in sweep.trials]
    curves[pretty(name)] = (sweep.learning_rates, np.asarray(errors, np.float64), sweep.feasible)
  files["fig4"] = plot_stride_error_vs_learning_rate(
      curves, os.path.join(out_dir, "fig4_test_error_vs_lr.png"),
      title=f"WideResNet stride change, Nesterov momentum ({preset.name} preset)",
      unstable_from={pretty(name): sweep.unstable_learning_rate for name, sweep in sweeps.items()})
  losses = {}
  for variant in VARIANTS:
    rec = next(t.record for t in sweeps[variant].trials
               if t.learning_rate == preset.high_learning_rate)
    if rec.result is not None:
      losses[pretty(variant)] = rec.result.train_loss
  if losses:  # both trials raised: nothing to draw
    files["fig5"] = plots.plot_every_step_loss(
        losses, os.path.join(out_dir, "fig5_loss_first_steps.png"),
        coarse_every=preset.fig5_eval_every, first_steps=preset.fig5_steps,
        title=(f"WRN-{preset.depth}-{preset.width}: {' vs '.join(losses)} model, learning rate "
               f"{preset.high_learning_rate:g}"))
  norm_curves, thresholds, run_labels = {}, {}, {}
  judge = sweeps["stride_1x1"].judge  # each run's label in the changed model's sweep context
  if unstable.result is not None:
    norm_curves["no clipping"] = unstable.result.grad_norms
    run_labels["no clipping"] = judge(unstable).label
  for p, rec in clip_records.items():
    if rec.result is not None:
      label = f"percentile clip p{p:g}"
      norm_curves[label] = rec.result.grad_norms
      run_labels[label] = judge(rec).label
      # The threshold in force at each step: the initial one, then the window's percentile.
      thresholds[label] = clipping.thresholds_in_force(
          rec.result.grad_norms, p, window_size=preset.clip_window,
          min_history=preset.clip_window,
          initial_threshold=rec.config.extra["clip_initial_threshold"])
  files["fig9"] = plot_stride_grad_norms(
      norm_curves, thresholds, os.path.join(out_dir, "fig9_grad_norms.png"),
      learning_rate=preset.high_learning_rate, labels=run_labels)
  return files
