"""The playbook's Post-LN vs Pre-LN warmup experiment: Figures 6, 7 and 8, and a diagnosis.

The rule (the FAQ's fix 5 and its "Learning rate warmup"). A Post-LN Transformer, LN(x + f(x)), needs a
long learning-rate warmup; warmup raises the best learning rate, more for
Post-LN than for Pre-LN, x + f(LN(x)). Published (Figure 8): best rates
Post-LN ~1e-4, Post-LN + warmup ~4.6e-4, Pre-LN ~1.3e-3, Pre-LN + warmup
~3.6e-3; (Figure 6) at a peak rate near 5e-4, of warmups 1, 1k, 4k, 10k and
40k steps only 40k trains.

``run_experiment(preset, out_dir)`` trains, through ``optstab.diagnosis``:

1. **Figure 8** -- four learning-rate sweeps (``learning_rate_sweep``): Post-LN
   and Pre-LN, each without and with linear warmup (then a constant rate).
   Every run lasts ``preset.num_steps`` steps, warmup included, and is ranked
   by its validation loss after the last step; lr* is the feasible rate with
   the lowest one.
2. **Figure 6** -- Post-LN at ``preset.figure6_learning_rate`` with each
   warmup of ``preset.figure6_warmups`` (``run_trials``; the no-warmup run and
   the Figure 8 warmup run are reused from the sweeps).
3. **Figure 7** -- (a) Post-LN's sweep, lr*, infeasible and failed-to-train
   trials marked; (b) the FAQ's long checks (``long_check``) at 5 x and 10 x
   Post-LN's lr*, with whether a mid-training rise appears.
4. **Diagnosis** -- ``optstab.diagnose`` on Post-LN and on Pre-LN over the
   same grid (it reuses the sweep trials): it should find Post-LN's
   instability and point to warmup, and raise no alarm on Pre-LN.

Our position on "failed to train". A stalled Post-LN run is finite and its
loss is far below 10 x the initial one, so the toolkit's feasibility rule
calls it feasible. The experiment records, beside every trial's
``classify_run`` label, an outcome rule of its own that uses no detector: a
run *failed to train* when its final validation loss is within
``STALL_MARGIN`` nats of the unigram level (the loss of predicting symbol
frequencies: the model learned nothing else). ``results.json`` carries that
level (``trivial_loss``) for the diagnosis's failed-to-train detection.

Where it breaks. At CPU scale (a 6-layer width-64 character model, hundreds
of steps) the effect appears two orders of magnitude earlier in steps and an
order of magnitude higher in rate than published, and the ratios between the
best rates are smaller. Trials are recorded in ``<out_dir>/trials.jsonl`` as
they finish; running again into the same folder resumes.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import Executor
from typing import Any, Optional, Union

import numpy as np

from optstab import plots, runner
from optstab.diagnosis import (
    Checks,
    FeasibilityRule,
    FixLadder,
    SweepResult,
    TrialConfig,
    TrialStore,
    classify_run,
    check_feasibility,
    diagnose,
    in_process,
    learning_rate_sweep,
    long_check,
    run_trials,
)
from optstab.diagnosis.store import TRIALS_FILE, TrialRecord
from optstab.diagnosis.trial import to_jsonable
from optstab.runner import ExperimentResult
from optstab.transformer import data as corpus_data
from optstab.transformer import train as transformer_train
from optstab.transformer.model import TransformerConfig
from optstab.transformer.presets import CURVES, PUBLISHED, Preset, get_preset

__all__ = ["run_experiment", "setup_for", "data_source_for", "ExperimentResult", "verdicts",
           "render_report", "STALL_MARGIN", "RULE"]

PathLike = Union[str, "os.PathLike[str]"]

#: How trials are judged infeasible (the toolkit's default rule, spelled out).
RULE = FeasibilityRule(max_loss_ratio=10.0, scope="any")

#: A run failed to train when its final validation loss is within this many nats
#: of the unigram level (trained quick-preset runs end ~1 nat below it).
STALL_MARGIN = 0.1

#: Window (steps) of the running mean drawn in the per-step loss figures.
SMOOTHING = 10


def data_source_for(preset: Preset, corpus: Optional[PathLike] = None) -> corpus_data.CorpusSource:
  """How to load the preset's corpus (``corpus`` overrides ``preset.corpus``)."""
  path = preset.corpus if corpus is None else os.fspath(corpus)
  return corpus_data.CorpusSource(path)


