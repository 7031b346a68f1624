"""ANN -> SNN conversion with IF neurons (METHODS 2.1-2.2, 2.4-2.6).

:func:`convert` takes a spikebridge :class:`~spikebridge.models.ResNet` ANN or any user CNN
that ``torch.fx`` can trace (``nn.Sequential`` or a custom ``forward`` of conv, BN, ReLU,
average / max pooling, linear, ``+`` and flatten; :mod:`~spikebridge.methods.graph`). Every
method below works on both; the user model's twin is a
:class:`~spikebridge.methods.graph.SpikingGraph` with the layout described here (max
pooling: rate-gated, see the graph module), and a node that has no IF counterpart is
refused by name before anything is built.

For a ResNet, :func:`convert` builds a NEW spiking twin (the
ANN is not modified): the same architecture and block structure, built with
``neuron="if"``, every BatchNorm folded into the convolution before it, and every
activation site replaced by an IF neuron (reset by subtraction, ``v_0 = φθ``, emits
``o·θ``; METHODS 2.1). The first conv sees the analog image at every step (direct
encoding); pooling is kept; the FC layer stays analog and reads the time-averaged rates
(the model's output is the mean over T of per-step logits).

Thresholds ``θ_l`` per method (METHODS 2.6 baselines, 2.4 ours):

- ``maxnorm`` (Diehl et al. 2015): the largest pre-activation at site ``l`` over the
  calibration set;
- ``robust`` (Rueckauer et al. 2017): the ``percentile`` (99.9 / 99.99) of its positive
  pre-activations;
- ``qcfs`` (Bu et al. 2022): ``θ_l = λ_l`` of the ANN's Clip / QCFS site, ``φ = 0.5``;
- ``ttrbr`` (**our design** on the TTRBR abstract): ``λ`` for clip/qcfs sites, the robust
  percentile for ReLU sites, then :func:`~spikebridge.methods.threshold_tuning.tune_thresholds`
  at the target T (threshold scale per site, and by default a per-channel bias shift of the
  site's input current folded into the conv before it), then an output calibration of every
  site's threshold scale and shift (:mod:`~spikebridge.methods.output_calibration`); the
  network these aim at (the ANN or its clip twin) is chosen on held-out labelled images when
  they are given, against the untuned ``qcfs`` / ``robust`` thresholds at every T the caller
  reports (:mod:`~spikebridge.methods.reference_selection`). Residual block
  restructuring (METHODS 2.5, our design) is the ANN's ``block="pre-add"``, which the twin
  inherits.

For clip/qcfs sites the statistics are capped at ``λ`` (the ANN never outputs more).
Statistics come from forward pre-hooks on the ANN's sites (the pre-activation is what the
IF neuron integrates); percentiles use a log-spaced histogram (4096 bins over six decades
below the maximum, ~0.3 % relative resolution), so memory stays bounded for any
calibration-set size.

Saving and reloading a converted model: BN is folded away, so the model is NOT what
``build_from_config(snn.config)`` makes (that one has BN layers and bias-free convs).
Save ``snn.state_dict()`` with ``snn.config``; rebuild with :func:`build_converted` (same
config, BN -> ``nn.Identity``, convs with a bias), then ``load_state_dict``. Thresholds and
φ are neuron buffers, so they are in the state dict (scalar or per-channel). A converted
user model is rebuilt with :func:`~spikebridge.methods.graph.build_spiking_graph` from a
fresh instance of the ANN class, then ``load_state_dict``.

For a user model the statistics, tuning and calibration run against its
:func:`~spikebridge.methods.graph.site_graph` (the traced ANN with one module per activation
site, so that sites pair by name); the per-block guard and ``compensate_stream`` of
threshold tuning follow ResNet blocks and do not apply there.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.errors import ConfigError, ModelError
from spikebridge.methods.error_analysis import (
    ANN_SITE_TYPES,
    CalibrationData,
    ann_sites,
    calibration_batches,
    eval_mode,
    model_device,
    snn_sites,
)
from spikebridge.methods.graph import (
    SpikingGraph,
    conv_with_bias,
    fold_graph_batchnorm,
    folded_conv,
    site_graph,
    spiking_from_sites,
)
from spikebridge.methods.output_calibration import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    CalibrationReport,
    calibrate_outputs,
)
from spikebridge.methods.reference_selection import (
    SelectionReport,
    labelled_batches,
    select_reference,
)
from spikebridge.methods.threshold_tuning import (
    DEFAULT_SCALE_GRID,
    REFERENCES,
    TuningReport,
    qcfs_levels,
    tune_thresholds,
)
from spikebridge.models.registry import ModelConfig, build_from_config
from spikebridge.models.resnet import BasicBlock, Bottleneck, ResNet

METHODS = ("maxnorm", "robust", "qcfs", "ttrbr")
TUNE_REFERENCES = (*REFERENCES, "select")  # select: per ANN, on held-out labelled images
SELECT_CANDIDATES = ("ann", "clip")  # tuned candidates of select, in tie-break order
UNTUNED_CANDIDATES = ("qcfs", "robust")  # untuned baselines select holds ttrbr to (2.4)
HIST_BINS = 4096  # log-spaced histogram bins for percentiles
HIST_DECADES = 6  # the histogram spans [max·1e-6, max]
FALLBACK_THRESHOLD = 1.0  # θ for a site (channel) that never sees a positive input

_CONTAINERS = (ResNet, BasicBlock, Bottleneck, nn.Sequential, nn.ModuleList)
_LEAVES = (
    nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
    nn.Dropout, *ANN_SITE_TYPES,
)  # fmt: skip


# --------------------------------------------------------------------------- checks


def _unsupported_hint(module: nn.Module) -> str:
    kind = type(module).__name__
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return f"replace {kind} with AvgPool2d (e.g. stem_pool='avg') and retrain"
    if type(module).__module__ == "torch.nn.modules.activation":
        return f"replace {kind} with ReLU, Clip or QCFS and retrain"
    return (
        f"conversion supports conv, batch-norm, linear, average pooling, identity and "
        f"ReLU/Clip/QCFS sites; remove or replace {kind}"
    )


def check_convertible(ann: nn.Module) -> ModelConfig | None:
    """Refuse what conversion cannot handle; return a ResNet's :class:`ModelConfig` (None for
    a user model).

    Raises :class:`ModelError` for a spikebridge ResNet that is spiking or holds a module
    with no IF counterpart in its block structure (e.g. ``nn.MaxPool2d``), and for a user
    model that torch.fx cannot trace or whose graph has a node with no IF counterpart (the
    error names the node and its op; :func:`~spikebridge.methods.graph.check_graph`).
    """
    if not isinstance(ann, ResNet):
        site_graph(ann)
        return None
    if not isinstance(getattr(ann, "config", None), ModelConfig):
        raise ModelError("convert needs a spikebridge ResNet built by spikebridge.models.build")
    if ann.spiking or ann.config.neuron is not None:
        raise ModelError("convert needs an ANN; this model is already spiking")
    for name, m in ann.named_modules():
        if not isinstance(m, _CONTAINERS + _LEAVES):
            raise ModelError(f"cannot convert layer {name!r}: {_unsupported_hint(m)}")
    return ann.config


def resolve_channelwise(method: str, channelwise: bool | None) -> bool:
    """None -> per-channel thresholds for ``ttrbr`` only. Measured on the CPU sweep's 8 ANNs
    (docs/notes/results-history.md, "Per-layer vs per-channel"): per-channel tuning was ahead
    at T = 8 on all 8 and at T = 4 on 6 (deep ReLU ANNs: 70 against 32 % at T = 8); the
    published baselines keep their per-layer rule unless asked."""
    return method == "ttrbr" if channelwise is None else channelwise


def _check_args(
    method: str, timesteps: int, percentile: float, phi: float, **flags: bool | int
) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown conversion method {method!r}; expected one of {METHODS}")
    if method != "qcfs" and not flags["has_data"]:
        raise ConfigError(f"method {method!r} needs calibration data; none was given")
    if timesteps < 1:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")
    if not 0.0 <= phi <= 1.0:
        raise ConfigError(f"phi must lie in [0, 1], got {phi}")
    if method == "qcfs" and flags["channelwise"]:
        raise ConfigError("channelwise thresholds need method maxnorm, robust or ttrbr, not qcfs")
    if method != "ttrbr" and flags["tune_phi"]:
        raise ConfigError(f"tune_phi applies to method 'ttrbr' only, not {method!r}")
    for flag in ("tune_bias", "compensate_stream"):
        if method != "ttrbr" and flags.get(flag):
            raise ConfigError(f"{flag} applies to method 'ttrbr' only, not {method!r}")
    epochs = int(flags.get("tune_epochs", 0))
    if epochs < 0:
        raise ConfigError(f"tune_epochs must be >= 0, got {epochs}")
    if epochs and method != "ttrbr":
        raise ConfigError(
            f"tune_epochs (output calibration) applies to method 'ttrbr' only, not {method!r}"
        )


# --------------------------------------------------------------------------- BN folding


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv name, bn name)`` for every BatchNorm2d (``bnX`` follows ``convX``)."""
    pairs = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            conv_name = name.replace("bn", "conv", 1)
            conv = getattr(parent, conv_name, None)
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != child.num_features:
                raise ModelError(
                    f"batch-norm {name!r} does not follow a matching conv {conv_name!r}"
                )
            pairs.append((parent, conv_name, name))
    return pairs


