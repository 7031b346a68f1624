"""The spiking twin of a traced user CNN (METHODS 2.1): what :func:`site_graph` gives,
with BN folded, every site an IF neuron, max pooling rate-gated and time added around it.
The layout and its measured choices are described in :mod:`spikebridge.conversion.fx_graph`.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from spikebridge.conversion.folding import conv_with_bias, fold_graph_batchnorm
from spikebridge.conversion.fx_graph import (
    MAX_POOL_MODULES,
    SITE_MODULES,
    _call_counts,
    _fresh_name,
    _set_submodule,
    graph_sites,
    site_graph,
)
from spikebridge.conversion.fx_time import GatedMaxPool2d, SpikingGraph, StepAverage, StepEncoder
from spikebridge.errors import ConfigError
from spikebridge.nn.neurons import IF
from spikebridge.nn.temporal import SpikingSite


def _drop_identities(gm: fx.GraphModule) -> None:
    """Remove Identity / Dropout calls (eval mode: identity) so a site sees its conv."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(
            gm.get_submodule(str(node.target)), (nn.Identity, nn.Dropout)
        ):
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            gm.graph.erase_node(node)


def _with_bias(layer: nn.Module) -> nn.Module:
    """A copy of a bias-free Conv2d / Linear with a zero bias (a place for ttrbr's shift)."""
    zeros = torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype, device=layer.weight.device)
    if isinstance(layer, nn.Conv2d):
        return conv_with_bias(layer, layer.weight.detach(), zeros)
    new = nn.Linear(layer.in_features, layer.out_features, device=zeros.device, dtype=zeros.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        new.bias.copy_(zeros)
    return new


def _bias_feeding_layers(gm: fx.GraphModule) -> None:
    calls = _call_counts(gm.graph)
    for node in gm.graph.nodes:
        if not (
            node.op == "call_module" and isinstance(gm.get_submodule(node.target), SITE_MODULES)
        ):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        layer = gm.get_submodule(str(src.target))
        single = len(src.users) == 1 and calls[src.target] == 1
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is None and single:
            _set_submodule(gm, str(src.target), _with_bias(layer))


def _add_time(gm: fx.GraphModule, timesteps: int) -> None:
    """Encoder after the input, time average before the output."""
    graph = gm.graph
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output")
    enc, avg = _fresh_name(gm, "time_encoder"), _fresh_name(gm, "time_average")
    gm.add_submodule(enc, StepEncoder(timesteps))
    gm.add_submodule(avg, StepAverage(timesteps))
    with graph.inserting_after(placeholder):
        encoded = graph.call_module(enc, (placeholder,))
    placeholder.replace_all_uses_with(encoded, delete_user_cb=lambda user: user is not encoded)
    result = output.args[0]
    with graph.inserting_before(output):
        averaged = graph.call_module(avg, (result,))
    output.replace_input_with(result, averaged)  # type: ignore[arg-type]


def spiking_from_sites(
    sites: fx.GraphModule, timesteps: int, phi: float = 0.5, threshold: float = 1.0
) -> SpikingGraph:
    """The IF twin of a :func:`site_graph` (not modified): BN folded, sites -> IF, max
    pooling gated, time encoder and readout added. Thresholds are ``threshold`` everywhere
    (conversion sets them afterwards)."""
    if int(timesteps) < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    T = int(timesteps)
    gm = copy.deepcopy(sites)
    fold_graph_batchnorm(gm)
    _drop_identities(gm)
    _bias_feeding_layers(gm)
    for name, _ in graph_sites(gm, SITE_MODULES):
        _set_submodule(gm, name, SpikingSite(IF(threshold, phi, timesteps=T), T))
    for name, pool in graph_sites(gm, MAX_POOL_MODULES):
        _set_submodule(gm, name, GatedMaxPool2d(pool, T))  # type: ignore[arg-type]
    _add_time(gm, T)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    snn = SpikingGraph(gm, gm.graph, class_name="SpikingGraph")
    return snn.to(_device(sites)).eval()


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def build_spiking_graph(ann: nn.Module, timesteps: int, phi: float = 0.5) -> SpikingGraph:
    """The empty skeleton of a converted user ANN (IF sites at θ = 1, BN folded, biased
    feeding layers): ``snn = build_spiking_graph(MyNet(), T); snn.load_state_dict(state)``
    reloads a saved :func:`~spikebridge.conversion.convert` result."""
    return spiking_from_sites(site_graph(ann), timesteps, phi)
