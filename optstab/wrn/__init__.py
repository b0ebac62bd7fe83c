"""The WideResNet stride-instability demo (spec S6): model, data, training, experiment.

``model`` and ``data`` are re-exported here; ``train``, ``experiment`` and
``cli`` are imported from their own modules (``optstab.wrn.train`` ...), so
importing ``optstab.wrn`` stays light.
"""

from optstab.wrn.model import (
    BATCH_NORM_EPSILON,
    BATCH_NORM_MOMENTUM,
    BLOCK_NORMS,
    HEADS,
    WideResNet,
    WideResNetBlock,
    WideResNetConfig,
    apply_model,
    create_model,
    merge_model,
    param_count,
    split_model,
)

__all__ = [
    "BATCH_NORM_EPSILON",
    "BATCH_NORM_MOMENTUM",
    "BLOCK_NORMS",
    "HEADS",
    "WideResNet",
    "WideResNetBlock",
    "WideResNetConfig",
    "apply_model",
    "create_model",
    "merge_model",
    "param_count",
    "split_model",
]
