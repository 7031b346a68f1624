"""Error decomposition (METHODS 2.3, our design): Q_T, the IF neuron, the three error terms."""

from __future__ import annotations

import math

import pytest
import torch
from conversion_helpers import calibrate_bn, convert_by_name
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spikebridge.analysis.conversion_errors import plot_errors
from spikebridge.conversion.decomposition import decompose_errors, error_terms, quantized_rate
from spikebridge.conversion.sites import calibration_batches
from spikebridge.errors import DataError, ModelError
from spikebridge.models import build
from spikebridge.nn import IF


def test_quantized_rate_hand_values() -> None:
    # θ = 1, T = 4, φ = 0.5: Q = 1/4 · clip(floor(4x + 0.5), 0, 4)
    x = torch.tensor([0.3, -1.0, 2.0, 0.125, 0.1, 0.5])
    # 4·0.3+.5 = 1.7 -> 1; negative -> 0; 8.5 -> clip 4; 1.0 -> 1; 0.9 -> 0; 2.5 -> 2
    expected = torch.tensor([0.25, 0.0, 1.0, 0.25, 0.0, 0.5])
    assert torch.equal(quantized_rate(x, 1.0, 4, 0.5), expected)
    # θ = 2, T = 2, φ = 0: 1 · clip(floor(x), 0, 2)
    assert quantized_rate(torch.tensor([1.9, 2.0, 5.0]), 2.0, 2, 0.0).tolist() == [1.0, 2.0, 2.0]


def test_quantized_rate_per_channel_threshold() -> None:
    x = torch.full((1, 2, 1, 1), 0.5)
    q = quantized_rate(x, torch.tensor([1.0, 0.25]), 2, torch.tensor([0.0, 0.5]))
    # ch0: 1/2·floor(1.0 + 0) = 0.5; ch1: 0.125·clip(floor(4 + .5), 0, 2) = 0.25
    assert q.flatten().tolist() == [0.5, 0.25]


@settings(max_examples=150, deadline=None)
@given(
    x=st.floats(-3.0, 3.0, allow_nan=False),
    theta=st.floats(0.05, 4.0),
    phi=st.floats(0.0, 1.0),
    T=st.integers(1, 32),
)
def test_if_neuron_on_constant_input_is_quantized_rate(
    x: float, theta: float, phi: float, T: int
) -> None:
    # METHODS 2.1: IF with subtract reset, v0 = φθ, u >= θ, constant input -> exactly Q_T(x).
    # θ and φ live in float32 buffers: use float32-representable values so both sides agree.
    theta, phi = (torch.tensor(v, dtype=torch.float32).item() for v in (theta, phi))
    v = T * x / theta + phi
    assume(abs(v - round(v)) > 1e-6)  # float accumulation vs one multiplication at a boundary
    neuron = IF(theta, phi).double()
    out = neuron(torch.full((T, 1, 1, 1, 1), x, dtype=torch.float64))
    count = out.ne(0).sum().item()
    rate = count * theta / T
    expected = quantized_rate(torch.tensor([x], dtype=torch.float64), theta, T, phi).item()
    assert math.isclose(rate, expected, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(out.sum().item() / T, expected, rel_tol=1e-12, abs_tol=1e-12)


def test_error_terms_add_up_to_total_elementwise() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 5, 5, generator=g) * 2
    r = torch.rand(4, 3, 5, 5, generator=g) * 2
    a = torch.relu(torch.randn(4, 3, 5, 5, generator=g))
    theta, phi = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.5, 0.0, 0.25])
    e_q, e_d, prop = error_terms(z, r, a, theta, 4, phi)
    assert torch.allclose(e_q + e_d + prop, r - a, atol=1e-6)
    # e_q is bounded by one quantization step θ/T (plus clipping at θ): |e_q| <= θ/T.
    assert (e_q.abs() <= theta.view(1, 3, 1, 1) / 4 + 1e-6).all()


def _converted_pair(activation: str = "qcfs", T: int = 4):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ann = build("resnet20", width=0.25, activation=activation, qcfs_levels=T, threshold=2.0)
    x = torch.randn(8, 3, 16, 16)
    calibrate_bn(ann, x)
    return ann, convert_by_name(ann, "qcfs" if activation != "relu" else "robust", x, T), x


def test_decompose_errors_first_site_has_no_deviation_and_table_is_consistent() -> None:
    ann, snn, x = _converted_pair()
    table = decompose_errors(ann, snn, x, batch_size=4)
    assert len(table.rows) == 19 and table.timesteps == 4
    stem = table.rows[0]
    assert stem.site == "act1"
    # Direct encoding: the stem current is constant (no deviation) and QCFS(L=T) == Q_T, so
    # the total error is zero; the quantization error is the ANN's own (e_q = −propagated).
    assert stem.input_variance == 0.0
    assert stem.deviation < 1e-6 and stem.total < 1e-6 and stem.quantization > 0.01
    assert stem.quantization == pytest.approx(stem.propagated, rel=1e-5)
    deeper = table.rows[1:]
    assert any(r.deviation > 0 for r in deeper) and any(r.input_variance > 0 for r in deeper)
    for r in table.rows:
        assert r.total <= r.quantization + r.deviation + r.propagated + 1e-6  # triangle
        assert r.mse >= r.total**2 - 1e-9  # Jensen
        assert 0.0 <= r.firing_rate <= 1.0


def test_decompose_errors_matches_a_direct_measurement() -> None:
    ann, snn, x = _converted_pair("relu")
    table = decompose_errors(ann, snn, x, timesteps=8, batch_size=3)
    assert snn.timesteps == 4  # restored
    site = snn.stages[1][0].act2
    got: dict[str, torch.Tensor] = {}
    h1 = site.register_forward_hook(lambda m, a, o: got.update(r=o.view(8, 8, *o.shape[1:])))
    h2 = ann.stages[1][0].act2.register_forward_hook(lambda m, a, o: got.update(a=o))
    snn.set_timesteps(8)
    with torch.no_grad():
        snn(x), ann(x)
    h1.remove(), h2.remove()
    total = (got["r"].mean(0) - got["a"]).abs().mean().item()
    row = next(r for r in table.rows if r.site == "stages.1.0.act2")
    assert math.isclose(row.total, total, rel_tol=1e-5)


def test_table_outputs_and_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ann, snn, x = _converted_pair()
    table = decompose_errors(ann, snn, x[:4])
    md = table.to_markdown()
    assert md.count("\n") == len(table.rows) + 1 and "| act1 |" in md
    lines = table.to_csv(tmp_path / "e.csv").read_text().splitlines()
    assert lines[0].startswith("site,theta,quantization") and len(lines) == len(table.rows) + 1
    png = plot_errors(table, tmp_path / "e.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mismatched_models_and_bad_data_are_refused() -> None:
    ann, snn, x = _converted_pair()
    other = build("resnet32", width=0.25)
    with pytest.raises(ModelError, match="different activation sites"):
        decompose_errors(other, snn, x)
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        calibration_batches([torch.zeros(3, 16, 16)])
    with pytest.raises(DataError, match="empty"):
        calibration_batches([])
