"""Scales of the Post-LN / Pre-LN warmup experiment (the playbook's Figures 6, 7 and 8).

A :class:`Preset` fixes the corpus, the model, the step budget, the Figure 8
learning-rate grid, the warmup of its "+ warmup" curves, the Figure 6 rate and
warmup lengths, the Figure 7b factors and the diagnosis's short check.

Budget. Every run of Figures 6 and 8 lasts exactly ``num_steps`` steps,
warmup included (a ``w``-step warmup leaves ``num_steps - w`` constant-rate
steps), so "validation loss at a fixed step" compares equal budgets.

Scaling. The published Figure 6 (a Transformer on WMT-scale data) swept
warmups of 1, 1k, 4k, 10k and 40k steps at a peak rate near 5e-4, and only
the 40k warmup trained. At CPU scale (a 6-layer, width-64 character model, a
few hundred steps) the same shape appears two orders of magnitude earlier: the
measurements found Post-LN stalling at the unigram entropy without
warmup from rate 3.2e-3, and 100 warmup steps enough at 3e-3. The quick
preset's grid is a quarter-decade from 1e-3 to 1e-2; its Figure 6 rate is
5.6e-3, where (measured, 400 steps, one seed) warmups of 0 and 10 steps
stall, 30 trains part way and then rises, 100 and 300 train. Its warmups are 0
(none; the paper's 1), 10, 30, 100 and 300 steps.

Measured cost (a shared 2-core machine, other jobs running, so an upper
bound): ~0.04 s per training step of the quick model in one process; the
quick preset is 29 trials, ~11,000 steps plus evaluations.

The standard preset: Figure 8 at 1000 steps, 3 seeds. An independent study of
this model at 1000 steps (200 warmup steps, 2 seeds) found the best rates
Post-LN ~1e-3, Post-LN + warmup 1.5-2.2e-3, Pre-LN ~3.2e-3, Pre-LN + warmup
3.2-4.6e-3 -- the published order, which 400 steps do not show. Each curve
gets its own window of 4 rates, 6 per decade, around that optimum
(``curve_learning_rates``; a first full run of this preset with 5 rates per
curve found the optima of all 3 seeds inside these windows and took ~21 min),
so 3 seeds cost 16 Figure 8 trials each; Figure 6
runs at 4.6e-3 (where Post-LN stalls without warmup and trains with 200 steps
of it) with warmups of 0, 50, 200 and 600 steps, on every seed. No Figure 7b long checks and no diagnosis: ``optstab.diagnose``
adds its short checks and a fix ladder of up to tens of 1000-step trials per
model, beyond the budget (``--diagnosis`` runs it on the first seed anyway).
The plan (``optstab.transformer.experiment.trial_plan``): 60 trials of 1000
steps, 2 compiled models.

Its cost, measured with ``benchmarks/standard_preset_cost.py`` (a trial of the
standard preset in one single-threaded XLA process, the layout of a default
worker; user + system CPU seconds from ``getrusage``) on the shared 2-core
Intel Xeon VM while other jobs kept its load average at 2-9: 30.6-32.5 CPU s
per 1000-step trial in three runs (4 evaluations of 128 windows included),
9-12 CPU s for the first trial of a model beyond that (compilation).
The whole preset's first run (69 trials, two workers, an otherwise idle
machine) measured more: 2449 s of trial time in all, 35.5 s per trial, so
``CPU_COST`` holds that (0.0355 s per step, evaluations included), and
``trial_plan("standard").estimate(CPU_COST)`` gives ~18 min on 2 cores
with the default two workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from optstab import _validation
from optstab.harness import seeds as harness_seeds
from optstab.harness.plan import CostModel
from optstab.transformer.model import COMPUTE_DTYPES

__all__ = ["Preset", "PRESETS", "PUBLISHED", "CURVES", "CPU_COST", "get_preset"]

#: The four curves of Figure 8: (name, norm position, with warmup).
CURVES = (
    ("post_ln", "post", False),
    ("post_ln_warmup", "post", True),
    ("pre_ln", "pre", False),
    ("pre_ln_warmup", "pre", True),
)

#: The measured cost of the quick and standard presets' model (6 layers, width 64, seq 32,
#: batch 16, float32, one single-threaded XLA:CPU process), measured (see above).
CPU_COST = CostModel(
    step_cpu_seconds={"*": 0.0355}, compile_cpu_seconds=12.0,
    measured="the standard preset's first whole run (69 trials of 1000 steps, 2 workers, "
             "an idle 2-core AMD EPYC VM): 35.5 s per trial, evaluations included; "
             "compilation from benchmarks/standard_preset_cost.py")

#: The published values (read from the playbook's figures).
PUBLISHED = {
    "figure6_warmups": [1, 1000, 4000, 10000, 40000],
    "figure6_peak_learning_rate": 5e-4,
    "figure6_only_trains": 40000,
    "figure8_best_learning_rate": {"post_ln": 1e-4, "post_ln_warmup": 4.6e-4,
                                   "pre_ln": 1.3e-3, "pre_ln_warmup": 3.6e-3},
}


@dataclasses.dataclass(frozen=True)
class Preset:
  """One scale of the experiment.

  Attributes:
    name, description: for ``--help`` and the report.
    corpus: a text file or folder; ``None`` for the standard-library corpus.
    seq_len, depth, width, num_heads, ff_width: the model
      (``ff_width=None``: 4 x width).
    batch_size: sequences per step.
    compute_dtype: ``"float32"`` or ``"bfloat16"``.
    num_steps: steps of every Figure 6/8 run, warmup included; Figure 8 is
      the validation loss after this step.
    learning_rates: the Figure 8 grid (peak rates).
    warmup_steps: the warmup of the "+ warmup" curves.
    figure6_learning_rate: the Figure 6 peak rate (on the grid).
    figure6_warmups: the Figure 6 warmup lengths (0 = none).
    long_check_factors: Figure 7b's multiples of Post-LN's lr*.
    short_check_steps: the diagnosis's short check length.
    warmup_candidates: the diagnosis's warmup lengths (those up to 10% of
      ``num_steps``; denser fractions of it when fewer than three fit).
    fix_kinds, fix_rate_factors: the diagnosis's fix ladder: which fixes it
      tries, at which multiples of the unstable rate (``optstab.FixLadder``).
    eval_every: evaluation cadence.
    eval_sequences: validation windows per evaluation.
    seed: the seed of every trial.
    run_diagnosis: run ``optstab.diagnose`` on Post-LN and Pre-LN (on the
      first seed).
    curve_learning_rates: one grid per curve of ``CURVES``, in its order, each
      a window around that curve's optimum and part of ``learning_rates``;
      ``()``: every curve on ``learning_rates``.
    seeds: the seeds the experiment runs by default, each the whole
      experiment again (``None``: ``(seed,)``; ``--seeds`` overrides it).
  """

  name: str
  description: str
  corpus: Optional[str] = None
  seq_len: int = 32
  depth: int = 6
  width: int = 64
  num_heads: int = 4
  ff_width: Optional[int] = None
  batch_size: int = 16
  compute_dtype: str = "float32"
  num_steps: int = 400
  learning_rates: tuple[float, ...] = (1e-3, 1.8e-3, 3.2e-3, 5.6e-3, 1e-2)
  warmup_steps: int = 100
  figure6_learning_rate: float = 5.6e-3
  figure6_warmups: tuple[int, ...] = (0, 10, 30, 100, 300)
  long_check_factors: tuple[float, ...] = (5.0, 10.0)
  short_check_steps: int = 200
  warmup_candidates: tuple[int, ...] = (10, 30, 100)
  fix_kinds: tuple[str, ...] = ("warmup", "clipping", "skip spikes", "optimizer", "architecture")
  fix_rate_factors: tuple[float, ...] = (10.0, 5.0, 3.0, 2.0, 1.5, 1.0)
  eval_every: int = 100
  eval_sequences: int = 128
  seed: int = 0
  run_diagnosis: bool = True
  curve_learning_rates: tuple[tuple[float, ...], ...] = ()
  seeds: Optional[tuple[int, ...]] = None

  def __post_init__(self):
    if self.seeds is not None:
      harness_seeds.check_seeds(self.seeds, self.seed)
    if self.curve_learning_rates:
      if len(self.curve_learning_rates) != len(CURVES):
        raise ValueError(f"curve_learning_rates must hold one grid per curve "
                         f"({', '.join(c[0] for c in CURVES)}) or none; got "
                         f"{len(self.curve_learning_rates)}.")
      for (name, _, _), grid in zip(CURVES, self.curve_learning_rates):
        missing = [lr for lr in grid if lr not in self.learning_rates]
        if not grid or missing:
          raise ValueError(f"the {name} grid {tuple(grid)} must be a non-empty part of "
                           f"learning_rates {self.learning_rates}"
                           + (f"; {missing} are not." if missing else "."))
    for name in ("seq_len", "depth", "width", "num_heads", "batch_size", "num_steps",
                 "short_check_steps", "eval_every", "eval_sequences"):
      _validation.check_positive_int(name, getattr(self, name))
    _validation.check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
    _validation.check_positive_int("seed", self.seed, minimum=0)
    _validation.check_one_of("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
    if not self.learning_rates:
      raise ValueError("learning_rates must hold at least one rate; got ().")
    for i, lr in enumerate(self.learning_rates):
      _validation.check_positive(f"learning_rates[{i}]", lr)
    for i, f in enumerate(self.long_check_factors):
      _validation.check_positive(f"long_check_factors[{i}]", f)
    for i, w in enumerate(self.figure6_warmups + (self.warmup_steps,)):
      if not 0 <= w < self.num_steps:
        raise ValueError(f"warmup lengths must be in [0, num_steps={self.num_steps}) so that "
                         f"some steps run at the peak rate; got {w}.")
    if self.figure6_learning_rate not in self.learning_rates:
      raise ValueError(f"figure6_learning_rate {self.figure6_learning_rate} must be on the "
                       f"grid {self.learning_rates} (Figure 6 reuses its trials).")

  def curve_grid(self, name: str) -> tuple[float, ...]:
    """The sorted learning-rate grid of the curve ``name`` (one of ``CURVES``)."""
    names = [c[0] for c in CURVES]
    _validation.check_one_of("curve", name, names)
    grid = (self.curve_learning_rates[names.index(name)] if self.curve_learning_rates
            else self.learning_rates)
    return tuple(sorted(grid))

  def replace(self, **changes: Any) -> "Preset":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="seconds: plumbing check (2 layers, width 16, 12 steps); too small to show anything",
        seq_len=16, depth=2, width=16, num_heads=2, batch_size=8, num_steps=12,
        learning_rates=(1e-3, 1e-2), warmup_steps=4, figure6_learning_rate=1e-2,
        figure6_warmups=(0, 4, 8), long_check_factors=(5.0,), short_check_steps=6,
        warmup_candidates=(2, 4), fix_kinds=("warmup", "clipping"), fix_rate_factors=(2.0,),
        eval_every=6, eval_sequences=16,
    ),
    "quick": Preset(
        name="quick",
        description="CPU, offline, a few minutes on 2 cores (measured in the guide): 6 layers, width 64, seq 32, batch 16, 400 steps "
                    "on the Python standard library's sources",
    ),
    "standard": Preset(
        name="standard",
        description="CPU, offline, under 20 min on 2 cores (measured in the guide): the quick "
                    "model, 1000 steps, 200 warmup steps, a 4-rate, 6-per-decade window around "
                    "each curve's optimum, 3 seeds; no diagnosis",
        num_steps=1000, warmup_steps=200, eval_every=250,
        learning_rates=(6.8e-4, 1e-3, 1.5e-3, 2.2e-3, 3.2e-3, 4.6e-3, 6.8e-3),
        curve_learning_rates=(
            (6.8e-4, 1e-3, 1.5e-3, 2.2e-3),   # Post-LN: ~1e-3 (study), 1.5e-3 (first run)
            (1e-3, 1.5e-3, 2.2e-3, 3.2e-3),   # Post-LN + warmup: 1.5-2.2e-3
            (1.5e-3, 2.2e-3, 3.2e-3, 4.6e-3),  # Pre-LN: 2.2-3.2e-3
            (2.2e-3, 3.2e-3, 4.6e-3, 6.8e-3),  # Pre-LN + warmup: 3.2-4.6e-3
        ),
        figure6_learning_rate=4.6e-3, figure6_warmups=(0, 50, 200, 600),
        long_check_factors=(), short_check_steps=500, warmup_candidates=(20, 50, 100),
        run_diagnosis=False, seeds=(0, 1, 2),
    ),
    "gpu": Preset(
        name="gpu",
        description="one H100/H200, about an hour (not run by us): 6 layers, width 512, seq 256, "
                    "batch 64, bf16, 5000 steps",
        seq_len=256, depth=6, width=512, num_heads=8, batch_size=64, compute_dtype="bfloat16",
        num_steps=5000,
        learning_rates=(1e-4, 1.8e-4, 3.2e-4, 5.6e-4, 1e-3, 1.8e-3, 3.2e-3, 5.6e-3),
        warmup_steps=1000, figure6_learning_rate=5.6e-4,
        figure6_warmups=(0, 100, 400, 1000, 4000), short_check_steps=500,
        warmup_candidates=(10, 100, 1000),
        eval_every=250, eval_sequences=512,
    ),
}


def get_preset(name: str) -> Preset:
  """The preset called ``name`` (one of ``PRESETS``)."""
  _validation.check_one_of("preset", name, sorted(PRESETS))
  return PRESETS[name]
