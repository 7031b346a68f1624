"""The dataset registry: every dataset by name, the same splits/loaders interface, records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import write_idx_folder
from PIL import Image
from test_cifar import write_cifar

from spikebridge.data import (
    DATASETS,
    REGISTRY,
    Augment,
    DatasetEntry,
    DatasetInfo,
    load_dataset,
    make_loaders,
    recorded_info,
    register_dataset,
)
from spikebridge.data.registry import stored_normalization
from spikebridge.data.spec import (
    CIFAR10,
    CIFAR100,
    FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    SYNTHETIC,
    crop_pad,
)
from spikebridge.errors import ConfigError


def _fashion(folder: Path) -> Path:
    write_idx_folder(folder, size=28, classes=10, n_train=40, n_test=20)
    return folder


def _images(folder: Path) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            (folder / split / name).mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                pixels = np.full((12, 10, 3), 60 * c + 10 * i, np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i}.png")
    return folder


def _cifar(folder: Path, classes: int) -> Path:
    write_cifar(folder, classes, n=8)
    return folder


# name -> (files writer or None, expected shape, classes, class names (None: unknown), stats)
CASES = {
    "fashion-mnist": (_fashion, (1, 28, 28), 10, FASHION_MNIST_CLASSES, FASHION_MNIST.mean),
    "cifar10": (lambda d: _cifar(d, 10), (3, 32, 32), 10, CIFAR10.class_names, CIFAR10.mean),
    "cifar100": (lambda d: _cifar(d, 100), (3, 32, 32), 100, None, CIFAR100.mean),
    "imagefolder": (_images, (3, 8, 8), 2, ("cat", "dog"), (0.485, 0.456, 0.406)),
    "synthetic": (None, (1, 16, 16), 4, SYNTHETIC.class_names, (0.5,)),
    "idx": (lambda d: write_idx_folder(d, size=8, channels=3) and d, (3, 8, 8), 3, None, None),
}


def test_every_dataset_is_registered_and_tested() -> None:
    assert set(CASES) == set(DATASETS) == set(REGISTRY)
    assert not REGISTRY["idx"].flip_safe and REGISTRY["cifar10"].flip_safe


@pytest.mark.parametrize("name", sorted(CASES))
def test_registry_round_trip(tmp_path: Path, name: str) -> None:
    write, shape, classes, names, mean = CASES[name]
    folder = write(tmp_path / name) if write else None
    splits = load_dataset(name, folder, val_size=2, seed=0, image_size=8)
    info = splits.info
    assert (info.name, info.shape, info.num_classes, info.class_names) == (
        name, shape, classes, names,
    )  # fmt: skip
    if mean is not None:  # the established constants
        assert info.mean == tuple(mean)
    assert len(info.mean) in (1, shape[0]) and all(s > 0 for s in info.std)
    assert DatasetInfo.from_dict(info.to_dict()) == info
    train, val, test = make_loaders(splits, 4, 8, "cpu", augment=Augment(crop=True, flip=True))
    images, labels = next(iter(train))
    assert images.shape[1:] == shape and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and int(labels.max()) < classes
    assert val is not None and sum(len(y) for _, y in val) == 2
    assert sum(len(y) for _, y in test) == splits.count("test")
    # the record a run keeps gives back the same description without reading files
    config = {"data": {"dataset": name, "mean": list(info.mean), "std": list(info.std)}}
    assert recorded_info(config, {"dataset_info": info.to_dict()}) == info


def test_recorded_info_of_older_runs_uses_the_constants() -> None:
    old = {"data": {"dataset": "fashion-mnist"}, "model": {"in_channels": 1}}
    assert recorded_info(old) == FASHION_MNIST
    folder = {"data": {"dataset": "imagefolder", "image_size": 32}, "model": {"num_classes": 5}}
    assert recorded_info(folder).shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="not recorded in this run"):
        recorded_info({"data": {"dataset": "idx"}})


def test_unknown_dataset_and_double_registration() -> None:
    with pytest.raises(ConfigError, match="expected one of fashion-mnist, cifar10"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="registered twice"):
        register_dataset(DatasetEntry("idx", REGISTRY["idx"].read))


def test_loader_takes_indices_for_calibration(tmp_path: Path) -> None:
    """Calibration / selection images come from the same loader interface for every kind."""
    folder = _images(tmp_path / "imgs")
    for splits in (load_dataset("synthetic", subset=40), load_dataset("imagefolder", folder,
                                                                        image_size=8)):  # fmt: skip
        idx = torch.tensor([0, 2, 3])
        got = torch.cat([y for _, y in splits.loader("train", 2, "cpu", indices=idx, workers=0)])
        assert torch.equal(got, splits.labels("train")[idx])


@pytest.mark.parametrize(
    ("augment", "shifts", "flips"),
    [(Augment(), False, False), (Augment(crop=True), True, False),
     (Augment(flip=True), False, True), (Augment(crop=True, flip=True), True, True)],
)  # fmt: skip
def test_augment_choices_reach_the_loader(augment: Augment, shifts: bool, flips: bool) -> None:
    splits = load_dataset("synthetic", subset=64)
    train = splits.loader("train", 64, "cpu", seed=3, train=True, augment=augment)
    _, offsets, flipped = train.epoch_plan()
    assert bool((offsets != train.pad).any()) == shifts
    assert bool(flipped.any()) == flips


def test_stored_normalization_fills_older_runs_with_the_constants() -> None:
    fmnist = ((0.286,), (0.353,))
    assert stored_normalization({"dataset": "fashion-mnist"}) == fmnist
    assert (
        stored_normalization({"dataset": "fashion-mnist", "mean": [0.286], "std": [0.353]})
        == fmnist
    )
    assert stored_normalization({"dataset": "imagefolder"})[0] == (0.485, 0.456, 0.406)
    assert stored_normalization({"dataset": "idx"}) is None  # computed when read
    assert stored_normalization({"dataset": "idx", "mean": [0.3], "std": [0.4]}) == (
        (0.3,), (0.4,),
    )  # fmt: skip


@pytest.mark.parametrize(("height", "width", "pad"), [(8, 8, 1), (16, 16, 2), (28, 28, 4),
                                                      (32, 32, 4), (8, 30, 1)])  # fmt: skip
def test_crop_pad_is_an_eighth_of_the_side(height: int, width: int, pad: int) -> None:
    info = DatasetInfo("x", 2, 1, height, (0.5,), (0.5,), width=width)
    assert crop_pad(info) == pad
    splits = load_dataset("synthetic") if height == 16 else None
    if splits is not None:  # the loader uses it
        assert splits.loader("train", 8, "cpu", train=True).pad == 2


def test_a_dataset_registered_later_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from spikebridge.config import load_config

    monkeypatch.setitem(REGISTRY, "tiny", DatasetEntry("tiny", REGISTRY["synthetic"].read))
    config = load_config(overrides={"dataset": "tiny", "augment": "crop"})
    assert config.data.dataset == "tiny"
    assert load_dataset("tiny", subset=8).count("train") == 8
    with pytest.raises(ConfigError, match="Unknown dataset 'tinny'; expected one of .*tiny"):
        load_config(overrides={"dataset": "tinny"})
