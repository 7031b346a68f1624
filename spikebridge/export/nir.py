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
from pathlib import Path
from typing import Any

import numpy as np
from torch import fx, nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.export.nir_builder import (
    Normalization,
    _GraphBuilder,
    _nir,
    _refuse,
    _sequential,
    _Value,
)
from spikebridge.nn.temporal import SpikingSite

DEFAULT_DT = 1e-4
"""Time step (s) that the exported ODE parameters assume; snnTorch's NIR importer hard-codes
1e-4 and SpikingJelly's ``import_from_nir`` defaults to it."""

TARGETS = ("portable", "compact")
"""``portable``: node types and parameter patterns that SpikingJelly 2.0 and snnTorch 1.0
import as they ship (the default); ``compact``: one ``nir.IF``/``nir.LIF`` node per neuron
layer with our dynamics' extras in node metadata (see the module docstring)."""


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
