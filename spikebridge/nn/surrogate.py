"""Spike function with surrogate gradients (METHODS 1.1).

Forward is the Heaviside step of ``v = u - θ``; backward replaces its derivative by a
smooth or boxed surrogate ``σ'(v)``. The formulas live in :func:`surrogate_grad` so that
the autograd function below and the fused neuron kernels share one definition.
"""

from __future__ import annotations

import math

import torch

from spikebridge.errors import ConfigError

SURROGATES = ("rect", "sigmoid", "atan")
"""Valid surrogate names. ``rect`` is the STBP rectangle IDSNN uses (default)."""

DEFAULT_ALPHA = {"rect": 1.0, "sigmoid": 4.0, "atan": 2.0}
"""Default shape parameter per surrogate (``rect``: width ``a``; others: sharpness ``α``)."""


def check_surrogate(name: str) -> str:
    """Return ``name`` if it is a known surrogate, else raise a ConfigError naming the valid ones."""
    if name not in SURROGATES:
        raise ConfigError(f"unknown surrogate {name!r}; expected one of {', '.join(SURROGATES)}")
    return name


def heaviside(v: torch.Tensor, strict: bool) -> torch.Tensor:
    """Spike where ``v > 0`` (strict, IDSNN's LIF) or ``v >= 0`` (converted IF, METHODS 2.1)."""
    return (v > 0).to(v.dtype) if strict else (v >= 0).to(v.dtype)


def surrogate_grad(v: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    """Surrogate derivative ``do/dv`` at ``v = u - θ``.

    - ``rect``:    ``(1/a) · 1[|v| < a/2]`` (STBP; ``a = 1`` gives 1 on ``0 < u < 1`` for θ = 0.5)
    - ``sigmoid``: ``α · s(αv) · (1 - s(αv))`` with ``s`` the logistic function
    - ``atan``:    ``(α/2) / (1 + (π/2 · α · v)²)``
    """
    if name == "rect":
        return (v.abs() < alpha / 2).to(v.dtype) / alpha
    if name == "sigmoid":
        s = torch.sigmoid(alpha * v)
        return alpha * s * (1 - s)
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * v) ** 2)
    raise ConfigError(f"unknown surrogate {name!r}; expected one of {', '.join(SURROGATES)}")


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward, surrogate backward. Used by the reference (per-step) neuron loop."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, name: str, alpha: float, strict: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.name, ctx.alpha = name, alpha
        return heaviside(v, strict)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad * surrogate_grad(v, ctx.name, ctx.alpha), None, None, None


def spike(
    v: torch.Tensor, name: str = "rect", alpha: float = 1.0, strict: bool = True
) -> torch.Tensor:
    """Differentiable spike of ``v = u - θ`` with the named surrogate gradient."""
    return SpikeFunction.apply(v, name, alpha, strict)
