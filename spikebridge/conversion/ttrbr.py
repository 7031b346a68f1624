"""``ttrbr`` (**our design** on the TTRBR abstract; METHODS 2.4): threshold tuning towards a
reference network, then output calibration, with the reference chosen on held-out images.

Initial thresholds: ``λ`` on clip/qcfs sites, the robust percentile on ReLU sites (per
channel by default). Then, at the target T:

1. :func:`~spikebridge.conversion.tuning.tune_thresholds`: a threshold scale per site (and
   channel), by default also a per-channel shift of the site's input current folded into
   the conv before it (``tune_bias``), a block guard (``tune_guard``) and, on pre-add
   ResNets, optionally a stream correction (``compensate_stream``);
2. :func:`~spikebridge.conversion.output_calibration.calibrate_outputs` for ``tune_epochs``
   (0 = off): every site's threshold scale and shift fitted to the ANN's outputs.

The network these aim at (``tune_reference``): the ANN, its clip twin, ``auto`` (clip when T
exceeds the QCFS levels), or ``select``: tune towards both and keep, among them and the
untuned ``qcfs`` / ``robust`` thresholds, the set :mod:`~spikebridge.conversion.selection`
picks on labelled held-out images at the tuning T and every T of ``select_at``. The default
(None) is ``select`` when held-out images are given, else ``auto``. Residual block
restructuring (METHODS 2.5) is the ANN's ``block="pre-add"``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.output_calibration import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    CalibrationReport,
    calibrate_outputs,
)
from spikebridge.conversion.reference import REFERENCES, qcfs_levels
from spikebridge.conversion.registry import (
    ConversionMethod,
    MethodConfig,
    Tuned,
    option,
    register_method,
)
from spikebridge.conversion.selection import labelled_batches, select_reference
from spikebridge.conversion.sites import (
    DEFAULT_PERCENTILE,
    ann_sites,
    check_percentile,
    site_ceiling,
    site_thresholds,
)
from spikebridge.conversion.tuning import (
    DEFAULT_SCALE_GRID,
    TuningReport,
    check_grid,
    tune_thresholds,
)
from spikebridge.conversion.twin import set_neurons
from spikebridge.errors import ConfigError

TUNE_REFERENCES = (*REFERENCES, "select")  # select: per ANN, on held-out labelled images
SELECT_CANDIDATES = ("ann", "clip")  # tuned candidates of select, in tie-break order


@dataclass(frozen=True, kw_only=True)
class TtrbrConfig(MethodConfig):
    """Options of ``ttrbr`` (ours). ``timesteps`` is the T the thresholds are tuned at."""

    percentile: float = option(DEFAULT_PERCENTILE, "robust percentile of the ReLU sites")
    channelwise: bool = option(
        True, "per-channel thresholds (ahead of per-layer on all 8 ANNs of the CPU sweep at "
        "T = 8, docs/notes/results-history.md)",
    )  # fmt: skip
    tune_guard: bool = option(
        True, "put back a residual block's tuned thresholds where its output error grows"
    )
    tune_bias: bool = option(
        True, "also try shifting each site's input current by the mean ANN-SNN gap per "
        "channel, folded into the conv bias",
    )  # fmt: skip
    compensate_stream: bool = option(
        False, "pre-add ResNets: each block's last site also corrects the residual stream's error"
    )
    tune_reference: str | None = option(
        None, "the network the sites aim at: ann, clip (QCFS sites as clip(z, 0, λ)), auto "
        "(clip when T exceeds the QCFS levels) or select (tune towards both, keep the best of "
        "them and the untuned qcfs / robust thresholds on held-out labelled images); none = "
        "select when held-out images are given, else auto",
        choices=(None, *TUNE_REFERENCES),
    )  # fmt: skip
    tune_epochs: int = option(
        DEFAULT_EPOCHS, "epochs of output calibration after the per-site search (0 = off)"
    )
    tune_lr: float = option(DEFAULT_LR, "Adam learning rate of the output calibration")
    scale_grid: tuple[float, ...] = option(DEFAULT_SCALE_GRID, "threshold scales tried per site")
    select_at: tuple[int, ...] = option(
        (), "select: further T the candidates are scored at (every T the caller reports)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_percentile(self.percentile)
        check_grid(self.scale_grid)
        if self.tune_reference not in (None, *TUNE_REFERENCES):
            raise ConfigError(
                f"unknown tuning reference {self.tune_reference!r}; expected one of "
                f"{TUNE_REFERENCES}"
            )
        if isinstance(self.tune_epochs, bool) or self.tune_epochs < 0:
            raise ConfigError(f"tune_epochs must be >= 0, got {self.tune_epochs}")
        if self.tune_lr <= 0:
            raise ConfigError(f"tune_lr must be positive, got {self.tune_lr}")


@register_method
class Ttrbr(ConversionMethod):
    """Threshold tuning + output calibration + reference selection (ours)."""

    name, config_class = "ttrbr", TtrbrConfig
    summary = (
        "ttrbr (OUR design on the TTRBR abstract): threshold + bias tuning at --tune-at, then "
        "output calibration, METHODS 2.4"
    )
    tunes = True
    ann_activations = ("relu", "qcfs")

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        return site_thresholds(ann, batches, config.percentile, config.channelwise, ceiling=True)

    def needs_held_out(self, config: Any) -> bool:
        return config.tune_reference in (None, "select")

    def tune(
        self, config: Any, ann: nn.Module, snn: nn.Module, batches: list[torch.Tensor] | None,
        held_out: Any,
    ) -> Tuned:  # fmt: skip
        assert batches is not None  # convert() refuses ttrbr without calibration data
        reference = _resolve_tune_reference(config.tune_reference, held_out)
        stages = _Stages(ann, batches, config)
        if reference != "select":
            return Tuned(snn, *stages(snn, reference))
        untuned = _untuned_candidates(ann, snn, batches, config.percentile, config.phi)
        return _tune_and_select(stages, snn, held_out, untuned, config.select_at)


def _resolve_tune_reference(reference: str | None, held_out: Any) -> str:
    """None -> ``select`` with held-out data, else ``auto``; ConfigError for ``select`` with
    no data to select on."""
    if reference is None:
        reference = "auto" if held_out is None else "select"
    if reference == "select" and held_out is None:
        raise ConfigError(
            "tune_reference 'select' needs held_out: labelled (images, labels) batches "
            "held out of the calibration images; pass them, or choose 'ann', 'clip' or 'auto'"
        )
    return reference


@dataclass
class _Stages:
    """ttrbr's two tuning stages with their options: per-site search, then output fit."""

    ann: nn.Module
    batches: list[torch.Tensor]
    config: TtrbrConfig

    def __call__(
        self, snn: nn.Module, reference: str
    ) -> tuple[TuningReport, CalibrationReport | None]:
        """Tune ``snn`` in place towards ``reference`` (``ann`` / ``clip`` / ``auto``)."""
        c = self.config
        tuning = tune_thresholds(
            self.ann, snn, self.batches, c.timesteps, c.scale_grid, c.channelwise,
            batch_size=c.chunk_size, progress=c.progress, guard=c.tune_guard,
            tune_bias=c.tune_bias, compensate_stream=c.compensate_stream, reference=reference,
        )  # fmt: skip
        if c.tune_epochs == 0:
            return tuning, None
        calibration = calibrate_outputs(
            self.ann, snn, self.batches, c.timesteps, c.tune_epochs, c.tune_lr,
            shift=c.tune_bias, channelwise=c.channelwise, reference=reference,
            batch_size=c.chunk_size, progress=c.progress,
        )  # fmt: skip
        return tuning, calibration


