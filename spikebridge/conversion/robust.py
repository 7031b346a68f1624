"""``robust`` (Rueckauer et al., 2017; METHODS 2.6): θ_l is the ``percentile`` (99.9 /
99.99) of the positive pre-activations of site ``l`` over the calibration images (capped at
λ on clip/qcfs sites), robust to the few outliers max-norm follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.registry import ConversionMethod, MethodConfig, option, register_method
from spikebridge.conversion.sites import DEFAULT_PERCENTILE, check_percentile, site_thresholds


@dataclass(frozen=True, kw_only=True)
class RobustConfig(MethodConfig):
    """Options of ``robust``."""

    percentile: float = option(DEFAULT_PERCENTILE, "percentile of the positive pre-activations")
    channelwise: bool = option(False, "one threshold per channel instead of per layer")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_percentile(self.percentile)


@register_method
class Robust(ConversionMethod):
    """Robust-norm: a high percentile instead of the maximum."""

    name, config_class = "robust", RobustConfig
    summary = "robust (Rueckauer 2017): θ = a percentile of the positive pre-activations"

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        return site_thresholds(ann, batches, config.percentile, config.channelwise)
