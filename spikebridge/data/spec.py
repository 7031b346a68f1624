"""Dataset descriptions: the one place where dataset statistics are named.

Everything downstream (normalization in the loader, model input shapes, the CLI, export)
reads a :class:`DatasetInfo` instead of repeating numbers inline. The constants below are
the established per-channel statistics of the built-in datasets; a dataset without such a
convention (``idx``) gets its statistics computed from its training split
(:mod:`spikebridge.data.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a dataset.

    Images are ``in_channels x height x width``; ``width`` None means square
    (``height x height``). ``mean`` and ``std`` are per-channel statistics of the training
    images scaled to [0, 1]; a one-element tuple is broadcast over all channels.
    ``class_names`` (label order) when the dataset names its classes, else None.
    """

    name: str
    num_classes: int
    in_channels: int
    height: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    width: int | None = None

    @property
    def image_width(self) -> int:
        """Image width in pixels (the height when the images are square)."""
        return self.height if self.width is None else self.width

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image ``(C, H, W)``."""
        return self.in_channels, self.height, self.image_width

    @property
    def image_size(self) -> int:
        """The larger image side: what memory estimates and square crops use."""
        return max(self.height, self.image_width)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of a run (``summary.json``'s ``dataset_info``)."""
        return {
            "name": self.name, "shape": list(self.shape), "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "mean": list(self.mean), "std": list(self.std),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> DatasetInfo:
        """The inverse of :meth:`to_dict`."""
        channels, height, width = (int(v) for v in record["shape"])
        names = record.get("class_names")
        return cls(
            name=str(record["name"]), num_classes=int(record["num_classes"]),
            in_channels=channels, height=height, width=None if width == height else width,
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            class_names=tuple(str(n) for n in names) if names else None,
        )  # fmt: skip


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


FASHION_MNIST_CLASSES = _names(
    "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
)
CIFAR10_CLASSES = _names("airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck")

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    in_channels=1,
    height=28,
    mean=(0.2860,),
    std=(0.3530,),
    class_names=FASHION_MNIST_CLASSES,
)

CIFAR10 = DatasetInfo(
    name="cifar10",
    num_classes=10,
    in_channels=3,
    height=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    class_names=CIFAR10_CLASSES,
)

CIFAR100 = DatasetInfo(
    name="cifar100",
    num_classes=100,
    in_channels=3,
    height=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

# Statistics of `make_synthetic` images: mid-grey background, gratings + noise.
SYNTHETIC_MEAN = 0.5
SYNTHETIC_STD = 0.27


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """Class ``k``: a grating, horizontal for even ``k``, with ``1 + k // 2`` cycles."""
    return tuple(
        f"{'vertical' if k % 2 else 'horizontal'}-{1 + k // 2}" for k in range(num_classes)
    )


def synthetic_info(num_classes: int, in_channels: int, image_size: int) -> DatasetInfo:
    """Return the ``DatasetInfo`` of a synthetic dataset generated with these sizes."""
    return DatasetInfo(
        name="synthetic",
        num_classes=num_classes,
        in_channels=in_channels,
        height=image_size,
        mean=(SYNTHETIC_MEAN,),
        std=(SYNTHETIC_STD,),
        class_names=synthetic_class_names(num_classes),
    )


SYNTHETIC = synthetic_info(4, 1, 16)

# The fixed descriptions of the datasets that have one (their files never change shape);
# image folders and IDX folders are described by what their files hold.
DATASET_INFO: dict[str, DatasetInfo] = {
    info.name: info for info in (FASHION_MNIST, CIFAR10, CIFAR100, SYNTHETIC)
}

# Zero padding of the random-crop augmentation, in pixels: the usual CIFAR recipe (pad 4,
# crop back to size), also used for Fashion-MNIST (28 px, about the same relative shift).
DEFAULT_CROP_PAD = 4


def crop_pad(info: DatasetInfo) -> int:
    """The crop padding of a dataset: 1/8 of the shorter image side, rounded (4 pixels at
    28-32 px as the CIFAR recipe; 2 at 16 px; 1 at 8 px, where 4 would shift a digit by half
    its width: on 8x8 digits pad 4 cost 33 points, docs/RESULTS.md "Datasets beyond")."""
    return max(1, (min(info.height, info.image_width) + 4) // 8)


def with_statistics(
    info: DatasetInfo, mean: Sequence[float] | None, std: Sequence[float] | None
) -> DatasetInfo:
    """``info`` with ``mean`` / ``std`` replaced where given."""
    return replace(
        info,
        mean=info.mean if mean is None else tuple(float(v) for v in mean),
        std=info.std if std is None else tuple(float(v) for v in std),
    )
