"""The WideResNet stride-instability demo (the playbook's Figures 4, 5 and 9): model, data, training, experiment.

``model`` and ``data`` are re-exported here; ``train``, ``experiment`` and
``cli`` are imported from their own modules (``optstab.wrn.train`` ...), so
importing ``optstab.wrn`` stays light.
"""

from optstab.wrn.data import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    Augmentation,
    Batch,
    ChecksumError,
    DataNotFoundError,
    ImageDataset,
    Prefetcher,
    augment_images,
    batch_iterator,
    epoch_batches,
    fetch_cifar10,
    load_cifar10,
    load_digits,
    prefetch_to_device,
)
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
    # data
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "Augmentation",
    "Batch",
    "ChecksumError",
    "DataNotFoundError",
    "ImageDataset",
    "Prefetcher",
    "augment_images",
    "batch_iterator",
    "epoch_batches",
    "fetch_cifar10",
    "load_cifar10",
    "load_digits",
    "prefetch_to_device",
    # model
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
