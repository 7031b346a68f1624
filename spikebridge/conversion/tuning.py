"""Layer-by-layer threshold tuning of a converted SNN (METHODS 2.4, our design).

The TTRBR abstract names "threshold tuning" without saying how; this is our design. Per
activation site ``l``, from input to output, on a calibration set at the target ``T``:

    s_l = argmin_{s ∈ grid}  E ‖ r_l(s·θ_l) − a_l ‖²

where ``r_l = mean_t(o_t·θ)`` is the site's actual output rate and ``a_l`` the ANN's
activation at that site on the same images. ``r_l`` is simulated on the input currents
that the already-tuned earlier sites produce, so the deviation error (currents that vary
over time, METHODS 2.3) is part of the loss, unlike statistics-only rules (max-norm,
robust-norm).

Cost: for a spikebridge ResNet (the usual case) the ANN's and the SNN's activations are
cached at the input of the current residual block (stem first), per calibration chunk;
each site's pass runs only its own block from that cache, and the cache then advances one
block. That is O(depth) block evaluations in all, not O(depth²) passes from the image
(what a 100+ layer network would need otherwise), and gives the same numbers. Memory: one
block input per chunk for the whole calibration set, ``N·(1 + T)`` activations of the
widest block input. Other models fall back to one pass from the image per site, stopped
at the site by a hook. Either way the site's currents ``[T*B, ...]`` are captured and just
that neuron is re-simulated once per candidate.

Bias shift (``tune_bias``, also ours): each candidate can also be tried with the site's input
current shifted per channel by ``δ_c = mean(z_c − mean_t u_c)``, the mean gap between the
ANN's pre-activation ``z`` and the SNN's time-averaged current ``u`` on the calibration set
(the mean of the propagated error, METHODS 2.3). If a shifted candidate wins, ``δ`` is added
to the bias of the (BN-folded) conv that feeds the site, so the converted model stays a plain
conv + IF network. This is the bias correction of Li et al. (ICML 2021) offered to the same
per-site search instead of applied unconditionally.

Stream target (``compensate_stream``, also ours, ResNets with ``pre-add`` blocks): the last
branch site of a pre-add block feeds a sum with the identity path, so the block's output
error is that site's error plus the error the residual stream already carries. With this
option that site's target becomes ``a_l + (s_a − mean_t s_s)``, ``s`` the shortcut's output
(ANN / SNN), so the site can correct the stream's error instead of passing it on (METHODS
2.5). The shortcut's own site (a projection) is tuned first so the gap is the final one.
Measured (docs/notes/results-history.md): +1.4 points at T = 4 on a pre-add resnet20, within noise
on resnet56-164; hence off by default.

Reference network (``reference``, also ours): the ``a_l`` the sites aim at come from the ANN as
trained or from its clip twin (:mod:`~spikebridge.conversion.reference`).

Guarantee: scale 1 (with the current φ, unshifted) is always a candidate and is tried first,
so the chosen value never has a larger calibration loss than the one the site started with
(``loss_after <= loss_before`` per row). Channel-wise tuning picks the scale per channel;
channels are independent neurons, so it is the exact per-channel minimum on the grid.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from spikebridge.conversion.fx_graph import feeding_layer
from spikebridge.conversion.reference import clip_reference, resolve_reference
from spikebridge.conversion.sites import (
    CalibrationData,
    calibration_batches,
    capture,
    eval_mode,
    markdown_table,
    model_device,
    paired_sites,
)
from spikebridge.errors import ConfigError
from spikebridge.models.resnet import Bottleneck, ResNet
from spikebridge.nn.neurons import SpikingNeuron, per_channel_view
from spikebridge.nn.temporal import SpikingSite, fold, unfold

DEFAULT_SCALE_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2)
"""Threshold scales tried per site (1.0 = keep θ; always added if missing)."""

Candidate = tuple[float, bool]  # (θ scale, shift the input)


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
    reverted: bool = False  # the block guard put this site back to its initial θ
    bias_shift: float = 0.0  # mean |δ| added to the feeding conv's bias (tune_bias)


@dataclass
class TuningReport:
    """Per-site results of :func:`tune_thresholds`, in input -> output order."""

    rows: list[TuningRow]
    timesteps: int
    channelwise: bool
    grid: tuple[float, ...]
    images: int = 0
    reference: str = "ann"  # the network the sites aimed at: "ann" or "clip"

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
        return markdown_table(TuningRow, self.rows)


def check_grid(grid: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """The scale grid as floats; ConfigError unless it holds positive numbers."""
    scales = tuple(float(s) for s in grid)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"threshold scale grid must hold positive numbers, got {list(grid)}")
    return scales


def _candidates(scales: tuple[float, ...], shift: bool = False) -> list[Candidate]:
    """``(1.0, unshifted)`` first (ties keep the current value), then the rest of the grid;
    with ``shift`` every one of them again on the shifted input."""
    base = [1.0] + [s for s in scales if s != 1.0]
    return [(s, False) for s in base] + ([(s, True) for s in base] if shift else [])


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


Inputs = list[tuple[torch.Tensor, torch.Tensor]]  # per chunk: (ANN input, SNN input)


Gaps = list[torch.Tensor] | None  # per chunk: stream gap added to the site's target


def _with_gap(x: torch.Tensor, gaps: Gaps, i: int) -> torch.Tensor:
    return x if gaps is None else x + gaps[i]


def _site_sse(
    ann: nn.Module,
    snn: nn.Module,
    sites: tuple[nn.Module, SpikingSite],
    inputs: Inputs,
    probes: list[tuple[SpikingNeuron, bool]],
    delta: torch.Tensor | None = None,
    gaps: Gaps = None,
) -> tuple[torch.Tensor, int]:
    """Summed squared error ``[K, C]`` of every candidate probe over the calibration chunks.

    ``ann`` / ``snn`` are the whole models (inputs = images) or one segment of each
    (inputs = the cached segment inputs, ``[B, ...]`` and ``[T*B, ...]``). A probe marked
    shifted sees the currents plus the per-channel ``delta``; ``gaps`` (compensate_stream)
    are added to the ANN activation that is the target.
    """
    ann_site, snn_site = sites
    sse, count = None, 0
    for i, (xa, xs) in enumerate(inputs):
        a = _with_gap(capture(ann, ann_site, xa, "output").to(xs.device), gaps, i)
        u = unfold(capture(snn, snn_site, xs, "input"), snn_site.timesteps)
        shifted = u if delta is None else u + per_channel_view(delta, u.dim() - 1)
        part = torch.stack([_sse_per_channel(p, shifted if sh else u, a) for p, sh in probes])
        sse = part if sse is None else sse + part
        count += a.numel()
    assert sse is not None  # calibration_batches never returns an empty list
    return sse, count


def _mean_current_gap(
    ann: nn.Module,
    snn: nn.Module,
    sites: tuple[nn.Module, SpikingSite],
    inputs: Inputs,
    gaps: Gaps = None,
) -> torch.Tensor:
    """``δ_c = mean(z (+ gap) − mean_t u)`` per channel: ANN pre-activation (plus the stream
    gap under compensate_stream) minus the SNN's time-averaged input current at the site (the
    bias shift of ``tune_bias``)."""
    ann_site, snn_site = sites
    total, count = None, 0
    for i, (xa, xs) in enumerate(inputs):
        z = _with_gap(capture(ann, ann_site, xa, "input").to(xs.device), gaps, i)
        u = unfold(capture(snn, snn_site, xs, "input"), snn_site.timesteps).mean(0)
        gap = (z - u).double().sum(dim=[d for d in range(z.dim()) if d != 1])
        total = gap if total is None else total + gap
        count += z.numel() // z.shape[1]
    assert total is not None
    return total / count


def feeding_conv(model: nn.Module, site_name: str) -> nn.Module | None:
    """The biased conv whose output is the input current of site ``site_name`` (``act1`` ->
    ``conv1``, ``stages.i.j.act2`` -> ``stages.i.j.conv2``, ``...shortcut.act`` ->
    ``...shortcut.conv``); None when there is none (then no bias shift is tried). In a
    converted user model (a graph) it is the Conv2d / Linear that feeds only that site
    (:func:`~spikebridge.conversion.fx_graph.feeding_layer`)."""
    if isinstance(model, fx.GraphModule):
        return feeding_layer(model, site_name)
    parent_name, _, leaf = site_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return None
    conv = getattr(parent, "conv" + leaf[len("act") :], None) if leaf.startswith("act") else None
    ok = isinstance(conv, nn.Conv2d) and conv.bias is not None
    return conv if ok else None


def _apply_choice(
    site: SpikingSite, cands: list[Candidate], sse: torch.Tensor, channelwise: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set the site's θ to the best candidate; return (scale, loss sum, φ, shifted) with
    ``shifted`` a bool per channel (or a scalar) saying where the bias shift won. φ keeps
    its value (per channel when channel-wise, as the threshold)."""
    neuron = site.neuron
    theta0, phi0 = neuron.threshold.clone(), neuron.phi.clone()
    scales = torch.tensor([s for s, _ in cands], dtype=theta0.dtype, device=theta0.device)
    shifts = torch.tensor([sh for _, sh in cands], device=theta0.device)
    if channelwise:
        best = sse.argmin(0)  # [C]
        C = sse.shape[1]
        scale = scales[best]
        neuron.threshold = theta0.expand(C) * scale
        neuron.phi = phi0.expand(C).clone()
        loss = sse.gather(0, best[None]).sum()
        shifted = shifts[best]
    else:
        k = int(sse.sum(1).argmin())
        scale = scales[k]
        neuron.threshold = theta0 * cands[k][0]
        neuron.phi = phi0.clone()
        loss = sse[k].sum()
        shifted = shifts[k]
    return scale, loss, neuron.phi, shifted


