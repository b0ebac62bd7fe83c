"""Run by tests/test_sharding_wrn.py with 8 simulated CPU devices.

Takes the same train steps on a 1-device mesh and on an 8-device 'data' mesh
(batch sharded, state replicated) and prints the largest differences as JSON.

It also measures the float32 noise of reduction order on this CPU: the same
single-device steps with the examples of each batch in another order (the
same math, since every batch reduction is a sum or mean over examples, and no
augmentation). Sharding the batch over 8 devices only changes the reduction
order too, so its differences are of that size; the test bounds them by it.
Differences are relative: over the whole state, ||a - b|| / ||a||; per
metric, |a - b| / |a|.
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


def relative_diff(a_tree, b_tree) -> float:
  """||a - b|| / ||a||, the L2 norms over every float leaf of the state together.

  (Leaf by leaf would be dominated by leaves that are float noise themselves,
  e.g. a bias followed by batch norm, whose gradient is 0 up to rounding.)
  """
  num = den = 0.0
  for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num += float(np.sum((a - b) ** 2))
    den += float(np.sum(a ** 2))
  return float(np.sqrt(num / den))


def metric_diff(a_metrics, b_metrics) -> float:
  return max(abs(float(a[k]) - float(b[k])) / max(abs(float(a[k])), np.finfo(np.float32).tiny)
             for a, b in zip(a_metrics, b_metrics) for k in a)


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
  single = train.data_mesh(jax.devices()[:1])
  one = run(single, setup, batches)
  eight = run(train.data_mesh(), setup, batches)
  rng = np.random.default_rng(0)
  orders = [np.arange(16)[::-1], rng.permutation(16)]
  reordered = [run(single, setup, [(x[order], y[order]) for x, y in batches]) for order in orders]
  print(json.dumps({
      "state_rel_diff": relative_diff(one[0], eight[0]),
      "metric_rel_diff": metric_diff(one[1], eight[1]),
      "noise_state_rel_diff": max(relative_diff(one[0], r[0]) for r in reordered),
      "noise_metric_rel_diff": max(metric_diff(one[1], r[1]) for r in reordered),
      "losses": [float(m["loss"]) for m in eight[1]],
      "param_specs_8": sorted(eight[2]),
      "batch_devices_8": len(eight[3].device_set),
  }))


if __name__ == "__main__":
  main()