def setup_for(preset: Preset, corpus: corpus_data.CharCorpus) -> transformer_train.TrainSetup:
  """The Post-LN ``TrainSetup`` of the preset (trials switch ``norm_position`` via ``extra``)."""
  model = TransformerConfig(
      vocab_size=corpus.vocab_size, seq_len=preset.seq_len, depth=preset.depth,
      width=preset.width, num_heads=preset.num_heads, ff_width=preset.ff_width,
      norm_position="post", compute_dtype=preset.compute_dtype)
  return transformer_train.TrainSetup(
      model=model, batch_size=preset.batch_size, eval_sequences=preset.eval_sequences,
      fetch_every=min(50, preset.num_steps), eval_batch_size=min(256, preset.eval_sequences))


def _config(preset: Preset, norm_position: str, warmup_steps: int,
            learning_rate: Optional[float] = None) -> TrialConfig:
  """A run of ``preset.num_steps`` steps in all: ``warmup_steps`` of linear warmup, then constant."""
  return TrialConfig(
      learning_rate=preset.learning_rates[0] if learning_rate is None else learning_rate,
      num_steps=preset.num_steps - warmup_steps, warmup_steps=warmup_steps, schedule="constant",
      eval_every=preset.eval_every, seed=preset.seed,
      extra={"variant": f"{norm_position}_ln", "norm_position": norm_position})


