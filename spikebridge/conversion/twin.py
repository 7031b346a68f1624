"""The spiking twin of an ANN (METHODS 2.1): what every conversion method starts from.

For a spikebridge :class:`~spikebridge.models.ResNet` the twin is a NEW network (the ANN is
not modified): the same architecture and block structure built with ``neuron="if"``, every
BatchNorm folded into the convolution before it (:mod:`~spikebridge.conversion.folding`),
every activation site an IF neuron (reset by subtraction, ``v_0 = φθ``, emits ``o·θ``).
The first conv sees the analog image at every step (direct encoding); pooling is kept; the
FC layer stays analog and reads the time-averaged rates (the output is the mean over T of
per-step logits). Residual block restructuring (METHODS 2.5, our design) is the ANN's
``block="pre-add"``, which the twin inherits.

Any other ANN that ``torch.fx`` can trace gets a
:class:`~spikebridge.conversion.fx_time.SpikingGraph` (:mod:`~spikebridge.conversion.fx_twin`),
measured against its :func:`~spikebridge.conversion.fx_graph.site_graph`; a node that has no
IF counterpart is refused by name before anything is built.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from spikebridge.conversion.folding import build_converted, fold_batchnorm
from spikebridge.conversion.fx_graph import site_graph
from spikebridge.conversion.fx_time import SpikingGraph
from spikebridge.conversion.fx_twin import spiking_from_sites
from spikebridge.conversion.sites import ANN_SITE_TYPES, ann_sites, model_device, snn_sites
from spikebridge.errors import ModelError
from spikebridge.models.registry import ModelConfig
from spikebridge.models.resnet import BasicBlock, Bottleneck, ResNet

_CONTAINERS = (ResNet, BasicBlock, Bottleneck, nn.Sequential, nn.ModuleList)
_LEAVES = (
    nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
    nn.Dropout, *ANN_SITE_TYPES,
)  # fmt: skip


def _unsupported_hint(module: nn.Module) -> str:
    kind = type(module).__name__
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return f"replace {kind} with AvgPool2d (e.g. stem_pool='avg') and retrain"
    if type(module).__module__ == "torch.nn.modules.activation":
        return f"replace {kind} with ReLU, Clip or QCFS and retrain"
    return (
        f"conversion supports conv, batch-norm, linear, average pooling, identity and "
        f"ReLU/Clip/QCFS sites; remove or replace {kind}"
    )


def check_convertible(ann: nn.Module) -> ModelConfig | None:
    """Refuse what conversion cannot handle; return a ResNet's :class:`ModelConfig` (None for
    a user model).

    Raises :class:`ModelError` for a spikebridge ResNet that is spiking or holds a module
    with no IF counterpart in its block structure (e.g. ``nn.MaxPool2d``), and for a user
    model that torch.fx cannot trace or whose graph has a node with no IF counterpart (the
    error names the node and its op; :func:`~spikebridge.conversion.fx_graph.check_graph`).
    """
    if not isinstance(ann, ResNet):
        site_graph(ann)
        return None
    if not isinstance(getattr(ann, "config", None), ModelConfig):
        raise ModelError("convert needs a spikebridge ResNet built by spikebridge.models.build")
    if ann.spiking or ann.config.neuron is not None:
        raise ModelError("convert needs an ANN; this model is already spiking")
    for name, m in ann.named_modules():
        if not isinstance(m, _CONTAINERS + _LEAVES):
            raise ModelError(f"cannot convert layer {name!r}: {_unsupported_hint(m)}")
    return ann.config


def resnet_twin(ann: ResNet, cfg: ModelConfig, timesteps: int, phi: float) -> ResNet:
    """The IF twin of ``ann`` with the ANN's folded conv / FC weights copied in."""
    snn_cfg = dataclasses.replace(cfg, neuron="if", timesteps=timesteps, phi=phi, threshold=None)
    snn = build_converted(snn_cfg).to(model_device(ann))
    folded = fold_batchnorm(copy.deepcopy(ann))
    site_prefixes = tuple(f"{n}." for n, _ in ann_sites(folded))
    state = {k: v for k, v in folded.state_dict().items() if not k.startswith(site_prefixes)}
    try:
        missing, unexpected = snn.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"the ANN's weights do not fit its own architecture: {exc}") from exc
    neuron_prefixes = tuple(f"{n}." for n, _ in snn_sites(snn))
    extra = list(unexpected) + [k for k in missing if not k.startswith(neuron_prefixes)]
    if extra:
        raise ModelError(f"the ANN does not match its config (first mismatch: {extra[0]!r})")
    return snn


def set_neurons(snn: nn.Module, thresholds: dict[str, torch.Tensor], phi: float) -> None:
    for name, site in snn_sites(snn):
        device = site.neuron.threshold.device
        site.neuron.threshold = thresholds[name].detach().to(device, torch.float32).clone()
        site.neuron.phi = torch.tensor(float(phi), device=device)


def mean_thresholds(snn: nn.Module) -> dict[str, float]:
    return {name: site.neuron.threshold.mean().item() for name, site in snn_sites(snn)}


def make_twin(
    ann: nn.Module, timesteps: int, phi: float
) -> tuple[nn.Module, ResNet | SpikingGraph]:
    """``(reference ANN, its IF twin)``: a ResNet and its :func:`resnet_twin`, or a user
    model's :func:`~spikebridge.conversion.fx_graph.site_graph` and its spiking graph."""
    if isinstance(ann, ResNet):
        cfg = check_convertible(ann)
        assert cfg is not None  # a ResNet always has one (or check_convertible raised)
        return ann, resnet_twin(ann, cfg, timesteps, phi)
    reference = site_graph(ann)
    return reference, spiking_from_sites(reference, timesteps, phi)