_conv_with_bias = conv_with_bias  # the ResNet path's names for the shared folding code
_folded = folded_conv


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the conv before it, in place; returns ``model``.

    ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β`` per output channel; the BN
    becomes ``nn.Identity``. Equals the model in eval mode up to float error. A spikebridge
    ResNet pairs ``bnX`` with ``convX`` by name (ModelError if one has no conv); any other
    model is traced with torch.fx and every BatchNorm2d fed by a Conv2d that feeds only it is
    folded, other BatchNorms are kept (an affine map, valid per step in a spiking network;
    :func:`~spikebridge.methods.graph.fold_graph_batchnorm`).
    """
    if not isinstance(model, ResNet):
        return fold_graph_batchnorm(model)
    for parent, conv_name, bn_name in _conv_bn_pairs(model):
        setattr(parent, conv_name, _folded(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    return model


def build_converted(config: ModelConfig) -> ResNet:
    """Build the empty skeleton of a converted model: IF sites, BN -> Identity, biased convs.

    Use it to reload a saved converted model:
    ``snn = build_converted(cfg); snn.load_state_dict(state)``.
    """
    if config.neuron != "if":
        raise ConfigError(f"a converted model has neuron='if', got neuron={config.neuron!r}")
    model = build_from_config(config)
    for parent, conv_name, bn_name in _conv_bn_pairs(model):
        conv = getattr(parent, conv_name)
        zeros = torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
        setattr(parent, conv_name, _conv_with_bias(conv, conv.weight.detach(), zeros))
        setattr(parent, bn_name, nn.Identity())
    return model


def is_converted_state(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict comes from a converted model (folded BN: stem conv has a bias)."""
    return "conv1.bias" in state_dict and "bn1.weight" not in state_dict


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


