"""Tests for optstab.wrn.model: the WideResNet of the stride experiment (spec S6)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optstab.wrn import model as wrn_model
from optstab.wrn.model import (WideResNet, WideResNetConfig, apply_model, create_model, merge_model,
                               param_count, split_model)

# A tiny configuration: 1 block per group, widths 16, 32, 64 (block 0 keeps
# 16 channels and stride 1, so its shortcut is the identity; blocks 1 and 2
# project). DEEP has 2 blocks per group (checked by shape only).
TINY = WideResNetConfig(depth=10, width=1, num_classes=10, image_size=16, in_channels=1,
                        head="global_pool")
DEEP = TINY.replace(depth=16)

# Compiling threefry sampling for every kernel shape costs seconds on CPU; the
# rbg generator compiles fast. Models are built once per config and process.
_make = functools.lru_cache(maxsize=None)(
    lambda cfg: create_model(cfg, jax.random.key(0, impl="unsafe_rbg")))
_apply = jax.jit(apply_model, static_argnames="train")


def _expected_param_count(depth, width, num_classes, in_channels, dense_in):
  """Independent count (no conv biases), without the 1x1 projections: (body, head)."""
  n = (depth - 4) // 6
  total = 3 * 3 * in_channels * 16  # stem
  c_in = 16
  for c in (16 * width, 32 * width, 64 * width):
    for _ in range(n):
      total += 2 * c_in  # bn1
      total += 3 * 3 * c_in * c  # conv1
      total += 2 * c  # bn2
      total += 3 * 3 * c * c  # conv2
      c_in = c
  return total, dense_in * num_classes + num_classes + 2 * 64 * width


def test_wrn_28_10_param_count_is_36_5m():
  cfg = WideResNetConfig(depth=28, width=10)
  count = param_count(cfg)  # shape-only: no 36M-parameter init
  assert abs(count - 36.5e6) < 0.1e6, count
  # Exact: blocks + three 1x1 projections + final BN + Dense.
  body, head = _expected_param_count(28, 10, 10, 3, 640)
  projections = 16 * 160 + 160 * 320 + 320 * 640
  assert count == body + head + projections


def test_stride_1x1_changes_feature_map_and_dense_input_81x():
  std = WideResNetConfig(depth=28, width=10)
  bug = std.with_group_stride(1, (1, 1))
  assert std.group_strides == ((1, 1), (2, 2), (2, 2))
  assert bug.group_strides == ((1, 1), (1, 1), (2, 2))
  assert std.feature_map_shape == (8, 8) and bug.feature_map_shape == (16, 16)
  assert std.pooled_shape == (1, 1) and bug.pooled_shape == (9, 9)
  assert bug.dense_in_features == 81 * std.dense_in_features == 81 * 640
  abstract = nnx.eval_shape(lambda: WideResNet(bug, rngs=nnx.Rngs(0)))
  assert abstract.dense.kernel.shape == (51840, 10)
  # Only the Dense layer differs in size.
  assert param_count(bug) - param_count(std) == 80 * 640 * 10
  # The real forward pass (shape-evaluated) sees a 16x16 map.
  feats = jax.eval_shape(lambda m, x: m.features(x, train=False), abstract,
                         jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert feats.shape == (2, 16, 16, 640)
  logits = jax.eval_shape(lambda m, x: m(x, train=False), abstract,
                          jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_small_inputs_and_head_options():
  # 16x16 inputs: the 8x8 window fits only if one group keeps stride 1.
  with pytest.raises(ValueError, match="8x8"):
    WideResNetConfig(depth=10, width=1, image_size=16)
  ok = WideResNetConfig(depth=10, width=1, image_size=16, head="global_pool")
  assert ok.dense_in_features == 64
  assert WideResNetConfig(depth=10, width=1, image_size=16,
                          group_strides=((1, 1), (1, 1), (2, 2))).pooled_shape == (1, 1)
  # global_pool: Dense input does not depend on the strides.
  g = WideResNetConfig(depth=10, width=2, head="global_pool")
  assert g.dense_in_features == g.with_group_stride(2, 1).dense_in_features == 128


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=12), "depth"),
    (dict(depth=4), "depth"),
    (dict(width=0), "width"),
    (dict(head="pool"), "head"),
    (dict(block_norm="post_norm"), "block_norm"),
    (dict(group_strides=((1, 1), (2, 2))), "group_strides"),
    (dict(group_strides=((1, 1), (0, 2), (2, 2))), "group_strides"),
    (dict(zero_init_residual=1), "zero_init_residual"),
    (dict(dtype=jnp.int32), "dtype"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    WideResNetConfig(**kwargs)


def test_config_dict_round_trip_and_dtype_names():
  import json
  cfg = WideResNetConfig(depth=16, width=2, group_strides=((1, 1), (1, 1), (2, 2)),
                         block_norm="residual_norm", zero_init_residual=True, dtype="bfloat16")
  assert cfg.dtype == jnp.bfloat16
  assert WideResNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  assert WideResNetConfig(dtype=jnp.float32) == WideResNetConfig(dtype="float32")
  assert hash(cfg) == hash(WideResNetConfig.from_dict(cfg.to_dict()))


def test_with_group_stride_validation_and_int_stride():
  cfg = WideResNetConfig()
  assert cfg.with_group_stride(2, 1).group_strides[2] == (1, 1)
  with pytest.raises(ValueError, match="group_index"):
    cfg.with_group_stride(3, (1, 1))


def _x(seed, batch=8, size=16, channels=1, scale=1.0, shift=0.0):
  return shift + scale * jax.random.normal(jax.random.key(seed), (batch, size, size, channels))


def test_forward_shapes_and_reference_layout():
  abstract = nnx.eval_shape(lambda: WideResNet(DEEP, rngs=nnx.Rngs(0)))
  blocks = list(abstract.blocks)
  assert len(blocks) == 6
  # Stride on the first block of each group only; projection where shapes change.
  assert [tuple(b.conv1.strides) for b in blocks] == [
      (1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
  assert [b.shortcut is not None for b in blocks] == [False, False, True, False, True, False]
  assert blocks[2].shortcut.kernel.shape == (1, 1, 16, 32)
  assert tuple(blocks[2].shortcut.strides) == (2, 2)
  assert all(b.conv1.bias is None and b.conv2.bias is None for b in blocks)
  assert abstract.stem.kernel.shape == (3, 3, 1, 16) and abstract.stem.bias is None
  assert all(b.norm1.momentum == 0.9 and b.norm1.epsilon == 1e-5 for b in blocks)
  assert all(b.norm3 is None for b in blocks)
  assert abstract.dense.kernel.shape == (64, 10)
  # Wide groups: WRN-10-4 has 64, 128, 256 channels.
  wide = nnx.eval_shape(lambda: WideResNet(TINY.replace(depth=10, width=4), rngs=nnx.Rngs(0)))
  assert [b.conv2.kernel.shape[-1] for b in wide.blocks] == [64, 128, 256]
  assert wide.blocks[0].shortcut.kernel.shape == (1, 1, 16, 64)

  logits, _ = _apply(*split_model(_make(TINY)), _x(1), train=True)
  assert logits.shape == (8, 10) and logits.dtype == jnp.float32
  with pytest.raises(ValueError, match="shape"):
    _apply(*split_model(_make(TINY)), jnp.zeros((8, 32, 32, 1)), train=True)


def test_init_lecun_normal_and_create_model_seeding():
  model = _make(TINY)
  kernel = model.blocks[1].conv1.kernel[...]  # 3x3x16x32, fan_in 144
  assert abs(float(jnp.std(kernel)) * math.sqrt(144) - 1.0) < 0.05
  assert float(jnp.abs(kernel).max()) * math.sqrt(144) < 2.0 / 0.8796  # truncated at 2 std
  assert float(jnp.abs(model.dense.bias[...]).max()) == 0.0
  np.testing.assert_array_equal(model.blocks[0].norm1.scale[...], 1.0)
  # Same key -> same parameters; another key -> others.
  again = create_model(TINY, jax.random.key(0, impl="unsafe_rbg"))
  other = create_model(TINY, jax.random.key(1, impl="unsafe_rbg"))
  np.testing.assert_array_equal(again.stem.kernel[...], model.stem.kernel[...])
  assert not np.allclose(other.stem.kernel[...], model.stem.kernel[...])


def _shortcut_only(model, x):
  """The network with every residual branch removed (what zero-init should equal)."""
  x = model.stem(x)
  for block in model.blocks:
    if block.shortcut is not None:
      x = block.shortcut(nnx.relu(block.norm1(x, use_running_average=True)))
  x = nnx.relu(model.final_norm(x, use_running_average=True))
  return model.dense(jnp.mean(x, axis=(1, 2)))


@functools.partial(jax.jit, static_argnames=("index", "train"))
def _block(graphdef, params, stats, h, *, index, train):
  model = merge_model(graphdef, params, stats, copy=True)
  return model.blocks[index](h, use_running_average=not train)


@jax.jit
def _zero_init_probe(graphdef, params, stats, x, h):
  """(eval logits, shortcut-only logits, block 0 on h): one compilation per model."""
  logits, _ = apply_model(graphdef, params, stats, x, train=False)
  model = merge_model(graphdef, params, stats, copy=True)
  return logits, _shortcut_only(model, x), model.blocks[0](h, use_running_average=False)


@pytest.mark.parametrize("block_norm", ["pre_activation", "residual_norm"])
def test_zero_init_residual_makes_branches_identity(block_norm):
  x, h = _x(2), _x(3, channels=16)
  zero = split_model(_make(TINY.replace(block_norm=block_norm, zero_init_residual=True)))
  plain = split_model(_make(TINY.replace(block_norm=block_norm)))
  logits, shortcut_logits, block_out = _zero_init_probe(*zero, x, h)
  # Block 0 has an identity shortcut: the zero-initialised block is the identity,
  # and the whole network equals its shortcut path.
  np.testing.assert_array_equal(block_out, h)
  np.testing.assert_allclose(logits, shortcut_logits, rtol=1e-5, atol=1e-5)
  # Without zero-init the branches contribute (so the checks above can fail).
  logits, shortcut_logits, block_out = _zero_init_probe(*plain, x, h)
  assert not np.allclose(block_out, h, atol=1e-3)
  assert not np.allclose(logits, shortcut_logits, atol=1e-3)
  # The zeroed layer is the branch's last one; everything else keeps its init.
  model = merge_model(*zero)
  for block in model.blocks:
    if block_norm == "pre_activation":
      assert float(jnp.abs(block.conv2.kernel[...]).max()) == 0.0
    else:
      assert float(jnp.abs(block.norm3.scale[...]).max()) == 0.0
      assert float(jnp.abs(block.conv2.kernel[...]).max()) > 0.0
    assert float(jnp.abs(block.conv1.kernel[...]).max()) > 0.0


def test_residual_norm_places_norm_last_in_branch():
  cfg = TINY.replace(block_norm="residual_norm")
  # One extra BatchNorm (scale + bias) per block.
  extra = 2 * sum(c * cfg.blocks_per_group for c in cfg.group_widths)
  assert param_count(cfg) - param_count(TINY) == extra
  # x + Norm(f(x)): in train mode the branch output has zero mean and unit
  # variance per channel (scale 1, bias 0 at init), whatever the input scale;
  # the pre-activation branch has no such normalization.
  h = _x(4, channels=16, scale=50.0, shift=3.0)
  branch = _block(*split_model(_make(cfg)), h, index=0, train=True) - h
  np.testing.assert_allclose(jnp.mean(branch, axis=(0, 1, 2)), 0.0, atol=1e-3)
  np.testing.assert_allclose(jnp.var(branch, axis=(0, 1, 2)), 1.0, rtol=1e-2)
  plain = _block(*split_model(_make(TINY)), h, index=0, train=True) - h
  assert not np.allclose(jnp.var(plain, axis=(0, 1, 2)), 1.0, rtol=0.1)


def test_train_vs_eval_batch_norm():
  graphdef, params, stats = split_model(_make(TINY))
  x = _x(5, batch=4, scale=3.0, shift=2.0)
  batch_a = jnp.concatenate([x, _x(6, batch=4)])
  batch_b = jnp.concatenate([x, _x(7, batch=4, scale=5.0)])

  # Train mode: an example's output depends on the rest of the batch...
  train_a, new_stats = _apply(graphdef, params, stats, batch_a, train=True)
  train_b, _ = _apply(graphdef, params, stats, batch_b, train=True)
  assert not np.allclose(train_a[:4], train_b[:4], atol=1e-4)
  # ...and the running statistics move with momentum 0.9 (initial mean 0, var 1).
  stem_out = merge_model(graphdef, params, stats, copy=True).stem(batch_a)
  np.testing.assert_allclose(new_stats["blocks"][0]["norm1"]["mean"][...],
                             0.1 * jnp.mean(stem_out, axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_stats["blocks"][0]["norm1"]["var"][...],
                             0.9 + 0.1 * jnp.var(stem_out, axis=(0, 1, 2)), rtol=1e-4)
  # The inputs were not mutated.
  np.testing.assert_array_equal(stats["blocks"][0]["norm1"]["mean"][...], 0.0)

  # Eval mode: per-example outputs, statistics returned unchanged.
  eval_a, same_stats = _apply(graphdef, params, new_stats, batch_a, train=False)
  eval_b, _ = _apply(graphdef, params, new_stats, batch_b, train=False)
  np.testing.assert_allclose(eval_a[:4], eval_b[:4], rtol=1e-5, atol=1e-5)
  assert not np.allclose(eval_a, train_a, atol=1e-3)
  for a, b in zip(jax.tree.leaves(same_stats), jax.tree.leaves(new_stats)):
    np.testing.assert_array_equal(a, b)


def test_apply_model_jit_and_grad():
  graphdef, params, stats = split_model(_make(TINY))
  x = _x(8)
  labels = jnp.arange(8) % 10

  def loss_fn(p, stats):
    logits, new_stats = apply_model(graphdef, p, stats, x, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels]), new_stats

  # batch_stats closed over inside jax.grad: apply_model must not mutate it.
  (loss, _), grads = jax.jit(
      lambda p, s: jax.value_and_grad(lambda q: loss_fn(q, s), has_aux=True)(p))(params, stats)
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  logits, _ = _apply(graphdef, params, stats, x, train=True)
  np.testing.assert_allclose(
      loss, -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels]), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  x = _x(9)
  bf16 = TINY.replace(dtype=jnp.bfloat16)
  abstract = nnx.eval_shape(lambda: WideResNet(bf16, rngs=nnx.Rngs(0)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(abstract)))
  feats = jax.eval_shape(lambda m, x: m.features(x, train=True), abstract, x)
  assert feats.dtype == jnp.bfloat16
  # The float32 parameters of TINY, computed in bfloat16, stay close to float32.
  bf16_graphdef = split_model(abstract)[0]
  _, params, stats = split_model(_make(TINY))
  out, new_stats = _apply(bf16_graphdef, params, stats, x, train=True)
  assert out.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_stats))
  ref, _ = _apply(*split_model(_make(TINY)), x, train=True)
  assert not np.array_equal(out, ref)  # the compute dtype did change
  np.testing.assert_allclose(out, ref, rtol=0.1, atol=0.1)


def test_module_exports():
  import optstab.wrn as pkg
  for name in wrn_model.__all__:
    assert getattr(pkg, name) is getattr(wrn_model, name)
