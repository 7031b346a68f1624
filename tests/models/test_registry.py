"""Model registry: names, parameter counts of the standard architectures, configs, errors."""

from __future__ import annotations

import pytest
import torch

import spikebridge.models.registry as registry_module
from spikebridge.errors import ConfigError
from spikebridge.models import ModelConfig, ResNet, build, build_from_config, list_models

FOUR = (64, 128, 256, 512)
THREE = (16, 32, 64)
ARCHITECTURES = {
    # name: (block, blocks per stage, base widths): the published definitions, written out
    # independently of the registry (CIFAR ResNets: He et al. 2016, 6n+2 / 9n+2 layers).
    "resnet18": ("basic", (2, 2, 2, 2), FOUR),
    "resnet34": ("basic", (3, 4, 6, 3), FOUR),
    "resnet50": ("bottleneck", (3, 4, 6, 3), FOUR),
    "resnet101": ("bottleneck", (3, 4, 23, 3), FOUR),
    "resnet152": ("bottleneck", (3, 8, 36, 3), FOUR),
    "resnet20": ("basic", (3, 3, 3), THREE),
    "resnet32": ("basic", (5, 5, 5), THREE),
    "resnet44": ("basic", (7, 7, 7), THREE),
    "resnet56": ("basic", (9, 9, 9), THREE),
    "resnet110": ("basic", (18, 18, 18), THREE),
    "resnet1202": ("basic", (200, 200, 200), THREE),
    "resnet164": ("bottleneck", (18, 18, 18), THREE),
}
# Published counts of the CIFAR variants (3x3 stem, no max-pool, projection shortcuts,
# BN affine parameters included, 10 classes, 3 input channels).
PUBLISHED = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet44": 661_338,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
}


def expected_parameters(
    name: str, width: float = 1.0, num_classes: int = 10, in_channels: int = 3
) -> int:
    """Count weights from the architecture definition: convs (no bias), BN (γ, β), FC."""
    block, layers, widths = ARCHITECTURES[name]
    expansion = 1 if block == "basic" else 4

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k

    chans = [max(1, round(w * width)) for w in widths]
    total = conv(in_channels, chans[0], 3) + 2 * chans[0]
    cin = chans[0]
    for stage, (n, planes) in enumerate(zip(layers, chans, strict=True)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            cout = planes * expansion
            if block == "basic":
                total += conv(cin, planes, 3) + conv(planes, planes, 3) + 4 * planes
            else:
                total += conv(cin, planes, 1) + conv(planes, planes, 3) + conv(planes, cout, 1)
                total += 4 * planes + 2 * cout
            if stride != 1 or cin != cout:
                total += conv(cin, cout, 1) + 2 * cout
            cin = cout
    return total + cin * num_classes + num_classes


def _count_on_meta(name: str, **kw: object) -> int:
    """Build without allocating or initializing real weights: shapes are all we count."""
    with torch.device("meta"):
        model = build(name, **kw)  # type: ignore[arg-type]
    return sum(p.numel() for p in model.parameters())


def test_registered_names() -> None:
    assert set(list_models()) == set(ARCHITECTURES)
    assert list_models()[:2] == ["resnet18", "resnet20"]  # sorted by length, then name


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    assert expected_parameters(name) == PUBLISHED[name]
    assert _count_on_meta(name) == PUBLISHED[name]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_count_matches_formula(name: str) -> None:
    assert _count_on_meta(name) == expected_parameters(name)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet56", "resnet164"])
@pytest.mark.parametrize("width", [0.25, 0.5, 1.5])
def test_parameter_count_other_widths(name: str, width: float) -> None:
    # Other widths, classes and input channels follow the same definition.
    kw = dict(width=width, num_classes=100, in_channels=1)
    assert _count_on_meta(name, **kw) == expected_parameters(name, width, 100, 1)


def test_spiking_model_has_the_same_parameters() -> None:
    # Neurons add buffers (θ, φ), not parameters: an SNN counts exactly like its ANN.
    assert _count_on_meta("resnet20", neuron="lif") == PUBLISHED["resnet20"]
    assert _count_on_meta("resnet20", neuron="if", block="pre-add") == PUBLISHED["resnet20"]


def test_unknown_model_name_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build("resnt18")
    with pytest.raises(ConfigError, match="did you mean 'resnet110'"):
        build("resnet100")
    with pytest.raises(ConfigError, match="unknown model 'vgg16'.*resnet20"):
        build("vgg16")  # nothing close: the message still lists the valid names


def test_unknown_option_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="'widht'.*did you mean 'width'"):
        build("resnet20", widht=0.5)
    with pytest.raises(ConfigError, match="did you mean 'timesteps'"):
        build("resnet20", neuron="lif", timestep=4)


def test_none_options_keep_defaults() -> None:
    model = build("resnet20", width=None, threshold=None, timesteps=None, neuron=None)
    assert model.config == ModelConfig(name="resnet20")
    assert not model.spiking and model.timesteps == 1


def test_config_rebuilds_the_same_model() -> None:
    model = build("resnet20", width=0.5, neuron="lif", timesteps=3, block="pre-add")
    cfg = model.config
    assert cfg.name == "resnet20" and cfg.width == 0.5 and cfg.timesteps == 3
    again = build_from_config(ModelConfig(**cfg.to_dict()))
    assert again.config == cfg and again.timesteps == 3 and again.structure == "pre-add"
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    assert build(**cfg.to_dict()).config == cfg  # build(**config["model"]) in run folders


def test_build_from_config_checks_the_name() -> None:
    with pytest.raises(ConfigError, match="resnet56"):
        build_from_config(ModelConfig(name="resnet65"))


def test_register_model_adds_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    registry_module.register_model("resnet8")(lambda **kw: ResNet("basic", (1, 1, 1), THREE, **kw))
    assert "resnet8" in list_models()
    model = build("resnet8", num_classes=3)
    assert model.config.name == "resnet8"
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