def activation_thresholds(
    ann: nn.Module,
    batches: list[torch.Tensor] | None,
    method: str,
    percentile: float = 99.99,
    channelwise: bool = False,
) -> dict[str, torch.Tensor]:
    """Initial threshold per ANN site name (scalar, or ``[C]`` when channel-wise).

    ``maxnorm``: max pre-activation; ``robust``: ``percentile`` of the positive
    pre-activations; ``qcfs``: ``λ``; ``ttrbr``: ``λ`` for clip/qcfs sites, robust
    percentile for ReLU sites. Statistics are capped at ``λ`` on clip/qcfs sites.
    """
    thresholds: dict[str, torch.Tensor] = {}
    measured: dict[nn.Module, _SiteStatistic] = {}
    names = {}
    for name, site in ann_sites(ann):
        lam = _lambda(site)
        if lam is not None and lam <= 0:
            raise ModelError(f"site {name!r} has a non-positive ceiling λ = {lam}")
        if method == "qcfs" and lam is None:
            raise ModelError(
                f"method 'qcfs' needs an ANN trained with clip or qcfs activations, but site "
                f"{name!r} is a ReLU; use 'robust', 'maxnorm' or 'ttrbr'"
            )
        if method in ("qcfs", "ttrbr") and lam is not None:
            thresholds[name] = torch.tensor(lam)
        else:
            measured[site], names[site] = _SiteStatistic(channelwise, lam), name
    if measured:
        if batches is None:
            raise ConfigError(f"method {method!r} needs calibration data; none was given")
        p = None if method == "maxnorm" else percentile
        with eval_mode(ann):
            _collect(ann, batches, measured, "update_max")
            if p is not None:
                _collect(ann, batches, measured, "update_hist")
        thresholds.update({names[m]: s.threshold(p) for m, s in measured.items()})
    return {name: thresholds[name] for name, _ in ann_sites(ann)}


