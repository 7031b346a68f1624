"""Surrogate gradients against their formulas (METHODS 1.1).

Contract as in SpikingJelly's surrogate tests: the backward of the spike function equals
the derivative of its smooth primitive, checked by autograd and by a finite difference.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.errors import ConfigError
from spikebridge.nn import SURROGATES, spike, surrogate_grad
from spikebridge.nn.surrogate import DEFAULT_ALPHA, check_surrogate, heaviside

PRIMITIVES = {
    # smooth functions whose derivative the surrogate must be
    "sigmoid": lambda v, a: torch.sigmoid(a * v),
    "atan": lambda v, a: torch.atan(math.pi / 2 * a * v) / math.pi + 0.5,
}


def _spike_grad(v: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    """``d spike / dv`` through the autograd function (backward of the Heaviside)."""
    v = v.clone().requires_grad_(True)
    spike(v, name, alpha).sum().backward()
    assert v.grad is not None
    return v.grad


def test_rect_is_box_of_height_one_over_a() -> None:
    # a = 2: 1/2 on |v| < 1, else 0; the box edges |v| = a/2 are outside (strict <).
    v = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 3.0], dtype=torch.float64)
    expected = [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    assert surrogate_grad(v, "rect", 2.0).tolist() == expected
    assert _spike_grad(v, "rect", 2.0).tolist() == expected


def test_rect_default_is_idsnn_window() -> None:
    # METHODS 1.1: a = 1 and θ = 0.5 give gradient 1 exactly on 0 < u < 1.
    u = torch.tensor([-0.1, 0.0, 0.01, 0.5, 0.99, 1.0, 1.2], dtype=torch.float64)
    grad = _spike_grad(u - 0.5, "rect", DEFAULT_ALPHA["rect"])
    assert grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.1, 4.0), v=st.floats(-5.0, 5.0))
def test_rect_matches_formula(a: float, v: float) -> None:
    got = surrogate_grad(torch.tensor([v], dtype=torch.float64), "rect", a).item()
    assert got == (1 / a if abs(v) < a / 2 else 0.0)


def test_rect_area_is_one() -> None:
    # The box is a density: its integral is 1 for any width (Riemann sum on a fine grid).
    v = torch.linspace(-3, 3, 600_001, dtype=torch.float64)
    for a in (0.5, 1.0, 2.0):
        area = torch.trapezoid(surrogate_grad(v, "rect", a), v).item()
        assert area == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", list(PRIMITIVES))
@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0, 7.5])
def test_smooth_surrogate_is_autograd_derivative_of_primitive(name: str, alpha: float) -> None:
    v = torch.linspace(-3, 3, 241, dtype=torch.float64, requires_grad=True)
    PRIMITIVES[name](v, alpha).sum().backward()
    assert v.grad is not None
    torch.testing.assert_close(surrogate_grad(v.detach(), name, alpha), v.grad)
    torch.testing.assert_close(_spike_grad(v.detach(), name, alpha), v.grad)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_smooth_surrogate_matches_finite_difference(name: str) -> None:
    alpha, eps = DEFAULT_ALPHA[name], 1e-6
    v = torch.linspace(-2, 2, 81, dtype=torch.float64)
    f = PRIMITIVES[name]
    fd = (f(v + eps, alpha) - f(v - eps, alpha)) / (2 * eps)
    torch.testing.assert_close(surrogate_grad(v, name, alpha), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_smooth_surrogate_peak_value(name: str) -> None:
    # At v = 0: sigmoid gives α/4, atan gives α/2.
    alpha = 3.0
    peak = surrogate_grad(torch.zeros(1, dtype=torch.float64), name, alpha).item()
    assert peak == pytest.approx(alpha / 4 if name == "sigmoid" else alpha / 2)


@pytest.mark.parametrize("name", SURROGATES)
def test_forward_is_heaviside_whatever_the_surrogate(name: str) -> None:
    v = torch.tensor([-1.0, -1e-9, 0.0, 1e-9, 2.0])
    assert spike(v, name, 1.0, strict=True).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert spike(v, name, 1.0, strict=False).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_heaviside_keeps_dtype() -> None:
    v = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert heaviside(v, True).dtype == torch.float64


def test_gradient_scales_upstream_grad() -> None:
    # Chain rule: the backward multiplies the incoming gradient elementwise.
    v = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)
    (spike(v, "atan", 2.0) * upstream).sum().backward()
    assert v.grad is not None
    torch.testing.assert_close(v.grad, upstream * surrogate_grad(v.detach(), "atan", 2.0))


def test_unknown_surrogate_is_config_error() -> None:
    assert check_surrogate("atan") == "atan"
    with pytest.raises(ConfigError, match="rect, sigmoid, atan"):
        check_surrogate("tanh")
    with pytest.raises(ConfigError, match="tanh"):
        surrogate_grad(torch.zeros(1), "tanh", 1.0)
