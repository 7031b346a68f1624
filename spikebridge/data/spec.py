"""Dataset descriptions: the one place where dataset statistics are named.

Everything downstream (normalization in the loader, model input shapes, the CLI)
reads these constants instead of repeating numbers inline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a dataset.

    ``mean`` and ``std`` are per-channel statistics of the training images scaled
    to [0, 1]; a one-element tuple is broadcast over all channels.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    in_channels=1,
    image_size=28,
    mean=(0.2860,),
    std=(0.3530,),
)

CIFAR10 = DatasetInfo(
    name="cifar10",
    num_classes=10,
    in_channels=3,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = DatasetInfo(
    name="cifar100",
    num_classes=100,
    in_channels=3,
    image_size=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

# Statistics of `make_synthetic` images: mid-grey background, gratings + noise.
SYNTHETIC_MEAN = 0.5
SYNTHETIC_STD = 0.27

SYNTHETIC = DatasetInfo(
    name="synthetic",
    num_classes=4,
    in_channels=1,
    image_size=16,
    mean=(SYNTHETIC_MEAN,),
    std=(SYNTHETIC_STD,),
)

DATASET_INFO: dict[str, DatasetInfo] = {
    info.name: info for info in (FASHION_MNIST, CIFAR10, CIFAR100, SYNTHETIC)
}

# Valid dataset names, in the order they are listed to users.
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)

# Zero padding of the random-crop augmentation, in pixels, for every dataset:
# the usual CIFAR recipe (pad 4, crop back to size), also used for Fashion-MNIST
# (28 px, about the same relative shift).
DEFAULT_CROP_PAD = 4


def synthetic_info(num_classes: int, in_channels: int, image_size: int) -> DatasetInfo:
    """Return the ``DatasetInfo`` of a synthetic dataset generated with these sizes."""
    return DatasetInfo(
        name=SYNTHETIC.name,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=(SYNTHETIC_MEAN,),
        std=(SYNTHETIC_STD,),
    )
