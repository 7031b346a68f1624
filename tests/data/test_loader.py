"""Splits, device-side batching and augmentation, synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spikebridge.data.registry as registry_module
from spikebridge.data import DATASETS, DatasetInfo, DeviceLoader, Splits, load_splits
from spikebridge.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR
from spikebridge.data.loader import crop_flip, seeded_generator, stratified_order
from spikebridge.data.spec import CIFAR10, SYNTHETIC
from spikebridge.data.synthetic import make_synthetic
from spikebridge.errors import ConfigError, DataError

N_TRAIN, N_TEST = 1200, 3000
INFO = DatasetInfo("ids", 10, 1, 2, (0.5,), (0.25,))


def _id_images(n: int, offset: int) -> torch.Tensor:
    """uint8 [n, 1, 2, 2] images that encode their own index ``offset + i``."""
    ids = torch.arange(offset, offset + n)
    return torch.stack([ids // 256, ids % 256, ids // 256, ids % 256], 1).view(n, 1, 2, 2).byte()


def _ids(images: torch.Tensor) -> list[int]:
    flat = images.reshape(len(images), -1).long()
    return (flat[:, 0] * 256 + flat[:, 1]).tolist()


@pytest.fixture
def fake_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every dataset load as images that carry their index (test ids start at 10000)."""
    raw = (
        _id_images(N_TRAIN, 0),
        torch.arange(N_TRAIN) % 10,
        _id_images(N_TEST, 10000),
        torch.arange(N_TEST) % 10,
    )
    monkeypatch.setattr(registry_module, "load_cifar", lambda data_dir, num_classes: raw)


def _check_consistent(splits: Splits) -> None:
    for part in ("train", "val", "test"):
        images, labels = getattr(splits, f"{part}_x"), getattr(splits, f"{part}_y")
        offset = 10000 if part == "test" else 0
        assert [(i - offset) % 10 for i in _ids(images)] == labels.tolist()


def test_splits_disjoint_and_reproducible(fake_raw: None) -> None:
    splits = load_splits("cifar10", seed=3)
    _check_consistent(splits)
    train, val = set(_ids(splits.train_x)), set(_ids(splits.val_x))
    assert len(val) == 120 and len(train) == N_TRAIN - 120 and not train & val
    assert train | val == set(range(N_TRAIN))
    assert _ids(splits.test_x) == list(range(10000, 10000 + N_TEST))
    assert torch.bincount(splits.val_y).tolist() == [12] * 10
    again = load_splits("cifar10", seed=3)
    assert torch.equal(again.val_x, splits.val_x) and torch.equal(again.train_y, splits.train_y)
    assert set(_ids(load_splits("cifar10", seed=4).val_x)) != val
    assert splits.info == CIFAR10


def test_subset_rules(fake_raw: None) -> None:
    splits = load_splits("cifar10", subset=200, val_size=0.1, seed=0)
    _check_consistent(splits)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (200, 20, 1000)
    assert torch.bincount(splits.train_y).tolist() == [20] * 10
    assert not set(_ids(splits.train_x)) & set(_ids(splits.val_x))
    big = load_splits("cifar10", subset=1000, val_size=50, seed=0)
    assert (len(big.train_y), len(big.val_y), len(big.test_y)) == (1000, 50, 1000)
    whole_test = load_splits("cifar10", subset=1100, val_size=0)
    assert len(whole_test.val_y) == 0 and len(whole_test.train_y) == 1100


@pytest.mark.parametrize(
    ("subset", "val_size"),
    [(None, 1.0), (None, -1), (None, True), (None, "0.1"), (0, 0.1), (1150, 0.1)],
)
def test_bad_split_sizes(fake_raw: None, subset: int | None, val_size: object) -> None:
    with pytest.raises(ConfigError):
        load_splits("cifar10", subset=subset, val_size=val_size)  # type: ignore[arg-type]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_splits("mnist")
    assert all(name in str(info.value) for name in DATASETS)
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "idx")


