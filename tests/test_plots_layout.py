"""Every figure optstab draws is readable: no text overlaps, every legend entry has a visible mark.

Each plot function is rendered on tiny data, including the hard cases the demos meet (curves
that coincide, a NaN run, an adaptive threshold, stars of several curves on one point), and the
figure is inspected with matplotlib's own bounding boxes before it is written.
"""

from __future__ import annotations

import itertools

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np
import pytest

from optstab import plots

RNG = np.random.default_rng(0)
LOSS = 2.3 * np.exp(-np.linspace(0, 2, 60)) + 0.05 * RNG.random(60)
SPIKY = LOSS.copy()
SPIKY[2:6] = [9.0, 22.5, 12.0, 4.0]
NORMS = np.exp(RNG.normal(0.0, 0.5, 60))


def _texts(fig):
  """Every visible, non-empty text the figure draws, with its window extent: titles, axis and
  tick labels (only the ticks drawn, inside the view), legend entries and free text."""
  renderer = fig.canvas.get_renderer()
  artists = [fig._suptitle] + list(fig.texts)
  for ax in fig.axes:
    artists += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    artists += list(ax.texts)
    for axis in (ax.xaxis, ax.yaxis):
      # The ticks the axis draws (inside the view), as Axis.draw picks them.
      for tick in axis._update_ticks():
        artists += [tick.label1, tick.label2]
    legend = ax.get_legend()
    if legend is not None:
      artists += list(legend.get_texts()) + [legend.get_title()]
  for legend in fig.legends:
    artists += list(legend.get_texts()) + [legend.get_title()]
  out = []
  for artist in {id(a): a for a in artists if a is not None}.values():
    if not artist.get_visible() or not artist.get_text().strip():
      continue
    box = artist.get_window_extent(renderer)
    if box.width > 0 and box.height > 0:
      out.append((artist.get_text(), box))
  return out


def _overlaps(fig):
  bad = []
  for (a, box_a), (b, box_b) in itertools.combinations(_texts(fig), 2):
    # A shared pixel row at the edges is not an overlap a reader sees.
    if box_a.overlaps(box_b.shrunk(0.98, 0.9)) and box_b.overlaps(box_a.shrunk(0.98, 0.9)):
      bad.append((a, b))
  return bad


def _legend_entries_visible(fig):
  problems = []
  for legend in [ax.get_legend() for ax in fig.axes] + list(fig.legends):
    if legend is None:
      continue
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
      if isinstance(handle, Line2D):
        line = handle.get_linestyle() not in ("None", "none", "", " ") and handle.get_linewidth() > 0
        marker = handle.get_marker() not in (None, "None", "none", "", " ") and handle.get_markersize() > 0
        ok = (line or marker) and (handle.get_alpha() is None or handle.get_alpha() > 0)
      elif isinstance(handle, Patch):
        ok = handle.get_facecolor()[3] > 0 or (handle.get_edgecolor()[3] > 0 and handle.get_linewidth() > 0)
      else:
        ok = handle is not None and handle.get_visible()
      if not ok:
        problems.append(text.get_text())
  return problems


def _render(monkeypatch, draw):
  """Runs ``draw(path)`` and returns the figure it would have written, drawn."""
  figures = []

  def keep(fig, path):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    figures.append(fig)
    return str(path)

  monkeypatch.setattr(plots, "_save", keep)
  draw("unused.png")
  assert len(figures) == 1
  return figures[0]


