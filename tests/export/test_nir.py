"""NIR export: round trip, refusals, and equivalence with a forward-Euler NIR simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.models import ActivationSpec, ResNet, build
from spikebridge.nn import IF, LIF, Clip, SpikingSite, fold

nir = pytest.importorskip("nir")
from spikebridge.export.nir import export_nir, import_nir  # noqa: E402

T = 3


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so that folding is actually tested; eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.mul_(1 + 0.3 * torch.rand(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _recurrent_edges(graph) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """The back edges of a depth-first walk from the input: each closes a cycle and
    delivers the previous step's value (how nirtorch runs recurrent edges)."""
    succ: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for s, d in graph.edges:
        succ[s].append(d)
    back, done, active = set(), set(), set()

    def visit(n: str) -> None:
        active.add(n)
        for d in succ[n]:
            if d in active:
                back.add((n, d))
            elif d not in done:
                visit(d)
        active.discard(n)
        done.add(n)

    visit("input")
    return back


def _topological(graph, skip: set[tuple[str, str]]) -> list[str]:  # type: ignore[no-untyped-def]
    preds = {n: {s for s, d in graph.edges if d == n and (s, d) not in skip} for n in graph.nodes}
    order: list[str] = []
    while len(order) < len(preds):
        ready = [n for n in preds if n not in order and preds[n] <= set(order)]
        assert ready, "graph has a cycle without a recurrent edge"
        order.extend(sorted(ready))
    return order


def _apply(node, x: torch.Tensor, state: dict, name: str, dt: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """One NIR node for one step by the NIR definitions (Euler with dt, fire on v > θ,
    v ← v_reset, v(0) = 0), except where a compact node's metadata says otherwise."""
    p = {k: torch.as_tensor(v).double() for k, v in vars(node).items() if isinstance(v, np.ndarray)}
    ints = lambda a: tuple(int(i) for i in np.atleast_1d(a))  # noqa: E731
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, p["weight"], p["bias"], ints(node.stride), ints(node.padding),
                        ints(node.dilation), int(node.groups))  # fmt: skip
    if isinstance(node, nir.Affine):
        return x @ p["weight"].T + p["bias"]
    if isinstance(node, nir.AvgPool2d):
        return F.avg_pool2d(x, ints(node.kernel_size), ints(node.stride), ints(node.padding))
    if isinstance(node, nir.Flatten):
        assert node.start_dim == 0  # unbatched NIR dims: batched dim 1
        return x.flatten(1)
    if isinstance(node, nir.Scale):
        return x * p["scale"]
    if isinstance(node, nir.Output):
        return x
    meta = node.metadata if node.metadata.get("form") == "compact" else {}
    v = state.get(name, torch.as_tensor(meta.get("v_init", 0.0)).double().expand_as(x))
    if isinstance(node, nir.CubaLIF):
        i = state.get(f"{name}.current", torch.zeros_like(x))
        i = i + dt / p["tau_syn"] * (-i + p["w_in"] * x)
        state[f"{name}.current"] = i
        v = v + dt / p["tau_mem"] * (p["v_leak"] - v + p["r"] * i)
    elif isinstance(node, nir.LIF):
        v = v + dt / p["tau"] * (p["v_leak"] - v + p["r"] * x)
    else:
        v = v + dt * p["r"] * x
    thr = p["v_threshold"]
    s = (v > thr if bool(meta.get("strict", True)) else v >= thr).double()
    hard = str(meta.get("reset", "hard")) == "hard"
    state[name] = torch.where(s > 0, p["v_reset"], v) if hard else v - thr * s
    return s


