"""One ResNet for ANN and SNN: forward/backward of every registered model, shared
state-dict layout, tdBN, post-add vs pre-add blocks (METHODS 2.5), time handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikebridge.errors import ConfigError
from spikebridge.models import BasicBlock, ResNet, build, list_models
from spikebridge.nn import SpikingNeuron, SpikingSite

B, K, HW = 2, 7, 16
ALL_MODELS = list_models()  # resnet1202 included: ~3 s at width 0.25, 16x16, one thread
ACTIVATION_KEYS = (".threshold", ".phi", ".lam")


def _tiny(name: str, **kw: object) -> ResNet:
    torch.manual_seed(0)
    return build(name, width=0.25, num_classes=K, **kw)  # type: ignore[arg-type]


def _image(seed: int = 1, batch: int = B, size: int = HW) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_every_parameter_has_gradient(model: nn.Module) -> None:
    """timm's contract: every parameter receives a finite, non-zero gradient."""
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_ann_forward_backward(name: str) -> None:
    model = _tiny(name)
    out = model(_image())
    assert out.shape == (B, K) and torch.isfinite(out).all()
    assert model.forward_steps(_image()).shape == (1, B, K)
    out.square().mean().backward()
    _assert_every_parameter_has_gradient(model)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_snn_forward_backward(name: str) -> None:
    model = _tiny(name, neuron="lif", timesteps=2)
    steps = model.forward_steps(_image())
    assert steps.shape == (2, B, K) and torch.isfinite(steps).all()
    out = model(_image())
    torch.testing.assert_close(out, steps.mean(0))
    out.square().mean().backward()
    _assert_every_parameter_has_gradient(model)


@pytest.mark.parametrize("kw", [dict(activation="clip"), dict(activation="qcfs")])
def test_clip_and_qcfs_lambdas_learn(kw: dict[str, str]) -> None:
    model = _tiny("resnet20", threshold=1.0, **kw)
    model(_image()).square().mean().backward()
    _assert_every_parameter_has_gradient(model)  # includes every site's λ


def _param_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    sd = model.state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if not k.endswith(ACTIVATION_KEYS)}


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet50", "resnet164"])
@pytest.mark.parametrize("block", ["post-add", "pre-add"])
def test_ann_and_snn_share_state_dict_layout(name: str, block: str) -> None:
    ann = _tiny(name, block=block)
    snn = _tiny(name, block=block, neuron="lif")
    assert _param_keys(ann) == _param_keys(snn)
    # The only extra SNN entries are each neuron's θ and φ buffers.
    extra = set(snn.state_dict()) - set(ann.state_dict())
    assert extra and all(k.endswith((".neuron.threshold", ".neuron.phi")) for k in extra)
    result = snn.load_state_dict(ann.state_dict(), strict=False)
    assert set(result.missing_keys) == extra and not result.unexpected_keys
    assert torch.equal(snn.stages[-1][-1].conv2.weight, ann.stages[-1][-1].conv2.weight)


def test_converted_snn_takes_clip_ann_weights() -> None:
    ann = _tiny("resnet20", activation="clip", block="pre-add")
    snn = _tiny("resnet20", neuron="if", block="pre-add")
    result = snn.load_state_dict(ann.state_dict(), strict=False)
    assert result.unexpected_keys and all(k.endswith(".lam") for k in result.unexpected_keys)
    assert all(k.endswith((".threshold", ".phi")) for k in result.missing_keys)


@pytest.mark.parametrize(("kw", "gamma"), [
    (dict(neuron="lif"), 0.5),
    (dict(neuron="lif", threshold=0.3), 0.3),
    (dict(neuron="if"), 1.0),
    (dict(neuron="if", threshold=2.0), 2.0),
    (dict(), 1.0),
])  # fmt: skip
def test_tdbn_gamma_starts_at_threshold(kw: dict[str, object], gamma: float) -> None:
    model = _tiny("resnet20", block="pre-add", **kw)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 9 * 2 + 2  # stem, two per block, two projection shortcuts
    for bn in bns:
        torch.testing.assert_close(bn.weight.data, torch.full_like(bn.weight, gamma))
        assert bn.bias.abs().sum() == 0
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    assert all(n.threshold.item() == pytest.approx(gamma) for n in neurons)


@pytest.mark.parametrize("structure", ["post-add", "pre-add"])
def test_block_structure_formula(structure: str) -> None:
    """post-add: act2(branch(x) + shortcut(x)); pre-add: act2(branch(x)) + shortcut(x)."""
    model = _tiny("resnet20", block=structure).eval()
    x = torch.randn(B, 4, 8, 8)
    for block in (model.stages[0][1], model.stages[1][0]):  # identity, projection shortcut
        assert isinstance(block, BasicBlock) and block.structure == structure
        short = x if block.shortcut is None else block.shortcut(x)
        if structure == "post-add":
            expected = block.act2(block.branch(x) + short)
        else:
            expected = block.act2(block.branch(x)) + short
        torch.testing.assert_close(block(x), expected)
        x = expected
    projection = model.stages[1][0].shortcut
    assert isinstance(projection, nn.Sequential)
    assert ("act" in dict(projection.named_children())) == (structure == "pre-add")


