"""WideResNet (Zagoruyko & Komodakis, 2016) in ``flax.nnx``, with configurable group strides.

This is the model of the playbook's stride experiment (Figures 4, 5 and 9; "The reference
model for the stride experiment"): init2winit's ``wide_resnet.py`` rewritten for
``flax.nnx``, plus the two architecture fixes of the FAQ's
"Potential fixes for common instability patterns" (5: normalize last in the
residual branch; 6: zero-initialised residual branches) as options.

Architecture (defaults = the reference model)::

  stem     conv3x3, 16 channels, stride 1
  group 0  (depth - 4) / 6 blocks, 16 k channels, first block stride group_strides[0] = (1, 1)
  group 1  (depth - 4) / 6 blocks, 32 k channels, first block stride group_strides[1] = (2, 2)
  group 2  (depth - 4) / 6 blocks, 64 k channels, first block stride group_strides[2] = (2, 2)
  head     BN -> ReLU -> avg_pool(window 8x8, stride 1, VALID) -> flatten -> Dense

  block    (pre_activation)  y = ReLU(BN(x)); out = shortcut + conv3x3(ReLU(BN(conv3x3_s(y))))
           shortcut = conv1x1_s(y) (projection of the PRE-ACTIVATED input) when the
           channel count or the stride changes, else x.

Convolutions have no bias; every kernel (conv and Dense) is LeCun-normal; the
Dense bias starts at zero; batch norm uses momentum 0.9 and epsilon 1e-5 (flax's
default momentum is 0.99).

Output sizes. With a square ``image_size`` S and the ``"pool8"`` head, the last
group's feature map is ``S / prod(strides)`` (SAME padding rounds up), the pooled
map is ``that - 7`` on each side, and the Dense layer sees
``pooled_h * pooled_w * 64 k`` features:

  =====  =========================  ============  ==========  =======================
  S      group_strides              last map      pooled map  Dense input (k = 10)
  =====  =========================  ============  ==========  =======================
  32     (1,1),(2,2),(2,2) (std.)   8 x 8         1 x 1       640
  32     (1,1),(1,1),(2,2)          16 x 16       9 x 9       51,840 (81 x)
  32     (1,1),(2,2),(1,1)          16 x 16       9 x 9       51,840 (81 x)
  16     (1,1),(1,1),(2,2)          8 x 8         1 x 1       640
  16     (1,1),(2,2),(2,2) (std.)   4 x 4         --          invalid: map < 8x8 window
  =====  =========================  ============  ==========  =======================

so the stride-1x1 variant changes the classifier head as well as the resolution.
A map smaller than the 8x8 window is rejected when the config is built; use
``image_size=32`` (the digits loader upsamples to it) or ``head="global_pool"``
(mean over the whole map: the Dense input is ``64 k`` whatever the strides).

Training. The model is an ``nnx.Module``; for ``jax.jit`` with optax, split it
into a static graph definition and two pytrees (parameters and batch-norm
statistics) and train on those::

  model = create_model(config, seed=0)
  graphdef, params, batch_stats = split_model(model)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, new_stats = apply_model(graphdef, params, batch_stats, images, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, new_stats
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  logits, _ = apply_model(graphdef, params, batch_stats, test_images, train=False)

``train=True`` normalizes with the batch's statistics and returns updated
running statistics; ``train=False`` uses (and returns unchanged) the running
statistics. Parameters are always float32; ``config.dtype`` is the compute dtype
(``jnp.bfloat16`` on GPU/TPU), and the logits are returned in float32.

References:
  Zagoruyko & Komodakis, `Wide Residual Networks <https://arxiv.org/abs/1605.07146>`_, 2016.
  init2winit, ``init2winit/model_lib/wide_resnet.py`` (``group_strides``).
  Bachlechner et al., `ReZero is All You Need <https://arxiv.org/abs/2003.04887>`_, 2020.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from optstab import _validation

__all__ = [
    "HEADS",
    "BLOCK_NORMS",
    "BATCH_NORM_MOMENTUM",
    "BATCH_NORM_EPSILON",
    "WideResNetConfig",
    "WideResNetBlock",
    "WideResNet",
    "create_model",
    "param_count",
    "split_model",
    "merge_model",
    "apply_model",
]

HEADS = ("pool8", "global_pool")
BLOCK_NORMS = ("pre_activation", "residual_norm")
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
_POOL_WINDOW = 8
_STEM_CHANNELS = 16
_GROUP_BASE_WIDTHS = (16, 32, 64)

Stride = tuple[int, int]


def _normalize_stride(name: str, stride: Any) -> Stride:
  try:
    pair = tuple(stride)
  except TypeError:
    pair = (stride, stride)
  if len(pair) != 2:
    raise ValueError(f"{name} must be a pair of integers >= 1; got {stride!r}.")
  for s in pair:
    _validation.check_positive_int(name, s)
  return (int(pair[0]), int(pair[1]))


@dataclasses.dataclass(frozen=True)
class WideResNetConfig:
  """Hyperparameters of a :class:`WideResNet` (WRN-``depth``-``width``).

  Attributes:
    depth: total depth; ``(depth - 4)`` must be a multiple of 6 (10, 16, 22, 28,
      40, ...). Each of the 3 groups holds ``(depth - 4) // 6`` blocks.
    width: widening factor ``k``; the groups have ``16k, 32k, 64k`` channels.
    num_classes: number of output logits.
    image_size: height = width of the (square) input images; fixes the Dense
      layer's input size for the ``"pool8"`` head.
    in_channels: input channels (3 for CIFAR-10, 1 for digits).
    group_strides: the stride of the first block of each group. The reference
      is ``((1, 1), (2, 2), (2, 2))``; the playbook's "stride bug" sets one of the
      two ``(2, 2)`` to ``(1, 1)`` (see :meth:`with_group_stride`).
    head: ``"pool8"`` (reference: 8x8 average pool with stride 1, flatten,
      Dense) or ``"global_pool"`` (mean over the spatial map, then Dense).
    block_norm: ``"pre_activation"`` (reference:
      ``x + conv(ReLU(BN(conv(ReLU(BN(x))))))``) or ``"residual_norm"`` (the FAQ's
      fix 5, ``x + Norm(f(x))``: the same branch followed by one more batch norm
      as its last operation before the residual add).
    zero_init_residual: the FAQ's fix 6 (ReZero-style). Zero-initialise the last
      layer of every residual branch: the second conv's kernel for
      ``"pre_activation"``, the final norm's scale for ``"residual_norm"``. Each
      block then starts as its shortcut (the identity when shapes match).
    dtype: compute dtype (``jnp.float32``, or ``jnp.bfloat16`` on GPU/TPU; a
      name such as ``"bfloat16"`` works too, stored as a ``numpy.dtype``).
      Parameters and batch statistics stay float32; logits are float32.
  """

  depth: int = 28
  width: int = 10
  num_classes: int = 10
  image_size: int = 32
  in_channels: int = 3
  group_strides: tuple[Stride, Stride, Stride] = ((1, 1), (2, 2), (2, 2))
  head: Literal["pool8", "global_pool"] = "pool8"
  block_norm: Literal["pre_activation", "residual_norm"] = "pre_activation"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    _validation.check_positive_int("depth", self.depth, minimum=10)
    if (self.depth - 4) % 6:
      raise ValueError(
          f"depth must be an integer >= 10 with (depth - 4) a multiple of 6; got {self.depth!r}.")
    _validation.check_positive_int("width", self.width)
    _validation.check_positive_int("num_classes", self.num_classes)
    _validation.check_positive_int("image_size", self.image_size)
    _validation.check_positive_int("in_channels", self.in_channels)
    strides = tuple(self.group_strides)
    if len(strides) != 3:
      raise ValueError(f"group_strides must be 3 pairs of integers >= 1; got {self.group_strides!r}.")
    strides = tuple(_normalize_stride(f"group_strides[{i}]", s) for i, s in enumerate(strides))
    object.__setattr__(self, "group_strides", strides)
    _validation.check_one_of("head", self.head, HEADS)
    _validation.check_one_of("block_norm", self.block_norm, BLOCK_NORMS)
    if not isinstance(self.zero_init_residual, bool):
      raise ValueError(f"zero_init_residual must be a bool; got {self.zero_init_residual!r}.")
    try:
      dtype = jnp.dtype(self.dtype)
    except TypeError:
      dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"dtype must be a floating dtype such as 'float32' or 'bfloat16'; got {self.dtype!r}.")
    object.__setattr__(self, "dtype", dtype)
    if self.head == "pool8":
      h, w = self.feature_map_shape
      if h < _POOL_WINDOW or w < _POOL_WINDOW:
        raise ValueError(
            f"head='pool8' needs a last feature map of at least 8x8, but image_size="
            f"{self.image_size} with group_strides={self.group_strides} gives {h}x{w}; "
            "use a larger image_size (e.g. 32) or head='global_pool'.")

  @property
  def blocks_per_group(self) -> int:
    """``(depth - 4) // 6``."""
    return (self.depth - 4) // 6

  @property
  def group_widths(self) -> tuple[int, int, int]:
    """Channels of the three groups: ``(16 k, 32 k, 64 k)``."""
    return tuple(c * self.width for c in _GROUP_BASE_WIDTHS)  # type: ignore[return-value]

  @property
  def feature_map_shape(self) -> tuple[int, int]:
    """Spatial shape of the last group's output (SAME padding rounds up)."""
    h = w = self.image_size
    for sh, sw in self.group_strides:
      h, w = math.ceil(h / sh), math.ceil(w / sw)
    return h, w

  @property
  def pooled_shape(self) -> tuple[int, int]:
    """Spatial shape after the head's pooling (``(1, 1)`` for ``global_pool``)."""
    if self.head == "global_pool":
      return (1, 1)
    h, w = self.feature_map_shape
    return h - _POOL_WINDOW + 1, w - _POOL_WINDOW + 1

  @property
  def dense_in_features(self) -> int:
    """Input size of the final Dense layer."""
    h, w = self.pooled_shape
    return h * w * self.group_widths[-1]

  def with_group_stride(self, group_index: int, stride: int | Sequence[int]) -> "WideResNetConfig":
    """Returns a copy with the first-block stride of group ``group_index`` replaced.

    Example:
      >>> from optstab.wrn import WideResNetConfig
      >>> cfg = WideResNetConfig().with_group_stride(1, (1, 1))
      >>> cfg.group_strides, cfg.pooled_shape
      (((1, 1), (1, 1), (2, 2)), (9, 9))
    """
    if isinstance(group_index, bool) or not isinstance(group_index, int) or not 0 <= group_index < 3:
      raise ValueError(f"group_index must be 0, 1 or 2; got {group_index!r}.")
    strides = list(self.group_strides)
    strides[group_index] = _normalize_stride("stride", stride)
    return dataclasses.replace(self, group_strides=tuple(strides))

  def replace(self, **changes: Any) -> "WideResNetConfig":
    """``dataclasses.replace`` (validates again)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly fields (strides as lists, dtype as its name)."""
    d = dataclasses.asdict(self)
    d["group_strides"] = [list(s) for s in self.group_strides]
    d["dtype"] = jnp.dtype(self.dtype).name
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WideResNetConfig":
    """Inverse of :meth:`to_dict`."""
    d = dict(d)
    if "group_strides" in d:
      d["group_strides"] = tuple(tuple(s) for s in d["group_strides"])
    return cls(**d)