# --------------------------------------------------------------------------- convert


@dataclass
class ConversionReport:
    """What :func:`convert` did; attached to the returned model as ``conversion_report``."""

    method: str
    timesteps: int
    phi: float
    percentile: float | None
    channelwise: bool
    initial_thresholds: dict[str, float]  # mean θ per site before tuning
    thresholds: dict[str, float]  # mean θ per site in the returned model
    tuning: TuningReport | None = None
    calibration: CalibrationReport | None = None  # output calibration (ttrbr, tune_epochs)
    selection: SelectionReport | None = None  # tune_reference "select": what each scored

    @property
    def reference(self) -> str | None:
        """What ttrbr's thresholds came from: the tuning reference (``ann`` / ``clip``), or
        the untuned baseline (``qcfs`` / ``robust``) that ``select`` kept; None otherwise."""
        if self.selection is not None:
            return self.selection.chosen
        return None if self.tuning is None else self.tuning.reference

    def to_markdown(self) -> str:
        lines = [f"method {self.method}, T = {self.timesteps}, φ = {self.phi}", ""]
        lines += ["| site | θ initial | θ |", "|---|---|---|"]
        for name, th in self.thresholds.items():
            lines.append(f"| {name} | {self.initial_thresholds[name]:.4g} | {th:.4g} |")
        return "\n".join(lines)


def _spiking_twin(ann: ResNet, cfg: ModelConfig, timesteps: int, phi: float) -> ResNet:
    """The IF twin of ``ann`` with the ANN's folded conv / FC weights copied in."""
    snn_cfg = dataclasses.replace(cfg, neuron="if", timesteps=timesteps, phi=phi, threshold=None)
    snn = build_converted(snn_cfg).to(model_device(ann))
    folded = fold_batchnorm(copy.deepcopy(ann))
    site_prefixes = tuple(f"{n}." for n, _ in ann_sites(folded))
    state = {k: v for k, v in folded.state_dict().items() if not k.startswith(site_prefixes)}
    try:
        missing, unexpected = snn.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"the ANN's weights do not fit its own architecture: {exc}") from exc
    neuron_prefixes = tuple(f"{n}." for n, _ in snn_sites(snn))
    extra = list(unexpected) + [k for k in missing if not k.startswith(neuron_prefixes)]
    if extra:
        raise ModelError(f"the ANN does not match its config (first mismatch: {extra[0]!r})")
    return snn


