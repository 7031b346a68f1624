"""Datasets and batching: Fashion-MNIST, CIFAR-10/100, synthetic; device-side loading.

``load_splits(name, ...)`` returns train / validation / test tensors and the dataset's
``DatasetInfo``; ``DeviceLoader`` batches, augments and normalizes them on a device.
"""

from spikebridge.data.loader import DeviceLoader, Splits, load_splits
from spikebridge.data.spec import DATASETS, DatasetInfo

__all__ = ["DATASETS", "DatasetInfo", "DeviceLoader", "Splits", "load_splits"]
