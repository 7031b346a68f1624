"""IDX reader and Fashion-MNIST loader: round trips, corrupt files, the real dataset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    IDX_DTYPES,
    load_fashion_mnist,
    read_idx,
)
from spikebridge.errors import DataError

_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_DTYPES.items()}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (magic, big-endian dims, big-endian payload)."""
    code = _CODES[array.dtype.newbyteorder("=").str]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path`` as IDX, gzip-compressed when the name ends in .gz."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trip(tmp_path: Path, name: str, dtype: str) -> None:
    array = (np.arange(2 * 3 * 5) * 7 % 120).astype(dtype).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / name, array))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # the result is writable (no read-only buffer handed to torch)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    compress=st.booleans(),
)
def test_read_idx_any_shape(
    tmp_path_factory: pytest.TempPathFactory, shape, seed, compress
) -> None:
    array = np.random.default_rng(seed).integers(-(2**15), 2**15, size=shape).astype(">i2")
    path = tmp_path_factory.mktemp("idx") / ("x.gz" if compress else "x")
    np.testing.assert_array_equal(read_idx(write_idx(path, array)), array)


def _error_for(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_truncated_payload_names_the_file(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    assert "truncated" in _error_for(tmp_path / "short-idx3-ubyte", data[:-10])
    assert "truncated" in _error_for(tmp_path / "long-idx3-ubyte", data + b"\0")


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    _error_for(tmp_path / "short-idx3-ubyte.gz", packed[: len(packed) // 2])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\0", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\0", "type code"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "header"),
        (b"\x00\x00", "magic"),
        (b"", "magic"),
    ],
)
def test_malformed_header(tmp_path: Path, content: bytes, words: str) -> None:
    assert words in _error_for(tmp_path / "bad-idx1-ubyte", content)


def test_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


def _write_fashion(folder: Path, n_train: int = 6, n_test: int = 4, size: int = 28) -> None:
    rng = np.random.default_rng(0)
    for prefix, n, ext in (("train", n_train, ".gz"), ("t10k", n_test, "")):
        images = rng.integers(0, 256, (n, size, size)).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


def test_load_tiny_folder_gz_and_plain(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    train_x, train_y, test_x, test_y = load_fashion_mnist(tmp_path)
    assert train_x.shape == (6, 1, 28, 28) and test_x.shape == (4, 1, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert train_y.tolist() == [0, 1, 2, 3, 4, 5] and test_y.tolist() == [0, 1, 2, 3]
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(train_x[:, 0], torch.from_numpy(raw))


def test_missing_folder_suggests_package(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path / "absent")
    message = str(info.value)
    assert "absent" in message and "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message


def test_missing_file_in_folder(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_wrong_image_size_and_label_count(tmp_path: Path) -> None:
    _write_fashion(tmp_path, size=27)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path)
    _write_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_real_fashion_mnist() -> None:
    if not Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip(
            f"{DEFAULT_FASHION_MNIST_DIR} is absent (apt-get install dataset-fashion-mnist)"
        )
    train_x, train_y, test_x, test_y = load_fashion_mnist()
    assert train_x.shape == (60000, 1, 28, 28) and train_y.shape == (60000,)
    assert test_x.shape == (10000, 1, 28, 28) and test_y.shape == (10000,)
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert abs(train_x.float().mean().item() / 255 - 0.2860) < 1e-3
