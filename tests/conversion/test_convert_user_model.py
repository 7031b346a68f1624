"""Conversion of user CNNs through torch.fx (spikebridge.conversion.fx_graph; issue #17 part 2).

The networks are in ``user_cnns.py``: an ``nn.Sequential`` and a custom forward with a
residual add, max pooling, functional and shared ReLUs, ``view`` and flatten. Weights are
random with BN statistics from the data (``calibrate_bn``): what must hold is that the
spiking twin computes the ANN's function as T grows, whatever the weights.

Measured when written (relative mean |logit error| at T = 64, robust thresholds): 0.031
(Sequential) and 0.018 (residual); 0.44 and 0.17 at T = 4. Mutants tried against the
approach test (robust and maxnorm, both networks), each caught: the per-step max pooling
instead of the gated one, the gate including the current step, a folded conv bias off by
0.2·mean|μ|. ``test_in_place_relu_keeps_its_meaning`` covers in-place ReLUs.

The peer test (``-m peer``) trains ``FashionCNN`` on Fashion-MNIST for a few seconds and
compares spikebridge's robust conversion with SpikingJelly 2.0's ``ann2snn.Converter`` at
T = 32, run in the peer venv by ``peer_spikingjelly_convert.py``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conversion_helpers import calibrate_bn, convert_by_name
from torch import nn
from user_cnns import FashionCNN, ResidualCNN, sequential_cnn

from spikebridge.conversion import (
    SpikingGraph,
    build_spiking_graph,
    check_convertible,
    fold_batchnorm,
    site_graph,
)
from spikebridge.conversion.decomposition import decompose_errors
from spikebridge.conversion.fx_time import GatedMaxPool2d
from spikebridge.conversion.sites import ann_sites, snn_sites
from spikebridge.conversion.tuning import feeding_conv
from spikebridge.engine.evaluate import evaluate
from spikebridge.errors import ConfigError, ModelError
from spikebridge.nn import IF, QCFS, SpikingSite

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"sequential": sequential_cnn, "residual": ResidualCNN}


def _user_model(kind: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = MODELS[kind]()
    x = torch.randn(48, 1, 16, 16)
    return calibrate_bn(model, x), x


def _relative_error(snn: nn.Module, ann: nn.Module, x: torch.Tensor, T: int) -> float:
    snn.set_timesteps(T)
    with torch.no_grad():
        a, s = ann(x), snn(x)
    return ((s - a).abs().mean() / a.abs().mean()).item()


@pytest.mark.parametrize("kind", ["sequential", "residual"])
@pytest.mark.parametrize("method", ["maxnorm", "robust", "ttrbr"])
def test_user_cnn_converts_and_approaches_the_ann(kind: str, method: str) -> None:
    ann, x = _user_model(kind)
    before = copy.deepcopy(ann.state_dict())
    options = {"tune_epochs": 1} if method == "ttrbr" else {}
    snn = convert_by_name(ann, method, x[:32], 64, **options)
    assert isinstance(snn, SpikingGraph) and snn.spiking and snn.timesteps == 64
    assert all(torch.equal(before[k], v) for k, v in ann.state_dict().items())  # untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    assert snn.conversion_report.method == method
    assert _relative_error(snn, ann, x, 64) < 0.3 * _relative_error(snn, ann, x, 4)
    assert _relative_error(snn, ann, x, 64) < 0.1
    with torch.no_grad():
        agree = (snn(x).argmax(1) == ann(x).argmax(1)).float().mean().item()
    assert agree >= 0.9
    if method == "ttrbr":
        assert snn.conversion_report.tuning is not None
        assert snn.conversion_report.calibration is not None


def test_qcfs_user_cnn_uses_the_ceilings_as_thresholds() -> None:
    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.5), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 8), QCFS(4, 0.75), nn.Linear(8, 3),
    )  # fmt: skip
    x = torch.randn(16, 1, 16, 16)
    snn = convert_by_name(ann, "qcfs", None, 4)
    thetas = [site.neuron.threshold.item() for _, site in snn_sites(snn)]
    assert thetas == [1.5, 0.75]
    labels = ann(x).argmax(1)
    tuned = convert_by_name(ann, "ttrbr", x, 4, tune_epochs=1, held_out=[(x[:8], labels[:8])])
    assert tuned.conversion_report.selection is not None  # QCFS sites: ann vs clip reference
    with pytest.raises(ModelError, match="site '2' is a ReLU"):
        convert_by_name(sequential_cnn(), "qcfs", None, 4)
    assert convert_by_name(ann, "robust", x, 4).timesteps == 4


def test_sites_pair_by_name_in_execution_order() -> None:
    ann, _ = _user_model("residual")
    reference = site_graph(ann)
    names = [n for n, _ in ann_sites(reference)]
    # self.relu (1st call keeps its name), F.relu, self.relu again, torch.relu
    assert names == ["relu", "relu_1", "relu_2", "relu_3"]
    assert all(type(m) is nn.ReLU and not m.inplace for _, m in ann_sites(reference))
    snn = convert_by_name(ann, "robust", torch.randn(8, 1, 16, 16), 4)
    assert [n for n, _ in snn_sites(snn)] == names
    assert isinstance(snn.get_submodule("pool"), GatedMaxPool2d)
    assert feeding_conv(snn, "relu_1") is snn.conv1  # BN folded: the conv feeds the site
    assert feeding_conv(snn, "relu_2") is None  # fed by the residual sum
    assert check_convertible(ann) is None  # a user model has no ModelConfig


class _InPlace(nn.Module):
    """``y.relu_()`` whose result is unused: later readers of ``y`` see the ReLU's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.relu_()
        return torch.flatten(y + x, 1)


