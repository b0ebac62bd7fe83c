"""Run by tests/test_transformer_sharding.py with 8 simulated CPU devices.

Takes the same Transformer train steps on a 1-device mesh and on an 8-device
'data' mesh (batch sharded, state replicated) and prints, as JSON, the
per-step metrics of both, the largest parameter differences and the
shardings seen.
"""

import json

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from optstab import runner
from optstab.transformer import train
from optstab.transformer.model import TransformerConfig

STEPS = 2
LEARNING_RATE = 1e-3


def run(mesh, setup, batches):
  graphdef, state = train.init_state(setup, seed=0)
  step = train.make_train_step(setup, graphdef, mesh)
  state = runner.replicate(state, mesh)
  metrics = []
  for tokens in batches:
    x = runner.shard_batch(mesh, tokens)
    state, m = step(state, x, np.float32(LEARNING_RATE))
    metrics.append(m)
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  return jax.device_get(state.params), jax.device_get(metrics), specs, x.sharding


def main():
  assert jax.device_count() == 8, jax.devices()
  setup = train.TrainSetup(TransformerConfig(vocab_size=20, seq_len=16, depth=2, width=32,
                                             num_heads=4, norm_position="post"), batch_size=16)
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 20, (16, 17)).astype(np.int32) for _ in range(STEPS)]
  one = run(runner.data_mesh(jax.devices()[:1]), setup, batches)
  eight = run(runner.data_mesh(), setup, batches)
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(one[0])])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(eight[0])])
  print(json.dumps({
      "metrics_1": [{k: float(v) for k, v in m.items()} for m in one[1]],
      "metrics_8": [{k: float(v) for k, v in m.items()} for m in eight[1]],
      "param_max_abs_diff": float(np.max(np.abs(a - b))),
      "param_diffs_above_1e-6": int(np.sum(np.abs(a - b) > 1e-6)),
      "num_params": int(a.size),
      "learning_rate": LEARNING_RATE,
      "steps": STEPS,
      "param_specs_8": sorted(eight[2]),
      "batch_devices_8": len(eight[3].device_set),
  }))


if __name__ == "__main__":
  main()
