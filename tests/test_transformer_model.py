"""optstab.transformer.model: shapes, parameter counts, causality, the three norm placements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optstab.transformer import model as M

SMALL = M.TransformerConfig(vocab_size=11, seq_len=8, depth=2, width=16, num_heads=4)


@pytest.mark.parametrize("norm_position", M.NORM_POSITIONS)
def test_shapes_and_parameter_counts(norm_position):
  config = SMALL.replace(norm_position=norm_position)
  model = M.create_model(config, seed=0)
  tokens = jnp.zeros((3, 8), jnp.int32)
  logits = model(tokens)
  assert logits.shape == (3, 8, 11) and logits.dtype == jnp.float32
  assert model(tokens[:, :5]).shape == (3, 5, 11)  # shorter contexts are fine
  assert M.param_count(model) == M.param_count(config) == M.expected_param_count(config)
  # The model: 6 layers, width 64, ff 4x, ~98 symbols.
  big = M.TransformerConfig(vocab_size=97, seq_len=32)
  assert M.param_count(big) == M.expected_param_count(big)
  with pytest.raises(ValueError, match="tokens must have shape"):
    model(jnp.zeros((2, 9), jnp.int32))


def test_a_later_token_cannot_change_an_earlier_logit():
  model = M.create_model(SMALL.replace(norm_position="pre"), seed=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 11, (2, 8)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 5] = (changed[:, 5] + 1) % 11
  a, b = np.asarray(model(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(changed)))
  np.testing.assert_array_equal(a[:, :5], b[:, :5])  # positions before 5: bit-identical
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4    # from 5 on: the change is seen


@pytest.mark.parametrize("norm_position", M.NORM_POSITIONS)
def test_norm_placements_follow_their_equations(norm_position):
  config = SMALL.replace(norm_position=norm_position)
  model = M.create_model(config, seed=0)
  block = model.blocks[0]
  x = jax.random.normal(jax.random.key(3), (2, 8, 16)) * 3.0 + 1.0
  attention, ff = block.attention, block._feed_forward
  ln1, ln2 = block.norm_attention, block.norm_ff
  if norm_position == "post":
    h = ln1(x + attention(x))
    want = ln2(h + ff(h))
  elif norm_position == "pre":
    h = x + attention(ln1(x))
    want = h + ff(ln2(h))
  else:
    h = x + ln1(attention(x))
    want = h + ln2(ff(h))
  np.testing.assert_allclose(np.asarray(block(x)), np.asarray(want), rtol=1e-6, atol=1e-6)
  out = np.asarray(block(x))
  # Post-LN's output is normalized per position (LN scale 1, bias 0 at init); the others are not.
  normalized = np.allclose(out.mean(-1), 0, atol=1e-4) and np.allclose(out.std(-1), 1, atol=1e-2)
  assert normalized == (norm_position == "post")
  assert (model.final_norm is None) == (norm_position == "post")


def test_xavier_init_and_bfloat16_compute():
  model = M.create_model(SMALL, seed=0)
  kernel = np.asarray(model.blocks[0].ff_in.kernel[...])
  limit = np.sqrt(6.0 / (16 + 64))  # Glorot uniform bound for a 16 x 64 kernel
  assert kernel.shape == (16, 64) and np.abs(kernel).max() <= limit
  assert np.abs(kernel).max() > 0.9 * limit  # uniform over the whole range
  assert np.all(np.asarray(model.blocks[0].ff_in.bias[...]) == 0)
  bf16 = M.create_model(SMALL.replace(compute_dtype="bfloat16"), seed=0)
  tokens = jnp.arange(8, dtype=jnp.int32)[None] % 11
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  full, low = np.asarray(model(tokens)), np.asarray(bf16(tokens))
  assert low.dtype == np.float32
  # bfloat16 keeps 8 mantissa bits: relative error ~2^-8 per op, a few percent overall.
  assert np.abs(full - low).max() < 0.1 * np.abs(full).max()


def test_config_validation():
  with pytest.raises(ValueError, match="norm_position"):
    SMALL.replace(norm_position="sandwich")
  with pytest.raises(ValueError, match="num_heads"):
    SMALL.replace(num_heads=3)
  with pytest.raises(ValueError, match="compute_dtype"):
    SMALL.replace(compute_dtype="float16")
  with pytest.raises(ValueError, match="depth"):
    SMALL.replace(depth=0)
