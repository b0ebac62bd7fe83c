"""Collects the labelled corpus of training runs behind ``benchmarks/diagnosis_accuracy.py``.

Every real run goes through optstab's own trial interface (``TrialConfig`` ->
``TrialFn`` -> ``run_trials`` with a store), so an interrupted collection resumes
without losing a finished run and a finished collection re-labels in seconds.
Workloads (see ``benchmarks/DIAGNOSIS_CORPUS.md`` for the grids and the labels):

* ``wrn``: the WideResNet demo's own trial function (``optstab.wrn.train.make_trial_fn``)
  on the shipped digits at the quick preset's scale (WRN-10-1, 16x16, batch 64,
  100 cosine steps, Nesterov 0.9), the standard and the stride (1,1) model,
  rates 0.003..3, two seeds, without and with 20 warmup steps.
* ``mlp`` and ``cnn``: a small ``flax.nnx`` MLP and CNN on the 8x8 digits, SGD,
  heavy-ball momentum and Adam over wide rate ranges, several seeds.
* ``transformer``: the Transformer demo's trial function
  (``optstab.transformer.train.make_trial_fn``, quick preset's model and data),
  Post-LN and Pre-LN, 200 steps, without and with warmup; skipped with a
  message where the installed optstab has no ``optstab.transformer``.
* ``synthetic``: generated curves, labelled by construction: clean decreasing
  curves with lognormal noise (sigma 0.1, 0.3, 0.5, 0.8 in log space, 50 each)
  and curves with injected early spikes, mid-training spikes, stalls and NaNs.

Labels come from the outcome protocol (``label_run``; documented with every
threshold in ``DIAGNOSIS_CORPUS.md``), never from optstab's detectors.

Usage (from the repository root)::

    python benchmarks/collect_diagnosis_corpus.py                    # collect, label, write
    python benchmarks/collect_diagnosis_corpus.py --workloads mlp cnn
    python benchmarks/collect_diagnosis_corpus.py --relabel          # label stored runs only

Trials are stored under ``--work-dir`` (default ``~/.cache/optstab/diagnosis_corpus``),
one ``trials.jsonl`` per workload with a ``facts.json`` (its trivial loss), so
re-labelling needs no training code; the corpus is written from every workload
found there.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diagnosis_accuracy as acc  # noqa: E402  (the corpus helpers the benchmark uses too)

TRIVIAL_DIGITS = math.log(10.0)
REAL_WORKLOADS = ("mlp", "cnn", "wrn", "transformer")
WORKLOADS = REAL_WORKLOADS + ("synthetic",)
#: Beside each workload's trials.jsonl: what labelling needs from the training code.
FACTS_FILE = "facts.json"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "diagnosis_corpus.jsonl.gz"
#: The splits: ``corpus`` (the shipped corpus the detectors are tuned on),
#: ``held-out`` (shipped too: the same grids with other seeds, and synthetic
#: curves from other NumPy seeds, for checking a change on runs it was not tuned
#: on) and ``test`` (not shipped: other seeds again, for a last check that no
#: decision has looked at; regenerate it with ``--split test``).
SPLITS = ("corpus", "held-out", "test")
SPLIT_OUT = {"corpus": DEFAULT_OUT,
             "held-out": DEFAULT_OUT.with_name("diagnosis_heldout.jsonl.gz"),
             "test": DEFAULT_OUT.with_name("diagnosis_test.jsonl.gz")}
#: (warmup steps, seed) of each real workload's groups, per split.
SPLIT_SEEDS = {
    "corpus": {"mlp": ((0, 0), (0, 1), (0, 2), (0, 3), (20, 0), (20, 1)),
               "cnn": ((0, 0), (20, 0), (0, 1)),
               "wrn": ((0, 0), (0, 1), (20, 0), (20, 1)),
               "transformer": ((0, 0), (50, 0), (0, 1), (50, 1))},
    "held-out": {"mlp": ((0, 4), (0, 5), (0, 6), (0, 7), (20, 2), (20, 3)),
                 "cnn": ((0, 2), (0, 3), (20, 1), (20, 2)),
                 "wrn": ((0, 2), (20, 2)),
                 "transformer": ((0, 2), (50, 2))},
    "test": {"mlp": ((0, 8), (0, 9), (0, 10), (0, 11), (20, 4), (20, 5)),
             "cnn": ((0, 4), (0, 5), (20, 3), (20, 4)),
             "wrn": ((0, 3), (20, 3)),
             "transformer": ((0, 3), (50, 3))},
}
#: Added to the first entry of every synthetic curve's NumPy seed, per split.
SYNTHETIC_SEED_OFFSET = {"corpus": 0, "held-out": 100, "test": 200}


# ----------------------------------------------------------------------------
# The small nnx models on the 8x8 digits.


def _digits_models():
  from flax import nnx

  class MLP(nnx.Module):
    """64 -> 128 -> 128 -> 10, ReLU."""

    def __init__(self, rngs: nnx.Rngs):
      self.hidden1 = nnx.Linear(64, 128, rngs=rngs)
      self.hidden2 = nnx.Linear(128, 128, rngs=rngs)
      self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
      x = x.reshape(x.shape[0], -1)
      x = nnx.relu(self.hidden1(x))
      x = nnx.relu(self.hidden2(x))
      return self.out(x)

  class CNN(nnx.Module):
    """conv3x3(16) -> conv3x3(32, stride 2) -> global mean -> dense(10), ReLU."""

    def __init__(self, rngs: nnx.Rngs):
      self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
      self.conv2 = nnx.Conv(16, 32, (3, 3), strides=(2, 2), rngs=rngs)
      self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
      x = nnx.relu(self.conv1(x))
      x = nnx.relu(self.conv2(x))
      return self.out(x.mean(axis=(1, 2)))

  return {"mlp": MLP, "cnn": CNN}


def _digits_optimizer(name: str):
  """optstab's constructor (of the learning rate) of a small model's optimizer."""
  import optstab

  return {"sgd": optstab.sgd, "momentum": optstab.momentum, "adam": optstab.adam}[name]


DIGITS_BATCH = 32


def make_digits_trial_fn() -> Callable:
  """A ``TrialFn`` training ``extra["model"]`` with ``extra["optimizer"]`` on the 8x8 digits.

  One jitted step per (model, optimizer), the learning rate an input of the
  step (``optax.inject_hyperparams``), so a rate/seed sweep compiles once.
  The batches of the whole run are prepared up front; per-step loss, gradient
  norm and evaluations stay on the device until the run ends.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  import optstab
  from optstab.diagnosis import TrialResult
  from optstab.wrn import data as wrn_data

  digits = wrn_data.load_digits(image_size=8)
  test_x = jnp.asarray(digits.normalize(digits.test_images))
  test_y = jnp.asarray(digits.test_labels)
  models = _digits_models()
  compiled: dict[tuple[str, str], Any] = {}

  def compile_for(model_name: str, optimizer: str):
    if (model_name, optimizer) in compiled:
      return compiled[(model_name, optimizer)]
    tx = optax.inject_hyperparams(_digits_optimizer(optimizer))(learning_rate=0.0)
    graphdef, _ = nnx.split(models[model_name](nnx.Rngs(0)))

    def loss_fn(params, x, y):
      logits = nnx.merge(graphdef, params)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @jax.jit
    def step(params, opt_state, x, y, learning_rate):
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
      opt_state = opt_state._replace(hyperparams={
          **opt_state.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, optstab.global_norm(grads)

    @jax.jit
    def evaluate(params):
      loss, logits = loss_fn(params, test_x, test_y)
      return loss, jnp.mean(jnp.argmax(logits, -1) != test_y)

    compiled[(model_name, optimizer)] = (tx, step, evaluate)
    return compiled[(model_name, optimizer)]

  def trial_fn(config) -> "TrialResult":
    model_name, optimizer = config.extra["model"], config.extra["optimizer"]
    tx, step, evaluate = compile_for(model_name, optimizer)
    _, params = nnx.split(models[model_name](nnx.Rngs(config.seed)))
    opt_state = tx.init(params)
    total = config.total_steps
    batches = list(itertools.islice(wrn_data.batch_iterator(
        digits, "train", DIGITS_BATCH, seed=config.seed, augmentation=None), total))
    xs = jnp.asarray(np.stack([b.images for b in batches]))
    ys = jnp.asarray(np.stack([b.labels for b in batches]))
    schedule = config.learning_rate_schedule()
    # Before the loop, one value per step (a vmapped schedule differs in the last
    # bit, which moves a chaotic high-rate run: these are the values the corpus used).
    rates = np.asarray([float(schedule(t)) for t in range(total)], np.float32)
    eval_at = set(int(s) for s in config.eval_steps())
    losses, norms, evals = [], [], []
    for t in range(total):
      params, opt_state, loss, norm = step(params, opt_state, xs[t], ys[t], rates[t])
      losses.append(loss)
      norms.append(norm)
      if t + 1 in eval_at:
        evals.append(evaluate(params))
    losses, norms, evals = jax.device_get((losses, norms, evals))
    return TrialResult(config=config, train_loss=np.asarray(losses), grad_norms=np.asarray(norms),
                       eval_steps=config.eval_steps(),
                       eval_metrics={"loss": np.asarray([e[0] for e in evals]),
                                     "error_rate": np.asarray([e[1] for e in evals])})

  return trial_fn


# ----------------------------------------------------------------------------
# The grids of the real workloads.


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One group: the runs of one model/optimizer/budget/warmup/seed over learning rates."""

  workload: str
  name: str
  learning_rates: tuple[float, ...]
  num_steps: int
  warmup_steps: int
  seed: int
  schedule: str
  eval_every: int
  extra: dict

  @property
  def group(self) -> str:
    return f"{self.workload}:{self.name}:w{self.warmup_steps}:s{self.seed}"

  def configs(self):
    from optstab.diagnosis import TrialConfig

    return [TrialConfig(learning_rate=float(lr), num_steps=self.num_steps,
                        warmup_steps=self.warmup_steps, schedule=self.schedule,
                        eval_every=self.eval_every, seed=self.seed, extra=self.extra)
            for lr in self.learning_rates]


def _grid(low: float, high: float, num: int) -> tuple[float, ...]:
  return tuple(float(f"{x:.3g}") for x in np.logspace(math.log10(low), math.log10(high), num))


#: Rate ranges of the small models, per optimizer: from too small to NaN.
DIGITS_RATES = {"sgd": _grid(0.01, 30.0, 10), "momentum": _grid(0.001, 3.0, 10),
                "adam": _grid(1e-4, 0.3, 10)}
#: Extra rates of the MLP where its training breaks down (between its best and its first NaN).
MLP_EDGE_RATES = {"sgd": (0.5, 0.6, 0.7, 1.0, 1.2, 1.45, 1.7),
                  "momentum": (0.1, 0.12, 0.15, 0.18, 0.25, 0.3, 0.4),
                  "adam": (0.03, 0.04, 0.06, 0.075, 0.09, 0.1)}
#: Extra rates of the CNN, likewise (it breaks down at higher rates than the MLP).
CNN_EDGE_RATES = {"sgd": (1.5, 3.0, 4.0, 7.0, 9.0),
                  "momentum": (0.7, 0.9, 1.0, 1.5, 2.0),
                  "adam": (0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2)}
DIGITS_STEPS = 200
TRANSFORMER_RATES = (1e-3, 1.8e-3, 3.2e-3, 5.6e-3, 1e-2, 3.2e-2)
TRANSFORMER_STEPS = 200
TRANSFORMER_WARMUP = 50
WRN_RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
WRN_STEPS = 100
WRN_WARMUP = 20


def sweeps_for(workload: str, split: str = "corpus") -> list[Sweep]:
  """The groups of a real workload in ``split`` (one of ``SPLITS``)."""
  seeds = SPLIT_SEEDS[split][workload]
  if workload == "mlp":
    # The wide grid plus a dense one where the MLP's training breaks down.
    return [Sweep("mlp", f"mlp-{opt}", tuple(sorted(DIGITS_RATES[opt] + MLP_EDGE_RATES[opt])),
                  DIGITS_STEPS, warmup, seed, "constant", 50, {"model": "mlp", "optimizer": opt})
            for opt in ("sgd", "momentum", "adam") for warmup, seed in seeds]
  if workload == "cnn":
    return [Sweep("cnn", f"cnn-{opt}", tuple(sorted(DIGITS_RATES[opt][1:-1] + CNN_EDGE_RATES[opt])),
                  DIGITS_STEPS, warmup, seed, "constant", 50, {"model": "cnn", "optimizer": opt})
            for opt in ("sgd", "momentum", "adam") for warmup, seed in seeds]
  if workload == "wrn":
    from optstab.wrn import experiment, presets

    preset = presets.get_preset("quick")
    out = []
    for variant in experiment.VARIANTS:
      strides = preset.standard_strides if variant == "standard" else preset.changed_strides
      extra = {"variant": variant, "group_strides": [list(s) for s in strides]}
      for warmup, seed in seeds:
        out.append(Sweep("wrn", variant, WRN_RATES, WRN_STEPS, warmup, seed, "cosine", 25, extra))
    return out
  if workload == "transformer":
    return transformer_sweeps(seeds)
  raise ValueError(f"workload must be one of {REAL_WORKLOADS}; got {workload!r}.")


def transformer_sweeps(seeds: Sequence[tuple[int, int]] = SPLIT_SEEDS["corpus"]["transformer"]
                       ) -> list[Sweep]:
  """The Transformer demo's groups: Post-LN and Pre-LN at each ``(warmup, seed)``, seed by seed.

  The quick preset's model and data (6 layers, width 64, characters of the
  standard library, batch 16), 200 steps in all (its short-check length),
  constant rate after the warmup, as in the demo.
  """
  return [Sweep("transformer", f"{norm}_ln", TRANSFORMER_RATES, TRANSFORMER_STEPS - warmup, warmup,
                seed, "constant", 100, {"variant": f"{norm}_ln", "norm_position": norm})
          for seed in dict.fromkeys(s for _, s in seeds) for norm in ("post", "pre")
          for warmup, s in seeds if s == seed]


def trial_fn_for(workload: str) -> tuple[Callable, dict[str, float]]:
  """``(TrialFn, facts)``; ``facts["trivial_loss"]`` is stored beside the trials for re-labelling."""
  if workload in ("mlp", "cnn"):
    return make_digits_trial_fn(), {"trivial_loss": TRIVIAL_DIGITS}
  if workload == "wrn":
    from optstab.wrn import experiment, presets, train

    preset = presets.get_preset("quick")
    data = experiment.load_preset_data(preset)
    return train.make_trial_fn(experiment.setup_for(preset, data), data, progress=False), {
        "trivial_loss": TRIVIAL_DIGITS}
  if workload == "transformer":
    from optstab import runner
    from optstab.transformer import experiment, presets, train

    preset = presets.get_preset("quick")
    source = experiment.data_source_for(preset)
    text = runner.load_data(source)
    return train.make_trial_fn(experiment.setup_for(preset, text), source, progress=False), {
        "trivial_loss": text.unigram_entropy}
  raise ValueError(f"no trial function for {workload!r}")


def collect(workload: str, work_dir: pathlib.Path, split: str = "corpus") -> None:
  """Runs (or resumes) every trial of a real workload into ``work_dir/workload``."""
  from optstab.diagnosis import run_trials

  if workload == "transformer" and importlib.util.find_spec("optstab.transformer") is None:
    print(f"[{workload}] skipped: this optstab has no optstab.transformer", flush=True)
    return
  sweeps = sweeps_for(workload, split)
  trial_fn, facts = trial_fn_for(workload)
  (work_dir / workload).mkdir(parents=True, exist_ok=True)
  (work_dir / workload / FACTS_FILE).write_text(json.dumps(facts))
  configs = [c for s in sweeps for c in s.configs()]
  start = time.perf_counter()
  records = run_trials(trial_fn, configs, out_dir=work_dir / workload, progress=False)
  failed = sum(r.error is not None for r in records)
  print(f"[{workload}] {len(records)} trials ({failed} raised) in "
        f"{time.perf_counter() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------
# The outcome protocol (DIAGNOSIS_CORPUS.md explains every threshold).

#: diverged: the final level is at least this many times max(initial loss, trivial loss).
DIVERGED_FINAL_RATIO = 2.0
#: failed-to-train: the final level is at least this fraction of the trivial loss ...
STALL_FRACTION = 0.9
#: ... or the run closed less than this fraction of the gap from the trivial loss
#: to its group's best final level ...
MIN_PROGRESS = 0.5
#: ... or its last test error is at least this (10 digit classes: chance is 0.9).
FAILED_ERROR_RATE = 0.5
#: The early phase: the first EARLY_FRACTION of the steps (at least EARLY_MIN_STEPS).
EARLY_FRACTION = 0.25
EARLY_MIN_STEPS = 10
#: early-unstable: a raw (unsmoothed: short spikes count) loss in the early phase at
#: least this many times the initial loss ...
EARLY_SPIKE_RATIO = 1.5
#: ... or a rebound in the early phase (after it: mid-training-unstable): the
#: REBOUND_WINDOW-step centered running median rising to at least REBOUND_RATIO x
#: its lowest value so far and by at least REBOUND_FLOOR x the trivial loss
#: (absolute, for losses near zero, whose per-batch noise is large in log space).
REBOUND_RATIO = 2.0
REBOUND_FLOOR = 0.25
REBOUND_WINDOW = 9


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
  """Centered running median (shrinking at the ends)."""
  half = window // 2
  return np.array([np.median(x[max(0, i - half):i + half + 1]) for i in range(x.size)])


def _is_rebound(level: float, best_before: float, trivial: float) -> bool:
  return level >= REBOUND_RATIO * best_before and level - best_before >= REBOUND_FLOOR * trivial


def _first_rebound(loss: np.ndarray, trivial: float, start: int, stop: int):
  """First ``(step, best level before, level)`` in [start, stop) where the running median rebounds."""
  med = _running_median(loss, REBOUND_WINDOW)
  best = np.minimum.accumulate(med)
  for t in range(max(start, 1), stop):
    if _is_rebound(med[t], best[t - 1], trivial):
      return t, float(best[t - 1]), float(med[t])
  return None


def label_run(loss: np.ndarray, trivial: float, reference: Optional[float],
              final_error: Optional[float]) -> tuple[str, Optional[bool], str]:
  """``(label, recovered, protocol rule)`` of one run by the outcome protocol.

  Args:
    loss: per-step training loss (NaN where it was not finite).
    trivial: the loss of a model that learned nothing (log(num_classes), ...).
    reference: the group's best final level (``None``: no finite run in the group).
    final_error: the last evaluation's error rate (``None``: not a classifier).
  """
  n = loss.size
  if not np.all(np.isfinite(loss)):
    return acc.DIVERGED, None, f"nonfinite: first non-finite loss at step {int(np.argmin(np.isfinite(loss))) + 1}"
  initial, final = float(loss[0]), acc.final_level(loss)
  if final >= DIVERGED_FINAL_RATIO * max(initial, trivial):
    return acc.DIVERGED, None, f"final-high: final level {final:.4g} >= {DIVERGED_FINAL_RATIO:g} x max(initial {initial:.4g}, trivial {trivial:.4g})"
  if final >= STALL_FRACTION * trivial:
    return acc.FAILED_TO_TRAIN, None, f"stall: final level {final:.4g} >= {STALL_FRACTION:g} x trivial {trivial:.4g}"
  if reference is not None and reference < trivial:
    progress = (trivial - final) / (trivial - reference)
    if progress < MIN_PROGRESS:
      return acc.FAILED_TO_TRAIN, None, (f"far-from-best: closed {progress:.2f} < {MIN_PROGRESS:g} of the gap "
                                         f"from trivial {trivial:.4g} to the group's best {reference:.4g}")
  if final_error is not None and final_error >= FAILED_ERROR_RATE:
    return acc.FAILED_TO_TRAIN, None, f"error: final test error {final_error:.3f} >= {FAILED_ERROR_RATE:g}"
  early = min(n, max(EARLY_MIN_STEPS, int(math.ceil(EARLY_FRACTION * n))))
  peak = int(np.argmax(loss[:early]))
  if loss[peak] >= EARLY_SPIKE_RATIO * initial:
    recovered = final < initial  # trained on after the spike
    return acc.EARLY_UNSTABLE, recovered, (f"early-spike: loss {loss[peak]:.4g} at step {peak + 1} >= "
                                           f"{EARLY_SPIKE_RATIO:g} x initial {initial:.4g}")
  for label, start, stop in ((acc.EARLY_UNSTABLE, 1, early), (acc.MID_TRAINING_UNSTABLE, early, n)):
    rebound = _first_rebound(loss, trivial, start, stop)
    if rebound is not None:
      step, before, peak_level = rebound
      # Recovered: by the end, no longer a rebound from the level reached before it.
      recovered = not _is_rebound(final, before, trivial)
      return label, recovered, (f"{'early' if label == acc.EARLY_UNSTABLE else 'mid'}-rebound: running median "
                                f"{peak_level:.4g} at step {step + 1} vs {before:.4g} before")
  return acc.STABLE, None, "none-fired"


def _final_error(errors) -> Optional[float]:
  if errors is None or len(errors) == 0 or errors[-1] is None or not math.isfinite(errors[-1]):
    return None
  return float(errors[-1])


def label_group(losses: Sequence[np.ndarray], trivial: float,
                final_errors: Sequence[Optional[float]]) -> list[tuple[str, Optional[bool], str]]:
  """``label_run`` of every run of one group, against the group's reference.

  The reference is the lowest final level among the group's runs that the
  protocol does not call diverged (the diverged rules do not need it).
  """
  finals = [acc.final_level(loss) for loss in losses]
  candidates = [f for f, loss in zip(finals, losses)
                if math.isfinite(f) and label_run(loss, trivial, None, None)[0] != acc.DIVERGED]
  reference = min(candidates) if candidates else None
  return [label_run(loss, trivial, reference, error) for loss, error in zip(losses, final_errors)]


#: Labels changed after looking at the plots: run id -> (label, recovered, reason).
BY_EYE: dict[str, tuple[str, Optional[bool], str]] = {}


# ----------------------------------------------------------------------------
# Synthetic curves (labelled by construction).

SYNTHETIC_STEPS = 200
CLEAN_PER_LEVEL = 50


def _clean_curve(rng: np.random.Generator, n: int, trivial: float, max_floor: float = 0.5) -> np.ndarray:
  """A decreasing loss: initial near the trivial level, power-law decay to a floor in [0.005, max_floor]."""
  initial = trivial * rng.uniform(0.95, 1.1)
  floor = math.exp(rng.uniform(math.log(0.005), math.log(max_floor)))
  t = np.arange(n, dtype=np.float64)
  tau, alpha = rng.uniform(5.0, 40.0), rng.uniform(0.7, 2.0)
  return floor + (initial - floor) * (1.0 + t / tau) ** (-alpha)


def _noisy(rng, curve, sigma):
  return curve * np.exp(sigma * rng.standard_normal(curve.size))


def synthetic_runs(trivial: float = TRIVIAL_DIGITS, split: str = "corpus") -> list[dict[str, Any]]:
  """Every synthetic run of ``split``: clean curves per noise level, then the injected kinds."""
  runs = []
  offset = SYNTHETIC_SEED_OFFSET[split]

  def add(kind, index, loss, label, recovered, description, sigma, group=None):
    runs.append(_run_record(
        run_id=f"synthetic/{kind}/{index:03d}", workload="synthetic",
        group=group or f"synthetic:{kind}:{index:03d}", learning_rate=0.0, warmup_steps=0,
        seed=index, meta={"kind": kind, "sigma": sigma, "description": description},
        train_loss=loss, grad_norms=None, eval_steps=[], eval_metrics={}, trivial=trivial,
        label=label, recovered=recovered, protocol=f"synthetic: {description}"))

  n = SYNTHETIC_STEPS
  for level, sigma in enumerate(acc.NOISE_LEVELS):
    for i in range(CLEAN_PER_LEVEL):
      rng = np.random.default_rng((1 + offset, level, i))
      add(f"clean-sigma{sigma:g}", i, _noisy(rng, _clean_curve(rng, n, trivial), sigma),
          acc.STABLE, None, f"clean decreasing curve, lognormal noise sigma {sigma:g}", sigma)
  for i in range(25):  # early spikes of 1-6 steps, 5-50x, then training goes on
    rng = np.random.default_rng((2 + offset, i))
    sigma = float(rng.choice([0.05, 0.1, 0.3]))
    curve = _clean_curve(rng, n, trivial)
    start, length = int(rng.integers(1, 15)), int(rng.integers(1, 7))
    factor = math.exp(rng.uniform(math.log(5), math.log(50)))
    curve[start:start + length] *= factor * np.exp(-np.arange(length) / max(length, 1))
    add("early-spike", i, _noisy(rng, curve, sigma), acc.EARLY_UNSTABLE, True,
        f"x{factor:.3g} spike at step {start + 1} for {length} steps, sigma {sigma:g}", sigma)
  for i in range(25):  # a sudden rise after a steady decline, then recovery (or not, half of them)
    rng = np.random.default_rng((3 + offset, i))
    sigma = float(rng.choice([0.05, 0.1, 0.3]))
    curve = _clean_curve(rng, n, trivial, max_floor=0.1)
    # After the curve is below 15% of the trivial level: a rise from there is unmistakable.
    low = int(np.argmax(curve < 0.15 * trivial)) if np.any(curve < 0.15 * trivial) else n
    start = int(rng.integers(70, 170)) if low < 70 else int(rng.integers(min(low, 160), 170))
    # The rise: 50-80% of the trivial level on top of a loss below 15% of it, so
    # always several times the level training had reached; it decays over 8-20
    # steps (recovers) or stays.
    height = trivial * rng.uniform(0.5, 0.8)
    recover = i % 2 == 0
    decay = rng.uniform(8.0, 20.0) if recover else math.inf
    curve[start:] += height * np.exp(-np.arange(n - start) / decay)
    add("mid-spike", i, _noisy(rng, curve, sigma), acc.MID_TRAINING_UNSTABLE, recover,
        f"+{height:.3g} rise at step {start + 1}, {'recovers' if recover else 'stays'}, sigma {sigma:g}",
        sigma)
  for i in range(20):  # stalls at the trivial level (a small initial drop, then flat)
    rng = np.random.default_rng((4 + offset, i))
    sigma = float(rng.choice([0.02, 0.05, 0.1]))
    t = np.arange(n)
    curve = trivial * (1.0 + rng.uniform(0.0, 0.1) * np.exp(-t / rng.uniform(2, 10)))
    add("stall", i, _noisy(rng, curve, sigma), acc.FAILED_TO_TRAIN, None,
        f"flat at the trivial level, sigma {sigma:g}", sigma)
  for i in range(10):  # a group of two: a good run and one stuck far above it
    rng = np.random.default_rng((5 + offset, i))
    sigma = float(rng.choice([0.05, 0.1, 0.3]))
    good = _clean_curve(rng, n, trivial, max_floor=0.1)
    # At most a third of the way from the trivial level to the partner's floor.
    plateau = trivial * rng.uniform(0.7, 0.85)
    t = np.arange(n)
    bad = plateau + (good[0] - plateau) * np.exp(-t / rng.uniform(3, 15))
    group = f"synthetic:plateau-pair:{i:03d}"
    add("plateau-partner", i, _noisy(rng, good, sigma), acc.STABLE, None,
        f"the good run of a pair, sigma {sigma:g}", sigma, group)
    add("plateau", i, _noisy(rng, bad, sigma), acc.FAILED_TO_TRAIN, None,
        f"plateau at {plateau:.3g} while its pair reaches {good[-1]:.3g}, sigma {sigma:g}", sigma, group)
  for i in range(20):  # NaN from some step on, or a blow-up that stays high
    rng = np.random.default_rng((6 + offset, i))
    sigma = float(rng.choice([0.05, 0.1, 0.3]))
    loss = _noisy(rng, _clean_curve(rng, n, trivial), sigma)
    start = int(rng.integers(2, 180))
    if i % 2 == 0:
      loss[start:] = np.nan
      description = f"NaN from step {start + 1}, sigma {sigma:g}"
    else:
      high = trivial * math.exp(rng.uniform(math.log(5), math.log(1000)))
      loss[start:] = _noisy(rng, np.full(n - start, high), sigma)
      description = f"jumps to {high:.3g} at step {start + 1} and stays, sigma {sigma:g}"
    add("diverge", i, loss, acc.DIVERGED, None, description, sigma)
  return runs


# ----------------------------------------------------------------------------
# Writing the corpus.


def _rounded(values, digits: int = 6):
  """Floats to ``digits`` significant digits (NaN/Inf -> None), for a small file."""
  if values is None:
    return None
  out = []
  for v in np.asarray(values, dtype=np.float64).tolist():
    out.append(float(f"{v:.{digits}g}") if math.isfinite(v) else None)
  return out


def _run_record(*, run_id, workload, group, learning_rate, warmup_steps, seed, meta, train_loss,
                grad_norms, eval_steps, eval_metrics, trivial, label, recovered, protocol):
  return {"id": run_id, "workload": workload, "group": group, "learning_rate": float(learning_rate),
          "warmup_steps": int(warmup_steps), "seed": int(seed), "meta": meta,
          "train_loss": _rounded(train_loss), "grad_norms": _rounded(grad_norms),
          "eval_steps": [int(s) for s in eval_steps],
          "eval_metrics": {k: _rounded(v) for k, v in eval_metrics.items()},
          "trivial_loss": trivial, "label": label, "recovered": recovered, "protocol": protocol}


def _trivial_for(work_dir: pathlib.Path, workload: str) -> float:
  return float(json.loads((work_dir / workload / FACTS_FILE).read_text())["trivial_loss"])


def real_runs(work_dir: pathlib.Path, split: str = "corpus") -> list[dict[str, Any]]:
  """The stored runs of every real workload of ``split``, labelled by the protocol."""
  from optstab.diagnosis import TrialStore

  runs = []
  for workload in REAL_WORKLOADS:
    if not (work_dir / workload / "trials.jsonl").exists():
      continue
    sweeps = sweeps_for(workload, split)
    store = TrialStore(work_dir / workload)
    trivial = _trivial_for(work_dir, workload)
    for sweep in sweeps:
      records = [store.get(c) for c in sweep.configs()]
      finished = [(c, r) for c, r in zip(sweep.configs(), records) if r is not None and r.result is not None]
      if len(finished) < len(records):
        print(f"[{sweep.group}] {len(records) - len(finished)} of {len(records)} runs missing or raised",
              flush=True)
      # Labelled as shipped (6 significant digits), so the file's labels follow from the file.
      losses = [acc.as_array(_rounded(r.result.train_loss)) for _, r in finished]
      final_errors = [_final_error(r.result.eval_metrics.get("error_rate")) for _, r in finished]
      labels = label_group(losses, trivial, final_errors)
      for (config, record), loss, (label, recovered, rule) in zip(finished, losses, labels):
        result = record.result
        run_id = f"{sweep.group}:lr{config.learning_rate:g}"
        by_eye = BY_EYE.get(run_id)
        record_out = _run_record(
            run_id=run_id, workload=workload, group=sweep.group,
            learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, seed=config.seed,
            meta={"name": sweep.name, "num_steps": config.num_steps, "schedule": config.schedule,
                  **{k: v for k, v in config.extra.items() if k != "group_strides"}},
            train_loss=loss, grad_norms=result.grad_norms, eval_steps=result.eval_steps,
            eval_metrics=result.eval_metrics, trivial=trivial, label=label, recovered=recovered,
            protocol=rule)
        if by_eye is not None:
          record_out.update(label=by_eye[0], recovered=by_eye[1], by_eye=True,
                            by_eye_reason=by_eye[2])
        runs.append(record_out)
  return runs


def write_corpus(work_dir: pathlib.Path, out: pathlib.Path, split: str = "corpus") -> None:
  """Labels every stored run, adds the synthetic ones and writes the gzipped corpus."""
  runs = real_runs(work_dir, split) + synthetic_runs(split=split)
  ids = [r["id"] for r in runs]
  if len(set(ids)) != len(ids):
    raise ValueError("run ids are not unique")
  unknown = set(BY_EYE) - set(ids)
  if unknown and split == "corpus":
    raise ValueError(f"BY_EYE names runs that are not in the corpus: {sorted(unknown)}")
  # No timestamp, no file name: the same runs give the same bytes.
  with open(out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
    for run in runs:
      gz.write((json.dumps(run, separators=(",", ":"), allow_nan=False) + "\n").encode())
  counts = collections.Counter((r["workload"], r["label"]) for r in runs)
  print(f"wrote {len(runs)} runs to {out} ({out.stat().st_size / 1e6:.2f} MB)")
  for (workload, label), count in sorted(counts.items()):
    print(f"  {workload:12s} {label:22s} {count}")


def plot_groups(corpus: pathlib.Path, out_dir: pathlib.Path, match: str = "") -> None:
  """One PNG per group (id containing ``match``): every run's loss (log scale), its label and rule."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir.mkdir(parents=True, exist_ok=True)
  groups = collections.defaultdict(list)
  for run in acc.load_corpus(corpus):
    if match in run["id"]:
      groups[run["group"]].append(run)
  for group, runs in groups.items():
    cols = min(6, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
      loss = acc.as_array(run["train_loss"])
      ax.semilogy(np.arange(1, loss.size + 1), loss, lw=0.8)
      if run["trivial_loss"]:
        ax.axhline(run["trivial_loss"], color="gray", lw=0.5, ls="--")
      errors = run["eval_metrics"].get("error_rate")
      err = f" err {errors[-1]:.2f}" if errors and errors[-1] is not None else ""
      eye = " (by eye)" if run.get("by_eye") else ""
      ax.set_title(f"lr {run['learning_rate']:g}{err}\n{run['label']}{eye}: {run['protocol'][:38]}",
                   fontsize=7)
      ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(runs):]:
      ax.axis("off")
    fig.suptitle(group, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", group) + ".png"), dpi=80)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
  parser.add_argument("--work-dir", type=pathlib.Path, default=None,
                      help="where trials are stored (default ~/.cache/optstab/diagnosis_corpus)")
  parser.add_argument("--split", default="corpus", choices=SPLITS,
                      help="corpus: the shipped corpus; held-out: other seeds, for checking a "
                           "detector change; test: other seeds again, for a last check "
                           "(default out: diagnosis_<split>.jsonl.gz beside this script)")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--relabel", action="store_true",
                      help="train nothing: label the stored runs and write the corpus")
  parser.add_argument("--no-write", action="store_true", help="collect only")
  parser.add_argument("--plot", type=pathlib.Path, default=None, metavar="DIR",
                      help="after writing, plot every group of the corpus into DIR (for the by-eye review)")
  parser.add_argument("--plot-match", default="", help="only groups whose run ids contain this")
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = SPLIT_OUT[args.split]
  if args.work_dir is None:
    from optstab.wrn import data as wrn_data

    args.work_dir = wrn_data.default_data_dir() / SPLIT_OUT[args.split].name.split(".")[0]
  if not args.relabel:
    for workload in args.workloads:
      if workload != "synthetic":
        collect(workload, args.work_dir, args.split)
  if not args.no_write:
    write_corpus(args.work_dir, args.out, args.split)
  if args.plot is not None:
    plot_groups(args.out, args.plot, args.plot_match)


if __name__ == "__main__":
  main()
