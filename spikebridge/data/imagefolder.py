"""Class-per-folder image datasets (ImageNet layout), decoded lazily in worker processes.

Layout: ``ROOT/train/<class>/*.jpeg|jpg|png`` and ``ROOT/val/<class>/...``. The ``val``
folder is the held-out *test* set (ImageNet practice); the validation split used for
model selection is a seeded, class-balanced sample held out of ``train``.

Images are too many to hold in memory, so they are decoded with Pillow in
``torch.utils.data.DataLoader`` worker processes. Each worker crops and resizes one
image at a time on uint8 tensors (images differ in size) and returns fixed-size uint8
batches; the horizontal flip and the normalization run batched on the training device.
Every random number comes from integer-seeded CPU generators: the epoch's order and
flips from ``(seed, epoch)``, each image's crop from ``(seed, epoch, index)``, so a run
is reproducible whatever the number of workers.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from spikebridge.data.augment import NO_AUGMENT, Augment
from spikebridge.data.loader import (
    _SPLIT_STREAM,
    EpochBatches,
    _check_part,
    _split_counts,
    _test_indices,
    seeded_generator,
    stratified_order,
)
from spikebridge.data.spec import DatasetInfo
from spikebridge.errors import ConfigError, DataError

IMAGEFOLDER_NAME = "imagefolder"
# Per-channel statistics of the ImageNet training set, RGB in [0, 1] (torchvision's values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
# Evaluation resizes the shorter side to image_size / CENTER_CROP_FRACTION (224 -> 256),
# then takes the central image_size square (the standard ImageNet evaluation).
CENTER_CROP_FRACTION = 0.875
# Random-resized-crop ranges of the crop's area (fraction of the image) and aspect ratio
# (width / height), and the number of draws before falling back to a central crop.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# Validation = 1 % of the training folder, class-balanced: 12,811 images (~13 per
# class) on ImageNet-1k; a fraction also scales to subsets and small folders.
DEFAULT_VAL_FRACTION = 0.01
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MAX_DEFAULT_WORKERS = 8
LAYOUT = "ROOT/train/<class>/*.jpeg|jpg|png and ROOT/val/<class>/*.jpeg|jpg|png"
# Last key of the per-image crop generator: numpy's SeedSequence treats trailing zero
# keys as absent, so a non-zero tag keeps (seed, epoch, 0) apart from the epoch stream.
_CROP_STREAM = 1

CropBox = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def imagefolder_info(
    num_classes: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    class_names: Sequence[str] | None = None,
) -> DatasetInfo:
    """Return the ``DatasetInfo`` of an RGB image folder (ImageNet statistics)."""
    return DatasetInfo(
        name=IMAGEFOLDER_NAME,
        num_classes=num_classes,
        in_channels=3,
        height=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=tuple(class_names) if class_names is not None else None,
    )


def _is_image(name: str) -> bool:
    """Image files by extension (any case: ImageNet uses ``.JPEG``); hidden files skipped."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``split_dir``."""
    if not split_dir.is_dir():
        raise DataError(f"Image folder {split_dir} does not exist; expected the layout {LAYOUT}.")
    with os.scandir(split_dir) as entries:
        names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"Image folder {split_dir} has no class folders; expected {LAYOUT}.")
    return names


