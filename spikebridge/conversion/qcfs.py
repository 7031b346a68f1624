"""``qcfs`` (Bu et al., 2022; METHODS 2.6): an ANN trained with Clip / QCFS activations
converts with ``θ_l = λ_l`` (the site's learned ceiling) and ``φ = 0.5``; no calibration
images and no statistics. A ReLU site has no λ, so such an ANN is refused by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spikebridge.conversion.registry import ConversionMethod, MethodConfig, register_method
from spikebridge.conversion.sites import ann_sites, site_ceiling, site_thresholds
from spikebridge.errors import ModelError


@dataclass(frozen=True, kw_only=True)
class QcfsConfig(MethodConfig):
    """Options of ``qcfs``: only the shared ones (one λ per layer, nothing to measure)."""


@register_method
class Qcfs(ConversionMethod):
    """θ = λ of every clip/qcfs site."""

    name, config_class = "qcfs", QcfsConfig
    summary = "qcfs (Bu 2022, needs a clip/qcfs ANN): θ = the ANN's learned ceiling λ"
    needs_calibration = False
    ann_activations = ("qcfs",)

    def thresholds(
        self, config: Any, ann: nn.Module, batches: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        for name, site in ann_sites(ann):
            if site_ceiling(name, site) is None:
                raise ModelError(
                    f"method 'qcfs' needs an ANN trained with clip or qcfs activations, but site "
                    f"{name!r} is a ReLU; use 'robust', 'maxnorm' or 'ttrbr'"
                )
        return site_thresholds(ann, batches, None, ceiling=True)
