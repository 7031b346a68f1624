"""A small generated image dataset for tests and smoke runs: no files, learnable in seconds.

Class ``k`` is a sinusoidal grating, horizontal for even ``k`` and vertical for odd
``k``, with ``1 + k // 2`` cycles across the image. Phase, frequency and contrast are
jittered per image and Gaussian noise is added, so a tiny convolutional network
must learn orientation and frequency. Both properties survive the loader's random
crop and horizontal flip, so augmentation never turns one class into another.
"""

from __future__ import annotations

import math

import torch

from spikebridge.errors import ConfigError

_Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

BACKGROUND = 0.5  # mid-grey, matching the synthetic normalization mean
FREQUENCY_JITTER = 0.15  # +- cycles per image, well below the 1-cycle class spacing
NOISE_STD = 0.12  # additive Gaussian noise, in [0, 1] intensity units


def _balanced_labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Return ``n`` labels with class counts differing by at most one, in random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=gen)]


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` from ``gen``."""
    return low + (high - low) * torch.rand(shape, generator=gen)


def _gratings(labels: torch.Tensor, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Render one noisy grating per label as uint8 ``[N, channels, size, size]``."""
    n = len(labels)
    cycles = 1.0 + (labels // 2).double() + _uniform((n,), -FREQUENCY_JITTER, FREQUENCY_JITTER, gen)
    phase = _uniform((n,), 0.0, 2 * math.pi, gen)
    contrast = _uniform((n, channels), 0.25, 0.45, gen)
    axis = torch.arange(size, dtype=torch.float64) / size  # [0, 1) across the image
    wave = torch.cos(2 * math.pi * cycles[:, None] * axis + phase[:, None])  # [N, size]
    vertical = (labels % 2 == 1)[:, None, None]
    pattern = torch.where(vertical, wave[:, None, :], wave[:, :, None])  # [N, size, size]
    images = BACKGROUND + contrast[:, :, None, None] * pattern[:, None]
    images = images + NOISE_STD * torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def make_synthetic(
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 4,
    in_channels: int = 1,
    image_size: int = 16,
    seed: int = 0,
) -> _Tensors:
    """Generate ``(train_x, train_y, test_x, test_y)``: uint8 ``[N, C, S, S]``, int64 ``[N]``.

    Deterministic for a ``seed`` on every machine (CPU generator, float64 maths).
    Classes are balanced within each split. ``num_classes`` is limited so that the
    finest grating (``1 + (num_classes - 1) // 2`` cycles) keeps >= 3 pixels per cycle.
    """
    max_classes = 2 * (image_size // 3)
    if not 2 <= num_classes <= max_classes:
        raise ConfigError(
            f"Synthetic num_classes is {num_classes}; expected 2..{max_classes} "
            f"for image_size {image_size}."
        )
    if num_train < 1 or num_test < 1 or in_channels < 1:
        raise ConfigError("Synthetic num_train, num_test and in_channels must all be >= 1.")
    gen = torch.Generator().manual_seed(seed)
    train_y = _balanced_labels(num_train, num_classes, gen)
    test_y = _balanced_labels(num_test, num_classes, gen)
    train_x = _gratings(train_y, in_channels, image_size, gen)
    test_x = _gratings(test_y, in_channels, image_size, gen)
    return train_x, train_y, test_x, test_y
