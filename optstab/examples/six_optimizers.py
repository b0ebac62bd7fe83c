"""Train a small MLP with each of the playbook FAQ's six optimizers.

Run it with ``python -m optstab.examples.six_optimizers``. It needs no data
download: the dataset is a seeded synthetic binary-classification problem made
here. Each optimizer gets its own learning rate, warmed up linearly over the
first 10% of the steps and then decayed with a cosine (an optax schedule,
evaluated at step t counted from 0), and trains the same initial model with
full-batch gradients; the table shows the initial and final training loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optstab

__all__ = ["OPTIMIZERS", "Result", "make_dataset", "train", "run", "main"]

# name -> (constructor, peak learning rate). The rates were picked by hand for
# this problem; they are not tuned recommendations.
OPTIMIZERS: dict[str, tuple[Callable[[optax.Schedule], optax.GradientTransformation], float]] = {
    "sgd": (optstab.sgd, 1.0),
    "momentum": (lambda lr: optstab.momentum(lr, momentum=0.9), 0.1),
    "nesterov": (lambda lr: optstab.nesterov(lr, momentum=0.9), 0.1),
    "rmsprop": (lambda lr: optstab.rmsprop(lr, decay=0.9, eps=1e-8), 0.01),
    "adam": (lambda lr: optstab.adam(lr, b1=0.9, b2=0.999, eps=1e-8), 0.01),
    "nadam": (lambda lr: optstab.nadam(lr, b1=0.9, b2=0.999, eps=1e-8), 0.01),
}


class Result(NamedTuple):
  name: str
  learning_rate: float
  initial_loss: float
  final_loss: float
  accuracy: float
  seconds: float


def make_dataset(seed: int, n: int = 512, dim: int = 8) -> tuple[jax.Array, jax.Array]:
  """Inputs [n, dim] and 0/1 labels from a fixed random two-layer teacher."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  w1 = rng.normal(size=(dim, 16)) / np.sqrt(dim)
  w2 = rng.normal(size=(16,))
  y = (np.tanh(x @ w1) @ w2 > 0).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _init_mlp(key: jax.Array, dim: int, hidden: int = 32) -> dict:
  k1, k2 = jax.random.split(key)
  return {
      "hidden": {"w": jax.random.normal(k1, (dim, hidden)) / jnp.sqrt(dim), "b": jnp.zeros(hidden)},
      "out": {"w": jax.random.normal(k2, (hidden,)) / jnp.sqrt(hidden), "b": jnp.zeros(())},
  }


def _logits(params: dict, x: jax.Array) -> jax.Array:
  h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
  return h @ params["out"]["w"] + params["out"]["b"]


def _loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(_logits(params, x), y))


def train(name: str, steps: int = 300, seed: int = 0) -> Result:
  """Trains the MLP with optimizer ``name`` for ``steps`` full-batch steps."""
  make_tx, peak = OPTIMIZERS[name]
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(1, steps // 10), decay_steps=steps
  )
  tx = make_tx(schedule)
  x, y = make_dataset(seed)
  params = _init_mlp(jax.random.key(seed), x.shape[1])

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(_loss)(params, x, y)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, losses

  start = time.perf_counter()
  params, losses = jax.block_until_ready(fit(params))
  seconds = time.perf_counter() - start
  accuracy = float(jnp.mean((_logits(params, x) > 0) == (y > 0.5)))
  return Result(name, peak, float(losses[0]), float(_loss(params, x, y)), accuracy, seconds)


def run(steps: int = 300, seed: int = 0) -> list[Result]:
  """Trains with every optimizer in :data:`OPTIMIZERS`."""
  return [train(name, steps, seed) for name in OPTIMIZERS]


def format_table(results: Sequence[Result]) -> str:
  lines = [
      f"{'optimizer':<10} {'peak lr':>8} {'initial loss':>13} {'final loss':>11} {'accuracy':>9} {'seconds':>8}"
  ]
  for r in results:
    lines.append(
        f"{r.name:<10} {r.learning_rate:>8g} {r.initial_loss:>13.4f} {r.final_loss:>11.4f} "
        f"{r.accuracy:>9.3f} {r.seconds:>8.2f}"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps per optimizer")
  parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial model")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  results = run(args.steps, args.seed)
  print(f"Small MLP, synthetic data (seed {args.seed}), {args.steps} full-batch steps, "
        "warmup + cosine schedule:")
  print(format_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