def _tune_site(
    ann: nn.Module,
    snn: nn.Module,
    sites: tuple[str, nn.Module, SpikingSite],
    inputs: Inputs,
    cands: list[Candidate],
    channelwise: bool,
    conv: nn.Module | None = None,
    gaps: Gaps = None,
) -> TuningRow:
    """Tune one site; with a feeding ``conv``, shifted candidates are tried too (tune_bias);
    with ``gaps`` the target is the ANN activation plus the stream gap (compensate_stream)."""
    name, ann_site, snn_site = sites
    neuron = snn_site.neuron
    theta0, phi0 = neuron.threshold.clone(), neuron.phi.clone()
    if conv is None:
        cands = [c for c in cands if not c[1]]
    delta = _mean_current_gap(ann, snn, (ann_site, snn_site), inputs, gaps) if conv else None
    probes = [(_probe(neuron, theta0 * s, phi0), sh) for s, sh in cands]
    sse, count = _site_sse(ann, snn, (ann_site, snn_site), inputs, probes, delta, gaps)
    scale, loss, phi, shifted = _apply_choice(snn_site, cands, sse, channelwise)
    applied = 0.0
    if conv is not None and delta is not None and bool(shifted.any()):
        shift = delta.to(conv.bias.dtype) * shifted.to(conv.bias.dtype)
        conv.bias.data += shift
        applied = shift.abs().mean().item()
    return TuningRow(
        site=name,
        theta_init=theta0.mean().item(),
        theta=neuron.threshold.mean().item(),
        scale=scale.float().mean().item(),
        phi=phi.float().mean().item(),
        loss_before=(sse[0].sum() / count).item(),
        loss_after=(loss / count).item(),
        bias_shift=applied,
    )


