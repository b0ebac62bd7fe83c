r"""Detectors: loss spikes, gradient-norm outliers, and a run's instability kind (S2).

The FAQ tells two kinds of instability apart: at initialization / early in
training (including models that go unstable in the first steps and then
recover), and sudden instability in the middle of training (Figure 7b: "a
sudden loss increase after a steady decline"). It also asks to log the
gradient norm, because outliers can cause mid-training instability. This module
finds both kinds of evidence in plain per-step arrays; every threshold lives in
``DetectorThresholds`` (frozen, documented, configurable).

**Loss spikes** (``detect_loss_spikes``). On the log of the training loss
(linear if a loss is not positive):

1. smooth with a centered running median of ``smoothing_window`` steps, which
   removes single-step noise but keeps any rise lasting a few steps;
2. the baseline at step t is the lowest value, before t, of a trailing running
   median of ``baseline_window`` steps: the best level training had reached
   (on a falling curve it lags by about half that window, so ``size`` is a
   slight underestimate there);
3. the detection threshold is the larger of ``log(1 + min_increase)`` and
   ``noise_multiplier`` robust standard deviations (MAD) of the residual
   noise around the smoothed curve;
4. a spike starts when the smoothed loss exceeds baseline + threshold, and
   ends, *recovered*, when it is back below baseline + ``recovery_fraction`` x
   threshold (hysteresis); one still open at the last step did not recover.
   It counts if the smoothed loss was above the threshold for at least
   ``min_duration`` of its steps (sustained) and its rise happened within
   ``rise_window`` steps (sudden, not a slow drift).

**Gradient-norm outliers** (``detect_grad_norm_outliers``). On log norms, a
robust z-score against the trailing window :math:`W_t` of ``grad_window``
steps before step t:

.. math::

  z_t = \frac{\log g_t - m_t}{1.4826\,\mathrm{median}_{s \in W_t} |\log g_s - m_t|},
  \qquad m_t = \mathrm{median}_{s \in W_t} \log g_s

A step is an outlier when :math:`z_t >` ``grad_z_threshold`` and
:math:`g_t >` ``grad_min_ratio`` :math:`\cdot e^{m_t}` (the median norm). Steps with
fewer than ``grad_min_history`` earlier finite norms are not judged. A
non-finite norm is always an outlier.

**Classification** (``classify_run``). "early" means the first
``early_fraction`` of the steps (at least ``min_early_steps``).
``"early-unstable"``: a non-finite loss, a spike starting early, or a loss
(running median over ``smoothing_window`` steps, so one noisy minibatch does
not count) above ``early_loss_ratio`` x the initial loss, within the early phase
(``recovered`` says whether training then recovered: the FAQ's "unstable early
then recovers"). ``"mid-training-unstable"``: a non-finite loss or a spike
starting after it. ``"stable"``: neither.

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
    "STABLE",
    "EARLY_UNSTABLE",
    "MID_TRAINING_UNSTABLE",
]

STABLE = "stable"
EARLY_UNSTABLE = "early-unstable"
MID_TRAINING_UNSTABLE = "mid-training-unstable"


@dataclasses.dataclass(frozen=True)
class DetectorThresholds:
  """Every threshold the detectors use (see the module docstring).

  Attributes:
    smoothing_window: centered running-median width for the loss, in steps.
    baseline_window: trailing running-median width whose running minimum is the
      loss baseline, in steps.
    min_increase: smallest relative rise over the baseline that counts as a
      spike (0.25: the smoothed loss is 25% above the best level reached).
    noise_multiplier: the rise must also exceed this many robust noise standard
      deviations of the (log) loss.
    min_duration: a spike lasts at least this many steps.
    rise_window: the rise from the recent minimum to above the threshold happens
      within this many steps (sudden).
    recovery_fraction: a spike ends (recovered) when the smoothed loss is back
      within this fraction of the threshold above the baseline (hysteresis, so
      noise on a slow recovery does not split one spike into several).
    grad_window: trailing window of the gradient-norm median and MAD, in steps.
    grad_z_threshold: robust z-score above which a log gradient norm is an
      outlier.
    grad_min_ratio: an outlier is also at least this many times the median.
    grad_min_history: finite norms needed in the window before judging a step.
    early_fraction: the early phase is this fraction of the run's steps...
    min_early_steps: ...but at least this many steps.
    early_loss_ratio: a loss above this many times the initial loss within the
      early phase marks the run early-unstable.
  """

  smoothing_window: int = 5
  baseline_window: int = 25
  min_increase: float = 0.25
  noise_multiplier: float = 4.0
  min_duration: int = 3
  rise_window: int = 100
  recovery_fraction: float = 0.5
  grad_window: int = 50
  grad_z_threshold: float = 6.0
  grad_min_ratio: float = 2.0
  grad_min_history: int = 10
  early_fraction: float = 0.1
  min_early_steps: int = 10
  early_loss_ratio: float = 2.0

  def __post_init__(self):
    for name in ("smoothing_window", "baseline_window", "min_duration", "rise_window",
                 "grad_window", "grad_min_history", "min_early_steps"):
      _validation.check_positive_int(name, getattr(self, name))
    for name in ("min_increase", "noise_multiplier", "grad_z_threshold"):
      _validation.check_non_negative(name, getattr(self, name))
    _validation.check_in_range("grad_min_ratio", self.grad_min_ratio, 1.0, math.inf)
    _validation.check_in_range("early_loss_ratio", self.early_loss_ratio, 1.0, math.inf)
    _validation.check_in_range("early_fraction", self.early_fraction, 0.0, 1.0, high_inclusive=True)
    _validation.check_in_range("recovery_fraction", self.recovery_fraction, 0.0, 1.0,
                               high_inclusive=True)


class LossSpike(NamedTuple):
  """A sudden sustained loss increase.

  Attributes:
    step: 1-based step where the smoothed loss first exceeds the threshold.
    peak_step: 1-based step of the highest training loss within the spike.
    baseline_loss: the best (running-minimum) loss level before the spike.
    peak_loss: the highest training loss within the spike.
    size: smoothed peak / baseline (a ratio; 2.0 = the loss doubled).
    duration: steps from ``step`` until recovery (or until the end).
    recovered: whether the loss came back within the threshold of the baseline.
  """

  step: int
  peak_step: int
  baseline_loss: float
  peak_loss: float
  size: float
  duration: int
  recovered: bool


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


def detect_loss_spikes(
    train_loss: Any, thresholds: DetectorThresholds = DetectorThresholds()
) -> list[LossSpike]:
  """Finds sudden sustained loss increases (Figure 7b) in a per-step loss curve.

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
  """
  t = thresholds
  loss = np.asarray(train_loss, dtype=np.float64).reshape(-1)
  stop = _first_nonfinite(loss)
  x = loss if stop is None else loss[:stop]
  n = x.size
  if n < 2:
    return []
  log_scale = bool(np.all(x > 0))
  y = np.log(x) if log_scale else x
  smooth = _running_median(y, t.smoothing_window, centered=True)
  trailing = _running_median(y, t.baseline_window, centered=False)
  baseline = np.empty(n)
  baseline[0] = np.inf
  baseline[1:] = np.minimum.accumulate(trailing[:-1])
  resid = y - smooth
  sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
  if log_scale:
    floor = np.full(n, math.log1p(t.min_increase))
  else:
    floor = t.min_increase * np.abs(baseline)
  thr = np.maximum(floor, t.noise_multiplier * sigma)
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
    if int(np.sum(above[start:end + 1])) < t.min_duration:
      continue
    before = smooth[max(0, start - t.rise_window):start]
    after = smooth[start:min(n, start + t.rise_window)]
    if before.size and after.max() - before.min() <= thr[start]:
      continue  # a slow drift, not a sudden rise
    recovered = end + 1 < n
    duration = end - start + 1
    peak = start + int(np.argmax(x[start:end + 1]))
    top = smooth[start:end + 1].max()
    if log_scale:
      size = float(np.exp(top - base))
    else:
      size = float(top / base) if base > 0 else math.inf
    spikes.append(LossSpike(
        step=start + 1,
        peak_step=peak + 1,
        baseline_loss=float(np.exp(base)) if log_scale else float(base),
        peak_loss=float(x[peak]),
        size=size,
        duration=int(duration),
        recovered=bool(recovered),
    ))
  return spikes


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
  """One run's instability kind, with the evidence.

  Attributes:
    label: ``"stable"``, ``"early-unstable"`` or ``"mid-training-unstable"``.
    early_unstable: early-phase evidence exists (also set when ``label`` is
      early-unstable).
    mid_training_unstable: evidence after the early phase exists.
    recovered: for an early-unstable run, whether training recovered (finite
      to the end, every early spike recovered, and the final loss below the
      initial one); ``None`` otherwise.
    early_steps: length of the early phase, in steps.
    early_max_loss_ratio: the highest early loss / the initial loss (raw; the
      label compares the running median with ``early_loss_ratio``).
    first_nonfinite_step: the first step with a NaN/Inf loss, or ``None``.
    loss_spikes: ``detect_loss_spikes``'s events.
    grad_norm_outliers: ``detect_grad_norm_outliers``'s events (empty if no
      norms were given).
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

  def summary(self) -> str:
    """One plain-language sentence citing the evidence."""
    parts = []
    if self.first_nonfinite_step is not None:
      parts.append(f"the loss became NaN/Inf at step {self.first_nonfinite_step}")
    if self.early_max_loss_ratio > 1.0 and self.early_unstable:
      parts.append(
          f"within the first {self.early_steps} steps the loss reached "
          f"{self.early_max_loss_ratio:.3g} x its initial value"
      )
    for s in self.loss_spikes[:3]:
      state = f"recovered after {s.duration} steps" if s.recovered else "did not recover"
      parts.append(
          f"from step {s.step} the loss rose to {s.size:.3g} x its best level so far "
          f"{s.baseline_loss:.4g} (peak {s.peak_loss:.4g} at step {s.peak_step}) and {state}"
      )
    if len(self.loss_spikes) > 3:
      parts.append(f"{len(self.loss_spikes) - 3} more loss spikes")
    if self.grad_norm_outliers and self.first_nonfinite_step is None:
      o = max(self.grad_norm_outliers, key=lambda o: o.ratio)
      parts.append(
          f"{len(self.grad_norm_outliers)} gradient-norm outlier step(s), the largest "
          f"{o.ratio:.3g} x the recent median at step {o.step}"
      )
    label = self.label
    if self.label == EARLY_UNSTABLE and self.recovered:
      label += " (then recovered)"
    if not parts:
      return f"{label}: no loss spike, no NaN/Inf and no gradient-norm outlier"
    return f"{label}: " + "; ".join(parts)

  def to_dict(self) -> dict[str, Any]:
    def clean(v):
      return v if not isinstance(v, float) or math.isfinite(v) else None

    return {
        "label": self.label,
        "early_unstable": self.early_unstable,
        "mid_training_unstable": self.mid_training_unstable,
        "recovered": self.recovered,
        "early_steps": self.early_steps,
        "early_max_loss_ratio": clean(self.early_max_loss_ratio),
        "first_nonfinite_step": self.first_nonfinite_step,
        "loss_spikes": [{k: clean(v) for k, v in s._asdict().items()} for s in self.loss_spikes],
        "grad_norm_outliers": [
            {k: clean(v) for k, v in o._asdict().items()} for o in self.grad_norm_outliers
        ],
        "summary": self.summary(),
    }


