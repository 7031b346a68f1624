"""Memory a training run needs, estimated from the model's shape, T and the batch size.

A run whose size cannot fit (``--width 1e6``, ``--neuron lif --timesteps 100000``) is refused
before anything is allocated, with the estimate, instead of failing in the allocator or being
killed by the kernel after a long wait. The estimate counts, in float32:

- **parameters** (conv weights, BatchNorm scale and shift, the classifier), held
  :data:`PARAMETER_COPIES` times: weights, gradients, optimizer momentum, the selected copy;
- **activations** kept for the backward pass: every convolution's output map (C x H x W per
  image), :data:`SAVED_PER_CONV` times (the convolution output, which BatchNorm keeps, and
  the activation output, which the next convolution keeps; a spiking site also keeps its
  membrane potential for the surrogate gradient) for every image of the batch and, in a
  spiking network, every time-step (BPTT keeps all T steps).

Evaluating keeps no activations for a backward pass, but a spiking network simulates all T
steps of a layer at once (time folded into the batch): its peak holds at least
:data:`LIVE_AT_INFERENCE` tensors the size of the largest convolution output (that output
and the layer input or residual it is added to), for the whole batch and every step.

It leaves out workspace, allocator slack and the data, so it is a lower bound of what the
run takes: a run refused by it cannot fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from spikebridge.config import Config
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig
from spikebridge.models.registry import ARCHITECTURES

BYTES_PER_FLOAT = 4
PARAMETER_COPIES = 4  # weights, gradients, momentum, the selected (best) copy
SAVED_PER_CONV = {False: 2, True: 3}  # ANN: conv and activation outputs; SNN: + membrane
LIVE_AT_INFERENCE = 2  # evaluation: the largest output and the input or residual beside it
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    """Sizes of one step: ``parameters``, ``activations`` (floats per image and time-step, all
    convolution outputs) and ``largest`` (the largest single convolution output, same unit),
    for ``batch`` images at ``timesteps`` steps."""

    parameters: int
    activations: int
    largest: int
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
        """Training: parameters with their copies, and every saved activation."""
        return self.parameter_bytes + self.activation_bytes

    @property
    def inference_bytes(self) -> int:
        """Evaluation: the parameters once, and the largest layer's live tensors."""
        live = LIVE_AT_INFERENCE * self.largest * self.batch * self.timesteps
        return (self.parameters + live) * BYTES_PER_FLOAT


def _down(size: int) -> int:
    """Spatial size after a stride-2 convolution or pooling (kernel 3 pad 1, 1 pad 0, 7 pad 3)."""
    return (size - 1) // 2 + 1


class _Counter:
    """Accumulates the parameters and output floats of convolutions at the current size."""

    def __init__(self, size: int) -> None:
        self.size, self.parameters, self.activations, self.largest = size, 0, 0, 0

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        self.size = _down(self.size) if stride == 2 else self.size
        self.parameters += cin * cout * kernel * kernel + 2 * cout  # weight, BN scale + shift
        self.activations += cout * self.size * self.size
        self.largest = max(self.largest, cout * self.size * self.size)


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
        count.parameters, count.activations, count.largest, batch,
        cfg.timesteps if spiking else 1, spiking,
    )  # fmt: skip


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


def check_run_fits(config: Config, image_size: int, eval_batch: int, device_type: str) -> None:
    """ConfigError, with the estimate, before the model is built, when a training run cannot
    fit: its training steps (:func:`check_fits`), or its final test at ``--eval-timesteps``
    on batches of ``eval_batch`` (:func:`check_simulation_fits`)."""
    m = config.model
    check_fits(m, image_size, config.data.batch_size, device_type)
    if m.neuron and config.train.eval_timesteps:
        steps = max(m.timesteps, config.train.eval_timesteps)
        check_simulation_fits(m, image_size, eval_batch, steps, device_type)


def check_simulation_fits(
    cfg: ModelConfig, image_size: int, batch: int, timesteps: int, device_type: str = "cpu"
) -> None:
    """ConfigError, with the estimate, when evaluating ``cfg`` (spiking: simulating
    ``timesteps`` steps) on batches of ``batch`` cannot fit in the memory free."""
    cfg = replace(cfg, timesteps=timesteps) if cfg.neuron else cfg
    need, free = estimate_training_memory(cfg, image_size, batch), available_bytes(device_type)
    if free is None or need.inference_bytes <= free:
        return
    raise ConfigError(
        f"simulating {cfg.name} for T = {need.timesteps} steps on batches of {batch} needs at "
        f"least {format_bytes(need.inference_bytes)} (its largest layer, {need.largest:,} "
        f"values per image and step, for every step at once) but {format_bytes(free)} of "
        f"{device_type} memory is free; lower --timesteps or --batch-size."
    )
