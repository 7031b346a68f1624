"""Per-layer conversion error of an ANN -> SNN pair (METHODS 2.3, our design).

The TTRBR abstract splits the conversion error into a *quantization* error (coding a value
with T spikes) and a *deviation* error (input currents that are not constant over time);
the decomposition below is our design built on that statement. At every activation site
``l`` of the converted network, on the same images:

- ``z̄_l``: the SNN site's time-averaged input current, ``mean_t x_t`` ``[B, C, H, W]``;
- ``r_l``: its actual output rate, ``mean_t(o_t·θ)`` (spike count · θ / T);
- ``a_l``: the ANN's activation at the same site (sites are paired by module name);
- quantization ``e_q = Q_T(z̄) − clip(z̄, 0, θ)`` with
  ``Q_T(x) = θ/T · clip(floor(T·x/θ + φ), 0, T)`` (METHODS 2.1, :func:`quantized_rate`);
- deviation ``e_d = r − Q_T(z̄)`` (zero when the current is constant over time);
- propagated ``clip(z̄, 0, θ) − a`` (what earlier layers passed on);
- so ``e_q + e_d + propagated = r − a`` elementwise (:func:`error_terms`).

:func:`decompose_errors` reports their mean absolute values per site, with the temporal
variance of the input current (the abstract names it as the cause of the deviation error)
and the firing rate; :func:`spikebridge.analysis.conversion_errors.plot_errors` draws the
table.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.sites import (
    CalibrationData,
    calibration_batches,
    eval_mode,
    markdown_table,
    model_device,
    paired_sites,
)
from spikebridge.nn.temporal import SpikingSite, unfold

# --------------------------------------------------------------------------- formulas


def _channel_view(p: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-channel ``[C]`` parameter shaped to broadcast over ``x[B, C, ...]``."""
    p = torch.as_tensor(p, dtype=x.dtype, device=x.device)
    return p if p.dim() == 0 else p.view(1, -1, *([1] * (x.dim() - 2)))


def quantized_rate(
    x: torch.Tensor, theta: torch.Tensor | float, T: int, phi: torch.Tensor | float = 0.5
) -> torch.Tensor:
    """Rate of an IF neuron (subtract reset, ``v_0 = φθ``) under a constant input (METHODS 2.1).

    ``Q_T(x) = θ/T · clip(floor(T·x/θ + φ), 0, T)``: the quantized, clipped ReLU.
    ``x`` is ``[B, C, ...]`` (or any shape when θ, φ are scalars); ``theta`` and ``phi``
    are scalars or per-channel ``[C]``. Returns a tensor shaped like ``x``.
    """
    theta, phi = _channel_view(theta, x), _channel_view(phi, x)
    return theta / T * torch.clamp(torch.floor(T * x / theta + phi), 0, T)


def error_terms(
    z_mean: torch.Tensor,
    rate: torch.Tensor,
    ann_act: torch.Tensor,
    theta: torch.Tensor | float,
    T: int,
    phi: torch.Tensor | float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elementwise ``(e_q, e_d, propagated)`` of one site (METHODS 2.3, our design).

    All inputs are ``[B, C, ...]``: ``z_mean`` = time-averaged input current, ``rate`` =
    ``mean_t(o_t·θ)``, ``ann_act`` = the ANN's activation. Their sum is ``rate − ann_act``.
    """
    q = quantized_rate(z_mean, theta, T, phi)
    clipped = torch.minimum(torch.relu(z_mean), _channel_view(theta, z_mean))
    return q - clipped, rate - q, clipped - ann_act


# --------------------------------------------------------------------------- the table


@dataclass
class LayerErrors:
    """Mean conversion errors of one activation site (see the module docstring)."""

    site: str
    theta: float  # mean threshold θ over channels
    quantization: float  # mean |e_q|
    deviation: float  # mean |e_d|
    propagated: float  # mean |clip(z̄, 0, θ) − a|
    total: float  # mean |r − a|
    mse: float  # mean (r − a)², the loss threshold tuning minimizes
    input_variance: float  # mean over neurons of Var_t(x_t)
    firing_rate: float  # spikes per neuron per time-step


@dataclass
class ErrorTable:
    """Per-site :class:`LayerErrors` of one ANN/SNN pair at ``timesteps`` steps."""

    rows: list[LayerErrors]
    timesteps: int

    def to_markdown(self) -> str:
        """A markdown table, one line per site, numbers to 4 significant digits."""
        return markdown_table(LayerErrors, self.rows)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (header = the :class:`LayerErrors` field names)."""
        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(LayerErrors)])
            writer.writeheader()
            writer.writerows(asdict(r) for r in self.rows)
        return path