def _discover(
    split_dir: Path, classes: Sequence[str] | None
) -> tuple[list[str], list[bytes], list[int]]:
    """Return (classes, file paths relative to ``split_dir``, labels), sorted by class then name."""
    found = _class_folders(split_dir)
    classes = list(found if classes is None else classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"Class folder {split_dir / unknown[0]} is not among the {len(classes)} training "
            f"classes; expected the same class folders in train and val."
        )
    label_of = {name: label for label, name in enumerate(classes)}
    files, labels = [], []
    for name in found:
        with os.scandir(split_dir / name) as entries:
            images = sorted(e.name for e in entries if _is_image(e.name) and e.is_file())
        if not images:
            raise DataError(
                f"Class folder {split_dir / name} holds no images; expected at least one "
                f"{'/'.join(IMAGE_EXTENSIONS)} file (layout {LAYOUT})."
            )
        files += [os.fsencode(os.path.join(name, image)) for image in images]
        labels += [label_of[name]] * len(images)
    return classes, files, labels


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``[3, H, W]``; unreadable files raise ``DataError``."""
    try:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = type(exc).__name__ if str(path) in str(exc) else f"{type(exc).__name__}: {exc}"
        raise DataError(
            f"Image {path} cannot be decoded ({reason}); expected a readable JPEG or PNG file."
        ) from None
    return torch.from_numpy(rgb).permute(2, 0, 1)


class ImageFolderDataset(Dataset):
    """The images of one split folder, ``SPLIT_DIR/<class>/<image>``, found once and sorted.

    ``classes`` are the sub-folder names sorted (label = position), unless given: then
    the folders must be among them (a test folder labelled like its training folder).
    ``dataset[i]`` decodes image ``i`` to uint8 ``[3, H, W]`` and returns it with its label.
    Paths are kept in one numpy byte array rather than a list of strings, so forked
    workers do not copy a million Python objects by touching their reference counts.
    """

    def __init__(
        self, root_split_dir: str | os.PathLike[str], classes: Sequence[str] | None = None
    ) -> None:
        self.root = Path(root_split_dir)
        self.classes, files, labels = _discover(self.root, classes)
        self._files = np.array(files, dtype=np.bytes_)
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self.root / os.fsdecode(bytes(self._files[index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return decode_image(self.path(index)), int(self.labels[index])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageFolderDataset:
        """A dataset of the images at ``indices`` (same root and classes), no disk access."""
        index = np.asarray(torch.as_tensor(indices, dtype=torch.long))
        part = copy.copy(self)
        part._files, part.labels = self._files[index], self.labels[torch.from_numpy(index)]
        return part


def sample_crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> CropBox:
    """Draw a random-resized-crop box ``(top, left, h, w)`` inside a ``height x width`` image.

    torchvision's algorithm: up to ``CROP_TRIES`` times draw an area fraction uniformly
    in ``scale`` and an aspect ratio ``w / h`` log-uniformly in ``ratio``; the first box
    that fits is placed uniformly at random. Otherwise: the largest central box whose
    ratio is clamped into ``ratio``.
    """
    area, log_lo, log_hi = height * width, math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        u_area, u_ratio = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    return _central_box(height, width, ratio)


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> CropBox:
    """Largest centred box of the image with aspect ratio clamped into ``ratio``."""
    if width / height < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = max(1, round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, anti-aliased resize of uint8 ``[C, H, W]`` to uint8 ``[C, *size]``."""
    out = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)
    return out[0]


def resized_crop(image: torch.Tensor, box: CropBox, image_size: int) -> torch.Tensor:
    """Crop ``box`` out of uint8 ``[C, H, W]`` and resize it to ``[C, image_size, image_size]``."""
    top, left, h, w = box
    return resize(image[:, top : top + h, left : left + w], (image_size, image_size))


def center_crop(image: torch.Tensor, resize_size: int, image_size: int) -> torch.Tensor:
    """Evaluation transform: resize the shorter side to ``resize_size`` (the longer side
    scaled as torchvision, truncated), then the central ``image_size`` square.

    uint8 ``[C, H, W]`` -> uint8 ``[C, image_size, image_size]``.
    """
    height, width = image.shape[-2:]
    if height <= width:
        size = (resize_size, int(resize_size * width / height))
    else:
        size = (int(resize_size * height / width), resize_size)
    resized = resize(image, size) if size != (height, width) else image
    top = round((size[0] - image_size) / 2)
    left = round((size[1] - image_size) / 2)
    return resized[:, top : top + image_size, left : left + image_size]


class _TransformedImages(Dataset):
    """Worker-side view of a dataset: key ``(index, epoch)`` -> ``(uint8 [3, S, S], label,
    error)``.

    A decoding error is returned as its message (and a blank image), not raised: the
    loader raises it in the main process as the one-sentence ``DataError`` it is, instead
    of the DataLoader's multi-line re-raise with a worker traceback.
    """

    def __init__(
        self, dataset: ImageFolderDataset, train: bool, image_size: int, resize_size: int, seed: int
    ) -> None:
        self.dataset, self.train, self.seed = dataset, train, seed
        self.image_size, self.resize_size = image_size, resize_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        index, epoch = key
        label, size = int(self.dataset.labels[index]), self.image_size
        try:
            image = decode_image(self.dataset.path(index))
        except DataError as err:
            return torch.zeros(3, size, size, dtype=torch.uint8), label, str(err)
        if not self.train:
            return center_crop(image, self.resize_size, size), label, ""
        gen = seeded_generator(self.seed, epoch, index, _CROP_STREAM)
        box = sample_crop_box(image.shape[1], image.shape[2], gen)
        return resized_crop(image, box, size), label, ""