@pytest.mark.parametrize("structure", ["post-add", "pre-add"])
def test_spiking_block_outputs_are_spike_counts(structure: str) -> None:
    """Every block output of a LIF network is a spike train (post-add: 0/1) or a sum of
    spike trains (pre-add, METHODS 2.5): never an analog value, projections included."""
    # kaiming's larger weights make the sites fire often enough for two spikes to meet at an add
    model = _tiny("resnet20", neuron="lif", timesteps=2, block=structure, conv_init="kaiming")
    model.eval()
    outputs: list[torch.Tensor] = []
    for stage in model.stages:
        for block in stage:
            block.register_forward_hook(lambda m, i, o: outputs.append(o))
    model(_image())
    assert len(outputs) == 9
    for out in outputs:
        assert torch.equal(out, out.round()) and out.min() >= 0
    top = max(o.max().item() for o in outputs)
    assert top == 1.0 if structure == "post-add" else top >= 2.0


def test_set_timesteps_changes_T() -> None:
    model = _tiny("resnet20", neuron="lif", timesteps=2)
    model.set_timesteps(3)
    assert model.timesteps == 3 and model.config.timesteps == 3
    assert all(m.timesteps == 3 for m in model.modules() if isinstance(m, SpikingSite))
    assert model.forward_steps(_image()).shape == (3, B, K)
    sequence = _image().unsqueeze(0).expand(3, -1, -1, -1, -1)
    model.eval()
    torch.testing.assert_close(model.forward_steps(sequence), model.forward_steps(_image()))
    with pytest.raises(ConfigError, match="time-steps"):
        model.forward_steps(sequence[:2])
    with pytest.raises(ConfigError, match="timesteps"):
        model.set_timesteps(0)
    with pytest.raises(ConfigError, match="spiking"):
        _tiny("resnet20").set_timesteps(4)


def test_features_are_per_step_pooled() -> None:
    model = _tiny("resnet18", neuron="lif", timesteps=2)
    x = _image().unsqueeze(0).expand(2, -1, -1, -1, -1).flatten(0, 1)
    assert model.features(x).shape == (2 * B, 128)  # 512 · 0.25 channels


def test_stem_padding_quirk_grows_the_image() -> None:
    # The authors' stem is a 3x3 conv with padding 3 (fei015/IDSNN models/S_ResNet.py):
    # 32 + 2·3 - 3 + 1 = 36; docs/METHODS.md 1.1.
    model = _tiny("resnet18", stem_padding=3)
    assert model.conv1(_image(size=32)).shape[-1] == 36
    assert model(_image(size=32)).shape == (B, K)


def test_loop_and_fused_backends_give_the_same_network() -> None:
    fused = _tiny("resnet20", neuron="lif", timesteps=3).double()
    loop = _tiny("resnet20", neuron="lif", timesteps=3, neuron_backend="loop").double()
    loop.load_state_dict(fused.state_dict())
    x = _image().double()
    out_f, out_l = fused(x), loop(x)
    assert torch.equal(out_f, out_l)
    out_f.sum().backward()
    out_l.sum().backward()
    for (name, pf), pl in zip(fused.named_parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pl.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_same_batch_twice_gives_same_output() -> None:
    model = _tiny("resnet20", neuron="lif", timesteps=3).eval()
    first = model(_image(1))
    model(_image(2) * 5)
    assert torch.equal(model(_image(1)), first)


def test_interleaved_spiking_models_do_not_interact() -> None:
    torch.manual_seed(0)
    a = build("resnet20", width=0.25, neuron="lif", timesteps=2).eval()
    torch.manual_seed(1)
    b = build("resnet20", width=0.25, neuron="if", timesteps=3, block="pre-add").eval()
    xa, xb = _image(3), _image(4)
    alone_a, alone_b = a(xa), b(xb)
    for _ in range(2):
        assert torch.equal(a(xa), alone_a)
        assert torch.equal(b(xb), alone_b)


def test_bad_structure_is_config_error() -> None:
    with pytest.raises(ConfigError, match="post-add"):
        build("resnet20", block="postadd")
    with pytest.raises(ConfigError, match="lif"):
        build("resnet20", neuron="lfi")


@pytest.mark.parametrize("name", ["resnet20", "resnet164"])
@pytest.mark.parametrize("structure", ["post-add", "pre-add"])
def test_zero_init_residual_makes_every_block_its_shortcut(name: str, structure: str) -> None:
    """Goyal et al. 2017: with the last branch BN at γ = 0 each identity block passes its
    input through (pre-add: x + act(0) = x; post-add: act(x) = x for x already in range)."""
    model = _tiny(name, block=structure, zero_init_residual=True).eval()
    identity_blocks = [b for s in model.stages for b in s if b.shortcut is None]
    assert identity_blocks
    for block in identity_blocks[:3]:
        x = torch.relu(torch.randn(2, block.conv1.in_channels, 6, 6))
        torch.testing.assert_close(block(x), x)
    assert not any(
        torch.equal(b.bn2.weight, torch.zeros_like(b.bn2.weight))
        for s in _tiny(name, block=structure).stages
        for b in s
    )


def test_conv_init_default_is_pytorchs_and_kaiming_is_fan_out_normal() -> None:
    """Default: PyTorch's kaiming-uniform(a=√5), i.e. U(±1/√fan_in); kaiming: N(0, 2/fan_out)."""
    torch.manual_seed(0)
    conv = build("resnet20", width=1.0, conv_init="default").stages[2][0].conv2  # 64x64x3x3
    bound = 1 / math.sqrt(64 * 9)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.99 * bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    conv = build("resnet20", width=1.0, conv_init="kaiming").stages[2][0].conv2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    with pytest.raises(ConfigError, match="unknown conv_init 'xavier'"):
        build("resnet20", conv_init="xavier")
