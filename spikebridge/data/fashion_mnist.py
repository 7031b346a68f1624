"""Fashion-MNIST: an IDX folder (:mod:`spikebridge.data.idx`) of 28 x 28 grey images in
10 named classes.

The default folder is where Debian's ``dataset-fashion-mnist`` package puts the
files, so a machine with the package needs no configuration and no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spikebridge.data.idx import (
    IDX_DTYPES,
    IMAGE_STEMS,
    LABEL_STEMS,
    find_file,
    load_idx_folder,
    read_idx,
)
from spikebridge.data.spec import FASHION_MNIST
from spikebridge.errors import DataError

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "IDX_DTYPES", "load_fashion_mnist", "read_idx"]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check(data_dir: Path, images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    """Fashion-MNIST's shape and classes: anything else is another dataset (``idx``)."""
    shape, classes = FASHION_MNIST.shape, FASHION_MNIST.num_classes
    if tuple(images.shape[1:]) != shape:
        path = find_file(data_dir, tuple(IMAGE_STEMS[split].format(d) for d in (3, 4)))
        raise DataError(
            f"{path} holds images of shape {tuple(images.shape[1:])}; expected "
            f"Fashion-MNIST's {shape} (read other IDX folders with --dataset idx)."
        )
    if len(labels) and int(labels.max()) >= classes:
        path = find_file(data_dir, (LABEL_STEMS[split],))
        raise DataError(
            f"{path} has label {int(labels.max())}; expected Fashion-MNIST's labels "
            f"0..{classes - 1} (read other IDX folders with --dataset idx)."
        )


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
    train_x, train_y, test_x, test_y = load_idx_folder(data_dir)
    _check(data_dir, train_x, train_y, "train")
    _check(data_dir, test_x, test_y, "test")
    return train_x, train_y, test_x, test_y
