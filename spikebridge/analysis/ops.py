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
are the analog layers. In pass 2 each weight layer is a counter that returns zeros (NaN on
the analog path) of its output shape, so pass 2 does no convolution: measuring costs about
one forward pass. Both passes run in eval mode without gradients; pass 1 keeps one batch of
spikes (as bool) in memory. Counts are kept per time-step (the first dimension of a folded
``[T*B, ...]`` input is time-major), so the figures at every ``t <= T`` come from one pass.

Energy: ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ`` (32-bit float, 45 nm, Horowitz, ISSCC 2014).
It is an estimate of arithmetic energy only (no memory traffic, no neuron updates).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.analysis.firing import FiringMonitor
from spikebridge.errors import ConfigError, DataError, ModelError
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


def _macs_per_row(layer: nn.Module, output: torch.Size) -> int:
    """MACs of ``layer`` for one row (image or time-step) of its batched output's shape."""
    outputs_per_row = output.numel() // output[0]
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
            by_layer[name] = by_layer.get(name, 0) + _macs_per_row(layer, output.shape)

        return hook

    x = torch.zeros(1, *input_shape, device=_device(model))
    with _measuring(model), _hooked(_weight_layers(model), make_hook):
        model(x)
    return {"macs_per_image": sum(by_layer.values()), "macs_by_layer": by_layer}


