"""COS, calibrating offset spikes (Hao et al., ICLR 2023; METHODS 2.7).

Hand-computed traces on one IF neuron (θ = 1, φ = 1/2 unless said), the offset property
the paper proves (a shift of the initial potential adds or removes exactly the one offset
spike), and conversions of a built-in ResNet and a user CNN.
"""

from __future__ import annotations

import pytest
import torch
from conversion_helpers import calibrate_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from user_cnns import sequential_cnn

from spikebridge.conversion import (
    CosConfig,
    QcfsConfig,
    build_converted,
    build_spiking_graph,
    convert,
    get_method,
)
from spikebridge.conversion.cos import (
    resolve_steps,
    set_offset_calibration,
    total_sops,
    total_timesteps,
)
from spikebridge.conversion.sites import snn_sites
from spikebridge.errors import ConfigError
from spikebridge.models import build
from spikebridge.nn import IF, LIF
from spikebridge.nn.neurons import dry_steps, offset_calibrated_v0


def _trace(x: list[float], steps: int, theta: float = 1.0, backend: str = "loop") -> list[float]:
    """Spikes (in units of θ) of one IF neuron on the currents ``x`` with COS over ``steps``."""
    neuron = IF(threshold=theta, phi=0.5, backend=backend)
    neuron.set_offset_calibration(steps)
    return (neuron(torch.tensor(x).view(-1, 1)) / theta).flatten().tolist()


def test_one_spike_too_many_is_removed() -> None:
    # x = [0.5, -0.4]: h_1 = 1.0 fires, h_2 = -0.4 -> residual -0.4 < 0 after a spike: one
    # spike more than floor(0.5 + 0.1) = 0. Shift down by max(θ, 1.0 - 0.999) = 1: v_0 = -0.5,
    # h = 0.0, -0.4: no spike.
    assert IF(backend="loop")(torch.tensor([[0.5], [-0.4]])).flatten().tolist() == [1.0, 0.0]
    assert _trace([0.5, -0.4], 2) == [0.0, 0.0]
    v0 = offset_calibrated_v0(torch.tensor([[0.5], [-0.4]]), torch.tensor(1.0),
                              torch.tensor(0.5), steps=2)  # fmt: skip
    assert v0.item() == pytest.approx(-0.5)


def test_one_spike_too_few_is_added() -> None:
    # x = [0, 0, 1.6]: h = 0.5, 0.5, 2.1 -> one spike, residual 1.1 >= θ: one fewer than
    # floor(2.1) = 2. Shift up by max(θ, 1.001 - 0.5) = 1: v_0 = 1.5, h_1 = 1.5 fires, h_2 =
    # 0.5, h_3 = 2.1 fires.
    assert _trace([0.0, 0.0, 1.6], 3) == [1.0, 0.0, 1.0]


def test_shift_is_larger_than_theta_when_one_theta_would_not_change_the_count() -> None:
    # Down: x = [2.0, -1.8]: h_1 = 2.5 fires (the weakest firing step), residual -0.3. A shift of
    # θ leaves h_1 = 1.5 firing; the shift is 2.5 - 0.999 = 1.501 (v_0 = -1.001, h_1 = 0.999).
    v0 = offset_calibrated_v0(torch.tensor([[2.0], [-1.8]]), torch.tensor(1.0),
                              torch.tensor(0.5), steps=2)  # fmt: skip
    assert v0.item() == pytest.approx(-1.001)
    assert _trace([2.0, -1.8], 2) == [0.0, 0.0]
    # Up: x = [-1, 2.5]: h_1 = -0.5 silent, h_2 = 2.0 fires, residual 1.0. The strongest silent
    # step needs 1.501 to reach 1.001: v_0 = 2.001 and both steps fire (floor(2.0) = 2).
    assert _trace([-1.0, 2.5], 2) == [1.0, 1.0]


def test_threshold_scales_the_trace_and_the_backends_agree() -> None:
    x = [0.0, 0.0, 1.6]
    assert _trace([0.5 * v for v in x], 3, theta=0.5) == _trace(x, 3)
    assert _trace(x, 3, backend="fused") == _trace(x, 3, backend="loop")


def test_dry_pass_sees_only_the_first_rho_steps() -> None:
    # With ρ = 2 the dry pass of [0.5, -0.4, 1.4] is the first test's: v_0 = -0.5, so the
    # real pass gives h = 0.0, -0.4, 1.0: one spike, at t = 3 (without COS: [1, 0, 1]).
    assert _trace([0.5, -0.4, 1.4], 2) == [0.0, 0.0, 1.0]
    assert IF(backend="loop")(torch.tensor([[0.5], [-0.4], [1.4]])).flatten().tolist() == [1, 0, 1]


def _count(x: torch.Tensor, steps: int) -> torch.Tensor:
    neuron = IF(threshold=1.0, phi=0.5, backend="loop")
    neuron.set_offset_calibration(steps)
    return neuron(x).sum(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(-2.0, 2.5, width=32), min_size=16, max_size=16),
                min_size=1, max_size=6))  # fmt: skip
