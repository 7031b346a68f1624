"""The method registry: every registered method converts a built-in ResNet and a user CNN
(parametrized over the registry, so a new method is tested here without a line added), names
are refused with the nearest one, every method's config refuses unknown options, and no
module outside the method modules tests a method's name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conversion_helpers import calibrate_bn
from torch import nn
from user_cnns import ResidualCNN

from spikebridge.conversion import (
    METHODS,
    ConversionMethod,
    MethodConfig,
    SpikingGraph,
    TtrbrConfig,
    convert,
    get_method,
    method_config,
    method_of,
    register_method,
)
from spikebridge.errors import ConfigError
from spikebridge.models import ResNet, build
from spikebridge.nn import QCFS, SpikingSite

ROOT = Path(__file__).resolve().parents[2]
T = 2


def _activation(name: str) -> str:
    """The ANN a method is applied to: ReLU where it takes one, else QCFS."""
    return "relu" if "relu" in get_method(name).ann_activations else "qcfs"


class _QcfsCNN(ResidualCNN):
    """The residual user CNN written with QCFS modules where its ReLUs were (what a user's
    conversion-aware CNN looks like)."""

    def __init__(self) -> None:
        super().__init__(width=4)
        self.relu = QCFS(levels=4, lam=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem_bn(self.stem(x))))
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)
        x = torch.nn.functional.adaptive_avg_pool2d(self.relu(self.head(x)), 1)
        return self.fc(x.view(x.size(0), -1))


def _user_cnn(activation: str) -> nn.Module:
    torch.manual_seed(0)
    return _QcfsCNN() if activation == "qcfs" else ResidualCNN(width=4)


def _small_options(name: str) -> dict[str, object]:
    """Fast settings: one calibration epoch where a method has output calibration."""
    fields = {f.name for f in dataclasses.fields(get_method(name).config_class)}
    return {"tune_epochs": 1} if "tune_epochs" in fields else {}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("kind", ["resnet", "user"])
def test_every_registered_method_converts_a_resnet_and_a_user_cnn(name: str, kind: str) -> None:
    act = _activation(name)
    if kind == "resnet":
        torch.manual_seed(0)
        ann, x = (
            build("resnet20", width=0.25, activation=act, block="pre-add"),
            torch.randn(12, 3, 8, 8),
        )
    else:
        ann, x = _user_cnn(act), torch.randn(12, 1, 16, 16)
    calibrate_bn(ann, x)
    method = get_method(name)
    config = method_config(name, timesteps=T, **_small_options(name))
    assert method_of(config) is method and isinstance(config, method.config_class)
    labels = ann(x).argmax(1)
    held_out = [(x[:6], labels[:6]), (x[6:], labels[6:])] if method.needs_held_out(config) else None
    calibration = x if method.needs_calibration else None
    snn, report = convert(ann, config, calibration, held_out=held_out)
    assert isinstance(snn, ResNet if kind == "resnet" else SpikingGraph)
    assert snn.conversion_report is report and report.method == name and not snn.training
    sites = [m for m in snn.modules() if isinstance(m, SpikingSite)]
    assert sites and all(bool((s.neuron.threshold > 0).all()) for s in sites)
    assert set(report.thresholds) == {n for n, m in snn.named_modules() if m in sites}
    with torch.no_grad():
        out = snn(x[:3])
    assert out.shape == (3, 10) and torch.isfinite(out).all() and snn.timesteps == T
    assert report.reference is None or method.tunes  # only a tuning method aims at one


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_config_refuses_unknown_options_with_the_nearest(name: str) -> None:
    config_class = get_method(name).config_class
    with pytest.raises(
        ConfigError, match=rf"method '{name}' has no option 'timestep'.*'timesteps'"
    ):
        method_config(name, timestep=T)
    with pytest.raises(TypeError):  # the dataclass itself: keyword-only, no unknown fields
        config_class(timesteps=T, bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="timesteps"):
        method_config(name, timesteps=0)
    config = method_config(name, timesteps=T)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timesteps = 3  # type: ignore[misc]


def test_an_option_of_another_method_says_whose_it_is() -> None:
    with pytest.raises(
        ConfigError, match="'qcfs' has no option 'tune_epochs' \\(an option of ttrbr\\)"
    ):
        method_config("qcfs", timesteps=T, tune_epochs=2)


def test_unknown_method_is_one_sentence_with_the_nearest_name() -> None:
    with pytest.raises(ConfigError) as info:
        get_method("ttbr")
    message = str(info.value)
    assert message.startswith("unknown conversion method 'ttbr'; did you mean 'ttrbr'?")
    assert "\n" not in message and all(name in message for name in METHODS)
    with pytest.raises(ConfigError, match="did you mean 'maxnorm'"):
        method_config("maxnrom", timesteps=T)


def test_register_method_refuses_a_taken_name_and_a_shared_config() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class OtherConfig(MethodConfig):
        pass

    taken = type("Taken", (ConversionMethod,), {"name": "qcfs", "config_class": OtherConfig})
    with pytest.raises(ConfigError, match="'qcfs' is empty or taken"):
        register_method(taken)
    shared = type("Shared", (ConversionMethod,), {"name": "x-new", "config_class": TtrbrConfig})
    with pytest.raises(ConfigError, match="config class of its own"):
        register_method(shared)
    assert "x-new" not in METHODS


def test_a_config_of_no_registered_method_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Stray(MethodConfig):
        pass

    with pytest.raises(ConfigError, match="Stray is not the config of a registered"):
        convert(build("resnet20", width=0.25), Stray(timesteps=T), None)


METHOD_TEST = re.compile(
    r"method\w*\s*(==|!=|not in|in)\s*\(?[\"'](%s)[\"']|[\"'](%s)[\"']\s*(==|!=)\s*\w*method"
)


def test_no_module_outside_the_method_modules_tests_a_method_name() -> None:
    names = "|".join(METHODS)
    pattern = re.compile(METHOD_TEST.pattern % (names, names))
    own = {f"{name}.py" for name in METHODS} | {"registry.py"}
    found = []
    for path in sorted((ROOT / "spikebridge").rglob("*.py")):
        if path.parent.name == "conversion" and path.name in own:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], found
