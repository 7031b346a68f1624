"""ANN activations for conversion-aware training (METHODS 2.2).

``Clip`` and ``QCFS`` carry a trainable per-layer ceiling ``λ`` that becomes the spiking
threshold ``θ`` on conversion.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_LAMBDA = 8.0
"""Initial ceiling λ for ``clip`` / ``qcfs`` (Bu et al. 2022 start QCFS at 8 and let it learn)."""


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
        return torch.minimum(torch.relu(x), self.lam.to(x.dtype))

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
        lam = self.lam.to(x.dtype)
        q = _FloorSTE.apply(x * self.levels / lam + 0.5) / self.levels
        return torch.clamp(q, 0, 1) * lam

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={self.lam.item():.4g}"