def _finite(x) -> Optional[float]:
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _running_mean(x: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
  """Trailing running mean (the first ``window - 1`` entries average what exists)."""
  x = np.asarray(x, np.float64)
  c = np.cumsum(np.where(np.isfinite(x), x, 0.0))
  n = np.arange(1, x.size + 1)
  lagged = np.concatenate([np.zeros(window), c[:-window]]) if x.size > window else np.zeros(x.size)
  count = np.minimum(n, window)
  mean = (c - lagged[:x.size]) / count
  return np.where(np.isfinite(x), mean, np.nan)


def _mid_training_rise(loss: np.ndarray) -> Optional[dict[str, Any]]:
  """The largest rise of the smoothed loss above its running minimum after the first 10%.

  A number, not a verdict: ``classify_run`` gives the label.
  """
  smooth = _running_mean(loss)
  start = max(SMOOTHING, loss.size // 10)
  if loss.size <= start + 1 or not np.isfinite(smooth[start:]).any():
    return None
  best_so_far = np.fmin.accumulate(np.where(np.isfinite(smooth), smooth, np.inf))
  rise = smooth - best_so_far
  rise[:start] = 0.0
  step = int(np.nanargmax(rise))
  return {"rise": _finite(rise[step]), "step": step + 1, "from": _finite(best_so_far[step])}


def _run_summary(record: TrialRecord, trivial_eval_loss: float,
                 trivial_loss: float) -> dict[str, Any]:
  """Every number of one trial the report uses."""
  config = record.config
  out: dict[str, Any] = {"learning_rate": config.learning_rate,
                         "warmup_steps": config.warmup_steps,
                         "total_steps": config.total_steps,
                         "norm_position": config.extra.get("norm_position"),
                         "seconds": record.seconds}
  if record.result is None:
    out.update(feasible=False, reason=record.error, failed_to_train=True)
    return out
  r = record.result
  verdict = check_feasibility(r, RULE)
  diag = classify_run(r.train_loss, r.grad_norms, trivial_loss=trivial_loss)
  final_eval = _finite(r.eval_metrics["loss"][-1])
  failed = final_eval is None or final_eval >= trivial_eval_loss - STALL_MARGIN
  out.update(
      feasible=verdict.feasible, reason=verdict.reason,
      final_eval_loss=final_eval,
      best_eval_loss=_finite(np.nanmin(r.eval_metrics["loss"])),
      eval_steps=[int(s) for s in r.eval_steps],
      eval_loss=[_finite(v) for v in r.eval_metrics["loss"]],
      initial_train_loss=_finite(r.train_loss[0]),
      final_train_loss_smoothed=_finite(_running_mean(r.train_loss)[-1]),
      max_grad_norm=_finite(np.nanmax(r.grad_norms)),
      failed_to_train=bool(failed),
      label=diag.label, diagnosis=diag.summary(),
  )
  return out


def _seed_store(source: TrialStore, folder: str) -> None:
  """Copies the experiment's finished trials into ``folder``'s store, so a diagnosis there reruns none."""
  target = TrialStore(folder)
  for record in source.records():
    if target.get(record.config) is None:
      target.append(record)


def run_experiment(preset: Union[str, Preset], out_dir: PathLike, *,
                   corpus: Union[None, PathLike, corpus_data.CharCorpus] = None,
                   progress: bool = True, mesh=None,
                   executor: Optional[Executor] = None,
                   trial_timeout: Optional[float] = None) -> ExperimentResult:
  """Runs (or resumes) the whole experiment of ``preset`` into ``out_dir``.

  Args:
    preset: a ``Preset`` or its name (``"tiny"``, ``"quick"``, ``"gpu"``).
    out_dir: output folder: ``trials.jsonl`` (resumable store), PNG figures,
      ``results.json``, ``report.md`` and ``diagnosis/{post_ln,pre_ln}/``.
    corpus: a text file or folder, or a loaded ``CharCorpus`` (default: the
      preset's, the standard-library sources).
    progress: tqdm progress bars.
    mesh: a ``'data'`` mesh (default: every device of the process running a
      trial); not with ``executor``.
    executor: a ``concurrent.futures.Executor`` every ``optstab.diagnosis`` call
      runs its trials on (e.g. ``optstab.diagnosis.default_executor()``: one
      process per CPU core or per GPU); ``None``: one after another in this
      process. Each worker loads the corpus and compiles for itself; only this
      process writes ``out_dir``. The results do not depend on it.
    trial_timeout: seconds one trial (sweeps, Figure 6, checks, diagnoses) may run; a
      trial past it is recorded as timed out and the experiment goes on
      (``optstab.diagnosis.run_trials`` says what the limit can stop).
      ``None``: no limit.

  Returns:
    An ``ExperimentResult`` with ``summary`` (the content of ``results.json``)
    and ``files`` (name -> path).
  """
  preset = get_preset(preset) if isinstance(preset, str) else preset
  if mesh is not None and not in_process(executor):
    raise ValueError("give mesh or executor, not both: a mesh's devices belong to this process, "
                     "and each worker of an executor trains on its own devices.")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  start = time.perf_counter()
  source = corpus if isinstance(corpus, corpus_data.CharCorpus) else data_source_for(preset, corpus)
  text = runner.load_data(source)
  setup = setup_for(preset, text)
  corpus_data.check_size(text, preset.seq_len, preset.batch_size, preset.eval_sequences)
  # Workers' per-trial bars would interleave: with an executor, only trial counts show.
  trial_fn = transformer_train.make_trial_fn(setup, source, mesh=mesh,
                                             progress=progress and in_process(executor))
  store = TrialStore(out_dir)
  lrs = sorted(preset.learning_rates)
  sweep_bases = {name: _config(preset, norm, preset.warmup_steps if warm else 0)
                 for name, norm, warm in CURVES}
  fig6_configs = [_config(preset, "post", w, preset.figure6_learning_rate)
                  for w in preset.figure6_warmups]
  if not in_process(executor):
    # Every trial that needs no other trial's result, in one batch, so the workers
    # stay busy; the sweeps and Figure 6 below read them back from the store.
    run_trials(trial_fn, [base.replace(learning_rate=lr) for base in sweep_bases.values()
                          for lr in lrs] + fig6_configs,
               store=store, progress=progress, desc="trials", executor=executor,
               trial_timeout=trial_timeout)

  # Figure 8: four sweeps, every run preset.num_steps steps in all.
  sweeps: dict[str, SweepResult] = {
      name: learning_rate_sweep(trial_fn, lrs, base_config=base, metric="loss", rule=RULE,
                                store=store, progress=progress, executor=executor,
                                trivial_loss=text.unigram_entropy, trial_timeout=trial_timeout)
      for name, base in sweep_bases.items()}

  # Figure 6: Post-LN at one high rate, warmup lengths.
  fig6 = dict(zip(preset.figure6_warmups, run_trials(
      trial_fn, fig6_configs, store=store, progress=progress, desc="figure 6",
      executor=executor, trial_timeout=trial_timeout)))

  # Figure 7b: the FAQ's long checks at 5 x and 10 x Post-LN's lr*.
  long_runs = ()
  if sweeps["post_ln"].best is not None:
    long_runs = long_check(trial_fn, sweeps["post_ln"], factors=preset.long_check_factors,
                           rule=RULE, store=store, progress=progress, executor=executor,
                           trial_timeout=trial_timeout)

  # The diagnosis, on each model, over the same grid (reusing the sweep trials).
  diagnoses = {}
  if preset.run_diagnosis:
    for name, norm in (("post_ln", "post"), ("pre_ln", "pre")):
      folder = os.path.join(out_dir, "diagnosis", name)
      _seed_store(store, folder)
      diagnoses[name] = diagnose(
          trial_fn, lrs, base_config=_config(preset, norm, 0), out_dir=folder, metric="loss",
          rule=RULE, checks=Checks(short_steps=preset.short_check_steps,
                                   long_factors=preset.long_check_factors),
          fixes=FixLadder(kinds=preset.fix_kinds, rate_factors=preset.fix_rate_factors,
                          warmup_candidates=preset.warmup_candidates), progress=progress,
          executor=executor, trivial_loss=text.unigram_entropy, log=None,
          trial_timeout=trial_timeout)

  trivial = {
      "train_unigram_entropy": text.unigram_entropy,
      "eval_unigram_loss": text.unigram_loss(
          corpus_data.eval_windows(text, preset.seq_len, preset.eval_sequences)[:, 1:]),
      "valid_unigram_loss": text.valid_unigram_loss,
  }
  summary = _summarize(preset, text, sweeps, fig6, long_runs, diagnoses, trivial, out_dir)
  summary["wall_seconds"] = time.perf_counter() - start
  summary["trial_seconds"] = sum(r.seconds for r in store.records())
  summary["environment"] = runner.environment()
  files = _write_outputs(preset, out_dir, sweeps, fig6, long_runs, summary)
  return ExperimentResult(summary, files)


def _diagnosis_summary(d, out_dir: str) -> dict[str, Any]:
  rec = d.recommendation
  return {
      "verdict": d.verdict,
      "best_learning_rate": d.sweep.best_learning_rate,
      "fixes": [{"fix": f.family.name, "kind": f.family.kind, "status": f.status,
                 "reason": f.reason} for f in d.fixes],
      "recommendation": None if rec is None else {
          "fix": rec.family.name, "kind": rec.family.kind, "reason": rec.reason,
          "learning_rate": rec.chosen.learning_rate,
          "warmup_steps": rec.chosen.config.warmup_steps},
      "findings": [f"{f.topic}: {f.text}" for f in d.findings],
      "files": {k: os.path.relpath(v, out_dir) for k, v in d.files.items()},
  }


def _margin(trials: list[dict[str, Any]]) -> Optional[float]:
  """How much lower the best rate's final validation loss is than the runner-up's."""
  losses = sorted(t["final_eval_loss"] for t in trials
                  if t["feasible"] and t.get("final_eval_loss") is not None)
  return losses[1] - losses[0] if len(losses) > 1 else None


def _trains_up_to(trials: list[dict[str, Any]]) -> Optional[float]:
  """The largest grid rate at which this run and every lower-rate run trained (feasible, not stalled)."""
  best = None
  for t in trials:
    if not t["feasible"] or t["failed_to_train"]:
      break
    best = t["learning_rate"]
  return best


def _summarize(preset: Preset, text, sweeps, fig6, long_runs, diagnoses, trivial,
               out_dir: str) -> dict[str, Any]:
  level = trivial["eval_unigram_loss"]
  trivial_loss = trivial["train_unigram_entropy"]
  fig8 = {}
  for name, sweep in sweeps.items():
    trials = []
    for t in sweep.trials:
      s = _run_summary(t.record, level, trivial_loss)
      # The sweep's label: judged with the sweep's context (lr*'s final loss level).
      s.update(feasible=t.feasible, reason=t.reason, label=t.label, diagnosis=t.describe())
      trials.append(s)
    best = sweep.best
    fig8[name] = {
        "best_learning_rate": sweep.best_learning_rate,
        "best_eval_loss": None if best is None else _finite(best.metric_value),
        "at_edge_of_feasibility": sweep.at_edge_of_feasibility,
        "at_grid_top": sweep.at_grid_top,
        "failed_to_train_from": next((t["learning_rate"] for t in trials
                                      if t["failed_to_train"]), None),
        "trains_up_to": _trains_up_to(trials),
        "best_margin": _margin(trials),
        "trials": trials,
    }
  fig6_runs = {w: _run_summary(rec, level, trivial_loss) for w, rec in fig6.items()}
  fig7b = {"base_learning_rate": sweeps["post_ln"].best_learning_rate, "runs": []}
  for run in long_runs:
    s = _run_summary(run.record, level, trivial_loss)
    s.update(factor=run.factor, confirmation_label=run.label,
             mid_training_rise=None if run.result is None else _mid_training_rise(
                 run.result.train_loss))
    fig7b["runs"].append(s)
  return {
      "preset": preset.to_dict(),
      "corpus": dict(text.facts, name=text.name),
      "trivial_loss": trivial["train_unigram_entropy"],
      "trivial_levels": trivial,
      "stall_rule": (f"failed to train: final validation loss >= the unigram level of the "
                     f"evaluation windows ({level:.3f} nats) - {STALL_MARGIN} nats"),
      "feasibility_rule": RULE.describe(),
      "published": PUBLISHED,
      "figure8": {
          "step": preset.num_steps,
          "best_learning_rate": {k: v["best_learning_rate"] for k, v in fig8.items()},
          "best_eval_loss": {k: v["best_eval_loss"] for k, v in fig8.items()},
          "trains_up_to": {k: v["trains_up_to"] for k, v in fig8.items()},
          "curves": fig8,
      },
      "figure6": {
          "learning_rate": preset.figure6_learning_rate,
          "final_eval_loss": {str(w): s.get("final_eval_loss") for w, s in fig6_runs.items()},
          "failed_to_train": {str(w): s.get("failed_to_train") for w, s in fig6_runs.items()},
          "runs": {str(w): s for w, s in fig6_runs.items()},
      },
      "figure7b": fig7b,
      "diagnosis": {k: _diagnosis_summary(d, out_dir) for k, d in diagnoses.items()},
  }


# ----------------------------------------------------------------------------
# Outputs.


_PRETTY = {"post_ln": "Post-LN", "post_ln_warmup": "Post-LN + warmup", "pre_ln": "Pre-LN",
           "pre_ln_warmup": "Pre-LN + warmup"}


def _write_outputs(preset: Preset, out_dir: str, sweeps, fig6, long_runs,
                   summary: dict[str, Any]) -> dict[str, str]:
  files = {}
  level = summary["trivial_levels"]["eval_unigram_loss"]
  curves = {}
  for name, sweep in sweeps.items():
    trials = summary["figure8"]["curves"][name]["trials"]
    label = _PRETTY[name] + (f" ({preset.warmup_steps} warmup steps)" if "warmup" in name else "")
    curves[label] = (sweep.learning_rates, [t.get("final_eval_loss") for t in trials],
                     sweep.feasible, [t["failed_to_train"] for t in trials])
  files["fig8"] = plots.plot_loss_vs_learning_rate(
      curves, os.path.join(out_dir, "fig8_loss_vs_lr.png"), reference=level,
      reference_label="unigram level (learned nothing)",
      ylabel=f"validation loss at step {preset.num_steps} (nats)",
      title=f"Post-LN vs Pre-LN, with and without warmup ({preset.name} preset)")
  post = sweeps["post_ln"]
  files["fig7a"] = plots.plot_learning_rate_sweep(
      post.learning_rates, post.metric_values, post.feasible,
      os.path.join(out_dir, "fig7a_post_ln_sweep.png"), best_learning_rate=post.best_learning_rate,
      labels=post.labels,
      metric_name=f"validation loss at step {preset.num_steps}",
      title="Post-LN learning-rate sweep (Figure 7a)")
  warm = {}
  for w, rec in fig6.items():
    if rec.result is not None:
      s = summary["figure6"]["runs"][str(w)]
      warm[f"warmup {w}" + (" (failed to train)" if s["failed_to_train"] else "")] = \
          _running_mean(rec.result.train_loss)
  if warm:
    files["fig6"] = plots.plot_loss_curves(
        warm, os.path.join(out_dir, "fig6_warmup_sweep.png"), log_x=True, log_y=False,
        ylabel=f"training loss (running mean, {SMOOTHING} steps)",
        title=f"Post-LN, peak learning rate {preset.figure6_learning_rate:g} (Figure 6)")
  long_curves = {}
  best = post.best
  if best is not None and best.result is not None:
    long_curves[f"lr* = {best.learning_rate:.3g}"] = _running_mean(best.result.train_loss)
  for run in long_runs:
    if run.result is not None:
      long_curves[f"{run.factor:g} x lr* = {run.learning_rate:.3g}"] = \
          _running_mean(run.result.train_loss)
  if long_curves:
    files["fig7b"] = plots.plot_loss_curves(
        long_curves, os.path.join(out_dir, "fig7b_long_checks.png"), log_y=False,
        ylabel=f"training loss (running mean, {SMOOTHING} steps)",
        title="Post-LN long checks at 5x and 10x lr* (Figure 7b)")
  files["results"] = os.path.join(out_dir, "results.json")
  summary["files"] = {k: os.path.basename(v) for k, v in files.items()}
  with open(files["results"], "w", encoding="utf-8") as f:
    json.dump(to_jsonable(summary), f, indent=1, allow_nan=False)
  files["report"] = os.path.join(out_dir, "report.md")
  with open(files["report"], "w", encoding="utf-8") as f:
    f.write(render_report(summary))
  files["trials"] = os.path.join(out_dir, TRIALS_FILE)
  return files


def _fmt(x, spec=".3g", none="n/a") -> str:
  return none if x is None else format(x, spec)


def _cell(t: dict[str, Any]) -> str:
  cell = _fmt(t.get("final_eval_loss"), ".3f")
  if not t["feasible"]:
    return cell + " (infeasible)"
  if t["failed_to_train"]:
    return cell + " (failed to train)"
  if t.get("label") not in (None, "stable"):
    return cell + f" ({t['label']})"
  return cell


def render_report(s: dict[str, Any]) -> str:
  """The markdown report: our numbers beside the published ones, and what reproduced."""
  p, c, pub = s["preset"], s["corpus"], s["published"]
  f8 = s["figure8"]
  curves = f8["curves"]
  env = s["environment"]
  lines = [
      f"# Post-LN vs Pre-LN warmup experiment: preset `{p['name']}`",
      "",
      f"{p['description']}.",
      "",
      f"Corpus: {c['name']} ({c.get('num_files', '?')} files; {c['train_chars']:,} training / "
      f"{c['valid_chars']:,} validation characters; {c['vocab_size']} symbols"
      + (f"; Python {c['python_version']}" if "python_version" in c else "")
      + f"). Unigram entropy of the training text {c['unigram_entropy']:.3f} nats; unigram level "
      f"of the evaluation windows {s['trivial_levels']['eval_unigram_loss']:.3f} nats.",
      f"Model: decoder-only, {p['depth']} layers, width {p['width']}, {p['num_heads']} heads, "
      f"feed-forward {p['ff_width'] or 4 * p['width']}, ReLU, sequence {p['seq_len']}, batch "
      f"{p['batch_size']}, Xavier init, {p['compute_dtype']}. Adam (0.9, 0.98, 1e-9); linear "
      f"warmup then constant. Every run lasts {p['num_steps']} steps, warmup included.",
      f"Infeasible: {s['feasibility_rule']}. {s['stall_rule'][0].upper()}{s['stall_rule'][1:]}.",
      runner.environment_line(env) + " Results vary across machines.",
      f"Wall time of the last invocation: {s['wall_seconds']:.0f} s; the trials took "
      f"{s['trial_seconds']:.0f} s in all (summed over every invocation that ran them).",
      "",
      f"## Figure 8: validation loss at step {f8['step']} vs peak learning rate",
      "",
      "| learning rate | " + " | ".join(_PRETTY[k] for k in curves) + " |",
      "|---|" + "---|" * len(curves),
  ]
  first = next(iter(curves.values()))
  for i, t0 in enumerate(first["trials"]):
    cells = [_cell(curves[k]["trials"][i]) for k in curves]
    lines.append(f"| {t0['learning_rate']:g} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "| curve | published best rate | our best rate | our best loss (margin over the "
      "runner-up) | trains up to | failed to train from |",
      "|---|---|---|---|---|---|",
  ]
  for k, v in curves.items():
    top = " (grid top)" if v["at_grid_top"] else ""
    lines.append(f"| {_PRETTY[k]} | ~{pub['figure8_best_learning_rate'][k]:g} | "
                 f"{_fmt(v['best_learning_rate'], 'g')}{top} | {_fmt(v['best_eval_loss'], '.3f')} "
                 f"({_fmt(v['best_margin'], '.3f')}) | "
                 f"{_fmt(v['trains_up_to'], 'g', 'none')} | "
                 f"{_fmt(v['failed_to_train_from'], 'g', 'none on the grid')} |")
  f6 = s["figure6"]
  lines += [
      "",
      f"## Figure 6: Post-LN warmup lengths at peak rate {f6['learning_rate']:g}",
      "",
      "| warmup steps | final validation loss | outcome | classify_run label |",
      "|---|---|---|---|",
  ]
  for w, r in f6["runs"].items():
    outcome = "failed to train" if r["failed_to_train"] else "trains"
    lines.append(f"| {w} | {_fmt(r.get('final_eval_loss'), '.3f')} | {outcome} | "
                 f"{r.get('label', 'n/a')} |")
  lines.append(f"| published (peak ~{pub['figure6_peak_learning_rate']:g}) | warmups "
               f"{', '.join(map(str, pub['figure6_warmups']))} | only "
               f"{pub['figure6_only_trains']} trains | |")
  f7 = s["figure7b"]
  lines += ["", "## Figure 7b: long checks at multiples of Post-LN's lr*", ""]
  if f7["runs"]:
    lines += ["| factor | learning rate | final validation loss | outcome | largest rise of the "
              "smoothed training loss after 10% of training | classify_run label |",
              "|---|---|---|---|---|---|"]
    for r in f7["runs"]:
      rise = r.get("mid_training_rise") or {}
      lines.append(f"| {r['factor']:g} x | {r['learning_rate']:.3g} | "
                   f"{_fmt(r.get('final_eval_loss'), '.3f')} | "
                   f"{'failed to train' if r['failed_to_train'] else 'trains'} | "
                   f"{_fmt(rise.get('rise'), '.3f')} nats at step {rise.get('step', 'n/a')} | "
                   f"{r.get('label', 'n/a')} |")
  else:
    lines.append("No long checks: Post-LN has no feasible rate on the grid.")
  if s["diagnosis"]:
    lines += ["", "## optstab.diagnose on each model (the same grid)", ""]
    for name, d in s["diagnosis"].items():
      lines += [f"### {_PRETTY[name]}: verdict `{d['verdict']}`", ""]
      lines += [f"- {f}" for f in d["findings"]] + [""]
  lines += ["", "## What reproduced", ""] + [f"- {v}" for v in verdicts(s)]
  lines += ["", "Figures: " + ", ".join(f"`{v}`" for v in s.get("files", {}).values()
                                         if v.endswith(".png")), ""]
  return "\n".join(lines)


def verdicts(s: dict[str, Any]) -> list[str]:
  """Plain sentences: which published findings our numbers reproduce."""
  curves = s["figure8"]["curves"]
  best = s["figure8"]["best_learning_rate"]
  out = []
  post_fail = curves["post_ln"]["failed_to_train_from"]
  pre_fail = curves["pre_ln"]["failed_to_train_from"]
  if post_fail is not None and (pre_fail is None or pre_fail > post_fail):
    out.append(f"REPRODUCED: without warmup, Post-LN fails to train from rate {post_fail:g} "
               f"(its loss stays at the unigram level, without NaN), where Pre-LN "
               + ("trains on the whole grid." if pre_fail is None else
                  f"still trains (it fails only from {pre_fail:g})."))
  else:
    out.append("NOT reproduced: Post-LN does not fail to train at lower rates than Pre-LN on "
               "this grid.")
  up = s["figure8"]["trains_up_to"]
  grid_top = max(t["learning_rate"] for t in curves["post_ln"]["trials"])

  def limit(k):  # a curve that trains on the whole grid trains beyond its top
    return math.inf if up[k] == grid_top else (up[k] or 0.0)

  raised = limit("post_ln_warmup") > limit("post_ln") and limit("pre_ln") > limit("post_ln")
  out.append(("REPRODUCED" if raised else "NOT reproduced") +
             ": the highest rate that trains is raised by warmup and by Pre-LN (trains up to: " +
             ", ".join(f"{_PRETTY[k]} {_fmt(up[k], 'g', 'none')}"
                       + (" (whole grid)" if up[k] == grid_top else "") for k in curves) +
             "); in the published Figure 8 the Post-LN curves also go unstable first.")
  names = ("post_ln", "post_ln_warmup", "pre_ln", "pre_ln_warmup")
  if all(best[k] is not None for k in names):
    b = [best[k] for k in names]
    warm_post, warm_pre = b[1] / b[0], b[3] / b[2]
    out.append(("REPRODUCED" if b[1] > b[0] else "NOT reproduced") +
               f": warmup raises Post-LN's best rate ({b[0]:g} -> {b[1]:g}; published 1e-4 -> "
               f"4.6e-4).")
    out.append(("REPRODUCED" if b[2] > b[0] else "NOT reproduced") +
               f": Pre-LN's best rate is above Post-LN's ({b[2]:g} vs {b[0]:g}; published "
               f"1.3e-3 vs 1e-4).")
    order = b[0] < b[1] <= b[2] <= b[3]
    out.append(("REPRODUCED" if order else "NOT reproduced") +
               f": the published order Post-LN < Post-LN + warmup <= Pre-LN <= Pre-LN + warmup "
               f"({' / '.join(f'{x:g}' for x in b)}; published 1e-4 / 4.6e-4 / 1.3e-3 / 3.6e-3).")
    out.append(("REPRODUCED" if warm_post > warm_pre else "NOT reproduced") +
               f": warmup helps Post-LN more than Pre-LN (best rate x{warm_post:.3g} vs "
               f"x{warm_pre:.3g}; published x4.6 vs x2.8).")
  else:
    out.append("NOT reproduced: some curve has no feasible rate, so the best rates cannot be "
               "compared.")
  f6 = s["figure6"]
  runs = sorted(((int(w), r) for w, r in f6["runs"].items()), key=lambda x: x[0])
  trains = [w for w, r in runs if not r["failed_to_train"]]
  fails = [w for w, r in runs if r["failed_to_train"]]
  monotone = bool(trains) and bool(fails) and max(fails) < min(trains)
  out.append(("REPRODUCED" if monotone else "NOT reproduced") +
             f": at peak rate {f6['learning_rate']:g}, short warmups fail and long ones train "
             f"(failed: {fails or 'none'}; trained: {trains or 'none'}; published: of 1, 1k, 4k, "
             f"10k and 40k only 40k trains).")
  runs7 = s["figure7b"]["runs"]
  if runs7:
    rises = [r for r in runs7 if r.get("label") == "mid-training-unstable"]
    stalls = [r for r in runs7 if r["failed_to_train"]]
    if rises:
      out.append("Figure 7b: a mid-training rise appears ("
                 + ", ".join(f"{r['factor']:g} x lr*" for r in rises) + ", by classify_run).")
    else:
      out.append("Figure 7b: NO mid-training rise after a steady decline at "
                 + ", ".join(f"{r['factor']:g} x lr*" for r in runs7)
                 + (": those runs fail to train from the start (stall at the unigram level), "
                    "the Post-LN failure mode, not the FAQ's Figure 7b shape."
                    if len(stalls) == len(runs7) else " (see the table for their outcomes)."))
  diag = s["diagnosis"]
  if diag:
    post, pre = diag.get("post_ln"), diag.get("pre_ln")
    if post is not None:
      out.append(("REPRODUCED" if post["verdict"] != "stable" else "NOT reproduced") +
                 f": optstab.diagnose on Post-LN finds the instability (verdict "
                 f"`{post['verdict']}`).")
      if post["verdict"] != "stable":
        rec = post["recommendation"]
        found = (f"it recommends {rec['fix']}: {rec['reason']}" if rec is not None else
                 "it recommends no fix: " + ("; ".join(f"{f['fix']}: {f['status']} ({f['reason']})"
                                             for f in post["fixes"]) or "no fix was searched"))
        out.append(("REPRODUCED" if rec is not None and rec["kind"] == "warmup" else
                    "NOT reproduced") + f": optstab.diagnose points to warmup on Post-LN ({found})."
                   )
    if pre is not None:
      rec = pre["recommendation"]
      out.append(("REPRODUCED" if pre["verdict"] == "stable" else "NOT reproduced") +
                 f": optstab.diagnose raises no alarm on Pre-LN (verdict `{pre['verdict']}`"
                 + ("" if rec is None else f"; it recommends {rec['fix']}") + ").")
  return out
