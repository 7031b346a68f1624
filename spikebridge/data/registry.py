"""One dataset registry: every command reaches every dataset by name through :func:`load_dataset`.

Each entry has a reader that returns the three splits (train / validation held out of the
training file / test) with a :class:`DatasetInfo`: image shape ``(C, H, W)``, class count,
class names when known, and the per-channel normalization. Normalization is, in order:

1. ``mean`` / ``std`` when given (the ``data.mean`` / ``data.std`` config keys; a trained
   run records the values it used there, so eval, convert and export reuse them);
2. the dataset's established constants, where there is a convention: Fashion-MNIST
   (0.2860 / 0.3530), CIFAR-10 and CIFAR-100 (the usual per-channel values), image folders
   (ImageNet's, as torchvision), synthetic (its generator's 0.5 / 0.27);
3. otherwise (``idx``) computed per channel from the training split: the pixel mean and
   population standard deviation in [0, 1] units.

Splits are either in memory (:class:`~spikebridge.data.loader.Splits`) or lazily decoded
(:class:`~spikebridge.data.imagefolder.ImageFolderSplits`); both offer ``count``,
``labels`` and ``loader(part, ...)``, so callers never ask which kind they hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from spikebridge.data.augment import NO_AUGMENT, Augment
from spikebridge.data.cifar import load_cifar
from spikebridge.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from spikebridge.data.idx import LAYOUT as IDX_LAYOUT
from spikebridge.data.idx import class_count, load_idx_folder
from spikebridge.data.imagefolder import (
    DEFAULT_IMAGE_SIZE,
    IMAGEFOLDER_NAME,
    ImageFolderSplits,
    imagefolder_info,
    load_imagefolder,
)
from spikebridge.data.imagefolder import LAYOUT as FOLDER_LAYOUT
from spikebridge.data.loader import Splits, split_tensors
from spikebridge.data.spec import (
    CIFAR10,
    CIFAR100,
    DATASET_INFO,
    FASHION_MNIST,
    SYNTHETIC,
    DatasetInfo,
    with_statistics,
)
from spikebridge.data.synthetic import make_synthetic
from spikebridge.errors import ConfigError

AnySplits = Splits | ImageFolderSplits
IDX_NAME = "idx"
_STAT_CHUNK = 4096  # images per step when computing the training split's statistics


@dataclass(frozen=True)
class DataRequest:
    """What a reader is asked for: where the files are and how to split them."""

    data_dir: str | None = None
    subset: int | None = None
    val_size: int | float = 0.1
    seed: int = 0
    image_size: int | None = None  # imagefolder: crop size (None = 224)


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: ``read`` returns its splits with statistics still to be chosen
    (:func:`load_dataset` applies given or computed ones when ``computed_statistics``).
    ``flip_safe``: a horizontal mirror keeps every class (what the deprecated
    ``augment: true`` may include)."""

    name: str
    read: Callable[[DataRequest], AnySplits]
    computed_statistics: bool = False
    flip_safe: bool = True


REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` under its name (a name is registered once)."""
    if entry.name in REGISTRY:
        raise ConfigError(f"dataset {entry.name!r} is registered twice.")
    REGISTRY[entry.name] = entry
    return entry


def dataset_entry(name: str) -> DatasetEntry:
    """The entry of ``name``; ConfigError listing the registered names otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"Unknown dataset {name!r}; expected one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def _needs_dir(request: DataRequest, name: str, layout: str) -> str:
    if not request.data_dir:
        raise ConfigError(f"--dataset {name} needs --data-dir FOLDER holding {layout}.")
    return request.data_dir


def _read_fashion_mnist(request: DataRequest) -> Splits:
    raw = load_fashion_mnist(request.data_dir or DEFAULT_FASHION_MNIST_DIR)
    return split_tensors(raw, FASHION_MNIST, request.subset, request.val_size, request.seed)


def _cifar_reader(info: DatasetInfo) -> Callable[[DataRequest], Splits]:
    def read(request: DataRequest) -> Splits:
        raw = load_cifar(request.data_dir, num_classes=info.num_classes)
        return split_tensors(raw, info, request.subset, request.val_size, request.seed)

    return read


def _read_synthetic(request: DataRequest) -> Splits:
    return split_tensors(
        make_synthetic(), SYNTHETIC, request.subset, request.val_size, request.seed
    )


def _read_idx(request: DataRequest) -> Splits:
    folder = _needs_dir(request, IDX_NAME, IDX_LAYOUT)
    raw = load_idx_folder(folder)
    channels, height, width = raw[0].shape[1:]
    info = DatasetInfo(
        name=IDX_NAME, num_classes=class_count(raw[1], raw[3], Path(folder)),
        in_channels=channels, height=height, width=None if width == height else width,
        mean=(0.0,), std=(1.0,),  # replaced by the training split's (load_dataset)
    )  # fmt: skip
    return split_tensors(raw, info, request.subset, request.val_size, request.seed)


def _read_imagefolder(request: DataRequest) -> ImageFolderSplits:
    root = _needs_dir(request, IMAGEFOLDER_NAME, FOLDER_LAYOUT)
    size = request.image_size or DEFAULT_IMAGE_SIZE
    return load_imagefolder(root, size, request.val_size, request.seed, request.subset)


for _entry in (
    DatasetEntry("fashion-mnist", _read_fashion_mnist),
    DatasetEntry("cifar10", _cifar_reader(CIFAR10)),
    DatasetEntry("cifar100", _cifar_reader(CIFAR100)),
    DatasetEntry(IMAGEFOLDER_NAME, _read_imagefolder),
    DatasetEntry("synthetic", _read_synthetic),
    DatasetEntry(IDX_NAME, _read_idx, computed_statistics=True, flip_safe=False),
):
    register_dataset(_entry)

# Valid dataset names, in the order they are listed to users.
DATASETS: tuple[str, ...] = tuple(REGISTRY)


def training_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population standard deviation of uint8 ``[N, C, H, W]`` images,
    in [0, 1] units (summed in float64 chunks, so any split size fits in memory)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), _STAT_CHUNK):
        chunk = images[start : start + _STAT_CHUNK].to(torch.float64).div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_statistics(info: DatasetInfo) -> DatasetInfo:
    """ConfigError unless mean/std have 1 or C finite values and every std is > 0."""
    for key, values in (("mean", info.mean), ("std", info.std)):
        if len(values) not in (1, info.in_channels):
            raise ConfigError(
                f"{key} has {len(values)} values; expected 1 or {info.in_channels} "
                f"(one per channel of {info.name})."
            )
    if not all(s > 0 for s in info.std):
        raise ConfigError(
            f"std is {info.std} for {info.name}; expected values > 0 (a constant training "
            "channel has no spread: give --std)."
        )
    return info


def _with_split_statistics(splits: AnySplits, entry: DatasetEntry, mean: Any, std: Any) -> None:
    """Set ``splits.info``'s normalization: given, else computed (idx), else the constants."""
    info = splits.info
    if entry.computed_statistics and (mean is None or std is None):
        computed = training_statistics(splits.train_x)  # type: ignore[union-attr]
        info = with_statistics(info, *computed)
    splits.info = _check_statistics(with_statistics(info, mean, std))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> AnySplits:
    """Read dataset ``name`` and split it three ways (see ``split_tensors`` for the rules
    of ``subset``, ``val_size`` and ``seed``, shared by every dataset).

    ``data_dir``: the dataset's files (Fashion-MNIST defaults to the Debian package folder;
    synthetic ignores it). ``mean`` / ``std``: per-channel normalization, else the
    dataset's constants or its training split's statistics (module docstring). Unknown
    names raise ``ConfigError``, missing or corrupt files ``DataError``.
    """
    entry = dataset_entry(name)
    request = DataRequest(
        data_dir=None if data_dir is None else str(data_dir), subset=subset,
        val_size=val_size, seed=seed, image_size=image_size,
    )  # fmt: skip
    splits = entry.read(request)
    _with_split_statistics(splits, entry, mean, std)
    return splits


def load_splits(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
) -> AnySplits:
    """:func:`load_dataset` with the dataset's own normalization (the older name)."""
    return load_dataset(name, data_dir, subset, val_size, seed)


def make_loaders(
    splits: AnySplits, batch_size: int, eval_batch_size: int, device: torch.device | str, *,
    seed: int = 0, augment: Augment = NO_AUGMENT, rank: int = 0, world_size: int = 1,
    workers: int | None = None,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """``(train, val, test)`` loaders: train shuffled, augmented and sharded over ranks;
    val and test plain, None when empty."""

    def plain(part: str) -> Any:
        if splits.count(part) == 0:
            return None
        return splits.loader(part, eval_batch_size, device, seed=seed, workers=workers)

    train = splits.loader(
        "train", batch_size, device, seed=seed, train=True, augment=augment, rank=rank,
        world_size=world_size, workers=workers,
    )  # fmt: skip
    return train, plain("val"), plain("test")


def recorded_info(config: dict[str, Any], summary: dict[str, Any] | None = None) -> DatasetInfo:
    """The :class:`DatasetInfo` a run folder used, without reading its data files.

    From ``summary["dataset_info"]`` when recorded, with the ``data.mean`` / ``data.std``
    of ``config`` (recorded since the registry; older runs fall back to the dataset's
    constants); ConfigError when neither says the image shape.
    """
    data, model = config.get("data", {}), config.get("model", {})
    record = (summary or {}).get("dataset_info")
    if record:
        info = DatasetInfo.from_dict(record)
    elif data.get("dataset") in DATASET_INFO:
        info = DATASET_INFO[data["dataset"]]
        if model.get("in_channels"):
            info = replace(info, in_channels=int(model["in_channels"]))
    elif data.get("dataset") == IMAGEFOLDER_NAME:
        size = int(data.get("image_size") or DEFAULT_IMAGE_SIZE)
        info = imagefolder_info(int(model.get("num_classes") or 0), size)
    else:
        raise ConfigError(
            f"the input size of dataset {data.get('dataset')!r} is not recorded in this run; "
            "pass input_shape (C, H, W)."
        )
    return with_statistics(info, data.get("mean"), data.get("std"))


def stored_normalization(data: dict[str, Any]) -> tuple[tuple[float, ...], ...] | None:
    """``(mean, std)`` a run's data section normalizes with: recorded, else the dataset's
    constants; None where they are computed when the data is read (an unrecorded idx run)."""
    known = DATASET_INFO.get(data.get("dataset", ""))
    if known is None and data.get("dataset") == IMAGEFOLDER_NAME:
        known = imagefolder_info(0)
    mean = data.get("mean") or (known.mean if known else None)
    std = data.get("std") or (known.std if known else None)
    if mean is None or std is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
