"""NIR form of the conversion's rate-gated max pooling (``GatedMaxPool2d``), exact on spikes.

NIR 1.0 has no max-pooling node (its pools are ``AvgPool2d`` and ``SumPool2d``), and
neither peer maps one. The gate of :class:`~spikebridge.conversion.fx_time.GatedMaxPool2d`
(described in the :mod:`spikebridge.conversion.fx_graph` docstring) is nonetheless a logical
function of spike counts, which threshold neurons compute exactly. When the pool's input
is a spiking site's output ``x_t = θ_c·s_t`` (``s ∈ {0, 1}``, one θ per channel), per
window and step the gate passes ``θ_c·s_{j*,t}`` of the position ``j*`` whose key
``C_j(t−1) + 10⁻³·s_{j,t}`` is largest (``C_j(t)``: spikes of position ``j`` up to step
``t``). So the output spikes iff some position ``j`` spikes now and no position has more
earlier spikes:

    out_t = OR_j [ s_{j,t} AND for all k ≠ j: C_j(t−1) >= C_k(t−1) ]

and, given ``s_{j,t} = 1``, ``C_j(t−1) >= C_k(t−1)`` iff ``D_jk + s_{k,t} >= 1`` with
``D_jk = C_j(t) − C_k(t)`` an integer. Four neuron layers compute it in the same step
(nodes named after the pool; every threshold sits half a unit from the integers it
separates, so float rounding of ``1/θ`` cannot flip a decision):

- ``.diff`` (conv with the pool's kernel, stride, padding, dilation) → ``.ahead``: one
  CubaLIF integrator per ordered pair ``(j, k)`` of window positions, fed ``s_j − s_k``,
  firing ``A_jk = 1[D_jk >= 1]`` (no reset loop: it keeps the count difference);
- ``.order`` (1x1 conv ``2·A_jk − 2·A_kj``) + ``.later`` (conv picking ``s_k``) →
  ``.tie``: ``E_jk = 1[2A_jk − 2A_kj + s_k >= 1]``, i.e. ``D_jk + s_k >= 1``;
- ``.all`` (1x1 conv summing ``E_jk`` over ``k``) + ``.now`` (conv picking ``s_j``) →
  ``.winner``: ``M_j = 1[s_j + Σ_k E_jk >= K]`` (``K`` positions per window);
- ``.any`` (1x1 conv summing ``M_j``) → the pool's node: ``1[Σ_j M_j >= 1]``, then
  ``.scale`` multiplies by ``θ_c`` when the site emits ``o·θ``.

The stateless neurons are CubaLIFs with ``τ_syn = τ_mem = dt`` (their potential is this
step's input), the integrators the ``τ_syn = 2^100·dt`` CubaLIF of the portable IF form;
all thresholds are positive (snnTorch's reset-to-zero would clear the current of a neuron
whose threshold is below 0). Cost: ``K(K−1)`` neurons per window and channel in two
layers and dense 1x1 convolutions of ``(C·K(K−1))²`` weights (SpikingJelly refuses
grouped ones): a 2x2 pool over 16 channels adds 79 k weights, over 64 channels 1.3 M, a
3x3 pool over 64 channels 30 M (:func:`gate_weights`); :data:`MAX_GATE_WEIGHTS` bounds it.

Only the gate on spike trains has this form: a max pooling fed by anything else (a conv's
analog output, as in ``relu(max_pool(conv(x)))``) selects analog values, which NIR's
linear nodes and threshold neurons cannot, and is refused (max pooling and ReLU commute:
``max_pool(relu(conv(x)))`` is the same ANN and exports).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikebridge.errors import ModelError
from spikebridge.export.nir_builder import (
    INTEGRATOR_GAIN,
    _GraphBuilder,
    _pair,
    _per_channel,
    _Value,
)

MAX_GATE_WEIGHTS = 50_000_000
"""Largest number of weights one exported gate may add (200 MB of float32)."""


def _window(pool: nn.Module, h: int, w: int) -> dict[str, tuple[int, int]]:
    """Kernel, stride, padding and dilation of a ``MaxPool2d`` / ``AdaptiveMaxPool2d``."""
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        oh, ow = _pair(pool.output_size, (h, w))
        if h % oh or w % ow:
            raise ModelError(f"adaptive max pooling of {h}x{w} to {oh}x{ow} has uneven windows")
        k = (h // oh, w // ow)
        return {"kernel": k, "stride": k, "padding": (0, 0), "dilation": (1, 1)}
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode:
        raise ModelError(f"cannot export {pool} to NIR (max pooling with ceil_mode=True)")
    kernel = _pair(pool.kernel_size)
    return {
        "kernel": kernel,
        "stride": _pair(pool.stride or pool.kernel_size),
        "padding": _pair(pool.padding),
        "dilation": _pair(pool.dilation),
    }


def gate_weights(channels: int, positions: int) -> int:
    """Weights the exported gate of a pool adds: ``.diff``, ``.later`` (``C·P·C·K`` each),
    ``.order`` (``(C·P)²``), ``.all`` (``C·K·C·P``), ``.now`` (``(C·K)²``) and ``.any``
    (``C·C·K``), with ``K`` positions per window and ``P = K(K − 1)`` ordered pairs."""
    c, k = channels, positions
    p = k * (k - 1)
    return 2 * c * p * c * k + (c * p) ** 2 + c * k * c * p + (c * k) ** 2 + c * c * k


def _pick(channels: int, window: tuple[int, int], rows: list[tuple[int, ...]]) -> np.ndarray:
    """Conv weight ``[C·R, C, kh, kw]``: output row ``r`` of channel ``c`` adds
    ``sign·x[c, position]`` for each ``(position, sign)`` pair listed in ``rows[r]``."""
    kh, kw = window
    weight = np.zeros((channels * len(rows), channels, kh, kw), np.float64)
    for c in range(channels):
        for r, spec in enumerate(rows):
            for pos, sign in zip(spec[::2], spec[1::2], strict=True):
                weight[c * len(rows) + r, c, pos // kw, pos % kw] += sign
    return weight


def _dense(
    channels: int, rows: int, cols: int, entries: dict[tuple[int, int], float]
) -> np.ndarray:
    """A block-diagonal 1x1 conv weight ``[C·rows, C·cols, 1, 1]`` (one block per channel)."""
    block = np.zeros((rows, cols), np.float64)
    for (r, c), value in entries.items():
        block[r, c] = value
    return np.kron(np.eye(channels), block)[:, :, None, None]


def gated_max_pool(
    b: _GraphBuilder, name: str, pool: nn.Module, x: _Value, theta: torch.Tensor | None
) -> _Value:
    """Add the gate's nodes to graph builder ``b`` for a pool on ``x`` (module docstring).

    ``theta``: the per-channel (or scalar) spike value of the site feeding the pool, or
    ``None`` when it emits plain 0/1 spikes. Returns the pooled value ``[C, oh, ow]``.
    """
    if len(x.shape) != 3:
        raise ModelError(f"max pooling {name!r} needs [C, H, W] input, gets {x.shape}")
    c, h, w = x.shape
    geo = _window(pool, h, w)
    k = geo["kernel"][0] * geo["kernel"][1]
    pairs = [(j, i) for j in range(k) for i in range(k) if i != j]
    p = len(pairs)
    cost = gate_weights(c, k)
    if cost > MAX_GATE_WEIGHTS:
        raise ModelError(
            f"max pooling {name!r} ({c} channels, {k} positions per window) would need "
            f"{cost:,} NIR weights, more than {MAX_GATE_WEIGHTS:,}; NIR has no max-pooling "
            "node (use average pooling, or a smaller window)"
        )
    theta_c = np.ones(c) if theta is None else _per_channel(theta, c)

    def conv(suffix: str, weight: np.ndarray, src: _Value, spatial: bool) -> _Value:
        if spatial:  # reads the pool's input: the window's geometry, spikes θ_c·s to s
            weight = weight / theta_c[None, :, None, None]
        node = b.nir.Conv2d(
            input_shape=src.shape[1:], weight=weight.astype(np.float32),
            stride=geo["stride"] if spatial else (1, 1),
            padding=geo["padding"] if spatial else (0, 0),
            dilation=geo["dilation"] if spatial else (1, 1), groups=1,
            bias=np.zeros(weight.shape[0], np.float32),
        )  # fmt: skip
        return b.add(f"{name}.{suffix}", node, src, tuple(node.output_type["output"]))

    win = geo["kernel"]
    diff = conv("diff", _pick(c, win, [(j, 1.0, i, -1.0) for j, i in pairs]), x, True)
    ahead = _neuron(b, f"{name}.ahead", diff, integrate=True)
    index = {pair: r for r, pair in enumerate(pairs)}
    order = {(r, r): 2.0 for r in range(p)} | {
        (r, index[(i, j)]): -2.0 for (j, i), r in index.items()
    }
    tie_in = conv("order", _dense(c, p, p, order), ahead, False)
    later = conv("later", _pick(c, win, [(i, 1.0) for _, i in pairs]), x, True)
    tie = _neuron(b, f"{name}.tie", tie_in + later)
    every = {(j, r): 1.0 for r, (j, _) in enumerate(pairs)}
    all_in = conv("all", _dense(c, k, p, every), tie, False)
    now = conv("now", _pick(c, win, [(j, 1.0) for j in range(k)]), x, True)
    winner = _neuron(b, f"{name}.winner", all_in + now, level=k - 0.5)
    any_in = conv("any", _dense(c, 1, k, {(0, j): 1.0 for j in range(k)}), winner, False)
    out = _neuron(b, name, any_in)
    return out if theta is None else b.channel_scale(f"{name}.scale", theta_c, out)


def _neuron(
    b: _GraphBuilder, name: str, x: _Value, integrate: bool = False, level: float = 0.5
) -> _Value:
    """A CubaLIF whose potential is this step's input (or, ``integrate``, the running sum of
    all inputs so far); it fires when that exceeds ``level``."""
    gain = INTEGRATOR_GAIN if integrate else 1.0
    shape = x.shape
    node = b.nir.CubaLIF(
        tau_syn=np.full(shape, gain * b.dt), tau_mem=np.full(shape, b.dt), r=np.ones(shape),
        v_leak=np.zeros(shape), v_threshold=np.full(shape, level, np.float32),
        v_reset=np.zeros(shape), w_in=gain,
        metadata={"form": "max-pool-gate", "integrate": integrate},
    )  # fmt: skip
    return b.add(name, node, x, shape)
