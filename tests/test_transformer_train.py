"""optstab.transformer.train: the step on the shared runner and the picklable TrialFn."""

import pickle

import numpy as np
import optax
import pytest

import optstab

from optstab.diagnosis import TrialConfig
from optstab.transformer import data as D
from optstab.transformer import train
from optstab.transformer.model import TransformerConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("text") / "t.txt"
  rng = np.random.default_rng(0)
  words = ["def ", "return ", "self", ".", "(", ")", ":\n", "    ", "x", " = ", "1"]
  path.write_text("".join(rng.choice(words, 3000)))
  return D.load_text(path)


def _setup(corpus, **changes):
  model = TransformerConfig(vocab_size=corpus.vocab_size, seq_len=16, depth=2, width=32,
                            num_heads=4, norm_position="pre")
  return train.TrainSetup(model, batch_size=8, eval_sequences=8, fetch_every=4, **changes)


def test_train_steps_lower_the_loss_on_a_fixed_batch(corpus):
  setup = _setup(corpus)
  graphdef, state = train.init_state(setup, seed=0)
  step = train.make_train_step(setup, graphdef)
  (tokens,) = next(D.train_batches(corpus, 16, 8, seed=0))
  losses, norms = [], []
  for _ in range(5):
    state, metrics = step(state, tokens, np.float32(3e-3))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  assert np.all(np.isfinite(losses)) and np.all(np.asarray(norms) > 0)
  assert np.all(np.diff(losses) < 0), losses
  # The first loss is the untrained model's: about log(vocab) for near-uniform logits.
  assert losses[0] == pytest.approx(np.log(corpus.vocab_size), rel=0.3)
  # Evaluation sums over valid rows only.
  evaluate = train.make_eval_step(graphdef)
  mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
  total, count = evaluate(state.params, state.model_state, tokens, mask)
  half, half_count = evaluate(state.params, state.model_state, tokens[:4], mask[:4])
  assert float(count) == float(half_count) == 4 * 16
  np.testing.assert_allclose(float(total), float(half), rtol=1e-5)


def test_trial_fn_overrides_the_norm_position_resumes_deterministically_and_pickles(corpus):
  trial_fn = train.make_trial_fn(_setup(corpus), corpus, progress=False)
  config = TrialConfig(3e-3, num_steps=6, warmup_steps=2, eval_every=4,
                       extra={"variant": "post_ln", "norm_position": "post"})
  result = trial_fn(config)
  assert result.train_loss.shape == (8,) and result.grad_norms.shape == (8,)
  assert result.eval_steps.tolist() == [4, 8] and set(result.eval_metrics) == {"loss"}
  assert np.all(np.isfinite(result.eval_metrics["loss"]))
  again = trial_fn(config)
  np.testing.assert_array_equal(result.train_loss, again.train_loss)
  pre = trial_fn(config.replace(extra={"variant": "pre_ln", "norm_position": "pre"}))
  assert not np.array_equal(pre.train_loss, result.train_loss)
  # A CorpusSource pickles small; an in-memory corpus travels with the function.
  small = pickle.dumps(train.make_trial_fn(_setup(corpus), D.CorpusSource(), progress=False))
  assert len(small) < 2000
  assert pickle.loads(pickle.dumps(trial_fn)).data.train.size == corpus.train.size


def test_setup_checks_extra_vocabulary_and_batch_size(corpus):
  setup = _setup(corpus)
  with pytest.raises(ValueError, match="unknown TrialConfig.extra"):
    setup.with_extra({"norm": "pre"})
  assert setup.with_extra({"norm_position": "residual", "b2": 0.99}).model.norm_position == \
      "residual"
  with pytest.raises(ValueError, match="vocab_size"):
    train.workload(setup.replace(model=setup.model.replace(vocab_size=5)), corpus)
  with pytest.raises(ValueError, match="b2"):
    train.TrainSetup(setup.model, b2=1.0)


def test_trial_fn_applies_the_diagnosis_fixes(corpus):
  post = _setup(corpus).replace(model=_setup(corpus).model.replace(norm_position="post"))
  trial_fn = train.make_trial_fn(post, corpus, progress=False)
  support = trial_fn.fix_support
  assert support.clipping and support.skip_spikes and support.optimizers == ("nadam",)
  assert support.architectures == {"Pre-LN": {"norm_position": "pre"}}
  config = TrialConfig(3e-3, num_steps=6, eval_every=6,
                       extra={"variant": "post_ln", "norm_position": "post"})
  plain = trial_fn(config)
  # Each fix changes the run; each fixed run still trains for every step.
  for fix in ({"clip_norm": 1e-3}, {"optimizer": "nadam"}, {"skip_spikes": True}):
    fixed = trial_fn(config.replace(**fix))
    assert np.all(np.isfinite(fixed.train_loss)), fix
    assert not np.array_equal(fixed.train_loss[1:], plain.train_loss[1:]), fix
  setup = optstab.runner.apply_fixes(_setup(corpus), config.replace(clip_norm=2.0, skip_spikes=True))
  state = train.make_optimizer(setup).init({"w": np.zeros(3, np.float32)})
  assert optax.tree.get(state, "total_skipped") == 0
  # A Pre-LN model offers no architecture fix: it already is the variant.
  assert _setup(corpus).fix_support().architectures == {}
