r"""Detectors: one label per training run, with its evidence (S2).

The FAQ tells two kinds of instability apart: at initialization / early in
training (including models that go unstable in the first steps and then
recover), and sudden instability in the middle of training (Figure 7b: "a
sudden loss increase after a steady decline"). Its Figure 7a calls a trial
*infeasible* when it produces NaNs or an abnormally high loss, and its Figures
4 and 6 show a third outcome: a run that stays finite but never trains. This
module turns a per-step training loss into exactly one of five labels:

* ``"diverged"`` (``DIVERGED``): the loss became NaN/Inf, or its final level is
  above ``abnormal_loss_ratio`` (2) x the larger of its initial level and the
  trivial level (it blew up and did not come back): the FAQ's infeasible;
* ``"failed-to-train"`` (``FAILED_TO_TRAIN``): finite, but stalled at the trivial
  level (the loss of a model that learned nothing, e.g. ``log(num_classes)``) or
  far worse than the sweep's best run, or, without that context, not clearly
  below its own initial level;
* ``"early-unstable"`` (``EARLY_UNSTABLE``): in the early phase, a loss spike
  (short or sustained) starts, or the loss rises above ``early_loss_ratio`` x
  the initial level by more than the early noise explains (as a
  ``early_smoothing_window``-step running median beyond
  ``early_noise_multiplier`` noise standard deviations; a raw step beyond
  ``early_spike_sigmas``; or a raw step while the gradient norm jumped
  ``early_grad_ratio`` x, when norms are given), or rebounds: rises above
  ``early_loss_ratio`` x the best level it had reached in the early phase by
  more than ``early_rebound_sigmas`` local noise standard deviations (a spike
  after a fast first drop, which need not exceed the initial level);
  ``recovered`` says whether training then came back (the FAQ's "unstable
  early, then recovers");
* ``"mid-training-unstable"`` (``MID_TRAINING_UNSTABLE``): a spike starting after
  the early phase;
* ``"stable"`` (``STABLE``): none of these.

When several apply, the label is the first of ``LABELS_BY_SEVERITY`` (diverged >
failed-to-train > early-unstable > mid-training-unstable > stable); the other
evidence stays in the ``RunDiagnosis`` fields and in its summary sentence,
which always starts with the label and never states anything the label denies.

**Context.** ``classify_run`` works on a plain array. Two optional keyword
arguments give what the curve alone cannot know: ``trivial_loss`` (the loss of
a model that learned nothing, e.g. ``log(num_classes)`` or the unigram entropy)
and ``reference_loss`` (the final smoothed training loss, ``final_loss_level``,
of the best run of the same sweep). The sweep passes both (``reference_loss``
from lr*'s trial, ``trivial_loss`` from its own ``trivial_loss=`` argument).

**Noise.** Every decision is taken on :math:`y_t = \log(\ell_t + f)`, where
:math:`f` is ``loss_floor_fraction`` x the initial level: an absolute floor, so
that a loss near zero jumping from 0.001 to 0.01 (10x, but nothing) is not a
spike. A loss that reaches zero or below (a log-likelihood, a loss with a
constant offset) has no meaningful ratios: it is judged by its height above
the run's lowest loss :math:`m`, :math:`y_t = \log(\ell_t - m + f)`, with
:math:`f` that fraction of the initial height, so a constant added to it
changes no label (and the evidence says that its ratios are measured so).
A loss that stays positive is judged by ratios, as the FAQ does; a constant
added to it moves them (nothing in the curve tells an offset from a level).
The curve's own noise is the robust standard deviation of its step to step
changes,

.. math::

  \sigma = 1.4826\,\mathrm{median}_t\,|\Delta y_t - \mathrm{median}(\Delta y)| / \sqrt{2},

measured in a centered window of ``noise_window`` steps (noise changes during
training) and never below the whole curve's; the early-phase rules use the
noise of the early phase alone (a freshly initialized model's loss is much
quieter than later minibatches'). Every threshold is the larger of a fixed
ratio and a multiple of :math:`\sigma`, so that noise alone (lognormal
minibatch noise of 0.8 in log space, say) is not instability.

**Loss spikes** (``detect_loss_spikes``), two kinds:

1. *short* (1-2 steps, the FAQ's Figure 5 swing that a running median would
   erase): a step whose :math:`y_t` exceeds both the median of the
   ``short_window`` steps before it and of the ``short_window`` steps after it
   by more than ``max(log(short_spike_ratio), short_spike_sigmas`` :math:`\sigma)`;
2. *sustained*: the centered ``smoothing_window``-step running median exceeds
   the baseline (the lowest of the initial level and the trailing
   ``baseline_window``-step medians, of at least ``smoothing_window`` steps,
   before that step: the best level reached) by more than ``max(log(1 + min_increase),
   noise_multiplier`` :math:`\sigma)` for at least ``min_duration`` steps, having
   risen within ``rise_window`` steps (sudden, not a slow drift); it ends,
   *recovered*, when back within ``recovery_fraction`` x that threshold of the
   baseline. The same test runs on the ``long_smoothing_window``-step median,
   whose noise is smaller by :math:`\sqrt{w_\text{short} / w_\text{long}}`, with the
   multiplier scaled by that factor and at least half that many steps above
   it: a rise that lasts is judged against the noise of its own duration.

**Gradient-norm outliers** (``detect_grad_norm_outliers``). On log norms, a
robust z-score against the trailing window :math:`W_t` of ``grad_window``
steps before step t:

.. math::

  z_t = \frac{\log g_t - m_t}{1.4826\,\mathrm{median}_{s \in W_t} |\log g_s - m_t|},
  \qquad m_t = \mathrm{median}_{s \in W_t} \log g_s

A step is an outlier when :math:`z_t >` ``grad_z_threshold`` and
:math:`g_t >` ``grad_min_ratio`` :math:`\cdot e^{m_t}` (the median norm). Steps with
fewer than ``grad_min_history`` earlier finite norms are not judged. A
non-finite norm is always an outlier. Outliers are evidence only: they never
change the label (only a gradient-norm jump in the early phase corroborates a
loss jump there, see ``early_grad_ratio``).

**Levels.** The *initial level* is the median of the first
``smoothing_window`` losses, kept within two noise standard deviations of
step 1's and below twice step 1's loss (so that neither a spike nor a fast
drop in the first steps moves it), the *final level* (``final_loss_level``) the
median of the last ``final_fraction`` of the steps (at least
``smoothing_window``). "Early" means the first ``early_fraction`` of the steps
(at least ``min_early_steps``). *Failed to train*: with ``reference_loss``, the
run must close ``min_progress_fraction`` (half) of the gap, in loss units,
from ``upper`` (``trivial_loss`` if given, else the initial level) to the
reference; without it, its final level must be below ``upper`` by
``log(1 + min_progress)`` in the floored log space, less twice the noise of
the initial level when ``upper`` is the (noisy) initial level: the run gets
the benefit of the doubt, so without context only clear stalls are caught.

**Feasibility and labels.** ``optstab.diagnosis.FeasibilityRule`` is the sweep's
ranking rule for Figure 7a (which trials may be lr*); the label is the curve's
verdict. A sweep never reports a trial milder than its feasibility verdict
implies (``optstab.diagnosis.sweep.judge``): a trial infeasible for a NaN/Inf is
``diverged``; one infeasible for a loss above the rule's ratio is at least
early- or mid-training-unstable by that step (``diverged`` if the last step is
still above it); one infeasible by a metric threshold is at least
``failed-to-train``. So "stable" and "infeasible" are never said of one trial.

**Where it breaks.** Noise-adapted thresholds trade power for silence: on a
curve whose minibatch noise is large, a 1.5-2x jump in the first steps is
indistinguishable from noise unless the gradient norms (pass them) show it
too; without ``trivial_loss`` / ``reference_loss`` only clear stalls are
failed-to-train; a rise that stays under 25% of the best level, or within
3.5 sigma (2 sigma if it lasts 7+ steps), is not a spike; and a rebound in the
early phase on a loss whose noise is 0.4+ in log space (a small batch at a high
rate) is noise to the detectors, though a person may see it.
``benchmarks/diagnosis_accuracy.py`` measures all of this on a labelled corpus
of real runs and on a held-out set of other seeds.

Steps are 1-based throughout, like ``TrialConfig.eval_steps()``: entry ``i``
of a ``train_loss`` array is step ``i + 1``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from optstab import _validation

__all__ = [
    "DetectorThresholds",
    "LossSpike",
    "GradNormOutlier",
    "RunDiagnosis",
    "detect_loss_spikes",
    "detect_grad_norm_outliers",
    "classify_run",
    "final_loss_level",
    "most_severe",
    "STABLE",
    "EARLY_UNSTABLE",
    "MID_TRAINING_UNSTABLE",
    "FAILED_TO_TRAIN",
    "DIVERGED",
    "LABELS",
    "LABELS_BY_SEVERITY",
]

STABLE = "stable"
EARLY_UNSTABLE = "early-unstable"
MID_TRAINING_UNSTABLE = "mid-training-unstable"
FAILED_TO_TRAIN = "failed-to-train"
DIVERGED = "diverged"
#: Every label ``classify_run`` gives.
LABELS = (STABLE, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, FAILED_TO_TRAIN, DIVERGED)
#: The labels from the most to the least severe: when several apply, the first wins.
LABELS_BY_SEVERITY = (DIVERGED, FAILED_TO_TRAIN, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, STABLE)


def most_severe(*labels: str) -> str:
  """The most severe of ``labels`` by ``LABELS_BY_SEVERITY``.

  Example:
    >>> most_severe(STABLE, EARLY_UNSTABLE, MID_TRAINING_UNSTABLE)
    'early-unstable'
  """
  for i, label in enumerate(labels):
    _validation.check_one_of(f"labels[{i}]", label, LABELS)
  return min(labels, key=LABELS_BY_SEVERITY.index)


@dataclasses.dataclass(frozen=True)
class DetectorThresholds:
  """Every threshold the detectors use (see the module docstring).

  Attributes:
    smoothing_window: centered running-median width for the loss, in steps;
      also the number of first steps whose median is the initial level.
    long_smoothing_window: sustained spikes are also looked for on this wider
      running median, against ``noise_multiplier`` x sqrt(``smoothing_window`` /
      ``long_smoothing_window``) noise standard deviations (a median of more
      steps is less noisy), lasting at least half this many steps: a rise
      that lasts counts at a smaller size.
    baseline_window: trailing running-median width whose running minimum is the
      loss baseline, in steps.
    min_increase: smallest relative rise over the baseline that counts as a
      sustained spike (0.25: the smoothed loss is 25% above the best level).
    noise_multiplier: a sustained rise must also exceed this many noise
      standard deviations of the (log) loss.
    min_duration: a sustained spike lasts at least this many steps.
    rise_window: the rise from the recent minimum to above the threshold happens
      within this many steps (sudden).
    recovery_fraction: a sustained spike ends (recovered) when the smoothed loss
      is back within this fraction of the threshold above the baseline.
    short_window: a short spike is judged against the median of this many steps
      before it and this many after it.
    short_spike_ratio: a short spike is at least this many times both medians.
    short_spike_sigmas: ...and at least this many noise standard deviations.
    loss_floor_fraction: the absolute floor added to the loss before taking
      logs, as a fraction of the initial level.
    noise_window: the noise is estimated over this many step-to-step changes
      around each step (a centered window: noise changes during training),
      and never below that of the whole curve.
    grad_window: trailing window of the gradient-norm median and MAD, in steps.
    grad_z_threshold: robust z-score above which a log gradient norm is an
      outlier.
    grad_min_ratio: an outlier is also at least this many times the median.
    grad_min_history: finite norms needed in the window before judging a step.
    early_fraction: the early phase is this fraction of the run's steps...
    min_early_steps: ...but at least this many steps.
    early_loss_ratio: a loss (running median over ``early_smoothing_window``
      steps) above this many times the initial level within the early phase
      marks the run early-unstable...
    early_smoothing_window: (that running median's width)...
    early_noise_multiplier: ...if that rise is also above this many noise
      standard deviations of the early phase.
    early_spike_sigmas: a raw early loss above ``early_loss_ratio`` x the
      initial level and this many early noise standard deviations marks it
      too...
    early_grad_ratio: ...as does a raw early loss above ``early_loss_ratio`` x
      step 1's while the gradient norm (there or one step before) is above
      this many times step 1's: the loss jump has a cause, not noise.
    early_rebound_sigmas: an early rebound (the ``early_smoothing_window``-step
      running median above ``early_loss_ratio`` x the lowest
      ``smoothing_window``-step running median before it) counts if it is also
      above this many local noise standard deviations (those of the early
      phase, or of the steps around it if larger: noise grows as the loss
      falls).
    abnormal_loss_ratio: a final level above this many times the initial level
      (or the trivial level, if larger) is a divergence that did not come back.
    final_fraction: the final level is the median of this fraction of the last
      steps (at least ``smoothing_window``).
    min_progress: without ``reference_loss``, a run that trained ends at least
      this fraction below the trivial (or initial) level.
    min_progress_fraction: with ``reference_loss``, a run that trained covers at
      least this fraction of the way from the trivial (or initial) level to the
      reference, in log space.
  """

  smoothing_window: int = 5
  long_smoothing_window: int = 15
  baseline_window: int = 25
  min_increase: float = 0.25
  noise_multiplier: float = 3.5
  min_duration: int = 3
  rise_window: int = 100
  recovery_fraction: float = 0.5
  short_window: int = 4
  short_spike_ratio: float = 3.0
  short_spike_sigmas: float = 6.0
  loss_floor_fraction: float = 0.05
  noise_window: int = 101
  grad_window: int = 50
  grad_z_threshold: float = 6.0
  grad_min_ratio: float = 2.0
  grad_min_history: int = 10
  early_fraction: float = 0.25
  min_early_steps: int = 10
  early_loss_ratio: float = 1.5
  early_smoothing_window: int = 3
  early_noise_multiplier: float = 4.0
  early_spike_sigmas: float = 6.0
  early_grad_ratio: float = 2.0
  early_rebound_sigmas: float = 5.0
  abnormal_loss_ratio: float = 2.0
  final_fraction: float = 0.1
  min_progress: float = 0.05
  min_progress_fraction: float = 0.5

  def __post_init__(self):
    for name in ("smoothing_window", "long_smoothing_window", "baseline_window", "min_duration", "rise_window",
                 "short_window", "noise_window", "early_smoothing_window", "grad_window", "grad_min_history", "min_early_steps"):
      _validation.check_positive_int(name, getattr(self, name))
    for name in ("min_increase", "noise_multiplier", "grad_z_threshold", "short_spike_sigmas",
                 "loss_floor_fraction", "min_progress", "early_noise_multiplier", "early_spike_sigmas",
                 "early_rebound_sigmas"):
      _validation.check_non_negative(name, getattr(self, name))
    for name in ("grad_min_ratio", "early_loss_ratio", "early_grad_ratio", "short_spike_ratio", "abnormal_loss_ratio"):
      _validation.check_in_range(name, getattr(self, name), 1.0, math.inf)
    for name in ("early_fraction", "final_fraction", "min_progress_fraction"):
      _validation.check_in_range(name, getattr(self, name), 0.0, 1.0, high_inclusive=True)
    _validation.check_in_range("recovery_fraction", self.recovery_fraction, 0.0, 1.0,
                               high_inclusive=True)


class LossSpike(NamedTuple):
  """A sudden loss increase: short (1-2 steps) or sustained.

  Attributes:
    step: 1-based step where the loss first exceeds the threshold.
    peak_step: 1-based step of the highest training loss within the spike.
    baseline_loss: the level the spike is measured against (the best level
      reached before a sustained spike; the lower of the medians around a
      short one).
    peak_loss: the highest training loss within the spike.
    size: peak / baseline (a ratio; 2.0 = the loss doubled): of the smoothed
      peak for a sustained spike, of the raw peak for a short one.
    duration: steps from ``step`` until recovery (or until the end).
    recovered: whether the loss came back within the threshold of the baseline.
    short: a 1-2-step spike (found on the raw loss, not the smoothed one).
  """

  step: int
  peak_step: int
  baseline_loss: float
  peak_loss: float
  size: float
  duration: int
  recovered: bool
  short: bool = False


class GradNormOutlier(NamedTuple):
  """A gradient-norm outlier: step (1-based), norm, trailing median, ratio, z."""

  step: int
  norm: float
  median: float
  ratio: float
  z: float


_CHUNK = 1 << 15  # rows per block: bounds the memory of windowed medians


def _window_stats(padded: np.ndarray, width: int, n: int, mad: bool = False):
  """NaN-ignoring median (and MAD) of ``padded[i:i + width]`` for i < n, blockwise."""
  windows = sliding_window_view(padded, width)[:n]
  median = np.empty(n)
  spread = np.empty(n) if mad else None
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN
    for lo in range(0, n, _CHUNK):
      block = windows[lo:lo + _CHUNK]
      median[lo:lo + _CHUNK] = np.nanmedian(block, axis=1)
      if mad:
        spread[lo:lo + _CHUNK] = np.nanmedian(
            np.abs(block - median[lo:lo + _CHUNK, None]), axis=1)
  return (median, spread) if mad else median


def _running_median(y: np.ndarray, window: int, centered: bool) -> np.ndarray:
  """Running median with shrinking windows at the edges (NaN-free input)."""
  n = y.size
  if centered:
    left = window // 2
    right = window - 1 - left
  else:
    left, right = window - 1, 0
  if n == 0 or left + right == 0:
    return y.copy()
  padded = np.concatenate([np.full(left, np.nan), y, np.full(right, np.nan)])
  return _window_stats(padded, left + right + 1, n)


def _first_nonfinite(loss: np.ndarray) -> Optional[int]:
  bad = np.flatnonzero(~np.isfinite(loss))
  return None if bad.size == 0 else int(bad[0])



class _Curve(NamedTuple):
  """The finite prefix of a loss curve in the space every decision is taken in."""

  loss: np.ndarray       # the raw finite prefix
  y: np.ndarray          # log(loss - offset + floor)
  offset: float          # 0, or the lowest loss when some loss is not positive
  floor: float           # the absolute floor added before the log
  sigma: np.ndarray      # robust noise of y around each step (local: noise changes in training)
  initial_level: float   # the loss level training started from (raw units)
  early_sigma: float     # robust noise of y over the early phase


def _early_steps(n: int, t: DetectorThresholds) -> int:
  return min(n, max(t.min_early_steps, int(math.ceil(t.early_fraction * n))))


def _robust_sd(d: np.ndarray) -> float:
  """Robust standard deviation of a white-noise series from its step-to-step changes ``d``."""
  if d.size < 2:
    return 0.0
  return 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)


def _curve(train_loss: Any, t: DetectorThresholds) -> _Curve:
  loss = np.asarray(train_loss, dtype=np.float64).reshape(-1)
  stop = _first_nonfinite(loss)
  x = loss if stop is None else loss[:stop]
  if x.size == 0:
    return _Curve(x, x, 0.0, 0.0, x, math.nan, 0.0)
  # The early noise is measured on the early phase alone (at least 20 steps):
  # a freshly initialized model's loss is much quieter than later minibatches'.
  head = max(_early_steps(loss.size, t), 20)
  # A loss that reaches zero or below is judged by its height above its lowest
  # value: then no decision depends on a constant added to it.
  offset = 0.0 if np.all(x > 0) else float(x.min())
  height = x - offset
  initial = float(np.median(height[:t.smoothing_window]))
  # A run that starts at its lowest loss: the floor scales with its typical height.
  scale = float(np.median(height)) if initial <= 0 else initial
  scale = scale if scale > 0 else (float(height.max()) or 1.0)
  for _ in range(2):  # the floor depends on the initial level, which depends on the noise
    floor = t.loss_floor_fraction * (initial if initial > 0 else scale)
    y = np.log(height + floor)
    early_sigma = _robust_sd(np.diff(y[:head]))
    # The median of the first steps (step 1 alone is noisy), but within two
    # noise standard deviations of step 1, and never above twice step 1's
    # loss: neither a spike in the first steps nor a fast first drop moves it
    # further (a run that blows up at once has a huge "noise").
    level = float(np.clip(np.median(y[:t.smoothing_window]), y[0] - 2.0 * early_sigma,
                          y[0] + min(2.0 * early_sigma, math.log(2.0))))
    initial = float(np.exp(level) - floor)
  return _Curve(x, y, offset, floor, _local_noise(y, t.noise_window), initial + offset,
                early_sigma)


def _local_noise(y: np.ndarray, window: int) -> np.ndarray:
  """Robust standard deviation of y's step-to-step changes in a centered window, per step."""
  n = y.size
  if n < 3:
    return np.zeros(n)
  d = np.diff(y)
  left = window // 2
  padded = np.concatenate([np.full(left, np.nan), d, np.full(window - 1 - left, np.nan)])
  _, mad = _window_stats(padded, window, d.size, mad=True)
  overall = float(np.median(np.abs(d - np.median(d))))
  # Never below the whole curve's noise: a window of ~100 changes can read low by chance.
  sigma = 1.4826 * np.fmax(mad, overall) / math.sqrt(2.0)
  return np.concatenate([sigma[:1], sigma])  # step i's noise: that of the change into it


def _to_space(c: _Curve, value: float) -> float:
  """A loss value in the curve's decision space (``-inf`` at or below ``offset - floor``)."""
  height = value - c.offset + c.floor
  return math.log(height) if height > 0 else -math.inf


def _from_space(c: _Curve, value: float) -> float:
  return float(np.exp(value) - c.floor + c.offset)


def _threshold(c: _Curve, ratio_minus_one: float, sigmas: float, level: np.ndarray) -> np.ndarray:
  """The rise threshold per step: max(log(1 + ratio_minus_one), sigmas x the local noise)."""
  return np.maximum(math.log1p(ratio_minus_one), sigmas * c.sigma[:level.shape[0]])


def _ratio(value: float, base: float) -> float:
  return float(value / base) if base > 0 else math.inf


def _size(c: _Curve, value: float, base: float) -> float:
  """``value / base`` for a positive loss; heights above the lowest loss (with the floor) else."""
  if c.offset == 0.0:
    return _ratio(value, base)
  return _ratio(value - c.offset + c.floor, base - c.offset + c.floor)


def _sustained_spikes(c: _Curve, t: DetectorThresholds) -> list[LossSpike]:
  """Sustained spikes at both time scales; a long-scale one only where no short-scale one is."""
  # The baseline's trailing median is the same at both scales: computed once.
  trailing = _running_median(c.y, t.baseline_window, centered=False)
  spikes = _sustained_spikes_at(c, t, trailing, t.smoothing_window, t.noise_multiplier,
                                t.min_duration)
  # A median over more steps is less noisy (its standard error falls like
  # 1 / sqrt(width)), so a rise that lasts is judged against less noise.
  long_sigmas = t.noise_multiplier * math.sqrt(t.smoothing_window / t.long_smoothing_window)
  taken = np.zeros(c.y.size, dtype=bool)
  for s in spikes:
    taken[s.step - 1:s.step - 1 + s.duration] = True
  for s in _sustained_spikes_at(c, t, trailing, t.long_smoothing_window, long_sigmas,
                                max(t.min_duration, t.long_smoothing_window // 2)):
    if not np.any(taken[s.step - 1:s.step - 1 + s.duration]):
      spikes.append(s)
  return sorted(spikes, key=lambda s: s.step)


def _sustained_spikes_at(c: _Curve, t: DetectorThresholds, trailing: np.ndarray, window: int,
                         sigmas: float, min_duration: int) -> list[LossSpike]:
  """Sustained spikes of the ``window``-step running median, beyond ``sigmas`` noise sd
  (``trailing``: the ``baseline_window``-step trailing median of the curve)."""
  x, y, n = c.loss, c.y, c.y.size
  smooth = _running_median(y, window, centered=True)
  # A median of too few steps is noise, not a level training reached.
  trailing = trailing.copy()
  trailing[:window - 1] = np.inf
  baseline = np.empty(n)
  baseline[0] = np.inf
  baseline[1:] = np.minimum(_to_space(c, c.initial_level), np.minimum.accumulate(trailing[:-1]))
  thr = _threshold(c, t.min_increase, sigmas, baseline)
  with np.errstate(invalid="ignore"):
    above = (smooth - baseline) > thr
  above[0] = False
  spikes = []
  i = 1
  while i < n:
    if not above[i]:
      i += 1
      continue
    start, base = i, baseline[i]
    # The spike lasts until the smoothed loss falls back within
    # recovery_fraction x the threshold of the baseline (hysteresis).
    end = start
    while end + 1 < n and smooth[end + 1] - base > t.recovery_fraction * thr[start]:
      end += 1
    i = end + 1
    if int(np.sum(above[start:end + 1])) < min_duration:
      continue
    before = smooth[max(0, start - t.rise_window):start]
    after = smooth[start:min(n, start + t.rise_window)]
    if before.size and after.max() - before.min() <= thr[start]:
      continue  # a slow drift, not a sudden rise
    peak = start + int(np.argmax(x[start:end + 1]))
    top = _from_space(c, smooth[start:end + 1].max())
    base_loss = _from_space(c, base)
    spikes.append(LossSpike(
        step=start + 1, peak_step=peak + 1, baseline_loss=base_loss,
        peak_loss=float(x[peak]), size=_size(c, top, base_loss), duration=int(end - start + 1),
        recovered=bool(end + 1 < n)))
  return spikes


def _short_spikes(c: _Curve, t: DetectorThresholds, taken: np.ndarray) -> list[LossSpike]:
  """1-2-step jumps above the level before and after them (``taken``: steps already in a spike)."""
  y, n, w = c.y, c.y.size, t.short_window
  if n < 2:
    return []
  padded = np.concatenate([np.full(w, np.nan), y, np.full(w, np.nan)])
  before = _window_stats(padded, w, n)                # median of y[i - w : i]
  after = _window_stats(padded[w + 1:], w, n)         # median of y[i + 1 : i + 1 + w]
  level = np.fmax(before, after)                      # NaN only where both sides are empty
  level[0] = np.nan                                   # step 1 is the initial loss, never a spike
  thr = _threshold(c, t.short_spike_ratio - 1.0, t.short_spike_sigmas, level)
  with np.errstate(invalid="ignore"):
    flagged = (y - level > thr) & ~taken
  spikes = []
  i = 0
  while i < n:
    if not flagged[i]:
      i += 1
      continue
    end = i
    while end + 1 < n and flagged[end + 1]:
      end += 1
    if end - i + 1 <= 2:
      peak = i + int(np.argmax(y[i:end + 1]))
      base = float(np.nanmin(np.r_[before[i], after[end]]))
      base_loss = _from_space(c, base)
      peak_loss = float(c.loss[peak])
      spikes.append(LossSpike(
          step=i + 1, peak_step=peak + 1, baseline_loss=base_loss, peak_loss=peak_loss,
          size=_size(c, peak_loss, base_loss), duration=int(end - i + 1), recovered=bool(end + 1 < n), short=True))
    i = end + 1
  return spikes


def _spikes(c: _Curve, t: DetectorThresholds) -> list[LossSpike]:
  if c.y.size < 2:
    return []
  sustained = _sustained_spikes(c, t)
  taken = np.zeros(c.y.size, dtype=bool)
  for s in sustained:
    taken[s.step - 1:s.step - 1 + s.duration] = True
  return sorted(sustained + _short_spikes(c, t, taken), key=lambda s: s.step)


def detect_loss_spikes(
    train_loss: Any, thresholds: DetectorThresholds = DetectorThresholds()
) -> list[LossSpike]:
  """Finds sudden loss increases, short (1-2 steps) or sustained (Figures 5, 7b).

  Only the finite prefix is analysed: a NaN/Inf ends the analysis (a spike open
  at that point did not recover); report non-finite steps with
  ``classify_run``.

  Args:
    train_loss: shape ``[num_steps]``, the training loss of every step.
    thresholds: the detector thresholds.

  Returns:
    The spikes, in order of ``step``.

  Example:
    >>> import numpy as np
    >>> loss = np.concatenate([np.linspace(4, 2, 100), np.full(20, 5.0), np.full(80, 2.0)])
    >>> [(s.step, round(s.size, 1), s.duration, s.recovered) for s in detect_loss_spikes(loss)]
    [(101, 2.2, 20, True)]
    >>> [(s.step, s.duration, s.short) for s in detect_loss_spikes(np.r_[2.49, 81., 4., np.full(197, 2.303)])]
    [(2, 1, True)]
  """
  return _spikes(_curve(train_loss, thresholds), thresholds)


def final_loss_level(train_loss: Any, thresholds: DetectorThresholds = DetectorThresholds()) -> float:
  """A run's final level: the median of its last ``final_fraction`` of steps (>= ``smoothing_window``).

  This is what ``classify_run``'s ``reference_loss`` expects (of the sweep's
  best run). NaN if the last step is not finite.

  Example:
    >>> final_loss_level(np.r_[np.full(90, 2.0), [1.0, 1.0, 9.0, 1.0, 1.0] * 2])
    1.0
  """
  loss = np.asarray(train_loss, dtype=np.float64).reshape(-1)
  if loss.size == 0 or not np.isfinite(loss[-1]):
    return math.nan
  tail = max(thresholds.smoothing_window, int(math.ceil(thresholds.final_fraction * loss.size)))
  tail = loss[-tail:]
  return float(np.median(tail[np.isfinite(tail)]))


def detect_grad_norm_outliers(
    grad_norms: Any, thresholds: DetectorThresholds = DetectorThresholds()
) -> list[GradNormOutlier]:
  """Finds steps whose gradient norm is an outlier against the recent past.

  Args:
    grad_norms: shape ``[num_steps]``, the unclipped global gradient norm of
      every step.
    thresholds: the detector thresholds.

  Returns:
    The outliers, in order of step.

  Example:
    >>> import numpy as np
    >>> norms = np.exp(np.random.default_rng(0).normal(0, 0.1, 200)); norms[150] = 30.0
    >>> [o.step for o in detect_grad_norm_outliers(norms)]
    [151]
  """
  t = thresholds
  g = np.asarray(grad_norms, dtype=np.float64).reshape(-1)
  n = g.size
  if n == 0:
    return []
  with np.errstate(divide="ignore", invalid="ignore"):
    y = np.where(np.isfinite(g) & (g > 0), np.log(np.where(g > 0, g, 1.0)), np.nan)
  w = t.grad_window
  padded = np.concatenate([np.full(w, np.nan), y])  # window of step i: y[i - w : i]
  median, mad = _window_stats(padded, w, n, mad=True)
  count = np.convolve(np.isfinite(padded).astype(np.int64), np.ones(w, np.int64), "valid")[:n]
  judged = count >= t.grad_min_history
  with np.errstate(all="ignore"):
    rise = y - median
    z = rise / np.maximum(1.4826 * mad, 1e-12)
  nonfinite = judged & ~np.isfinite(g)
  big = judged & np.isfinite(rise) & (z > t.grad_z_threshold) & (rise > math.log(t.grad_min_ratio))
  outliers = []
  for i in np.flatnonzero(nonfinite | big):
    typical = float(np.exp(median[i]))
    if nonfinite[i]:
      outliers.append(GradNormOutlier(int(i) + 1, float(g[i]), typical, math.inf, math.inf))
    else:
      outliers.append(GradNormOutlier(int(i) + 1, float(g[i]), typical, float(np.exp(rise[i])),
                                      float(z[i])))
  return outliers


@dataclasses.dataclass(frozen=True)
class RunDiagnosis:
  """One run's label, with the evidence.

  Attributes:
    label: one of ``LABELS``: the most severe kind that applies.
    early_unstable: early-phase instability evidence exists (a spike, an early
      loss above ``early_loss_ratio`` x the initial level, or a NaN/Inf there).
    mid_training_unstable: a spike or a NaN/Inf after the early phase exists.
    failed_to_train: the run stayed finite but did not train (see
      ``failure``); ``False`` for a diverged run.
    diverged: NaN/Inf, or a final level above ``abnormal_loss_ratio`` x the
      initial level.
    recovered: for an early-unstable run, whether training recovered (finite
      to the end, every early spike recovered, and the final level below the
      initial one); ``None`` for other labels.
    early_steps: length of the early phase, in steps.
    early_max_loss_ratio: the highest early loss / the step-1 loss (raw; the
      decision uses the running median and the initial level).
    early_peak_step: the 1-based step of that highest early loss.
    early_rise_ratio: the highest early running median / the initial level
      (what the ``early_loss_ratio`` test compares).
    early_rebound_step: the 1-based step of the largest early rebound that
      counts (see ``DetectorThresholds.early_rebound_sigmas``), or ``None``.
    early_rebound_ratio: that rebound's running median / ``early_best_loss``.
    early_best_loss: the best level (running median) reached before it.
    first_loss: the step-1 loss.
    initial_loss: the initial level (median of the first ``smoothing_window``
      losses, kept near step 1's).
    final_loss: the final level (``final_loss_level``); NaN after a NaN/Inf.
    trivial_loss, reference_loss: the context given to ``classify_run``.
    failure: the sentence saying why the run failed to train or diverged
      (without a NaN/Inf), else ``None``.
    first_nonfinite_step: the first step with a NaN/Inf loss, or ``None``.
    loss_spikes: ``detect_loss_spikes``'s events.
    grad_norm_outliers: ``detect_grad_norm_outliers``'s events (empty if no
      norms were given).
    loss_offset: ``None`` for a positive loss; for one that reaches zero or
      below, its lowest value: every ratio (spike sizes, ``early_rise_ratio``,
      ``early_rebound_ratio``) is then one of heights above it (with the
      floor), and ``early_max_loss_ratio`` is NaN, the FAQ's ratios having no
      meaning for such a loss.
  """

  label: str
  early_unstable: bool
  mid_training_unstable: bool
  recovered: Optional[bool]
  early_steps: int
  early_max_loss_ratio: float
  first_nonfinite_step: Optional[int]
  loss_spikes: tuple[LossSpike, ...]
  grad_norm_outliers: tuple[GradNormOutlier, ...]
  failed_to_train: bool = False
  diverged: bool = False
  early_peak_step: Optional[int] = None
  early_rise_ratio: float = math.nan
  early_rebound_step: Optional[int] = None
  early_rebound_ratio: float = math.nan
  early_best_loss: float = math.nan
  first_loss: float = math.nan
  initial_loss: float = math.nan
  final_loss: float = math.nan
  trivial_loss: Optional[float] = None
  reference_loss: Optional[float] = None
  failure: Optional[str] = None
  loss_offset: Optional[float] = None

  @property
  def headline(self) -> str:
    """The label, with ``(then recovered)`` / ``(did not recover)`` for early instability."""
    if self.label == EARLY_UNSTABLE:
      return self.label + (" (then recovered)" if self.recovered else " (did not recover)")
    return self.label

  def evidence(self, include_none: bool = True) -> list[str]:
    """The evidence, one clause each, in the order ``summary`` cites it.

    Args:
      include_none: when there is no loss evidence, say so ("no loss spike and
        no NaN/Inf", with the initial and final levels).
    """
    parts = []
    if self.first_nonfinite_step is not None:
      parts.append(f"the loss became NaN/Inf at step {self.first_nonfinite_step}")
    if self.failure is not None:
      parts.append(self.failure)
    early_spike = any(s.step <= self.early_steps for s in self.loss_spikes)
    early_nan = self.first_nonfinite_step is not None and self.first_nonfinite_step <= self.early_steps
    measured = "" if self.loss_offset is None else (
        f", heights above the run's lowest loss {self.loss_offset:.4g}")
    if self.early_unstable and not early_spike and not early_nan:
      if self.early_rebound_step is not None and self.loss_offset is not None:
        parts.append(
            f"within the first {self.early_steps} steps the loss rebounded: at step "
            f"{self.early_rebound_step}, as a running median, it was {self.early_rebound_ratio:.3g} x "
            f"the best level {self.early_best_loss:.4g} it had reached before{measured}")
      elif self.loss_offset is not None:
        parts.append(
            f"within the first {self.early_steps} steps the loss rose to "
            f"{self.early_rise_ratio:.3g} x the initial level {self.initial_loss:.4g} as a "
            f"running median{measured} (raw peak at step {self.early_peak_step})")
      elif self.early_rebound_step is not None:
        parts.append(
            f"within the first {self.early_steps} steps the loss rebounded: at step "
            f"{self.early_rebound_step}, as a running median, it was {self.early_rebound_ratio:.3g} x "
            f"the best level {self.early_best_loss:.4g} it had reached before (raw peak "
            f"{self.early_max_loss_ratio * self.first_loss:.4g} at step {self.early_peak_step})")
      else:
        parts.append(
            f"within the first {self.early_steps} steps the loss rose to "
            f"{self.early_max_loss_ratio * self.first_loss:.4g} at step {self.early_peak_step}, "
            f"{self.early_max_loss_ratio:.3g} x step 1's {self.first_loss:.4g} (as a running median, "
            f"{self.early_rise_ratio:.3g} x the initial level {self.initial_loss:.4g})")
    for s in self.loss_spikes[:3]:
      if s.short:
        back = "came back the next step" if s.recovered else "did not come back"
        parts.append(
            f"at step {s.step} the loss jumped to {s.peak_loss:.4g}, {s.size:.3g} x the level "
            f"{s.baseline_loss:.4g} around it{measured}, for {s.duration} step(s), and {back}")
      else:
        state = f"recovered after {s.duration} steps" if s.recovered else "did not recover"
        parts.append(
            f"from step {s.step} the loss rose to {s.size:.3g} x its best level so far "
            f"{s.baseline_loss:.4g}{measured} (peak {s.peak_loss:.4g} at step {s.peak_step}) "
            f"and {state}")
    if len(self.loss_spikes) > 3:
      parts.append(f"{len(self.loss_spikes) - 3} more loss spikes")
    if not parts and include_none:
      parts.append("no loss spike and no NaN/Inf")
      if math.isfinite(self.initial_loss) and math.isfinite(self.final_loss):
        parts[-1] += (f"; the loss went from {self.initial_loss:.4g} (initial level) to "
                      f"{self.final_loss:.4g} (final level)")
    if self.grad_norm_outliers and self.first_nonfinite_step is None:
      o = max(self.grad_norm_outliers, key=lambda o: o.ratio)
      parts.append(
          f"{len(self.grad_norm_outliers)} gradient-norm outlier step(s), the largest "
          f"{o.ratio:.3g} x the recent median at step {o.step}")
    return parts

  def summary(self) -> str:
    """One plain-language sentence: the label, then its evidence."""
    return f"{self.headline}: " + "; ".join(self.evidence())

  def to_dict(self) -> dict[str, Any]:
    def clean(v):
      return v if not isinstance(v, float) or math.isfinite(v) else None

    return {
        "label": self.label,
        "early_unstable": self.early_unstable,
        "mid_training_unstable": self.mid_training_unstable,
        "failed_to_train": self.failed_to_train,
        "diverged": self.diverged,
        "recovered": self.recovered,
        "early_steps": self.early_steps,
        "early_max_loss_ratio": clean(self.early_max_loss_ratio),
        "early_peak_step": self.early_peak_step,
        "early_rise_ratio": clean(self.early_rise_ratio),
        "early_rebound_step": self.early_rebound_step,
        "early_rebound_ratio": clean(self.early_rebound_ratio),
        "early_best_loss": clean(self.early_best_loss),
        "first_loss": clean(self.first_loss),
        "initial_loss": clean(self.initial_loss),
        "final_loss": clean(self.final_loss),
        "trivial_loss": self.trivial_loss,
        "reference_loss": self.reference_loss,
        "failure": self.failure,
        "first_nonfinite_step": self.first_nonfinite_step,
        "loss_spikes": [{k: clean(v) for k, v in s._asdict().items()} for s in self.loss_spikes],
        "grad_norm_outliers": [
            {k: clean(v) for k, v in o._asdict().items()} for o in self.grad_norm_outliers
        ],
        "summary": self.summary(),
    }


def _grad_jumps(grad_norms: Any, count: int, t: DetectorThresholds) -> np.ndarray:
  """Per early step 2.. (``count`` of them): the gradient norm there, or one step
  before, is at least ``early_grad_ratio`` x step 1's."""
  if grad_norms is None:
    return np.zeros(count, bool)
  g = np.asarray(grad_norms, dtype=np.float64).reshape(-1)[:count + 1]
  if g.size < 2 or not (np.isfinite(g[0]) and g[0] > 0):
    return np.zeros(count, bool)
  with np.errstate(invalid="ignore"):
    high = np.where(np.isfinite(g), g, np.inf) >= t.early_grad_ratio * g[0]
  jump = high[1:] | high[:-1]
  return np.pad(jump, (0, count - jump.size))


class _Rebound(NamedTuple):
  step: int          # 1-based
  ratio: float       # running median / best level before it
  best_loss: float   # that best level, in loss units


def _early_rebound(c: _Curve, early_steps: int, t: DetectorThresholds,
                   ratio_limit: float) -> Optional[_Rebound]:
  """The largest early rise of the running median above the best level reached
  before it that beats both ``ratio_limit`` and ``early_rebound_sigmas`` noise
  standard deviations; ``None`` if there is none."""
  y = c.y[:early_steps]
  if y.size < 2 or not math.isfinite(c.initial_level):
    return None
  recent = _running_median(y, t.early_smoothing_window, centered=True)
  settled = _running_median(y, t.smoothing_window, centered=True)
  best = np.minimum.accumulate(np.r_[_to_space(c, c.initial_level), settled[:-1]])
  rise = recent - best
  limit = np.maximum(ratio_limit, t.early_rebound_sigmas * np.maximum(c.early_sigma, c.sigma[:y.size]))
  counts = rise > limit
  if not np.any(counts):
    return None
  i = int(np.argmax(np.where(counts, rise - limit, -np.inf)))
  best_loss = _from_space(c, best[i])
  return _Rebound(i + 1, _size(c, _from_space(c, recent[i]), best_loss), best_loss)


def _failure(c: _Curve, final: float, t: DetectorThresholds, trivial: Optional[float],
             reference: Optional[float]) -> tuple[bool, Optional[str]]:
  """(diverged, why) or (failed to train, why) from the levels; (False, None) if it trained."""
  end = _to_space(c, final)
  top = c.initial_level if trivial is None else max(c.initial_level, float(trivial))
  # For a loss that reaches zero or below: heights above its lowest value, with the floor.
  shift = 0.0 if c.offset == 0.0 else c.floor - c.offset
  if top + shift > 0 and final + shift > t.abnormal_loss_ratio * (top + shift):
    measured = "" if c.offset == 0.0 else (
        f", measured as heights above the run's lowest loss {c.offset:.4g} (a loss that "
        "reaches zero or below has no ratios of its own)")
    return True, (f"the final loss level {final:.4g} is {(final + shift) / (top + shift):.3g} x "
                  f"the {'initial' if top == c.initial_level else 'trivial'} level {top:.4g} "
                  f"(limit {t.abnormal_loss_ratio:g} x{measured}): it blew up and did not come "
                  "back")
  upper_value = c.initial_level if trivial is None else float(trivial)
  upper_name = "its initial level" if trivial is None else "the trivial level"
  upper = _to_space(c, upper_value)
  margin = math.log1p(t.min_progress)
  if reference is not None and math.isfinite(reference):
    # In the loss's own units: the fraction of the gap closed.
    gap = upper_value - float(reference)
    if gap > t.min_progress * abs(upper_value - c.offset):
      progress = (upper_value - final) / gap
      if progress < t.min_progress_fraction:
        return False, (
            f"the final loss level {final:.4g} closes {max(progress, 0.0):.0%} of the gap from "
            f"{upper_name} {upper_value:.4g} to the best run's {float(reference):.4g} (it needs "
            f"{t.min_progress_fraction:.0%}): it did not train")
      return False, None
  if trivial is None:
    # The initial level is itself a noisy median: give the run the benefit of
    # the doubt for twice its standard error, so that noise is not a failure.
    m = min(t.smoothing_window, c.y.size)
    margin -= 2.0 * 1.2533 * float(np.median(c.sigma[:m])) / math.sqrt(m)
  if upper - end < margin:
    return False, (f"the final loss level {final:.4g} is not clearly below {upper_name} "
                   f"{upper_value:.4g}: it stalled and did not train")
  return False, None


def classify_run(
    train_loss: Any,
    grad_norms: Any = None,
    thresholds: DetectorThresholds = DetectorThresholds(),
    *,
    trivial_loss: Optional[float] = None,
    reference_loss: Optional[float] = None,
) -> RunDiagnosis:
  """Labels a run (one of ``LABELS``), with the evidence.

  Args:
    train_loss: shape ``[num_steps]``, the training loss of every step.
    grad_norms: optional, shape ``[num_steps]``: reported as evidence (the
      label depends on the loss only).
    thresholds: the detector thresholds.
    trivial_loss: the loss of a model that learned nothing (e.g.
      ``log(num_classes)`` for a classifier, the unigram entropy for a language
      model); a run whose final level is not below it by ``min_progress`` failed
      to train. Default: use the run's own initial level.
    reference_loss: the final level (``final_loss_level``) of the best run of
      the same sweep; a run that covers less than ``min_progress_fraction`` of
      the way from the trivial (or initial) level to it failed to train.

  Returns:
    A ``RunDiagnosis``.

  Example:
    >>> import numpy as np
    >>> d = classify_run(np.r_[2.49, 81., 4., np.full(197, 2.303)])
    >>> d.label, d.recovered
    ('early-unstable', True)
    >>> classify_run(np.r_[2.49, 81., 4., np.full(197, 2.303)], trivial_loss=np.log(10)).label
    'failed-to-train'
  """
  t = thresholds
  loss = np.asarray(train_loss, dtype=np.float64).reshape(-1)
  n = loss.size
  if n == 0:
    raise ValueError("train_loss must hold at least one step; got an empty array.")
  for name, value in (("trivial_loss", trivial_loss), ("reference_loss", reference_loss)):
    if value is not None:
      _validation.check_in_range(name, value, -math.inf, math.inf)
  early_steps = _early_steps(n, t)
  stop = _first_nonfinite(loss)
  first_nonfinite = None if stop is None else stop + 1
  c = _curve(loss, t)
  spikes = tuple(_spikes(c, t))
  outliers = () if grad_norms is None else tuple(detect_grad_norm_outliers(grad_norms, t))
  early = c.loss[:early_steps]
  early_ratio, early_peak, smoothed_rise = math.nan, None, -math.inf
  if early.size:
    early_peak = int(np.argmax(early)) + 1
  if early.size and loss[0] > 0 and c.offset == 0.0:
    early_ratio = float(early.max() / loss[0])
  if early.size and math.isfinite(c.initial_level):
    # Decide on the running median against the initial level: one noisy
    # minibatch, or a noisy first step, is not instability.
    smooth = _running_median(c.y[:early_steps], t.early_smoothing_window, centered=True)
    smoothed_rise = float(smooth.max()) - _to_space(c, c.initial_level)
  early_limit = max(math.log(t.early_loss_ratio), t.early_noise_multiplier * c.early_sigma)
  # A raw early loss far above the initial level counts too (short spikes are
  # what the FAQ's Figure 5 shows), if the early noise cannot explain it.
  raw_rise = raw_jump = np.full(1, -np.inf)
  if early.size > 1 and math.isfinite(c.initial_level):
    raw_rise = c.y[1:early_steps] - _to_space(c, c.initial_level)
    # With the gradient norm to corroborate, against step 1's own loss.
    raw_jump = c.y[1:early_steps] - c.y[0]
  ratio_limit = math.log(t.early_loss_ratio)
  noise_limit = max(ratio_limit, t.early_spike_sigmas * c.early_sigma)
  corroborated = _grad_jumps(grad_norms, raw_rise.size, t)
  rebound = _early_rebound(c, early_steps, t, ratio_limit)
  early_evidence = (
      (first_nonfinite is not None and first_nonfinite <= early_steps)
      or any(s.step <= early_steps for s in spikes)
      or smoothed_rise > early_limit
      or bool(np.any(raw_rise > noise_limit))
      or bool(np.any((raw_jump > ratio_limit) & corroborated))
      or rebound is not None
  )
  mid_evidence = (
      (first_nonfinite is not None and first_nonfinite > early_steps)
      or any(s.step > early_steps for s in spikes)
  )
  final = final_loss_level(loss, t)
  diverged, failed, why = first_nonfinite is not None, False, None
  if not diverged and c.loss.size and math.isfinite(c.initial_level):
    blew_up, why = _failure(c, final, t, trivial_loss, reference_loss)
    diverged, failed = blew_up, why is not None and not blew_up
  recovered = None
  if diverged:
    label = DIVERGED
  elif failed:
    label = FAILED_TO_TRAIN
  elif early_evidence:
    label = EARLY_UNSTABLE
  elif mid_evidence:
    label = MID_TRAINING_UNSTABLE
  else:
    label = STABLE
  if label == EARLY_UNSTABLE:
    recovered = bool(
        all(s.recovered for s in spikes if s.step <= early_steps) and final < c.initial_level)
  return RunDiagnosis(
      label=label,
      early_unstable=bool(early_evidence),
      mid_training_unstable=bool(mid_evidence),
      recovered=recovered,
      early_steps=int(early_steps),
      early_max_loss_ratio=early_ratio,
      first_nonfinite_step=first_nonfinite,
      loss_spikes=spikes,
      grad_norm_outliers=outliers,
      failed_to_train=bool(failed),
      diverged=bool(diverged),
      early_peak_step=early_peak,
      early_rebound_step=None if rebound is None else rebound.step,
      early_rebound_ratio=math.nan if rebound is None else rebound.ratio,
      early_best_loss=math.nan if rebound is None else rebound.best_loss,
      first_loss=float(loss[0]),
      early_rise_ratio=(_size(c, _from_space(c, _to_space(c, c.initial_level) + smoothed_rise),
                              c.initial_level)
                        if math.isfinite(smoothed_rise) and c.initial_level - c.offset + c.floor > 0
                        else math.nan),
      initial_loss=float(c.initial_level),
      final_loss=float(final),
      trivial_loss=None if trivial_loss is None else float(trivial_loss),
      reference_loss=None if reference_loss is None else float(reference_loss),
      failure=why,
      loss_offset=None if c.offset == 0.0 else c.offset,
  )