def _conv(in_features: int, out_features: int, kernel: int, stride: Stride, *, dtype: Any,
          rngs: nnx.Rngs, zero_init: bool = False) -> nnx.Conv:
  init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=stride, padding="SAME",
                  use_bias=False, kernel_init=init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _batch_norm(num_features: int, *, dtype: Any, rngs: nnx.Rngs, zero_scale: bool = False) -> nnx.BatchNorm:
  scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return nnx.BatchNorm(num_features, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                       scale_init=scale_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class WideResNetBlock(nnx.Module):
  """One residual block (see the module docstring for the exact layout).

  Attributes: ``norm1, conv1, norm2, conv2`` (the branch), ``norm3`` (the final
  norm of ``"residual_norm"``, else ``None``) and ``shortcut`` (the 1x1
  projection conv, or ``None`` for the identity).
  """

  def __init__(self, in_features: int, out_features: int, stride: Stride = (1, 1), *,
               block_norm: str = "pre_activation", zero_init_residual: bool = False,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    _validation.check_one_of("block_norm", block_norm, BLOCK_NORMS)
    stride = _normalize_stride("stride", stride)
    residual_norm = block_norm == "residual_norm"
    self.norm1 = _batch_norm(in_features, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(in_features, out_features, 3, stride, dtype=dtype, rngs=rngs)
    self.norm2 = _batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(out_features, out_features, 3, (1, 1), dtype=dtype, rngs=rngs,
                       zero_init=zero_init_residual and not residual_norm)
    self.norm3 = (_batch_norm(out_features, dtype=dtype, rngs=rngs, zero_scale=zero_init_residual)
                  if residual_norm else None)
    if in_features != out_features or stride != (1, 1):
      self.shortcut = _conv(in_features, out_features, 1, stride, dtype=dtype, rngs=rngs)
    else:
      self.shortcut = None

  def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
    y = nnx.relu(self.norm1(x, use_running_average=use_running_average))
    shortcut = x if self.shortcut is None else self.shortcut(y)
    y = self.conv1(y)
    y = nnx.relu(self.norm2(y, use_running_average=use_running_average))
    y = self.conv2(y)
    if self.norm3 is not None:
      y = self.norm3(y, use_running_average=use_running_average)
    return shortcut + y


class WideResNet(nnx.Module):
  """WideResNet with configurable group strides (the playbook's stride experiment).

  Args:
    config: the :class:`WideResNetConfig`.
    rngs: ``nnx.Rngs`` for parameter initialisation (the ``params`` stream).

  Call it on NHWC images ``[batch, image_size, image_size, in_channels]``:
  ``model(x, train=True)`` normalizes with batch statistics and updates the
  running ones; ``train=False`` uses the running statistics; ``train=None``
  (default) follows each BatchNorm's ``use_running_average`` attribute
  (``False`` after construction; ``nnx.view(model, use_running_average=True)``
  gives an evaluation view). Returns float32 logits ``[batch, num_classes]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optstab.wrn import WideResNet, WideResNetConfig
    >>> cfg = WideResNetConfig(depth=10, width=1, image_size=16, in_channels=1,
    ...                        group_strides=((1, 1), (1, 1), (2, 2)))
    >>> model = WideResNet(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 16, 16, 1)), train=False).shape
    (2, 10)
  """

  def __init__(self, config: WideResNetConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, WideResNetConfig):
      raise ValueError(f"config must be a WideResNetConfig; got {config!r}.")
    self.config = config
    dtype = config.dtype
    self.stem = _conv(config.in_channels, _STEM_CHANNELS, 3, (1, 1), dtype=dtype, rngs=rngs)
    blocks = []
    in_features = _STEM_CHANNELS
    for width, stride in zip(config.group_widths, config.group_strides):
      for b in range(config.blocks_per_group):
        blocks.append(WideResNetBlock(
            in_features, width, stride if b == 0 else (1, 1), block_norm=config.block_norm,
            zero_init_residual=config.zero_init_residual, dtype=dtype, rngs=rngs))
        in_features = width
    self.blocks = nnx.List(blocks)
    self.final_norm = _batch_norm(in_features, dtype=dtype, rngs=rngs)
    self.dense = nnx.Linear(config.dense_in_features, config.num_classes,
                            kernel_init=nnx.initializers.lecun_normal(),
                            bias_init=nnx.initializers.zeros_init(),
                            dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def features(self, x: jax.Array, *, train: bool | None = None) -> jax.Array:
    """The head's input: the last group's activated map ``[batch, h, w, 64 k]``."""
    ura = None if train is None else not train
    x = self.stem(jnp.asarray(x, self.config.dtype))
    for block in self.blocks:
      x = block(x, use_running_average=ura)
    return nnx.relu(self.final_norm(x, use_running_average=ura))

  def __call__(self, x: jax.Array, *, train: bool | None = None) -> jax.Array:
    expected = (self.config.image_size, self.config.image_size, self.config.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"x must have shape [batch, {expected[0]}, {expected[1]}, {expected[2]}]; "
                       f"got {tuple(x.shape)}.")
    x = self.features(x, train=train)
    if self.config.head == "pool8":
      x = nnx.avg_pool(x, (_POOL_WINDOW, _POOL_WINDOW), strides=(1, 1), padding="VALID")
    else:
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = x.reshape((x.shape[0], -1))
    return self.dense(x).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _init_states(config: WideResNetConfig, key: jax.Array):
  model = WideResNet(config, rngs=nnx.Rngs(params=key))
  return nnx.split(model)


def create_model(config: WideResNetConfig, seed: int | jax.Array | nnx.Rngs = 0) -> WideResNet:
  """Builds a :class:`WideResNet` from ``config``, seeded by an int, a key or ``nnx.Rngs``.

  With an int or a key, the initialisation runs as one compiled XLA program
  (much faster than op-by-op, and it places the parameters on the default
  device directly); with ``nnx.Rngs`` the module is built eagerly. Both give the
  same parameters for the same seed. On CPU, compiling the threefry sampling
  of every kernel shape takes seconds; a key such as
  ``jax.random.key(0, impl="unsafe_rbg")`` compiles several times faster.
  """
  if isinstance(seed, nnx.Rngs):
    return WideResNet(config, rngs=seed)
  if not isinstance(config, WideResNetConfig):
    raise ValueError(f"config must be a WideResNetConfig; got {config!r}.")
  key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
  graphdef, state = _init_states(config, key)
  return nnx.merge(graphdef, state)


def param_count(config_or_model: WideResNetConfig | WideResNet) -> int:
  """Number of trainable parameters (``nnx.Param`` entries, batch statistics excluded).

  For a config the model is only shape-evaluated (``nnx.eval_shape``): nothing
  is allocated, so this is cheap even for WRN-28-10.
  """
  if isinstance(config_or_model, WideResNetConfig):
    config = config_or_model
    model = nnx.eval_shape(lambda: WideResNet(config, rngs=nnx.Rngs(0)))
  elif isinstance(config_or_model, WideResNet):
    model = config_or_model
  else:
    raise ValueError(f"config_or_model must be a WideResNetConfig or a WideResNet; got {config_or_model!r}.")
  params = nnx.state(model, nnx.Param)
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def split_model(model: WideResNet) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """``(graphdef, params, batch_stats)``: the static structure and two array pytrees.

  ``params`` holds every ``nnx.Param`` (optimize these with optax); ``batch_stats``
  the batch-norm running means and variances (``nnx.BatchStat``). Both are
  ``nnx.State`` pytrees of float32 arrays, usable as ``jax.jit`` arguments.
  """
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, params, batch_stats


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, *,
                copy: bool = False) -> WideResNet:
  """Inverse of :func:`split_model`.

  With ``copy=False`` (flax's default) the module shares its variables with the
  states, so calling it in train mode updates ``batch_stats`` in place; pass
  ``copy=True`` to leave the states untouched.
  """
  return nnx.merge(graphdef, params, batch_stats, copy=copy)


def apply_model(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
                images: jax.Array, *, train: bool) -> tuple[jax.Array, nnx.State]:
  """Pure forward pass: ``(logits, new_batch_stats)``; jit- and grad-friendly.

  Args:
    graphdef, params, batch_stats: from :func:`split_model`.
    images: ``[batch, image_size, image_size, in_channels]``.
    train: ``True`` to normalize with the batch's statistics (the returned
      ``new_batch_stats`` are the updated running averages, momentum 0.9);
      ``False`` to use the running statistics (returned unchanged).

  The inputs are never modified (the states are copied before the call).
  """
  # copy=True: never mutate the caller's state (and never a Variable created at
  # another trace level, e.g. when batch_stats is closed over inside jax.grad).
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  logits = model(images, train=train)
  new_batch_stats = nnx.state(model, nnx.BatchStat)
  return logits, new_batch_stats
