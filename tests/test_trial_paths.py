"""The trial types moved from ``optstab.diagnosis`` to ``optstab.trial``: the old paths still work.

Objects pickled before the move name ``optstab.diagnosis.trial`` and
``optstab.diagnosis.store`` as their modules; they load, as the same classes.
Objects pickled now name ``optstab.trial``, their defining module.
"""

from __future__ import annotations

import base64
import io
import pickle

import numpy as np

import optstab
from optstab import executors, trial
from optstab.diagnosis import executors as old_executors
from optstab.diagnosis import store as old_store
from optstab.diagnosis import trial as old_trial

#: ``pickle.dumps((config, result, record, fix_aware_fn), protocol=4)``, written by
#: the code before the move: ``TrialConfig(0.1, num_steps=2, warmup_steps=1,
#: eval_every=3, extra={"variant": "a"}, clip_norm=1.5)``, its ``TrialResult``, a
#: ``TrialRecord`` of it (1.25 s) and ``with_fix_support(repr, clipping=True,
#: optimizers=("adam",))``.
OLD_PICKLE = base64.b64decode(
    "gASVgQMAAAAAAAAojBdvcHRzdGFiLmRpYWdub3Npcy50cmlhbJSMC1RyaWFsQ29uZmlnlJOUKYGUfZQojA1sZWFybm"
    "luZ19yYXRllEc/uZmZmZmZmowJbnVtX3N0ZXBzlEsCjAx3YXJtdXBfc3RlcHOUSwGMCHNjaGVkdWxllIwIY29uc3Rh"
    "bnSUjApldmFsX2V2ZXJ5lEsDjARzZWVklEsAjAVleHRyYZR9lIwHdmFyaWFudJSMAWGUc4wJY2xpcF9ub3JtlEc/+A"
    "AAAAAAAIwJb3B0aW1pemVylE6MC3NraXBfc3Bpa2VzlIl1YmgAjAtUcmlhbFJlc3VsdJSTlCmBlH2UKIwGY29uZmln"
    "lGgDjAp0cmFpbl9sb3NzlIwWbnVtcHkuX2NvcmUubXVsdGlhcnJheZSMDF9yZWNvbnN0cnVjdJSTlIwFbnVtcHmUjA"
    "duZGFycmF5lJOUSwCFlEMBYpSHlFKUKEsBSwOFlGgcjAVkdHlwZZSTlIwCZjiUiYiHlFKUKEsDjAE8lE5OTkr/////"
    "Sv////9LAHSUYolDGAAAAAAAAABAAAAAAAAA8D8AAAAAAAD4f5R0lGKMCmV2YWxfc3RlcHOUaBtoHksAhZRoIIeUUp"
    "QoSwFLAYWUaCWMAmk4lImIh5RSlChLA2gpTk5OSv////9K/////0sAdJRiiUMIAwAAAAAAAACUdJRijAxldmFsX21l"
    "dHJpY3OUfZSMBGxvc3OUaBtoHksAhZRoIIeUUpQoSwFLAYWUaCiJQwgAAAAAAADgP5R0lGJzjApncmFkX25vcm1zlG"
    "gbaB5LAIWUaCCHlFKUKEsBSwOFlGgoiUMYAAAAAAAA8D8AAAAAAAAAQAAAAAAAAAhAlHSUYnVijBdvcHRzdGFiLmRp"
    "YWdub3Npcy5zdG9yZZSMC1RyaWFsUmVjb3JklJOUKYGUfZQoaBdoA4wGcmVzdWx0lGgVjAVlcnJvcpROjAdzZWNvbm"
    "RzlEc/9AAAAAAAAHViaACMD0ZpeEF3YXJlVHJpYWxGbpSTlCmBlH2UKIwCZm6UjAhidWlsdGluc5SMBHJlcHKUk5SM"
    "C2ZpeF9zdXBwb3J0lGgAjApGaXhTdXBwb3J0lJOUKYGUfZQojAhjbGlwcGluZ5SIjApvcHRpbWl6ZXJzlIwEYWRhbZ"
    "SFlIwNYXJjaGl0ZWN0dXJlc5R9lGgSiXVidWJ0lC4=")


class _AcrossNumpyVersions(pickle.Unpickler):
  """The blob was written under numpy 2 (``numpy._core``); numpy 1 names that ``numpy.core``."""

  def find_class(self, module, name):
    if module.startswith("numpy._core") and np.lib.NumpyVersion(np.__version__) < "2.0.0":
      module = "numpy.core" + module[len("numpy._core"):]
    return super().find_class(module, name)


def test_pickles_written_before_the_move_load():
  assert b"optstab.diagnosis.trial" in OLD_PICKLE and b"optstab.diagnosis.store" in OLD_PICKLE
  config, result, record, fn = _AcrossNumpyVersions(io.BytesIO(OLD_PICKLE)).load()
  assert type(config) is trial.TrialConfig
  assert config == trial.TrialConfig(0.1, num_steps=2, warmup_steps=1, eval_every=3,
                                     extra={"variant": "a"}, clip_norm=1.5)
  assert type(result) is trial.TrialResult and result.config == config
  np.testing.assert_array_equal(result.train_loss, [2.0, 1.0, np.nan])
  assert type(record) is trial.TrialRecord and record.seconds == 1.25
  assert type(fn) is trial.FixAwareTrialFn and fn.fix_support.optimizers == ("adam",)
  assert fn(config) == repr(config)


def test_new_pickles_name_the_defining_module():
  config = trial.TrialConfig(0.1, num_steps=2)
  assert trial.TrialConfig.__module__ == "optstab.trial"
  blob = pickle.dumps(config)
  assert b"optstab.trial" in blob and b"optstab.diagnosis" not in blob
  assert pickle.loads(blob) == config


def test_old_import_paths_are_the_same_objects():
  for name in old_trial.__all__:
    assert getattr(old_trial, name) is getattr(trial, name), name
  assert old_trial.FixAwareTrialFn is trial.FixAwareTrialFn
  assert old_store.TrialRecord is trial.TrialRecord
  for name in old_executors.__all__:
    assert getattr(old_executors, name) is getattr(executors, name), name
  assert optstab.TrialConfig is trial.TrialConfig
  assert optstab.diagnosis.TrialConfig is trial.TrialConfig
  assert optstab.diagnosis.ProcessPool is executors.ProcessPool
