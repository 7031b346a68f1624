"""Writers of tiny IDX folders (MNIST layout) for the registry, IDX and CLI tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = {
    "train_x": "train-images-idx{}-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx{}-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic (0, 0, 0x08, ndim), big-endian dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def class_images(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator):
    """Learnable images: class ``k`` is a bright bar at row ``k * size // K`` (+ noise);
    ``(N, H, W)`` for one channel, ``(N, H, W, C)`` (channels last) for more."""
    classes = int(labels.max()) + 1
    images = rng.integers(0, 60, (len(labels), size, size, channels))
    for i, k in enumerate(labels):
        row = int(k) * size // classes
        images[i, row : row + max(1, size // classes), :, :] = 200 + 10 * np.arange(channels)
    images = images.astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def write_idx_folder(
    folder: Path, size: int = 8, channels: int = 1, classes: int = 3, n_train: int = 60,
    n_test: int = 30, gz: bool = True, seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Write the four IDX files of a tiny dataset into ``folder``; return the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        arrays[f"{split}_x"] = class_images(labels, size, channels, rng)
        arrays[f"{split}_y"] = labels
    for key, array in arrays.items():
        name = NAMES[key].format(array.ndim) if key.endswith("_x") else NAMES[key]
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays
