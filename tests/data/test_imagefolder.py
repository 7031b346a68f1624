"""Image folders (ImageNet layout): discovery, lazy decoding, crops, sharding, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from spikebridge.data.imagefolder import (
    CROP_RATIO,
    CROP_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    ImageFolderLoader,
    center_crop,
    imagefolder_info,
    load_imagefolder,
    sample_crop_box,
)
from spikebridge.data.loader import seeded_generator
from spikebridge.errors import ConfigError, DataError
from spikebridge.models import build

# Created in this (unsorted) order; labels follow the sorted names apple=0, mango=1, zebra=2.
COLORS = {"zebra": (230, 20, 20), "apple": (20, 230, 20), "mango": (20, 20, 230)}
CLASSES = sorted(COLORS)
N_TRAIN, N_VAL, WIDTH, HEIGHT = 6, 2, 40, 30


def _write_image(path: Path, color: tuple[int, int, int], seed: int) -> None:
    """A 40x30 image of ``color`` with noise and a bright left edge (so flips show)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.integers(-20, 21, (HEIGHT, WIDTH, 3)), 0, 255)
    pixels[:, :4] = 255
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """ROOT/{train,val}/<class>/ with 6 / 2 images per class, plus files to be ignored."""
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        for c, (name, color) in enumerate(COLORS.items()):
            class_dir = tmp_path / split / name
            class_dir.mkdir(parents=True)
            for i in range(count):
                suffix = ".PNG" if i % 2 else ".png"
                _write_image(class_dir / f"img{count - i}{suffix}", color, 100 * c + i)
            (class_dir / "notes.txt").write_text("not an image")
            (class_dir / ".hidden.png").write_bytes(b"junk")
    return tmp_path


def _loader(dataset: ImageFolderDataset, **kwargs: object) -> ImageFolderLoader:
    options = dict(
        batch_size=4,
        info=imagefolder_info(3, image_size=16),
        device="cpu",
        shuffle=False,
        augment=False,
        seed=0,
        num_workers=0,
    )
    return ImageFolderLoader(dataset, **{**options, **kwargs})


