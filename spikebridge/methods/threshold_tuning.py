"""Layer-by-layer threshold tuning of a converted SNN (METHODS 2.4, our design).

The TTRBR abstract names "threshold tuning" without saying how; this is our design. Per
activation site ``l``, from input to output, on a calibration set at the target ``T``:

    s_l = argmin_{s ∈ grid}  E ‖ r_l(s·θ_l) − a_l ‖²        (optionally jointly over φ_l)

where ``r_l = mean_t(o_t·θ)`` is the site's actual output rate and ``a_l`` the ANN's
activation at that site on the same images. ``r_l`` is simulated on the input currents
that the already-tuned earlier sites produce, so the deviation error (currents that vary
over time, METHODS 2.3) is part of the loss, unlike statistics-only rules (max-norm,
robust-norm).

Cost: per site, one pass over the calibration chunks that runs the ANN and the SNN only
up to that site (a hook stops the forward), captures the site's currents ``[T*B, ...]``
and re-simulates just that neuron once per candidate. Memory is one chunk at a time.

Guarantee: scale 1 (with the current φ) is always a candidate and is tried first, so the
chosen value never has a larger calibration loss than the one the site started with
(``loss_after <= loss_before`` per row). Channel-wise tuning picks the scale per channel;
channels are independent neurons, so it is the exact per-channel minimum on the grid.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from spikebridge.errors import ConfigError
from spikebridge.methods.error_analysis import (
    CalibrationData,
    calibration_batches,
    capture,
    eval_mode,
    model_device,
    paired_sites,
)
from spikebridge.nn.neurons import SpikingNeuron
from spikebridge.nn.temporal import SpikingSite, unfold

DEFAULT_SCALE_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2)
"""Threshold scales tried per site (1.0 = keep θ; always added if missing)."""

DEFAULT_PHI_GRID = (0.0, 0.25, 0.5, 0.75)
"""Initial-potential fractions tried with every scale when ``tune_phi`` is on."""

Candidate = tuple[float, float | None]  # (threshold scale, φ or None = keep the current φ)


@dataclass
class TuningRow:
    """What tuning did at one site (θ, scale and φ are channel means when channel-wise)."""

    site: str
    theta_init: float
    theta: float
    scale: float
    phi: float
    loss_before: float  # E(r − a)² with scale 1, earlier sites already tuned
    loss_after: float  # E(r − a)² with the chosen scale (never above loss_before)


@dataclass
class TuningReport:
    """Per-site results of :func:`tune_thresholds`, in input -> output order."""

    rows: list[TuningRow]
    timesteps: int
    channelwise: bool
    tune_phi: bool
    grid: tuple[float, ...]
    phi_grid: tuple[float, ...] = field(default_factory=tuple)
    images: int = 0

    @property
    def loss_before(self) -> float:
        """Sum over sites of the per-site loss before tuning that site."""
        return sum(r.loss_before for r in self.rows)

    @property
    def loss_after(self) -> float:
        """Sum over sites of the per-site loss after tuning that site."""
        return sum(r.loss_after for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """A markdown table, one line per site."""
        names = [f.name for f in fields(TuningRow)]
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        for row in self.rows:
            cells = [v if isinstance(v, str) else f"{v:.4g}" for v in asdict(row).values()]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _check_grids(
    grid: tuple[float, ...] | list[float], phi_grid: tuple[float, ...] | list[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scales = tuple(float(s) for s in grid)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"threshold scale grid must hold positive numbers, got {list(grid)}")
    phis = tuple(float(p) for p in phi_grid)
    if any(not 0.0 <= p <= 1.0 for p in phis):
        raise ConfigError(f"phi grid values must lie in [0, 1], got {list(phi_grid)}")
    return scales, phis


def _candidates(scales: tuple[float, ...], phis: tuple[float, ...]) -> list[Candidate]:
    """``(1.0, keep φ)`` first (ties keep the current value), then the rest of the grid."""
    cands: list[Candidate] = [(1.0, None)]
    cands += [(s, None) for s in scales if s != 1.0]
    cands += [(s, p) for s in scales for p in phis]
    return cands


def _probe(neuron: SpikingNeuron, theta: torch.Tensor, phi: torch.Tensor) -> SpikingNeuron:
    """A copy of the site's neuron with threshold ``theta`` and initial potential ``phi``."""
    probe = copy.deepcopy(neuron)
    probe.threshold = theta.clone()
    probe.phi = phi.clone()
    return probe


