"""Training tasks: what one batch's loss is (DESIGN "one training loop, many tasks").

A task is any callable ``task(model, images, labels) -> dict`` returning at least
``"loss"`` (scalar tensor to back-propagate) and ``"output"`` (logits ``[B, K]``, used for
the training accuracy). Any other key (``"ce_loss"``, ``"kd_loss"``, a firing rate, ...)
must be a scalar (tensor or float); the loop averages it over the epoch and logs it.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Task(Protocol):
    """The task contract of :func:`spikebridge.engine.fit`."""

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...


class ClassificationTask:
    """Cross-entropy on the model's logits ``[B, K]``.

    For a spiking model, ``model(images)`` is the mean over T of per-step logits (METHODS
    1.1 output), so the loss is ``CE(mean_t z_t, y)`` as in the IDSNN authors' code.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        output = model(images)
        loss = F.cross_entropy(output, labels, label_smoothing=self.label_smoothing)
        return {"loss": loss, "output": output}