CASES = {
    "grad_norms": lambda p: plots.plot_grad_norms(
        NORMS, p, threshold=np.where(np.arange(60) < 10, np.inf, 1.2)),
    "grad_norm_histogram": lambda p: plots.plot_grad_norm_histogram(NORMS, p, threshold=1.5),
    "learning_rate_sweep": lambda p: plots.plot_learning_rate_sweep(
        [1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.1, 2.2, np.nan], [True, True, True, False], p,
        best_learning_rate=1e-2, labels=["stable", "stable", "failed-to-train", "diverged"],
        title="Transformer (Post-LN): validation loss vs learning rate"),
    "learning_rate_sweep_own_rule": lambda p: plots.plot_learning_rate_sweep(
        [1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.1, 2.2, 3.0], [True] * 4, p, best_learning_rate=1e-2,
        labels=["stable", "stable", "failed-to-train", "failed-to-train"],
        failed_to_train=[False, False, False, True], failed_rule="loss >= unigram level - 0.1"),
    "loss_curves_coinciding": lambda p: plots.plot_loss_curves(
        {"lr* = 0.01": LOSS, "5 x lr*": SPIKY, "10 x lr*": SPIKY}, p,
        title="Long checks above lr*"),
    "every_step_loss_narrow_range": lambda p: plots.plot_every_step_loss(
        {"stride (2,2)": 3.5 - 0.05 * np.arange(200) / 200,
         "stride (1,1)": 3.45 - 0.05 * np.arange(200) / 200}, p, coarse_every=25,
        first_steps=50, title="Short check at lr 0.1"),
    "every_step_loss_spike": lambda p: plots.plot_every_step_loss(
        {"stride (2,2)": LOSS, "stride (1,1)": SPIKY}, p, coarse_every=6, first_steps=30),
    "warmup_sweep": lambda p: plots.plot_warmup_sweep(
        [0, 10, 30], [SPIKY, LOSS, LOSS * 0.9], [False, True, True], p, base_learning_rate=0.1,
        labels=["early-unstable", "stable", "stable"]),
    "stride_error_vs_learning_rate": lambda p: plots.plot_stride_error_vs_learning_rate(
        {"standard (2,2)": ([0.01, 0.1, 1.0], [0.24, 0.019, 0.028], [True, True, True]),
         "standard (2,2) + warmup": ([0.01, 0.1, 1.0], [0.15, 0.021, 0.022], [True] * 3),
         "stride (1,1)": ([0.01, 0.1, 1.0], [0.025, 0.546, 0.499], [True, True, False])}, p,
        unstable_from={"stride (1,1)": 0.1, "standard (2,2)": None}),
    "stride_grad_norms_adaptive": lambda p: plots.plot_stride_grad_norms(
        {"no clipping": NORMS, "percentile clip p90": NORMS * 1.5, "percentile clip p50": NORMS * 2},
        {"percentile clip p90": np.where(np.arange(60) < 20, 1.3, 1.1 + 0.01 * np.arange(60)),
         "percentile clip p50": 0.9}, p, learning_rate=0.1,
        labels={"no clipping": "failed-to-train", "percentile clip p90": "stable"}),
    "every_step_loss_short_run": lambda p: plots.plot_every_step_loss(
        {"a": LOSS, "b": LOSS * 1.2}, p, coarse_every=40, first_steps=30),
    "fix_curves": lambda p: plots.plot_fix_curves(
        {"lr* = 0.01, 60 steps (sweep)": LOSS},
        {"warmup, lr 0.03: helps": {"with the fix": LOSS * 0.9, "without the fix": SPIKY},
         "clipping, lr 0.03: does not help": {"with the fix": LOSS * 1.1,
                                             "without the fix": SPIKY}}, p),
    "loss_vs_learning_rate_shared_best": lambda p: plots.plot_loss_vs_learning_rate(
        {"Post-LN": ([1e-3, 3e-3, 1e-2], [2.0, 1.5, np.nan], [True, True, False], [False] * 3),
         "Post-LN + warmup": ([1e-3, 3e-3, 1e-2], [2.1, 1.5, 3.0], [True] * 3, [False, False, True]),
         "Pre-LN": ([1e-3, 3e-3, 1e-2], [2.2, 1.5, 1.9], [True] * 3, [False] * 3)}, p,
        reference=3.07, reference_label="unigram level"),
    "loss_vs_learning_rate_all_trained": lambda p: plots.plot_loss_vs_learning_rate(
        {"Post-LN": ([1e-3, 2e-3], [1.87, 1.85], [True] * 2, [False] * 2),
         "Pre-LN": ([2e-3, 3e-3], [1.85, 1.84], [True] * 2, [False] * 2)}, p,
        reference=3.07, reference_label="unigram level"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_text_overlaps_and_every_legend_entry_is_drawn(name, monkeypatch):
  fig = _render(monkeypatch, CASES[name])
  assert _overlaps(fig) == []
  assert _legend_entries_visible(fig) == []


def test_every_plot_function_is_covered():
  public = {n for n in dir(plots) if n.startswith("plot_")}
  covered = {n for n in public if any(n[len("plot_"):] in case for case in CASES)}
  assert covered == public


def test_coinciding_curves_are_told_apart(monkeypatch):
  fig = _render(monkeypatch, CASES["loss_curves_coinciding"])
  lines = [l for l in fig.axes[0].get_lines() if l.get_label() and not l.get_label().startswith("_")]
  assert len({(l.get_linestyle(), l.get_marker()) for l in lines}) == len(lines)
  assert any("identical to 5 x lr*" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_the_checks_catch_what_they_check(monkeypatch):
  """The overlap and legend checks fail on a figure made to break them."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(3, 2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.plot([1, 2], [1, 2], ls="none", label="invisible")
  ax.set_title("a title")
  ax.text(0.5, 1.02, "a title too", transform=ax.transAxes, ha="center")
  ax.legend()
  fig.canvas.draw()
  assert _overlaps(fig) and _legend_entries_visible(fig) == ["invisible"]


def _legend_texts(fig) -> list[str]:
  legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
  return [t.get_text() for legend in legends if legend is not None for t in legend.get_texts()]


def test_curves_drawn_on_top_of_each_other_are_noted(monkeypatch):
  """Not equal, but within a few pixels over the whole run: the legend says they coincide."""
  noise = 0.5 * RNG.random(400)
  stalled = 3.3 + noise
  cases = {
      "close": {"lr*": 4.0 - np.linspace(0, 2, 400) + noise, "5 x lr*": stalled,
                "10 x lr*": stalled + 0.005},
      # Apart by a tenth of the range: two curves a reader can tell apart.
      "apart": {"lr*": 4.0 - np.linspace(0, 2, 400) + noise, "5 x lr*": stalled,
                "10 x lr*": stalled + 0.25},
  }
  close = _legend_texts(_render(monkeypatch, lambda p: plots.plot_loss_curves(cases["close"], p)))
  assert any(t.startswith("10 x lr* (coincides with 5 x lr*") for t in close), close
  apart = _legend_texts(_render(monkeypatch, lambda p: plots.plot_loss_curves(cases["apart"], p)))
  assert not any("coincides" in t for t in apart), apart


def test_curves_that_part_early_do_not_coincide_on_a_log_step_axis(monkeypatch):
  """The same last 380 steps, different first 20: on a log step axis they are two curves."""
  late = 3.3 + 0.1 * RNG.random(400)
  early = late.copy()
  early[:20] = np.linspace(4.8, 3.4, 20)
  curves = {"warmup 0": late, "warmup 20": early}
  linear = _legend_texts(_render(monkeypatch, lambda p: plots.plot_loss_curves(curves, p)))
  assert any("coincides" in t for t in linear)
  log = _legend_texts(_render(monkeypatch, lambda p: plots.plot_loss_curves(curves, p, log_x=True)))
  assert not any("coincides" in t for t in log), log


def test_a_coarse_panel_with_too_few_points_is_left_out(monkeypatch):
  """200 steps evaluated every 100: two points, no panel; the title gives their values."""
  loss = np.linspace(4.0, 3.0, 200)
  fig = _render(monkeypatch, lambda p: plots.plot_every_step_loss(loss, p, coarse_every=100))
  assert len(fig.axes) == 1
  title = fig._suptitle.get_text().replace("\n", " ")
  assert "every 100 steps would see only" in title and "at step 200" in title
  fig = _render(monkeypatch, lambda p: plots.plot_every_step_loss(loss, p, coarse_every=50))
  assert len(fig.axes) == 2


def test_a_log_axis_over_about_a_decade_has_several_tick_labels(monkeypatch):
  norms = np.geomspace(0.55, 5.7, 100)
  fig = _render(monkeypatch, lambda p: plots.plot_grad_norms(norms, p))
  ax = fig.axes[0]
  low, high = ax.get_ylim()
  shown = [t.label1.get_text() for t in ax.yaxis._update_ticks() if t.label1.get_text()]
  assert ax.get_yscale() == "log" and len(shown) >= 3, (low, high, shown)


def test_the_sweep_marks_failures_by_the_rule_it_is_given(monkeypatch):
  fig = _render(monkeypatch, CASES["learning_rate_sweep_own_rule"])
  texts = _legend_texts(fig)
  assert "failed to train (1)\n(loss >= unigram level - 0.1)" in texts
  assert "trained, though the run detector labels it failed-to-train (1)" in texts


def test_best_rate_stars_on_one_rate_are_set_apart(monkeypatch):
  fig = _render(monkeypatch, CASES["loss_vs_learning_rate_shared_best"])
  stars = [l for l in fig.axes[0].get_lines() if l.get_marker() == "*" and len(l.get_xdata())]
  xs = [float(l.get_xdata()[0]) for l in stars]
  assert len(stars) == 3 and len(set(xs)) == 3
  assert all(x == pytest.approx(3e-3, rel=0.2) for x in xs)


def test_unstable_rates_and_stopped_runs_are_named_on_their_curves(monkeypatch):
  fig = _render(monkeypatch, CASES["stride_error_vs_learning_rate"])
  texts = _legend_texts(fig)
  assert "stride (1,1): unstable from 0.1" in texts
  assert not any(t.startswith("standard (2,2): unstable") for t in texts)
  arrows = [a for a in fig.axes[0].texts if getattr(a, "xy", None) is not None]
  assert [tuple(a.xy) for a in arrows] == [(0.1, pytest.approx(54.6))]
  fig = _render(monkeypatch, CASES["stride_grad_norms_adaptive"])
  assert "no clipping (failed-to-train)" in _legend_texts(fig)
  assert "percentile clip p90" in _legend_texts(fig)
  assert any(t.get_text().startswith("no clipping failed to train") for t in fig.texts)


def test_fix_curves_group_the_legend(monkeypatch):
  """Two fixes with two runs each: one entry per fix and per run kind, not per curve."""
  fig = _render(monkeypatch, CASES["fix_curves"])
  texts = _legend_texts(fig)
  assert sorted(texts) == sorted(["lr* = 0.01, 60 steps (sweep)", "with the fix", "without the fix",
                                  "warmup, lr 0.03: helps", "clipping, lr 0.03: does not help"])
  # The run without the fix is the same for both fixes: drawn once.
  assert sum(np.array_equal(l.get_ydata(), SPIKY) for l in fig.axes[0].get_lines()) == 1


def test_a_far_reference_is_named_not_drawn_when_every_run_trained(monkeypatch):
  # Every run trained, 1.84-1.87 nats: a line at 3.07 would leave them a sliver of the axes.
  fig = _render(monkeypatch, CASES["loss_vs_learning_rate_all_trained"])
  assert fig.axes[0].get_ylim()[1] < 2.0
  assert "unigram level: 3.07, above the axes" in _legend_texts(fig)
  # A curve that failed to train sits near the level: the line is drawn, on the axes.
  fig = _render(monkeypatch, CASES["loss_vs_learning_rate_shared_best"])
  assert fig.axes[0].get_ylim()[1] > 3.07 and "unigram level" in _legend_texts(fig)