def test_synthetic_splits() -> None:
    splits = load_splits("synthetic", subset=100)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (100, 10, 256)
    assert splits.info == SYNTHETIC and splits.train_x.shape[1:] == (1, 16, 16)


def test_real_fashion_mnist_splits() -> None:
    if not Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"{DEFAULT_FASHION_MNIST_DIR} is absent")
    splits = load_splits("fashion-mnist")
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (54000, 6000, 10000)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_stratified_order_prefixes_are_balanced(counts: list[int], seed: int) -> None:
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)]).long()
    order = stratified_order(labels, seeded_generator(seed))
    assert sorted(order.tolist()) == list(range(len(labels)))
    present = [k for k, c in enumerate(counts) if c > 0]
    prefix = len(present) * min([c for c in counts if c > 0], default=0)
    seen = torch.bincount(labels[order[:prefix]], minlength=len(counts))
    assert all(seen[k] == prefix // len(present) for k in present)


# ---------------------------------------------------------------- DeviceLoader


def _loader(n: int = 50, **kwargs: object) -> DeviceLoader:
    images = torch.randint(0, 256, (n, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    args = {"batch_size": 8, "info": INFO, "device": "cpu", "shuffle": True, "augment": True}
    args.update({"seed": 7, "pad": 1, **kwargs})
    return DeviceLoader(images.byte(), torch.arange(n), **args)  # type: ignore[arg-type]


def _epoch(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_set_epoch_reproduces_batches() -> None:
    loader = _loader()
    first = _epoch(loader, 3)
    assert _same(first, _epoch(loader, 3))
    assert _same(first, _epoch(_loader(), 3))  # a resumed run with a fresh loader
    assert not _same(first, _epoch(loader, 4))
    assert not _same(first, _epoch(_loader(seed=8), 3))


def test_batches_shapes_and_normalization() -> None:
    loader = _loader(n=50, shuffle=False, augment=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and len(batches[-1][1]) == 2
    images = torch.cat([x for x, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))
    expected = (loader.images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(images, expected)
    assert images.dtype == torch.float32 and loader.images.dtype == torch.uint8
    dropped = _loader(n=50, drop_last=True)
    assert len(dropped) == 6 and all(len(y) == 8 for _, y in dropped)


def _reference_crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int
):
    """Per-sample loop: zero-pad, slice the window, mirror."""
    out = torch.empty_like(images)
    _, _, height, width = images.shape
    for i, image in enumerate(images):
        padded = torch.zeros(image.shape[0], height + 2 * pad, width + 2 * pad, dtype=image.dtype)
        padded[:, pad : pad + height, pad : pad + width] = image
        dy, dx = offsets[i].tolist()
        crop = padded[:, dy : dy + height, dx : dx + width]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_crop_flip_matches_reference(pad: int) -> None:
    gen = torch.Generator().manual_seed(pad)
    images = torch.randint(0, 256, (16, 3, 7, 9), generator=gen).byte()
    offsets = torch.randint(0, 2 * pad + 1, (16, 2), generator=gen)
    flips = torch.rand(16, generator=gen) < 0.5
    out = crop_flip(images, offsets, flips, pad)
    assert out.shape == images.shape
    assert torch.equal(out, _reference_crop_flip(images, offsets, flips, pad))


def test_loader_augmentation_matches_reference() -> None:
    loader = _loader(n=20, batch_size=20)
    loader.set_epoch(2)
    indices, offsets, flips = loader.epoch_plan()
    ((images, labels),) = list(loader)
    expected = _reference_crop_flip(loader.images[indices], offsets, flips, loader.pad)
    assert torch.equal(labels, indices)
    torch.testing.assert_close(images, loader.normalize(expected))


@settings(max_examples=30, deadline=None)
@given(pad=st.integers(0, 5), seed=st.integers(0, 10_000), epoch=st.integers(0, 100))
def test_plan_offsets_in_range_and_flip_is_involution(pad: int, seed: int, epoch: int) -> None:
    loader = _loader(n=12, pad=pad, seed=seed)
    loader.set_epoch(epoch)
    _, offsets, flips = loader.epoch_plan()
    assert offsets.min() >= 0 and offsets.max() <= 2 * pad
    images = loader.images
    no_shift = torch.full((len(images), 2), pad)
    once = crop_flip(images, no_shift, flips[: len(images)], pad)
    assert torch.equal(crop_flip(once, no_shift, flips[: len(images)], pad), images)
    assert torch.equal(
        crop_flip(images, no_shift, torch.zeros(len(images), dtype=bool), pad), images
    )


@pytest.mark.parametrize(("n", "world_size"), [(48, 3), (50, 3), (5, 4)])
def test_shards_cover_epoch_without_overlap(n: int, world_size: int) -> None:
    shards = [_loader(n=n, rank=r, world_size=world_size) for r in range(world_size)]
    seen = [torch.cat([y for _, y in _epoch(s, 1)]).tolist() for s in shards]
    assert len({len(s) for s in shards}) == 1 and len({len(x) for x in seen}) == 1
    flat = sum(seen, [])
    assert set(flat) == set(range(n))
    assert len(flat) - len(set(flat)) == -n % world_size  # only wrap-around padding repeats


def test_sharding_keeps_each_samples_augmentation() -> None:
    whole = _loader(n=48)
    whole.set_epoch(5)
    plan = whole.epoch_plan()
    for rank in range(3):
        shard = _loader(n=48, rank=rank, world_size=3)
        shard.set_epoch(5)
        for mine, full in zip(shard.epoch_plan(), plan, strict=True):
            assert torch.equal(mine, full[rank::3])


def test_loader_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        DeviceLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4), 2, INFO, "cpu", True, True, 0)
    with pytest.raises(DataError):
        DeviceLoader(
            torch.zeros(4, 2, 2, 2).byte(), torch.zeros(4), 2, CIFAR10, "cpu", True, True, 0
        )
    with pytest.raises(ConfigError):
        _loader(rank=2, world_size=2)
    with pytest.raises(ConfigError):
        _loader().set_epoch(-1)


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    train_x, train_y, _, _ = make_synthetic(num_train=100, in_channels=3)
    args = (train_x, train_y, 16, CIFAR10)
    cpu = DeviceLoader(*args, "cpu", shuffle=True, augment=True, seed=1)
    gpu = DeviceLoader(*args, "cuda", shuffle=True, augment=True, seed=1)
    for (x, y), (u, v) in zip(_epoch(cpu, 2), _epoch(gpu, 2), strict=True):
        assert u.is_cuda and torch.equal(y, v.cpu())
        torch.testing.assert_close(x, u.cpu())


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic() -> None:
    first, again = make_synthetic(seed=0), make_synthetic(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], make_synthetic(seed=1)[0])
    train_x, train_y, test_x, test_y = make_synthetic(num_classes=6, in_channels=3, image_size=12)
    assert train_x.shape == (512, 3, 12, 12) and train_x.dtype == torch.uint8
    assert test_x.shape == (256, 3, 12, 12) and test_y.dtype == torch.int64
    assert torch.bincount(train_y).tolist() == [86, 86, 85, 85, 85, 85]
    with pytest.raises(ConfigError):
        make_synthetic(num_classes=11)


def test_synthetic_is_learnable() -> None:
    """A tiny CNN trained with the augmenting loader beats chance (25 %) by far."""
    torch.manual_seed(0)
    splits = load_splits("synthetic")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 4),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    train = DeviceLoader(splits.train_x, splits.train_y, 32, splits.info, "cpu", True, True, 0)
    for epoch in range(5):
        for images, labels in _epoch(train, epoch):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test = DeviceLoader(splits.test_x, splits.test_y, 256, splits.info, "cpu", False, False, 0)
    ((images, labels),) = list(test)
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8
