"""Run by tests/test_sharding_wrn.py with 8 simulated CPU devices.

Takes the same train steps on a 1-device mesh and on an 8-device 'data' mesh
(batch sharded, state replicated) and prints the largest differences as JSON.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from optstab.wrn import data as wrn_data
from optstab.wrn import train
from optstab.wrn.model import WideResNetConfig


def run(mesh, setup, batches):
  graphdef, state = train.init_state(setup, seed=0)
  step = train.make_train_step(setup, graphdef, mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  metrics = []
  for images, labels in batches:
    x = jax.device_put(images, NamedSharding(mesh, P("data")))
    y = jax.device_put(labels, NamedSharding(mesh, P("data")))
    state, m = step(state, x, y, np.float32(0.1))
    metrics.append(m)
  shardings = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  return jax.device_get(state), jax.device_get(metrics), shardings, x.sharding


def main():
  assert jax.device_count() == 8, jax.devices()
  clip = len(sys.argv) > 1 and sys.argv[1] == "clip"
  model = WideResNetConfig(depth=10, width=1, image_size=16, in_channels=1,
                           group_strides=((1, 1), (1, 1), (2, 2)))
  setup = train.TrainSetup(model, batch_size=16, clip_percentile=90.0 if clip else None,
                           clip_min_history=1)
  data = wrn_data.load_digits(image_size=16)
  batches = [(jnp.asarray(b.images), jnp.asarray(b.labels))
             for _, b in zip(range(2), wrn_data.batch_iterator(data, "train", 16, augmentation=None))]
  one = run(train.data_mesh(jax.devices()[:1]), setup, batches)
  eight = run(train.data_mesh(), setup, batches)
  state_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(one[0]), jax.tree.leaves(eight[0])))
  metric_diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(one[1], eight[1]) for k in a)
  print(json.dumps({
      "state_max_abs_diff": state_diff,
      "metric_max_abs_diff": metric_diff,
      "losses": [float(m["loss"]) for m in eight[1]],
      "param_specs_8": sorted(eight[2]),
      "batch_devices_8": len(eight[3].device_set),
  }))


if __name__ == "__main__":
  main()