def _conv_sops(conv: nn.Conv2d, events: torch.Tensor) -> torch.Tensor:
    """ACs per step caused by ``events[T, B, C_in, H, W]``: each event costs one AC per output
    it reaches. Returns ``[T]`` (float64).

    Equal to ``conv(events, all-ones weights).sum()`` per step; computed cheaply by summing
    events over the batch and over the input channels of each group first (the conv is
    linear).
    """
    if conv.padding_mode != "zeros":
        raise ModelError(f"SOP counting supports zero-padded convs, not {conv.padding_mode!r}")
    g = conv.groups
    ev = events.double().sum(1)  # [T, C_in, H, W]
    ev = ev.view(ev.shape[0], g, conv.in_channels // g, *ev.shape[2:]).sum(2)
    ones = torch.ones(g, 1, *conv.kernel_size, dtype=ev.dtype, device=ev.device)
    reach = F.conv2d(ev, ones, None, conv.stride, conv.padding, conv.dilation, g)
    return reach.flatten(1).sum(1) * (conv.out_channels // g)


def _by_step(x: torch.Tensor, timesteps: int, layer: str) -> torch.Tensor:
    """A folded layer input ``[T*B, ...]`` as ``[T, B, ...]`` (time outermost)."""
    if x.shape[0] % timesteps:
        raise ModelError(
            f"layer {layer!r} got {x.shape[0]} rows, not a multiple of T = {timesteps}; SOPs "
            "per time-step need time folded into the batch, as SpikingSite does"
        )
    return x.view(timesteps, x.shape[0] // timesteps, *x.shape[1:])


def _layer_sops(layer: nn.Module, events: torch.Tensor) -> torch.Tensor:
    """SOPs per step ``[T]`` of ``events[T, B, ...]`` arriving at a conv or linear layer."""
    if isinstance(layer, nn.Conv2d):
        return _conv_sops(layer, events)
    return events.double().flatten(1).sum(1) * layer.out_features  # type: ignore[operator]


class _Replay(nn.Module):
    """Stands in for a SpikingSite in pass 2: returns its recorded spikes (0/1), in order."""

    def __init__(self, outputs: list[torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.outputs, self.dtype = outputs, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outputs:
            raise ModelError("a spiking site ran more often in the replay than when recorded")
        return self.outputs.pop(0).to(self.dtype)


def _output_shape(layer: nn.Module, x: torch.Tensor) -> torch.Size:
    """The shape ``layer(x)`` would have, found on the meta device (no arithmetic)."""
    if isinstance(layer, nn.Conv2d):
        meta = F.conv2d(x.to("meta"), layer.weight.to("meta"), None, layer.stride,
                        layer.padding, layer.dilation, layer.groups)  # fmt: skip
        return meta.shape
    return torch.Size((*x.shape[:-1], layer.out_features))  # type: ignore[arg-type]


class _Counting(nn.Module):
    """Stands in for a weight layer in pass 2: hands its input to ``count`` and returns
    zeros of the layer's output shape (NaN where the input holds the analog NaN image), so
    the replay does no convolution. Nothing after a weight layer reaches another weight
    layer except through a site (whose replay ignores its input), so the zeros change no
    count."""

    def __init__(self, name: str, layer: nn.Module, count: Any) -> None:
        super().__init__()
        self.name, self.layer, self.count = name, (layer,), count  # tuple: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, analog = _output_shape(self.layer[0], x), bool(torch.isnan(x).any())
        self.count(self.name, self.layer[0], x, shape, analog)
        return x.new_full(shape, float("nan") if analog else 0.0)


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


def _until(per_step: dict[str, torch.Tensor], t: int) -> dict[str, float]:
    """Per layer: the sum of steps ``1..t``."""
    return {k: float(v[:t].sum()) for k, v in per_step.items()}


class _SopCounter:
    """Running SOP / analog-MAC sums per layer and per time-step over batches (constant memory
    across batches); the figures at any ``t <= T`` are the sums of steps ``1..t``."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.sites = model, _sites(model)
        if not self.sites:
            raise ModelError("SOP counting needs a spiking model; this one has no SpikingSite")
        if "" in self.sites:
            raise ModelError("SOP counting needs the SpikingSite inside a model, not alone")
        self.layers = _weight_layers(model)
        self.timesteps = 0
        self.sops: dict[str, torch.Tensor] = {}  # layer -> [T] float64
        self.analog_macs: dict[str, torch.Tensor] = {}
        self.images = 0

    def update(self, images: torch.Tensor) -> None:
        """Count one batch ``images[B, ...]`` (two forward passes, see module docstring)."""
        images = images.to(_device(self.model))
        timesteps = next(iter(self.sites.values())).timesteps
        if self.timesteps and timesteps != self.timesteps:
            raise ModelError(f"the model ran T = {timesteps} after T = {self.timesteps}; count "
                             "operations at one T per counter")  # fmt: skip
        self.timesteps = timesteps
        with _measuring(self.model):
            recorded, dtypes = self._record(images)
            replays: dict[str, nn.Module] = {n: _Replay(recorded[n], dtypes[n]) for n in self.sites}
            replays |= {n: _Counting(n, m, self._count) for n, m in self.layers.items()}
            with _swapped(self.model, replays):
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

    def _count(
        self, name: str, layer: nn.Module, x: torch.Tensor, shape: torch.Size, analog: bool
    ) -> None:
        """Add one call of weight layer ``name`` on input ``x`` (output ``shape``)."""
        T = self.timesteps
        if analog:  # reached by the analog input: real multiplications, every step
            if shape[0] % T:
                _by_step(x, T, name)  # the same refusal as for events
            per_step = torch.full((T,), float(_macs_per_row(layer, shape) * (shape[0] // T)))
            self.analog_macs[name] = self.analog_macs.get(name, 0) + per_step.double()
        else:
            per_step = _layer_sops(layer, _by_step(x, T, name)).cpu()
            self.sops[name] = self.sops.get(name, 0) + per_step

    def result(self, t: int | None = None) -> dict[str, Any]:
        """Per image over steps ``1..t`` (None: all T), and the totals at every t."""
        if self.images == 0:
            raise DataError("no images were given to count synaptic operations on")
        n, t = self.images, self.timesteps if t is None else t
        if not 1 <= t <= self.timesteps:
            raise ConfigError(f"t is {t}; expected 1 to the T = {self.timesteps} that ran.")
        sops, analog = _until(self.sops, t), _until(self.analog_macs, t)
        steps = range(1, self.timesteps + 1)
        return {
            "sops_per_image": sum(sops.values()) / n,
            "first_layer_macs_per_image": sum(analog.values()) / n,
            "sops_by_layer": {k: v / n for k, v in sops.items()},
            "first_layer_macs_by_layer": {k: v / n for k, v in analog.items()},
            "sops_by_timestep": {str(s): sum(_until(self.sops, s).values()) / n for s in steps},
            "first_layer_macs_by_timestep": {
                str(s): sum(_until(self.analog_macs, s).values()) / n for s in steps
            },
            "images": n,
            "timesteps": t,
        }


def count_sops(model: nn.Module, images: torch.Tensor, t: int | None = None) -> dict[str, Any]:
    """Synaptic operations per image of a spiking ``model`` on ``images[B, C, H, W]``.

    Returns ``sops_per_image`` (ACs from actual spikes), ``first_layer_macs_per_image``
    (analog layers, counted once per time-step), ``macs_per_image`` (ANN equivalent, one
    pass), the per-layer splits ``sops_by_layer`` / ``first_layer_macs_by_layer``, all over
    the first ``t`` steps (None: the model's T), the totals at every t
    ``sops_by_timestep`` / ``first_layer_macs_by_timestep`` (``{"1": ..., "T": ...}``, from the
    same pass), ``timesteps`` (= t) and ``images``. Counting rules: module docstring.
    """
    counter = _SopCounter(model)
    counter.update(images)
    result = counter.result(t)
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
    model: nn.Module, loader_or_batches: Any, max_batches: int | None = None, t: int | None = None
) -> dict[str, Any]:
    """All METHODS 3 numbers of one model in one call (for ``spikebridge eval`` and summaries).

    ``loader_or_batches``: a DeviceLoader, any iterable of image tensors or
    ``(images, labels)`` pairs, or one image tensor. A spiking model runs its own T once and
    gives, over its first ``t`` steps (None: all T; ``measured_timesteps`` says which):
    ``firing_rate``, ``firing_rate_by_layer``, ``silent_fraction``, ``sops_per_image``,
    ``first_layer_macs_per_image``, ``energy_estimate_uj`` (SNN); and at every t <= T, from
    the same pass (spikes of the first t steps are those of a t-step run):
    ``firing_rate_by_timestep``, ``sops_by_timestep``, ``first_layer_macs_by_timestep``,
    ``energy_by_timestep`` (SNN, µJ). Both kinds give ``macs_per_image``,
    ``ann_energy_estimate_uj`` and ``energy_note``; an ANN gives only these.
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
    sops = counter.result(t)
    t = sops["timesteps"]
    energy = energy_estimate(macs, sops["sops_per_image"], sops["first_layer_macs_per_image"])
    return {
        "firing_rate": monitor.overall_rate(t),
        "firing_rate_by_layer": monitor.rates(t),
        "silent_fraction": monitor.silent_fraction(t),
        "sops_per_image": sops["sops_per_image"],
        "first_layer_macs_per_image": sops["first_layer_macs_per_image"],
        "macs_per_image": macs,
        "energy_estimate_uj": energy["snn_uj"],
        "ann_energy_estimate_uj": energy["ann_uj"],
        "energy_note": ENERGY_NOTE,
        "measured_timesteps": t,
        "firing_rate_by_timestep": monitor.rates_by_timestep(),
        "sops_by_timestep": sops["sops_by_timestep"],
        "first_layer_macs_by_timestep": sops["first_layer_macs_by_timestep"],
        "energy_by_timestep": snn_energy_by_timestep(sops),
        "images": sops["images"],
    }


def snn_energy_by_timestep(m: dict[str, Any]) -> dict[str, float]:
    """SNN energy estimate (µJ per image) at every t of ``m["sops_by_timestep"]`` and
    ``m["first_layer_macs_by_timestep"]`` (METHODS 3: analog MACs · E_MAC + SOPs · E_AC)."""
    analog = m.get("first_layer_macs_by_timestep") or {}
    return {
        t: energy_estimate(0.0, sops, analog.get(t, 0.0))["snn_uj"]
        for t, sops in m["sops_by_timestep"].items()
    }


def measurement_at(m: dict[str, Any], t: int) -> dict[str, Any] | None:
    """Firing rate, SOPs, analog MACs and SNN energy per image of a measurement ``m`` (a
    summary.json / eval.json) over the first ``t`` steps, or None when ``m`` has no figures
    at that t. Reads the per-t keys, else the top-level figures when ``m`` names their T
    (``measured_timesteps``; old run folders have only those)."""
    key = str(t)
    if key in (m.get("sops_by_timestep") or {}):
        analog = m.get("first_layer_macs_by_timestep") or {}
        return {
            "firing_rate": (m.get("firing_rate_by_timestep") or {}).get(key),
            "sops_per_image": m["sops_by_timestep"][key],
            "first_layer_macs_per_image": analog.get(key),
            "energy_estimate_uj": (m.get("energy_by_timestep") or {}).get(key),
        }
    if m.get("sops_per_image") is not None and m.get("measured_timesteps") == t:
        keys = ("firing_rate", "sops_per_image", "first_layer_macs_per_image",
                "energy_estimate_uj")  # fmt: skip
        return {k: m.get(k) for k in keys}
    return None


BY_TIMESTEP_KEYS = ("firing_rate_by_timestep", "sops_by_timestep",
                    "first_layer_macs_by_timestep", "energy_by_timestep")  # fmt: skip


def only_timesteps(m: dict[str, Any], wanted: Sequence[int]) -> dict[str, Any]:
    """``m`` (a :func:`measure_snn` result) with its per-t figures cut to the ``wanted`` t,
    in place; returns ``m``."""
    keep = {str(t) for t in wanted}
    for key in BY_TIMESTEP_KEYS:
        if key in m:
            m[key] = {t: v for t, v in m[key].items() if t in keep}
    return m
