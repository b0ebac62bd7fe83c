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

Seeds and grids. ``seeds=`` (default: the preset's ``seeds``) runs Figures 6,
7 and 8 once per seed; the report gives every seed's best rate per curve and
its spread, says on how many seeds the published order holds, and counts the
seeds behind every verdict. A preset may give each curve its own grid
(``Preset.curve_learning_rates``), a window around that curve's optimum, so a
fine grid costs few trials. ``trial_plan(preset)`` lists every trial without
training.

Where it breaks. At CPU scale (a 6-layer width-64 character model, hundreds
of steps) the effect appears two orders of magnitude earlier in steps and an
order of magnitude higher in rate than published, and the ratios between the
best rates are smaller. Trials are recorded in ``<out_dir>/trials.jsonl`` as
they finish; running again into the same folder resumes.

The demo's parts: this module is the trial plan; ``summary`` turns the trials
into numbers, ``report`` into the report and the verdicts, ``figures`` into
the figures; ``optstab.harness`` does the rest (the store, the executor and
mesh checks, the machine record, timings, ``results.json``, ``report.md``).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from typing import Optional, Sequence, Union

from optstab import harness, runner
from optstab._types import PathLike
from optstab.diagnosis import Checks, FixLadder, SweepResult, TrialStore, diagnose, long_check
from optstab.diagnosis.store import TRIALS_FILE
from optstab.harness import ExperimentResult, TrialPlan
from optstab.trial import TrialConfig
from optstab.transformer import data as corpus_data
from optstab.transformer import train as transformer_train
from optstab.transformer.figures import write_figures
from optstab.transformer.model import TransformerConfig
from optstab.transformer.presets import CURVES, Preset, get_preset
from optstab.transformer.report import PRETTY, claims, render_report, verdicts
from optstab.transformer.summary import RULE, STALL_MARGIN, seed_table, summarize

__all__ = ["run_experiment", "trial_plan", "setup_for", "data_source_for", "ExperimentResult", "verdicts",
           "render_report", "STALL_MARGIN", "RULE"]


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


def use_corpus(run: harness.Run, preset: Preset,
               corpus: Union[None, PathLike, corpus_data.CharCorpus], *,
               mesh=None) -> corpus_data.CharCorpus:
  """Loads the corpus, checks it fits ``preset``, and has ``run`` train the preset's model on it."""
  source = corpus if isinstance(corpus, corpus_data.CharCorpus) else data_source_for(preset, corpus)
  text = runner.load_data(source)
  corpus_data.check_size(text, preset.seq_len, preset.batch_size, preset.eval_sequences)
  run.use(transformer_train.make_trial_fn(setup_for(preset, text), source, mesh=mesh,
                                          progress=run.trial_progress))
  return text


def trivial_levels(preset: Preset, text: corpus_data.CharCorpus) -> dict[str, float]:
  """The unigram levels (a model that learned only symbol frequencies) the reports judge against."""
  return {
      "train_unigram_entropy": text.unigram_entropy,
      "eval_unigram_loss": text.unigram_loss(
          corpus_data.eval_windows(text, preset.seq_len, preset.eval_sequences)[:, 1:]),
      "valid_unigram_loss": text.valid_unigram_loss,
  }


def _config(preset: Preset, norm_position: str, warmup_steps: int,
            learning_rate: Optional[float] = None) -> TrialConfig:
  """A run of ``preset.num_steps`` steps in all: ``warmup_steps`` of linear warmup, then constant."""
  return TrialConfig(
      learning_rate=preset.learning_rates[0] if learning_rate is None else learning_rate,
      num_steps=preset.num_steps - warmup_steps, warmup_steps=warmup_steps, schedule="constant",
      eval_every=preset.eval_every, seed=preset.seed,
      extra={"variant": f"{norm_position}_ln", "norm_position": norm_position})


def _seed_store(source: TrialStore, folder: str) -> None:
  """Copies the experiment's finished trials into ``folder``'s store, so a diagnosis there reruns none."""
  target = TrialStore(folder)
  for record in source.records():
    if target.get(record.config) is None:
      target.append(record)


def trial_plan(preset: Union[str, Preset], seeds: Optional[Sequence[int]] = None) -> TrialPlan:
  """Every trial of ``preset`` on ``seeds`` (default: the preset's), built without training.

  The listed trials are Figure 8's four curves, each on its own grid, and
  Figure 6's warmups (a trial both figures hold runs once), for every seed;
  Figure 7b's long checks, at multiples of Post-LN's lr*, are counted (one per
  factor and seed, ``num_steps`` steps each). The diagnosis's own trials (short
  checks, its fix ladder) are not in the plan: they depend on what it finds.
  """
  preset = get_preset(preset) if isinstance(preset, str) else preset
  seeds = harness.check_seeds(preset.seeds if seeds is None else seeds, preset.seed)
  configs = []
  for seed in seeds:
    p = preset.replace(seed=seed)
    configs += [c for name, base in _sweep_bases(p).items()
                for c in _grid_configs(p, name, base)]
    configs += _figure6_configs(p)
  long_checks = [("post_ln", preset.num_steps)] * (len(preset.long_check_factors) * len(seeds))
  return TrialPlan.build(seeds, configs, long_checks)


def _sweep_bases(preset: Preset) -> dict[str, TrialConfig]:
  return {name: _config(preset, norm, preset.warmup_steps if warm else 0)
          for name, norm, warm in CURVES}


def _grid_configs(preset: Preset, name: str, base: TrialConfig) -> list[TrialConfig]:
  return [base.replace(learning_rate=lr) for lr in preset.curve_grid(name)]


def _figure6_configs(preset: Preset) -> list[TrialConfig]:
  return [_config(preset, "post", w, preset.figure6_learning_rate) for w in preset.figure6_warmups]


def run_experiment(preset: Union[str, Preset], out_dir: PathLike, *,
                   corpus: Union[None, PathLike, corpus_data.CharCorpus] = None,
                   progress: bool = True, mesh=None,
                   executor: Optional[Executor] = None,
                   trial_timeout: Optional[float] = None,
                   seeds: Optional[Sequence[int]] = None) -> ExperimentResult:
  """Runs (or resumes) the whole experiment of ``preset`` into ``out_dir``.

  Args:
    preset: a ``Preset`` or its name (``"tiny"``, ``"quick"``, ``"standard"``,
      ``"gpu"``).
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
    seeds: run Figures 6, 7 and 8 once per seed (default: the preset's
      ``seeds``, else its one ``seed``); the report's tables and figures show
      the first seed, a table gives every seed's best rates, and every
      verdict says on how many seeds it holds. The diagnosis runs on the
      first seed.

  Returns:
    An ``ExperimentResult`` with ``summary`` (the content of ``results.json``)
    and ``files`` (name -> path).
  """
  preset = get_preset(preset) if isinstance(preset, str) else preset
  plan = trial_plan(preset, seeds)
  run = harness.start(out_dir, mesh=mesh, executor=executor, progress=progress,
                      trial_timeout=trial_timeout)
  text = use_corpus(run, preset, corpus, mesh=mesh)
  run.run_ahead(plan.configs)
  trivial = trivial_levels(preset, text)
  runs = [_run_seed(preset.replace(seed=seed), run, text, trivial, diagnosis=i == 0)
          for i, seed in enumerate(plan.seeds)]
  summary, sweeps, fig6, long_runs = runs[0]
  summary = dict(summary)
  per_seed = [r[0] for r in runs]
  summary["seeds"] = list(plan.seeds)
  if len(plan.seeds) > 1:
    summary["per_seed"] = {str(seed): s for seed, s in zip(plan.seeds, per_seed)}
  summary["figure8_seeds"] = seed_table(per_seed, plan.seeds)
  summary["plan"] = plan.counts()
  summary["verdicts"] = harness.seeds.verdict_support(per_seed, plan.seeds, claims)
  run.measured(summary)
  figures = write_figures(preset, run.out_dir, sweeps, fig6, long_runs, summary)
  files = harness.write_outputs(run.out_dir, summary, figures, render_report)
  files["trials"] = os.path.join(run.out_dir, TRIALS_FILE)
  return ExperimentResult(summary, files)


def _run_seed(preset: Preset, run: harness.Run, text: corpus_data.CharCorpus,
              trivial: dict[str, float], *, diagnosis: bool):
  """One seed's trials and summary: ``(summary, sweeps, figure 6 records, long checks)``."""
  # Figure 8: four sweeps, each on its curve's grid, every run preset.num_steps steps in all.
  sweeps: dict[str, SweepResult] = {
      name: run.sweep(list(preset.curve_grid(name)), base, metric="loss", rule=RULE,
                      trivial_loss=text.unigram_entropy)
      for name, base in _sweep_bases(preset).items()}

  # Figure 6: Post-LN at one high rate, warmup lengths.
  fig6 = dict(zip(preset.figure6_warmups, run.trials(_figure6_configs(preset), "figure 6")))

  # Figure 7b: the FAQ's long checks at multiples of Post-LN's lr*.
  long_runs = ()
  if preset.long_check_factors and sweeps["post_ln"].best is not None:
    long_runs = long_check(run.trial_fn, sweeps["post_ln"], factors=preset.long_check_factors,
                           rule=RULE, store=run.store, **run.options)

  # The diagnosis, on each model, over the same grid (reusing the sweep trials).
  diagnoses = {}
  if preset.run_diagnosis and diagnosis:
    lrs = sorted(preset.learning_rates)
    for name, norm in (("post_ln", "post"), ("pre_ln", "pre")):
      folder = os.path.join(run.out_dir, "diagnosis", name)
      _seed_store(run.store, folder)
      diagnoses[name] = diagnose(
          run.trial_fn, lrs, base_config=_config(preset, norm, 0), out_dir=folder,
          metric="loss", rule=RULE, checks=Checks(
              short_steps=preset.short_check_steps,
              # A preset without long checks of its own leaves the diagnosis its defaults.
              **({"long_factors": preset.long_check_factors} if preset.long_check_factors else {})),
          fixes=FixLadder(kinds=preset.fix_kinds, rate_factors=preset.fix_rate_factors,
                          warmup_candidates=preset.warmup_candidates),
          trivial_loss=text.unigram_entropy, log=None, name=f"{PRETTY[name]} Transformer",
          **run.options)

  summary = summarize(preset, text, sweeps, fig6, long_runs, diagnoses, trivial, run.out_dir)
  return summary, sweeps, fig6, long_runs
