"""Activation sites, calibration batches and site statistics: what every conversion method
and every tuning stage shares (METHODS 2.1-2.2, 2.6).

- sites: an ANN's activation sites (``nn.ReLU``, ``Clip``, ``QCFS``; each becomes an IF
  neuron) and a converted network's :class:`~spikebridge.nn.SpikingSite`, listed in a
  topological order and paired by module name (:func:`paired_sites`);
- calibration data: normalized training images as a list of batches on the model's device
  (:func:`calibration_batches`), a forward stopped at a site (:func:`capture`);
- statistics: per-site (or per-channel) maximum and percentile of the positive
  pre-activations (the IF neuron integrates the pre-activation), from forward pre-hooks on
  the ANN's sites; percentiles use a log-spaced histogram (4096 bins over six decades below
  the maximum, ~0.3 % relative resolution), so memory stays bounded for any calibration-set
  size. On clip/qcfs sites the statistics are capped at ``λ`` (the ANN never outputs more).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import fx, nn

from spikebridge.conversion.fx_graph import graph_sites
from spikebridge.errors import ConfigError, DataError, ModelError
from spikebridge.nn.activations import QCFS, Clip
from spikebridge.nn.temporal import SpikingSite

ANN_SITE_TYPES = (nn.ReLU, Clip, QCFS)
"""Modules that are activation sites in an ANN (each becomes an IF neuron on conversion)."""

CalibrationData = torch.Tensor | Iterable[Any]
"""Normalized images ``[N, C, H, W]``, or an iterable of such batches (or of ``(images,
labels)`` pairs, as :class:`~spikebridge.data.DeviceLoader` yields)."""

DEFAULT_PERCENTILE = 99.99  # robust-norm percentile (robust; ReLU sites under ttrbr)
HIST_BINS = 4096  # log-spaced histogram bins for percentiles
HIST_DECADES = 6  # the histogram spans [max·1e-6, max]
FALLBACK_THRESHOLD = 1.0  # θ for a site (channel) that never sees a positive input


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
    traced user model (``torch.fx.GraphModule``, :mod:`~spikebridge.conversion.fx_graph`) it is
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


def markdown_table(row_type: type, rows: Sequence[Any]) -> str:
    """A markdown table of dataclass ``rows`` (columns = the fields of ``row_type``)."""
    names = [f.name for f in fields(row_type)]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [v if isinstance(v, str) else f"{v:.4g}" for v in asdict(row).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- statistics


class _SiteStatistic:
    """Running max and log-spaced histogram of one site's positive pre-activations."""

    def __init__(self, channelwise: bool, cap: float | None) -> None:
        self.channelwise, self.cap = channelwise, cap
        self.max: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, ...]`` -> ``[C, M]`` (channel-wise) or ``[1, M]``, capped at λ."""
        x = x.detach().float()
        if self.cap is not None:
            x = x.clamp(max=self.cap)
        return x.transpose(0, 1).reshape(x.shape[1], -1) if self.channelwise else x.reshape(1, -1)

    def update_max(self, x: torch.Tensor) -> None:
        m = self._rows(x).amax(1)
        self.max = m if self.max is None else torch.maximum(self.max, m)

    def update_hist(self, x: torch.Tensor) -> None:
        assert self.max is not None  # the max pass runs first
        v = self._rows(x)
        hi = self.max.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        pos = (v / hi).clamp(10.0**-HIST_DECADES, 1.0).log10() / HIST_DECADES + 1.0  # [0, 1]
        idx = (pos * HIST_BINS).floor().long().clamp_(0, HIST_BINS - 1)
        idx += torch.arange(v.shape[0], device=v.device)[:, None] * HIST_BINS
        counts = torch.bincount(idx[v > 0], minlength=v.shape[0] * HIST_BINS)
        counts = counts.view(v.shape[0], HIST_BINS)
        self.counts = counts if self.counts is None else self.counts + counts

    def threshold(self, percentile: float | None) -> torch.Tensor:
        """The max (``percentile=None``) or the percentile of positive values; ``[C]`` or scalar."""
        assert self.max is not None
        th = self.max.double() if percentile is None else self._percentile(percentile)
        th = torch.where(th > 0, th, torch.full_like(th, FALLBACK_THRESHOLD)).float()
        return th if self.channelwise else th[0]

    def _percentile(self, p: float) -> torch.Tensor:
        assert self.counts is not None and self.max is not None
        counts = self.counts.double()
        k = counts.sum(1, keepdim=True) * (p / 100.0)
        cum = counts.cumsum(1)
        b = (cum < k).sum(1, keepdim=True).clamp(max=HIST_BINS - 1)
        in_bin = counts.gather(1, b)
        frac = ((k - (cum.gather(1, b) - in_bin)) / in_bin.clamp_min(1.0)).clamp(0.0, 1.0)
        pos = (b.double() + frac) / HIST_BINS  # position in [0, 1] of the log range
        th = self.max.double()[:, None] * 10.0 ** (HIST_DECADES * (pos - 1.0))
        return torch.where(counts.sum(1, keepdim=True) > 0, th, torch.zeros_like(th))[:, 0]


def _lambda(site: nn.Module) -> float | None:
    return float(site.lam.detach()) if isinstance(site, tuple(ANN_SITE_TYPES[1:])) else None


def _collect(ann: nn.Module, batches: list[torch.Tensor], stats: dict[nn.Module, Any], fn: str):  # type: ignore[no-untyped-def]
    """One ANN pass over all batches calling ``stats[site].<fn>(pre-activation)``."""

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        getattr(stats[m], fn)(args[0])

    handles = [m.register_forward_pre_hook(hook) for m in stats]
    try:
        for x in batches:
            ann(x)
    finally:
        for h in handles:
            h.remove()


def site_ceiling(name: str, site: nn.Module) -> float | None:
    """The ceiling ``λ`` of Clip / QCFS site ``name`` (None for a ReLU); ModelError if not > 0."""
    lam = _lambda(site)
    if lam is not None and lam <= 0:
        raise ModelError(f"site {name!r} has a non-positive ceiling λ = {lam}")
    return lam


def check_percentile(percentile: float) -> None:
    """ConfigError unless ``percentile`` lies in (0, 100]."""
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")


def site_thresholds(
    ann: nn.Module,
    batches: list[torch.Tensor] | None,
    percentile: float | None,
    channelwise: bool = False,
    ceiling: bool = False,
) -> dict[str, torch.Tensor]:
    """Initial threshold per ANN site name, in site order (scalar, or ``[C]`` channel-wise).

    ``ceiling``: a clip/qcfs site takes its ``λ``; every other site is measured on
    ``batches``: the maximum pre-activation (``percentile=None``, max-norm) or that
    percentile of the positive pre-activations (robust-norm), capped at ``λ`` where the
    site has one. ConfigError when a site must be measured and there is no data.
    """
    thresholds: dict[str, torch.Tensor] = {}
    measured: dict[nn.Module, _SiteStatistic] = {}
    names = {}
    for name, site in ann_sites(ann):
        lam = site_ceiling(name, site)
        if ceiling and lam is not None:
            thresholds[name] = torch.tensor(lam)
        else:
            measured[site], names[site] = _SiteStatistic(channelwise, lam), name
    if measured:
        if batches is None:
            raise ConfigError("site statistics need calibration data; none was given")
        with eval_mode(ann):
            _collect(ann, batches, measured, "update_max")
            if percentile is not None:
                _collect(ann, batches, measured, "update_hist")
        thresholds.update({names[m]: s.threshold(percentile) for m, s in measured.items()})
    return {name: thresholds[name] for name, _ in ann_sites(ann)}
