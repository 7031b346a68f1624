"""Operation counts and an energy estimate for ANNs and SNNs (METHODS 3).

What is counted
- **MACs** (``count_macs``): multiply-accumulates of every ``nn.Conv2d`` and ``nn.Linear``
  for one image of the ANN equivalent (one time-step). A conv costs
  ``C_out·H_out·W_out · (C_in/groups)·k_h·k_w``, a linear ``out·in``. BatchNorm (foldable
  into the conv), ReLU/neurons, pooling and residual additions are not counted: they are
  not multiply-accumulates of a weight layer, and the published ResNet counts leave them
  out too (resnet20 40.55 M, resnet18-CIFAR 0.56 G).
- **SOPs** (``count_sops``): accumulate operations of a spiking model, from its *actual*
  spikes. Each event arriving at a conv/linear input costs one AC per output it reaches:
  exactly (borders, stride and padding included) ``Σ conv(events, ones)``, i.e. the layer
  run with all-ones weights on the event counts; for a linear layer ``events · out``.
  An input that is a sum of spike trains (pre-add blocks, METHODS 2.5) carries as many
  events as spikes were summed, whatever the θ each spike was scaled by.
- **Analog layers**: a layer fed by the analog image with no neuron in between (the stem
  conv under direct encoding) does real multiplications: it is counted as MACs, once per
  time-step (``T`` times per image), because the network computes it at every step. An
  implementation that caches the constant stem current would pay it once; divide
  ``first_layer_macs_per_image`` by ``T`` for that reading.
- The linear head sits after global average pooling: its input is the pooled event rate
  (spikes / H·W per channel), so it costs ``Σ pooled · out`` (the usual rate × MACs
  convention); the pooling adds are not counted. Its share is < 0.01 % of a ResNet.

How events are found (any model whose nonlinearities are ``SpikingSite`` modules and whose
paths from a site to the next weight layer are sums, identities or pooling): pass 1 runs
the model and records every site's spikes (``output != 0``); pass 2 runs it again on an
all-NaN image with each site replaced by a replay of its recorded spikes, so every weight
layer receives exactly its event counts, and layers still reached by the (NaN) analog input
are the analog layers. Both passes run in eval mode without gradients; pass 1 keeps one
batch of spikes (as bool) in memory.

Energy: ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ`` (32-bit float, 45 nm, Horowitz, ISSCC 2014).
It is an estimate of arithmetic energy only (no memory traffic, no neuron updates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.analysis.firing import FiringMonitor
from spikebridge.errors import DataError, ModelError
from spikebridge.nn.temporal import SpikingSite

E_MAC_PJ = 4.6
"""Energy of one 32-bit float multiply-accumulate, pJ (45 nm, Horowitz 2014)."""
E_AC_PJ = 0.9
"""Energy of one 32-bit float accumulate (add), pJ (45 nm, Horowitz 2014)."""
ENERGY_NOTE = (
    "estimate: arithmetic only, E_MAC=4.6 pJ, E_AC=0.9 pJ (45 nm, Horowitz 2014); "
    "SNN = analog first-layer MACs + SOPs"
)
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def _sites(model: nn.Module) -> dict[str, SpikingSite]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SpikingSite)}


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _macs_per_row(layer: nn.Module, output: torch.Tensor) -> int:
    """MACs of ``layer`` for one row (image or time-step) of its batched ``output``."""
    outputs_per_row = output.numel() // output.shape[0]
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return outputs_per_row * (layer.in_channels // layer.groups) * kh * kw
    return outputs_per_row * layer.in_features  # type: ignore[operator]


@contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; each module's training flag is restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def _hooked(modules: dict[str, nn.Module], make_hook: Any) -> Iterator[None]:
    """Register ``make_hook(name)`` as a forward hook on every module; remove them after."""
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """MACs per image of the ANN equivalent of ``model`` for inputs ``[C, H, W]``.

    Counted with forward hooks on conv/linear layers while one image runs; a spiking model
    runs ``T`` steps and each step counts as one ANN pass. Returns ``macs_per_image``
    (total) and ``macs_by_layer`` (module name -> MACs). See the module docstring for what
    is and is not counted.
    """
    by_layer: dict[str, int] = {}

    def make_hook(name: str):  # type: ignore[no-untyped-def]
        def hook(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            by_layer[name] = by_layer.get(name, 0) + _macs_per_row(layer, output)

        return hook

    x = torch.zeros(1, *input_shape, device=_device(model))
    with _measuring(model), _hooked(_weight_layers(model), make_hook):
        model(x)
    return {"macs_per_image": sum(by_layer.values()), "macs_by_layer": by_layer}


def _conv_sops(conv: nn.Conv2d, events: torch.Tensor) -> float:
    """ACs caused by ``events[N, C_in, H, W]``: each event costs one AC per output it reaches.

    Equal to ``conv(events, all-ones weights).sum()``; computed cheaply by summing events
    over the batch and over the input channels of each group first (the conv is linear).
    """
    if conv.padding_mode != "zeros":
        raise ModelError(f"SOP counting supports zero-padded convs, not {conv.padding_mode!r}")
    g = conv.groups
    ev = events.double().sum(0, keepdim=True)
    ev = ev.view(1, g, conv.in_channels // g, *ev.shape[2:]).sum(2)
    ones = torch.ones(g, 1, *conv.kernel_size, dtype=ev.dtype, device=ev.device)
    reach = F.conv2d(ev, ones, None, conv.stride, conv.padding, conv.dilation, g)
    return float(reach.sum()) * (conv.out_channels // g)


def _layer_sops(layer: nn.Module, events: torch.Tensor) -> float:
    if isinstance(layer, nn.Conv2d):
        return _conv_sops(layer, events)
    return float(events.double().sum()) * layer.out_features  # type: ignore[operator]


class _Replay(nn.Module):
    """Stands in for a SpikingSite in pass 2: returns its recorded spikes (0/1), in order."""

    def __init__(self, outputs: list[torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.outputs, self.dtype = outputs, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outputs:
            raise ModelError("a spiking site ran more often in the replay than when recorded")
        return self.outputs.pop(0).to(self.dtype)


@contextmanager
def _swapped(model: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """Temporarily put ``replacements[name]`` in place of submodule ``name``."""
    originals = {}
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        originals[name] = (parent, child, parent._modules[child])
        setattr(parent, child, new)
    try:
        yield
    finally:
        for parent, child, old in originals.values():
            setattr(parent, child, old)


class _SopCounter:
    """Running SOP / analog-MAC sums over batches (constant memory across batches)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.sites = model, _sites(model)
        if not self.sites:
            raise ModelError("SOP counting needs a spiking model; this one has no SpikingSite")
        if "" in self.sites:
            raise ModelError("SOP counting needs the SpikingSite inside a model, not alone")
        self.layers = _weight_layers(model)
        self.sops: dict[str, float] = defaultdict(float)
        self.analog_macs: dict[str, float] = defaultdict(float)
        self.images = 0

    def update(self, images: torch.Tensor) -> None:
        """Count one batch ``images[B, ...]`` (two forward passes, see module docstring)."""
        images = images.to(_device(self.model))
        with _measuring(self.model):
            recorded, dtypes = self._record(images)
            replays = {n: _Replay(recorded[n], dtypes[n]) for n in self.sites}
            with _swapped(self.model, replays), _hooked(self.layers, self._count_hook):
                self.model(torch.full_like(images, float("nan")))
        self.images += images.shape[0]

    def _record(self, images: torch.Tensor) -> tuple[dict[str, list], dict[str, torch.dtype]]:
        recorded: dict[str, list[torch.Tensor]] = {n: [] for n in self.sites}
        dtypes: dict[str, torch.dtype] = {}

        def make_hook(name: str):  # type: ignore[no-untyped-def]
            def hook(_site: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                recorded[name].append(output != 0)
                dtypes[name] = output.dtype

            return hook

        with _hooked(self.sites, make_hook):
            self.model(images)
        return recorded, dtypes

    def _count_hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            if torch.isnan(x).any():  # reached by the analog input: real multiplications
                self.analog_macs[name] += _macs_per_row(layer, output) * output.shape[0]
            else:
                self.sops[name] += _layer_sops(layer, x)

        return hook

    def result(self) -> dict[str, Any]:
        if self.images == 0:
            raise DataError("no images were given to count synaptic operations on")
        n = self.images
        return {
            "sops_per_image": sum(self.sops.values()) / n,
            "first_layer_macs_per_image": sum(self.analog_macs.values()) / n,
            "sops_by_layer": {k: v / n for k, v in self.sops.items()},
            "first_layer_macs_by_layer": {k: v / n for k, v in self.analog_macs.items()},
            "images": n,
        }


def count_sops(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Synaptic operations per image of a spiking ``model`` on ``images[B, C, H, W]``.

    Returns ``sops_per_image`` (ACs from actual spikes), ``first_layer_macs_per_image``
    (analog layers, counted once per time-step), ``macs_per_image`` (ANN equivalent, one
    pass), the per-layer splits ``sops_by_layer`` / ``first_layer_macs_by_layer`` and
    ``images``. Counting rules: module docstring.
    """
    counter = _SopCounter(model)
    counter.update(images)
    result = counter.result()
    result["macs_per_image"] = count_macs(model, images.shape[1:])["macs_per_image"]
    return result


def energy_estimate(macs: float, sops: float, first_layer_macs: float = 0.0) -> dict[str, Any]:
    """Energy per image in µJ: ANN ``macs·E_MAC`` vs SNN ``first_layer_macs·E_MAC + sops·E_AC``.

    An estimate (arithmetic only; constants :data:`E_MAC_PJ`, :data:`E_AC_PJ`), labelled so.
    """
    ann = macs * E_MAC_PJ * 1e-6
    snn = (first_layer_macs * E_MAC_PJ + sops * E_AC_PJ) * 1e-6
    return {
        "ann_uj": ann,
        "snn_uj": snn,
        "ann_over_snn": ann / snn if snn > 0 else float("inf"),
        "note": ENERGY_NOTE,
    }


def _image_batches(batches: Any, max_batches: int | None) -> Iterator[torch.Tensor]:
    """Images from a tensor, or from an iterable of tensors or ``(images, labels)`` pairs."""
    source: Iterable[Any] = [batches] if torch.is_tensor(batches) else batches
    for i, batch in enumerate(source):
        if max_batches is not None and i >= max_batches:
            return
        yield batch if torch.is_tensor(batch) else batch[0]


def measure_snn(
    model: nn.Module, loader_or_batches: Any, max_batches: int | None = None
) -> dict[str, Any]:
    """All METHODS 3 numbers of one model in one call (for ``spikebridge eval`` and summaries).

    ``loader_or_batches``: a DeviceLoader, any iterable of image tensors or
    ``(images, labels)`` pairs, or one image tensor. A spiking model gives ``firing_rate``,
    ``firing_rate_by_layer``, ``silent_fraction``, ``sops_per_image``, ``macs_per_image``,
    ``first_layer_macs_per_image``, ``energy_estimate_uj`` (SNN), ``ann_energy_estimate_uj``
    and ``energy_note``; an ANN gives the MAC and ANN-energy entries only.
    """
    batches = _image_batches(loader_or_batches, max_batches)
    first = next(batches, None)
    if first is None:
        raise DataError("measure_snn got no image batches to measure")
    macs = count_macs(model, first.shape[1:])["macs_per_image"]
    if not _sites(model):
        energy = energy_estimate(macs, 0.0)
        return {"macs_per_image": macs, "ann_energy_estimate_uj": energy["ann_uj"],
                "energy_note": ENERGY_NOTE}  # fmt: skip
    counter = _SopCounter(model)
    with FiringMonitor(model) as monitor:
        counter.update(first)
        for images in batches:
            counter.update(images)
    sops = counter.result()
    energy = energy_estimate(macs, sops["sops_per_image"], sops["first_layer_macs_per_image"])
    return {
        "firing_rate": monitor.overall_rate(),
        "firing_rate_by_layer": monitor.rates(),
        "silent_fraction": monitor.silent_fraction(),
        "sops_per_image": sops["sops_per_image"],
        "first_layer_macs_per_image": sops["first_layer_macs_per_image"],
        "macs_per_image": macs,
        "energy_estimate_uj": energy["snn_uj"],
        "ann_energy_estimate_uj": energy["ann_uj"],
        "energy_note": ENERGY_NOTE,
        "images": sops["images"],
    }
