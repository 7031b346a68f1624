"""Memory a training run needs, estimated from the model's shape, T and the batch size.

A run whose size cannot fit (``--width 1e6``, ``--neuron lif --timesteps 100000``) is refused
before anything is allocated, with the estimate, instead of failing in the allocator or being
killed by the kernel after a long wait. The estimate counts, in float32:

- **parameters** (conv weights, BatchNorm scale and shift, the classifier), held
  :data:`PARAMETER_COPIES` times: weights, gradients, optimizer momentum, the selected copy;
- **activations** kept for the backward pass: every convolution's output map (C x H x W per
  image), :data:`SAVED_PER_CONV` times (its output, the BatchNorm output and the activation
  or spike output; a spiking site also keeps its membrane potential) for every image of the
  batch and, in a spiking network, every time-step (BPTT keeps all T steps).

It leaves out workspace, allocator slack and the data, so it is a lower bound of what the
run takes: a run refused by it cannot fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig
from spikebridge.models.registry import ARCHITECTURES

BYTES_PER_FLOAT = 4
PARAMETER_COPIES = 4  # weights, gradients, momentum, the selected (best) copy
SAVED_PER_CONV = {False: 3, True: 4}  # ANN: conv, BN, activation; SNN: + membrane potential
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    """Sizes of one training step: ``parameters`` and ``activations`` (floats per image and
    time-step, all convolution outputs) for ``batch`` images at ``timesteps`` steps."""

    parameters: int
    activations: int
    batch: int
    timesteps: int
    spiking: bool

    @property
    def parameter_bytes(self) -> int:
        return PARAMETER_COPIES * self.parameters * BYTES_PER_FLOAT

    @property
    def activation_bytes(self) -> int:
        saved = SAVED_PER_CONV[self.spiking] * self.activations
        return saved * self.batch * self.timesteps * BYTES_PER_FLOAT

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes


def _down(size: int) -> int:
    """Spatial size after a stride-2 convolution or pooling (kernel 3 pad 1, 1 pad 0, 7 pad 3)."""
    return (size - 1) // 2 + 1


class _Counter:
    """Accumulates the parameters and output floats of convolutions at the current size."""

    def __init__(self, size: int) -> None:
        self.size, self.parameters, self.activations = size, 0, 0

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        self.size = _down(self.size) if stride == 2 else self.size
        self.parameters += cin * cout * kernel * kernel + 2 * cout  # weight, BN scale + shift
        self.activations += cout * self.size * self.size


def _stem(count: _Counter, cfg: ModelConfig, channels: int) -> None:
    if cfg.stem == "3x3":
        count.size += 2 * cfg.stem_padding - 2
        count.conv(cfg.in_channels, channels, 3)
        return
    count.conv(cfg.in_channels, channels, 7, stride=2)
    if cfg.stem_pool != "none":
        count.size = _down(count.size)


def _block(count: _Counter, block: str, cin: int, planes: int, stride: int) -> int:
    """Count one residual block; return its output channels."""
    cout = planes * EXPANSION[block]
    size = count.size
    if block == "basic":
        count.conv(cin, planes, 3, stride)
        count.conv(planes, planes, 3)
    else:
        count.conv(cin, planes, 1)
        count.conv(planes, planes, 3, stride)
        count.conv(planes, cout, 1)
    if stride != 1 or cin != cout:  # projection shortcut, at the block's output size
        out_size, count.size = count.size, size
        count.conv(cin, cout, 1, stride)
        count.size = out_size
    return cout


def estimate_training_memory(cfg: ModelConfig, image_size: int, batch: int) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of training ``cfg`` on ``image_size`` x ``image_size``
    images in batches of ``batch``, computed from the architecture (nothing is built)."""
    block, layers, widths = ARCHITECTURES[cfg.name]
    chans = [max(1, round(w * cfg.width)) for w in widths]
    count = _Counter(image_size)
    _stem(count, cfg, chans[0])
    cin = chans[0]
    for i, (n, planes) in enumerate(zip(layers, chans, strict=True)):
        for j in range(n):
            cin = _block(count, block, cin, planes, 2 if i > 0 and j == 0 else 1)
    count.parameters += cin * cfg.num_classes + cfg.num_classes
    spiking = cfg.neuron is not None
    return MemoryEstimate(
        count.parameters, count.activations, batch, cfg.timesteps if spiking else 1, spiking
    )


def available_bytes(device_type: str = "cpu") -> int | None:
    """Memory free for a new run: the CUDA device's free memory, else the host's
    ``MemAvailable`` (Linux) or free pages; None when unknown."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; binary units up to PiB, then powers of ten of PiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_fits(cfg: ModelConfig, image_size: int, batch: int, device_type: str = "cpu") -> None:
    """ConfigError, with the estimate, when training ``cfg`` cannot fit in the memory free on
    ``device_type`` (``cpu`` or ``cuda``); nothing has been allocated yet."""
    need, free = estimate_training_memory(cfg, image_size, batch), available_bytes(device_type)
    if free is None or need.total_bytes <= free:
        return
    at_t = f" at T = {need.timesteps}" if need.spiking else ""
    raise ConfigError(
        f"model {cfg.name} at width {cfg.width:g} needs at least "
        f"{format_bytes(need.total_bytes)} to train ({format_bytes(need.parameter_bytes)} for "
        f"{need.parameters:,} parameters with gradients and optimizer state, "
        f"{format_bytes(need.activation_bytes)} of activations for a batch of {batch}{at_t}) "
        f"but {format_bytes(free)} of {device_type} memory is free; lower --width, "
        "--batch-size or --timesteps."
    )