class _SiteAccumulator:
    """Running sums of one site's error statistics over calibration chunks."""

    ERROR_KEYS = ("quantization", "deviation", "propagated", "total", "mse")

    def __init__(self) -> None:
        self.sums = dict.fromkeys((*self.ERROR_KEYS, "input_variance"), 0.0)
        self.neurons = 0
        self.spikes = 0.0
        self.steps = 0

    def add(self, site: SpikingSite, current: torch.Tensor, out: torch.Tensor, a: torch.Tensor):  # type: ignore[no-untyped-def]
        T, neuron = site.timesteps, site.neuron
        z, o = unfold(current, T), unfold(out, T)
        z_mean, rate = z.mean(0), o.mean(0)
        e_q, e_d, prop = error_terms(z_mean, rate, a, neuron.threshold, T, neuron.phi)
        diff = rate - a
        values = (e_q.abs(), e_d.abs(), prop.abs(), diff.abs(), diff.square())
        for key, v in zip(self.ERROR_KEYS, values, strict=True):
            self.sums[key] += v.sum().item()
        self.sums["input_variance"] += z.var(0, unbiased=False).sum().item()
        self.neurons += z_mean.numel()
        self.spikes += o.ne(0).sum().item()
        self.steps += o.numel()

    def row(self, name: str, theta: torch.Tensor) -> LayerErrors:
        means = {k: v / max(self.neurons, 1) for k, v in self.sums.items()}
        rate = self.spikes / max(self.steps, 1)
        return LayerErrors(name, theta.float().mean().item(), firing_rate=rate, **means)


def _ann_activations(ann: nn.Module, names: dict[nn.Module, str], x: torch.Tensor):  # type: ignore[no-untyped-def]
    """One ANN pass; returns ``{site name: activation}`` for every site."""
    acts: dict[str, torch.Tensor] = {}

    def hook(m: nn.Module, _args: Any, out: torch.Tensor) -> None:
        acts[names[m]] = out

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        ann(x)
    finally:
        for h in handles:
            h.remove()
    return acts


def decompose_errors(
    ann: nn.Module,
    snn: nn.Module,
    images: CalibrationData,
    timesteps: int | None = None,
    batch_size: int = 32,
) -> ErrorTable:
    """Measure the per-site conversion error terms of ``snn`` against ``ann`` (METHODS 2.3).

    ``images``: normalized ``[N, C, H, W]`` (chunked by ``batch_size``) or batches.
    ``timesteps``: simulate this many steps (default: the SNN's own T; restored after).
    Memory holds one chunk's ANN activations; statistics are reduced in forward hooks.
    Neither model is changed.
    """
    pairs = paired_sites(ann, snn)
    batches = calibration_batches(images, batch_size, model_device(snn))
    old_T = snn.timesteps  # type: ignore[union-attr]
    if timesteps is not None:
        snn.set_timesteps(timesteps)  # type: ignore[operator]
    accs = {name: _SiteAccumulator() for name, _, _ in pairs}
    ann_names = {am: name for name, am, _ in pairs}
    snn_names = {sm: name for name, _, sm in pairs}
    try:
        with eval_mode(ann, snn):
            for x in batches:
                acts = _ann_activations(ann, ann_names, x.to(model_device(ann)))
                _run_snn_chunk(snn, snn_names, accs, acts, x)
    finally:
        snn.set_timesteps(old_T)  # type: ignore[operator]
    rows = [accs[n].row(n, sm.neuron.threshold) for n, _, sm in pairs]
    return ErrorTable(rows, timesteps or old_T)


def _run_snn_chunk(  # type: ignore[no-untyped-def]
    snn: nn.Module, names: dict[nn.Module, str], accs, acts: dict[str, torch.Tensor], x
) -> None:
    """One SNN pass whose site hooks add each site's statistics, consuming ``acts``."""

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        name = names[m]
        accs[name].add(m, args[0], out, acts.pop(name).to(out.device))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        snn(x)
    finally:
        for h in handles:
            h.remove()
