"""Independent float64 NumPy implementations of the FAQ's S1 update rules.

Written from the spec (shared/spec/playbook-faq.md, S1), not from
optstab/optimizers.py: each function takes the gradient sequence ``g[t]`` and
the learning-rate sequence ``lr[t]`` (t counts from 0) and returns the sequence
of updates ``theta_{t+1} - theta_t``. Used by the optimizer tests only.
"""

from __future__ import annotations

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam")


def reference_updates(name: str, grads: np.ndarray, lrs: np.ndarray, **hp) -> np.ndarray:
  """Updates of optimizer ``name`` for gradients ``grads[t]`` and rates ``lrs[t]``."""
  g_all = np.asarray(grads, np.float64)
  out = np.empty_like(g_all)
  shape = g_all.shape[1:]
  if name == "sgd":
    for t, g in enumerate(g_all):
      out[t] = -lrs[t] * g
  elif name in ("momentum", "nesterov"):
    gamma = hp.get("momentum", 0.9)
    v = np.zeros(shape)
    for t, g in enumerate(g_all):
      v = gamma * v + g
      out[t] = -lrs[t] * (v if name == "momentum" else gamma * v + g)
  elif name == "rmsprop":
    rho = hp.get("decay", 0.9)
    gamma = hp.get("momentum", 0.0)
    eps = hp.get("eps", 1e-8)
    v = np.ones(shape)
    m = np.zeros(shape)
    for t, g in enumerate(g_all):
      v = rho * v + (1 - rho) * g**2
      m = gamma * m + lrs[t] / np.sqrt(v + eps) * g
      out[t] = -m
  elif name in ("adam", "nadam"):
    b1 = hp.get("b1", 0.9)
    b2 = hp.get("b2", 0.999)
    eps = hp.get("eps", 1e-8)
    m = np.zeros(shape)
    v = np.zeros(shape)
    for t, g in enumerate(g_all):
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g**2
      b = np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
      num = m if name == "adam" else b1 * m + (1 - b1) * g
      out[t] = -lrs[t] * num / (np.sqrt(v) + eps) * b
  else:
    raise ValueError(name)
  return out


def gradient_sequence(
    num_steps: int, size: int, seed: int, low_exp: float = -4.0, high_exp: float = 2.0
) -> np.ndarray:
  """Nonzero gradients [num_steps, size] spanning 10**low_exp .. 10**high_exp.

  Each coordinate has its own scale (spread over the whole range) and varies
  by up to 10x either way from step to step, with random signs.
  """
  rng = np.random.default_rng(seed)
  scale = 10.0 ** rng.uniform(low_exp + 1, high_exp - 1, size=size)
  wiggle = 10.0 ** rng.uniform(-1.0, 1.0, size=(num_steps, size))
  sign = rng.choice([-1.0, 1.0], size=(num_steps, size))
  return (sign * wiggle * scale).astype(np.float32)


def assert_close_to_reference(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
  """|actual - expected| <= rtol * (|expected| + 0.1 * max_t |expected|), elementwise.

  The second term bounds the error where a momentum accumulator passes close
  to zero (cancellation of float32 terms of the coordinate's typical size).
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  assert np.all(np.isfinite(actual)), what
  bound = rtol * (np.abs(expected) + 0.1 * np.max(np.abs(expected), axis=0, keepdims=True))
  err = np.abs(actual - expected)
  worst = np.unravel_index(np.argmax(err - bound), err.shape)
  assert np.all(err <= bound), (
      f"{what}: worst at {worst}: got {actual[worst]!r}, want {expected[worst]!r}, "
      f"err {err[worst]:.3g} > bound {bound[worst]:.3g}"
  )
