"""Fashion-MNIST from its IDX files (gzip-compressed or plain).

The default folder is where Debian's ``dataset-fashion-mnist`` package puts the
files, so a machine with the package needs no configuration and no download.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from spikebridge.data.spec import FASHION_MNIST
from spikebridge.errors import DataError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_FORMAT = "an IDX file (magic 0x0000, type code, ndim, big-endian dims, payload)"

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, decompressed when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}); expected {_IDX_FORMAT}.") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path} is a truncated or corrupt gzip file ({err}); expected {_IDX_FORMAT}."
        ) from err


def _parse_header(path: Path, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the IDX header and return (dtype, dims, header length in bytes)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path} has a bad magic number {data[:4].hex()!r}; expected {_IDX_FORMAT}."
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(
            f"{path} has unknown IDX type code 0x{code:02x}; expected one of "
            f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}."
        )
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise DataError(f"{path} has a truncated header ({ndim} dims); expected {_IDX_FORMAT}.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return np.dtype(IDX_DTYPES[code]), dims, header_len


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a native-endian numpy array of shape ``dims``.

    The magic number, type code, dimensions and payload length are checked, so a
    truncated or padded file raises ``DataError`` naming it instead of returning garbage.
    """
    path = Path(path)
    data = _read_bytes(path)
    dtype, dims, offset = _parse_header(path, data)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(
            f"{path} has {len(data) - offset} payload bytes but its header {dims} of "
            f"{dtype.name} needs {expected}; the file is truncated or corrupt."
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=offset)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _find_file(data_dir: Path, stem: str) -> Path:
    """Return ``stem.gz`` or ``stem`` inside ``data_dir``, preferring the compressed file."""
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(
        f"{data_dir} has neither {stem}.gz nor {stem}; expected the four Fashion-MNIST IDX files."
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Check shapes, dtypes and label range of one images/labels pair."""
    size = FASHION_MNIST.image_size
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise DataError(
            f"{image_path} holds {images.dtype} {images.shape}; expected uint8 images "
            f"of shape (N, {size}, {size})."
        )
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataError(
            f"{label_path} holds {labels.dtype} {labels.shape}; expected {len(images)} "
            f"uint8 labels to match {image_path.name}."
        )
    if labels.size and int(labels.max()) >= FASHION_MNIST.num_classes:
        raise DataError(
            f"{label_path} has label {int(labels.max())}; expected labels in "
            f"0..{FASHION_MNIST.num_classes - 1}."
        )


def _load_pair(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as (uint8 [N, 1, 28, 28], int64 [N]) tensors."""
    image_path = _find_file(data_dir, _FILES[f"{split}_x"])
    label_path = _find_file(data_dir, _FILES[f"{split}_y"])
    images, labels = read_idx(image_path), read_idx(label_path)
    _check_pair(images, labels, image_path, label_path)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def load_fashion_mnist(data_dir: str | os.PathLike[str] = DEFAULT_FASHION_MNIST_DIR) -> _Tensors:
    """Load Fashion-MNIST as ``(train_x, train_y, test_x, test_y)``.

    Images are uint8 ``[N, 1, 28, 28]`` (60000 train, 10000 test), labels int64 ``[N]``.
    Both ``*-ubyte.gz`` and uncompressed ``*-ubyte`` file names are accepted.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {data_dir} does not exist; install it with "
            "`apt-get install dataset-fashion-mnist` or pass --data-dir pointing at a "
            "folder holding the four IDX files."
        )
    train_x, train_y = _load_pair(data_dir, "train")
    test_x, test_y = _load_pair(data_dir, "test")
    return train_x, train_y, test_x, test_y