def test_calibration_never_moves_the_count_away_and_fixes_one_spike_offsets(rows) -> None:
    # ρ = T: the target is the count the charge calls for, clip(floor(φ + Σx/θ), 0, T); the
    # paper's claim (one shift corrects a one-spike offset) holds element-wise.
    x = torch.tensor(rows).T.contiguous()  # [T, 16]
    steps = x.shape[0]
    plain = IF(threshold=1.0, phi=0.5, backend="loop")(x).sum(0)
    target = torch.floor(0.5 + x.sum(0)).clamp(0, steps)
    calibrated = _count(x, steps)
    assert ((calibrated - target).abs() <= (plain - target).abs()).all()
    one_off = (plain - target).abs() == 1
    assert (calibrated[one_off] == target[one_off]).all()


def test_neuron_feature_is_off_by_default_and_reloads() -> None:
    neuron = IF()
    assert neuron.offset_steps == 0 and "offset_calibration" not in neuron.state_dict()
    neuron.set_offset_calibration(4, rounds=2)
    fresh = IF()
    fresh.load_state_dict(neuron.state_dict())
    assert (fresh.offset_steps, fresh.offset_rounds) == (4, 2)
    neuron.set_offset_calibration(0)
    assert "offset_calibration" not in neuron.state_dict()
    with pytest.raises(ConfigError, match="IF neuron"):
        LIF().set_offset_calibration(2)
    with pytest.raises(ConfigError, match="rounds"):
        IF().set_offset_calibration(2, rounds=0)


def _qcfs_resnet(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    ann = build(
        "resnet20", width=0.25, activation="qcfs", qcfs_levels=4, block="pre-add", threshold=1.0
    )
    x = torch.randn(16, 3, 16, 16)
    return calibrate_bn(ann, x), x


def test_converts_a_builtin_resnet_and_reloads() -> None:
    ann, x = _qcfs_resnet()
    snn, report = convert(ann, CosConfig(timesteps=6), x)  # QCFS: the images stay unused
    neurons = [site.neuron for _, site in snn_sites(snn)]
    qcfs, _ = convert(ann, QcfsConfig(timesteps=6))
    assert report.method == "cos" and len(neurons) == 21  # pre-add: 21 sites
    assert all((n.offset_steps, n.offset_rounds) == (4, 1) for n in neurons)  # ρ = L = 4
    assert all(torch.equal(a.neuron.threshold, b.neuron.threshold)
               for (_, a), (_, b) in zip(snn_sites(snn), snn_sites(qcfs), strict=True))  # fmt: skip
    with torch.no_grad():
        out = snn(x)
        assert not torch.allclose(out, qcfs(x))  # the calibration changed some spikes
        set_offset_calibration(snn, 0)
        assert torch.allclose(snn(x), qcfs(x))  # ... and nothing else
        set_offset_calibration(snn, 4)
        reloaded = build_converted(snn.config)
        reloaded.load_state_dict(snn.state_dict())
        assert torch.equal(reloaded.eval()(x), out)


def test_converts_a_user_cnn_with_robust_thresholds() -> None:
    torch.manual_seed(1)
    ann = sequential_cnn()
    x = torch.randn(32, 1, 16, 16)
    calibrate_bn(ann, x)
    assert get_method("cos").needs_calibration  # a ReLU site's θ is measured on images
    with pytest.raises(ConfigError, match="calibration data"):
        convert(ann, CosConfig(timesteps=4))
    snn, _ = convert(ann, CosConfig(timesteps=4), x)
    assert all(site.neuron.offset_steps == 4 for _, site in snn_sites(snn))  # no QCFS: ρ = T
    reloaded = build_spiking_graph(sequential_cnn(), 4)
    reloaded.load_state_dict(snn.state_dict())
    with torch.no_grad():
        out = snn(x)
        assert torch.equal(reloaded.eval()(x), out)  # the calibration reloads with the weights
        set_offset_calibration(snn, 0)
        assert not torch.equal(snn(x), out)
    assert out.shape == (32, 10) and torch.isfinite(out).all()


def test_latency_and_sops_count_the_dry_steps() -> None:
    ann, x = _qcfs_resnet()
    snn, _ = convert(ann, CosConfig(timesteps=8, offset_rounds=2), x)
    assert dry_steps(snn, 8) == 8 and total_timesteps(snn, 3, 8) == 11
    assert dry_steps(snn, 2) == 4  # ρ clipped to the simulated window
    sops = {str(t): 10.0 * t for t in range(1, 9)}
    assert total_sops(sops, snn, 3, 8) == 30.0 + 2 * 40.0
    assert resolve_steps(CosConfig(timesteps=8, presim_steps=3), ann) == 3


def test_config_is_checked() -> None:
    for bad in ({"timesteps": 0}, {"presim_steps": 0}, {"offset_rounds": 0}, {"percentile": 0.0}):
        with pytest.raises(ConfigError):
            CosConfig(**{"timesteps": 4, **bad})
