"""CIFAR-10 / CIFAR-100 from the "python version" archives on a local path.

``data_dir`` may be the extracted folder (``cifar-10-batches-py/`` or
``cifar-100-python/``), its parent, or the ``.tar.gz`` itself (read in one pass
straight from the archive, nothing is extracted to disk). The batches are
pickles; they are loaded with a restricted unpickler that only rebuilds numpy
arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from spikebridge.errors import ConfigError, DataError

_CHANNELS, _SIZE = 3, 32
_ROW = _CHANNELS * _SIZE * _SIZE
_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _Layout:
    """File names of one CIFAR variant's python-version archive."""

    title: str
    num_classes: int
    folder: str
    tarball: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test

    @property
    def expected(self) -> str:
        return (
            f"the {self.title} python-version folder {self.folder}/, its parent, or {self.tarball}"
        )


_LAYOUTS = {
    10: _Layout(
        title="CIFAR-10",
        num_classes=10,
        folder="cifar-10-batches-py",
        tarball="cifar-10-python.tar.gz",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key=b"labels",
    ),
    100: _Layout(
        title="CIFAR-100",
        num_classes=100,
        folder="cifar-100-python",
        tarball="cifar-100-python.tar.gz",
        train=("train",),
        test=("test",),
        label_key=b"fine_labels",
    ),
}

# The only globals a CIFAR batch pickle needs (numpy arrays by protocol <= 4 and 5,
# numpy scalars, the bytes helper of protocol-2 pickles written by Python 3), under
# numpy 1 and numpy 2 module names.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.int64(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except those needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def _resolve(data_dir: Path, layout: _Layout) -> Path:
    """Return the folder holding the batch files, or the tarball, that ``data_dir`` points at."""
    for candidate in (data_dir, data_dir / layout.folder, data_dir / layout.tarball):
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and any((candidate / n).is_file() for n in layout.files):
            return candidate
    raise DataError(f"No {layout.title} data at {data_dir}; expected {layout.expected}.")


def _read_folder(folder: Path, layout: _Layout) -> dict[str, bytes]:
    """Read every batch file of ``layout`` from an extracted folder."""
    blobs = {}
    for name in layout.files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder} has no {name}; expected {layout.expected}.")
        blobs[name] = path.read_bytes()
    return blobs


def _read_tar(tarball: Path, layout: _Layout) -> dict[str, bytes]:
    """Read every batch file of ``layout`` from the archive in one sequential pass."""
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if member.isfile() and name in layout.files and name not in blobs:
                    blobs[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{tarball} is not a readable tar archive ({err}); expected {layout.expected}."
        ) from err
    missing = [name for name in layout.files if name not in blobs]
    if missing:
        raise DataError(f"{tarball} has no {missing[0]}; expected {layout.expected}.")
    return blobs


def _unpickle(blob: bytes, origin: str, layout: _Layout) -> dict[bytes, Any]:
    """Unpickle one batch into a dict, turning any failure into a ``DataError``."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"{origin} is not a readable pickle ({type(err).__name__}: {err}); "
            f"expected a {layout.title} python-version batch."
        ) from err
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        raise DataError(
            f"{origin} lacks the keys b'data' and {layout.label_key!r}; "
            f"expected a {layout.title} python-version batch."
        )
    return batch


def _in_range(labels: np.ndarray, layout: _Layout) -> bool:
    """Whether every integer label lies in ``0..num_classes - 1``."""
    return labels.size == 0 or (labels.min() >= 0 and labels.max() < layout.num_classes)


def _decode(blob: bytes, origin: str, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch into (uint8 [N, 3, 32, 32], int64 [N]) arrays, validated."""
    batch = _unpickle(blob, origin, layout)
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[layout.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DataError(
            f"{origin} holds b'data' of {data.dtype} {data.shape}; expected uint8 (N, {_ROW})."
        )
    if (
        labels.shape != (len(data),)
        or labels.dtype.kind not in "iu"
        or not _in_range(labels, layout)
    ):
        raise DataError(
            f"{origin} holds {labels.shape} labels; expected {len(data)} integers "
            f"in 0..{layout.num_classes - 1}."
        )
    return data.reshape(-1, _CHANNELS, _SIZE, _SIZE), labels.astype(np.int64)


def _stack(
    blobs: dict[str, bytes], names: tuple[str, ...], source: Path, layout: _Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and concatenate the named batches into (images, labels) tensors."""
    parts = [_decode(blobs[name], f"{source}/{name}", layout) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_cifar(data_dir: str | os.PathLike[str] | None, num_classes: int = 10) -> _Tensors:
    """Load CIFAR-10 or CIFAR-100 as ``(train_x, train_y, test_x, test_y)``.

    Images are uint8 ``[N, 3, 32, 32]`` (50000 train, 10000 test), labels int64 ``[N]``
    (CIFAR-100: the 100 fine labels). ``data_dir``: the extracted folder, its parent,
    or the ``.tar.gz``; there is no default location, so ``None`` raises ``DataError``.
    """
    if num_classes not in _LAYOUTS:
        raise ConfigError(f"CIFAR num_classes is {num_classes}; expected 10 or 100.")
    layout = _LAYOUTS[num_classes]
    if data_dir is None:
        raise DataError(
            f"{layout.title} has no default location; pass --data-dir with {layout.expected}."
        )
    source = _resolve(Path(data_dir), layout)
    blobs = _read_tar(source, layout) if source.is_file() else _read_folder(source, layout)
    train_x, train_y = _stack(blobs, layout.train, source, layout)
    test_x, test_y = _stack(blobs, layout.test, source, layout)
    return train_x, train_y, test_x, test_y
