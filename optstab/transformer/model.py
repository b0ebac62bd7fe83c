"""A decoder-only Transformer in ``flax.nnx`` with the layer norm in one of three places.

The rule (fix 5 of the FAQ's "Potential fixes for common instability patterns":
normalize last in the residual; the playbook's Figures 6 and 8). Where the layer norm sits in a residual block decides how the first updates move the output:

* ``"post"`` (the original Transformer, Post-LN): :math:`x_{l+1} = \\mathrm{LN}(x_l + f(x_l))`.
  Every block's output is renormalized, so the gradient reaching the early
  layers grows with depth at initialization; with Adam's full-size first steps
  this needs a long learning-rate warmup (Xiong et al., 2020).
* ``"pre"`` (Pre-LN): :math:`x_{l+1} = x_l + f(\\mathrm{LN}(x_l))`, plus a final
  LN before the output layer. The residual stream is an identity path.
* ``"residual"`` (the FAQ's "x + Norm(f(x))"): :math:`x_{l+1} = x_l + \\mathrm{LN}(f(x_l))`,
  plus a final LN: the branch is normalized, the residual path left alone.

Architecture: token and learned position embeddings, ``depth`` blocks of causal
multi-head self-attention and a ReLU feed-forward network (``ff_width``, 4 x
``width`` by default), each a residual branch with the norm placement above,
then an untied output layer. Every weight matrix is Xavier-uniform (Glorot),
biases zero, layer norms scale 1 / bias 0 with epsilon 1e-5. No dropout: the
demo studies optimization, not generalization.

Precision: parameters are float32; ``compute_dtype="bfloat16"`` runs the
matmuls in bfloat16 (accelerators), while layer norms, the attention softmax
and the logits stay float32.

References:
  Vaswani et al., `Attention Is All You Need <https://arxiv.org/abs/1706.03762>`_, 2017.
  Xiong et al., `On Layer Normalization in the Transformer Architecture
  <https://arxiv.org/abs/2002.04745>`_, 2020 (Post-LN vs Pre-LN and warmup).
  The Deep Learning Tuning Playbook, FAQ "How can I deal with optimization
  failures?" (Figures 6 and 8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from optstab import _validation

__all__ = [
    "NORM_POSITIONS",
    "COMPUTE_DTYPES",
    "LAYER_NORM_EPSILON",
    "TransformerConfig",
    "CausalSelfAttention",
    "Block",
    "Transformer",
    "create_model",
    "param_count",
    "expected_param_count",
]

#: Where a block's layer norm goes: LN(x + f(x)), x + f(LN(x)), x + LN(f(x)).
NORM_POSITIONS = ("post", "pre", "residual")

#: Compute dtypes (parameters are always float32).
COMPUTE_DTYPES = ("float32", "bfloat16")

LAYER_NORM_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The model's shape (hashable: it keys the compiled steps).

  Attributes:
    vocab_size: number of symbols.
    seq_len: context length (positions 0..seq_len-1).
    depth: number of blocks.
    width: model (residual stream) width.
    num_heads: attention heads; must divide ``width``.
    ff_width: hidden width of the feed-forward network (``None``: 4 x width).
    norm_position: one of ``NORM_POSITIONS``.
    compute_dtype: one of ``COMPUTE_DTYPES``.
  """

  vocab_size: int
  seq_len: int = 32
  depth: int = 6
  width: int = 64
  num_heads: int = 4
  ff_width: Optional[int] = None
  norm_position: str = "post"
  compute_dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "seq_len", "depth", "width", "num_heads"):
      _validation.check_positive_int(name, getattr(self, name))
    if self.ff_width is not None:
      _validation.check_positive_int("ff_width", self.ff_width)
    if self.width % self.num_heads:
      raise ValueError(f"num_heads must divide width {self.width}; got {self.num_heads}.")
    _validation.check_one_of("norm_position", self.norm_position, NORM_POSITIONS)
    _validation.check_one_of("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)

  @property
  def hidden_width(self) -> int:
    return 4 * self.width if self.ff_width is None else self.ff_width

  @property
  def dtype(self) -> Any:
    return jnp.bfloat16 if self.compute_dtype == "bfloat16" else jnp.float32

  def replace(self, **changes: Any) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)


def _dense(in_features: int, out_features: int, config: TransformerConfig, rngs: nnx.Rngs):
  return nnx.Linear(in_features, out_features, kernel_init=nnx.initializers.xavier_uniform(),
                    bias_init=nnx.initializers.zeros_init(), dtype=config.dtype,
                    param_dtype=jnp.float32, rngs=rngs)


def _layer_norm(width: int, rngs: nnx.Rngs):
  return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=rngs)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention in which position ``i`` sees positions ``<= i`` only.

  :math:`\\mathrm{softmax}(QK^\\top / \\sqrt{d_h} + M) V` per head, with
  :math:`M_{ij} = -\\infty` for :math:`j > i`, heads concatenated and projected.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.num_heads = config.num_heads
    self.qkv = _dense(config.width, 3 * config.width, config, rngs)
    self.out = _dense(config.width, config.width, config, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    head = width // self.num_heads
    q, k, v = jnp.split(self.qkv(x).reshape(batch, length, 3 * self.num_heads, head), 3, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head)
    causal = jnp.tril(jnp.ones((length, length), bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return self.out(mixed)


class Block(nnx.Module):
  """One residual block: attention, then the feed-forward network, norms per ``norm_position``."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.norm_position = config.norm_position
    self.attention = CausalSelfAttention(config, rngs=rngs)
    self.ff_in = _dense(config.width, config.hidden_width, config, rngs)
    self.ff_out = _dense(config.hidden_width, config.width, config, rngs)
    self.norm_attention = _layer_norm(config.width, rngs)
    self.norm_ff = _layer_norm(config.width, rngs)

  def _feed_forward(self, x: jax.Array) -> jax.Array:
    return self.ff_out(nnx.relu(self.ff_in(x)))

  def _residual(self, x: jax.Array, branch, norm) -> jax.Array:
    dtype = x.dtype
    if self.norm_position == "post":   # LN(x + f(x))
      return norm(x + branch(x)).astype(dtype)
    if self.norm_position == "pre":    # x + f(LN(x))
      return x + branch(norm(x).astype(dtype))
    return x + norm(branch(x)).astype(dtype)  # "residual": x + LN(f(x))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self._residual(x, self.attention, self.norm_attention)
    return self._residual(x, self._feed_forward, self.norm_ff)


class Transformer(nnx.Module):
  """Decoder-only Transformer: ``tokens [batch, length] -> float32 logits [batch, length, vocab]``.

  Logit ``[b, i]`` predicts token ``i + 1`` from tokens ``0..i`` (causal).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    xavier = nnx.initializers.xavier_uniform()
    self.token_embedding = nnx.Embed(config.vocab_size, config.width, embedding_init=xavier,
                                     dtype=config.dtype, param_dtype=jnp.float32, rngs=rngs)
    self.position_embedding = nnx.Param(xavier(rngs.params(), (config.seq_len, config.width),
                                               jnp.float32))
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
    # Post-LN's last block already ends in a norm; the other placements need one.
    self.final_norm = None if config.norm_position == "post" else _layer_norm(config.width, rngs)
    self.head = _dense(config.width, config.vocab_size, config, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.config.seq_len:
      raise ValueError(f"tokens must have shape [batch, length <= {self.config.seq_len}]; "
                       f"got {tuple(tokens.shape)}.")
    length = tokens.shape[1]
    x = self.token_embedding(tokens) + self.position_embedding[:length].astype(self.config.dtype)
    for block in self.blocks:
      x = block(x)
    if self.final_norm is not None:
      x = self.final_norm(x).astype(self.config.dtype)
    return self.head(x).astype(jnp.float32)


def create_model(config: TransformerConfig, seed: int | jax.Array = 0) -> Transformer:
  """Builds a :class:`Transformer`, seeded by an int or a key.

  The initialisation runs as one compiled program per config (op by op it
  would dispatch hundreds of small computations). On CPU a key such as
  ``jax.random.key(0, impl="unsafe_rbg")`` compiles it faster than threefry.
  """
  if not isinstance(config, TransformerConfig):
    raise ValueError(f"config must be a TransformerConfig; got {config!r}.")
  key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
  graphdef, state = _init_states(config, key)
  return nnx.merge(graphdef, state)


@nnx.jit(static_argnums=0)
def _init_states(config: TransformerConfig, key: jax.Array):
  return nnx.split(Transformer(config, rngs=nnx.Rngs(params=key)))


def param_count(config_or_model: TransformerConfig | Transformer) -> int:
  """Number of parameters (shape-evaluated for a config: nothing is allocated)."""
  if isinstance(config_or_model, TransformerConfig):
    config = config_or_model
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  elif isinstance(config_or_model, Transformer):
    model = config_or_model
  else:
    raise ValueError(f"config_or_model must be a TransformerConfig or a Transformer; got "
                     f"{config_or_model!r}.")
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def expected_param_count(config: TransformerConfig) -> int:
  """The parameter count by formula (what :func:`param_count` must return).

  Embeddings ``V d + T d``; per block attention ``4 d^2 + 4 d``, feed-forward
  ``2 d h + h + d``, two norms ``4 d``; a final norm ``2 d`` unless Post-LN;
  the output layer ``d V + V``.
  """
  d, h, v = config.width, config.hidden_width, config.vocab_size
  block = (4 * d * d + 4 * d) + (2 * d * h + h + d) + 4 * d
  final = 0 if config.norm_position == "post" else 2 * d
  return v * d + config.seq_len * d + config.depth * block + final + d * v + v
