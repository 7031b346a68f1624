"""``maxnorm`` (Diehl et al., 2015; METHODS 2.6): θ_l is the largest pre-activation of site
``l`` over the calibration images (capped at λ on clip/qcfs sites)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.registry import ConversionMethod, MethodConfig, option, register_method
from spikebridge.conversion.sites import site_thresholds


@dataclass(frozen=True, kw_only=True)
class MaxnormConfig(MethodConfig):
    """Options of ``maxnorm``."""

    channelwise: bool = option(False, "one threshold per channel instead of per layer")


@register_method
class Maxnorm(ConversionMethod):
    """Max-norm: the published per-layer rule (optionally per channel)."""

    name, config_class = "maxnorm", MaxnormConfig
    summary = "maxnorm (Diehl 2015): θ = the largest pre-activation on the calibration images"

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        return site_thresholds(ann, batches, None, config.channelwise)