def test_in_place_relu_keeps_its_meaning() -> None:
    torch.manual_seed(0)
    model, x = _InPlace(), torch.randn(4, 1, 5, 5)
    with torch.no_grad():
        assert torch.allclose(site_graph(model)(x), model(x))
        assert (model(x) - x.flatten(1).repeat(1, 2)).min() >= -1e-6


@pytest.mark.parametrize("kind", ["sequential", "residual"])
def test_fold_batchnorm_accepts_user_models(kind: str) -> None:
    ann, x = _user_model(kind)
    g = torch.Generator().manual_seed(3)
    for m in ann.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.3
    folded = fold_batchnorm(copy.deepcopy(ann))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert type(folded) is type(ann)  # in place, not a new class
    with torch.no_grad():
        assert torch.allclose(folded(x), ann(x), rtol=1e-4, atol=1e-5)


class _Unsupported(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.conv, self.act = kind, nn.Conv2d(1, 2, 3), nn.GELU()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.kind == "sigmoid":
            x = torch.sigmoid(x)
        elif self.kind == "gelu":
            x = self.act(x)
        elif self.kind == "parameter":
            x = x * self.scale
        elif self.kind == "flatten0":
            x = x.flatten()
        elif self.kind == "fixed-batch":
            x = x.view(4, -1)
        elif self.kind == "branch" and x.sum() > 0:
            x = -x
        return x.flatten(1)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("sigmoid", r"node 'sigmoid' \(call_function torch.sigmoid\)"),
        ("gelu", r"node 'act' \(call_module 'act': GELU\): replace GELU with ReLU"),
        ("parameter", r"node 'scale' \(get_attr 'scale'\)"),
        ("flatten0", r"node 'flatten' \(call_method .flatten\(\)\): flatten from dim 0"),
        ("fixed-batch", r"node 'view' .*keep the batch dimension"),
        ("branch", r"cannot trace _Unsupported with torch.fx"),
    ],
)
def test_unsupported_nodes_are_refused_by_name(kind: str, message: str) -> None:
    x = torch.randn(4, 1, 6, 6)
    with pytest.raises(ModelError, match=message):
        convert_by_name(_Unsupported(kind), "robust", x, 4)
    with pytest.raises(ModelError, match=message):
        check_convertible(_Unsupported(kind))


def test_a_spiking_model_is_refused() -> None:
    ann, x = _user_model("sequential")
    snn = convert_by_name(ann, "robust", x, 4)
    with pytest.raises(ModelError, match="already spiking"):
        convert_by_name(snn, "robust", x, 4)


def test_single_step_input_is_refused_not_read_as_time() -> None:
    step = torch.rand(8, 3, 5, 5)  # one step [B, C, H, W], no time dimension
    with pytest.raises(ConfigError, match=r"input \[T=4, B, ...\].*no single-step mode"):
        IF(1.0, timesteps=4)(step)
    with pytest.raises(ConfigError, match="with 3 channels in dim 2"):
        IF(torch.tensor([0.5, 1.0, 2.0]))(step)  # per-channel θ: C must sit in dim 2
    assert IF(1.0, timesteps=4)(step.unsqueeze(0).expand(4, *step.shape)).shape == (4, 8, 3, 5, 5)
    ann, x = _user_model("sequential")
    snn = convert_by_name(ann, "robust", x, 4)
    site = next(m for m in snn.modules() if isinstance(m, SpikingSite))
    with pytest.raises(ConfigError, match="no single-step mode"):
        site.neuron(torch.rand(8, 8, 16, 16))  # first dim 8 is a batch, not T = 4
    snn.set_timesteps(8)  # T travels to sites, neurons, pooling gates, encoder, readout
    assert site.timesteps == site.neuron.timesteps == snn.timesteps == 8
    assert {
        m.timesteps for m in snn.modules() if isinstance(getattr(m, "timesteps", None), int)
    } == {8}
    assert site.neuron(torch.rand(8, 2, 8, 16, 16)).shape == (8, 2, 8, 16, 16)


