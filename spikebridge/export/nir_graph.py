"""NIR export of a ``torch.fx`` graph: converted user CNNs (``SpikingGraph``) and the like.

:func:`spikebridge.export.nir.export_nir` calls :func:`fx_graph` for a
``torch.fx.GraphModule``; it walks the nodes in order with the same graph builder as the
ResNet path, so both NIR targets apply. What maps:

- modules: ``Conv2d`` (a BatchNorm after it is already folded by the conversion), a
  ``BatchNorm2d`` left on its own (a per-channel affine map, as a diagonal 1x1 conv),
  :class:`~spikebridge.nn.SpikingSite`, average pooling, ``Flatten`` from dim 1,
  ``Linear``, ``Dropout`` / ``Identity``; the conversion's ``StepEncoder`` (the image at
  every step) and ``StepAverage`` (mean over T) are what the NIR graph's direct input and
  readout already say, so they map to nothing;
- functions and methods: ``+`` / ``torch.add`` of two tensors (a node with both edges),
  ``F.avg_pool2d`` and ``F.adaptive_avg_pool2d``,
  ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)`` /
  ``x.reshape(...)`` of the same form, ``x.size(...)`` (only as such a shape), and
  ``x.mean((2, 3))`` (global average pooling, then flatten).

- the conversion's rate-gated max pooling ``GatedMaxPool2d`` on a spiking site's output: NIR
  has no max-pooling node, so its gate is exported as the threshold-neuron circuit of
  :mod:`spikebridge.export.nir_pool` (exact on spike trains).

Anything else (per-step max pooling, a gated max pooling whose input is not a spiking site's
output, other functions, parameters read with ``get_attr``) is refused with a ModelError
naming the node.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from spikebridge.errors import ModelError
from spikebridge.export.nir_builder import _GraphBuilder, _refuse, _sequential_step, _Value
from spikebridge.export.nir_pool import gated_max_pool
from spikebridge.nn.temporal import SpikingSite

TIME_MODULES = ("StepEncoder", "StepAverage")
"""Class names of the conversion's time modules (``spikebridge.conversion.fx_time``)."""

_POOL_FUNCTIONS = {
    torch.nn.functional.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    torch.nn.functional.avg_pool2d: nn.AvgPool2d,
}
"""Functional average pooling, exported as the module with the same arguments."""

_SHAPE = object()
"""The value of a ``x.size(...)`` node: usable only as the batch size of a flattening view."""


def fx_graph(b: _GraphBuilder, gm: fx.GraphModule, x: _Value) -> _Value:
    """Add the nodes of ``gm``'s graph to ``b`` from its one input ``x``; return the output."""
    values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if any(v is x for v in values.values()):
                raise ModelError("NIR export needs a model with one input")
            values[node] = x
        elif node.op == "call_module":
            # a module called again gets the fx node's name (``fc_1``) for its second node
            name = str(node.target) if str(node.target) not in b.nodes else node.name
            values[node] = _module(b, name, gm, node, values)
        elif node.op in ("call_function", "call_method"):
            values[node] = _operation(b, node, values)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or not isinstance(values.get(out), _Value):
                raise ModelError("NIR export needs a model with one tensor output")
            return values[out]
        else:
            raise ModelError(f"cannot export graph node {node.name!r} ({node.op}) to NIR")
    raise ModelError("the traced graph has no output")


def _tensor(node: fx.Node, values: dict[fx.Node, Any], index: int = 0) -> _Value:
    arg = node.args[index] if len(node.args) > index else None
    value = values.get(arg) if isinstance(arg, fx.Node) else None
    if not isinstance(value, _Value):
        raise ModelError(f"graph node {node.name!r} needs a tensor from the network as input")
    return value


