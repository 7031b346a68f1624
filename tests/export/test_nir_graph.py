"""NIR export of torch.fx graphs (converted user CNNs): the graph reproduces the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_nir import _randomize_bn, _simulate
from torch import fx, nn

from spikebridge.conversion.fx_time import GatedMaxPool2d
from spikebridge.errors import ModelError
from spikebridge.nn import IF, SpikingSite, fold

pytest.importorskip("nir")
from spikebridge.export.nir import export_nir  # noqa: E402

T = 3


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        leaf = isinstance(m, (SpikingSite, GatedMaxPool2d))
        return leaf or super().is_leaf_module(m, name)


def _traced(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _Leaves().trace(model))


class UserSNN(nn.Module):
    """What a converted user CNN holds: sites, a residual add, a BatchNorm no conv absorbed,
    functional pooling, ``x.view(x.size(0), -1)``, ``torch.flatten`` and a spatial mean."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act0 = nn.Conv2d(3, 6, 3, padding=1), SpikingSite(IF(), T)
        self.conv1, self.act1 = nn.Conv2d(6, 6, 3, padding=1), SpikingSite(IF(phi=0.3), T)
        self.norm = nn.BatchNorm2d(6)
        self.act2 = SpikingSite(IF(), T)
        self.fc1, self.fc2 = nn.Linear(6, 4), nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(self.act0(self.stem(x)), 2)
        x = self.act2(self.norm(self.act1(self.conv1(x)) + x))
        a = self.fc1(x.mean((2, 3)))
        pooled = F.adaptive_avg_pool2d(x, 2)
        return a + self.fc2(pooled.view(pooled.size(0), -1)) + self.fc2(torch.flatten(pooled, 1))


@pytest.mark.parametrize("target", ["portable", "compact"])
def test_fx_graph_exports_and_matches(target: str) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(UserSNN())
    gm = _traced(model)
    graph = export_nir(gm, None, (3, 8, 8), target=target)
    assert {"norm", "view", "flatten", "mean", "fc2", "fc2_1"} <= set(graph.nodes)  # + are edges
    images = torch.rand(3, 3, 8, 8) * 3
    with torch.no_grad():
        ours = gm(fold(images.unsqueeze(0).expand(T, *images.shape))).view(T, 3, -1)
    assert ours.std(dim=1).max() > 1e-3
    torch.testing.assert_close(_simulate(graph, images, T), ours.double(), rtol=1e-4, atol=1e-4)


class _MaxPooled(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv, self.act, self.pool = nn.Conv2d(1, 2, 3), SpikingSite(IF(), T), nn.MaxPool2d(2)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return F.max_pool2d(x, 2) if self.functional else self.pool(x)


class _GatedPools(nn.Module):
    """Two gated max poolings on spike trains: a 2x2 one after sites with per-channel θ
    (spikes ``o·θ``), and a padded 3x3 stride-2 one after a site that emits plain 0/1."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = SpikingSite(
            IF(threshold=torch.tensor([0.7, 1.3, 0.3]), emit_threshold=True), steps
        )
        self.act2 = SpikingSite(IF(threshold=0.3, phi=0.5, emit_threshold=False), steps)
        self.pool1 = GatedMaxPool2d(nn.MaxPool2d(2), steps)
        self.pool2 = GatedMaxPool2d(nn.MaxPool2d(3, stride=2, padding=1), steps)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("target", ["portable", "compact"])
def test_gated_max_pooling_exports_exactly(target: str) -> None:
    """The threshold-neuron form of the gate reproduces GatedMaxPool2d spike for spike, at a
    T where earlier-step counts tie often (small integers) and at a longer one."""
    for steps in (4, 12):
        torch.manual_seed(0)
        gm = _traced(_GatedPools(steps).eval())
        images = torch.randn(6, 2, 8, 8)
        graph = export_nir(gm, None, (2, 8, 8), target=target)
        assert {"pool1.ahead", "pool1.tie", "pool1.winner", "pool1", "pool1.scale"} <= set(
            graph.nodes
        )
        assert "pool2.scale" not in graph.nodes  # act2 emits 0/1 spikes
        with torch.no_grad():
            x = fold(images.unsqueeze(0).expand(steps, *images.shape))
            ours = gm(x).view(steps, 6, -1)
            spikes = gm.act1(gm.conv1(x))
        # the gate makes choices: it often passes no spike where a per-step max would
        assert (gm.pool1(spikes) != F.max_pool2d(spikes, 2)).float().mean() > 0.02
        theirs = _simulate(graph, images, steps)
        torch.testing.assert_close(theirs, ours.double(), rtol=1e-5, atol=1e-5)


def test_fx_nodes_without_a_nir_form_are_refused() -> None:
    with pytest.raises(ModelError, match="'pool' \\(MaxPool2d\\).*NIR has no max pooling"):
        export_nir(_traced(_MaxPooled(functional=False)), None, (1, 8, 8))
    with pytest.raises(ModelError, match="node 'max_pool2d' \\(call_function max_pool2d\\)"):
        export_nir(_traced(_MaxPooled(functional=True)), None, (1, 8, 8))


class _AnalogGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 2, 3), GatedMaxPool2d(nn.MaxPool2d(2), T)
        self.act = SpikingSite(IF(), T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pool(self.conv(x)))


def test_gated_max_pooling_of_analog_values_is_refused() -> None:
    with pytest.raises(ModelError, match="max pooling 'pool'.*input 'conv' is not a spiking"):
        export_nir(_traced(_AnalogGate()), None, (1, 8, 8))
