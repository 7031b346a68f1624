"""Shared by the conversion tests (not a test module)."""

import torch
from torch import nn


def calibrate_bn(ann: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BN running statistics from ``x`` (cumulative average), then eval mode."""
    for m in ann.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    ann.train()
    with torch.no_grad():
        ann(x)
    return ann.eval()
