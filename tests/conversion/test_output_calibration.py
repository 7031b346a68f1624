"""Output calibration: threshold scales and input shifts fitted to the ANN's outputs
(METHODS 2.4 extension, our design)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conversion_helpers import calibrate_bn, convert_by_name

from spikebridge.conversion.output_calibration import (
    CalibrationReport,
    _rate_schedule,
    _ScaledNeuron,
    calibrate_outputs,
)
from spikebridge.conversion.sites import snn_sites
from spikebridge.conversion.tuning import feeding_conv
from spikebridge.errors import ConfigError
from spikebridge.models import build
from spikebridge.nn.neurons import IF


def _pair(seed: int = 3, images: int = 24):  # type: ignore[no-untyped-def]
    """A BN-calibrated QCFS resnet20 ANN, its untuned qcfs SNN at T = 4, and images."""
    torch.manual_seed(seed)
    ann = build("resnet20", width=0.25, activation="qcfs", qcfs_levels=4, block="pre-add")
    x = torch.randn(images, 3, 16, 16)
    calibrate_bn(ann, x)
    return ann, convert_by_name(ann, "qcfs", None, 4), x


@pytest.fixture(scope="module")
def pair():  # type: ignore[no-untyped-def]
    return _pair()


def test_scaled_neuron_is_the_if_neuron_with_scaled_threshold_on_shifted_input() -> None:
    # s·IF_θ((x + δ)/s) == IF_{s·θ}(x + δ): with power-of-two scales every potential is
    # scaled exactly, so the spike trains must agree bit for bit.
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 6, 6)  # [T, B, C, H, W]
    wrapped = _ScaledNeuron(IF(threshold=0.8, phi=0.5), channels=4, shift=True)
    with torch.no_grad():
        wrapped.log_scale.copy_(torch.tensor([1.0, 0.5, 2.0, 0.25]).log())
        wrapped.shift.copy_(torch.tensor([0.1, -0.3, 0.0, 0.7]))  # type: ignore[union-attr]
    s = torch.tensor([1.0, 0.5, 2.0, 0.25]).view(-1, 1, 1)
    reference = IF(threshold=0.8 * torch.tensor([1.0, 0.5, 2.0, 0.25]), phi=0.5)
    expected = reference(x + torch.tensor([0.1, -0.3, 0.0, 0.7]).view(-1, 1, 1))
    assert torch.equal(wrapped(x), expected)
    assert expected.abs().sum() > 0 and (expected.unique().numel() > 2)  # not a trivial train
    # the fold writes exactly that neuron
    folded = wrapped.fold(None)
    assert torch.allclose(folded.threshold, 0.8 * s.flatten())


def test_fold_keeps_the_network_output(pair) -> None:  # type: ignore[no-untyped-def]
    ann, snn0, x = pair
    snn = copy.deepcopy(snn0)
    name, site = snn_sites(snn)[3]
    conv = feeding_conv(snn, name)
    assert conv is not None
    channels = conv.out_channels
    wrapped = _ScaledNeuron(site.neuron, channels, shift=True)
    with torch.no_grad():
        wrapped.log_scale.copy_(torch.tensor([0.5, 2.0] * (channels // 2)).log())
        wrapped.shift.normal_(0, 0.2)  # type: ignore[union-attr]
    site.neuron = wrapped  # type: ignore[assignment]
    with torch.no_grad():
        before = snn(x)
        site.neuron = wrapped.fold(conv)
        after = snn(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(after, snn0(x), atol=1e-3)  # the change did something


def test_calibration_lowers_the_output_error_and_keeps_the_best_epoch(pair) -> None:  # type: ignore[no-untyped-def]
    ann, snn0, x = pair
    snn = copy.deepcopy(snn0)
    report = calibrate_outputs(ann, snn, x, 4, epochs=4, lr=0.05, batch_size=6, reference="ann")
    assert isinstance(report, CalibrationReport)
    assert report.fit_images == 18 and report.holdout_images == 6
    assert len(report.train_loss) == 4 and len(report.holdout_loss) == 5
    best = report.best_epoch
    assert report.holdout_loss[best] == min(report.holdout_loss)
    assert report.holdout_loss[best] < report.holdout_loss[0]  # it learned something here
    # the returned model is the kept epoch's: its held-out loss is the reported one
    held = x[-6:]
    with torch.no_grad():
        loss = (snn(held) - ann(held)).square().mean().item()
        assert abs(loss - report.holdout_loss[best]) < 1e-4 * max(1.0, loss)
    # thresholds became per-channel and the folded model stays a plain IF network
    for _, site in snn_sites(snn):
        assert site.neuron.threshold.dim() == 1
        assert type(site.neuron).__name__ == "SpikingNeuron"
    assert all(not p.requires_grad for p in snn.parameters()) == all(
        not p.requires_grad for p in snn0.parameters()
    )
    assert "(kept)" in report.to_markdown()


def test_calibration_keeps_the_start_when_no_epoch_helps(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # An absurd learning rate wrecks every epoch: the guard must hand back the start.
    ann, snn0, x = pair
    snn = copy.deepcopy(snn0)
    report = calibrate_outputs(ann, snn, x, 4, epochs=2, lr=50.0, batch_size=6, reference="ann")
    assert report.best_epoch == 0
    with torch.no_grad():
        assert torch.allclose(snn(x), snn0(x), atol=1e-5)


def test_gradients_reach_every_scale_and_shift(pair) -> None:  # type: ignore[no-untyped-def]
    ann, snn0, x = pair
    snn = copy.deepcopy(snn0)
    wrappers = []
    for name, site in snn_sites(snn):
        conv = feeding_conv(snn, name)
        assert conv is not None
        wrappers.append(_ScaledNeuron(site.neuron, conv.out_channels, shift=True))
        site.neuron = wrappers[-1]  # type: ignore[assignment]
    (snn(x) - ann(x).detach()).square().mean().backward()
    for w in wrappers:
        assert w.log_scale.grad is not None and w.log_scale.grad.abs().sum() > 0
        assert w.shift is not None and w.shift.grad is not None and w.shift.grad.abs().sum() > 0


def test_convert_runs_output_calibration_for_ttrbr_by_default(pair) -> None:  # type: ignore[no-untyped-def]
    ann, _, x = pair
    snn = convert_by_name(ann, "ttrbr", x, 4, scale_grid=(0.9, 1.0), tune_epochs=1)
    assert snn.conversion_report.calibration is not None
    assert snn.conversion_report.calibration.epochs == 1
    off = convert_by_name(ann, "ttrbr", x, 4, scale_grid=(0.9, 1.0), tune_epochs=0)
    assert off.conversion_report.calibration is None
    default = convert_by_name(ann, "ttrbr", x, 4, scale_grid=(0.9, 1.0))
    assert default.conversion_report.calibration is not None


def test_bad_calibration_settings_are_refused(pair) -> None:  # type: ignore[no-untyped-def]
    ann, snn0, x = pair
    with pytest.raises(ConfigError, match="epochs"):
        calibrate_outputs(ann, copy.deepcopy(snn0), x, 4, epochs=0)
    with pytest.raises(ConfigError, match="learning rate"):
        calibrate_outputs(ann, copy.deepcopy(snn0), x, 4, lr=0.0)
    with pytest.raises(TypeError, match="schedule"):  # removed: a constant rate did nothing
        calibrate_outputs(ann, copy.deepcopy(snn0), x, 4, schedule="constant")
    with pytest.raises(ConfigError, match="at least 2"):
        calibrate_outputs(ann, copy.deepcopy(snn0), x[:1], 4)
    with pytest.raises(ConfigError, match="ttrbr"):
        convert_by_name(ann, "robust", x, 4, tune_epochs=2)
    with pytest.raises(ConfigError, match=">= 0"):
        convert_by_name(ann, "ttrbr", x, 4, tune_epochs=-1)


def test_rate_schedule_is_a_cosine_to_zero() -> None:
    # lr·(1 + cos(π k / N)) / 2 after k of N steps; 0.01 -> 0.005 at N/2 -> 0 at N
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    rate = _rate_schedule(opt, total_steps=8)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(8):
        opt.step()
        rate.step()
        seen.append(opt.param_groups[0]["lr"])
    expected = [0.01 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(9)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[4] == pytest.approx(0.005) and seen[8] == pytest.approx(0.0, abs=1e-12)
