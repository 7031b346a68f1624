"""The generic IDX dataset: any size, channel count and class count; clear errors."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from idx_files import idx_bytes, write_idx_folder

from spikebridge.data import load_dataset
from spikebridge.data.registry import training_statistics
from spikebridge.errors import ConfigError, DataError


@pytest.mark.parametrize(
    ("size", "channels", "classes", "gz"),
    [(8, 1, 3, True), (16, 1, 10, False), (8, 3, 10, False), (16, 3, 3, True)],
)
def test_idx_shape_classes_and_training_statistics(
    tmp_path: Path, size: int, channels: int, classes: int, gz: bool
) -> None:
    arrays = write_idx_folder(tmp_path, size, channels, classes, n_train=50, gz=gz)
    splits = load_dataset("idx", tmp_path, val_size=10, seed=1)
    info = splits.info
    assert info.name == "idx" and info.shape == (channels, size, size)
    assert info.num_classes == classes and splits.train_x.shape[1:] == (channels, size, size)
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (40, 10, 30)
    # channels-last files come back channels-first, pixel for pixel
    first = torch.from_numpy(arrays["test_x"][0]).reshape(size, size, channels).permute(2, 0, 1)
    assert torch.equal(splits.test_x[0], first)
    # normalization: per channel, from the 40 training images only (not val, not test)
    pixels = splits.train_x.double().div(255).transpose(0, 1).reshape(channels, -1)
    assert len(info.mean) == channels
    np.testing.assert_allclose(info.mean, pixels.mean(1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(info.std, pixels.std(1, unbiased=False).numpy(), rtol=1e-9)
    batch, labels = next(iter(splits.loader("train", 40, "cpu")))
    assert batch.shape == (40, channels, size, size) and labels.max() < classes
    # normalized training images: mean 0 and std 1 per channel
    flat = batch.transpose(0, 1).reshape(channels, -1).double()
    np.testing.assert_allclose(flat.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1, unbiased=False).numpy(), 1, atol=1e-4)


def test_given_statistics_win(tmp_path: Path) -> None:
    write_idx_folder(tmp_path, channels=3)
    splits = load_dataset("idx", tmp_path, mean=(0.5,), std=(0.25, 0.5, 1.0))
    assert splits.info.mean == (0.5,) and splits.info.std == (0.25, 0.5, 1.0)
    with pytest.raises(ConfigError, match="mean has 2 values; expected 1 or 3"):
        load_dataset("idx", tmp_path, mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match="std is"):
        load_dataset("idx", tmp_path, std=(0.0,))


def test_non_square_and_statistics_in_chunks(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5000, 4, 6, 2)).astype(np.uint8)
    labels = (np.arange(5000) % 2).astype(np.uint8)
    for name, array in (("train-images-idx4-ubyte", images), ("train-labels-idx1-ubyte", labels),
                        ("t10k-images-idx4-ubyte", images[:7]),
                        ("t10k-labels-idx1-ubyte", labels[:7])):  # fmt: skip
        (tmp_path / name).write_bytes(idx_bytes(array))
    splits = load_dataset("idx", tmp_path, val_size=0)
    assert splits.info.shape == (2, 4, 6) and splits.info.image_size == 6
    mean, std = training_statistics(splits.train_x)  # 5000 images: two chunks
    pixels = torch.from_numpy(images).double().div(255).reshape(-1, 2)
    np.testing.assert_allclose(mean, pixels.mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0, unbiased=False).numpy(), rtol=1e-9)


def _corrupt(folder: Path, case: str) -> None:
    images = folder / "train-images-idx3-ubyte.gz"
    if case == "missing":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    elif case == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-5]))
    elif case == "bad gzip":
        images.write_bytes(images.read_bytes()[:30])
    elif case == "magic":
        images.write_bytes(gzip.compress(b"\x01\x02\x08\x03" + bytes(20)))
    elif case == "labels":
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3))))
    elif case == "one class":
        for split, n in (("train", 60), ("t10k", 30)):
            data = gzip.compress(idx_bytes(np.zeros(n, np.uint8)))
            (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(data)
    elif case == "shapes":
        test = folder / "t10k-images-idx3-ubyte.gz"
        test.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 9, 9), np.uint8))))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "has neither t10k-labels-idx1-ubyte.gz nor t10k-labels-idx1-ubyte"),
        ("truncated", "payload bytes but its header"),
        ("bad gzip", "truncated or corrupt gzip file"),
        ("magic", "bad magic number"),
        ("labels", "expected 60 non-negative integer labels"),
        ("one class", "labels of one class only"),
        ("shapes", "expected one image shape"),
    ],
)
def test_bad_idx_folder_is_one_sentence(tmp_path: Path, case: str, message: str) -> None:
    write_idx_folder(tmp_path)
    _corrupt(tmp_path, case)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("idx", tmp_path)
    text = str(info.value)
    assert "\n" not in text and text.endswith(".") and str(tmp_path) in text


def test_idx_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--dataset idx needs --data-dir"):
        load_dataset("idx")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("idx", tmp_path / "absent")


def test_fashion_mnist_refuses_other_idx_folders(tmp_path: Path) -> None:
    write_idx_folder(tmp_path, size=8)
    with pytest.raises(DataError, match="read other IDX folders with --dataset idx"):
        load_dataset("fashion-mnist", tmp_path)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 12), width=st.integers(1, 12), channels=st.integers(1, 4),
    classes=st.integers(2, 5), n_train=st.integers(5, 20), gz=st.booleans(),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_any_idx_folder_round_trips(
    height: int, width: int, channels: int, classes: int, n_train: int, gz: bool, seed: int
) -> None:
    """Whatever the shape: the images come back channels-first, bit for bit, with the class
    count of the labels."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, *shape)).astype(np.uint8),
        "train-labels": (np.arange(n_train) % classes).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (3, *shape)).astype(np.uint8),
        "t10k-labels": np.zeros(3, np.uint8),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for stem, array in arrays.items():
            data = idx_bytes(array)
            name = f"{stem}-idx{array.ndim}-ubyte" + (".gz" if gz else "")
            Path(tmp, name).write_bytes(gzip.compress(data) if gz else data)
        splits = load_dataset("idx", tmp, val_size=0)
    expected = torch.from_numpy(arrays["train-images"]).reshape(n_train, height, width, channels)
    assert torch.equal(splits.train_x, expected.permute(0, 3, 1, 2))
    assert splits.info.shape == (channels, height, width)
    assert splits.info.num_classes == classes