def _module(
    b: _GraphBuilder, name: str, gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, Any]
) -> _Value:
    m = gm.get_submodule(node.target)
    x = _tensor(node, values)
    if type(m).__name__ in TIME_MODULES:
        return x
    if isinstance(m, nn.Conv2d):
        return b.conv(name, m, None, x)
    if isinstance(m, nn.BatchNorm2d):
        return _batchnorm(b, name, m, x)
    if isinstance(m, nn.Flatten) and m.start_dim != 1:
        raise _refuse(name, m, "Flatten from dim 1 (the batch kept)")
    if type(m).__name__ == "GatedMaxPool2d":
        return gated_max_pool(b, name, m.pool, x, _spike_value(gm, name, node))
    if "MaxPool" in type(m).__name__:
        raise _refuse(name, m, "average pooling (NIR has no max pooling; a converted network's "
                      "gated max pooling exports)")  # fmt: skip
    return _sequential_step(b, name, m, x)


def _spike_value(gm: fx.GraphModule, name: str, node: fx.Node) -> torch.Tensor | None:
    """The spike value (θ, or ``None`` for 0/1 spikes) of the site feeding a gated pool."""
    src = node.args[0] if node.args else None
    site = gm.get_submodule(src.target) if isinstance(src, fx.Node) and src.op == (
        "call_module") else None  # fmt: skip
    if not isinstance(site, SpikingSite):
        raise ModelError(
            f"cannot export max pooling {name!r} to NIR: its input "
            f"{getattr(src, 'name', src)!r} is not a spiking neuron's output, and NIR has no "
            "max-pooling node (the gate exports only on spike trains; put the max pooling "
            "after the ReLU in the ANN: max_pool(relu(x)) equals relu(max_pool(x)))"
        )
    neuron = site.neuron
    return neuron.threshold.detach() if neuron.emit_threshold else None


def _batchnorm(b: _GraphBuilder, name: str, bn: nn.BatchNorm2d, x: _Value) -> _Value:
    """An eval-mode BatchNorm that no conv absorbed: ``γ/σ·x + β − μγ/σ`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError(f"BatchNorm {name!r} has no running statistics to export")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * scale
    return b.channel_scale(name, scale.numpy(), x, bias=shift.numpy())


def _operation(b: _GraphBuilder, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    """``+``, average pooling, flatten / flattening views, ``size`` and spatial ``mean``;
    anything else is refused."""
    target = node.target
    if target in (operator.add, torch.add, "add") and len(node.args) == 2 and not node.kwargs:
        return _tensor(node, values, 0) + _tensor(node, values, 1)
    if target == "size" and (node.args[1:] == (0,) or node.kwargs == {"dim": 0}):
        _tensor(node, values)
        return _SHAPE
    if target in (torch.flatten, "flatten") and _flattens_from_one(node):
        return b.flatten(node.name, _tensor(node, values))
    if target in ("view", "reshape") and _flattening_view(node, values):
        return b.flatten(node.name, _tensor(node, values))
    if target in _POOL_FUNCTIONS:
        pool = _POOL_FUNCTIONS[target](*node.args[1:], **node.kwargs)
        return b.pool(node.name, pool, _tensor(node, values))
    if target == "mean" and _spatial_mean(node):
        x = _tensor(node, values)
        pooled = b.pool(f"{node.name}.pool", nn.AdaptiveAvgPool2d(1), x)
        return b.flatten(node.name, pooled)
    what = getattr(target, "__name__", str(target))
    raise ModelError(
        f"cannot export graph node {node.name!r} ({node.op} {what}) to NIR; expected +, "
        "flatten from dim 1, a flattening view x.view(x.size(0), -1) or a spatial mean"
    )


def _flattens_from_one(node: fx.Node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _flattening_view(node: fx.Node, values: dict[fx.Node, Any]) -> bool:
    """``x.view(B, -1)`` with ``B`` from ``x.size(0)`` (the batch dimension kept)."""
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return len(shape) == 2 and values.get(shape[0]) is _SHAPE and shape[1] == -1


def _spatial_mean(node: fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return not keepdim and sorted(np.atleast_1d(dims).tolist()) in ([2, 3], [-2, -1])