def _simulate(graph, images: torch.Tensor, steps: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Run a NIR graph for ``steps`` with the image as a constant input: ``[T, B, K]``."""
    recurrent = _recurrent_edges(graph)
    order = _topological(graph, recurrent)
    dt, state, outs, last = float(graph.metadata["dt"]), {}, [], {}
    for _ in range(steps):
        vals: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                vals[name] = images.double()
                continue
            inputs = [last.get(s, 0.0) if (s, d) in recurrent else vals[s]
                      for s, d in graph.edges if d == name]  # fmt: skip
            vals[name] = _apply(node, sum(inputs), state, name, dt)
        outs.append(vals["output"])
        last = vals
    return torch.stack(outs)


MODELS = {
    "lif-post-add": lambda: build("resnet20", width=0.25, neuron="lif", timesteps=T),
    "if-pre-add": lambda: build("resnet20", width=0.25, neuron="if", block="pre-add", timesteps=T),
    "if-post-add-bottleneck": lambda: ResNet(
        "bottleneck", (1, 1, 1), (16, 32, 64), width=0.25, act=ActivationSpec("if", T)
    ),
    "lif-pre-add-bottleneck": lambda: ResNet(
        "bottleneck", (1, 1, 1), (16, 32, 64), width=0.25, act=ActivationSpec("lif", T),
        structure="pre-add", conv_init="kaiming",  # PyTorch's init leaves this net silent
    ),
}  # fmt: skip


@pytest.mark.parametrize("target", ["portable", "compact"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_graph_reproduces_the_model_step_by_step(name: str, target: str) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(MODELS[name]())
    images = torch.randn(3, 3, 16, 16)
    graph = export_nir(model, None, input_shape=(3, 16, 16), target=target)
    assert graph.metadata["target"] == target
    with torch.no_grad():
        ours = model.forward_steps(images).double()
    theirs = _simulate(graph, images, T)
    assert ours.std(dim=1).max() > 1e-3  # logits differ between images: spikes reach the head
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def _set_channelwise_thresholds(model: nn.Module, images: torch.Tensor, phi: bool = False) -> None:
    """Give every site a per-channel θ ``[C]`` (and φ) as a loaded state dict would."""
    channels: dict[nn.Module, int] = {}

    def hook(site: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        channels[site] = output.shape[1]

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SpikingSite)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(1)
    for site, c in channels.items():
        site.neuron.threshold = 0.5 + torch.rand(c, generator=g)
        if phi:
            site.neuron.phi = 0.8 * torch.rand(c, generator=g)


def _diagonal(node) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The per-channel factors of a channel-scaling node (1x1 conv with a diagonal weight)."""
    w = node.weight[:, :, 0, 0]
    np.testing.assert_array_equal(w, np.diag(np.diag(w)))
    return np.diag(w)


def test_channelwise_thresholds_and_initial_potential_compact() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build("resnet20", width=0.25, neuron="if", phi=0.5, timesteps=T))
    images = torch.randn(2, 3, 16, 16)
    _set_channelwise_thresholds(model, images)
    graph = export_nir(model, None, input_shape=(3, 16, 16), target="compact")
    act1, theta = graph.nodes["act1"], model.act1.neuron.threshold.numpy()
    assert theta.shape == (4,)
    np.testing.assert_allclose(act1.v_threshold[:, 0, 0], theta)
    np.testing.assert_allclose(act1.metadata["v_init"][:, 3, 5], 0.5 * theta)
    np.testing.assert_allclose(graph.nodes["act1.scale"].scale[:, 1, 1], theta)
    with torch.no_grad():
        ours = model.forward_steps(images).double()
    torch.testing.assert_close(_simulate(graph, images, T), ours, rtol=1e-4, atol=1e-4)


def test_portable_if_is_an_integrator_with_a_recurrent_reset() -> None:
    """Per-channel θ and φ become weights; the neuron node has one threshold, just below 1."""
    torch.manual_seed(0)
    model = _randomize_bn(build("resnet20", width=0.25, neuron="if", timesteps=T))
    images = torch.randn(4, 3, 16, 16)
    _set_channelwise_thresholds(model, images, phi=True)
    graph = export_nir(model, None, input_shape=(3, 16, 16))
    theta, phi = model.act1.neuron.threshold.numpy(), model.act1.neuron.phi.numpy()
    assert theta.shape == phi.shape == (4,) and np.ptp(phi) > 0.1
    np.testing.assert_allclose(
        _diagonal(graph.nodes["act1.gain"]), 1 / (theta * (1 - phi)), rtol=1e-6
    )
    np.testing.assert_allclose(_diagonal(graph.nodes["act1.reset"]), -1 / (1 - phi), rtol=1e-6)
    np.testing.assert_allclose(_diagonal(graph.nodes["act1.scale"]), theta, rtol=1e-6)
    neuron = graph.nodes["act1"]
    assert isinstance(neuron, nir.CubaLIF)
    assert np.unique(neuron.v_threshold).tolist() == [np.nextafter(np.float32(1), np.float32(0))]
    assert ("act1.reset", "act1") in graph.edges and ("act1", "act1.reset") in graph.edges
    assert not any(isinstance(n, (nir.Scale, nir.IF)) for n in graph.nodes.values())
    with torch.no_grad():
        ours = model.forward_steps(images).double()
    assert ours.std(dim=1).max() > 1e-3
    torch.testing.assert_close(_simulate(graph, images, T), ours, rtol=1e-4, atol=1e-4)


