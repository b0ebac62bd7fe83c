"""Training the demo Transformer on the shared trial runner: the step, the evaluation, a ``TrialFn``.

The loop is :mod:`optstab.runner`'s, the same one the WideResNet demo uses;
this module supplies the Transformer :class:`~optstab.runner.Workload`.

Optimizer: Adam with :math:`\\beta_1 = 0.9`, :math:`\\beta_2 = 0.98`,
:math:`\\epsilon = 10^{-9}` (the original Transformer's; ``optstab.adam``, the
FAQ's placement of epsilon), no weight decay, no clipping. The learning-rate
schedule is the trial's: ``TrialConfig(schedule="constant", warmup_steps=w)``
is a linear warmup from 0 over ``w`` steps, then constant, as in the
playbook's Figures 6 and 8. The learning rate is an input of the compiled step,
so a sweep over rates and warmups compiles once per norm placement.

Loss: next-character cross-entropy, averaged over every position of the batch
(``train_loss``) and over every position of the validation windows (the
evaluation's ``"loss"``), in nats.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

import optstab
from optstab import _validation
from optstab import runner
from optstab.diagnosis.trial import FixSupport
from optstab.transformer import data as corpus_data
from optstab.transformer.model import Transformer, TransformerConfig, create_model

__all__ = [
    "TrainSetup",
    "MODEL_KEYS",
    "SETUP_KEYS",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "workload",
    "make_trial_fn",
]

#: ``TrialConfig.extra`` keys that change the model (``TransformerConfig`` fields).
MODEL_KEYS = ("norm_position", "depth", "width", "num_heads", "ff_width", "compute_dtype")

#: ``TrialConfig.extra`` keys that change the training setup.
SETUP_KEYS = ("b1", "b2", "eps")

#: Optimizer names a ``TrainSetup`` accepts (both take ``b1``, ``b2``, ``eps``).
OPTIMIZERS = ("adam", "nadam")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything about a Transformer trial except its learning-rate schedule and seed.

  Attributes:
    model: the model's shape (its ``vocab_size`` must be the corpus's).
    batch_size: sequences per global batch (split over the ``'data'`` mesh).
    b1, b2, eps: Adam's hyperparameters.
    optimizer: one of ``OPTIMIZERS``: ``"adam"`` (the original Transformer's)
      or ``"nadam"`` (the diagnosis's optimizer fix).
    clip_norm: clip the global gradient norm to this value before the
      optimizer (the diagnosis's clipping fix); ``None``, no clipping.
    skip_spikes: wrap the optimizer in ``optstab.skip_spikes`` (the
      diagnosis's step-guard fix).
    eval_sequences: validation windows evaluated (evenly spaced, fixed).
    fetch_every: fetch on-device metrics every this many steps.
    eval_batch_size: windows per evaluation batch.
  """

  model: TransformerConfig
  batch_size: int = 16
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  optimizer: str = "adam"
  clip_norm: Optional[float] = None
  skip_spikes: bool = False
  eval_sequences: int = 256
  fetch_every: int = 50
  eval_batch_size: int = 256

  def __post_init__(self):
    _validation.check_positive_int("batch_size", self.batch_size)
    _validation.check_in_range("b1", self.b1, 0.0, 1.0, high_inclusive=False)
    _validation.check_in_range("b2", self.b2, 0.0, 1.0, high_inclusive=False)
    _validation.check_non_negative("eps", self.eps)
    _validation.check_one_of("optimizer", self.optimizer, OPTIMIZERS)
    if self.clip_norm is not None:
      _validation.check_positive("clip_norm", self.clip_norm)
    for name in ("eval_sequences", "fetch_every", "eval_batch_size"):
      _validation.check_positive_int(name, getattr(self, name))

  def replace(self, **changes: Any) -> "TrainSetup":
    return dataclasses.replace(self, **changes)

  def with_extra(self, extra: Mapping[str, Any]) -> "TrainSetup":
    """This setup with a trial's ``extra`` overrides (``MODEL_KEYS``, ``SETUP_KEYS``; ``variant`` is a label)."""
    unknown = set(extra) - set(MODEL_KEYS) - set(SETUP_KEYS) - {"variant"}
    if unknown:
      raise ValueError(f"unknown TrialConfig.extra keys {sorted(unknown)}; allowed: "
                       f"{sorted(MODEL_KEYS + SETUP_KEYS + ('variant',))}.")
    model = self.model.replace(**{k: extra[k] for k in MODEL_KEYS if k in extra})
    return self.replace(model=model, **{k: extra[k] for k in SETUP_KEYS if k in extra})


  def fix_support(self) -> FixSupport:
    """The fixes ``runner.apply_fixes`` sets in this setup: clipping, the step guard, the other optimizer, Pre-LN for Post-LN."""
    variants = {"Pre-LN": {"norm_position": "pre"}} if self.model.norm_position == "post" else {}
    return FixSupport(clipping=True, skip_spikes=True, architectures=variants,
                      optimizers=tuple(o for o in OPTIMIZERS if o != self.optimizer))