def tune_thresholds(
    ann: nn.Module,
    snn: nn.Module,
    calibration_images: CalibrationData,
    timesteps: int,
    grid: tuple[float, ...] | list[float] = DEFAULT_SCALE_GRID,
    channelwise: bool = False,
    batch_size: int = 64,
    progress: bool = False,
    guard: bool = True,
    tune_bias: bool = False,
    compensate_stream: bool = False,
    reference: str = "auto",
) -> TuningReport:
    """Tune every site's threshold scale ``s_l`` in place (METHODS 2.4, our design).

    Args:
        ann: the source ANN (unchanged); sites are paired with ``snn``'s by module name.
        snn: the converted network; its neuron buffers are updated and it is left at
            ``timesteps`` steps.
        calibration_images: normalized images ``[N, C, H, W]`` (chunked by ``batch_size``)
            or an iterable of batches (about 1-5k training images).
        timesteps: the target T the loss is measured at.
        grid: threshold scales to try (1.0 is always tried).
        channelwise: pick a scale per channel (θ becomes a ``[C]`` buffer).
        guard: (ResNets) keep a residual block's tuned sites only if the error of the
            block's OUTPUT (the residual stream, shortcut included) does not increase;
            otherwise put them back (``row.reverted``). Greedy per-site tuning can lower
            each site's own error yet raise the stream's, e.g. on QCFS pre-add models.
        tune_bias: also try every candidate with the input shifted by the mean current gap
            ``δ`` and fold a winning shift into the feeding conv's bias (module docstring).
        compensate_stream: (ResNets, pre-add blocks) the last branch site of each block
            targets the ANN activation plus the residual stream's gap, so it corrects the
            error the identity path carries (module docstring). Its row's losses are then
            measured against that target.
        reference: ``"ann"`` (the ANN as trained), ``"clip"`` (its QCFS sites as
            ``clip(z, 0, λ)``) or ``"auto"`` (the default: clip when ``timesteps`` exceeds
            the ANN's QCFS levels): the network whose activations the sites aim at (module
            docstring).

    Returns a :class:`TuningReport` (per site: θ before/after, scale, φ, loss before/after).
    """
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if compensate_stream and not (isinstance(ann, ResNet) and isinstance(snn, ResNet)):
        raise ConfigError(
            "compensate_stream needs spikebridge ResNets (it follows the residual stream)"
        )
    reference = resolve_reference(reference, ann, timesteps)
    if reference == "clip":
        ann = clip_reference(ann)
    scales = check_grid(grid)
    cands = _candidates(scales, tune_bias)
    pairs = paired_sites(ann, snn)
    convs = {name: feeding_conv(snn, name) if tune_bias else None for name, _, _ in pairs}
    batches = calibration_batches(calibration_images, batch_size, model_device(snn))
    snn.set_timesteps(timesteps)  # type: ignore[operator]
    segments, site_pairs = _segment_plan(ann, snn, pairs), pairs
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="threshold tuning", unit="site")  # type: ignore[assignment]
    with eval_mode(ann, snn):
        if segments is None:
            inputs = [(x.to(model_device(ann)), x) for x in batches]
            rows = [_tune_site(ann, snn, p, inputs, cands, channelwise, convs[p[0]]) for p in pairs]
        else:
            options = (cands, channelwise, guard, convs, compensate_stream)
            rows = _tune_by_segment(segments, site_pairs, batches, options, timesteps)
    n_images = sum(b.shape[0] for b in batches)
    return TuningReport(rows, timesteps, channelwise, scales, n_images, reference=reference)