def _batches(loader: ImageFolderLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_discovery_labels_and_decoding(folder: Path) -> None:
    data = ImageFolderDataset(folder / "train")
    assert data.classes == CLASSES and len(data) == 3 * N_TRAIN
    assert data.labels.tolist() == [0] * N_TRAIN + [1] * N_TRAIN + [2] * N_TRAIN
    names = [data.path(i).name for i in range(N_TRAIN)]
    assert names == sorted(names) and data.path(0).parent.name == "apple"
    image, label = data[2 * N_TRAIN]
    assert image.dtype == torch.uint8 and image.shape == (3, HEIGHT, WIDTH) and label == 2
    mean_color = image[:, :, 4:].float().mean((1, 2))
    assert torch.allclose(mean_color, torch.tensor(COLORS["zebra"]).float(), atol=3)
    part = data.subset(torch.tensor([1, 13]))
    assert part.labels.tolist() == [0, 2] and part.path(1) == data.path(13)


def test_batches_shapes_dtype_and_normalization(folder: Path) -> None:
    data = ImageFolderDataset(folder / "train")
    loader = _loader(data, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == math.ceil(3 * N_TRAIN / 4)
    images, labels = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 0, 0]
    raw = center_crop(data[0][0], 18, 16).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (raw - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(images[0], expected, atol=1e-6)


def test_center_crop_reference() -> None:
    image = torch.arange(3 * 30 * 40, dtype=torch.int64).view(3, 30, 40).remainder(251).byte()
    # Shorter side already 30: no resize, the central 30x30 square (columns 5..34).
    assert torch.equal(center_crop(image, 30, 30), image[:, :, 5:35])
    # Shorter side 30 -> 15 (exactly half), longer 40 -> 20, then columns 2..17 of the half.
    half = F.interpolate(image[None], size=(15, 20), mode="bilinear", antialias=True)[0]
    assert torch.equal(center_crop(image, 15, 15), half[:, :, 2:17])


def test_eval_transform_is_deterministic(folder: Path) -> None:
    data = ImageFolderDataset(folder / "val")
    loader = _loader(data, seed=1)
    first = _batches(loader)
    loader.set_epoch(3)
    second = _batches(_loader(data, seed=5))
    assert torch.equal(first[0], _batches(loader)[0]) and torch.equal(first[0], second[0])


def test_train_transform_reproducible_per_epoch(folder: Path) -> None:
    data = ImageFolderDataset(folder / "train")
    options = dict(shuffle=True, augment=True, seed=7)
    run = _batches(_loader(data, **options))
    again = _batches(_loader(data, **options, num_workers=2))
    assert torch.equal(run[0], again[0]) and torch.equal(run[1], again[1])
    other = _loader(data, **options)
    other.set_epoch(1)
    assert not torch.equal(run[0], _batches(other)[0])
    assert not torch.equal(run[0], _batches(_loader(data, shuffle=False, augment=False))[0])


def test_flip_mirrors_whole_images(folder: Path) -> None:
    data = ImageFolderDataset(folder / "val")
    loader = _loader(data, augment=True, seed=2)
    _, flips = loader.epoch_plan()
    assert 0 < int(flips.sum()) < len(flips)
    plain = _loader(data, augment=True, seed=2, flip=False)
    assert torch.equal(_batches(loader)[0][flips], _batches(plain)[0][flips].flip(-1))
    assert torch.equal(_batches(loader)[0][~flips], _batches(plain)[0][~flips])


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    seed=st.integers(0, 2**31),
    scale_lo=st.floats(0.01, 1.0),
    ratio_hi=st.floats(1.0, 5.0),
)
def test_crop_box_inside_image(
    height: int, width: int, seed: int, scale_lo: float, ratio_hi: float
) -> None:
    ratio = (1 / ratio_hi, ratio_hi)
    top, left, h, w = sample_crop_box(height, width, seeded_generator(seed), (scale_lo, 1.0), ratio)
    assert h >= 1 and w >= 1 and top >= 0 and left >= 0
    assert top + h <= height and left + w <= width


def test_crop_box_statistics_and_fallback() -> None:
    gen = seeded_generator(0)
    boxes = torch.tensor([sample_crop_box(300, 400, gen) for _ in range(2000)]).double()
    area = boxes[:, 2] * boxes[:, 3] / (300 * 400)
    aspect = boxes[:, 3] / boxes[:, 2]
    assert area.min() >= CROP_SCALE[0] - 0.01 and area.max() <= CROP_SCALE[1]
    assert aspect.min() >= CROP_RATIO[0] * 0.95 and aspect.max() <= CROP_RATIO[1] * 1.05
    # Accepted boxes: area s ~ U(scale) given that the box fits (w <= 400, h <= 300), i.e.
    # log r in [log max(3/4, s / 0.75), log min(4/3, (4/3) / s)]; mean = E[s p(s)] / E[p(s)].
    s = np.linspace(*CROP_SCALE, 100_001)
    fits = np.log(np.minimum(4 / 3, 4 / 3 / s)) - np.log(np.maximum(3 / 4, s / 0.75))
    fits = np.clip(fits, 0, None)
    assert float(area.mean()) == pytest.approx((s * fits).sum() / fits.sum(), abs=0.02)
    # A 1x100 strip never fits a 3/4..4/3 box of >= 8 % area: central fallback 1x1.
    assert sample_crop_box(1, 100, gen) == (0, 49, 1, 1)


def test_sharding_disjoint_and_complete(folder: Path) -> None:
    data = ImageFolderDataset(folder / "train")
    plans = [_loader(data, shuffle=True, rank=r, world_size=4).epoch_plan() for r in range(4)]
    indices = torch.cat([p[0] for p in plans])
    assert all(len(p[0]) == math.ceil(len(data) / 4) for p in plans)
    assert set(indices.tolist()) == set(range(len(data)))
    two = [_loader(data, shuffle=True, rank=r, world_size=2).epoch_plan()[0] for r in range(2)]
    assert not set(two[0].tolist()) & set(two[1].tolist())
    labels = [_batches(_loader(data, shuffle=True, rank=r, world_size=2))[1] for r in range(2)]
    assert torch.equal(torch.cat(labels).sort().values, data.labels.sort().values)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_names_its_path(folder: Path, workers: int) -> None:
    bad = folder / "train" / "mango" / "img3.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    data = ImageFolderDataset(folder / "train")
    with pytest.raises(DataError, match="img3.png") as info:
        list(_loader(data, num_workers=workers, augment=True))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_layout_errors(folder: Path, tmp_path: Path) -> None:
    (folder / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no images"):
        ImageFolderDataset(folder / "train")
    (folder / "train" / "empty").rmdir()
    (folder / "val" / "kiwi").mkdir()
    with pytest.raises(DataError, match="kiwi.*training classes"):
        load_imagefolder(folder)
    for path in sorted((folder / "val").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (folder / "val").rmdir()
    with pytest.raises(DataError, match=r"no 'val' folder; expected ROOT/train/<class>"):
        load_imagefolder(folder)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderDataset(tmp_path / "bare")
    with pytest.raises(ConfigError, match="image_size"):
        load_imagefolder(folder, image_size=0)


def test_load_imagefolder_splits(folder: Path) -> None:
    splits = load_imagefolder(folder, image_size=32, val_size=3, seed=4)
    assert splits.info == imagefolder_info(3, 32, CLASSES) and splits.info.in_channels == 3
    assert len(splits.val) == 3 and len(splits.train) == 3 * N_TRAIN - 3
    assert sorted(splits.val.labels.tolist()) == [0, 1, 2]  # class-balanced
    val = {splits.val.path(i) for i in range(len(splits.val))}
    train = {splits.train.path(i) for i in range(len(splits.train))}
    assert not val & train and len(val | train) == 3 * N_TRAIN
    assert len(splits.test) == 3 * N_VAL and splits.test.path(0).parts[-3] == "val"
    again = load_imagefolder(folder, image_size=32, val_size=3, seed=4)
    assert again.val.path(0) == splits.val.path(0)
    assert len(load_imagefolder(folder).val) == 1  # 1 % of 18, at least one image


def test_tiny_resnet_learns_the_folder(folder: Path) -> None:
    torch.manual_seed(0)
    splits = load_imagefolder(folder, image_size=32, val_size=0)
    model = build("resnet18", width=0.125, stem="7x7", num_classes=3)
    train = _loader(splits.train, info=splits.info, batch_size=6, shuffle=True, augment=True)
    probe = _loader(splits.train, info=splits.info, batch_size=18)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def probe_loss() -> float:
        # Batch statistics on a fixed batch: BN running averages still lag after 12 steps.
        with torch.no_grad():
            images, labels = next(iter(probe))
            return float(F.cross_entropy(model(images), labels))

    model.train()
    before = probe_loss()
    for epoch in range(4):
        train.set_epoch(epoch)
        for images, labels in train:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    assert probe_loss() < 0.3 * before
