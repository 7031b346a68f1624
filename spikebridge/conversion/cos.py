"""``cos``: calibrating offset spikes (Hao, Ding, Bu, Huang, Yu, ICLR 2023; METHODS 2.7).

The thresholds are the untuned baseline's -- ``θ = λ`` (and ``φ = 1/2``) at every Clip / QCFS
site, the robust percentile at a ReLU site -- and every IF neuron then calibrates its own
initial potential on each input: a dry pass over the first ``ρ`` steps of its input current
shows, from the residual potential, whether it fired one spike more or one fewer than the
charge it received calls for, and the real pass over the whole window starts from ``v_0``
shifted down or up by the distance that removes or adds exactly that spike
(:func:`~spikebridge.nn.neurons.offset_calibrated_v0`). Each further round repeats the dry
pass and corrects one more spike. Nothing is tuned on data: the calibration runs inside every
forward pass, per neuron and per input (the calibration images measure ReLU sites only; a
QCFS ANN leaves them unused).

Latency, counted honestly: each neuron runs ``rounds·ρ`` dry steps before the ``T`` steps
that are read out, so a reading at ``t`` costs ``t + rounds·ρ`` time-steps
(:func:`total_timesteps`); the dry steps reuse the input currents of the first ``ρ`` steps,
which hardware either buffers or receives again (:func:`total_sops` counts them again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.registry import (
    ConversionMethod,
    MethodConfig,
    Tuned,
    option,
    register_method,
)
from spikebridge.conversion.sites import (
    DEFAULT_PERCENTILE,
    check_percentile,
    site_thresholds,
    snn_sites,
)
from spikebridge.errors import ConfigError
from spikebridge.nn.activations import QCFS
from spikebridge.nn.neurons import dry_steps


@dataclass(frozen=True, kw_only=True)
class CosConfig(MethodConfig):
    """Options of ``cos`` (METHODS 2.7)."""

    presim_steps: int | None = option(
        None, "cos: ρ, the dry-pass steps before the readout (none: the ANN's QCFS levels, "
        "else T; clipped to the simulated T); a reading at t costs t + rounds·ρ steps",
    )  # fmt: skip
    offset_rounds: int = option(
        1, "cos: dry passes, each correcting one more offset spike (the authors' code: 1)"
    )
    percentile: float = option(
        DEFAULT_PERCENTILE, "percentile of the positive pre-activations (cos: ReLU sites only)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_percentile(self.percentile)
        for name, value in (("presim_steps", self.presim_steps), ("offset_rounds", self.offset_rounds)):  # fmt: skip
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name} is {value!r}; expected an integer >= 1.")


def resolve_steps(config: CosConfig, ann: nn.Module) -> int:
    """ρ for ``ann``: ``presim_steps``, else its QCFS levels (the window over which the IF
    neuron reproduces QCFS, so the residual judges the offset against the quantization the
    ANN was trained for; the authors' code: L = ρ = 4), else the config's T."""
    if config.presim_steps is not None:
        return config.presim_steps
    levels = [m.levels for m in ann.modules() if isinstance(m, QCFS)]
    return min(levels) if levels else config.timesteps


def set_offset_calibration(snn: nn.Module, steps: int, rounds: int = 1) -> int:
    """Offset-spike calibration on (``steps >= 1``) or off (0) at every IF site of a converted
    network; returns the number of sites."""
    sites = snn_sites(snn)
    for _, site in sites:
        site.neuron.set_offset_calibration(steps, rounds)
    return len(sites)


@register_method
class Cos(ConversionMethod):
    """Untuned thresholds, then each neuron's offset spike calibrated per input."""

    name, config_class = "cos", CosConfig
    summary = (
        "cos (Hao 2023): per neuron and input, a dry pass of ρ steps shifts the initial "
        "potential to remove or add the one offset spike (latency t + ρ)"
    )
    # θ = λ at clip/qcfs sites; a ReLU site is measured, so a run draws the images (a QCFS
    # ANN leaves them unused)
    ann_activations = ("qcfs", "relu")

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        return site_thresholds(ann, batches, config.percentile, ceiling=True)

    def tune(
        self, config: Any, ann: nn.Module, snn: nn.Module, batches: list[torch.Tensor] | None,
        held_out: Any,
    ) -> Tuned:  # fmt: skip
        set_offset_calibration(snn, resolve_steps(config, ann), config.offset_rounds)
        return Tuned(snn)


def total_timesteps(snn: nn.Module, t: int, simulated: int) -> int:
    """Time-steps a reading at ``t`` costs: ``t`` read out plus the dry steps."""
    return t + dry_steps(snn, simulated)


def total_sops(sops_by_t: dict[Any, float], snn: nn.Module, t: int, simulated: int) -> float:
    """SOPs of a reading at ``t``, dry passes included: each dry pass receives again the
    events of the first ρ steps (``sops_by_t``: cumulative SOPs per image by t, as
    :func:`~spikebridge.analysis.ops.count_sops` gives them, keys int or str)."""
    by_t = {int(k): float(v) for k, v in sops_by_t.items()}
    neuron = snn_sites(snn)[0][1].neuron
    rho = min(neuron.offset_steps, simulated)
    return by_t[t] + (neuron.offset_rounds * by_t[rho] if rho else 0.0)
