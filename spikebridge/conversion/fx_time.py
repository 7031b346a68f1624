"""The time modules of a converted user CNN and the converted graph itself (METHODS 2.1).

Time is folded into the batch (``[T*B, ...]``): :class:`StepEncoder` repeats the analog
image at every step (direct encoding), :class:`StepAverage` reads the mean over T of the
per-step outputs, :class:`GatedMaxPool2d` is rate-gated max pooling (the choice among three
is measured in :mod:`spikebridge.conversion.fx_graph`). :class:`SpikingGraph` is what
:func:`spikebridge.conversion.convert` returns for a user CNN. This module imports nothing
else of the conversion package, so the tracer can treat these modules as leaves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn

from spikebridge.errors import ConfigError
from spikebridge.nn.temporal import fold, unfold


class StepEncoder(nn.Module):
    """``[B, ...] -> [T*B, ...]``: the same analog input at every step (direct encoding)."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold(x.unsqueeze(0).expand(self.timesteps, *x.shape))

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


class StepAverage(nn.Module):
    """``[T*B, ...] -> [B, ...]``: the mean over T of the per-step outputs (or, while
    ``per_step`` is set by :meth:`SpikingGraph.forward_steps`, the steps ``[T, B, ...]``)."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = int(timesteps)
        self.per_step = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = unfold(x, self.timesteps)
        return steps if self.per_step else steps.mean(0)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


class GatedMaxPool2d(nn.Module):
    """Rate-gated max pooling over folded ``[T*B, C, H, W]`` (module docstring).

    At step ``t`` every window passes ``x_t`` of the position with the largest gate key
    ``Σ_{s<t} x_s + TIE_BREAK·x_t`` (the earlier steps decide, the current value breaks
    ties); its rate tends to the ANN's max pooling of the time-averaged input as ``t``
    grows. Built from the ANN's ``MaxPool2d`` or ``AdaptiveMaxPool2d``.
    """

    TIE_BREAK = 1e-3
    """Weight of the current step in the gate key. Below 1, it never overturns a difference
    of one spike ``θ`` between earlier sums (spike values are ``≤ θ`` within a channel)."""

    def __init__(self, pool: nn.MaxPool2d | nn.AdaptiveMaxPool2d, timesteps: int) -> None:
        super().__init__()
        self.pool = copy.deepcopy(pool)
        self.pool.return_indices = True
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"GatedMaxPool2d needs [T*B, C, H, W] input, got {tuple(x.shape)}")
        steps = unfold(x, self.timesteps)
        earlier = steps.cumsum(0) - steps
        _, index = self.pool(fold(earlier + self.TIE_BREAK * steps))
        picked = x.flatten(2).gather(2, index.flatten(2))
        return picked.view(index.shape)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


TIME_MODULES = (StepEncoder, StepAverage, GatedMaxPool2d)


class SpikingGraph(fx.GraphModule):
    """A converted user network: the traced graph with IF sites, run for ``T`` steps.

    ``forward(images [B, ...])`` returns the mean over T of the per-step outputs;
    :meth:`forward_steps` returns the steps ``[T, B, ...]``; :meth:`set_timesteps` changes
    T everywhere (sites, neurons, pooling gates, encoder and readout). Works with
    ``spikebridge.engine.evaluate`` like a spiking ResNet. Every site's neuron is built with
    ``timesteps=T``, so a site's neuron fed one step ``[B, ...]`` raises ConfigError instead
    of reading the batch as time (:mod:`spikebridge.nn.neurons`).
    """

    spiking = True

    def _time_module(self, kind: type[nn.Module]) -> Any:
        return next(m for m in self.modules() if isinstance(m, kind))

    @property
    def timesteps(self) -> int:
        return int(self._time_module(StepEncoder).timesteps)

    def set_timesteps(self, timesteps: int) -> None:
        """Simulate ``timesteps`` steps from now on."""
        if int(timesteps) < 1:
            raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
        for m in self.modules():
            if m is not self and isinstance(getattr(m, "timesteps", None), int):
                m.timesteps = int(timesteps)

    @contextmanager
    def _per_step(self) -> Iterator[None]:
        readout = self._time_module(StepAverage)
        readout.per_step = True
        try:
            yield
        finally:
            readout.per_step = False

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs ``[T, B, ...]`` for an input batch ``[B, ...]``."""
        with self._per_step():
            return self(x)
