"""Export spiking models to the Neuromorphic Intermediate Representation (NIR).

``export_nir`` writes a :class:`ResNet` (trained LIF or converted IF) or an
``nn.Sequential`` chain as a ``nir.NIRGraph``. Needs the optional ``nir`` package
(``pip install 'spikebridge[nir]'``); nothing else (no snnTorch, no nirtorch).

What maps to what
- ``Conv2d`` + following ``BatchNorm2d`` -> ``nir.Conv2d`` with the BN folded in (eval-mode
  running statistics: ``W·γ/σ``, ``β + (b − μ)·γ/σ``, ``σ = sqrt(var + eps)``).
- ``SpikingSite`` -> ``nir.LIF`` (``decay < 1``) or ``nir.IF`` (``decay = 1``), followed by
  ``nir.Scale(θ)`` when the neuron emits ``o·θ`` (converted IF, METHODS 2.1).
- ``AdaptiveAvgPool2d`` / ``AvgPool2d`` -> ``nir.AvgPool2d``; ``Flatten`` -> ``nir.Flatten``
  (unbatched dims, ``start_dim=0``); ``Linear`` -> ``nir.Affine`` (or ``nir.Linear``).
- Residual additions are graph edges: a node with several incoming edges sums them. In a
  post-add block the neuron receives the branch and the shortcut; in a pre-add block every
  consumer of the block output receives one edge per summand.
- Anything else (ReLU/Clip/QCFS activations, max pooling, a BatchNorm not after a conv,
  non-zero padding modes, ...) is refused with a ModelError.

Our neuron vs NIR's (differences and how the export handles them)
- Ours is discrete-time: ``h_t = decay·v_{t-1} + x_t``; ``o_t = 1[h_t > θ]`` (or ``>=``);
  ``v_t = h_t·(1−o_t)`` (hard) or ``h_t − θ·o_t`` (subtract); ``v_0 = φ·θ``.
- NIR is continuous-time: LIF ``τ dv/dt = (v_leak − v) + R·I``, IF ``dv/dt = R·I``; spike
  when ``v > v_threshold``, then ``v ← v_reset``. Forward-Euler with step ``dt`` gives
  ``v_t = (1 − dt/τ)·v_{t-1} + (dt/τ)·R·I_t``. We choose ``τ = dt/(1 − decay)``,
  ``R = τ/dt = 1/(1 − decay)``, ``v_leak = 0`` (LIF) and ``R = 1/dt`` (IF), so Euler with
  the graph's ``dt`` reproduces ``v_t = decay·v_{t-1} + x_t`` exactly. ``dt`` is stored in
  the graph metadata (default 1e-4 s, the value snnTorch's NIR bridge assumes). A consumer
  that integrates the ODE exactly gets ``exp(−(1 − decay))`` instead of ``decay`` (0.47
  instead of 0.25 for IDSNN's LIF).
- Hard reset is ``v_reset = 0``: exact. **Reset by subtraction has no NIR field**: the node
  says ``v_reset = 0`` and its metadata ``reset = "subtract"``; a consumer that follows the
  NIR spec alone resets to zero and fires less.
- **Initial potential** ``φ·θ``: no NIR field; stored as metadata ``v_init`` (per neuron).
- **Non-strict threshold** (IF fires on ``u >= θ``): NIR fires on ``v > θ``; metadata
  ``strict = False``. The two differ only when the potential equals θ exactly.
- ``o·θ`` outputs: exact, via ``nir.Scale``. BN: exact (folded). Per-channel θ and φ are
  broadcast to one value per neuron.
- Time: the graph has no synaptic delay (static nodes act within the step, as ours). Its
  input is the analog image presented as a constant current at each of the ``T`` steps
  (direct encoding); its output is the per-step logits, which our model averages over
  ``T`` (graph metadata ``timesteps``, ``input_encoding``, ``readout``).

Consumers: ``tests/export/peer_nir_check.py`` reads our files with snnTorch 1.0.0. LIF
networks (chains and residual graphs) reproduce our spike counts exactly; its ``nir.IF``
import (asserts ``R == 1``, adds a 0.9 leak), its ``Flatten`` on batched tensors and its
missing ``nir.Scale`` are snnTorch limits, and with our metadata applied (``v_init``,
subtract reset, non-strict threshold) IF networks match exactly too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite

DEFAULT_DT = 1e-4
"""Time step (s) that the exported ODE parameters assume; snnTorch's NIR bridge uses 1e-4."""


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