def test_parameters_map_decay_exactly_under_forward_euler() -> None:
    model = build("resnet20", width=0.25, neuron="lif", decay=0.25, threshold=0.5).eval()
    graph = export_nir(model, None, input_shape=(3, 8, 8), dt=1e-3, target="compact")
    lif = graph.nodes["act1"]
    assert isinstance(lif, nir.LIF) and lif.tau.shape == (4, 8, 8)
    np.testing.assert_allclose(1 - 1e-3 / lif.tau, 0.25, rtol=1e-6)  # v ← decay·v + ...
    np.testing.assert_allclose(1e-3 / lif.tau * lif.r, 1.0, rtol=1e-6)  # ... + x
    np.testing.assert_allclose(lif.v_threshold, 0.5)
    assert lif.metadata["reset"] == "hard" and lif.metadata["strict"] is True
    if_model = build("resnet20", width=0.25, neuron="if").eval()
    ifm = export_nir(if_model, None, (3, 8, 8), dt=1e-3, target="compact")
    assert isinstance(ifm.nodes["act1"], nir.IF)
    np.testing.assert_allclose(ifm.nodes["act1"].r * 1e-3, 1.0)
    assert ifm.nodes["act1"].metadata["reset"] == "subtract"
    assert ("act1", "act1.scale") in ifm.edges
    # portable, dt = 1e-4 (the peers' step): the same LIF; the IF's current never decays
    # and its membrane equals the current (what SpikingJelly and snnTorch compute from these)
    dt = 1e-4
    lif = export_nir(model, None, (3, 8, 8)).nodes["act1"]
    np.testing.assert_allclose(1 - dt / lif.tau, 0.25, rtol=1e-6)
    np.testing.assert_allclose(dt / lif.tau * lif.r, 1.0, rtol=1e-6)
    cuba = export_nir(if_model, None, (3, 8, 8)).nodes["act1"]
    assert np.all(1 - dt / cuba.tau_syn == 1.0) and np.all(1 - dt / cuba.tau_mem == 0.0)
    np.testing.assert_allclose(cuba.w_in.astype(np.float64) * dt / cuba.tau_syn, 1.0, rtol=1e-12)
    assert np.all(cuba.r == 1.0)
    assert np.all(cuba.v_leak == 0) and np.all(cuba.v_reset == 0)


def test_input_normalization_is_the_first_node() -> None:
    """With the dataset's mean/std the graph takes raw [0, 1] pixels and predicts as we do."""
    torch.manual_seed(0)
    model = _randomize_bn(MODELS["if-pre-add"]())
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    raw = torch.rand(3, 3, 16, 16)
    normalized = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    graph = export_nir(model, None, (3, 16, 16), normalization=(mean, std))
    assert ("input", "normalize") in graph.edges and ("normalize", "conv1") in graph.edges
    np.testing.assert_allclose(graph.metadata["input_mean"], mean)
    np.testing.assert_allclose(graph.metadata["input_std"], std)
    with torch.no_grad():
        ours = model.forward_steps(normalized).double()
    torch.testing.assert_close(_simulate(graph, raw, T), ours, rtol=1e-4, atol=1e-4)
    gray = export_nir(model, None, (3, 16, 16), normalization=((0.5,), (0.25,)))
    np.testing.assert_allclose(gray.nodes["normalize"].bias, [-2.0] * 3)
    with pytest.raises(ConfigError, match="stds > 0"):
        export_nir(model, None, (3, 16, 16), normalization=((0.5,), (0.0,)))
    with pytest.raises(ConfigError, match="with 1 or 3 values each"):
        export_nir(model, None, (3, 16, 16), normalization=((0.5, 0.5), (0.2, 0.2)))


