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
and the firing rate; :func:`plot_errors` draws the table.

This module also holds the small calibration helpers that :mod:`threshold_tuning` and
:mod:`convert` share (batching, pairing sites by name, stopping a forward at a site).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from spikebridge.errors import DataError, ModelError
from spikebridge.methods.graph import graph_sites
from spikebridge.nn.activations import QCFS, Clip
from spikebridge.nn.temporal import SpikingSite, unfold

ANN_SITE_TYPES = (nn.ReLU, Clip, QCFS)
"""Modules that are activation sites in an ANN (each becomes an IF neuron on conversion)."""

CalibrationData = torch.Tensor | Iterable[Any]
"""Normalized images ``[N, C, H, W]``, or an iterable of such batches (or of ``(images,
labels)`` pairs, as :class:`~spikebridge.data.DeviceLoader` yields)."""


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


# --------------------------------------------------------------------------- helpers


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a parameter-free module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def calibration_batches(
    data: CalibrationData, batch_size: int = 64, device: torch.device | None = None
) -> list[torch.Tensor]:
    """Normalize calibration data into a list of image batches ``[b, C, H, W]`` on ``device``.

    A tensor is split into chunks of ``batch_size`` (bounded memory); an iterable is read
    once (so a generator works) and ``(images, labels)`` items keep only the images.
    """
    if isinstance(data, torch.Tensor):
        chunks: list[Any] = list(data.split(batch_size)) if data.dim() == 4 else [data]
    else:
        chunks = [item[0] if isinstance(item, (tuple, list)) else item for item in data]
    if not chunks:
        raise DataError("the calibration data is empty; expected at least one image batch")
    for chunk in chunks:
        if not isinstance(chunk, torch.Tensor) or chunk.dim() != 4:
            shape = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk)
            raise DataError(f"calibration images must be [N, C, H, W] tensors, got {shape}")
    return [c.to(device=device, dtype=torch.float32) if device else c.float() for c in chunks]


def ann_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ANN activation site, in a topological order.

    For the project's ResNets registration order is a topological order (a site never
    depends on a site registered after it), which layer-by-layer tuning relies on; for a
    traced user model (``torch.fx.GraphModule``, :mod:`~spikebridge.methods.graph`) it is
    the order of the calls in its graph.
    """
    if isinstance(model, fx.GraphModule):
        return graph_sites(model, ANN_SITE_TYPES)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ANN_SITE_TYPES)]


def snn_sites(model: nn.Module) -> list[tuple[str, SpikingSite]]:
    """``(name, site)`` of every :class:`SpikingSite`, in topological order (as ann_sites)."""
    if isinstance(model, fx.GraphModule):
        return graph_sites(model, (SpikingSite,))  # type: ignore[return-value]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingSite)]


def paired_sites(ann: nn.Module, snn: nn.Module) -> list[tuple[str, nn.Module, SpikingSite]]:
    """``(name, ann_site, snn_site)`` for each site; the names must match one to one."""
    a, s = ann_sites(ann), snn_sites(snn)
    if [n for n, _ in a] != [n for n, _ in s]:
        missing = sorted({n for n, _ in a} ^ {n for n, _ in s}) or ["(order differs)"]
        raise ModelError(
            f"the ANN and the SNN have different activation sites (first difference: "
            f"{missing[0]}); expected the SNN to be converted from this ANN"
        )
    return [(n, am, sm) for (n, am), (_, sm) in zip(a, s, strict=True)]


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode under ``no_grad`` and restore every module's flag afterwards."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class _StopForwardError(Exception):
    """Raised by a capture hook to end a forward pass early (the rest is not needed)."""


def capture(
    model: nn.Module, site: nn.Module, images: torch.Tensor, where: str = "input"
) -> torch.Tensor:
    """Run ``model(images)`` only up to ``site`` and return the site's input or output.

    For a spiking model the site input is the folded current ``[T*B, ...]``.
    """
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        store["x"] = args[0]
        raise _StopForwardError

    def post_hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
        store["x"] = out
        raise _StopForwardError

    if where == "input":
        handle = site.register_forward_pre_hook(pre_hook)
    else:
        handle = site.register_forward_hook(post_hook)
    try:
        model(images)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    if "x" not in store:
        raise ModelError("a calibration forward pass never reached the activation site")
    return store["x"]


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


def markdown_table(row_type: type, rows: Sequence[Any]) -> str:
    """A markdown table of dataclass ``rows`` (columns = the fields of ``row_type``)."""
    names = [f.name for f in fields(row_type)]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [v if isinstance(v, str) else f"{v:.4g}" for v in asdict(row).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# --------------------------------------------------------------------------- plot


def plot_errors(table: ErrorTable, path_png: str | Path) -> Path:
    """Plot the error terms per site (top) and input variance / firing rate (bottom) to PNG.

    Uses matplotlib's Agg canvas directly, so the global backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    idx = list(range(len(table.rows)))
    fig = Figure(figsize=(max(6.0, 0.18 * len(idx) + 3), 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for key, label in [
        ("quantization", "quantization |e_q|"),
        ("deviation", "deviation |e_d|"),
        ("propagated", "propagated |clip(z̄)−a|"),
        ("total", "total |r−a|"),
    ]:
        top.plot(idx, [getattr(r, key) for r in table.rows], marker="o", ms=3, label=label)
    top.set_ylabel("mean absolute error")
    top.set_title(f"Conversion error per activation site (T = {table.timesteps})")
    top.legend(fontsize=8)
    bottom.plot(idx, [r.input_variance for r in table.rows], color="tab:purple", marker=".")
    bottom.set_ylabel("input variance over t", color="tab:purple")
    bottom.set_xlabel("activation site (input → output)")
    rate_ax = bottom.twinx()
    rate_ax.plot(idx, [r.firing_rate for r in table.rows], color="tab:gray", ls="--")
    rate_ax.set_ylabel("firing rate (spikes/neuron/step)", color="tab:gray")
    fig.tight_layout()
    path = Path(path_png)
    fig.savefig(path, dpi=120)
    return path