def _untuned_candidates(
    ann: nn.Module, snn: nn.Module, batches: list[torch.Tensor], percentile: float, phi: float
) -> dict[str, nn.Module]:
    """Copies of the untuned ``snn`` with the baselines' per-layer thresholds (METHODS 2.6):
    ``qcfs`` (``θ = λ``, where every site has a ceiling) and ``robust`` (the percentile)."""
    untuned = {}
    if all(site_ceiling(name, site) is not None for name, site in ann_sites(ann)):
        untuned["qcfs"] = site_thresholds(ann, batches, None, ceiling=True)
    untuned["robust"] = site_thresholds(ann, batches, percentile)
    twins = {}
    for name, thresholds in untuned.items():
        twin = copy.deepcopy(snn)
        set_neurons(twin, thresholds, phi)
        twins[name] = twin
    return twins


def _tune_and_select(
    stages: _Stages,
    snn: nn.Module,
    held_out: Any,
    untuned: dict[str, nn.Module],
    scored_at: tuple[int, ...],
) -> Tuned:
    """Tune a copy of ``snn`` towards each reference (the clip twin only where the ANN has
    QCFS sites); keep, among them and the ``untuned`` baselines, the one
    :func:`~spikebridge.conversion.selection.choose` picks on the held-out labelled images
    at the tuning T and every T of ``scored_at``. An untuned winner has no tuning reports."""
    batches = labelled_batches(held_out)
    references = SELECT_CANDIDATES if qcfs_levels(stages.ann) is not None else ("ann",)
    tuned: dict[str, tuple[nn.Module, TuningReport | None, CalibrationReport | None]] = {}
    for reference in references:
        candidate = copy.deepcopy(snn)
        tuned[reference] = (candidate, *stages(candidate, reference))
    tuned |= {name: (twin, None, None) for name, twin in untuned.items()}
    T = stages.config.timesteps
    selection = select_reference(
        {k: v[0] for k, v in tuned.items()}, batches, T, scored_at, set(untuned)
    )
    chosen, tuning, calibration = tuned[selection.chosen]
    chosen.set_timesteps(T)  # type: ignore[operator]
    return Tuned(chosen, tuning, calibration, selection, selection.chosen)