def test_portable_target_refuses_what_the_peers_cannot_run() -> None:
    model = build("resnet20", width=0.25, neuron="if").eval()
    with pytest.raises(ConfigError, match="dt = 0.0001 s, the step snnTorch's importer assumes"):
        export_nir(model, None, (3, 8, 8), dt=1e-3)
    with pytest.raises(ConfigError, match="NIR target 'sj' is unknown"):
        export_nir(model, None, (3, 8, 8), target="sj")
    model.act1.neuron.phi = torch.tensor(1.0)
    with pytest.raises(ModelError, match="'act1' has φ >= 1"):
        export_nir(model, None, (3, 8, 8))
    hard_v0 = build("resnet20", width=0.25, neuron="lif").eval()
    hard_v0.act1.neuron.phi = torch.tensor(0.5)
    with pytest.raises(ModelError, match="'act1' .*hard reset.* has no portable NIR form"):
        export_nir(hard_v0, None, (3, 8, 8))
    export_nir(hard_v0, None, (3, 8, 8), target="compact")  # metadata carries v_init
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), SpikingSite(LIF(), T))
    with pytest.raises(ModelError, match="groups=2; SpikingJelly's NIR importer refuses"):
        export_nir(grouped, None, (2, 8, 8))


def _as_comparable(value):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return {k: _as_comparable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (str, np.str_)):
        return str(value)
    return np.asarray(value, dtype=np.float64)


def _assert_same(a, b, where: str = "") -> None:  # type: ignore[no-untyped-def]
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, str):
        assert a == b, where
    else:
        np.testing.assert_allclose(a, b, err_msg=where)


@pytest.mark.parametrize("name", ["lif-post-add", "if-pre-add"])
def test_round_trip_through_a_file(tmp_path: Path, name: str) -> None:
    model = _randomize_bn(MODELS[name]())
    path = tmp_path / "model.nir"
    graph = export_nir(model, path, input_shape=(3, 16, 16))
    back = import_nir(path)
    direct = nir.read(path)
    assert set(back.nodes) == set(graph.nodes) == set(direct.nodes)
    assert sorted(back.edges) == sorted(graph.edges) == sorted(direct.edges)
    for key, node in graph.nodes.items():
        assert type(back.nodes[key]) is type(node), key
        _assert_same(_as_comparable(node.to_dict()), _as_comparable(back.nodes[key].to_dict()), key)
    _assert_same(_as_comparable(graph.metadata), _as_comparable(back.metadata))
    assert not list(tmp_path.glob("*.tmp"))


def test_residual_edges_sum_into_the_right_nodes() -> None:
    post = export_nir(build("resnet20", width=0.25, neuron="lif").eval(), None, (3, 8, 8))
    into = lambda g, n: sorted(s for s, d in g.edges if d == n)  # noqa: E731
    assert into(post, "stages.0.1.act2") == ["stages.0.0.act2", "stages.0.1.conv2"]
    assert into(post, "stages.1.0.act2") == ["stages.1.0.conv2", "stages.1.0.shortcut.conv"]
    pre = export_nir(build("resnet20", width=0.25, neuron="if", block="pre-add").eval(), None,
                     (3, 8, 8))  # fmt: skip
    # block 2's input = its act2 output + block 1's act2 output + stem output (identities)
    assert into(pre, "stages.0.2.conv1") == [
        "act1.scale", "stages.0.0.act2.scale", "stages.0.1.act2.scale"
    ]  # fmt: skip
    assert into(pre, "stages.1.1.conv1") == [
        "stages.1.0.act2.scale",
        "stages.1.0.shortcut.act.scale",
    ]