def _set_neurons(snn: nn.Module, thresholds: dict[str, torch.Tensor], phi: float) -> None:
    for name, site in snn_sites(snn):
        device = site.neuron.threshold.device
        site.neuron.threshold = thresholds[name].detach().to(device, torch.float32).clone()
        site.neuron.phi = torch.tensor(float(phi), device=device)


def _mean_thresholds(snn: nn.Module) -> dict[str, float]:
    return {name: site.neuron.threshold.mean().item() for name, site in snn_sites(snn)}


def convert(
    ann: nn.Module,
    method: str,
    calibration_data: CalibrationData | None,
    timesteps: int,
    percentile: float = 99.99,
    phi: float = 0.5,
    channelwise: bool | None = None,
    tune_phi: bool = False,
    grid: tuple[float, ...] | list[float] = DEFAULT_SCALE_GRID,
    batch_size: int = 64,
    progress: bool = False,
    tune_guard: bool = True,
    tune_bias: bool | None = None,
    compensate_stream: bool = False,
    tune_reference: str | None = None,
    tune_epochs: int | None = None,
    tune_lr: float = DEFAULT_LR,
    tune_schedule: str = DEFAULT_SCHEDULE,
    selection_data: Any = None,
    selection_timesteps: tuple[int, ...] | list[int] = (),
) -> ResNet | SpikingGraph:
    """Convert a ResNet ANN or a traceable user CNN into a NEW IF spiking network (see the
    module docstring).

    Args:
        ann: a ReLU / Clip / QCFS ResNet ANN, or a user CNN (not modified).
        method: ``maxnorm`` | ``robust`` | ``qcfs`` | ``ttrbr`` (ours).
        calibration_data: normalized training images ``[N, C, H, W]`` or batches of them
            (``(images, labels)`` pairs are accepted); may be ``None`` for ``qcfs``.
        timesteps: T the SNN simulates (and ``ttrbr`` tunes for).
        percentile: robust-norm percentile (``robust``, and ReLU sites under ``ttrbr``).
        phi: initial membrane potential as a fraction of θ (0.5 for QCFS).
        channelwise: per-channel thresholds (statistics and tuning); None = on for ``ttrbr``
            only (:func:`resolve_channelwise`).
        tune_phi, grid, tune_guard, tune_bias: threshold-tuning options (``ttrbr`` only;
            ``tune_guard`` keeps a block's tuned thresholds only if its output error does
            not grow; ``tune_bias`` also tries a per-channel shift of each site's input
            current, folded into the feeding conv's bias; None = on for ``ttrbr``: on a
            resnet110 QCFS ANN it moved T=4 accuracy from 85.5 to 86.4 %, docs/notes/).
        compensate_stream: (``ttrbr``, pre-add ResNets) the last site of each block also
            corrects the residual stream's error (see ``tune_thresholds``).
        tune_reference: (``ttrbr``) the network the sites aim at: ``ann``, ``clip`` (QCFS
            sites as ``clip(z, 0, λ)``), ``auto`` (clip when T exceeds the QCFS levels; see
            ``tune_thresholds``) or ``select`` (tune towards both, score them and the untuned
            ``qcfs`` / ``robust`` thresholds on ``selection_data``, keep the one
            :mod:`~spikebridge.methods.reference_selection` picks). None
            (the default) = ``select`` when ``selection_data`` is given, else ``auto``.
        tune_epochs, tune_lr: (``ttrbr``) after the per-site search, fit every site's
            per-channel threshold scale and input shift to the ANN's outputs for this many
            epochs with Adam at ``tune_lr`` (0 = off; None = ``DEFAULT_EPOCHS`` for ttrbr;
            ``output_calibration``, our design).
        tune_schedule: (``ttrbr``) that fit's rate schedule: ``cosine`` (to 0) or ``constant``.
        selection_data: (``ttrbr``) labelled held-out ``(images, labels)`` batches, disjoint
            from the calibration images, for ``tune_reference="select"``.
        selection_timesteps: (``ttrbr``, ``select``) further T the candidates are scored at
            besides ``timesteps``: every T the caller will report. The kept thresholds are
            the most accurate at ``timesteps`` of those not significantly below the best
            untuned candidate (``qcfs``, ``robust``) at any of these T (METHODS 2.4).

    Returns the spiking model (eval mode) with ``.conversion_report``
    (:class:`ConversionReport`): a ResNet with ``.config`` (rebuild with
    :func:`build_converted`), or for a user CNN a
    :class:`~spikebridge.methods.graph.SpikingGraph` (rebuild with
    :func:`~spikebridge.methods.graph.build_spiking_graph`).
    """
    channelwise = resolve_channelwise(method, channelwise)
    _check_args(
        method, timesteps, percentile, phi,
        channelwise=channelwise, tune_phi=tune_phi, has_data=calibration_data is not None,
        tune_bias=bool(tune_bias), compensate_stream=compensate_stream,
        tune_epochs=tune_epochs or 0,
    )  # fmt: skip
    tune_bias = method == "ttrbr" if tune_bias is None else tune_bias
    if tune_epochs is None:
        tune_epochs = DEFAULT_EPOCHS if method == "ttrbr" else 0
    ann, snn = _twin(ann, timesteps, phi)  # a user model's ann is its site graph from here
    batches = None
    if calibration_data is not None:
        batches = calibration_batches(calibration_data, batch_size, model_device(ann))
    _set_neurons(snn, activation_thresholds(ann, batches, method, percentile, channelwise), phi)
    initial = _mean_thresholds(snn)
    tuning = calibration = selection = None
    if method == "ttrbr":
        assert batches is not None  # _check_args refuses ttrbr without calibration data
        tune = _TtrbrTuning(
            ann, batches, timesteps, grid, channelwise, tune_phi, progress, tune_guard,
            tune_bias, compensate_stream, tune_epochs, tune_lr, tune_schedule, batch_size,
        )  # fmt: skip
        reference = _resolve_tune_reference(tune_reference, selection_data)
        if reference == "select":
            untuned = _untuned_candidates(ann, snn, batches, percentile, phi)
            snn, tuning, calibration, selection = _tune_and_select(
                tune, snn, selection_data, untuned, selection_timesteps
            )
        else:
            tuning, calibration = tune(snn, reference)
    uses_percentile = method == "robust" or method == "ttrbr"
    report = ConversionReport(
        method, timesteps, phi, percentile if uses_percentile else None, channelwise,
        initial, _mean_thresholds(snn), tuning, calibration, selection,
    )  # fmt: skip
    snn.conversion_report = report  # type: ignore[assignment]
    return snn.eval()


