"""The NIR graph builder shared by the exporters: :class:`_GraphBuilder` makes the nodes and
edges of both targets (neuron forms, BN folding, per-channel factors), and
:func:`_sequential` walks an ``nn.Sequential`` chain into it.

:mod:`spikebridge.export.nir` (ResNets and the entry points), :mod:`.nir_graph` (fx graphs)
and :mod:`.nir_pool` (gated max pooling) build on it; the mapping rules are described in
:mod:`spikebridge.export.nir`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spikebridge.conversion.folding import folded_conv
from spikebridge.errors import ConfigError, ModelError
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite

INTEGRATOR_GAIN = 2.0**100
"""``w_in`` of the CubaLIF that stands for an IF neuron (portable target). With
``τ_syn = w_in·dt`` the synaptic current decays by ``dt/τ_syn = 2^-100`` per step, which is
exactly 1 in float64, and ``w_in·dt/τ_syn = 1`` with ``w_in`` exact in float32."""

Normalization = tuple[Sequence[float], Sequence[float]]
"""Per-channel ``(mean, std)`` of the input pixels in ``[0, 1]`` (one value: all channels)."""


def _nir() -> Any:
    try:
        import nir
    except ImportError as exc:
        raise ConfigError(
            "NIR export needs the optional 'nir' package; install it with "
            "pip install 'spikebridge[nir]'"
        ) from exc
    return nir


@dataclass(frozen=True)
class _Value:
    """A tensor between nodes: the nodes whose outputs sum to it, and its unbatched shape."""

    sources: tuple[str, ...]
    shape: tuple[int, ...]

    def __add__(self, other: _Value) -> _Value:
        if self.shape != other.shape:
            raise ModelError(f"a residual sum adds shapes {self.shape} and {other.shape}")
        return _Value(self.sources + other.sources, self.shape)


def _array(x: torch.Tensor | float) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float32)


def _per_neuron(p: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a scalar or per-channel ``[C]`` neuron parameter to one value per neuron."""
    p = p.detach().float().cpu()
    if p.dim() == 1 and len(shape) > 1:
        p = p.view(-1, *([1] * (len(shape) - 1)))
    return np.ascontiguousarray(np.broadcast_to(p.numpy(), shape), dtype=np.float32)


def _per_channel(p: torch.Tensor, channels: int) -> np.ndarray:
    """A scalar or per-channel neuron parameter as one float64 value per channel ``[C]``."""
    values = p.detach().double().cpu().reshape(-1).numpy()
    if values.size not in (1, channels):
        raise ModelError(f"a parameter with {values.size} values does not fit {channels} channels")
    return np.broadcast_to(values, (channels,)).copy()


def _firing_level(level: float, strict: bool) -> np.float32:
    """NIR fires on ``v > v_threshold``; our non-strict ``v >= θ`` is ``v > θ⁻`` with ``θ⁻``
    the float32 just below ``θ`` (exact for float32 potentials)."""
    value = np.float32(level)
    return value if strict else np.nextafter(value, np.float32(-np.inf))