def test_sequential_chain_exports_and_matches() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), SpikingSite(LIF(backend="loop"), T),
        nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1, bias=True),
        SpikingSite(LIF(backend="loop"), T), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 5),
    ))  # fmt: skip
    graph = export_nir(model, None, input_shape=(1, 8, 8))
    kinds = {n: type(node).__name__ for n, node in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        "0": "Conv2d",
        "2": "LIF",
        "3": "AvgPool2d",
        "4": "Conv2d",
        "5": "LIF",
        "6": "AvgPool2d",
        "7": "Flatten",
        "8": "Affine",
        "output": "Output",
    }  # fmt: skip  (the BatchNorm "1" is folded into conv "0")
    images = torch.randn(2, 1, 8, 8) * 2
    with torch.no_grad():
        ours = model(fold(images.unsqueeze(0).expand(T, *images.shape))).view(T, 2, 5)
    torch.testing.assert_close(_simulate(graph, images, T), ours.double(), rtol=1e-4, atol=1e-4)


def if_chain_with_vector_sites() -> nn.Sequential:
    """IF sites on feature maps and on a vector (after Linear), per-channel θ on the vector."""
    torch.manual_seed(0)
    chain = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), SpikingSite(IF(), T), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12), SpikingSite(IF(), T), nn.Linear(12, 5),
    )  # fmt: skip
    chain[5].neuron.threshold = 0.2 + torch.rand(12)
    return chain.eval()


def test_vector_if_sites_export_and_match() -> None:
    model = if_chain_with_vector_sites()
    graph = export_nir(model, None, input_shape=(3, 8, 8))
    # the vector site's reset loop has three nodes (snnTorch rewrites two-node loops)
    assert {("5", "5.reset"), ("5.reset", "5.reset.hold"), ("5.reset.hold", "5")} <= set(
        graph.edges
    )
    assert ("1.reset", "1") in graph.edges  # feature maps: a two-node loop
    images = torch.rand(3, 3, 8, 8) * 2
    with torch.no_grad():
        ours = model(fold(images.unsqueeze(0).expand(T, *images.shape))).view(T, 3, 5)
    assert ours.std(dim=1).max() > 1e-3
    torch.testing.assert_close(_simulate(graph, images, T), ours.double(), rtol=1e-4, atol=1e-4)


def test_unsupported_layers_are_refused() -> None:
    with pytest.raises(ModelError, match="spiking"):
        export_nir(build("resnet20", width=0.25, activation="clip"), None, (3, 8, 8))
    snn = build("resnet20", width=0.25, neuron="lif").eval()
    snn.pool = nn.MaxPool2d(8)
    with pytest.raises(ModelError, match="'pool' \\(MaxPool2d\\).*average pooling"):
        export_nir(snn, None, (3, 8, 8))
    site = SpikingSite(LIF(), T)
    chain = nn.Sequential(nn.Conv2d(1, 2, 3), site, nn.MaxPool2d(2))
    with pytest.raises(ModelError, match="'2' \\(MaxPool2d\\)"):
        export_nir(chain, None, (1, 8, 8))
    mixed = nn.Sequential(nn.Conv2d(1, 2, 3), site, nn.Conv2d(2, 2, 1), Clip())
    with pytest.raises(ModelError, match="'3' \\(Clip\\)"):
        export_nir(mixed, None, (1, 8, 8))


def test_import_of_missing_or_broken_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        import_nir(tmp_path / "missing.nir")
    broken = tmp_path / "broken.nir"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="not a readable NIR graph"):
        import_nir(broken)


def test_converted_model_with_folded_batchnorm_exports_and_matches() -> None:
    from spikebridge.conversion import fold_batchnorm

    torch.manual_seed(0)
    model = _randomize_bn(MODELS["if-pre-add"]())
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model.forward_steps(images).double()
    fold_batchnorm(model)  # BN -> Identity, convs get a bias (converted layout)
    graph = export_nir(model, None, input_shape=(3, 16, 16))
    assert graph.nodes["conv1"].metadata["folded_batchnorm"] is False
    assert np.abs(graph.nodes["conv1"].bias).max() > 0
    torch.testing.assert_close(_simulate(graph, images, T), before, rtol=1e-4, atol=1e-4)