def classify_run(
    train_loss: Any,
    grad_norms: Any = None,
    thresholds: DetectorThresholds = DetectorThresholds(),
) -> RunDiagnosis:
  """Labels a run stable, early-unstable or mid-training-unstable, with evidence.

  Args:
    train_loss: shape ``[num_steps]``, the training loss of every step.
    grad_norms: optional, shape ``[num_steps]``: reported as evidence (the
      label depends on the loss only).
    thresholds: the detector thresholds.

  Returns:
    A ``RunDiagnosis``.

  Example:
    >>> import numpy as np
    >>> loss = np.concatenate([[2.0, 2.5, 60.0, 80.0, 40.0, 5.0], np.linspace(2.0, 0.5, 194)])
    >>> d = classify_run(loss)
    >>> d.label, d.recovered
    ('early-unstable', True)
  """
  t = thresholds
  loss = np.asarray(train_loss, dtype=np.float64).reshape(-1)
  n = loss.size
  if n == 0:
    raise ValueError("train_loss must hold at least one step; got an empty array.")
  early_steps = min(n, max(t.min_early_steps, int(math.ceil(t.early_fraction * n))))
  stop = _first_nonfinite(loss)
  first_nonfinite = None if stop is None else stop + 1
  spikes = tuple(detect_loss_spikes(loss, t))
  outliers = () if grad_norms is None else tuple(detect_grad_norm_outliers(grad_norms, t))
  early = loss[:early_steps]
  early = early[:_first_nonfinite(early)] if _first_nonfinite(early) is not None else early
  initial = loss[0]
  early_ratio = smoothed_ratio = math.nan
  if early.size and np.isfinite(initial) and initial > 0:
    early_ratio = float(early.max() / initial)
    # Decide on the running median: a single noisy minibatch is not instability.
    smoothed_ratio = float(_running_median(early, t.smoothing_window, centered=True).max() / initial)
  early_evidence = (
      (first_nonfinite is not None and first_nonfinite <= early_steps)
      or any(s.step <= early_steps for s in spikes)
      or smoothed_ratio > t.early_loss_ratio
  )
  mid_evidence = (
      (first_nonfinite is not None and first_nonfinite > early_steps)
      or any(s.step > early_steps for s in spikes)
  )
  if early_evidence:
    label = EARLY_UNSTABLE
    recovered = (
        first_nonfinite is None
        and all(s.recovered for s in spikes if s.step <= early_steps)
        and bool(loss[-1] < initial)
    )
  elif mid_evidence:
    label, recovered = MID_TRAINING_UNSTABLE, None
  else:
    label, recovered = STABLE, None
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
  )