def _fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with an eval-mode BatchNorm folded in (computed in float64).

    ``W' = W·γ/σ``, ``b' = β + (b − μ)·γ/σ`` with ``σ = sqrt(running_var + eps)``.
    """
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    if isinstance(bn, nn.BatchNorm2d):
        if bn.running_mean is None or bn.running_var is None:
            raise ModelError("BatchNorm without running statistics cannot be folded for export")
        gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(b)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(b)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = beta + (b - bn.running_mean.double()) * scale
    return _array(w), _array(b)


def _refuse(name: str, module: nn.Module, expected: str) -> ModelError:
    return ModelError(
        f"cannot export module {name!r} ({type(module).__name__}) to NIR; expected {expected}"
    )


class _GraphBuilder:
    """Collects NIR nodes and edges while the model is walked from input to output."""

    def __init__(self, dt: float) -> None:
        self.nir, self.dt = _nir(), float(dt)
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, x: _Value | None, shape: tuple[int, ...]) -> _Value:
        if name in self.nodes:
            raise ModelError(f"two NIR nodes would share the name {name!r}")
        self.nodes[name] = node
        self.edges.extend((src, name) for src in (x.sources if x else ()))
        return _Value((name,), tuple(int(s) for s in shape))

    def input(self, shape: tuple[int, ...]) -> _Value:
        return self.add("input", self.nir.Input(input_type=np.array(shape)), None, shape)

    def output(self, x: _Value) -> None:
        self.add("output", self.nir.Output(output_type=np.array(x.shape)), x, x.shape)

    def conv(self, name: str, conv: nn.Module, bn: nn.Module | None, x: _Value) -> _Value:
        """Conv2d (+ folded BN) on a ``[C, H, W]`` value."""
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            raise _refuse(name, conv, "a zero-padded nn.Conv2d")
        if bn is not None and not isinstance(bn, (nn.BatchNorm2d, nn.Identity)):
            raise _refuse(f"{name} (norm)", bn, "nn.BatchNorm2d to fold into the conv")
        if len(x.shape) != 3 or x.shape[0] != conv.in_channels:
            raise ModelError(f"conv {name!r} expects {conv.in_channels} channels, gets {x.shape}")
        weight, bias = _fold_bn(conv, bn)
        node = self.nir.Conv2d(
            input_shape=x.shape[1:], weight=weight, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=bias,
            metadata={"folded_batchnorm": isinstance(bn, nn.BatchNorm2d)},
        )  # fmt: skip
        return self.add(name, node, x, tuple(node.output_type["output"]))

    def site(self, name: str, site: nn.Module, x: _Value) -> _Value:
        """A neuron node (sums its inputs), plus a Scale(θ) node if it emits ``o·θ``."""
        if not isinstance(site, SpikingSite):
            raise _refuse(name, site, "a spiking neuron site (export covers spiking models)")
        neuron = site.neuron
        out = self.add(name, self._neuron_node(name, neuron, x.shape), x, x.shape)
        if not neuron.emit_threshold:
            return out
        scale = self.nir.Scale(scale=_per_neuron(neuron.threshold, x.shape))
        return self.add(f"{name}.scale", scale, out, x.shape)

    def _neuron_node(self, name: str, neuron: SpikingNeuron, shape: tuple[int, ...]) -> Any:
        """``nir.IF``/``nir.LIF`` whose forward-Euler step ``dt`` equals our charge equation."""
        theta = _per_neuron(neuron.threshold, shape)
        zeros, decay = np.zeros(shape, np.float32), neuron.decay
        meta = {
            "reset": neuron.reset, "strict": bool(neuron.strict), "decay": float(decay),
            "v_init": _per_neuron(neuron.phi * neuron.threshold, shape), "dt": self.dt,
            "emit_threshold": bool(neuron.emit_threshold),
        }  # fmt: skip
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
) -> Any:
    """Export a spiking ResNet or ``nn.Sequential`` to a ``nir.NIRGraph`` (and write it).

    Args:
        model: a spiking :class:`~spikebridge.models.ResNet` (LIF or IF sites) or an
            ``nn.Sequential`` of Conv2d(+BatchNorm2d) / SpikingSite / avg-pool / Flatten /
            Linear. BatchNorm is folded with its running statistics.
        path: HDF5 file to write (atomically), or ``None`` to only build the graph.
        input_shape: one image ``(C, H, W)``; the batch and time dimensions are implicit.
        dt: time step the ODE parameters assume (stored in the graph metadata).

    Raises ModelError for anything NIR cannot express (see the module docstring).
    """
    from spikebridge.models.resnet import ResNet

    if len(input_shape) != 3 or min(input_shape) < 1 or dt <= 0:
        raise ConfigError(f"export_nir needs input_shape (C, H, W) and dt > 0, got {input_shape}")
    timesteps = _timesteps(model)
    b = _GraphBuilder(dt)
    x = b.input(tuple(int(s) for s in input_shape))
    if isinstance(model, ResNet):
        x = _resnet(b, model, x)
    elif isinstance(model, nn.Sequential):
        x = _sequential(b, "", model, x)
    else:
        raise _refuse("model", model, "a spikebridge ResNet or an nn.Sequential")
    b.output(x)
    graph = b.graph(_graph_metadata(dt, timesteps))
    if path is not None:
        _write_atomic(b.nir, graph, Path(path))
    return graph


def _graph_metadata(dt: float, timesteps: int) -> dict[str, Any]:
    return {
        "producer": "spikebridge",
        "dt": float(dt),
        "timesteps": int(timesteps),
        "input_encoding": "direct: the analog image is a constant input at each of T steps",
        "readout": "mean over the T steps of the per-step output",
        "neuron_metadata": "reset (hard|subtract), strict (u>θ vs u>=θ), v_init, decay, dt",
    }


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
