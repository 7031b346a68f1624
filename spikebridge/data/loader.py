"""Train/validation/test splits of in-memory datasets and device-side batching with crop/flip
augmentation.

Images stay uint8 on the compute device; each batch is gathered, augmented and
normalized there with batched tensor ops. Every random number (split, shuffle,
augmentation) comes from a CPU ``torch.Generator`` seeded from integers only, so the
same seed gives the same batches on any device, and a resumed run that calls
``set_epoch(e)`` sees exactly the batches of the interrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spikebridge.data.augment import NO_AUGMENT, Augment
from spikebridge.data.spec import DEFAULT_CROP_PAD, DatasetInfo, crop_pad
from spikebridge.errors import ConfigError, DataError

# With `subset`, the test set keeps max(subset // TEST_SUBSET_RATIO, MIN_TEST_SUBSET)
# images (never more than it has): about the train:test ratio of CIFAR, and enough
# test images for an accuracy that is not pure noise.
TEST_SUBSET_RATIO = 5
MIN_TEST_SUBSET = 1000

# Stream keys of `seeded_generator`, so the splits never share random numbers.
_SPLIT_STREAM, _TEST_STREAM = 0, 1


@dataclass
class Splits:
    """A dataset split three ways: uint8 images ``[N, C, H, W]``, int64 labels ``[N]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DatasetInfo

    def count(self, part: str) -> int:
        """Number of images of ``part`` (``train``, ``val`` or ``test``)."""
        return len(self.labels(part))

    def labels(self, part: str) -> torch.Tensor:
        """The int64 labels of ``part``."""
        return getattr(self, f"{_check_part(part)}_y")

    def loader(
        self, part: str, batch_size: int, device: torch.device | str, *, seed: int = 0,
        train: bool = False, augment: Augment = NO_AUGMENT, indices: torch.Tensor | None = None,
        rank: int = 0, world_size: int = 1, workers: int | None = None,
    ) -> DeviceLoader:  # fmt: skip
        """A :class:`DeviceLoader` over ``part`` (its ``indices`` only, if given): shuffled,
        augmented and sharded over ranks when ``train``, else in order and plain.
        ``workers`` is unused (the images are in memory)."""
        del workers
        x, y = getattr(self, f"{_check_part(part)}_x"), self.labels(part)
        if indices is not None:
            x, y = x[indices], y[indices]
        if not train:
            augment, rank, world_size = NO_AUGMENT, 0, 1
        return DeviceLoader(
            x, y, batch_size, self.info, device, shuffle=train, augment=augment.any, seed=seed,
            pad=crop_pad(self.info), flip=augment.flip, crop=augment.crop, rank=rank,
            world_size=world_size,
        )  # fmt: skip


SPLIT_PARTS = ("train", "val", "test")


def _check_part(part: str) -> str:
    if part not in SPLIT_PARTS:
        raise ConfigError(f"split is {part!r}; expected one of {', '.join(SPLIT_PARTS)}.")
    return part


