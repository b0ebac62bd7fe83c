"""Which trials are infeasible: the FAQ's "NaNs or abnormally high loss".

The playbook's hyperparameter-axis plot (Figure 7a) marks a trial infeasible
when it produces NaNs or an abnormally high loss. ``FeasibilityRule`` makes
"abnormally high" a documented, configurable rule; ``check_feasibility``
applies it to one trial and says why, with the step as evidence.

A trial is infeasible when any of these holds, checked in this order:

1. the training function raised (recorded by the sweep, not here);
2. a training loss or an evaluation metric is NaN or +-Inf;
3. the training loss exceeds ``max_loss_ratio`` times the trial's initial
   (step-1) training loss, at any step (``scope="any"``, the default, which
   also catches a blow-up that later recovers) or at the last step only
   (``scope="final"``). Skipped when the initial loss is not positive;
4. the final value of a metric named in ``metric_thresholds`` exceeds its
   threshold (e.g. ``{"error_rate": 0.8}``).

``Feasibility.kind`` names which check failed (``"nonfinite"``,
``"loss_ratio"``, ``"metric_threshold"``; the sweep adds ``"raised"``) and
``Feasibility.step`` its step, so that the run's label (``classify_run``) can
be made to agree with the verdict: see ``optstab.diagnosis.detectors`` on how
feasibility and labels relate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, NamedTuple, Optional

import numpy as np

from optstab import _validation
from optstab.trial import TrialResult

__all__ = ["FeasibilityRule", "Feasibility", "check_feasibility"]

_SCOPES = ("any", "final")


@dataclasses.dataclass(frozen=True)
class FeasibilityRule:
  """When a trial counts as infeasible.

  Attributes:
    max_loss_ratio: a training loss above ``max_loss_ratio`` times the initial
      training loss is "abnormally high". Default 10.
    scope: ``"any"``: the ratio applies to every step; ``"final"``: to the last
      step only.
    metric_thresholds: metric name -> largest acceptable final evaluation value.
  """

  max_loss_ratio: float = 10.0
  scope: str = "any"
  metric_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _validation.check_in_range(
        "max_loss_ratio", self.max_loss_ratio, 1.0, math.inf, low_inclusive=True
    )
    _validation.check_one_of("scope", self.scope, _SCOPES)
    if not isinstance(self.metric_thresholds, Mapping):
      raise ValueError("metric_thresholds must be a mapping of metric name -> threshold; "
                       f"got {self.metric_thresholds!r}.")
    for name, threshold in dict(self.metric_thresholds).items():
      _validation.check_in_range(f"metric_thresholds[{name!r}]", threshold, -math.inf, math.inf)
    object.__setattr__(self, "metric_thresholds", dict(sorted(dict(self.metric_thresholds).items())))

  def describe(self) -> str:
    """The rule in one sentence, for reports."""
    where = "at any step" if self.scope == "any" else "at the last step"
    text = (
        "a trial is infeasible if it raises, produces NaN/Inf, or its training loss "
        f"{where} exceeds {self.max_loss_ratio:g} x its initial training loss"
    )
    for name, threshold in self.metric_thresholds.items():
      text += f", or its final {name} exceeds {threshold:g}"
    return text


class Feasibility(NamedTuple):
  """Whether a trial is feasible, and if not, why (with the step as evidence).

  Attributes:
    feasible: whether the trial passes the rule.
    reason: the sentence saying why not.
    kind: which check failed: ``"raised"``, ``"nonfinite"``, ``"loss_ratio"``
      or ``"metric_threshold"``.
    step: the 1-based step of the failing value.
    at_last_step: the failing loss ratio still holds at the last step.
  """

  feasible: bool
  reason: Optional[str] = None
  kind: Optional[str] = None
  step: Optional[int] = None
  at_last_step: bool = False


def check_feasibility(result: TrialResult, rule: FeasibilityRule = FeasibilityRule()) -> Feasibility:
  """Applies ``rule`` to one trial's result.

  Args:
    result: what a training function returned.
    rule: the feasibility rule.

  Returns:
    ``Feasibility(True, None)``, or ``Feasibility(False, reason)`` where the
    reason names the first failing check and its step (1-based).

  Example:
    >>> import numpy as np
    >>> from optstab.trial import TrialConfig, TrialResult
    >>> cfg = TrialConfig(learning_rate=0.1, num_steps=3, eval_every=3)
    >>> r = TrialResult(cfg, np.array([1.0, 20.0, 0.5]), np.array([3]),
    ...                 {"loss": np.array([0.5])}, np.ones(3))
    >>> check_feasibility(r).reason
    'training loss 20 at step 2 is 20 x the initial loss 1 (limit 10 x)'
  """
  loss = result.train_loss
  bad = np.flatnonzero(~np.isfinite(loss))
  if bad.size:
    return Feasibility(False, f"non-finite training loss ({loss[bad[0]]}) at step {bad[0] + 1}",
                       "nonfinite", int(bad[0]) + 1)
  for name, values in sorted(result.eval_metrics.items()):
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      step = int(result.eval_steps[bad[0]])
      return Feasibility(False, f"non-finite {name} ({values[bad[0]]}) at step {step}",
                         "nonfinite", step)
  initial = float(loss[0])
  if initial > 0:
    limit = rule.max_loss_ratio * initial
    candidates = loss if rule.scope == "any" else loss[-1:]
    offset = 0 if rule.scope == "any" else loss.size - 1
    over = np.flatnonzero(candidates > limit)
    if over.size:
      i = int(over[0]) + offset
      return Feasibility(
          False,
          f"training loss {loss[i]:.4g} at step {i + 1} is {loss[i] / initial:.3g} x the "
          f"initial loss {initial:.4g} (limit {rule.max_loss_ratio:g} x)",
          "loss_ratio", i + 1, bool(loss[-1] > limit),
      )
  for name, threshold in rule.metric_thresholds.items():
    if name not in result.eval_metrics or result.eval_metrics[name].size == 0:
      raise ValueError(
          f"metric_thresholds names {name!r}, but the trial reports only "
          f"{sorted(result.eval_metrics)}."
      )
    final = float(result.eval_metrics[name][-1])
    if final > threshold:
      step = int(result.eval_steps[-1])
      return Feasibility(False, f"final {name} {final:.4g} at step {step} exceeds {threshold:g}",
                         "metric_threshold", step)
  return Feasibility(True, None)
