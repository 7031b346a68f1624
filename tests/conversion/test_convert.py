"""ANN -> SNN conversion (METHODS 2.1-2.2, 2.5-2.6): folding, thresholds, structure, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from conversion_helpers import calibrate_bn, convert_by_name
from torch import nn

from spikebridge.conversion import build_converted, fold_batchnorm, is_converted_state
from spikebridge.conversion.sites import HIST_BINS, site_thresholds
from spikebridge.errors import ConfigError, ModelError
from spikebridge.models import build
from spikebridge.nn import SpikingSite


def _tiny(seed: int = 0, **kw):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    ann = build("resnet20", width=0.25, **kw)
    x = torch.randn(16, 3, 16, 16)
    return calibrate_bn(ann, x), x


def test_bn_folding_preserves_ann_outputs() -> None:
    ann, x = _tiny(block="pre-add")
    g = torch.Generator().manual_seed(3)
    for m in ann.modules():  # non-trivial affine BN parameters on top of real statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.3
    folded = fold_batchnorm(copy.deepcopy(ann))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.conv1.bias is not None and folded.stages[1][0].shortcut.conv.bias is not None
    with torch.no_grad():
        assert torch.allclose(folded(x), ann(x), rtol=1e-4, atol=1e-5)


def test_converted_model_structure_and_ann_untouched() -> None:
    ann, x = _tiny()
    ann.train()  # convert must not change the ANN's mode or weights
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    snn = convert_by_name(ann, "robust", x, 4)
    assert ann.training and all(torch.equal(before[k], v) for k, v in ann.state_dict().items())
    assert snn.spiking and snn.timesteps == 4 and snn.config.neuron == "if"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    sites = [m for m in snn.modules() if isinstance(m, SpikingSite)]
    assert len(sites) == 19
    n = sites[0].neuron
    assert n.reset == "subtract" and not n.strict and n.emit_threshold and n.decay == 1.0
    assert n.phi.item() == 0.5
    assert torch.equal(snn.fc.weight, ann.fc.weight)  # analog readout copied as is
    assert snn.conversion_report.method == "robust"


def test_single_qcfs_layer_converts_exactly_at_t_equal_l() -> None:
    # The stem site sees a constant current (direct encoding). With θ = λ, φ = 1/2 and
    # T = L, the IF rate equals QCFS(L) exactly (METHODS 2.2): zero conversion error.
    ann, x = _tiny(activation="qcfs", qcfs_levels=4)
    for i, m in enumerate(m for m in ann.modules() if hasattr(m, "lam")):
        m.lam.data.fill_(0.5 + 0.1 * i)
    snn = convert_by_name(ann, "qcfs", None, 4)
    assert snn.act1.neuron.threshold.item() == pytest.approx(0.5)
    got: dict[str, torch.Tensor] = {}
    snn.act1.register_forward_hook(lambda m, a, o: got.update(snn=o.view(4, 16, *o.shape[1:])))
    ann.act1.register_forward_hook(lambda m, a, o: got.update(ann=o))
    with torch.no_grad():
        snn(x), ann(x)
    assert got["ann"].unique().numel() > 3  # several quantization levels in use
    assert torch.allclose(got["snn"].mean(0), got["ann"], atol=1e-6)
    assert not torch.allclose(got["snn"][0], got["ann"])  # rates, not per-step copies


def test_pre_add_identity_path_passes_spikes_unchanged() -> None:
    ann, x = _tiny(block="pre-add")
    snn = convert_by_name(ann, "robust", x[:8], 4)
    block = snn.stages[0][1]
    assert block.shortcut is None and block.structure == "pre-add"
    got: dict[str, torch.Tensor] = {}
    block.register_forward_hook(lambda m, a, o: got.update(inp=a[0], out=o))
    block.act2.register_forward_hook(lambda m, a, o: got.update(act_in=a[0], act_out=o))
    with torch.no_grad():
        snn(x[:8])
        branch = block.branch(got["inp"])
    # block output = neuron(branch) + incoming spikes: no neuron integrates the shortcut.
    assert torch.allclose(got["out"] - got["act_out"], got["inp"], atol=1e-6)
    assert torch.equal(got["act_in"], branch)
    # The incoming tensor is itself a sum of spike trains (stem spikes + block-0 spikes).
    theta = snn.act1.neuron.threshold + snn.stages[0][0].act2.neuron.threshold
    assert got["inp"].min() >= 0 and got["inp"].max() <= theta + 1e-6


def test_thresholds_match_max_and_percentile_of_pre_activations() -> None:
    ann, x = _tiny()
    pre: list[torch.Tensor] = []
    h = ann.stages[1][1].act2.register_forward_pre_hook(lambda m, a: pre.append(a[0]))
    with torch.no_grad():
        ann(x)
    h.remove()
    z = pre[0]
    name = "stages.1.1.act2"
    th_max = site_thresholds(ann, [x[:7], x[7:]], None)[name]
    assert th_max.item() == pytest.approx(z.max().item(), rel=1e-6)
    th = site_thresholds(ann, [x], 90.0, channelwise=True)[name]
    assert th.shape == (z.shape[1],)
    per_channel = z.transpose(0, 1).reshape(z.shape[1], -1)
    res = 6 * 2.303 / HIST_BINS  # log-spaced bins: 6 decades / 4096 bins, relative width
    for c in range(z.shape[1]):
        pos = per_channel[c][per_channel[c] > 0]
        # th is the 90th percentile of the positive values up to one histogram bin:
        assert (pos < th[c] * (1 - res)).float().mean() <= 0.9
        assert (pos <= th[c] * (1 + res)).float().mean() >= 0.9


def test_snn_logits_approach_ann_logits_as_t_grows() -> None:
    ann, x = _tiny(seed=2)
    with torch.no_grad():
        y = ann(x[:8])
        errs = {}
        for T in (4, 64):
            snn = convert_by_name(ann, "robust", x, T)
            errs[T] = ((snn(x[:8]) - y).norm() / y.norm()).item()
    assert errs[64] < 0.5 * errs[4], errs


def test_save_and_reload_a_converted_model() -> None:
    ann, x = _tiny(activation="clip", threshold=3.0)
    snn = convert_by_name(
        ann, "ttrbr", [(x[:8], None), (x[8:], None)], 2, channelwise=True, scale_grid=(0.8, 1)
    )
    state = snn.state_dict()
    assert is_converted_state(state) and not is_converted_state(ann.state_dict())
    assert state["act1.neuron.threshold"].shape == (4,)
    reloaded = build_converted(snn.config)
    reloaded.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), snn(x))
    assert snn.conversion_report.tuning is not None


def test_unsupported_layers_are_refused_with_a_fix() -> None:
    ann, x = _tiny()
    ann.stem_pool = nn.MaxPool2d(2)
    with pytest.raises(ModelError, match="replace MaxPool2d with AvgPool2d"):
        convert_by_name(ann, "robust", x, 4)
    torch_ann = build("resnet18", width=0.125, stem="7x7", stem_pool="max")
    with pytest.raises(ModelError, match="'stem_pool'.*MaxPool2d"):
        convert_by_name(torch_ann, "maxnorm", x, 4)
    ann, _ = _tiny()
    ann.stages[0][0].act1 = nn.GELU()
    with pytest.raises(ModelError, match="replace GELU with ReLU, Clip or QCFS"):
        convert_by_name(ann, "robust", x, 4)


def test_bad_requests_are_refused() -> None:
    ann, x = _tiny()
    with pytest.raises(ModelError, match="site 'act1' is a ReLU"):
        convert_by_name(ann, "qcfs", x, 4)
    with pytest.raises(ConfigError, match="unknown conversion method"):
        convert_by_name(ann, "maxpool", x, 4)
    with pytest.raises(ConfigError, match="needs calibration data"):
        convert_by_name(ann, "robust", None, 4)
    with pytest.raises(ConfigError, match="method 'robust' has no option 'tune_phi'"):
        convert_by_name(ann, "robust", x, 4, tune_phi=True)  # removed: measured to do nothing
    with pytest.raises(ConfigError, match="'qcfs' has no option 'channelwise'.*maxnorm, robust"):
        convert_by_name(ann, "qcfs", x, 4, channelwise=True)
    with pytest.raises(ConfigError, match="percentile must lie in"):
        convert_by_name(ann, "robust", x, 4, percentile=0.0)
    with pytest.raises(ConfigError, match="phi is"):
        convert_by_name(ann, "robust", x, 4, phi=1.5)
    with pytest.raises(ModelError, match="already spiking"):
        convert_by_name(build("resnet20", width=0.25, neuron="if"), "robust", x, 4)


def test_thresholds_are_per_channel_by_default_for_ttrbr_only() -> None:
    torch.manual_seed(0)
    ann = build("resnet20", width=0.25)
    x = torch.randn(6, 3, 8, 8)
    calibrate_bn(ann, x)

    def theta_shapes(snn: nn.Module) -> set[tuple[int, ...]]:
        return {
            tuple(m.neuron.threshold.shape) for m in snn.modules() if isinstance(m, SpikingSite)
        }

    assert theta_shapes(convert_by_name(ann, "robust", x, 2)) == {()}
    assert all(len(s) == 1 and s[0] > 1 for s in theta_shapes(convert_by_name(ann, "ttrbr", x, 2)))
    assert theta_shapes(convert_by_name(ann, "ttrbr", x, 2, channelwise=False)) == {()}
    assert all(
        len(s) == 1 for s in theta_shapes(convert_by_name(ann, "robust", x, 2, channelwise=True))
    )