def seeded_generator(*keys: int) -> torch.Generator:
    """Return a CPU generator seeded from the integers ``keys`` (e.g. seed, epoch).

    ``numpy.random.SeedSequence`` mixes the keys, so (1, 0) and (0, 1) give unrelated streams.
    The key count goes first because SeedSequence ignores trailing zeros: without it (s, 0)
    and (s,) would be the same stream.
    """
    if any(key < 0 for key in keys):
        raise ConfigError(f"Seeds and epochs must be non-negative integers; got {keys}.")
    state = np.random.SeedSequence([len(keys), *keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def stratified_order(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Return a random permutation of ``range(len(labels))`` that deals classes round-robin.

    Any prefix holds every class equally often (+-1) while each class has images left,
    so taking the first ``n`` indices is a class-balanced random sample.
    """
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = labels.cpu()[perm]
    by_class = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(perm)
    rank[by_class] = torch.arange(len(labels)) - starts[shuffled[by_class]]
    return perm[torch.argsort(rank, stable=True)]


def _val_count(val_size: int | float, n_kept: int) -> int:
    """Number of validation images: a count as given, or a fraction of ``n_kept``."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ConfigError(f"val_size is {val_size!r}; expected a count or a fraction in [0, 1).")
    if isinstance(val_size, int):
        if val_size < 0:
            raise ConfigError(f"val_size is {val_size}; expected a count >= 0.")
        return val_size
    if not 0.0 <= val_size < 1.0:
        raise ConfigError(f"val_size is {val_size}; expected a fraction in [0, 1).")
    return max(1, round(val_size * n_kept)) if val_size > 0 else 0


def _split_counts(n: int, subset: int | None, val_size: int | float) -> tuple[int, int]:
    """Return (validation count, training count) taken from ``n`` training-file images."""
    if subset is None:
        n_val = _val_count(val_size, n)
        n_train = n - n_val
    else:
        if subset < 1:
            raise ConfigError(f"subset is {subset}; expected a number of training images >= 1.")
        n_train, n_val = subset, _val_count(val_size, subset)
    if n_train < 1 or n_val + n_train > n:
        raise ConfigError(
            f"{n_train} training plus {n_val} validation images do not fit in the "
            f"{n} images of the training file; lower subset or val_size."
        )
    return n_val, n_train


def _test_indices(test_y: torch.Tensor, subset: int | None, seed: int) -> torch.Tensor:
    """All test indices, or with ``subset`` a balanced seeded sample of the documented size."""
    if subset is None:
        return torch.arange(len(test_y))
    n_test = min(len(test_y), max(subset // TEST_SUBSET_RATIO, MIN_TEST_SUBSET))
    order = stratified_order(test_y, seeded_generator(seed, _TEST_STREAM))
    return order[:n_test].sort().values


def split_tensors(
    raw: tuple[torch.Tensor, ...],
    info: DatasetInfo,
    subset: int | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
) -> Splits:
    """Split ``(train_x, train_y, test_x, test_y)`` into train / validation / test.

    Validation images are held out of the training file, never taken from the test set.
    ``val_size`` is a count (int) or a fraction (float in [0, 1)); a positive fraction
    gives at least one image.

    - Without ``subset``: validation = ``val_size`` of the training file, train = the rest,
      test = the whole test file.
    - With ``subset=N``: train = N images, validation = ``val_size`` as a count or as a
      fraction of N, test = ``max(N // 5, 1000)`` images (or all, if fewer).

    Every part is a class-balanced (round-robin) seeded random sample (`stratified_order`),
    returned in file order; the same ``seed`` gives the same splits on any machine.
    """
    train_x, train_y, test_x, test_y = raw
    n_val, n_train = _split_counts(len(train_y), subset, val_size)
    order = stratified_order(train_y, seeded_generator(seed, _SPLIT_STREAM))
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val : n_val + n_train].sort().values
    test_idx = _test_indices(test_y, subset, seed)
    return Splits(
        train_x=train_x[train_idx],
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x[test_idx],
        test_y=test_y[test_idx],
        info=info,
    )


def crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int
) -> torch.Tensor:
    """Random-crop and mirror a batch in one gather (no loop over samples).

    ``images`` ``[B, C, H, W]`` are zero-padded by ``pad`` on every side; sample ``b`` is
    cropped back to ``H x W`` at row/column offset ``offsets[b] = (dy, dx)`` in
    ``[0, 2 * pad]`` (``pad`` = no shift), then mirrored left-right where ``flips[b]``.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(height, device=device)  # [B, H]
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = torch.where(flips[:, None], width - 1 - cols, cols) + offsets[:, 1, None]  # [B, W]
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class EpochBatches:
    """What every loader shares: epochs seeded from ``(seed, epoch)``, the wrap-around
    padded order sharded over ranks (as ``DistributedSampler``), batch counts and
    normalization. Subclasses call :meth:`_setup_epochs` and draw their own augmentation
    after :meth:`_epoch_order` from the same generator.
    """

    def _setup_epochs(
        self, num_items: int, batch_size: int, info: DatasetInfo, device: torch.device | str,
        shuffle: bool, augment: bool, seed: int, drop_last: bool, flip: bool, rank: int,
        world_size: int,
    ) -> None:  # fmt: skip
        self.device = torch.device(device)
        self._num_items, self.batch_size, self.info = num_items, batch_size, info
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.flip, self.rank, self.world_size = flip, rank, world_size
        self.epoch = 0
        self._mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (including wrap-around padding)."""
        return math.ceil(self._num_items / self.world_size)

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ConfigError(f"Epoch is {epoch}; expected an integer >= 0.")
        self.epoch = epoch

    def _epoch_order(self) -> tuple[torch.Generator, torch.Tensor]:
        """The epoch's generator and its order over all ranks, padded by wrap-around."""
        gen = seeded_generator(self.seed, self.epoch)
        n, total = self._num_items, self.num_samples * self.world_size
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        return gen, order.repeat(math.ceil(total / n))[:total]

    def _shard(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's positions ``rank, rank + world_size, ...`` of an epoch-long tensor."""
        return values[self.rank :: self.world_size]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 ``(x / 255 - mean) / std``."""
        return images.float().div_(255).sub_(self._mean).div_(self._std)


class DeviceLoader(EpochBatches):
    """Iterate ``(images, labels)`` batches on ``device``: float ``[B, C, H, W]`` normalized
    with the dataset mean/std, int64 ``[B]``.

    The images are moved to ``device`` once, as uint8. Each epoch's order and
    augmentation parameters are drawn on a CPU generator seeded from ``(seed, epoch)``
    (see ``set_epoch``), so batches are reproducible and device-independent. With
    ``world_size > 1``, rank ``r`` takes positions ``r, r + world_size, ...`` of the
    epoch's order padded by wrap-around to a multiple of ``world_size`` (as
    ``DistributedSampler``), so every rank has the same number of batches.
    Augmentation (``augment=True``): if ``crop``, a random crop with ``pad`` zero pixels
    (default 4; ``Splits.loader`` passes ``crop_pad``, 1/8 of the image side) and, if
    ``flip``, a random horizontal flip, both per sample.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        info: DatasetInfo,
        device: torch.device | str,
        shuffle: bool,
        augment: bool,
        seed: int,
        drop_last: bool = False,
        pad: int = DEFAULT_CROP_PAD,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        crop: bool = True,
    ) -> None:
        _check_loader_args(images, labels, batch_size, info, pad, rank, world_size)
        self._setup_epochs(
            len(labels), batch_size, info, device, shuffle, augment, seed, drop_last, flip,
            rank, world_size,
        )  # fmt: skip
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.pad, self.crop = pad, crop

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's (indices ``[M]``, crop offsets ``[M, 2]``, flips ``[M]``) for the epoch.

        Drawn on CPU in a fixed order (permutation, offsets, flips) for the whole
        padded epoch before sharding, so a sample's augmentation does not depend on rank.
        """
        gen, order = self._epoch_order()
        total = len(order)
        offsets = torch.full((total, 2), self.pad, dtype=torch.long)
        flips = torch.zeros(total, dtype=torch.bool)
        if self.augment and self.crop:
            offsets = torch.randint(0, 2 * self.pad + 1, (total, 2), generator=gen)
        if self.augment and self.flip:
            flips = torch.rand(total, generator=gen) < 0.5
        return self._shard(order), self._shard(offsets), self._shard(flips)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``len(self)`` batches of the current epoch."""
        indices, offsets, flips = (t.to(self.device) for t in self.epoch_plan())
        for i in range(len(self)):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = indices[batch]
            images = self.images[idx]
            if self.augment:
                images = crop_flip(images, offsets[batch], flips[batch], self.pad)
            yield self.normalize(images), self.labels[idx]


def _check_loader_args(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    info: DatasetInfo,
    pad: int,
    rank: int,
    world_size: int,
) -> None:
    """Raise a one-sentence error for inputs ``DeviceLoader`` cannot batch."""
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(
            f"DeviceLoader got {images.dtype} images {tuple(images.shape)} and "
            f"{len(labels)} labels; expected uint8 [N, C, H, W] with N labels, N >= 1."
        )
    if len(images) == 0 or len(info.mean) not in (1, images.shape[1]):
        raise DataError(
            f"DeviceLoader got {len(images)} images of {images.shape[1]} channels for "
            f"{info.name} statistics of {len(info.mean)}; expected N >= 1 and matching channels."
        )
    if batch_size < 1 or pad < 0 or not 0 <= rank < world_size:
        raise ConfigError(
            f"DeviceLoader got batch_size={batch_size}, pad={pad}, rank={rank}, "
            f"world_size={world_size}; expected batch_size >= 1, pad >= 0, 0 <= rank < world_size."
        )
