"""scikit-learn's digits (1797 8x8 images, 10 classes) written as IDX files: a second,
unseen dataset for the conversion checks (issue 23, item 4; docs/RESULTS.md, "ttrbr beyond
its tuning T") and the generic IDX reader (issue 22, item 5; "Datasets beyond the built-in").

    python benchmarks/digits_idx.py --out runs/digits             # 28x28, as Fashion-MNIST
    python benchmarks/digits_idx.py --out runs/digits8 --size 8   # native 8x8: --dataset idx

Images are upscaled bilinearly to ``--size`` (default 28; 8 keeps them as they are; values
0..16 -> 0..255), shuffled with a fixed seed and split 1400 train / 397 test. Needs
scikit-learn (``pip install scikit-learn``), which spikebridge itself does not depend on.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TRAIN = 1400  # the remaining 397 images are the test file
SIZE = 28


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic (0, 0, 0x08, ndim), big-endian dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def digits_28(seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``[N, size, size]`` images and uint8 labels, shuffled."""
    from sklearn.datasets import load_digits  # an optional benchmark dependency

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], data.target.astype(np.uint8)[order]


def write(out: Path, seed: int = 0, size: int = SIZE) -> None:
    """train-/t10k- images/labels ``.gz`` files in ``out`` (refuses to overwrite)."""
    images, labels = digits_28(seed, size)
    parts = {
        "train-images-idx3-ubyte.gz": images[:TRAIN], "train-labels-idx1-ubyte.gz": labels[:TRAIN],
        "t10k-images-idx3-ubyte.gz": images[TRAIN:], "t10k-labels-idx1-ubyte.gz": labels[TRAIN:],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for name, array in parts.items():
        path = out / name
        if path.exists():
            raise SystemExit(f"{path} exists; choose another --out")
        path.write_bytes(gzip.compress(idx_bytes(array)))
    print(f"wrote {len(parts)} files to {out}: {TRAIN} train / {len(images) - TRAIN} test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the IDX files")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    parser.add_argument("--size", type=int, default=SIZE, help="image side (default: 28; 8 = "
                        "the native images, read with --dataset idx)")  # fmt: skip
    args = parser.parse_args()
    write(args.out, args.seed, args.size)


if __name__ == "__main__":
    main()
