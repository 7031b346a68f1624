"""BatchNorm folding for conversion, for ResNets and traced user CNNs (METHODS 2.1).

A BatchNorm in eval mode is an affine map per channel, so ``BN(conv(x))`` is one conv with
``W' = W·γ/√(σ²+ε)`` and ``b' = (b − μ)·γ/√(σ²+ε) + β``; the converted network carries the
folded conv (with a bias, where ttrbr may later shift the input current) and no BN.
:func:`build_converted` makes the empty skeleton of a converted ResNet to reload one.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from spikebridge.conversion.fx_graph import _call_counts, _set_submodule, trace_graph
from spikebridge.errors import ConfigError, ModelError
from spikebridge.models.registry import ModelConfig, build_from_config
from spikebridge.models.resnet import ResNet


def conv_with_bias(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A copy of ``conv``'s geometry with a bias, holding ``weight`` and ``bias``."""
    new = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``BN(conv(x))`` as one conv (eval-mode BN; computed in float64).

    ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β`` per output channel.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("cannot fold a batch-norm without running statistics into its conv")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    return conv_with_bias(conv, weight, (bias0 - mean) * scale + beta)


def _conv_bn_nodes(graph: fx.Graph, root: nn.Module) -> list[tuple[fx.Node, fx.Node]]:
    """``(conv node, bn node)`` for every BatchNorm2d fed by a Conv2d that feeds only it
    (both modules called once, matching channels)."""
    calls = _call_counts(graph)
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        bn, conv = root.get_submodule(str(node.target)), root.get_submodule(str(src.target))
        if not (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d)):
            continue
        single = len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1
        if single and conv.out_channels == bn.num_features:
            pairs.append((src, node))
    return pairs


@torch.no_grad()
def fold_graph_batchnorm(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm2d of a traceable ``model`` that follows a Conv2d feeding
    only it (the BN becomes ``nn.Identity``, the conv gets the folded weight and a bias);
    other BatchNorms are left as they are. Returns ``model``."""
    graph = trace_graph(model)
    for conv_node, bn_node in _conv_bn_nodes(graph, model):
        conv, bn = (
            model.get_submodule(str(conv_node.target)),
            model.get_submodule(str(bn_node.target)),
        )
        _set_submodule(model, str(conv_node.target), folded_conv(conv, bn))  # type: ignore[arg-type]
        _set_submodule(model, str(bn_node.target), nn.Identity())
    return model


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv name, bn name)`` for every BatchNorm2d (``bnX`` follows ``convX``)."""
    pairs = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            conv_name = name.replace("bn", "conv", 1)
            conv = getattr(parent, conv_name, None)
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != child.num_features:
                raise ModelError(
                    f"batch-norm {name!r} does not follow a matching conv {conv_name!r}"
                )
            pairs.append((parent, conv_name, name))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the conv before it, in place; returns ``model``.

    The BN becomes ``nn.Identity``; equals the model in eval mode up to float error. A
    spikebridge ResNet pairs ``bnX`` with ``convX`` by name (ModelError if one has no conv);
    any other model is traced with torch.fx and every BatchNorm2d fed by a Conv2d that feeds
    only it is folded, other BatchNorms are kept (:func:`fold_graph_batchnorm`).
    """
    if not isinstance(model, ResNet):
        return fold_graph_batchnorm(model)
    for parent, conv_name, bn_name in _conv_bn_pairs(model):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, folded_conv(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return model


def build_converted(config: ModelConfig) -> ResNet:
    """Build the empty skeleton of a converted model: IF sites, BN -> Identity, biased convs.

    Use it to reload a saved converted model:
    ``snn = build_converted(cfg); snn.load_state_dict(state)``.
    """
    if config.neuron != "if":
        raise ConfigError(f"a converted model has neuron='if', got neuron={config.neuron!r}")
    model = build_from_config(config)
    for parent, conv_name, bn_name in _conv_bn_pairs(model):
        conv = getattr(parent, conv_name)
        zeros = torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
        setattr(parent, conv_name, conv_with_bias(conv, conv.weight.detach(), zeros))
        setattr(parent, bn_name, nn.Identity())
    return model


def is_converted_state(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict comes from a converted model (folded BN: stem conv has a bias)."""
    return "conv1.bias" in state_dict and "bn1.weight" not in state_dict
