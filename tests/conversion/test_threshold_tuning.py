"""Layer-by-layer threshold tuning (METHODS 2.4, our design)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conversion_helpers import calibrate_bn, convert_by_name

from spikebridge.conversion.decomposition import decompose_errors, quantized_rate
from spikebridge.conversion.sites import capture
from spikebridge.conversion.tuning import (
    clip_reference,
    feeding_conv,
    resolve_reference,
    tune_thresholds,
)
from spikebridge.errors import ConfigError
from spikebridge.models import build
from spikebridge.nn.activations import QCFS, Clip
from spikebridge.nn.temporal import unfold

GRID = (0.5, 0.7, 0.85, 1.0, 1.15)


def _robust_pair(seed: int, images: int, block: str = "post-add"):  # type: ignore[no-untyped-def]
    """A BN-calibrated resnet20 ANN, its robust-norm SNN at T = 4, and the images."""
    torch.manual_seed(seed)
    ann = build("resnet20", width=0.25, block=block)
    x = torch.randn(images, 3, 16, 16)
    calibrate_bn(ann, x)
    return ann, convert_by_name(ann, "robust", x, 4), x


@pytest.fixture(scope="module")
def pair():  # type: ignore[no-untyped-def]
    return _robust_pair(1, 12)


def test_tuning_never_increases_the_loss_and_reports_the_real_loss(pair) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair
    snn = copy.deepcopy(robust_snn)
    report = tune_thresholds(ann, snn, x, 4, grid=GRID, batch_size=5)
    assert [r.site for r in report.rows][:2] == ["act1", "stages.0.0.act1"]
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    assert report.loss_after < report.loss_before  # it found something on this model
    assert any(r.scale != 1.0 for r in report.rows)
    # The reported loss is what the tuned SNN really does at each site (later sites do not
    # change earlier ones): it equals the error table's mean squared error.
    table = decompose_errors(ann, snn, x)
    for row, err in zip(report.rows, table.rows, strict=True):
        assert math.isclose(row.loss_after, err.mse, rel_tol=1e-4, abs_tol=1e-9), row.site
        assert math.isclose(row.theta, err.theta, rel_tol=1e-6)
    # Tuned thresholds: the whole network's output moves toward the ANN.
    with torch.no_grad():
        y = ann(x)
        before = (robust_snn(x) - y).norm().item()
        after = (snn(x) - y).norm().item()
    assert after < before


def test_first_site_choice_matches_brute_force_on_constant_current(pair) -> None:  # type: ignore[no-untyped-def]
    # The stem current is constant over t, so the site's rate is exactly Q_T(z) (METHODS
    # 2.1) and the best scale can be computed by hand from the grid.
    ann, robust_snn, x = pair
    snn = copy.deepcopy(robust_snn)
    theta0 = snn.act1.neuron.threshold.item()
    report = tune_thresholds(ann, snn, x, 4, grid=GRID)
    with torch.no_grad():
        z = ann.bn1(ann.conv1(x))
        a = ann.act1(z)
    losses = [(quantized_rate(z, s * theta0, 4, 0.5) - a).square().mean().item() for s in GRID]
    best = min(range(len(GRID)), key=lambda i: (losses[i], GRID[i] != 1.0))
    assert report.rows[0].scale == GRID[best]
    assert math.isclose(report.rows[0].loss_after, losses[best], rel_tol=1e-4)
    assert math.isclose(report.rows[0].loss_before, losses[GRID.index(1.0)], rel_tol=1e-4)


def test_channelwise_tuning(pair) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair
    layer = tune_thresholds(ann, copy.deepcopy(robust_snn), x, 4, grid=GRID)
    snn = copy.deepcopy(robust_snn)
    report = tune_thresholds(ann, snn, x, 4, grid=GRID, channelwise=True)
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    assert snn.act1.neuron.threshold.shape == (4,) and snn.act1.neuron.phi.shape == (4,)
    assert torch.all(snn.act1.neuron.phi == robust_snn.act1.neuron.phi)  # φ is not tuned
    # Same inputs at the first site: the per-channel θ search contains the layer-wise one.
    assert report.rows[0].loss_after <= layer.rows[0].loss_after + 1e-12
    assert report.channelwise and "| act1 |" in report.to_markdown()


def test_grid_without_one_still_keeps_the_start_and_bad_grids_are_refused(pair) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair
    report = tune_thresholds(ann, copy.deepcopy(robust_snn), x[:4], 2, grid=(3.0,))
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    with pytest.raises(ConfigError, match="positive"):
        tune_thresholds(ann, copy.deepcopy(robust_snn), x, 4, grid=(0.0, 1.0))


@pytest.mark.parametrize("channelwise", [False, True])
def test_bias_shift_never_increases_the_loss_and_is_folded_into_the_conv(pair, channelwise) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair
    plain = tune_thresholds(
        ann, copy.deepcopy(robust_snn), x, 4, grid=GRID, channelwise=channelwise
    )
    snn = copy.deepcopy(robust_snn)
    report = tune_thresholds(
        ann, snn, x, 4, grid=GRID, channelwise=channelwise, tune_bias=True, guard=False
    )
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    # First site, same inputs: the shifted candidates extend the unshifted search.
    assert report.rows[0].loss_after <= plain.rows[0].loss_after + 1e-12
    shifted = [r for r in report.rows if r.bias_shift > 0]
    assert shifted  # the shift won somewhere on this model
    # The shift lives in the conv biases: the tuned model alone reproduces every site's loss.
    table = decompose_errors(ann, snn, x)
    for row, err in zip(report.rows, table.rows, strict=True):
        assert math.isclose(row.loss_after, err.mse, rel_tol=1e-4, abs_tol=1e-9), row.site
    moved = [
        n for n, m in snn.named_modules()
        if isinstance(m, torch.nn.Conv2d)
        and not torch.equal(m.bias, robust_snn.get_submodule(n).bias)
    ]  # fmt: skip
    assert moved and all(n.rsplit(".", 1)[-1].startswith("conv") for n in moved)


def test_feeding_conv_names_the_conv_before_each_site() -> None:
    snn = convert_by_name(
        build("resnet20", width=0.25, block="pre-add"), "maxnorm", torch.randn(2, 3, 8, 8), 2
    )
    assert feeding_conv(snn, "act1") is snn.conv1
    assert feeding_conv(snn, "stages.0.1.act2") is snn.stages[0][1].conv2
    assert feeding_conv(snn, "stages.1.0.shortcut.act") is snn.stages[1][0].shortcut.conv
    assert feeding_conv(snn, "stages.9.0.act1") is None
    bottleneck = convert_by_name(
        build("resnet164", width=0.25), "maxnorm", torch.randn(2, 3, 8, 8), 2
    )
    assert feeding_conv(bottleneck, "stages.2.3.act3") is bottleneck.stages[2][3].conv3


def test_tune_bias_is_refused_for_other_methods(pair) -> None:  # type: ignore[no-untyped-def]
    ann, _, x = pair
    with pytest.raises(ConfigError, match="tune_bias"):
        convert_by_name(ann, "robust", x, 4, tune_bias=True)


def test_block_guard_also_puts_back_the_bias_shift(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import spikebridge.conversion.tuning as tt

    ann, robust_snn, x = pair
    monkeypatch.setattr(tt, "_segment_outputs", _guard_always_fires(tt._segment_outputs))
    snn = copy.deepcopy(robust_snn)
    report = tune_thresholds(ann, snn, x, 4, grid=GRID, tune_bias=True)
    assert all(r.reverted and r.bias_shift == 0.0 for r in report.rows)
    for name, m in snn.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            assert torch.equal(m.bias, robust_snn.get_submodule(name).bias), name


def _guard_always_fires(original):  # type: ignore[no-untyped-def]
    """Report a negative block error before tuning (calls alternate before / after per
    block), so the guard finds every block worse after tuning and puts it back."""
    calls = {"n": 0}

    def fake(seg_a, seg_s, inputs, T):  # type: ignore[no-untyped-def]
        outputs, sse = original(seg_a, seg_s, inputs, T)
        calls["n"] += 1
        return outputs, (-1.0 if calls["n"] % 2 else sse)

    return fake


@pytest.fixture(scope="module")
def pre_add_pair():  # type: ignore[no-untyped-def]
    return _robust_pair(2, 10, block="pre-add")


def test_compensated_stream_site_loss_is_the_block_output_error(pre_add_pair) -> None:  # type: ignore[no-untyped-def]
    # r − (a + s_a − mean_t s_s) = (r + mean_t s_s) − (a + s_a): the stream site's loss is the
    # error of its block's output, which no later site changes. Projection blocks included,
    # so their shortcut site must have been tuned before the stream site.
    ann, robust_snn, x = pre_add_pair
    snn = copy.deepcopy(robust_snn)
    report = tune_thresholds(
        ann, snn, x, 4, grid=GRID, tune_bias=True, guard=False, compensate_stream=True
    )
    rows = {r.site: r for r in report.rows}
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    for i, stage in enumerate(snn.stages):
        for j, block in enumerate(stage):
            with torch.no_grad():
                y_ann = capture(ann, ann.stages[i][j], x, "output")
                y_snn = unfold(capture(snn, block, x, "output"), 4).mean(0)
            mse = (y_snn - y_ann).square().mean().item()
            assert math.isclose(rows[f"stages.{i}.{j}.act2"].loss_after, mse, rel_tol=1e-4), (i, j)
    plain = tune_thresholds(ann, copy.deepcopy(robust_snn), x, 4, grid=GRID, tune_bias=True)
    assert report.rows != plain.rows  # the target really changed


def test_compensate_stream_is_a_no_op_on_post_add_blocks(pair) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair  # post-add: the last site's output IS the stream
    a, b = copy.deepcopy(robust_snn), copy.deepcopy(robust_snn)
    tune_thresholds(ann, a, x, 4, grid=GRID, tune_bias=True)
    tune_thresholds(ann, b, x, 4, grid=GRID, tune_bias=True, compensate_stream=True)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_compensate_stream_is_refused_where_it_cannot_apply(pair) -> None:  # type: ignore[no-untyped-def]
    ann, robust_snn, x = pair
    with pytest.raises(ConfigError, match="compensate_stream"):
        convert_by_name(ann, "qcfs", x, 4, compensate_stream=True)
    with pytest.raises(ConfigError, match="ResNets"):
        tune_thresholds(torch.nn.Sequential(ann), robust_snn, x, 4, compensate_stream=True)


@pytest.fixture(scope="module")
def qcfs_ann():  # type: ignore[no-untyped-def]
    """A BN-calibrated QCFS (L = 2) resnet20 ANN and its images."""
    torch.manual_seed(3)
    ann = build("resnet20", width=0.25, activation="qcfs", qcfs_levels=2, threshold=1.5)
    x = torch.randn(12, 3, 16, 16)
    return calibrate_bn(ann, x), x


def test_clip_reference_is_the_ann_with_clip_sites_at_the_same_lambda(qcfs_ann) -> None:  # type: ignore[no-untyped-def]
    ann, x = qcfs_ann
    ref = clip_reference(ann)
    assert isinstance(ann.act1, QCFS) and isinstance(ref.act1, Clip)  # the ANN is untouched
    assert not any(isinstance(m, QCFS) for m in ref.modules())
    with torch.no_grad():
        z = ann.bn1(ann.conv1(x))
        torch.testing.assert_close(ref.act1(z), z.clamp(0, ann.act1.lam.item()))
        assert not torch.equal(ref(x), ann(x))  # the staircase and its limit differ


def test_clip_reference_tuning_aims_at_clip_of_the_ann_current(qcfs_ann) -> None:  # type: ignore[no-untyped-def]
    ann, x = qcfs_ann
    snn = convert_by_name(ann, "qcfs", None, 4)
    theta0, lam = snn.act1.neuron.threshold.item(), ann.act1.lam.item()
    report = tune_thresholds(ann, snn, x, 4, grid=GRID, reference="clip")
    assert report.reference == "clip"
    assert all(r.loss_after <= r.loss_before for r in report.rows)
    with torch.no_grad():  # the stem current is constant over t: its rate is Q_T(z)
        z = ann.bn1(ann.conv1(x))
    by_hand = (quantized_rate(z, theta0, 4, 0.5) - z.clamp(0, lam)).square().mean().item()
    assert math.isclose(report.rows[0].loss_before, by_hand, rel_tol=1e-4)
    ann_target = tune_thresholds(
        ann, convert_by_name(ann, "qcfs", None, 4), x, 4, grid=GRID, reference="ann"
    )
    assert ann_target.reference == "ann"
    assert not math.isclose(ann_target.rows[0].loss_before, by_hand, rel_tol=1e-4)


def test_auto_reference_is_clip_only_beyond_the_qcfs_levels(qcfs_ann, pair) -> None:  # type: ignore[no-untyped-def]
    qcfs, _ = qcfs_ann
    relu, _, _ = pair
    assert resolve_reference("auto", qcfs, 2) == "ann"  # T = L: the SNN can match the ANN
    assert resolve_reference("auto", qcfs, 3) == "clip"
    assert resolve_reference("auto", relu, 8) == "ann"  # no QCFS site: one network
    assert resolve_reference("clip", relu, 1) == "clip"
    with pytest.raises(ConfigError, match="tuning reference"):
        resolve_reference("teacher", qcfs, 4)
