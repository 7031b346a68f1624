"""One ResNet family for ANN and SNN, built by name."""

from spikebridge.models.registry import (
    ModelConfig,
    build,
    build_from_config,
    list_models,
    register_model,
)
from spikebridge.models.resnet import ActivationSpec, BasicBlock, Bottleneck, ResNet

__all__ = [
    "ActivationSpec", "BasicBlock", "Bottleneck", "ModelConfig", "ResNet", "build",
    "build_from_config", "list_models", "register_model",
]  # fmt: skip