def _fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with an eval-mode BatchNorm folded in (the conversion's own
    :func:`~spikebridge.conversion.folding.folded_conv`, computed in float64)."""
    if isinstance(bn, nn.BatchNorm2d):
        conv = folded_conv(conv, bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return _array(conv.weight), _array(bias)


def _refuse(name: str, module: nn.Module, expected: str) -> ModelError:
    return ModelError(
        f"cannot export module {name!r} ({type(module).__name__}) to NIR; expected {expected}"
    )


class _GraphBuilder:
    """Collects NIR nodes and edges while the model is walked from input to output."""

    def __init__(self, dt: float, target: str) -> None:
        self.nir, self.dt, self.target = _nir(), float(dt), target
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, x: _Value | None, shape: tuple[int, ...]) -> _Value:
        if name in self.nodes:
            raise ModelError(f"two NIR nodes would share the name {name!r}")
        self.nodes[name] = node
        self.edges.extend((src, name) for src in (x.sources if x else ()))
        return _Value((name,), tuple(int(s) for s in shape))

    def input(self, shape: tuple[int, ...], normalization: Normalization | None) -> _Value:
        """The graph input; with ``normalization`` the graph takes raw ``[0, 1]`` pixels and
        its first node computes ``(x − mean) / std`` per channel (node ``normalize``)."""
        x = self.add("input", self.nir.Input(input_type=np.array(shape)), None, shape)
        if normalization is None:
            return x
        sizes = [torch.as_tensor(v).numel() for v in normalization]
        if len(sizes) != 2 or any(n not in (1, shape[0]) for n in sizes):
            raise ConfigError(
                f"input normalization needs (mean, std) with 1 or {shape[0]} values each"
            )
        mean, std = (_per_channel(torch.as_tensor(v), shape[0]) for v in normalization)
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ConfigError(
                f"input normalization needs finite means and stds > 0, got {normalization}"
            )
        return self.channel_scale("normalize", 1.0 / std, x, bias=-mean / std)

    def output(self, x: _Value) -> None:
        self.add("output", self.nir.Output(output_type=np.array(x.shape)), x, x.shape)

    def channel_scale(
        self, name: str, factor: np.ndarray, x: _Value, bias: np.ndarray | None = None
    ) -> _Value:
        """``y_c = factor_c · x_c (+ bias_c)``: a 1x1 ``nir.Conv2d`` with a diagonal weight on
        ``[C, H, W]``, a diagonal ``nir.Affine`` on ``[N]`` (both peers import these; neither
        maps ``nir.Scale``, and SpikingJelly refuses grouped convolutions)."""
        c = x.shape[0]
        weight = np.diag(np.asarray(factor, np.float64)).astype(np.float32)
        bias = np.zeros(c, np.float32) if bias is None else np.asarray(bias, np.float32)
        if len(x.shape) == 3:
            node = self.nir.Conv2d(
                input_shape=x.shape[1:], weight=weight[:, :, None, None], stride=(1, 1),
                padding=(0, 0), dilation=(1, 1), groups=1, bias=bias,
            )  # fmt: skip
        elif len(x.shape) == 1:
            node = self.nir.Affine(weight=weight, bias=bias)
        else:
            raise ModelError(f"cannot scale the channels of {name!r} with shape {x.shape}")
        return self.add(name, node, x, x.shape)

    def conv(self, name: str, conv: nn.Module, bn: nn.Module | None, x: _Value) -> _Value:
        """Conv2d (+ folded BN) on a ``[C, H, W]`` value."""
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            raise _refuse(name, conv, "a zero-padded nn.Conv2d")
        if bn is not None and not isinstance(bn, (nn.BatchNorm2d, nn.Identity)):
            raise _refuse(f"{name} (norm)", bn, "nn.BatchNorm2d to fold into the conv")
        if len(x.shape) != 3 or x.shape[0] != conv.in_channels:
            raise ModelError(f"conv {name!r} expects {conv.in_channels} channels, gets {x.shape}")
        if self.target == "portable" and conv.groups != 1:
            raise ModelError(
                f"conv {name!r} has groups={conv.groups}; SpikingJelly's NIR importer refuses "
                "grouped convolutions (export with target='compact')"
            )
        weight, bias = _fold_bn(conv, bn)
        node = self.nir.Conv2d(
            input_shape=x.shape[1:], weight=weight, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=bias,
            metadata={"folded_batchnorm": isinstance(bn, nn.BatchNorm2d)},
        )  # fmt: skip
        return self.add(name, node, x, tuple(node.output_type["output"]))

    def site(self, name: str, site: nn.Module, x: _Value) -> _Value:
        """A neuron layer (its node sums its inputs), emitting ``o`` or ``o·θ``."""
        if not isinstance(site, SpikingSite):
            raise _refuse(name, site, "a spiking neuron site (export covers spiking models)")
        neuron = site.neuron
        if self.target == "compact":
            return self._compact_site(name, neuron, x)
        theta = _per_channel(neuron.threshold, x.shape[0])
        phi = _per_channel(neuron.phi, x.shape[0])
        if (theta <= 0).any() or not np.isfinite(theta).all():
            raise ModelError(f"neuron {name!r} has a threshold <= 0; NIR neurons need θ > 0")
        if neuron.decay == 1.0 and neuron.reset == "subtract":
            out = self._integrator(name, neuron, theta, phi, x)
        elif neuron.reset == "hard" and 0.0 < neuron.decay < 1.0 and not phi.any():
            out = self._leaky(name, neuron, theta, x)
        else:
            raise ModelError(
                f"neuron {name!r} (decay {neuron.decay:g}, {neuron.reset} reset, "
                f"φ up to {phi.max():g}) has no portable NIR form; the portable target covers "
                "IF neurons with reset by subtraction and LIF neurons with hard reset and "
                "v0 = 0 (export with target='compact' and read its node metadata)"
            )
        if not neuron.emit_threshold:
            return out
        return self.channel_scale(f"{name}.scale", theta, out)

    def _integrator(
        self, name: str, neuron: SpikingNeuron, theta: np.ndarray, phi: np.ndarray, x: _Value
    ) -> _Value:
        """Our IF neuron (METHODS 2.1) in node types both peers import (portable target).

        Our neuron fires at ``t`` iff ``φθ + S_t − θ·N_{t−1} >= θ`` (``S_t``: summed input,
        ``N_{t−1}``: spikes so far), i.e. iff ``I_t = (S_t − θ·N_{t−1}) / (θ(1 − φ)) >= 1``.
        ``I_t`` is a CubaLIF's synaptic current with ``τ_syn = w_in·dt`` huge (no decay),
        fed by the input times ``1/(θ(1 − φ))`` (node ``.gain``) and by a recurrent edge
        carrying last step's spikes times ``−1/(1 − φ)`` (node ``.reset``); ``τ_mem = dt``,
        ``R = 1`` make the membrane equal ``I_t`` at every step, so the CubaLIF's own
        reset-to-zero never matters. Subtract reset, ``v_0 = φθ`` and per-channel θ and φ
        thus need no field that NIR or the peers lack; the threshold is 1 (one float32 below
        for our ``>=``, since NIR fires on ``v > v_threshold``).
        """
        if (phi >= 1).any() or not np.isfinite(phi).all():
            raise ModelError(f"neuron {name!r} has φ >= 1 (v0 >= θ); the portable form needs φ < 1")
        current = self.channel_scale(f"{name}.gain", 1.0 / (theta * (1.0 - phi)), x)
        shape = x.shape
        node = self.nir.CubaLIF(
            tau_syn=np.full(shape, INTEGRATOR_GAIN * self.dt), tau_mem=np.full(shape, self.dt),
            r=np.ones(shape), v_leak=np.zeros(shape),
            v_threshold=np.full(shape, _firing_level(1.0, neuron.strict), np.float32),
            v_reset=np.zeros(shape), w_in=INTEGRATOR_GAIN,
            metadata=self._neuron_metadata(neuron, shape, "if-integrator"),
        )  # fmt: skip
        out = self.add(name, node, current, shape)
        reset = self.channel_scale(f"{name}.reset", -1.0 / (1.0 - phi), out)
        if len(shape) == 1:
            # snnTorch's importer turns a two-node loop neuron <-> Affine into its own
            # recurrent layer and fails on it; an identity node in the loop avoids that
            reset = self.channel_scale(f"{name}.reset.hold", np.ones(shape[0]), reset)
        self.edges.append((reset.sources[0], name))  # recurrent: reaches the neuron at t + 1
        return out

    def _leaky(self, name: str, neuron: SpikingNeuron, theta: np.ndarray, x: _Value) -> _Value:
        """A hard-reset LIF with ``v_0 = 0`` as ``nir.LIF``; per-channel θ is divided into the
        input (node ``.gain``) so that every neuron of the node has the same threshold."""
        uniform = bool((theta == theta[0]).all())
        current = x if uniform else self.channel_scale(f"{name}.gain", 1.0 / theta, x)
        shape, decay = x.shape, neuron.decay
        node = self.nir.LIF(
            tau=np.full(shape, self.dt / (1.0 - decay)), r=np.full(shape, 1.0 / (1.0 - decay)),
            v_leak=np.zeros(shape), v_reset=np.zeros(shape),
            v_threshold=np.full(shape, _firing_level(theta[0] if uniform else 1.0, neuron.strict),
                                np.float32),
            metadata=self._neuron_metadata(neuron, shape, "lif"),
        )  # fmt: skip
        return self.add(name, node, current, shape)

    def _compact_site(self, name: str, neuron: SpikingNeuron, x: _Value) -> _Value:
        """One ``nir.IF``/``nir.LIF`` node (+ ``nir.Scale(θ)`` if it emits ``o·θ``)."""
        out = self.add(name, self._neuron_node(name, neuron, x.shape), x, x.shape)
        if not neuron.emit_threshold:
            return out
        scale = self.nir.Scale(scale=_per_neuron(neuron.threshold, x.shape))
        return self.add(f"{name}.scale", scale, out, x.shape)

    def _neuron_metadata(self, neuron: SpikingNeuron, shape: tuple[int, ...], form: str) -> dict:
        return {
            "form": form, "reset": neuron.reset, "strict": bool(neuron.strict),
            "decay": float(neuron.decay), "v_init": _per_neuron(neuron.phi * neuron.threshold, shape),
            "threshold": _per_neuron(neuron.threshold, shape), "dt": self.dt,
            "emit_threshold": bool(neuron.emit_threshold),
        }  # fmt: skip

    def _neuron_node(self, name: str, neuron: SpikingNeuron, shape: tuple[int, ...]) -> Any:
        """``nir.IF``/``nir.LIF`` whose forward-Euler step ``dt`` equals our charge equation."""
        theta = _per_neuron(neuron.threshold, shape)
        zeros, decay = np.zeros(shape, np.float32), neuron.decay
        meta = self._neuron_metadata(neuron, shape, "compact")
        if decay == 1.0:
            r = np.full(shape, 1.0 / self.dt, np.float32)
            return self.nir.IF(r=r, v_threshold=theta, v_reset=zeros, metadata=meta)
        if not 0.0 <= decay < 1.0:
            raise ModelError(f"neuron {name!r} has decay {decay}; NIR needs 0 <= decay <= 1")
        tau = np.full(shape, self.dt / (1.0 - decay), np.float32)
        r = np.full(shape, 1.0 / (1.0 - decay), np.float32)
        return self.nir.LIF(
            tau=tau, r=r, v_leak=zeros, v_threshold=theta, v_reset=zeros, metadata=meta
        )

    def pool(self, name: str, pool: nn.Module, x: _Value) -> _Value:
        """Average pooling as ``nir.AvgPool2d`` (kernel, stride, padding in pixels)."""
        c, h, w = x.shape
        if isinstance(pool, nn.AdaptiveAvgPool2d):
            oh, ow = _pair(pool.output_size, (h, w))
            if h % oh or w % ow:
                raise ModelError(f"pool {name!r}: {h}x{w} does not divide into {oh}x{ow}")
            kernel, stride, pad = (h // oh, w // ow), (h // oh, w // ow), (0, 0)
        elif isinstance(pool, nn.AvgPool2d) and not pool.ceil_mode:
            if pool.divisor_override or (not pool.count_include_pad and pool.padding):
                raise _refuse(name, pool, "average pooling without a custom divisor")
            kernel = _pair(pool.kernel_size)
            stride, pad = _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        else:
            raise _refuse(name, pool, "average pooling (NIR has no max pooling)")
        node = self.nir.AvgPool2d(
            kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(pad)
        )
        dims = zip((h, w), pad, kernel, stride, strict=True)
        oh, ow = ((s + 2 * p - k) // st + 1 for s, p, k, st in dims)
        return self.add(name, node, x, (c, oh, ow))

    def flatten(self, name: str, x: _Value) -> _Value:
        node = self.nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0, end_dim=-1)
        return self.add(name, node, x, (int(np.prod(x.shape)),))

    def linear(self, name: str, fc: nn.Module, x: _Value) -> _Value:
        if not isinstance(fc, nn.Linear):
            raise _refuse(name, fc, "nn.Linear")
        if x.shape != (fc.in_features,):
            raise ModelError(f"linear {name!r} expects ({fc.in_features},), gets {x.shape}")
        weight = _array(fc.weight)
        if fc.bias is None:
            node = self.nir.Linear(weight=weight)
        else:
            node = self.nir.Affine(weight=weight, bias=_array(fc.bias))
        return self.add(name, node, x, (fc.out_features,))

    def graph(self, metadata: dict[str, Any]) -> Any:
        try:
            return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)
        except (ValueError, AssertionError) as exc:  # nir's own structure/type checks
            raise ModelError(f"the exported graph fails NIR's checks ({exc})") from exc


def _pair(v: Any, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """``k`` or ``(kh, kw)`` -> ``(kh, kw)``; ``None`` entries (adaptive pools) -> ``default``."""
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if default is not None:
        pair = tuple(d if p is None else p for p, d in zip(pair, default, strict=True))
    return int(pair[0]), int(pair[1])


def _sequential(b: _GraphBuilder, prefix: str, seq: nn.Sequential, x: _Value) -> _Value:
    """Walk a chain of modules; a BatchNorm2d right after a Conv2d is folded into it."""
    items = list(seq.named_children())
    i = 0
    while i < len(items):
        name, m = items[i]
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(m, nn.Conv2d):
            nxt = items[i + 1][1] if i + 1 < len(items) else None
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
            x, i = b.conv(full, m, bn, x), i + (2 if bn is not None else 1)
            continue
        x = _sequential_step(b, full, m, x)
        i += 1
    return x


def _sequential_step(b: _GraphBuilder, name: str, m: nn.Module, x: _Value) -> _Value:
    if isinstance(m, SpikingSite):
        return b.site(name, m, x)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return b.pool(name, m, x)
    if isinstance(m, nn.Flatten):
        return b.flatten(name, x)
    if isinstance(m, nn.Linear):
        return b.linear(name, m, x)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    raise _refuse(
        name, m, "Conv2d(+BatchNorm2d), a spiking neuron site, average pooling, Flatten or Linear"
    )
