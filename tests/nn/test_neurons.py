"""Multi-step neurons: hand-computed traces, fused == reference loop, BPTT, no state kept.

The fused backend (one autograd node, hand-written BPTT) must compute exactly the same
function and gradient as the per-step autograd ``loop`` backend (METHODS 1.1, 2.1).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spikebridge.nn.neurons as neurons_module
from spikebridge.errors import ConfigError
from spikebridge.nn import IF, LIF, SURROGATES, SpikingNeuron

X_TRACE = [0.3, 0.3, 0.6, 0.5, 0.5]


def _run(neuron: SpikingNeuron, values: list[float]) -> list[float]:
    """Feed a scalar current sequence (shape [T, 1, 1]) and return the T outputs."""
    x = torch.tensor(values, dtype=torch.float64).view(-1, 1, 1)
    return neuron.double()(x).view(-1).tolist()


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_lif_hard_reset_strict_hand_trace(backend: str) -> None:
    # θ=0.5, decay 0.25, hard reset, fire on h > θ, v0 = 0; h_t = 0.25·v_{t-1} + x_t
    # t1: h = 0.3                       -> no spike, v = 0.3
    # t2: h = 0.075 + 0.3 = 0.375       -> no spike, v = 0.375
    # t3: h = 0.09375 + 0.6 = 0.69375   -> spike,    v = 0 (hard reset)
    # t4: h = 0 + 0.5 = 0.5 == θ        -> strict: no spike, v = 0.5
    # t5: h = 0.125 + 0.5 = 0.625       -> spike
    neuron = LIF(0.5, 0.25, backend=backend)
    assert _run(neuron, X_TRACE) == [0.0, 0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_lif_hard_reset_non_strict_fires_at_threshold(backend: str) -> None:
    # Same as above until t4: h = 0.5 == θ fires with u >= θ, v = 0; t5: h = 0.5 fires again.
    neuron = LIF(0.5, 0.25, strict=False, backend=backend)
    assert _run(neuron, X_TRACE) == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_lif_subtract_reset_hand_trace(backend: str) -> None:
    # Subtract reset keeps the surplus: t3: h = 0.69375 -> spike, v = 0.19375
    # t4: h = 0.0484375 + 0.5 = 0.5484375 -> spike, v = 0.0484375
    # t5: h = 0.012109375 + 0.5 = 0.512109375 -> spike (hard reset did not fire at t4)
    neuron = LIF(0.5, 0.25, reset="subtract", backend=backend)
    assert _run(neuron, X_TRACE) == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_strict_equality_exactly_at_threshold(backend: str) -> None:
    # A single step with x == θ (exact in binary): strict stays silent, non-strict fires.
    for theta in (0.5, 1.0, 0.25):
        assert _run(LIF(theta, backend=backend), [theta]) == [0.0]
        assert _run(LIF(theta, strict=False, backend=backend), [theta]) == [1.0]


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_if_initial_potential_fires_at_first_step(backend: str) -> None:
    # IF θ=1, φ=0.5: u0 = 0.5; x = 0.5 each step; subtract reset, u >= θ, emits o·θ.
    # t1: u = 1.0 -> spike, u = 0;  t2: u = 0.5;  t3: u = 1.0 -> spike;  t4: u = 0.5
    assert _run(IF(1.0, 0.5, backend=backend), [0.5] * 4) == [1.0, 0.0, 1.0, 0.0]
    # Without initial potential the first spike comes one step later (t2).
    assert _run(IF(1.0, 0.0, backend=backend), [0.5] * 4) == [0.0, 1.0, 0.0, 1.0]
    # θ = 2 emits 2 per spike; φ·θ = 1: t1: u = 1 + 1 = 2 -> spike (value 2).
    assert _run(IF(2.0, 0.5, backend=backend), [1.0, 0.0]) == [2.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(-20, 90),
    T=st.integers(1, 16),
    log_theta=st.integers(-2, 2),
    phi=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
)
def test_if_rate_is_quantized_clipped_relu(k: int, T: int, log_theta: int, phi: float) -> None:
    """METHODS 2.1: with constant x, the IF rate is θ/T · clip(floor(T·x/θ + φ), 0, T).

    Inputs are dyadic (k/64 · θ) so every partial sum is exact in floating point.
    """
    theta = 2.0**log_theta
    x = k / 64 * theta
    out = _run(IF(theta, phi), [x] * T)
    expected = theta / T * min(max(math.floor(T * x / theta + phi), 0), T)
    assert sum(out) / T == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_per_channel_thresholds_equal_separate_neurons(backend: str) -> None:
    torch.manual_seed(0)
    theta = torch.tensor([0.25, 0.5, 1.0])
    x = torch.rand(6, 2, 3, 4, 4) * 1.5  # [T, B, C, H, W]
    out = IF(theta, 0.5, backend=backend)(x)
    for c in range(3):
        alone = IF(float(theta[c]), 0.5, backend=backend)(x[:, :, c])
        assert torch.equal(out[:, :, c], alone)
    # 2-D layout [T, B, F]: thresholds are per feature.
    x2 = torch.rand(5, 4, 3)
    out2 = LIF(theta, backend=backend)(x2)
    for c in range(3):
        assert torch.equal(out2[..., c], LIF(float(theta[c]), backend=backend)(x2[..., c]))


def test_per_channel_threshold_hand_values() -> None:
    # Constant x = 1 for 4 steps, IF φ = 0: rates are min(1, 1/θ) -> 4, 2, 1 spikes.
    neuron = IF(torch.tensor([1.0, 2.0, 4.0]), 0.0, emit_threshold=False)
    spikes = neuron(torch.ones(4, 1, 3, 1, 1)).sum(0).view(-1)
    assert spikes.tolist() == [4.0, 2.0, 1.0]


def test_per_channel_state_dict_round_trip() -> None:
    src = IF(torch.tensor([0.5, 1.5]), 0.25)
    dst = IF(1.0)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.threshold, src.threshold) and dst.phi.item() == 0.25
    x = torch.rand(4, 2, 2, 3, 3)
    assert torch.equal(dst(x), src(x))


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="reset"):
        SpikingNeuron(reset="soft")
    with pytest.raises(ConfigError, match="backend"):
        SpikingNeuron(backend="cuda")
    with pytest.raises(ConfigError, match="surrogate"):
        SpikingNeuron(surrogate="triangle")


# --- fused == reference loop -------------------------------------------------------------

KINDS = {"lif": dict(decay=0.25, phi=0.0), "if": dict(decay=1.0, phi=0.5)}
SHAPES = {"2d": (5, 3, 4), "4d": (4, 2, 3, 3, 3)}


def _pair(channels: int | None, dtype: torch.dtype, **kw: object) -> list[SpikingNeuron]:
    theta = 0.5 if channels is None else torch.linspace(0.3, 1.2, channels)
    return [SpikingNeuron(theta, backend=b, **kw).to(dtype) for b in ("fused", "loop")]  # type: ignore[arg-type]


def _outputs_and_grads(
    neuron: SpikingNeuron, x: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, then backprop a random weighting of the outputs (a generic upstream grad)."""
    x = x.clone().requires_grad_(True)
    out = neuron(x)
    (out * w).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("reset", ["hard", "subtract"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_equals_loop_float64(
    kind: str, reset: str, strict: bool, detach_reset: bool, surrogate: str, per_channel: bool,
    shape: str,
) -> None:  # fmt: skip
    """BPTT check (gradcheck does not apply to a step function): fused backward == autograd
    through the reference loop, in float64, for every option combination."""
    gen = torch.Generator().manual_seed(
        zlib.crc32(f"{kind}{reset}{strict}{surrogate}{shape}".encode())
    )
    size = SHAPES[shape]
    x = torch.rand(size, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    w = torch.randn(size, generator=gen, dtype=torch.float64)
    channels = size[2] if per_channel else None
    opts = dict(reset=reset, strict=strict, detach_reset=detach_reset, surrogate=surrogate)
    fused, loop = _pair(
        channels, torch.float64, emit_threshold=(kind == "if"), **opts, **KINDS[kind]
    )
    out_f, grad_f = _outputs_and_grads(fused, x, w)
    out_l, grad_l = _outputs_and_grads(loop, x, w)
    assert out_f.abs().sum() > 0, "the test input should make the neuron fire"
    assert torch.equal(out_f, out_l)
    torch.testing.assert_close(grad_f, grad_l, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 8),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    decay=st.floats(0.0, 1.0),
    alpha=st.floats(0.5, 4.0),
    seed=st.integers(0, 2**16),
)
def test_fused_equals_loop_random_configs_float32(
    T: int, batch: int, channels: int, decay: float, alpha: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, batch, channels, 2, 2, generator=gen)
    w = torch.randn(T, batch, channels, 2, 2, generator=gen)
    for surrogate in SURROGATES:
        opts = dict(decay=decay, surrogate=surrogate, alpha=alpha, detach_reset=False)
        fused, loop = _pair(channels, torch.float32, **opts)
        out_f, grad_f = _outputs_and_grads(fused, x, w)
        out_l, grad_l = _outputs_and_grads(loop, x, w)
        assert torch.equal(out_f, out_l)
        torch.testing.assert_close(grad_f, grad_l, rtol=1e-4, atol=1e-5)


def test_lif_gradient_hand_computed() -> None:
    # Two steps, θ=0.5, decay 0.25, rect a=1, detached hard reset; loss = o_1 + o_2.
    # x = [0.3, 0.2]: h1 = 0.3 (no spike), h2 = 0.075 + 0.2 = 0.275 (no spike).
    # Surrogate 1[|h-θ| < 0.5] = 1 at both steps.
    # dL/dh2 = sg(h2) = 1;  dL/dh1 = sg(h1) + dL/dh2 · (1 - o1) · decay = 1 + 0.25 = 1.25.
    x = torch.tensor([0.3, 0.2], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
    LIF(0.5, 0.25).double()(x).sum().backward()
    assert x.grad is not None
    assert x.grad.view(-1).tolist() == pytest.approx([1.25, 1.0])


@pytest.mark.parametrize("chunk", [1, 2, 3, 8])
@pytest.mark.parametrize("reset", ["hard", "subtract"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_chunked_window_equals_loop_float64(
    kind: str, reset: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window longer than CHUNK runs as chunks with the state carried across (and an
    eager tail): spikes and BPTT gradients equal the reference loop, per-channel θ and a
    non-zero initial potential included (IF: φ = 0.5)."""
    monkeypatch.setattr(neurons_module, "CHUNK", chunk)
    gen = torch.Generator().manual_seed(chunk)
    x = torch.rand(8, 2, 3, 2, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    w = torch.randn(8, 2, 3, 2, 2, generator=gen, dtype=torch.float64)
    opts = dict(reset=reset, detach_reset=False, surrogate="sigmoid")
    fused, loop = _pair(3, torch.float64, emit_threshold=(kind == "if"), **opts, **KINDS[kind])
    out_f, grad_f = _outputs_and_grads(fused, x, w)
    out_l, grad_l = _outputs_and_grads(loop, x, w)
    assert out_f[-3:].abs().sum() > 0, "the last chunks should fire too"
    assert torch.equal(out_f, out_l)
    torch.testing.assert_close(grad_f, grad_l, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [2, 8])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_expanded_upstream_gradient(
    reduce: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gradient of a sum or mean reaches the neuron expanded (stride 0) and is used as a
    view, not copied: gradients still equal the reference loop's, in one chunk or several."""
    monkeypatch.setattr(neurons_module, "CHUNK", chunk)
    x = torch.rand(5, 2, 3, 2, 2, dtype=torch.float64) * 1.6 - 0.3
    grads = []
    for backend in ("fused", "loop"):
        xi = x.clone().requires_grad_(True)
        getattr(LIF(0.5, 0.25, surrogate="atan", backend=backend).double()(xi), reduce)().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    assert grads[0].abs().sum() > 0


def test_chunks_cover_the_window_once() -> None:
    for steps in (1, 7, 8, 9, 16, 100):
        chunks = neurons_module._chunks(steps)
        starts = [start for start, _, _ in chunks]
        assert starts[0] == 0 and chunks[-1][1] == steps
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        assert all(
            stop - start == min(steps, neurons_module.CHUNK) for start, stop, c in chunks if c
        )
        assert sum(not compiled for *_, compiled in chunks) == (steps > 8 and steps % 8 != 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile
def test_compiled_fused_matches_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch.compile path (default outside tests) computes the same spikes and grads,
    over a window of two compiled 2-step chunks and an eager tail step."""
    monkeypatch.setenv("SPIKEBRIDGE_COMPILE", "1")
    monkeypatch.setattr(neurons_module, "_COMPILED", {})
    monkeypatch.setattr(neurons_module, "CHUNK", 2)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 2, 3, 4, 4, generator=gen) * 1.5
    w = torch.randn(5, 2, 3, 4, 4, generator=gen)
    out_c, grad_c = _outputs_and_grads(LIF(0.5, 0.25), x, w)
    assert set(neurons_module._COMPILED) == {"forward", "backward"}
    out_l, grad_l = _outputs_and_grads(LIF(0.5, 0.25, backend="loop"), x, w)
    assert torch.equal(out_c, out_l)
    torch.testing.assert_close(grad_c, grad_l, rtol=1e-5, atol=1e-6)


# --- no state between calls --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_same_batch_twice_same_output(backend: str) -> None:
    neuron = LIF(backend=backend)
    x = torch.rand(4, 2, 3, 5, 5)
    first = neuron(x)
    neuron(torch.rand(4, 2, 3, 5, 5) * 3)  # an unrelated batch in between
    assert torch.equal(neuron(x), first)


def test_interleaved_neurons_do_not_interact() -> None:
    a, b = LIF(0.5), IF(1.0)
    xa, xb = torch.rand(4, 2, 3, 2, 2), torch.rand(4, 2, 3, 2, 2) * 2
    alone_a, alone_b = LIF(0.5)(xa), IF(1.0)(xb)
    for _ in range(2):
        assert torch.equal(a(xa), alone_a)
        assert torch.equal(b(xb), alone_b)


def test_no_input_grad_needed_saves_nothing() -> None:
    # Inference (no grad) through the fused node runs and matches the loop.
    x = torch.rand(3, 2, 4)
    with torch.no_grad():
        assert torch.equal(LIF()(x), LIF(backend="loop")(x))
