"""Folders of IDX files (the MNIST layout), of any image size, channel count and class count.

A folder holds four files, each gzip-compressed (``.gz``) or plain::

    train-images-idx3-ubyte   train-labels-idx1-ubyte
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

Images are unsigned bytes: 3-D ``(N, H, W)`` files are one channel; 4-D ``(N, H, W, C)``
files (channels last, as image libraries write pixels; named ``*-idx4-ubyte``) are ``C``
channels. Labels are 1-D non-negative integers; the class count is the largest label of
either file plus one. Every check names the file and what was expected (``DataError``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from spikebridge.errors import DataError

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
IMAGE_STEMS = {"train": "train-images-idx{}-ubyte", "test": "t10k-images-idx{}-ubyte"}
LABEL_STEMS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
LAYOUT = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each optionally .gz; idx4 for N x H x W x C images)"
)
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


def find_file(data_dir: Path, stems: tuple[str, ...]) -> Path:
    """The first of ``stem.gz`` / ``stem`` (for each stem in turn) inside ``data_dir``."""
    for stem in stems:
        for name in (f"{stem}.gz", stem):
            if (data_dir / name).is_file():
                return data_dir / name
    raise DataError(
        f"{data_dir} has neither {stems[0]}.gz nor {stems[0]}; expected the IDX files {LAYOUT}."
    )


def _as_images(images: np.ndarray, path: Path) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> uint8 tensor ``[N, C, H, W]``."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or 0 in images.shape[1:]:
        raise DataError(
            f"{path} holds {images.dtype} {images.shape}; expected unsigned-byte images "
            "(N, H, W) or (N, H, W, C)."
        )
    tensor = torch.from_numpy(images)
    return tensor.unsqueeze(1) if images.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


def _as_labels(labels: np.ndarray, count: int, path: Path, image_name: str) -> torch.Tensor:
    """Integer ``(N,)`` labels >= 0 matching ``count`` images -> int64 tensor."""
    if labels.dtype.kind not in "iu" or labels.shape != (count,) or (labels < 0).any():
        raise DataError(
            f"{path} holds {labels.dtype} {labels.shape}; expected {count} non-negative "
            f"integer labels to match {image_name}."
        )
    return torch.from_numpy(labels.astype(np.int64))


def load_idx_pair(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split (``train`` or ``test``) as (uint8 ``[N, C, H, W]``, int64 ``[N]``)."""
    stems = tuple(IMAGE_STEMS[split].format(d) for d in (3, 4))
    image_path = find_file(data_dir, stems)
    label_path = find_file(data_dir, (LABEL_STEMS[split],))
    images = _as_images(read_idx(image_path), image_path)
    labels = _as_labels(read_idx(label_path), len(images), label_path, image_path.name)
    return images, labels


def load_idx_folder(data_dir: str | os.PathLike[str]) -> _Tensors:
    """Read an IDX folder as ``(train_x, train_y, test_x, test_y)``: uint8 ``[N, C, H, W]``
    images and int64 labels; train and test images must have the same shape."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"IDX folder {data_dir} does not exist; expected a folder with {LAYOUT}.")
    train_x, train_y = load_idx_pair(data_dir, "train")
    test_x, test_y = load_idx_pair(data_dir, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{data_dir} has training images of shape {tuple(train_x.shape[1:])} but test "
            f"images of {tuple(test_x.shape[1:])}; expected one image shape (C, H, W)."
        )
    if len(train_y) == 0:
        raise DataError(f"{data_dir} has no training images; expected at least one.")
    return train_x, train_y, test_x, test_y


def class_count(train_y: torch.Tensor, test_y: torch.Tensor, where: Path) -> int:
    """The class count of IDX labels: the largest label plus one (at least 2 classes)."""
    top = int(max(train_y.max(), test_y.max() if len(test_y) else 0))
    if top < 1:
        raise DataError(
            f"{where} has labels of one class only; expected labels 0..K-1 with K >= 2."
        )
    return top + 1