def make_optimizer(setup: TrainSetup) -> optax.GradientTransformation:
  """``[skip_spikes of: [clip_by_global_norm] -> optimizer(b1, b2, eps)]``, its rate injected per step.

  The rate is set every step through :func:`optstab.runner.injectable_learning_rate`.
  """
  optimizer = optstab.adam if setup.optimizer == "adam" else optstab.nadam
  inner = runner.injectable_learning_rate(
      functools.partial(optimizer, b1=setup.b1, b2=setup.b2, eps=setup.eps))
  parts = runner.with_fixes([inner], clip_norm=setup.clip_norm, skip_spikes=setup.skip_spikes)
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def init_state(setup: TrainSetup, seed: int) -> tuple[nnx.GraphDef, runner.TrainState]:
  """Builds the model (seeded) and returns ``(graphdef, TrainState(params, model_state, opt_state))``.

  The initialisation key is ``jax.random.key(seed, impl="unsafe_rbg")``, whose
  init program compiles faster on CPU than threefry's. The model has no
  non-trainable state: ``model_state`` is empty.
  """
  model = create_model(setup.model, jax.random.key(seed, impl="unsafe_rbg"))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, runner.TrainState(params, rest, make_optimizer(setup).init(params))


def _next_token_loss(graphdef, params, model_state, tokens):
  """Per-position cross-entropy ``[batch, seq_len]`` of predicting ``tokens[:, 1:]``."""
  model: Transformer = nnx.merge(graphdef, params, model_state, copy=True)
  logits = model(tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


def _train_step(setup: TrainSetup, graphdef):
  tx = make_optimizer(setup)

  def step(state: runner.TrainState, tokens, learning_rate):
    def loss_fn(params):
      return jnp.mean(_next_token_loss(graphdef, params, state.model_state, tokens))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    opt_state = runner.set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (runner.TrainState(params, state.model_state, opt_state),
            runner.step_metrics(loss, optstab.global_norm(grads), opt_state))

  return step


def make_train_step(setup: TrainSetup, graphdef, mesh: Optional[Mesh] = None):
  """A jitted ``step(state, tokens, learning_rate) -> (state, {"loss", "grad_norm"})``.

  ``tokens`` is ``[batch, seq_len + 1]``; the loss is the batch's mean
  next-token cross-entropy before the update, ``grad_norm`` its unclipped
  global gradient norm. With a ``mesh`` the state stays replicated and the
  batch is expected sharded along ``'data'``; the state is donated.
  """
  return runner.jit_train_step(_train_step(setup, graphdef), mesh)


def _eval_step(graphdef):
  def evaluate(params, model_state, tokens, mask):
    losses = _next_token_loss(graphdef, params, model_state, tokens)
    return jnp.sum(losses * mask[:, None]), jnp.sum(mask) * losses.shape[1]

  return evaluate


def make_eval_step(graphdef):
  """A jitted ``eval(params, model_state, tokens, mask) -> (loss sum, positions counted)``."""
  return jax.jit(_eval_step(graphdef))


def _mean_loss(loss_sum, count):
  return {"loss": loss_sum / count}


def _eval_windows(setup: TrainSetup, corpus: corpus_data.CharCorpus, batch_size: int):
  windows = corpus_data.eval_windows(corpus, setup.model.seq_len, setup.eval_sequences)
  return corpus_data.eval_batches(windows, batch_size)


def workload(setup: TrainSetup, corpus: Optional[corpus_data.CharCorpus]) -> runner.Workload:
  """The runner's :class:`~optstab.runner.Workload`: this model on this corpus.

  ``corpus=None`` gives a workload that can only be compiled.

  Raises:
    ValueError: the model's vocabulary or the corpus's size does not fit.
  """
  if corpus is not None:
    if corpus.vocab_size != setup.model.vocab_size:
      raise ValueError(f"model vocab_size {setup.model.vocab_size} must equal the corpus's "
                       f"{corpus.vocab_size} symbols.")
    corpus_data.check_size(corpus, setup.model.seq_len, setup.batch_size, setup.eval_sequences)
  return runner.Workload(
      key=setup,
      init_state=functools.partial(init_state, setup),
      train_step=functools.partial(_train_step, setup),
      eval_step=_eval_step,
      eval_metrics=_mean_loss,
      train_batches=functools.partial(_train_windows, setup, corpus),
      eval_batches=functools.partial(_eval_windows, setup, corpus),
      num_eval_examples=setup.eval_sequences,
      data=corpus,
      loop=runner.LoopConfig(fetch_every=setup.fetch_every, eval_batch_size=setup.eval_batch_size),
  )


def _train_windows(setup: TrainSetup, corpus: corpus_data.CharCorpus, seed: int):
  return corpus_data.train_batches(corpus, setup.model.seq_len, setup.batch_size, seed)


def make_trial_fn(setup: TrainSetup,
                  data: Union[corpus_data.CharCorpus, corpus_data.CorpusSource, None] = None, *,
                  mesh: Optional[Mesh] = None, progress: bool = True) -> runner.TrialFunction:
  """A diagnosis ``TrialFn`` training this Transformer on this corpus (picklable).

  ``config.extra`` may override ``MODEL_KEYS`` (e.g. ``{"norm_position":
  "pre"}``) and ``SETUP_KEYS``; ``"variant"`` is a free label. Compiled steps
  are cached per resulting setup and process.

  Args:
    setup: the model and optimizer.
    data: a :class:`~optstab.transformer.data.CorpusSource` (default: the
      standard-library corpus), loaded once per process where the trial runs,
      or an in-memory ``CharCorpus`` (then pickled with the function).
    mesh: a ``'data'`` mesh (default: every device of the process running the
      trial; an explicit mesh makes the function unpicklable).
    progress: a tqdm bar per trial.
  """
  data = corpus_data.CorpusSource() if data is None else data
  runner.check_batch_size(setup.batch_size, mesh)
  return runner.TrialFunction(workload, setup, data, progress=progress, mesh=mesh)
