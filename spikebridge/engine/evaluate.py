"""Accuracy and loss at every time-step t <= T in one pass (METHODS 3).

A spiking model's prediction after ``t`` steps is the argmax of the running mean of its
per-step logits ``z̄_t = (1/t) Σ_{s<=t} z_s``. Neurons are causal (step ``s`` depends only
on steps ``<= s``), so one run over ``T`` steps gives the accuracy of every ``t <= T`` for
the price of one. An ANN is the case ``T = 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from spikebridge.errors import DataError


def running_mean(steps: torch.Tensor) -> torch.Tensor:
    """``[T, B, K]`` per-step logits -> ``[T, B, K]`` mean over the first ``t`` steps."""
    counts = torch.arange(1, steps.shape[0] + 1, device=steps.device, dtype=steps.dtype)
    return steps.cumsum(0) / counts.view(-1, 1, 1)


def model_timesteps(model: nn.Module) -> int:
    """The T a model simulates (1 for an ANN)."""
    return int(model.timesteps) if getattr(model, "spiking", False) else 1


@contextmanager
def simulating(model: nn.Module, timesteps: int | None) -> Iterator[None]:
    """Eval mode, and a spiking model set to ``timesteps`` steps (None = its own T), both
    restored on exit."""
    spiking = getattr(model, "spiking", False)
    before, was_training = model_timesteps(model), model.training
    if spiking and timesteps is not None:
        model.set_timesteps(timesteps)
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if spiking:
            model.set_timesteps(before)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    timesteps: int | None = None,
) -> dict:
    """Evaluate ``model`` (eval mode) on every batch of ``loader``.

    ``timesteps`` simulates a spiking model for that many steps during this call (restored
    afterwards); None keeps the model's T. Returns ``{"accuracy": acc at T, "loss": CE at T,
    "accuracy_by_timestep": {"1": ..., ..., "T": ...}, "loss_by_timestep": {...},
    "samples": N}``, accuracies as fractions.
    """
    with simulating(model, timesteps):
        correct, loss_sum, n = _accumulate(model, loader)
    T = len(correct)
    acc = (correct.double() / max(n, 1)).tolist()
    loss = (loss_sum.double() / max(n, 1)).tolist()
    return {
        "accuracy": acc[-1],
        "loss": loss[-1],
        "accuracy_by_timestep": {str(t + 1): acc[t] for t in range(T)},
        "loss_by_timestep": {str(t + 1): loss[t] for t in range(T)},
        "samples": n,
    }


def _forward_steps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-step logits ``[T, B, K]``; a model without ``forward_steps`` is an ANN (T = 1)."""
    if hasattr(model, "forward_steps"):
        return model.forward_steps(images)
    return model(images).unsqueeze(0)


def _accumulate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-t correct counts ``[T]``, summed CE ``[T]`` and the number of samples."""
    correct = loss_sum = None
    n = 0
    device = next((p.device for p in model.parameters()), None)
    for images, labels in loader:
        if device is not None:  # a plain DataLoader yields CPU tensors; no-op when there
            images, labels = images.to(device), labels.to(device)
        steps = _forward_steps(model, images).float()  # [T, B, K]
        mean = running_mean(steps)
        hits = (mean.argmax(-1) == labels).sum(1)  # [T]
        ce = F.cross_entropy(mean.flatten(0, 1), labels.repeat(mean.shape[0]), reduction="none")
        batch_loss = ce.view(mean.shape[0], -1).sum(1)  # [T]
        correct = hits if correct is None else correct + hits
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        n += len(labels)
    if correct is None:
        raise DataError("evaluate got a loader with no batches; expected at least one image.")
    return correct.cpu(), loss_sum.cpu(), n


@torch.no_grad()
def per_image_correct(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    timesteps: int | None = None,
) -> torch.Tensor:
    """``[T, N]`` bool: is image ``n`` classified right after ``t + 1`` steps (``[1, N]`` for
    an ANN). For paired comparisons of two models on the same images
    (:mod:`spikebridge.analysis.paired`)."""
    with simulating(model, timesteps):
        parts = [running_mean(_forward_steps(model, x).float()).argmax(-1) == y for x, y in loader]
    if not parts:
        raise DataError("per_image_correct got a loader with no batches; expected images.")
    return torch.cat(parts, dim=1).cpu()
