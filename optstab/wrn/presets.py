"""Presets of the stride-instability experiment (Figures 4, 5 and 9), from seconds to hours.

A ``Preset`` fixes everything the experiment runs: data, model, training
budget, the learning-rate grid of Figure 4, the warmup length, the high rate
used for Figures 5 and 9 and the mitigation table, and which mitigations to
try. ``PRESETS`` maps names to presets; ``get_preset(name)`` looks one up.

Scaling. The playbook's run (CIFAR-10, ~15k steps, batch 128) used 1000
warmup steps, 1000 / 15000 = 6.7% of training. The small presets keep that
order of fraction (the quick preset: 20 warmup steps before 100 steps = 20% of
the post-warmup budget; the tiny preset only checks the plumbing). The quick
grid has 0.03 between 0.01 and 0.1: the changed model's published instability
starts near 0.02, and the low-rate parity needs a rate where both models train
in 100 steps (the standard model is still under-trained at 0.01).

The stride change on small images. The reference model (32x32 inputs, group
strides (1,1),(2,2),(2,2), an 8x8 average pool with stride 1 in the head) ends
on an 8x8 map pooled to 1x1; the "stride bug" sets one (2,2) to (1,1), leaving
a 16x16 map pooled to 9x9, i.e. a Dense layer with 81x more, highly correlated
inputs. On 16x16 digits the presets keep exactly that geometry with one
downsampling less: the standard model uses strides (1,1),(1,1),(2,2) (last map
8x8, pooled 1x1) and the changed model (1,1),(1,1),(1,1) (last map 16x16,
pooled 9x9, 81x the Dense inputs). The CIFAR-10 presets use the reference
strides and change group 1, as init2winit's ``group_strides`` does.

The standard preset. The quick preset's model, data and budget (100 steps,
batch 64, 20 warmup steps), with Figure 4 on 9 rates from 0.003 to 1 (1, 2 and
5 per decade: the published edge of the changed model, ~0.02, and the
standard model's best, 0.2, are grid points) and 3 seeds; the mitigation table
and Figures 5 and 9 on every seed. The plan
(``optstab.wrn.experiment.trial_plan``): 126 trials (36 Figure 4 trials, 4
mitigations and 2 clipping runs per seed), 13,680 steps.

Its cost, measured with ``benchmarks/standard_preset_cost.py`` (trials of the
standard preset in one single-threaded XLA process, the layout of a default
worker; user + system CPU seconds from ``getrusage``) on the shared 2-core
Intel Xeon VM while other jobs kept its load average at 2-9: a 100-step trial
(2 evaluations of the 359 test images included) costs 7.4-7.7 CPU s for the
standard model and 21.5-22.4 CPU s for the stride-(1,1) model (its last group
runs on a 4x larger map) in two runs, 7-11 CPU s more for the first trial of
a model (compilation). ``CPU_COST`` holds the highest of them;
``trial_plan("standard").estimate(CPU_COST)`` gives ~2320 CPU s, ~19.4 min on
2 idle cores with the default two workers. The whole preset, run end to end
with its two default workers on an otherwise idle 2-core AMD EPYC VM, took
1106 s (18.4 min) wall time and 2156 CPU s (the figures guide's measured
table), close to that estimate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from optstab import _validation
from optstab.harness import seeds as harness_seeds
from optstab.harness.plan import CostModel

__all__ = ["Preset", "PRESETS", "VARIANTS", "MITIGATIONS", "PUBLISHED", "CPU_COST", "get_preset"]

#: The two models of Figure 4.
VARIANTS = ("standard", "stride_1x1")

#: Mitigations the table can try on the unstable variant at the high rate
#: (in the order of the FAQ's "Potential fixes for common instability patterns"), each a change to the unstable trial.
MITIGATIONS = (
    "warmup",            # fix 1: linear warmup prepended to the schedule
    "clip",              # fix 2: optstab.percentile_clip
    "adam",              # fix 3: Adam instead of Nesterov momentum
    "residual_norm",     # fix 5: x + Norm(f(x))
    "zero_init",         # fix 6: zero-initialised residual branches
    "global_pool",       # the head fix: average over the whole map (Dense input 64k whatever the strides)
    "lower_lr",          # fix 7: the changed model's own best rate from the sweep
)

#: The measured cost of the quick and standard presets' model (WRN-10-1 on 16x16 digits, batch
#: 64, float32, one single-threaded XLA:CPU process); see above for how it compares.
CPU_COST = CostModel(
    step_cpu_seconds={"standard": 0.077, "stride_1x1": 0.224, "*": 0.224},
    compile_cpu_seconds=11.0,
    measured="benchmarks/standard_preset_cost.py: 100-step trials of the standard preset, "
             "single-threaded XLA, on a shared 2-core Intel Xeon VM at load average 2-9")

#: The published Figure 4/5 values (read from the playbook's images).
PUBLISHED = {
    "standard_best_learning_rate": 0.2,
    "standard_best_error_rate": 0.038,
    "changed_best_learning_rate": 0.01,
    "changed_best_error_rate": 0.073,
    "changed_unstable_from": 0.02,
    "changed_error_at_lr_1": "> 0.30",
    "spike_learning_rate": 0.1,
    "spike_peak_loss": 70.0,
    "spike_steps": "3-8",
    "warmup_steps": 1000,
    "train_steps": 15000,
}


@dataclasses.dataclass(frozen=True)
class Preset:
  """One scale of the experiment.

  Attributes:
    name: the preset's name.
    description: one line for ``--help`` and the report.
    dataset: ``"digits"`` (shipped, offline) or ``"cifar10"``.
    image_size: input side (digits are upsampled from 8x8 to it).
    depth, width: WRN-depth-width.
    standard_strides: group strides of the standard model.
    changed_group: the group whose (2,2) stride becomes (1,1) in the changed model.
    batch_size: global batch size.
    num_steps: post-warmup training steps (cosine decay to 0 over them).
    learning_rates: the Figure 4 grid (base learning rates).
    warmup_steps: warmup length of the warmup curves and the warmup mitigation.
    high_learning_rate: the rate of Figure 5, Figure 9 and the mitigation table.
    clip_percentiles: percentile-clipping runs (Figure 9 and mitigation rows).
    clip_window: window of recent norms for ``optstab.percentile_clip``.
    adam_learning_rate: Adam's rate in the mitigation table (Adam's useful
      rates are far below momentum's, so it gets its own).
    mitigations: which of ``MITIGATIONS`` to run.
    eval_every: evaluation cadence of the sweep trials (the training loss is
      recorded at every step regardless).
    fig5_steps: the first steps shown in Figure 5's every-step panel.
    fig5_eval_every: evaluation cadence of Figure 5's coarse panel.
    weight_decay: L2 penalty coefficient.
    optimizer: the baseline optimizer (``"nesterov"``, momentum 0.9).
    compute_dtype: ``"float32"`` or ``"bfloat16"``.
    augment: random crops and flips (CIFAR-10).
    seed: the seed of every trial.
    train_size: cap on training images (``None``: all).
    seeds: the seeds the experiment runs by default, each the whole
      experiment again (``None``: ``(seed,)``; ``--seeds`` overrides it).
  """

  name: str
  description: str
  dataset: str
  image_size: int
  depth: int
  width: int
  standard_strides: tuple[tuple[int, int], ...]
  changed_group: int
  batch_size: int
  num_steps: int
  learning_rates: tuple[float, ...]
  warmup_steps: int
  high_learning_rate: float
  clip_percentiles: tuple[float, ...] = (90.0,)
  clip_window: int = 100
  adam_learning_rate: float = 3e-3
  mitigations: tuple[str, ...] = MITIGATIONS
  eval_every: int = 100
  fig5_steps: int = 25
  fig5_eval_every: int = 1000
  weight_decay: float = 1e-4
  optimizer: str = "nesterov"
  compute_dtype: str = "float32"
  augment: bool = False
  seed: int = 0
  train_size: Optional[int] = None
  seeds: Optional[tuple[int, ...]] = None

  def __post_init__(self):
    if self.seeds is not None:
      harness_seeds.check_seeds(self.seeds, self.seed)
    _validation.check_one_of("dataset", self.dataset, ("digits", "cifar10"))
    for name in ("image_size", "depth", "width", "batch_size", "num_steps", "eval_every",
                 "fig5_steps", "fig5_eval_every", "clip_window"):
      _validation.check_positive_int(name, getattr(self, name))
    _validation.check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
    _validation.check_positive("high_learning_rate", self.high_learning_rate)
    _validation.check_positive("adam_learning_rate", self.adam_learning_rate)
    for i, lr in enumerate(self.learning_rates):
      _validation.check_positive(f"learning_rates[{i}]", lr)
    for i, p in enumerate(self.clip_percentiles):
      _validation.check_percentile(f"clip_percentiles[{i}]", p)
    if self.high_learning_rate not in self.learning_rates:
      raise ValueError(f"high_learning_rate {self.high_learning_rate} must be on the grid "
                       f"{self.learning_rates} (Figure 5 and the table reuse its trials).")
    unknown = set(self.mitigations) - set(MITIGATIONS)
    if unknown:
      raise ValueError(f"unknown mitigations {sorted(unknown)}; choose from {MITIGATIONS}.")
    if tuple(self.standard_strides[self.changed_group]) != (2, 2):
      raise ValueError(f"changed_group {self.changed_group} must have stride (2, 2) in the "
                       f"standard model; got {self.standard_strides}.")

  @property
  def changed_strides(self) -> tuple[tuple[int, int], ...]:
    strides = [tuple(s) for s in self.standard_strides]
    strides[self.changed_group] = (1, 1)
    return tuple(strides)

  def replace(self, **changes: Any) -> "Preset":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_DIGITS_STRIDES = ((1, 1), (1, 1), (2, 2))

#: The standard preset's Figure 4 grid: 1-2-5 per decade from 0.003 to 1, with the
#: published changed-model edge (~0.02), the high rate (0.1) and the published
#: standard-model best (0.2) on it.
STANDARD_LEARNING_RATES = (0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_REFERENCE_STRIDES = ((1, 1), (2, 2), (2, 2))

_CIFAR10_GPU = Preset(
    name="cifar10-gpu",
    description="one GPU, hours: WRN-28-10 on CIFAR-10, 15k steps, batch 128, bf16, 1000 warmup steps",
    dataset="cifar10", image_size=32, depth=28, width=10,
    standard_strides=_REFERENCE_STRIDES, changed_group=1,
    batch_size=128, num_steps=15000,
    learning_rates=(0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    warmup_steps=1000, high_learning_rate=0.1, clip_percentiles=(90.0, 50.0), clip_window=1000,
    adam_learning_rate=1e-3, eval_every=1000, fig5_steps=25, fig5_eval_every=1000,
    compute_dtype="bfloat16", augment=True,
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="seconds: plumbing check on 16x16 digits (WRN-10-1, 6 steps); too small to show anything",
        dataset="digits", image_size=16, depth=10, width=1,
        standard_strides=_DIGITS_STRIDES, changed_group=2,
        batch_size=32, num_steps=6, learning_rates=(0.1, 1.0), warmup_steps=2,
        high_learning_rate=1.0, clip_percentiles=(90.0,), clip_window=4,
        mitigations=("warmup", "clip", "lower_lr"),
        eval_every=3, fig5_steps=6, fig5_eval_every=3, train_size=256,
    ),
    "quick": Preset(
        name="quick",
        description="CPU, offline, a few minutes on 2 cores (measured in the guide): WRN-10-1 on 16x16 digits, 100 steps, batch 64",
        dataset="digits", image_size=16, depth=10, width=1,
        standard_strides=_DIGITS_STRIDES, changed_group=2,
        batch_size=64, num_steps=100, learning_rates=(0.01, 0.03, 0.1, 1.0), warmup_steps=20,
        high_learning_rate=0.1, clip_percentiles=(90.0, 50.0), clip_window=100,
        adam_learning_rate=3e-3, eval_every=50, fig5_steps=25, fig5_eval_every=25,
    ),
    "standard": Preset(
        name="standard",
        description="CPU, offline, under 20 min on 2 cores (measured in the guide): the quick "
                    "model and budget, "
                    "Figure 4 on 9 rates from 0.003 to 1 (3 per decade), 3 seeds",
        dataset="digits", image_size=16, depth=10, width=1,
        standard_strides=_DIGITS_STRIDES, changed_group=2,
        batch_size=64, num_steps=100, learning_rates=STANDARD_LEARNING_RATES, warmup_steps=20,
        high_learning_rate=0.1, clip_percentiles=(90.0, 50.0), clip_window=100,
        adam_learning_rate=3e-3, eval_every=50, fig5_steps=25, fig5_eval_every=25,
        seeds=(0, 1, 2),
    ),
    "cifar10-gpu": _CIFAR10_GPU,
    # The same experiment; only the device setup differs (the batch is split over the chips).
    "cifar10-tpu": dataclasses.replace(
        _CIFAR10_GPU, name="cifar10-tpu",
        description="a TPU slice (data-parallel), hours: as cifar10-gpu, batch 128 split over the chips",
    ),
}


def get_preset(name: str) -> Preset:
  """The preset called ``name`` (one of ``PRESETS``)."""
  _validation.check_one_of("preset", name, sorted(PRESETS))
  return PRESETS[name]
