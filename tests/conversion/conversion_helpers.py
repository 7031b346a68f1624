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


def convert_by_name(ann, method, data, timesteps, held_out=None, **options):  # type: ignore[no-untyped-def]
    """``convert`` with the method named and its options as keywords: the spiking network of
    ``convert(ann, method_config(method, timesteps=T, **options), data, held_out=...)``."""
    from spikebridge.conversion import convert, method_config

    config = method_config(method, timesteps=timesteps, **options)
    snn, report = convert(ann, config, data, held_out=held_out)
    assert snn.conversion_report is report
    return snn
