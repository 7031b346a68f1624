"""Conversion-aware ANN activations (METHODS 2.2) and time folding / tdBN helpers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.nn import IF, QCFS, Clip, SpikingSite, fold, threshold_dependent_bn, unfold
from spikebridge.nn.activations import LAMBDA_MIN


def _qcfs_reference(x: float, lam: float, levels: int) -> float:
    """``λ · clip(floor(x·L/λ + 1/2) / L, 0, 1)`` in plain Python (METHODS 2.2)."""
    return lam * min(max(math.floor(x * levels / lam + 0.5) / levels, 0.0), 1.0)


def test_qcfs_hand_values() -> None:
    # λ = 2, L = 4 -> steps of 0.5; x·L/λ + 1/2 = 2x + 0.5
    # x = -1 -> floor(-1.5) = -2 -> clip 0 | x = 0.2 -> floor(0.9) = 0 -> 0
    # x = 0.3 -> floor(1.1) = 1 -> 0.5     | x = 1.1 -> floor(2.7) = 2 -> 1.0
    # x = 1.8 -> floor(4.1) = 4 -> 2.0     | x = 5 -> floor(10.5) = 10 -> clip 1 -> 2.0
    act = QCFS(levels=4, lam=2.0)
    x = torch.tensor([-1.0, 0.2, 0.3, 1.1, 1.8, 5.0])
    assert act(x).tolist() == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(-20, 20, allow_nan=False),
    lam=st.floats(0.1, 10),
    levels=st.sampled_from([1, 2, 4, 8, 16]),
)
def test_qcfs_matches_formula(x: float, lam: float, levels: int) -> None:
    act = QCFS(levels, lam).double()
    lam = act.lam.item()  # λ is stored in float32: compare against the stored value
    out = act(torch.tensor([x], dtype=torch.float64)).item()
    assert out == pytest.approx(_qcfs_reference(x, lam, levels), abs=1e-12)


def test_qcfs_gradients() -> None:
    act = QCFS(levels=4, lam=2.0).double()
    x = torch.tensor([[-1.0, 0.3, 1.1, 5.0]], dtype=torch.float64, requires_grad=True)
    act(x).sum().backward()
    assert x.grad is not None and act.lam.grad is not None
    # Straight-through floor: d/dx = λ·(1/L)·(L/λ) = 1 inside the clip range, 0 outside.
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    # d/dλ of λ·q(x/λ) = q - x/λ inside (STE), 1 when clipped at λ, 0 below zero:
    # x = 0.3: q = 0.25 -> 0.25 - 0.15 = 0.1; x = 1.1: q = 0.5 -> 0.5 - 0.55 = -0.05;
    # then the LSQ scale 1/sqrt(N·L) with N = 4 features per image, L = 4: 1/4.
    assert act.lam.grad.item() == pytest.approx((0.0 + 0.1 - 0.05 + 1.0) / 4)


@pytest.mark.parametrize("act", [QCFS(levels=4, lam=-0.5), Clip(-0.5)])
def test_negative_lambda_is_floored_and_can_recover(act: torch.nn.Module) -> None:
    x = torch.tensor([[-1.0, 0.5, 3.0]])
    out = act(x)
    assert out.min().item() >= 0.0 and out.max().item() <= LAMBDA_MIN
    out.sum().backward()  # straight-through floor: the gradient still reaches λ
    assert act.lam.grad is not None and act.lam.grad.item() > 0


def test_qcfs_rejects_zero_levels() -> None:
    with pytest.raises(ValueError, match="level"):
        QCFS(levels=0)


def test_clip_forward_and_lambda_gradient() -> None:
    act = Clip(1.5)
    x = torch.tensor([-2.0, 0.0, 0.7, 1.4, 1.6, 3.0, 9.0], requires_grad=True)
    out = act(x)
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.7, 1.4, 1.5, 1.5, 1.5])
    out.sum().backward()
    assert act.lam.grad is not None and x.grad is not None
    assert act.lam.grad.item() == 3.0  # number of inputs above λ
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
)
def test_lambda_gradient_is_lsq_scaled(seed: int, shape: tuple[int, int, int, int]) -> None:
    """Clip's λ gradient is the count of inputs above λ times 1/sqrt(features per image)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    act = Clip(0.5).double()
    act(x).sum().backward()
    assert act.lam.grad is not None
    features = shape[1] * shape[2] * shape[3]
    expected = (x > 0.5).sum().item() / math.sqrt(features)
    assert act.lam.grad.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), lam=st.floats(0.2, 3.0))
def test_clip_lambda_grad_counts_inputs_above(seed: int, lam: float) -> None:
    x = torch.randn(50, generator=torch.Generator().manual_seed(seed)) * 2
    x = x[(x - lam).abs() > 1e-4]  # ties share the gradient; keep clear of them
    act = Clip(lam)
    act(x).sum().backward()
    assert act.lam.grad is not None
    assert act.lam.grad.item() == (x > lam).sum().item()


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(-40, 200),
    log_lam=st.integers(-1, 3),
    levels=st.sampled_from([2, 4, 8, 16]),
)
def test_if_neuron_at_T_equal_L_reproduces_qcfs(k: int, log_lam: int, levels: int) -> None:
    """METHODS 2.2: IF with θ = λ, φ = 1/2 over T = L steps of constant input gives the
    QCFS output as its rate (dyadic inputs so every partial sum is exact)."""
    lam = 2.0**log_lam
    x = torch.full((levels, 1, 1), k / 64 * lam, dtype=torch.float64)
    rate = IF(lam, 0.5).double()(x).mean(0).item()
    qcfs = QCFS(levels, lam).double()(x[0]).item()
    assert rate == qcfs


def test_fold_unfold_round_trip() -> None:
    x = torch.arange(2 * 3 * 4).view(2, 3, 4)
    folded = fold(x)
    assert folded.shape == (6, 4)
    assert torch.equal(folded[3], x[1, 0])  # time-major: row t*B + b
    assert torch.equal(unfold(folded, 2), x)


def test_spiking_site_is_neuron_on_unfolded_input() -> None:
    neuron = IF(0.7)
    site = SpikingSite(neuron, timesteps=3)
    x = torch.rand(3, 2, 4, 5, 5)
    assert torch.equal(site(fold(x)), fold(neuron(x)))


def test_threshold_dependent_bn_initial_gamma() -> None:
    bn = threshold_dependent_bn(6, 0.5)
    assert bn.weight.tolist() == [0.5] * 6 and bn.bias.tolist() == [0.0] * 6
    # Statistics over N·T·H·W jointly: a folded [T*B, C, H, W] batch normalizes per channel.
    x = torch.randn(4 * 3, 6, 5, 5) * 3 + 2
    y = bn(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        y.std((0, 2, 3), unbiased=False), torch.full((6,), 0.5), atol=1e-3, rtol=0
    )