def _sse_per_channel(probe: SpikingNeuron, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``Σ (mean_t(o_t·θ) − a)²`` per channel ``[C]`` for currents ``u[T, B, C, ...]``."""
    err = (probe(u).mean(0) - a).square()
    return err.sum(dim=[d for d in range(err.dim()) if d != 1]).double()


def _site_sse(
    ann: nn.Module,
    snn: nn.Module,
    sites: tuple[nn.Module, SpikingSite],
    batches: list[torch.Tensor],
    probes: list[SpikingNeuron],
) -> tuple[torch.Tensor, int]:
    """Summed squared error ``[K, C]`` of every candidate probe over the calibration chunks."""
    ann_site, snn_site = sites
    sse, count = None, 0
    for x in batches:
        a = capture(ann, ann_site, x.to(model_device(ann)), "output").to(x.device)
        u = unfold(capture(snn, snn_site, x, "input"), snn_site.timesteps)
        part = torch.stack([_sse_per_channel(p, u, a) for p in probes])
        sse = part if sse is None else sse + part
        count += a.numel()
    assert sse is not None  # calibration_batches never returns an empty list
    return sse, count


def _apply_choice(
    site: SpikingSite, cands: list[Candidate], sse: torch.Tensor, channelwise: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set the site's θ (and φ) to the best candidate; return (scale, loss sum, φ)."""
    neuron = site.neuron
    theta0, phi0 = neuron.threshold.clone(), neuron.phi.clone()
    scales = torch.tensor([s for s, _ in cands], dtype=theta0.dtype, device=theta0.device)
    phis = [phi0 if p is None else torch.full_like(phi0, p) for _, p in cands]
    if channelwise:
        best = sse.argmin(0)  # [C]
        C = sse.shape[1]
        phi_table = torch.stack([p.expand(C) for p in phis])  # [K, C]
        scale = scales[best]
        neuron.threshold = theta0.expand(C) * scale
        neuron.phi = phi_table.gather(0, best[None])[0]
        loss = sse.gather(0, best[None]).sum()
    else:
        k = int(sse.sum(1).argmin())
        scale = scales[k]
        neuron.threshold = theta0 * cands[k][0]
        neuron.phi = phis[k].clone()
        loss = sse[k].sum()
    return scale, loss, neuron.phi


def _tune_site(
    ann: nn.Module,
    snn: nn.Module,
    sites: tuple[str, nn.Module, SpikingSite],
    batches: list[torch.Tensor],
    cands: list[Candidate],
    channelwise: bool,
) -> TuningRow:
    name, ann_site, snn_site = sites
    neuron = snn_site.neuron
    theta0, phi0 = neuron.threshold.clone(), neuron.phi.clone()
    probes = [
        _probe(neuron, theta0 * s, phi0 if p is None else torch.full_like(phi0, p))
        for s, p in cands
    ]
    sse, count = _site_sse(ann, snn, (ann_site, snn_site), batches, probes)
    scale, loss, phi = _apply_choice(snn_site, cands, sse, channelwise)
    return TuningRow(
        site=name,
        theta_init=theta0.mean().item(),
        theta=neuron.threshold.mean().item(),
        scale=scale.float().mean().item(),
        phi=phi.float().mean().item(),
        loss_before=(sse[0].sum() / count).item(),
        loss_after=(loss / count).item(),
    )


def tune_thresholds(
    ann: nn.Module,
    snn: nn.Module,
    calibration_images: CalibrationData,
    timesteps: int,
    grid: tuple[float, ...] | list[float] = DEFAULT_SCALE_GRID,
    channelwise: bool = False,
    tune_phi: bool = False,
    phi_grid: tuple[float, ...] | list[float] = DEFAULT_PHI_GRID,
    batch_size: int = 64,
    progress: bool = False,
) -> TuningReport:
    """Tune every site's threshold scale ``s_l`` (and φ) in place (METHODS 2.4, our design).

    Args:
        ann: the source ANN (unchanged); sites are paired with ``snn``'s by module name.
        snn: the converted network; its neuron buffers are updated and it is left at
            ``timesteps`` steps.
        calibration_images: normalized images ``[N, C, H, W]`` (chunked by ``batch_size``)
            or an iterable of batches (about 1-5k training images).
        timesteps: the target T the loss is measured at.
        grid: threshold scales to try (1.0 is always tried).
        channelwise: pick a scale per channel (θ becomes a ``[C]`` buffer).
        tune_phi: also search φ over ``phi_grid`` jointly with the scale.

    Returns a :class:`TuningReport` (per site: θ before/after, scale, φ, loss before/after).
    """
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    scales, phis = _check_grids(grid, phi_grid if tune_phi else ())
    cands = _candidates(scales, phis)
    pairs = paired_sites(ann, snn)
    batches = calibration_batches(calibration_images, batch_size, model_device(snn))
    snn.set_timesteps(timesteps)  # type: ignore[operator]
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="threshold tuning", unit="site")  # type: ignore[assignment]
    with eval_mode(ann, snn):
        rows = [_tune_site(ann, snn, p, batches, cands, channelwise) for p in pairs]
    n_images = sum(b.shape[0] for b in batches)
    return TuningReport(rows, timesteps, channelwise, tune_phi, scales, phis, n_images)
