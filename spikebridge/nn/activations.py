"""ANN activations for conversion-aware training (METHODS 2.2).

``Clip`` and ``QCFS`` carry a trainable per-layer ceiling ``λ`` that becomes the spiking
threshold ``θ`` on conversion.

Two guards keep ``λ`` usable in 100+ layer networks (our choice, measured on resnet110):

- its gradient is scaled by ``1/sqrt(N·L)`` (``N`` features per image, ``L`` levels; 1 for
  ``clip``), the step-size gradient scale of LSQ (Esser et al., ICLR 2020). ``λ`` is one
  scalar fed by every activation of its layer, so its raw gradient is a sum over ~10^5
  terms; with SGD at lr 0.1, resnet110 QCFS ANNs drove several ``λ`` below zero within 25
  steps without it;
- its forward value is floored at :data:`LAMBDA_MIN` with a straight-through clamp, so a
  ceiling can never turn negative and can still recover.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_LAMBDA = 8.0
"""Initial ceiling λ for ``clip`` / ``qcfs`` (Bu et al. 2022 start QCFS at 8 and let it learn)."""


LAMBDA_MIN = 1e-3
"""Smallest ceiling a clip/qcfs layer uses in its forward pass."""


def effective_lambda(lam: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    """``λ`` as the forward pass uses it: value floored at LAMBDA_MIN, gradient LSQ-scaled.

    Both operations are straight-through (``value + (target - value).detach()``), so the
    returned tensor has the clamped value while its gradient reaches ``lam`` scaled by
    ``1/sqrt(N·levels)`` (see the module docstring).
    """
    features = x[0].numel() if x.dim() > 0 else 1
    scale = 1.0 / math.sqrt(max(1, features) * max(1, levels))
    lam = lam.to(x.dtype)
    scaled = lam * scale + (lam - lam * scale).detach()
    return scaled + (scaled.clamp(min=LAMBDA_MIN) - scaled).detach()


class _FloorSTE(torch.autograd.Function):
    """``floor`` forward, identity (straight-through) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class Clip(nn.Module):
    """ReLU clipped at a trainable ceiling: ``min(max(x, 0), λ)``."""

    def __init__(self, lam: float = DEFAULT_LAMBDA) -> None:
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), effective_lambda(self.lam, x, 1))

    def extra_repr(self) -> str:
        return f"lam={self.lam.item():.4g}"


class QCFS(nn.Module):
    """Quantization-clip-floor-shift (Bu et al., ICLR 2022; METHODS 2.2).

    ``λ · clip(floor(x·L/λ + 1/2) / L, 0, 1)`` with a straight-through floor, so an IF
    neuron with ``θ = λ`` and ``φ = 1/2`` reproduces it exactly at ``T = L``.
    """

    def __init__(self, levels: int = 8, lam: float = DEFAULT_LAMBDA) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"QCFS needs at least 1 level, got {levels}")
        self.levels = int(levels)
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = effective_lambda(self.lam, x, self.levels)
        q = _FloorSTE.apply(x * self.levels / lam + 0.5) / self.levels
        return torch.clamp(q, 0, 1) * lam

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={self.lam.item():.4g}"
