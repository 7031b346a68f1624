"""Export spiking models to the Neuromorphic Intermediate Representation (NIR).

``export_nir`` writes a :class:`ResNet` (trained LIF or converted IF), an
``nn.Sequential`` chain or a ``torch.fx`` graph (a converted user CNN, see
:mod:`spikebridge.export.nir_graph`) as a ``nir.NIRGraph``. Needs the optional ``nir`` package
(``pip install 'spikebridge[nir]'``); nothing else (no snnTorch, no nirtorch).

What maps to what (both targets)
- ``Conv2d`` + following ``BatchNorm2d`` -> ``nir.Conv2d`` with the BN folded in (eval-mode
  running statistics: ``W·γ/σ``, ``β + (b − μ)·γ/σ``, ``σ = sqrt(var + eps)``).
- ``AdaptiveAvgPool2d`` / ``AvgPool2d`` -> ``nir.AvgPool2d``; ``Flatten`` -> ``nir.Flatten``
  (unbatched dims, ``start_dim=0``); ``Linear`` -> ``nir.Affine`` (or ``nir.Linear``).
- Residual additions are graph edges: a node with several incoming edges sums them. In a
  post-add block the neuron receives the branch and the shortcut; in a pre-add block every
  consumer of the block output receives one edge per summand.
- Input: the analog image is a constant input at each of the ``T`` steps (direct
  encoding); the output is the per-step logits, which our model averages over ``T``
  (graph metadata ``timesteps``, ``input_encoding``, ``readout``). With
  ``normalization=(mean, std)`` the first node (``normalize``, a 1x1 conv) computes
  ``(x − mean)/std`` per channel, so the graph takes raw pixels in ``[0, 1]``; the values
  are also in the metadata (``input_mean``, ``input_std``).
- A converted network's gated max pooling (on spikes) -> threshold-neuron layers
  (:mod:`spikebridge.export.nir_pool`; NIR has no max-pooling node).
- Anything else (ReLU/Clip/QCFS activations, other max pooling, a BatchNorm not after a
  conv, non-zero padding modes, ...) is refused with a ModelError.

Our neuron: ``h_t = decay·v_{t-1} + x_t``; ``o_t = 1[h_t > θ]`` (or ``>=``);
``v_t = h_t·(1−o_t)`` (hard) or ``h_t − θ·o_t`` (subtract); ``v_0 = φ·θ``; it emits ``o_t``
or ``o_t·θ`` (converted IF, METHODS 2.1). NIR's neurons are ODEs (LIF
``τ dv/dt = (v_leak − v) + R·I``, IF ``dv/dt = R·I``, CubaLIF adds a synaptic current
``τ_syn dI/dt = −I + w_in·S``), fire on ``v > v_threshold`` and set ``v ← v_reset``; both
peers step them with forward Euler at ``dt = 1e-4`` s (snnTorch hard-codes it,
SpikingJelly's ``import_from_nir(dt=...)`` defaults to it), which is the ``dt`` we export with.

Target ``portable`` (default): what SpikingJelly 2.0.0 and snnTorch 1.0.0 import as shipped
and run with our predictions. Their importers (read in their sources) take only
Affine/Linear/Conv2d/AvgPool2d/Flatten/IF/LIF/CubaLIF, one threshold per node, hard reset
(snnTorch's ``nir.IF`` is a leaky ``Leaky(beta=0.9)`` that asserts ``R == 1``), no initial
potential, no ``nir.Scale``, and SpikingJelly no grouped convolution. So:
- a per-channel factor (``o·θ``, ``1/θ``) is a 1x1 ``nir.Conv2d`` with a diagonal weight
  (a diagonal ``nir.Affine`` on vectors);
- an IF neuron with reset by subtraction becomes an exact integrator form (see
  ``_GraphBuilder._integrator``): node ``.gain`` (input × ``1/(θ(1 − φ))``), a ``nir.CubaLIF``
  whose synaptic current integrates without decay and whose membrane follows it, with
  threshold 1, and a recurrent node ``.reset`` (last step's spikes × ``−1/(1 − φ)``).
  Subtract reset, ``v_0 = φθ`` and per-channel θ and φ are then plain weights (on
  vectors the loop holds an identity node ``.reset.hold``: snnTorch rewrites two-node
  neuron <-> Affine loops into its own recurrent layer and fails on them);
- a LIF with hard reset and ``v_0 = 0`` is a ``nir.LIF`` (``τ = dt/(1 − decay)``,
  ``R = τ/dt``, so Euler gives ``v_t = decay·v_{t-1} + x_t``); per-channel θ goes into
  a ``.gain`` node as ``1/θ``;
- other neurons (hard reset with ``v_0 ≠ 0``, leaky subtract reset), grouped convs and
  ``dt ≠ 1e-4`` are refused with the reason; use ``compact``.
- Non-strict thresholds (our IF fires on ``>=``) are exported one float32 below, exact under
  NIR's ``>`` (snnTorch); SpikingJelly fires on ``>=``, so a potential equal to that float
  differs. Both peers' predictions on converted ResNets: ``tests/export/test_peer_nir.py``.
snnTorch's importer maps ``nir.Flatten(start_dim=0)`` to ``nn.Flatten(0, -1)``, which
merges a batch: run its import one image at a time, with ``snntorch.utils.reset(net)``
before each (its neurons keep their state). Tested snippets for both peers: docs/EXPORT.md.

Target ``compact``: one node per neuron layer, ``nir.LIF`` (``decay < 1``, parameters as
above) or ``nir.IF`` (``R = 1/dt``), per-neuron thresholds, followed by ``nir.Scale(θ)``
when the neuron emits ``o·θ``. What NIR has no field for is in the node metadata:
``reset = "subtract"`` (the node says ``v_reset = 0``), ``v_init`` (``φ·θ`` per neuron),
``strict``. A consumer that ignores the metadata resets to zero, starts at 0 and fires
less; neither peer imports it for IF networks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.methods.graph import folded_conv
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite

DEFAULT_DT = 1e-4
"""Time step (s) that the exported ODE parameters assume; snnTorch's NIR importer hard-codes
1e-4 and SpikingJelly's ``import_from_nir`` defaults to it."""

