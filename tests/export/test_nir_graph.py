"""NIR export of torch.fx graphs (converted user CNNs): the graph reproduces the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_nir import _randomize_bn, _simulate
from torch import fx, nn

from spikebridge.errors import ModelError
from spikebridge.nn import IF, SpikingSite, fold

pytest.importorskip("nir")
from spikebridge.export.nir import export_nir  # noqa: E402

T = 3


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, SpikingSite) or super().is_leaf_module(m, name)


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


def test_fx_nodes_without_a_nir_form_are_refused() -> None:
    with pytest.raises(ModelError, match="'pool' \\(MaxPool2d\\).*NIR has no max pooling"):
        export_nir(_traced(_MaxPooled(functional=False)), None, (1, 8, 8))
    with pytest.raises(ModelError, match="node 'max_pool2d' \\(call_function max_pool2d\\)"):
        export_nir(_traced(_MaxPooled(functional=True)), None, (1, 8, 8))
