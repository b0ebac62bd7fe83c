"""The fix ladder: the playbook's fixes for instability, tried in its order and verified.

When instability limits lr*, the playbook's fixes are, in order: learning-rate
warmup, gradient clipping, another optimizer, the architecture's best practices
(normalization placement, zero-initialized residual branches), and a lower
learning rate only last. optstab adds a step guard (``optstab.skip_spikes``)
after clipping, for spikes in the middle of training.

Our position: a fix **helps** when, against lr* trained for the same total
number of steps, it (a) raises the highest learning rate that trains without a
worse best-checkpoint metric, or (b) improves that metric, both judged against
the seed noise measured on ``FixLadder.seeds`` seeds (at least two). The
playbook's own comparison for warmup (lr* at its budget, against the warmup
prepended, which trains longer) is reported beside it, labelled, but the
recommendation rests on the equal-budget one. An optimizer switch changes the
learning rate's scale, so it is searched over the sweep's own grid and helps
only by (b).

Everything here is pure: planners return ``TrialConfig`` s, judges take
finished records. ``diagnose`` runs each round as one batch.

Where it breaks: two seeds give a coarse noise estimate (the range of two
draws); a fix that helps by less than that is reported as not helping. A
warmup search runs its trials for the full budget, so it costs as much as the
sweep for every rate it backs off to; ``diagnose(budget=...)`` bounds it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from optstab import _validation, clipping
from optstab.diagnosis.detectors import EARLY_UNSTABLE, MID_TRAINING_UNSTABLE, STABLE
from optstab.diagnosis.store import TrialRecord
from optstab.diagnosis.sweep import JudgedTrialView, SweepResult, SweepTrial, metric_value
from optstab.trial import FixSupport, TrialConfig

__all__ = [
    "WARMUP", "CLIPPING", "SKIP_SPIKES", "OPTIMIZER", "ARCHITECTURE", "FIX_KINDS",
    "HELPS", "DOES_NOT_HELP", "NOT_SUPPORTED", "NOT_TRIED", "NOT_APPLICABLE", "DROPPED",
    "Fix", "FixLadder", "FixFamily", "FixTrial", "SeedComparison", "FixResult",
    "trains", "warmup_lengths", "plan_families", "search_rounds", "round_succeeded",
    "noise_configs", "seed_noise", "highest_rate_without_fix", "higher_rate_counts",
    "matches_lr_star", "lr_star_for",
    "best_value", "choose", "verification_configs", "compare_seeds", "judge_fix",
    "longer_run_config", "judge_longer_run",
]

WARMUP, CLIPPING, SKIP_SPIKES, OPTIMIZER, ARCHITECTURE = (
    "warmup", "clipping", "skip spikes", "optimizer", "architecture")
#: The ladder's order.
FIX_KINDS = (WARMUP, CLIPPING, SKIP_SPIKES, OPTIMIZER, ARCHITECTURE)

#: A fix's verdict in the fix table.
HELPS, DOES_NOT_HELP, NOT_SUPPORTED, NOT_TRIED, NOT_APPLICABLE, DROPPED = (
    "helps", "does not help", "not supported", "not tried", "not applicable",
    "dropped for the budget")


@dataclasses.dataclass(frozen=True)
class Fix:
  """One fix: a named change to a ``TrialConfig`` that the training function applies.

  Attributes:
    kind: one of ``FIX_KINDS``.
    name: what it is, in words (e.g. ``"clipping at 1.23"``).
    changes: ``TrialConfig`` fields to set; an ``"extra"`` entry is merged
      into the configuration's own ``extra``.
  """

  kind: str
  name: str
  changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def apply(self, config: TrialConfig) -> TrialConfig:
    changes = dict(self.changes)
    if "extra" in changes:
      changes["extra"] = {**config.extra, **changes["extra"]}
    return config.replace(**changes)


@dataclasses.dataclass(frozen=True)
class FixLadder:
  """How ``diagnose`` searches for a fix (validated at construction).

  Attributes:
    kinds: the fixes to try, in the ladder's order (a subset of ``FIX_KINDS``).
    rate_factors: learning rates tried with a fix, as multiples of the
      smallest unstable rate above lr*, highest first: the playbook's target
      is 10 x; the search backs off from there.
    warmup_candidates: warmup lengths (the playbook's orders of magnitude),
      those at most ``max_warmup_fraction`` of the budget...
    warmup_fractions: ...or, when fewer than three of those fit, these
      fractions of the budget.
    max_warmup_fraction: the cap on ``warmup_candidates`` (playbook: 10%).
    clip_percentile: the clipping threshold is this percentile of lr*'s
      unclipped gradient norms (playbook: 90).
    max_clip_fraction: a clipped run that clips more than this fraction of
      its steps is in effect a lower learning rate (playbook: 50%).
    seeds: seeds the chosen fix and lr* are each trained on, to measure the
      seed noise (>= 2).
    try_all: try every fix even after one helps (a fuller table, at more cost).
    match_tolerance: during the search, a trial "matches" lr* within this
      fraction of lr*'s metric, or within lr*'s spread over ``seeds`` seeds
      if larger.
    min_rate_gain: a fix that is only as good as lr* helps when it trains at
      more than this multiple of the highest rate that trained as well as lr*
      without it (in the sweep or a check): a smaller gain is within what a
      finer grid could find without any fix. A smaller gain counts when the
      seed check trained that very rate without the fix and it failed on
      every seed.
    longer_run_factor: a fix that helps is trained once more, this many times
      longer (first seed); if that run fails to train, the fix only delayed a
      divergence (e.g. warmup before a rate the model's curvature never allows)
      and does not help. ``1`` skips the check.
  """

  kinds: tuple[str, ...] = FIX_KINDS
  rate_factors: tuple[float, ...] = (10.0, 5.0, 3.0, 2.0, 1.5, 1.0)
  warmup_candidates: tuple[int, ...] = (10, 1000, 10000, 100000)
  warmup_fractions: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
  max_warmup_fraction: float = 0.1
  clip_percentile: float = 90.0
  max_clip_fraction: float = 0.5
  seeds: int = 2
  try_all: bool = False
  match_tolerance: float = 0.02
  min_rate_gain: float = 2.0
  longer_run_factor: float = 2.0

  def __post_init__(self):
    kinds = tuple(_validation.check_sequence("kinds", self.kinds))
    for i, kind in enumerate(kinds):
      _validation.check_one_of(f"kinds[{i}]", kind, FIX_KINDS)
    object.__setattr__(self, "kinds", tuple(k for k in FIX_KINDS if k in kinds))
    factors = tuple(float(f) for f in _validation.check_sequence(
        "rate_factors", self.rate_factors, allow_empty=False))
    for i, f in enumerate(factors):
      _validation.check_in_range(f"rate_factors[{i}]", f, 1.0, math.inf)
    object.__setattr__(self, "rate_factors", tuple(sorted(set(factors), reverse=True)))
    candidates = tuple(_validation.check_sequence("warmup_candidates", self.warmup_candidates,
                                                  allow_empty=False))
    for i, w in enumerate(candidates):
      _validation.check_positive_int(f"warmup_candidates[{i}]", w)
    object.__setattr__(self, "warmup_candidates", tuple(sorted(set(candidates))))
    fractions = tuple(_validation.check_sequence("warmup_fractions", self.warmup_fractions,
                                                 allow_empty=False))
    for i, f in enumerate(fractions):
      _validation.check_in_range(f"warmup_fractions[{i}]", f, 0.0, 1.0, low_inclusive=False)
    object.__setattr__(self, "warmup_fractions", tuple(sorted(set(fractions))))
    _validation.check_in_range("max_warmup_fraction", self.max_warmup_fraction, 0.0, 1.0,
                               low_inclusive=False)
    _validation.check_percentile("clip_percentile", self.clip_percentile)
    _validation.check_in_range("max_clip_fraction", self.max_clip_fraction, 0.0, 1.0)
    _validation.check_positive_int("seeds", self.seeds, minimum=2)
    _validation.check_non_negative("match_tolerance", self.match_tolerance)
    _validation.check_in_range("min_rate_gain", self.min_rate_gain, 1.0, math.inf)
    _validation.check_in_range("longer_run_factor", self.longer_run_factor, 1.0, math.inf)


def trains(trial: SweepTrial) -> bool:
  """Feasible, and stable or early-unstable then recovered (so not failed-to-train)."""
  return trial.feasible and (trial.label == STABLE
                             or (trial.label == EARLY_UNSTABLE and bool(trial.recovered)))


def warmup_lengths(budget: int, ladder: FixLadder) -> tuple[int, ...]:
  """The warmup lengths to search for a run of ``budget`` steps.

  The playbook's candidates up to ``max_warmup_fraction`` of the budget when at
  least three fit; otherwise ``warmup_fractions`` of the budget, so a short
  budget still gets a dense search (e.g. 6, 18, 60, 180 for 600 steps).
  """
  faq = [w for w in ladder.warmup_candidates if w <= ladder.max_warmup_fraction * budget]
  if len(faq) >= 3:
    return tuple(faq)
  return tuple(sorted({max(1, int(round(f * budget))) for f in ladder.warmup_fractions}))


@dataclasses.dataclass(frozen=True)
class FixFamily:
  """One rung of the ladder: a kind of fix and the fixes to search over.

  Attributes:
    kind: one of ``FIX_KINDS``.
    name: the rung in words (e.g. ``"warmup"``, ``"optimizer nadam"``).
    fixes: the variants searched (one per warmup length; one otherwise).
    rates: the learning rates tried, highest first.
    status: ``None`` when it is to be searched; else why not (``NOT_SUPPORTED``,
      ``NOT_APPLICABLE``).
    reason: the sentence behind ``status``.
  """

  kind: str
  name: str
  fixes: tuple[Fix, ...] = ()
  rates: tuple[float, ...] = ()
  status: Optional[str] = None
  reason: str = ""


def _clip_threshold(sweep: SweepResult, percentile: float) -> Optional[float]:
  norms = sweep.best.result.grad_norms
  finite = norms[np.isfinite(norms)]
  return float(clipping.clip_threshold(finite, percentile)) if finite.size else None


def plan_families(sweep: SweepResult, verdict: str, unstable_rate: float,
                  support: FixSupport, ladder: FixLadder) -> list[FixFamily]:
  """The ladder's rungs for this diagnosis, each to search or with why it is not searched.

  Args:
    sweep: the learning-rate sweep (lr* and its gradient norms).
    verdict: the diagnosis's verdict (warmup targets early instability, so it
      is not applicable to a purely mid-training one).
    unstable_rate: the smallest unstable rate above lr*; the fixes are tried
      at ``ladder.rate_factors`` times it.
    support: what the training function can apply.
    ladder: the search's settings.
  """
  base = sweep.best.config
  rates = tuple(f * unstable_rate for f in ladder.rate_factors)
  families = []
  for kind in ladder.kinds:
    if kind == WARMUP:
      if verdict == MID_TRAINING_UNSTABLE:
        families.append(FixFamily(kind, "warmup", status=NOT_APPLICABLE, reason=(
            "warmup targets instability early in training; the runs showed it only later")))
        continue
      lengths = warmup_lengths(base.num_steps, ladder)
      families.append(FixFamily(kind, "warmup", tuple(
          Fix(kind, f"{w} warmup steps", {"warmup_steps": w}) for w in lengths), rates))
    elif kind == CLIPPING:
      threshold = _clip_threshold(sweep, ladder.clip_percentile)
      name = f"clipping at the {ladder.clip_percentile:g}th percentile of lr*'s gradient norm"
      if not support.clipping:
        families.append(FixFamily(kind, name, status=NOT_SUPPORTED, reason=(
            "the training function does not declare clipping (FixSupport.clipping)")))
      elif threshold is None or threshold <= 0:
        families.append(FixFamily(kind, name, status=NOT_APPLICABLE, reason=(
            "lr*'s run logged no finite, positive gradient norm to take a threshold from")))
      else:
        families.append(FixFamily(kind, f"{name} ({threshold:.3g})", (
            Fix(kind, f"clip at {threshold:.3g}", {"clip_norm": threshold}),), rates))
    elif kind == SKIP_SPIKES:
      if not support.skip_spikes:
        families.append(FixFamily(kind, "skipping spiky steps", status=NOT_SUPPORTED, reason=(
            "the training function does not declare the step guard (FixSupport.skip_spikes)")))
      else:
        families.append(FixFamily(kind, "skipping spiky steps (optstab.skip_spikes)", (
            Fix(kind, "skip spikes", {"skip_spikes": True}),), rates))
    elif kind == OPTIMIZER:
      if not support.optimizers:
        families.append(FixFamily(kind, "another optimizer", status=NOT_SUPPORTED, reason=(
            "the training function offers no other optimizer (FixSupport.optimizers)")))
      for name in support.optimizers:
        # Another optimizer has its own learning-rate scale: search the sweep's grid.
        families.append(FixFamily(kind, f"optimizer {name}", (
            Fix(kind, f"optimizer {name}", {"optimizer": name}),),
            tuple(sorted(sweep.learning_rates.tolist(), reverse=True))))
    elif kind == ARCHITECTURE:
      variants = {n: e for n, e in support.architectures.items()
                  if any(base.extra.get(k) != v for k, v in e.items())}
      if not variants:
        why = ("the training function declares no architecture variant "
               "(FixSupport.architectures)" if not support.architectures else
               "the model already uses every declared architecture variant")
        families.append(FixFamily(kind, "architecture", status=NOT_SUPPORTED, reason=why))
      for name, extra in variants.items():
        families.append(FixFamily(kind, f"architecture {name}", (
            Fix(kind, name, {"extra": dict(extra)}),), rates))
  return families


def lr_star_for(sweep: SweepResult, total_steps: int, seed: Optional[int] = None) -> TrialConfig:
  """lr*'s configuration trained for ``total_steps`` steps in all (its own warmup kept)."""
  base = sweep.best.config
  return base.replace(num_steps=total_steps - base.warmup_steps,
                      seed=base.seed if seed is None else seed)


def _fixed_config(sweep: SweepResult, fix: Fix, rate: float) -> TrialConfig:
  return fix.apply(sweep.best.config.replace(learning_rate=rate))


def search_rounds(sweep: SweepResult, family: FixFamily) -> list[list[TrialConfig]]:
  """The family's search, as rounds of trials each sent as one batch.

  Warmup: one round per rate, highest first, each with every warmup length
  (and lr* trained for each such total length, the equal-budget baseline);
  the search stops at the first round with a trial that trains and matches
  (``round_succeeded``). Other fixes: one round with every rate.
  """
  if family.kind != WARMUP:
    return [[_fixed_config(sweep, fix, r) for r in family.rates for fix in family.fixes]]
  baselines = [lr_star_for(sweep, fix.apply(sweep.best.config).total_steps)
               for fix in family.fixes]
  rounds = [[_fixed_config(sweep, fix, r) for fix in family.fixes] for r in family.rates]
  rounds[0] = baselines + rounds[0]
  return rounds


@dataclasses.dataclass(frozen=True)
class FixTrial(JudgedTrialView):
  """One search or verification trial of a fix, judged with the sweep's context.

  Attributes:
    fix: the fix it applies.
    trial: the judged trial.
    value: its best-checkpoint metric (NaN if none).
  """

  fix: Fix
  trial: SweepTrial
  value: float

  @property
  def trains(self) -> bool:
    return trains(self.trial)

  @property
  def clip_fraction(self) -> Optional[float]:
    """The fraction of steps whose unclipped gradient norm was above ``clip_norm``."""
    if self.config.clip_norm is None or self.result is None:
      return None
    norms = self.result.grad_norms
    finite = norms[np.isfinite(norms)]
    return float(np.mean(finite > self.config.clip_norm)) if finite.size else None

  def to_dict(self) -> dict[str, Any]:
    return {
        "fix": self.fix.name, "learning_rate": self.learning_rate,
        "warmup_steps": self.config.warmup_steps, "seed": self.config.seed,
        "total_steps": self.config.total_steps, "label": self.label, "feasible": self.feasible,
        "trains": self.trains, "value": self.value if math.isfinite(self.value) else None,
        "clip_fraction": self.clip_fraction, "summary": self.trial.describe(),
    }


def _value(sweep: SweepResult, trial: SweepTrial) -> float:
  if trial.result is None:
    return math.nan
  return metric_value(trial.result, sweep.metric, sweep.mode, "best")


def best_value(sweep: SweepResult, record: TrialRecord) -> float:
  """A finished trial's best-checkpoint value of the sweep's metric (NaN if none)."""
  return _value(sweep, sweep.judge(record))


def judge_trial(sweep: SweepResult, fix: Fix, record: TrialRecord) -> FixTrial:
  """A fix's trial judged like a sweep trial (held to lr*'s final loss level)."""
  trial = sweep.judge(record)
  return FixTrial(fix, trial, _value(sweep, trial))


def _gain(mode: str, value: float, reference: float) -> float:
  """How much better ``value`` is than ``reference`` (positive: better)."""
  return reference - value if mode == "min" else value - reference


def _matches(sweep: SweepResult, value: float, reference: float, ladder: FixLadder,
             noise: float) -> bool:
  """``value`` is no worse than ``reference`` beyond ``match_tolerance`` or the seed noise."""
  if not math.isfinite(value):
    return False
  if not math.isfinite(reference):
    return True
  margin = max(ladder.match_tolerance * abs(reference), noise)
  return _gain(sweep.mode, value, reference) >= -margin


def noise_configs(sweep: SweepResult, ladder: FixLadder) -> list[TrialConfig]:
  """lr*'s configuration on the other seeds: its spread is the search's seed noise."""
  base = sweep.best.config
  return [base.replace(seed=base.seed + k) for k in range(1, ladder.seeds)]


def seed_noise(sweep: SweepResult, records: Sequence[TrialRecord]) -> float:
  """The range of lr*'s best-checkpoint metric over its seeds (the sweep's and ``records``)."""
  values = [_value(sweep, sweep.best)] + [best_value(sweep, r) for r in records]
  return _range(values)


def baseline_value(sweep: SweepResult, baselines: Mapping[int, float], total_steps: int) -> float:
  """lr*'s best-checkpoint metric for ``total_steps`` steps (seed of the sweep)."""
  if total_steps == sweep.best.config.total_steps:
    return _value(sweep, sweep.best)
  return baselines.get(total_steps, math.nan)


def matches_lr_star(sweep: SweepResult, trial: FixTrial, baselines: Mapping[int, float],
                    ladder: FixLadder, noise: float) -> bool:
  """Whether ``trial`` matched lr* for its total steps in the search (its first seed)."""
  return _matches(sweep, trial.value, baseline_value(sweep, baselines, trial.config.total_steps),
                  ladder, noise)


def round_succeeded(sweep: SweepResult, trials: Sequence[FixTrial],
                    baselines: Mapping[int, float], ladder: FixLadder, noise: float) -> bool:
  """Some trial trains and matches lr* for its total steps (within the tolerance or ``noise``)."""
  return any(t.trains and matches_lr_star(sweep, t, baselines, ladder, noise) for t in trials)


def choose(sweep: SweepResult, family: FixFamily, trials: Sequence[FixTrial],
           baselines: Mapping[int, float], ladder: FixLadder,
           noise: float) -> Optional[FixTrial]:
  """The trial to verify: the highest rate that trains and matches lr*; else the best that trains.

  "Matches": no worse than lr* for the same total steps beyond ``match_tolerance``
  or ``noise``, lr*'s own spread over seeds.

  Among a rate's warmup lengths, the shortest. For an optimizer switch (its
  own rate scale): the trial with the best metric.
  """
  trained = [t for t in trials if t.trains and math.isfinite(t.value)]
  if not trained:
    return None
  sign = 1.0 if sweep.mode == "min" else -1.0
  if family.kind != OPTIMIZER:
    matching = [t for t in trained if matches_lr_star(sweep, t, baselines, ladder, noise)]
    if matching:
      return min(matching, key=lambda t: (-t.learning_rate, t.config.warmup_steps))
  return min(trained, key=lambda t: (sign * t.value, t.config.warmup_steps))


def _verification_seeds(sweep: SweepResult, ladder: FixLadder) -> list[int]:
  return [sweep.best.config.seed + k for k in range(ladder.seeds)]


def _without_fix_configs(sweep: SweepResult, chosen: FixTrial,
                         ladder: FixLadder) -> list[TrialConfig]:
  """The chosen rate without the fix, for the same total steps, on every seed.

  Empty when that is lr*'s own configuration (the fix was chosen at lr*).
  """
  total = chosen.config.total_steps
  configs = [lr_star_for(sweep, total, s).replace(learning_rate=chosen.learning_rate)
             for s in _verification_seeds(sweep, ladder)]
  if configs[0].key() == lr_star_for(sweep, total, configs[0].seed).key():
    return []
  return configs


def verification_configs(sweep: SweepResult, chosen: FixTrial,
                         ladder: FixLadder) -> list[TrialConfig]:
  """The seed check: the chosen fix on the other seeds, then lr* for the same total
  steps on every seed, then the chosen rate without the fix for the same steps on
  every seed (unless that rate is lr*'s).

  The last group tells a fix from a rate the sweep's grid merely skipped: if the
  same rate trains as well without the fix, the fix is not what made it train.
  """
  seeds = _verification_seeds(sweep, ladder)
  fixed = [chosen.config.replace(seed=s) for s in seeds[1:]]
  baseline = [lr_star_for(sweep, chosen.config.total_steps, s) for s in seeds]
  return fixed + baseline + _without_fix_configs(sweep, chosen, ladder)


@dataclasses.dataclass(frozen=True)
class SeedComparison:
  """The chosen fix against lr* trained for the same total steps, on several seeds.

  Attributes:
    metric, mode: the sweep's metric and direction (best-checkpoint values).
    fix_values, fix_trains: per seed, the fix's value and whether it trained.
    baseline_values: per seed, lr*'s value for the same total steps.
    noise: the seed noise: the largest range over seeds of the fix's runs,
      lr*'s for the same steps and lr*'s at the sweep's budget.
    playbook_baseline_value: lr* at the sweep's own budget (first seed): the
      playbook's comparison for warmup, which gives the fix its extra steps.
    baseline_trial: lr*'s run for the same total steps on the first seed.
    without_values, without_trains: per seed, the fix's rate trained without
      the fix for the same total steps (empty when that rate is lr*'s).
    without_trial: that run on the first seed.
  """

  metric: str
  mode: str
  seeds: tuple[int, ...]
  fix_values: tuple[float, ...]
  fix_trains: tuple[bool, ...]
  baseline_values: tuple[float, ...]
  noise: float
  playbook_baseline_value: float
  baseline_trial: Optional[FixTrial] = None
  without_values: tuple[float, ...] = ()
  without_trains: tuple[bool, ...] = ()
  without_trial: Optional[FixTrial] = None

  @property
  def fix_mean(self) -> float:
    v = np.array(self.fix_values)
    return float(v.mean()) if np.all(np.isfinite(v)) else math.nan

  @property
  def without_mean(self) -> float:
    """The same rate without the fix: its mean over seeds, NaN unless it trained on every seed."""
    v = np.array(self.without_values)
    return float(v.mean()) if self.without_trains_on_every_seed and np.all(np.isfinite(v)) \
        else math.nan

  @property
  def without_trains_on_every_seed(self) -> bool:
    return bool(self.without_trains) and all(self.without_trains)

  @property
  def without_matches(self) -> bool:
    """The same rate trained without the fix on every seed, no worse than lr* beyond the noise."""
    return (math.isfinite(self.without_mean)
            and _gain(self.mode, self.without_mean, self.baseline_mean) >= -self.noise)

  @property
  def gain_over_without(self) -> float:
    """Improvement of the fix over its rate without it (NaN when that did not train)."""
    return _gain(self.mode, self.fix_mean, self.without_mean)

  @property
  def baseline_mean(self) -> float:
    v = np.array(self.baseline_values)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan

  @property
  def trains_on_every_seed(self) -> bool:
    return all(self.fix_trains)

  @property
  def gain(self) -> float:
    """Mean improvement of the fix over lr* (positive: better), NaN if either is missing."""
    return _gain(self.mode, self.fix_mean, self.baseline_mean)

  @property
  def better(self) -> bool:
    """Better than lr* for the same steps beyond the noise, and than its rate without the fix."""
    if not (self.trains_on_every_seed and self.gain > self.noise):
      return False
    return not math.isfinite(self.without_mean) or self.gain_over_without > self.noise

  @property
  def not_worse(self) -> bool:
    return self.trains_on_every_seed and self.gain >= -self.noise

  def to_dict(self) -> dict[str, Any]:
    return {"metric": self.metric, "seeds": list(self.seeds), "fix_values": list(self.fix_values),
            "fix_trains": list(self.fix_trains), "baseline_values": list(self.baseline_values),
            "noise": self.noise, "fix_mean": self.fix_mean, "baseline_mean": self.baseline_mean,
            "playbook_baseline_value": self.playbook_baseline_value,
            "without_fix_values": list(self.without_values),
            "without_fix_trains": list(self.without_trains)}


def _range(values: Sequence[float]) -> float:
  v = np.array([x for x in values if math.isfinite(x)])
  return float(v.max() - v.min()) if v.size > 1 else 0.0


def compare_seeds(sweep: SweepResult, chosen: FixTrial, records: Sequence[TrialRecord],
                  ladder: FixLadder, noise: float = 0.0) -> SeedComparison:
  """Judges ``verification_configs``' records (in that order) against the chosen trial.

  The seed noise is the largest spread over seeds measured: the fix's, lr*'s for
  the same steps, and ``noise`` (lr*'s at the sweep's budget, ``seed_noise``).
  """
  n_fix, n = ladder.seeds - 1, ladder.seeds
  fixed = [chosen] + [judge_trial(sweep, chosen.fix, r) for r in records[:n_fix]]
  baseline = [judge_trial(sweep, chosen.fix, r) for r in records[n_fix:n_fix + n]]
  without = [judge_trial(sweep, chosen.fix, r) for r in records[n_fix + n:]]
  fix_values = tuple(t.value for t in fixed)
  base_values = tuple(b.value for b in baseline)
  without_values = tuple(w.value for w in without)
  without_trains = tuple(w.trains for w in without)
  # A rate that fails without the fix spreads as its failures do, not as seeds do.
  without_noise = _range(without_values) if without and all(without_trains) else 0.0
  return SeedComparison(
      sweep.metric, sweep.mode, tuple(t.config.seed for t in fixed), fix_values,
      tuple(t.trains for t in fixed), base_values,
      max(_range(fix_values), _range(base_values), without_noise, noise),
      _value(sweep, sweep.best), baseline[0], without_values, without_trains,
      without[0] if without else None)


@dataclasses.dataclass(frozen=True)
class FixResult:
  """One row of the fix table.

  Attributes:
    family: the rung (kind, name, rates and variants searched).
    status: ``HELPS``, ``DOES_NOT_HELP``, ``NOT_SUPPORTED``, ``NOT_TRIED``,
      ``NOT_APPLICABLE`` or ``DROPPED``.
    reason: why, naming the runs that show it.
    trials: the search's trials, as run.
    chosen: the trial verified on several seeds, if any trained.
    comparison: the seed comparison, if it ran.
    highest_training_rate: the highest rate at which the fix trained.
    baseline_highest_rate: the highest rate that trained as well as lr* without it.
    longer_run: the fix that helped, trained ``FixLadder.longer_run_factor`` x
      longer, if that check ran.
  """

  family: FixFamily
  status: str
  reason: str
  trials: tuple[FixTrial, ...] = ()
  chosen: Optional[FixTrial] = None
  comparison: Optional[SeedComparison] = None
  highest_training_rate: Optional[float] = None
  baseline_highest_rate: Optional[float] = None
  longer_run: Optional[FixTrial] = None

  @property
  def helps(self) -> bool:
    return self.status == HELPS

  @property
  def rates_tried(self) -> tuple[float, ...]:
    return tuple(sorted({t.learning_rate for t in self.trials}))

  def to_dict(self) -> dict[str, Any]:
    return {
        "kind": self.family.kind, "fix": self.family.name, "status": self.status,
        "reason": self.reason, "rates_tried": list(self.rates_tried),
        "highest_training_rate": self.highest_training_rate,
        "baseline_highest_rate": self.baseline_highest_rate,
        "chosen": None if self.chosen is None else self.chosen.to_dict(),
        "longer_run": None if self.longer_run is None else self.longer_run.to_dict(),
        "comparison": None if self.comparison is None else self.comparison.to_dict(),
        "trials": [t.to_dict() for t in self.trials],
    }


def highest_training_rate(trials: Sequence[Any]) -> Optional[float]:
  """The highest learning rate among ``trials`` (each with ``trains`` and ``learning_rate``) that trained."""
  rates = [t.learning_rate for t in trials if t.trains]
  return max(rates) if rates else None


def _fmt_rates(rates: Sequence[float]) -> str:
  return ", ".join(f"{r:.3g}" for r in sorted(rates))


def highest_rate_without_fix(sweep: SweepResult, runs: Sequence[Any] = (),
                             ladder: Optional[FixLadder] = None,
                             noise: float = 0.0) -> Optional[float]:
  """The highest rate that trained as well as lr* without a fix, in the sweep or a check.

  "As well": it trains, and its best-checkpoint metric matches lr*'s within
  ``match_tolerance`` or ``noise``. Only runs as long as lr*'s are compared
  (a shorter check cannot reach lr*'s level); lr* itself always counts.
  """
  ladder = FixLadder() if ladder is None else ladder
  best = sweep.best
  reference = _value(sweep, best)
  candidates = list(sweep.trials) + [r.trial for r in runs if r.trial is not None]
  rates = [t.learning_rate for t in candidates
           if t.result is not None and t.config.total_steps == best.config.total_steps
           and trains(t) and _matches(sweep, _value(sweep, t), reference, ladder, noise)]
  return max(rates + [best.learning_rate])


def higher_rate_counts(rate: float, baseline_rate: float, min_rate_gain: float,
                       without_trains: Sequence[bool] = ()) -> bool:
  """Whether a fix is credited with training at a higher rate than lr* allows without it.

  ``rate`` must be above ``baseline_rate`` (the highest rate that trained as well
  as lr* without the fix) and either more than ``min_rate_gain`` times it, beyond
  what a finer grid could find without any fix, or that very rate was trained
  without the fix on the seeds (``without_trains``) and failed on every one.
  """
  if rate <= baseline_rate:
    return False
  failed_without = bool(without_trains) and not any(without_trains)
  return rate > min_rate_gain * baseline_rate or failed_without


def judge_fix(sweep: SweepResult, family: FixFamily, trials: Sequence[FixTrial],
              chosen: Optional[FixTrial], comparison: Optional[SeedComparison],
              ladder: FixLadder, baseline_rate: Optional[float] = None,
              matched_in_search: bool = True) -> FixResult:
  """The verdict on one searched rung, with the sentence that says which runs show it.

  ``baseline_rate`` is the highest rate that trained as well as lr* without the
  fix (``highest_rate_without_fix``; default: from the sweep alone).
  ``matched_in_search``: the chosen trial matched lr* in the search; a higher
  rate helps only then, and if it is no worse on every seed.
  """
  if baseline_rate is None:
    baseline_rate = highest_rate_without_fix(sweep, (), ladder)
  top = highest_training_rate(trials)
  common = dict(trials=tuple(trials), chosen=chosen, comparison=comparison,
                highest_training_rate=top, baseline_highest_rate=baseline_rate)
  tried = f"rates {_fmt_rates({t.learning_rate for t in trials})}"
  if family.kind == WARMUP:
    tried += f" with {', '.join(str(f.changes['warmup_steps']) for f in family.fixes)} warmup steps"
  if chosen is None or comparison is None:
    labels = sorted({t.label for t in trials})
    clipped = [t.clip_fraction for t in trials if t.clip_fraction is not None]
    also = (f"; they clipped {min(clipped):.0%} to {max(clipped):.0%} of their steps"
            if clipped else "")
    return FixResult(family, DOES_NOT_HELP, f"no run trained at {tried} (labels: "
                     f"{', '.join(labels)}){also}", **common)
  c = comparison
  at = (f"{chosen.fix.name} at {chosen.learning_rate:.3g}" if family.kind == WARMUP
        else f"at {chosen.learning_rate:.3g}")
  values = (f"best {c.metric} {c.fix_mean:.4g} vs lr*'s {c.baseline_mean:.4g} for the same "
            f"{chosen.config.total_steps} steps (mean of seeds {', '.join(map(str, c.seeds))}; "
            f"seed noise {c.noise:.3g})")
  if c.without_trains:
    n_without = sum(c.without_trains)
    values += (f"; {chosen.learning_rate:.3g} without the fix "
               + (f"{c.without_mean:.4g}" if c.without_trains_on_every_seed else
                  f"trained on {n_without} of {len(c.without_trains)} seeds"))
  if not c.trains_on_every_seed:
    n = sum(c.fix_trains)
    return FixResult(family, DOES_NOT_HELP, f"{at} it trained on {n} of {len(c.fix_trains)} "
                     f"seeds ({tried} searched)", **common)
  fraction = chosen.clip_fraction
  if fraction is not None and fraction > ladder.max_clip_fraction:
    return FixResult(family, DOES_NOT_HELP, (
        f"{at} it clipped {fraction:.0%} of the steps, more than "
        f"{ladder.max_clip_fraction:.0%}: that is in effect a lower learning rate; lower the "
        f"learning rate instead"), **common)
  higher = (family.kind != OPTIMIZER and baseline_rate is not None
            and higher_rate_counts(chosen.learning_rate, baseline_rate, ladder.min_rate_gain,
                                   c.without_trains))
  if c.better:
    return FixResult(family, HELPS, f"{at}: {values}: better beyond the seed noise", **common)
  if higher and c.not_worse and matched_in_search and not c.without_matches:
    return FixResult(family, HELPS, (
        f"{at}, {chosen.learning_rate / baseline_rate:.3g} x the highest rate that trained as "
        f"well as lr* without it ({baseline_rate:.3g}): {values}: as good within the seed "
        "noise"), **common)
  if not c.not_worse:
    why = "worse beyond the seed noise"
  elif c.without_matches:
    why = (f"{chosen.learning_rate:.3g} trains as well without the fix, so the fix is not what "
           "made it train")
  elif higher and not matched_in_search:
    why = (f"worse than lr* for the same steps in the search (seed {chosen.config.seed}: "
           f"{chosen.value:.4g}), so it is no better on the seeds either")
  elif family.kind == OPTIMIZER:
    why = "not better beyond the seed noise"
  elif chosen.learning_rate <= baseline_rate:
    why = (f"not above the highest rate that trained as well as lr* without it "
           f"({baseline_rate:.3g}), and not better")
  else:
    # How often the rate trained without the fix is in ``values`` already.
    why = (f"not more than {ladder.min_rate_gain:g} x the highest rate that trained as well as "
           f"lr* without it ({baseline_rate:.3g}) "
           + ("while it trained without the fix on some seed" if c.without_trains
              else "and not tried without the fix")
           + ", and not better")
  return FixResult(family, DOES_NOT_HELP, f"{at}: {values}: {why}", **common)


def longer_run_config(chosen: FixTrial, ladder: FixLadder) -> Optional[TrialConfig]:
  """The chosen fix trained ``longer_run_factor`` x as many steps in all (``None``: no check).

  A warmup keeps its length; the steps after it grow.
  """
  if ladder.longer_run_factor <= 1.0:
    return None
  config = chosen.config
  total = int(math.ceil(ladder.longer_run_factor * config.total_steps))
  return config.replace(num_steps=total - config.warmup_steps)


def judge_longer_run(sweep: SweepResult, result: FixResult, record: TrialRecord,
                     ladder: FixLadder) -> FixResult:
  """``result`` (a fix that helps) with its longer run, which must hold what the fix reached.

  The longer run must train, and end (its final ``metric``) no worse than the
  chosen run's best, within ``match_tolerance`` or the seed noise. A fix that
  fails this only delayed a divergence, or an oscillation that clipping
  bounds, past the budget the search used: it does not help.
  """
  longer = judge_trial(sweep, result.chosen.fix, record)
  final = (math.nan if longer.result is None
           else metric_value(longer.result, sweep.metric, sweep.mode, "final"))
  noise = 0.0 if result.comparison is None else result.comparison.noise
  if longer.trains and _matches(sweep, final, result.chosen.value, ladder, noise):
    return dataclasses.replace(result, longer_run=longer)
  steps = f"{longer.config.total_steps} steps instead of {result.chosen.config.total_steps}"
  if longer.trains:
    what = (f"it ended at {sweep.metric} {final:.4g}, worse than the {result.chosen.value:.4g} "
            f"it reached in {result.chosen.config.total_steps} steps ({longer.trial.describe()})")
  else:
    what = f"it did not train ({longer.trial.describe()})"
  reason = (f"{result.reason}; but trained {steps} (seed {longer.config.seed}), {what}: the fix "
            "only holds off, for the budget searched, an instability that a longer run reaches")
  return dataclasses.replace(result, status=DOES_NOT_HELP, reason=reason, longer_run=longer)