# --------------------------------------------------------------------------- block cache


class _Stem:
    """The stem of a ResNet as a callable segment: ``stem_pool(act1(bn1(conv1(x))))``."""

    def __init__(self, model: ResNet) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.stem_pool(m.act1(m.bn1(m.conv1(x))))


Segment = tuple[str, Any, Any]  # (site-name prefix, ANN segment, SNN segment)


def _segment_plan(ann: nn.Module, snn: nn.Module, pairs: list) -> list[Segment] | None:  # type: ignore[type-arg]
    """Stem + every residual block of both ResNets, or None when a site lies elsewhere."""
    if not (isinstance(ann, ResNet) and isinstance(snn, ResNet)):
        return None
    segments: list[Segment] = [("", _Stem(ann), _Stem(snn))]
    for i, (stage_a, stage_s) in enumerate(zip(ann.stages, snn.stages, strict=True)):
        for j, (block_a, block_s) in enumerate(zip(stage_a, stage_s, strict=True)):
            segments.append((f"stages.{i}.{j}.", block_a, block_s))
    stem_sites = {"act1"}
    for name, _, _ in pairs:
        if name not in stem_sites and not name.startswith("stages."):
            return None
    return segments


def _segment_outputs(seg_a: Any, seg_s: Any, inputs: Inputs, T: int) -> tuple[Inputs, float]:
    """Run one segment on every chunk: the next inputs and ``Σ (mean_t(snn) − ann)²``."""
    outputs, sse = [], 0.0
    for xa, xs in inputs:
        ya, ys = seg_a(xa), seg_s(xs)
        sse += (unfold(ys, T).mean(0) - ya.to(ys.device)).double().square().sum().item()
        outputs.append((ya, ys))
    return outputs, sse


