"""The playbook's Figure 7b at CPU scale: a run that trains, then fails mid-training; what stops it.

The FAQ's Figure 7b is a training loss that declines steadily, then rises
suddenly in the middle of training. At this demo's scale (the quick preset's
6-layer, width-64 character model) a Post-LN Transformer does that at a rate a
little too high for it once a warmup has let it start: with 200 warmup steps
to a constant 1e-2, the loss falls to 2.5-2.7 nats by the end of the warmup,
then climbs back within a few hundred steps to the unigram level (3.27 nats:
the model keeps only symbol frequencies) and stays there, on each of seeds 0,
1 and 2 (measured: the 50-step mean passes halfway back at steps 262-363).

``run_spike_study(study, out_dir)`` trains that configuration on every seed of
``study.seeds`` three times:

* **no fix**: the run as it is;
* **step guard**: the optimizer wrapped in ``optstab.skip_spikes`` (its
  defaults: a step whose gradient norm is more than 6 robust standard
  deviations above the median of the last 128 accepted steps is skipped);
* **clipping**: the global gradient norm clipped to ``study.clip_norm`` before
  Adam (``optax.clip_by_global_norm``).

Each run is judged by its curve (:func:`setback`): how much of what it had
learned its training loss gave back after the warmup, at the worst point and
at the end; more than ``FAILURE_FRACTION`` is a failure mid-training. The
report also gives the steps the guard skipped and whether the run ended having
learned nothing (the demo's "failed to train" rule), counts per variant the
seeds on which the failure appears and those a fix rescued, and draws every
curve with its skipped steps.

Where it breaks. The guard skips *outlier* steps: a step whose gradient norm
jumps against its recent past. A failure that builds up over tens of steps is
mostly made of steps that are not outliers, so skipping the few that are can
delay it without stopping it; the study measures which it is on each seed
rather than assuming it.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Executor
from typing import Any, Optional, Sequence, Union

import numpy as np

from optstab import _validation, harness
from optstab._types import PathLike
from optstab.harness import ExperimentResult
from optstab.harness.report import fmt, timing_line
from optstab.trial import TrialConfig, TrialRecord
from optstab.transformer import data as corpus_data
from optstab.transformer.experiment import trivial_levels, use_corpus
from optstab.transformer.model import NORM_POSITIONS
from optstab.transformer.presets import PRESETS, get_preset
from optstab.transformer.summary import STALL_MARGIN, run_summary, running_mean

__all__ = ["SpikeStudy", "SPIKE_STUDIES", "VARIANTS", "SETBACK_WINDOW", "FAILURE_FRACTION",
           "setback", "fails_mid_training", "study_plan", "run_spike_study", "results_table",
           "render_report", "verdicts"]

#: The study's three runs per seed.
VARIANTS = ("no fix", "step guard", "clipping")

#: Steps of the running mean a setback is measured on: per-step losses of this model
#: scatter by ~0.15 nats, a 50-step mean by ~0.02.
SETBACK_WINDOW = 50

#: A run fails mid-training when it gives back more than this share of what it had
#: learned. Measured on this model (1000-1500 steps): runs at or near their best rates
#: gave back 6-14%, noisy runs at high rates up to 35%, a spike that recovered 43%, the
#: collapses to the unigram level 102-114%.
FAILURE_FRACTION = 1 / 2

#: How each variant is named at the start of a sentence.
_SUBJECT = {"step guard": "The step guard", "clipping": "Clipping"}


@dataclasses.dataclass(frozen=True)
class SpikeStudy:
  """One configuration of the Figure 7b study.

  Attributes:
    name, description: for ``--help`` and the report.
    base: the ``Preset`` (by name) whose corpus, model, batch size and
      evaluation the study uses.
    norm_position: the layer-norm placement (``"post"``: Post-LN).
    learning_rate: the constant rate after the warmup.
    warmup_steps: linear warmup from 0 to ``learning_rate``.
    num_steps: steps of every run, warmup included.
    clip_norm: the clipping variant's global-norm threshold.
    seeds: the seeds; every variant runs on each.
    eval_every: evaluation cadence (the last step is always evaluated).
  """

  name: str
  description: str
  base: str = "quick"
  norm_position: str = "post"
  learning_rate: float = 1e-2
  warmup_steps: int = 200
  num_steps: int = 1000
  clip_norm: float = 1.0
  seeds: tuple[int, ...] = (0, 1, 2)
  eval_every: int = 250

  def __post_init__(self):
    _validation.check_one_of("base", self.base, sorted(PRESETS))
    _validation.check_one_of("norm_position", self.norm_position, NORM_POSITIONS)
    _validation.check_positive("learning_rate", self.learning_rate)
    _validation.check_positive("clip_norm", self.clip_norm)
    for name in ("num_steps", "eval_every"):
      _validation.check_positive_int(name, getattr(self, name))
    if not 0 <= self.warmup_steps < self.num_steps:
      raise ValueError(f"warmup_steps must be in [0, num_steps={self.num_steps}) so that some "
                       f"steps run at the peak rate; got {self.warmup_steps}.")
    object.__setattr__(self, "seeds", harness.check_seeds(tuple(self.seeds), 0))

  def replace(self, **changes: Any) -> "SpikeStudy":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


SPIKE_STUDIES: dict[str, SpikeStudy] = {
    "spikes": SpikeStudy(
        name="spikes",
        description="CPU, offline, ~3 min on 2 cores (measured in the guide): Figure 7b, a Post-LN run that trains "
                    "and then fails mid-run (200 warmup steps to 1e-2, 1000 steps), with no "
                    "fix, the step guard and clipping, on 3 seeds",
    ),
}


def study_plan(study: SpikeStudy) -> harness.TrialPlan:
  """Every run of ``study``, built without training: for each seed, ``VARIANTS`` in order."""
  base = TrialConfig(
      learning_rate=study.learning_rate, num_steps=study.num_steps - study.warmup_steps,
      warmup_steps=study.warmup_steps, schedule="constant", eval_every=study.eval_every,
      extra={"variant": f"{study.norm_position}_ln", "norm_position": study.norm_position})
  fixes = {"no fix": {}, "step guard": {"skip_spikes": True},
           "clipping": {"clip_norm": study.clip_norm}}
  return harness.TrialPlan.build(
      study.seeds, [base.replace(seed=seed, **fixes[v]) for seed in study.seeds for v in VARIANTS])


def setback(train_loss: np.ndarray, trivial_loss: float, after: int) -> Optional[dict[str, Any]]:
  r"""How much of what it had learned a run lost after step ``after``: the worst point, and the end.

  With :math:`\bar\ell` the running mean of the training loss over
  ``SETBACK_WINDOW`` steps, :math:`m_t = \min_{s \le t} \bar\ell_s` the best
  level so far and :math:`L` the trivial (unigram) level, the loss at step
  :math:`t > \text{after}` has given back

  .. math::  f_t = (\bar\ell_t - m_t) \,/\, (L - m_t)

  of what the run had learned. Returns the worst :math:`t` (``peak_step``,
  ``lost`` = :math:`f_t`), the step of the best level before it
  (``from_step``), their levels, and :math:`f` at the last step
  (``final_lost``); ``lost`` is infinite from a non-finite loss on.
  ``None`` when the run never got below :math:`L` (it learned nothing) or is
  too short to judge.
  """
  loss = np.asarray(train_loss, np.float64)
  first = SETBACK_WINDOW - 1  # the first full window
  if loss.size <= max(after, first) + 1:
    return None
  smooth = running_mean(loss, SETBACK_WINDOW)
  smooth[first:] = np.where(np.isfinite(smooth[first:]), smooth[first:], np.inf)
  best = np.minimum.accumulate(smooth[first:])
  learned = trivial_loss - best
  if not learned[-1] > 0:
    return None
  with np.errstate(invalid="ignore"):
    lost = np.where(learned > 0, (smooth[first:] - best) / np.where(learned > 0, learned, 1.0), 0.0)
  start = max(after, first) - first
  peak = start + int(np.argmax(lost[start:]))
  origin = int(np.argmin(smooth[first:first + peak + 1]))
  return {"from_step": first + origin + 1, "from_loss": float(smooth[first + origin]),
          "peak_step": first + peak + 1, "peak_loss": float(smooth[first + peak]),
          "lost": float(lost[peak]), "final_lost": float(lost[-1])}


def fails_mid_training(run: dict[str, Any]) -> bool:
  """The run gave back more than ``FAILURE_FRACTION`` of what it had learned after its warmup."""
  return run["setback"] is not None and run["setback"]["lost"] > FAILURE_FRACTION


def _run(record: TrialRecord, study: SpikeStudy, levels: dict[str, float]) -> dict[str, Any]:
  out = run_summary(record, levels["eval_unigram_loss"], levels["train_unigram_entropy"])
  skipped = [] if record.result is None else [int(s) for s in record.result.skipped_steps]
  out.update(setback=None if record.result is None else setback(
      record.result.train_loss, levels["train_unigram_entropy"], study.warmup_steps),
      skipped_steps=skipped)
  return out


def _count(runs: dict[str, dict[str, Any]], variant: str, key) -> int:
  return sum(bool(key(by_variant[variant])) for by_variant in runs.values())


def summarize(study: SpikeStudy, records: Sequence[TrialRecord],
              levels: dict[str, float]) -> dict[str, Any]:
  """Every number the report uses: per seed and variant, the run; per variant, the seed counts."""
  runs: dict[str, dict[str, Any]] = {}
  for record in records:
    variant = _variant(record.config)
    runs.setdefault(str(record.config.seed), {})[variant] = _run(record, study, levels)
  counts = {v: {"fail_mid_training": _count(runs, v, fails_mid_training),
                "learned_nothing": _count(runs, v, lambda r: r["failed_to_train"])}
            for v in VARIANTS}
  return {"study": study.to_dict(), "trivial_levels": levels, "runs": runs, "counts": counts,
          "seeds": list(study.seeds)}


def _variant(config: TrialConfig) -> str:
  return "step guard" if config.skip_spikes else "clipping" if config.clip_norm else "no fix"


def _describe_setback(run: dict[str, Any]) -> str:
  b = run["setback"]
  if b is None:
    return "not judged (it never learned)"
  text = (f"{b['lost']:.0%} lost: {b['from_loss']:.2f} at step {b['from_step']}, "
          f"{b['peak_loss']:.2f} at step {b['peak_step']}; {b['final_lost']:.0%} at the end")
  return ("**" + text + "**") if fails_mid_training(run) else text


def _describe_skips(steps: list[int]) -> str:
  if not steps:
    return "0"
  shown = ", ".join(str(s) for s in steps[:5]) + (", ..." if len(steps) > 5 else "")
  return f"{len(steps)} ({shown})"


def _prevented(run: dict[str, Any]) -> bool:
  """No mid-training failure, and the run learned something."""
  return not fails_mid_training(run) and not run["failed_to_train"]


def verdicts(summary: dict[str, Any]) -> list[str]:
  """Per variant, on how many seeds the run fails mid-training; per fix, on how many it prevents that."""
  n = len(summary["seeds"])
  runs = summary["runs"].values()
  c = summary["counts"]
  lines = [f"Without a fix, the run fails mid-training (gives back more than "
           f"{FAILURE_FRACTION:.0%} of what it had learned) on {c['no fix']['fail_mid_training']} of {n} "
           f"seeds, and ends having learned nothing on {c['no fix']['learned_nothing']} of {n} "
           f"[{c['no fix']['fail_mid_training']} of {n} seeds]."]
  failing = [r for r in runs if fails_mid_training(r["no fix"])]
  for v in VARIANTS[1:]:
    prevented = sum(_prevented(r[v]) for r in failing)
    lines.append(f"{_SUBJECT[v]} prevents the mid-training failure on {prevented} of the {len(failing)} "
                 f"seeds where the run without a fix fails (fails mid-training: {c[v]['fail_mid_training']} of {n} seeds; "
                 f"learned nothing: {c[v]['learned_nothing']} of {n}) [{prevented} of {len(failing)} seeds].")
  return lines


def results_table(summary: dict[str, Any]) -> list[str]:
  """The study's measured table in Markdown: what a setback is, then a row per seed and variant."""
  level = summary["trivial_levels"]["eval_unigram_loss"]
  lines = [
      f"Setback: after the warmup, the largest share of what the run had learned (the way "
      f"from the unigram level, {summary['trivial_levels']['train_unigram_entropy']:.2f} nats "
      f"on training batches, down to its best level so far) that its training loss "
      f"(running mean of {SETBACK_WINDOW} steps) gave back; a run fails mid-training when it "
      f"gave back more than {FAILURE_FRACTION:.0%} (in bold). A run whose final validation "
      f"loss is within {STALL_MARGIN} nats of the unigram level ({level:.3f} on the "
      f"validation windows) learned nothing.", "",
      "| seed | variant | setback after the warmup | steps skipped | final validation loss | label |",
      "|---|---|---|---|---|---|",
  ]
  for seed, by_variant in summary["runs"].items():
    for v in VARIANTS:
      r = by_variant[v]
      lines.append(f"| {seed} | {v} | {_describe_setback(r)} | "
                   f"{_describe_skips(r['skipped_steps'])} | {fmt(r.get('final_eval_loss'), '.3f')}"
                   f"{' (learned nothing)' if r['failed_to_train'] else ''} | "
                   f"{r.get('label', r.get('reason'))} |")
  return lines