def test_gated_max_pool_passes_the_largest_rate() -> None:
    # Two positions of one window, rates 1/2 and 1/4 out of phase. The per-step max passes
    # every spike of both (rate 3/4); the gate follows the larger rate (1/2).
    T = 8
    a = torch.tensor([1.0, 0.0] * 4)
    b = torch.tensor([0.0, 1.0, 0.0, 0.0] * 2)
    x = torch.stack([a, b], -1).view(T, 1, 1, 1, 2)  # [T, B, C, H, W]
    pool = GatedMaxPool2d(nn.MaxPool2d((1, 2)), T)
    out = pool(x.flatten(0, 1)).view(T)
    assert out.mean().item() == pytest.approx(0.5)
    assert F.max_pool2d(x.flatten(0, 1), (1, 2)).mean().item() == pytest.approx(0.75)
    const = torch.randn(1, 2, 6, 6).expand(T, 1, 2, 6, 6).flatten(0, 1)  # constant input
    assert torch.equal(pool.__class__(nn.MaxPool2d(2), T)(const), F.max_pool2d(const, 2))


def test_save_reload_and_evaluate_a_converted_user_model() -> None:
    ann, x = _user_model("residual")
    snn = convert_by_name(ann, "ttrbr", x[:16], 4, tune_epochs=1)
    reloaded = build_spiking_graph(ResidualCNN(), 4)
    reloaded.load_state_dict(snn.state_dict())
    with torch.no_grad():
        assert torch.equal(reloaded(x), snn(x))
    labels = ann(x).argmax(1)
    result = evaluate(snn, [(x, labels)], timesteps=6)
    assert list(result["accuracy_by_timestep"]) == ["1", "2", "3", "4", "5", "6"]
    assert snn.timesteps == 4  # restored after the evaluation
    assert snn.forward_steps(x).shape == (4, 48, 10)
    table = decompose_errors(site_graph(ann), snn, x[:8])
    assert [r.site for r in table.rows] == ["relu", "relu_1", "relu_2", "relu_3"]


# --------------------------------------------------------------------------- peer


PEER_PYTHON = Path(os.environ.get("SPIKEBRIDGE_PEER_PYTHON", ROOT / ".peer-venv/bin/python"))
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _train_fashion_cnn() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """FashionCNN trained for 3 epochs on 12k images (about 10 s on one core)."""
    from spikebridge.data.fashion_mnist import load_fashion_mnist

    train_x, train_y, test_x, test_y = load_fashion_mnist(FASHION)
    norm = lambda x: (x.float() / 255 - 0.286) / 0.353  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_x), generator=gen)
    fit, calib = order[:12288], order[12288 : 12288 + 512]
    x, y = norm(train_x[fit]), train_y[fit]
    torch.manual_seed(0)
    ann = FashionCNN()
    opt = torch.optim.Adam(ann.parameters(), 1e-2)
    epochs, bs = 3, 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=epochs * (len(x) // bs))
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen)[: len(x) // bs * bs].split(bs):
            loss = F.cross_entropy(ann(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    data = {"calib": norm(train_x[calib]), "test_x": norm(test_x[:1000]), "test_y": test_y[:1000]}
    return ann.eval(), data


@pytest.mark.peer
def test_user_cnn_converts_within_one_point_of_spikingjelly(tmp_path: Path) -> None:
    if not PEER_PYTHON.exists():
        pytest.skip(f"no peer environment at {PEER_PYTHON} (bash tools/peer-env.sh)")
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION}")
    T = 32
    ann, data = _train_fashion_cnn()
    with torch.no_grad():
        ann_acc = (ann(data["test_x"]).argmax(1) == data["test_y"]).float().mean().item()
    assert ann_acc > 0.8  # the ANN learned; otherwise the comparison means nothing
    snn = convert_by_name(ann, "robust", data["calib"], T)
    ours = evaluate(
        snn, list(zip(data["test_x"].split(250), data["test_y"].split(250), strict=True))
    )
    payload = tmp_path / "payload.pt"
    torch.save({"state": ann.state_dict(), "timesteps": T, "batch_size": 250, **data}, payload)
    script = Path(__file__).with_name("peer_spikingjelly_convert.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    done = subprocess.run(
        [str(PEER_PYTHON), str(script), str(payload)], capture_output=True, text=True,
        timeout=900, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    best = max(peer["accuracy"].values())
    print(
        f"\nANN {ann_acc:.4f} | spikebridge robust T={T}: {ours['accuracy']:.4f} | "
        f"SpikingJelly {peer['spikingjelly']} at T={T}: {json.dumps(peer['accuracy'])}",
        file=sys.stderr,
    )
    assert ours["accuracy"] >= best - 0.01