def stream_site(prefix: str, block: Any) -> str | None:
    """Name of the last branch site of a ``pre-add`` block (the one added to the identity
    path), or None for the stem and post-add blocks (their last site IS the stream)."""
    if getattr(block, "structure", None) != "pre-add":
        return None
    return prefix + ("act3" if isinstance(block, Bottleneck) else "act2")


def _stream_gaps(seg_a: Any, seg_s: Any, inputs: Inputs, T: int) -> list[torch.Tensor]:
    """Per chunk, ``shortcut_ann(x) − mean_t shortcut_snn(x)``: the error the block's identity
    path brings to its sum (compensate_stream)."""
    gaps = []
    for xa, xs in inputs:
        sa = xa if seg_a.shortcut is None else seg_a.shortcut(xa)
        ss = xs if seg_s.shortcut is None else seg_s.shortcut(xs)
        gaps.append(sa.to(xs.device) - unfold(ss, T).mean(0))
    return gaps


def _tune_by_segment(
    segments: list[Segment],
    pairs: list[tuple[str, nn.Module, SpikingSite]],
    batches: list[torch.Tensor],
    options: tuple[list[Candidate], bool, bool, dict[str, nn.Module | None], bool],
    timesteps: int,
) -> list[TuningRow]:
    """Tune site by site, running only the current segment from cached inputs.

    ``options`` = (candidates, channel-wise, block guard, feeding conv per site,
    compensate the stream).
    """
    cands, channelwise, guard, convs, compensate = options
    device = model_device(segments[0][1].model)
    inputs = [(x.to(device), fold(x.unsqueeze(0).expand(timesteps, *x.shape))) for x in batches]
    by_name = {p[0]: p for p in pairs}
    rows = {}
    for prefix, seg_a, seg_s in segments:
        own = [n for n in by_name if (n.startswith(prefix) if prefix else n == "act1")]
        last = stream_site(prefix, seg_s) if compensate else None
        if last in own:  # tuned last, once the shortcut's own site (if any) is final
            own = [n for n in own if n != last] + [last]
        neurons = [by_name[n][2].neuron for n in own]
        saved = [(nr.threshold.clone(), nr.phi.clone()) for nr in neurons]
        biases = {n: c.bias.detach().clone() for n in own if (c := convs.get(n)) is not None}
        if guard and own:
            untuned, before = _segment_outputs(seg_a, seg_s, inputs, timesteps)
        for name in own:
            gaps = _stream_gaps(seg_a, seg_s, inputs, timesteps) if name == last else None
            rows[name] = _tune_site(
                seg_a, seg_s, by_name[name], inputs, cands, channelwise, convs.get(name), gaps
            )
        tuned, after = _segment_outputs(seg_a, seg_s, inputs, timesteps)
        if guard and own and after > before:
            for name, nr, (theta, phi) in zip(own, neurons, saved, strict=True):
                nr.threshold, nr.phi = theta, phi
                if name in biases:
                    convs[name].bias.data.copy_(biases[name])  # type: ignore[union-attr]
                r = rows[name]
                rows[name] = replace(r, theta=r.theta_init, scale=1.0, phi=phi.float().mean().item(),
                                     loss_after=r.loss_before, reverted=True, bias_shift=0.0)  # fmt: skip
            tuned = untuned
        inputs = tuned
    return [rows[p[0]] for p in pairs]
