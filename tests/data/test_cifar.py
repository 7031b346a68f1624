"""CIFAR-10/100 python-version archives: folder, parent, tarball; corrupt and hostile files."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikebridge.data.cifar import load_cifar
from spikebridge.errors import ConfigError, DataError

CIFAR10 = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
CIFAR100 = ("cifar-100-python", ["train"], ["test"])


def _batch(rng: np.random.Generator, n: int, num_classes: int) -> dict[bytes, object]:
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    if num_classes == 10:
        return {b"batch_label": b"tiny", b"data": data, b"labels": labels}
    coarse = [label // 5 for label in labels]
    return {b"data": data, b"fine_labels": labels, b"coarse_labels": coarse}


def write_cifar(parent: Path, num_classes: int, n: int = 3, protocol: int = 2) -> dict:
    """Write a tiny archive folder under ``parent``; return the expected tensors."""
    folder_name, train, test = CIFAR10 if num_classes == 10 else CIFAR100
    folder = parent / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(num_classes)
    expected = {}
    for split, names in (("train", train), ("test", test)):
        batches = [_batch(rng, n, num_classes) for _ in names]
        for name, batch in zip(names, batches, strict=True):
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        key = b"labels" if num_classes == 10 else b"fine_labels"
        data = np.concatenate([b[b"data"] for b in batches])
        expected[f"{split}_x"] = torch.from_numpy(data.reshape(-1, 3, 32, 32))
        expected[f"{split}_y"] = torch.tensor(sum((b[key] for b in batches), []))
    return expected


def make_tarball(parent: Path, folder_name: str, tar_path: Path) -> Path:
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(parent / folder_name, arcname=folder_name)
    return tar_path


def _check(loaded: tuple[torch.Tensor, ...], expected: dict) -> None:
    train_x, train_y, test_x, test_y = loaded
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.equal(train_x, expected["train_x"]) and torch.equal(train_y, expected["train_y"])
    assert torch.equal(test_x, expected["test_x"]) and torch.equal(test_y, expected["test_y"])


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_folder_and_parent(tmp_path: Path, num_classes: int, protocol: int) -> None:
    expected = write_cifar(tmp_path, num_classes, protocol=protocol)
    folder_name = CIFAR10[0] if num_classes == 10 else CIFAR100[0]
    _check(load_cifar(tmp_path, num_classes), expected)
    _check(load_cifar(tmp_path / folder_name, num_classes), expected)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_tarball_and_its_parent(tmp_path: Path, num_classes: int) -> None:
    expected = write_cifar(tmp_path / "src", num_classes)
    folder_name = CIFAR10[0] if num_classes == 10 else CIFAR100[0]
    tar_name = "cifar-10-python.tar.gz" if num_classes == 10 else "cifar-100-python.tar.gz"
    (tmp_path / "dl").mkdir()
    tar_path = make_tarball(tmp_path / "src", folder_name, tmp_path / "dl" / tar_name)
    _check(load_cifar(tar_path, num_classes), expected)
    _check(load_cifar(tmp_path / "dl", num_classes), expected)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [tar_name]  # nothing extracted


def test_channel_layout_is_chw(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10)
    raw = pickle.loads((tmp_path / CIFAR10[0] / "data_batch_1").read_bytes())[b"data"]
    train_x = load_cifar(tmp_path, 10)[0]
    red = torch.from_numpy(raw[0, :1024].reshape(32, 32))
    blue = torch.from_numpy(raw[0, 2048:].reshape(32, 32))
    assert torch.equal(train_x[0, 0], red) and torch.equal(train_x[0, 2], blue)


def test_corrupt_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10)
    path = tmp_path / CIFAR10[0] / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar(tmp_path, 10)


class _Hostile:
    """Unpickling this would create a file: the loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_pickle_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10)
    marker = tmp_path / "pwned"
    batch = {b"data": _Hostile(marker), b"labels": []}
    (tmp_path / CIFAR10[0] / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar(tmp_path, 10)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "keys"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ([1, 2, 3], "keys"),
    ],
)
def test_malformed_batch(tmp_path: Path, batch: object, words: str) -> None:
    write_cifar(tmp_path, 10)
    (tmp_path / CIFAR10[0] / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="data_batch_2") as info:
        load_cifar(tmp_path, 10)
    assert words in str(info.value)


def test_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar(tmp_path, 10)
    with pytest.raises(DataError, match="data-dir"):
        load_cifar(None, 100)
    write_cifar(tmp_path, 10)
    (tmp_path / CIFAR10[0] / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5"):
        load_cifar(tmp_path, 10)


def test_broken_tarballs(tmp_path: Path) -> None:
    write_cifar(tmp_path / "src", 10)
    (tmp_path / "src" / CIFAR10[0] / "test_batch").unlink()
    partial = make_tarball(tmp_path / "src", CIFAR10[0], tmp_path / "partial.tar.gz")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar(partial, 10)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(partial.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated.tar.gz"):
        load_cifar(truncated, 10)


def test_bad_num_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="10 or 100"):
        load_cifar(tmp_path, 20)