def render_report(summary: dict[str, Any]) -> str:
  """``report.md``: the configuration, the measured table, the verdicts, the figure."""
  s = summary["study"]
  lines = [
      f"# Figure 7b: a mid-training failure and what stops it ({s['name']} study)", "",
      f"{s['norm_position'].capitalize()}-LN Transformer (the {s['base']} preset's model), "
      f"{s['warmup_steps']} warmup steps to a constant {s['learning_rate']:g}, "
      f"{s['num_steps']} steps, seeds {', '.join(str(x) for x in summary['seeds'])}. "
      f"Variants: no fix; the step guard (`optstab.skip_spikes`, its defaults); clipping the "
      f"global gradient norm to {s['clip_norm']:g}.", "",
  ] + results_table(summary)
  lines += ["", "## Verdicts", ""] + [f"- {v}" for v in verdicts(summary)]
  lines += ["", f"![Figure 7b]({summary['files']['fig7b']})", "", timing_line(summary), ""]
  return "\n".join(lines)


def write_figure(study: SpikeStudy, out_dir: str, records: Sequence[TrialRecord],
                 summary: dict[str, Any]) -> dict[str, str]:
  """``fig7b_midtraining.png``: a panel per seed, a curve per variant, the skipped steps marked."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  seeds = list(study.seeds)
  fig = Figure(figsize=(4.2 * len(seeds) + 0.6, 4.6), layout="constrained")
  axes = fig.subplots(1, len(seeds), sharey=True, squeeze=False)[0]
  level = summary["trivial_levels"]["train_unigram_entropy"]
  for ax, seed in zip(axes, seeds):
    runs = summary["runs"][str(seed)]
    for i, v in enumerate(VARIANTS):
      (record,) = [r for r in records if r.config.seed == seed and _variant(r.config) == v]
      if record.result is None:
        continue
      loss = running_mean(record.result.train_loss, SETBACK_WINDOW)
      steps = np.arange(1, loss.size + 1)
      skipped = record.result.skipped_steps
      ax.plot(steps, loss, color=f"C{i}", lw=1.4, ls=("-", "--", "-.")[i],
              label=v if ax is axes[0] else None)
      if skipped.size:
        ax.plot(skipped, loss[skipped - 1], ls="none", marker="v", ms=5, color=f"C{i}",
                mec="k", mew=0.4, label="a step the guard skipped" if ax is axes[0] else None)
    ax.axvline(study.warmup_steps, color="0.5", ls=":", lw=1)
    ax.axhline(level, color="0.3", ls="--", lw=1,
               label=f"unigram level ({level:.2f}: learned nothing)" if ax is axes[0] else None)
    failed = [v for v in VARIANTS if fails_mid_training(runs[v])]
    ax.set_title(f"seed {seed}: the guard skipped {len(runs['step guard']['skipped_steps'])} "
                 f"steps\nfails mid-training: {', '.join(failed) if failed else 'none'}",
                 fontsize="medium")
    ax.set_xlabel(f"step (dotted: end of the {study.warmup_steps}-step warmup)")
    ax.grid(True, alpha=0.3)
  # The first steps' fall from ~5 nats is the same in every run: the axis keeps the part that differs.
  axes[0].set_ylim(top=level + 0.3)
  axes[0].set_ylabel(f"training loss (running mean of {SETBACK_WINDOW} steps)")
  fig.legend(loc="outside lower center", ncols=5, fontsize="small")
  fig.suptitle(f"{study.norm_position.capitalize()}-LN, {study.warmup_steps} warmup steps to "
               f"{study.learning_rate:g}: training, then a mid-training failure; with the step "
               f"guard, with clipping to {study.clip_norm:g}")
  path = os.path.join(out_dir, "fig7b_midtraining.png")
  fig.savefig(path, dpi=100)
  return {"fig7b": path}


def run_spike_study(study: Union[str, SpikeStudy], out_dir: PathLike, *,
                    corpus: Union[None, PathLike, corpus_data.CharCorpus] = None,
                    progress: bool = True, executor: Optional[Executor] = None,
                    trial_timeout: Optional[float] = None,
                    seeds: Optional[Sequence[int]] = None) -> ExperimentResult:
  """Runs (or resumes) the Figure 7b study into ``out_dir``: trials, ``results.json``, ``report.md``, the figure.

  Args:
    study: a ``SpikeStudy`` or its name (``"spikes"``).
    out_dir: output folder (``trials.jsonl`` makes it resumable).
    corpus: a text file or folder, or a loaded ``CharCorpus`` (default: the
      base preset's, the standard-library sources).
    progress: progress bars.
    executor: where the trials run (``None``: one after another here).
    trial_timeout: seconds one trial may run (``None``: no limit).
    seeds: overrides ``study.seeds``.
  """
  if isinstance(study, str):
    _validation.check_one_of("study", study, sorted(SPIKE_STUDIES))
    study = SPIKE_STUDIES[study]
  if seeds is not None:
    study = study.replace(seeds=tuple(seeds))
  preset = get_preset(study.base)
  run = harness.start(out_dir, executor=executor, progress=progress, trial_timeout=trial_timeout)
  text = use_corpus(run, preset, corpus)
  plan = study_plan(study)
  records = run.trials(plan.configs, "Figure 7b study")
  summary = summarize(study, records, trivial_levels(preset, text))
  summary["plan"] = plan.counts()
  run.measured(summary)
  figures = write_figure(study, run.out_dir, records, summary)
  return ExperimentResult(summary, harness.write_outputs(run.out_dir, summary, figures,
                                                         render_report))
