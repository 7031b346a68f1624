"""Datasets and batching: one registry of datasets, device-side and lazily decoded loading.

``load_dataset(name, ...)`` (the registry, :mod:`spikebridge.data.registry`) returns the
train / validation / test splits and the dataset's ``DatasetInfo`` (image shape, classes,
normalization) for every registered dataset: fashion-mnist, cifar10, cifar100, imagefolder,
synthetic and idx. ``splits.loader(part, ...)`` batches, augments and normalizes on a
device; ``make_loaders`` gives a run's three loaders.
"""

from spikebridge.data.augment import AUGMENT_CHOICES, Augment, normalize_augment, parse_augment
from spikebridge.data.loader import DeviceLoader, Splits
from spikebridge.data.registry import (
    DATASETS,
    REGISTRY,
    DatasetEntry,
    dataset_entry,
    load_dataset,
    load_splits,
    make_loaders,
    recorded_info,
    register_dataset,
)
from spikebridge.data.spec import DatasetInfo

__all__ = [
    "AUGMENT_CHOICES", "DATASETS", "REGISTRY", "Augment", "DatasetEntry", "DatasetInfo",
    "DeviceLoader", "Splits", "dataset_entry", "load_dataset", "load_splits", "make_loaders",
    "normalize_augment", "parse_augment", "recorded_info", "register_dataset",
]  # fmt: skip