def _collate(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack worker items into (uint8 ``[B, 3, S, S]``, int64 ``[B]``, error messages)."""
    images, labels, errors = zip(*items, strict=True)
    return torch.stack(images), torch.tensor(labels), [e for e in errors if e]


class _KeySampler:
    """Yields the current epoch's ``(index, epoch)`` keys; the loader replaces ``keys``
    before each epoch, and persistent workers keep running across epochs."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class ImageFolderLoader(EpochBatches):
    """Iterate ``(images, labels)`` batches of an image folder on ``device``, like
    ``DeviceLoader``: float ``[B, 3, S, S]`` normalized with ``info.mean/std``
    (``S = info.image_size``), int64 ``[B]``.

    ``augment=True``: if ``crop``, the random-resized crop (``sample_crop_box``), else the
    evaluation transform, and if ``flip``, a random horizontal flip; otherwise the
    evaluation transform (``center_crop`` with
    ``resize_size``, default ``floor(S / 0.875)``). ``set_epoch(e)`` makes order, flips
    and crops a function of ``(seed, e)``. With ``world_size > 1`` rank ``r`` takes
    positions ``r, r + world_size, ...`` of the epoch's order padded by wrap-around (as
    ``DistributedSampler``). Images are decoded by ``num_workers`` processes (default
    ``min(8, cpu_count)``; 0 decodes in this process); a file that cannot be decoded
    raises ``DataError`` naming it.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        info: DatasetInfo,
        device: torch.device | str,
        shuffle: bool,
        augment: bool,
        seed: int,
        drop_last: bool = False,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
        resize_size: int | None = None,
        crop: bool = True,
    ) -> None:
        if num_workers is None:
            num_workers = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
        resize_size = resize_size or math.floor(info.image_size / CENTER_CROP_FRACTION)
        _check_args(dataset, batch_size, info, rank, world_size, num_workers, resize_size)
        self._setup_epochs(
            len(dataset), batch_size, info, device, shuffle, augment, seed, drop_last, flip,
            rank, world_size,
        )  # fmt: skip
        self.dataset, self.num_workers, self.resize_size = dataset, num_workers, resize_size
        self.crop = crop
        self._sampler = _KeySampler()
        self._loader: DataLoader | None = None

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (dataset indices ``[M]``, flips ``[M]``) for the current epoch.

        Drawn on CPU for the whole padded epoch before sharding (as ``DeviceLoader``), so
        an image's flip does not depend on the rank; its crop depends only on its index.
        """
        gen, order = self._epoch_order()
        flips = torch.zeros(len(order), dtype=torch.bool)
        if self.augment and self.flip:
            flips = torch.rand(len(order), generator=gen) < 0.5
        return self._shard(order), self._shard(flips)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``len(self)`` batches of the current epoch."""
        indices, flips = self.epoch_plan()
        self._sampler.keys = [(index, self.epoch) for index in indices.tolist()]
        flips = flips.to(self.device)
        for i, (images, labels, errors) in enumerate(self._data_loader()):
            if errors:
                raise DataError(errors[0])
            images = images.to(self.device, non_blocking=True)
            flip = flips[i * self.batch_size : i * self.batch_size + len(images)]
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            yield self.normalize(images), labels.to(self.device, non_blocking=True)

    def _data_loader(self) -> DataLoader:
        """The DataLoader over ``(index, epoch)`` keys, made once (its workers persist)."""
        if self._loader is None:
            items = _TransformedImages(
                self.dataset, self.augment and self.crop, self.info.image_size,
                self.resize_size, self.seed,
            )  # fmt: skip
            self._loader = DataLoader(
                items,
                batch_size=self.batch_size,
                sampler=self._sampler,
                num_workers=self.num_workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                drop_last=self.drop_last,
                persistent_workers=self.num_workers > 0,
            )
        return self._loader


def _check_args(
    dataset: ImageFolderDataset,
    batch_size: int,
    info: DatasetInfo,
    rank: int,
    world_size: int,
    num_workers: int,
    resize_size: int,
) -> None:
    """Raise a one-sentence error for options ``ImageFolderLoader`` cannot use."""
    if len(dataset) == 0 or info.in_channels != 3 or len(info.mean) not in (1, 3):
        raise DataError(
            f"ImageFolderLoader got {len(dataset)} images and {info.name} statistics for "
            f"{info.in_channels} channels; expected >= 1 image and RGB (3-channel) statistics."
        )
    if batch_size < 1 or num_workers < 0 or not 0 <= rank < world_size:
        raise ConfigError(
            f"ImageFolderLoader got batch_size={batch_size}, num_workers={num_workers}, "
            f"rank={rank}, world_size={world_size}; expected batch_size >= 1, "
            f"num_workers >= 0 and 0 <= rank < world_size."
        )
    if not 1 <= info.image_size <= resize_size:
        raise ConfigError(
            f"ImageFolderLoader got image_size={info.image_size} and resize_size={resize_size}; "
            f"expected 1 <= image_size <= resize_size."
        )


@dataclass
class ImageFolderSplits:
    """An image folder split three ways (lazy datasets), with its ``DatasetInfo``."""

    train: ImageFolderDataset
    val: ImageFolderDataset
    test: ImageFolderDataset
    info: DatasetInfo

    def count(self, part: str) -> int:
        """Number of images of ``part`` (``train``, ``val`` or ``test``)."""
        return len(self.labels(part))

    def labels(self, part: str) -> torch.Tensor:
        """The int64 labels of ``part`` (no image is decoded)."""
        return getattr(self, _check_part(part)).labels

    def loader(
        self, part: str, batch_size: int, device: torch.device | str, *, seed: int = 0,
        train: bool = False, augment: Augment = NO_AUGMENT, indices: torch.Tensor | None = None,
        rank: int = 0, world_size: int = 1, workers: int | None = None,
    ) -> ImageFolderLoader:  # fmt: skip
        """An :class:`ImageFolderLoader` over ``part`` (its ``indices`` only, if given), as
        ``Splits.loader``. Training drops a short last batch, unless it is the only one
        (fewer images than the batch: the folder still trains, on one smaller batch)."""
        dataset: ImageFolderDataset = getattr(self, _check_part(part))
        if indices is not None:
            dataset = dataset.subset(indices)
        if not train:
            augment, rank, world_size = NO_AUGMENT, 0, 1
        return ImageFolderLoader(
            dataset, batch_size, self.info, device, shuffle=train, augment=augment.any,
            seed=seed, drop_last=train and len(dataset) >= batch_size * world_size,
            flip=augment.flip, crop=augment.crop, rank=rank, world_size=world_size,
            num_workers=workers,
        )  # fmt: skip


def load_imagefolder(
    root: str | os.PathLike[str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    val_size: int | float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    subset: int | None = None,
) -> ImageFolderSplits:
    """Find the images of ``ROOT/train`` and ``ROOT/val`` and split them three ways.

    test = ``ROOT/val`` (the held-out set in ImageNet practice); validation = a seeded,
    class-balanced sample of ``ROOT/train`` of ``val_size`` images (int) or fraction
    (float in [0, 1), default 1 %); train = the rest. ``subset``, ``val_size`` and
    ``seed`` mean what they mean in ``load_splits`` (same helpers, same seed streams).
    Nothing is decoded here; a missing folder or empty class raises ``DataError``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size is {image_size!r}; expected an integer >= 1.")
    root = Path(root)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataError(f"Image folder {root} has no {part!r} folder; expected {LAYOUT}.")
    full = ImageFolderDataset(root / "train")
    test = ImageFolderDataset(root / "val", classes=full.classes)
    n_val, n_train = _split_counts(len(full), subset, val_size)
    order = stratified_order(full.labels, seeded_generator(seed, _SPLIT_STREAM))
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val : n_val + n_train].sort().values
    return ImageFolderSplits(
        train=full.subset(train_idx),
        val=full.subset(val_idx),
        test=test.subset(_test_indices(test.labels, subset, seed)),
        info=imagefolder_info(len(full.classes), image_size, full.classes),
    )