TARGETS = ("portable", "compact")
"""``portable``: node types and parameter patterns that SpikingJelly 2.0 and snnTorch 1.0
import as they ship (the default); ``compact``: one ``nir.IF``/``nir.LIF`` node per neuron
layer with our dynamics' extras in node metadata (see the module docstring)."""

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
    :func:`~spikebridge.methods.graph.folded_conv`, computed in float64)."""
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


def _block(b: _GraphBuilder, p: str, block: nn.Module, x: _Value) -> _Value:
    """A basic or bottleneck block; post-add sums into the last neuron, pre-add after it."""
    from spikebridge.models.resnet import BasicBlock, Bottleneck

    if not isinstance(block, (BasicBlock, Bottleneck)):
        raise _refuse(p, block, "a BasicBlock or Bottleneck")
    n = 3 if isinstance(block, Bottleneck) else 2
    if block.shortcut is None:
        identity = x
    elif isinstance(block.shortcut, nn.Sequential):
        identity = _sequential(b, f"{p}.shortcut", block.shortcut, x)
    else:
        raise _refuse(f"{p}.shortcut", block.shortcut, "nn.Sequential(conv, bn[, neuron])")
    y = x
    for k in range(1, n + 1):
        y = b.conv(f"{p}.conv{k}", getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), y)
        if k < n:
            y = b.site(f"{p}.act{k}", getattr(block, f"act{k}"), y)
    last, act = f"{p}.act{n}", getattr(block, f"act{n}")
    if block.structure == "post-add":
        return b.site(last, act, y + identity)
    return b.site(last, act, y) + identity


def _resnet(b: _GraphBuilder, model: nn.Module, x: _Value) -> _Value:
    x = b.conv("conv1", model.conv1, model.bn1, x)
    x = b.site("act1", model.act1, x)
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            x = _block(b, f"stages.{i}.{j}", block, x)
    x = b.pool("pool", model.pool, x)
    x = b.flatten("flatten", x)
    return b.linear("fc", model.fc, x)


def _timesteps(model: nn.Module) -> int:
    sites = [m for m in model.modules() if isinstance(m, SpikingSite)]
    if not sites:
        raise ModelError(
            "NIR export covers spiking models; this one has no spiking neuron "
            "(convert it or build it with neuron='lif'/'if')"
        )
    return int(sites[0].timesteps)


def export_nir(
    model: nn.Module,
    path: str | Path | None,
    input_shape: tuple[int, int, int],
    dt: float = DEFAULT_DT,
    target: str = "portable",
    normalization: Normalization | None = None,
) -> Any:
    """Export a spiking ResNet or ``nn.Sequential`` to a ``nir.NIRGraph`` (and write it).

    Args:
        model: a spiking :class:`~spikebridge.models.ResNet` (LIF or IF sites), an
            ``nn.Sequential`` of Conv2d(+BatchNorm2d) / SpikingSite / avg-pool / Flatten /
            Linear, or a ``torch.fx.GraphModule`` such as a converted user CNN
            (:mod:`spikebridge.export.nir_graph`). BatchNorm is folded with its running
            statistics.
        path: HDF5 file to write (atomically), or ``None`` to only build the graph.
        input_shape: one image ``(C, H, W)``; the batch and time dimensions are implicit.
        dt: time step the ODE parameters assume (stored in the graph metadata); the
            portable target keeps 1e-4 s, the step snnTorch's importer assumes.
        target: ``portable`` (SpikingJelly 2.0 and snnTorch 1.0 import it as shipped) or
            ``compact`` (one node per neuron layer, extras in metadata); see the module
            docstring.
        normalization: the dataset's per-channel ``(mean, std)``; the graph then starts
            with a ``normalize`` node and takes raw pixels in ``[0, 1]``. Without it the
            graph takes normalized images.

    Raises ModelError for anything the target cannot express (see the module docstring).
    """
    from spikebridge.models.resnet import ResNet

    if len(input_shape) != 3 or min(input_shape) < 1 or not dt > 0:
        raise ConfigError(f"export_nir needs input_shape (C, H, W) and dt > 0, got {input_shape}")
    if target not in TARGETS:
        raise ConfigError(f"NIR target {target!r} is unknown; expected one of {', '.join(TARGETS)}")
    if target == "portable" and dt != DEFAULT_DT:
        raise ConfigError(
            f"the portable NIR target keeps dt = {DEFAULT_DT:g} s, the step snnTorch's importer "
            "assumes; use target='compact' for another dt"
        )
    timesteps = _timesteps(model)
    b = _GraphBuilder(dt, target)
    x = b.input(tuple(int(s) for s in input_shape), normalization)
    if isinstance(model, ResNet):
        x = _resnet(b, model, x)
    elif isinstance(model, nn.Sequential):
        x = _sequential(b, "", model, x)
    elif isinstance(model, fx.GraphModule):  # a converted user CNN (SpikingGraph)
        from spikebridge.export.nir_graph import fx_graph

        x = fx_graph(b, model, x)
    else:
        raise _refuse(
            "model", model, "a spikebridge ResNet, an nn.Sequential or a torch.fx GraphModule"
        )
    b.output(x)
    graph = b.graph(_graph_metadata(dt, timesteps, target, normalization))
    if path is not None:
        _write_atomic(b.nir, graph, Path(path))
    return graph


def _graph_metadata(
    dt: float, timesteps: int, target: str, normalization: Normalization | None
) -> dict[str, Any]:
    """How to run the graph: dt, T, input (raw or normalized, constant each step), readout."""
    meta: dict[str, Any] = {
        "producer": "spikebridge",
        "target": target,
        "dt": float(dt),
        "timesteps": int(timesteps),
        "input_encoding": "direct: the analog image is a constant input at each of T steps",
        "readout": "mean over the T steps of the per-step output",
        "neuron_metadata": "form, reset (hard|subtract), strict (u>θ vs u>=θ), v_init, "
        "threshold, decay, dt",
    }
    if normalization is None:
        meta["input"] = "normalized images (the dataset's mean/std already applied)"
    else:
        meta["input"] = "raw pixels in [0, 1]; node 'normalize' applies (x - mean) / std"
        meta["input_mean"] = np.asarray(normalization[0], np.float64)
        meta["input_std"] = np.asarray(normalization[1], np.float64)
    return meta


def _write_atomic(nir_module: Any, graph: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        nir_module.write(tmp, graph)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def import_nir(path: str | Path) -> Any:
    """Read a NIR file back into a ``nir.NIRGraph`` (with its metadata)."""
    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"NIR file {str(path)!r} does not exist")
    try:
        return nir.read(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{str(path)!r} is not a readable NIR graph ({exc})") from exc
