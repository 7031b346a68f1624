"""Time as a tensor dimension.

Stateless layers (conv, BN, pooling, linear) see ``[T*B, ...]``; a :class:`SpikingSite`
unfolds to ``[T, B, ...]`` for its neuron and folds back. BatchNorm over ``[T*B, C, H, W]``
therefore normalizes per channel over ``N, T, H, W`` jointly: threshold-dependent BN
(tdBN, METHODS 1.1) is a BatchNorm2d whose ``γ`` starts at ``θ``.
"""

from __future__ import annotations

import torch
from torch import nn

from spikebridge.nn.neurons import SpikingNeuron


def fold(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T*B, ...]``."""
    return x.flatten(0, 1)


def unfold(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``[T*B, ...] -> [T, B, ...]``."""
    return x.view(timesteps, x.shape[0] // timesteps, *x.shape[1:])


class SpikingSite(nn.Module):
    """An activation site of a spiking network: a neuron applied to folded ``[T*B, ...]``.

    ``timesteps`` is configuration (set by the model), not state: every call simulates
    the full window from the initial potential.
    """

    def __init__(self, neuron: SpikingNeuron, timesteps: int) -> None:
        super().__init__()
        self.neuron = neuron
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold(self.neuron(unfold(x, self.timesteps)))

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}"


def threshold_dependent_bn(channels: int, threshold: float) -> nn.BatchNorm2d:
    """tdBN (METHODS 1.1): BatchNorm2d over ``[T*B, C, H, W]`` with ``γ`` initialized to θ."""
    bn = nn.BatchNorm2d(channels)
    nn.init.constant_(bn.weight, threshold)
    return bn