def _twin(ann: nn.Module, timesteps: int, phi: float) -> tuple[nn.Module, ResNet | SpikingGraph]:
    """``(reference ANN, its IF twin)``: a ResNet and its :func:`_spiking_twin`, or a user
    model's :func:`~spikebridge.methods.graph.site_graph` and its spiking graph."""
    if isinstance(ann, ResNet):
        cfg = check_convertible(ann)
        assert cfg is not None  # a ResNet always has one (or check_convertible raised)
        return ann, _spiking_twin(ann, cfg, timesteps, phi)
    reference = site_graph(ann)
    return reference, spiking_from_sites(reference, timesteps, phi)


def selects_reference(reference: str | None) -> bool:
    """Whether ``tune_reference=reference`` makes ttrbr choose its thresholds on held-out
    labelled images: ``select``, on any ANN (tuned towards the ANN, and towards its clip twin
    where it has QCFS sites, against the untuned ``qcfs`` / ``robust`` thresholds)."""
    return reference == "select"


def _resolve_tune_reference(reference: str | None, selection_data: Any) -> str:
    """None -> ``select`` with selection data, else ``auto``. ConfigError for an unknown name
    or ``select`` with no data to select on."""
    if reference is None:
        reference = "auto" if selection_data is None else "select"
    if reference not in TUNE_REFERENCES:
        raise ConfigError(
            f"unknown tuning reference {reference!r}; expected one of {TUNE_REFERENCES}"
        )
    if reference == "select" and selection_data is None:
        raise ConfigError(
            "tune_reference 'select' needs selection_data: labelled (images, labels) batches "
            "held out of the calibration images; pass them, or choose 'ann', 'clip' or 'auto'"
        )
    return reference


@dataclass
class _TtrbrTuning:
    """ttrbr's two tuning stages with their options: per-site search, then output fit."""

    ann: nn.Module
    batches: list[torch.Tensor]
    timesteps: int
    grid: tuple[float, ...] | list[float]
    channelwise: bool
    tune_phi: bool
    progress: bool
    guard: bool
    tune_bias: bool
    compensate_stream: bool
    epochs: int
    lr: float
    schedule: str
    batch_size: int

    def __call__(
        self, snn: nn.Module, reference: str
    ) -> tuple[TuningReport, CalibrationReport | None]:
        """Tune ``snn`` in place towards ``reference`` (``ann`` / ``clip`` / ``auto``)."""
        tuning = tune_thresholds(
            self.ann, snn, self.batches, self.timesteps, self.grid, self.channelwise,
            self.tune_phi, progress=self.progress, guard=self.guard, tune_bias=self.tune_bias,
            compensate_stream=self.compensate_stream, reference=reference,
        )  # fmt: skip
        if self.epochs == 0:
            return tuning, None
        calibration = calibrate_outputs(
            self.ann, snn, self.batches, self.timesteps, self.epochs, self.lr, self.schedule,
            shift=self.tune_bias, channelwise=self.channelwise, reference=reference,
            batch_size=self.batch_size, progress=self.progress,
        )  # fmt: skip
        return tuning, calibration


def _untuned_candidates(
    ann: nn.Module, snn: nn.Module, batches: list[torch.Tensor], percentile: float, phi: float
) -> dict[str, nn.Module]:
    """Copies of the untuned ``snn`` with the baselines' thresholds (METHODS 2.6): ``qcfs``
    (``θ = λ``, where every site has a ceiling) and ``robust`` (per-site percentile)."""
    untuned = {}
    for method in UNTUNED_CANDIDATES:
        if method == "qcfs" and any(_lambda(site) is None for _, site in ann_sites(ann)):
            continue
        twin = copy.deepcopy(snn)
        _set_neurons(twin, activation_thresholds(ann, batches, method, percentile), phi)
        untuned[method] = twin
    return untuned


def _tune_and_select(
    tune: _TtrbrTuning,
    snn: nn.Module,
    selection_data: Any,
    untuned: dict[str, nn.Module],
    scored_at: tuple[int, ...] | list[int],
) -> tuple[nn.Module, TuningReport | None, CalibrationReport | None, SelectionReport]:
    """Tune a copy of ``snn`` towards each reference (the clip twin only where the ANN has
    QCFS sites); keep, among them and the ``untuned`` baselines, the one
    :func:`~spikebridge.methods.reference_selection.choose` picks on the held-out labelled
    ``selection_data`` at the tuning T and every T of ``scored_at``. An untuned winner is
    returned without tuning reports."""
    held_out = labelled_batches(selection_data)
    references = SELECT_CANDIDATES if qcfs_levels(tune.ann) is not None else ("ann",)
    tuned: dict[str, tuple[nn.Module, TuningReport | None, CalibrationReport | None]] = {}
    for reference in references:
        candidate = copy.deepcopy(snn)
        tuned[reference] = (candidate, *tune(candidate, reference))
    tuned |= {name: (twin, None, None) for name, twin in untuned.items()}
    selection = select_reference(
        {k: v[0] for k, v in tuned.items()}, held_out, tune.timesteps, scored_at, set(untuned)
    )
    chosen = tuned[selection.chosen][0]
    chosen.set_timesteps(tune.timesteps)  # type: ignore[operator]
    return (*tuned[selection.chosen], selection)
