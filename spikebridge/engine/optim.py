"""SGD and learning-rate schedules, stepped once per iteration.

Every schedule is a pure function of the global step (``LambdaLR``), so resuming only needs
the step count stored in the scheduler's state dict: the learning rate after a resume is
exactly the one an uninterrupted run would use.

- ``multistep``: ``lr · γ^k`` with ``k`` the number of milestones reached; milestone ``f``
  (a fraction of the epochs) falls after epoch ``max(1, round(f · epochs))``, so the rate
  changes only at epoch boundaries and never before the first epoch (IDSNN: ×0.1 at 60/120/160 of 200 = fractions 0.3/0.6/0.8).
- ``cosine``: ``lr · ½(1 + cos(π · step / total))``, from ``lr`` down to 0.
- ``onecycle``: cosine warm-up from ``lr / 25`` to ``lr`` over the first 30 % of the steps,
  then cosine annealing to ``lr / 25e4`` (the shape of ``torch``'s ``OneCycleLR``; momentum
  is kept constant).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from spikebridge.config import OptimConfig
from spikebridge.errors import ConfigError

ONECYCLE_WARMUP = 0.3  # fraction of the steps spent warming up
ONECYCLE_DIV = 25.0  # initial lr = lr / ONECYCLE_DIV
ONECYCLE_FINAL_DIV = 1e4  # final lr = initial lr / ONECYCLE_FINAL_DIV


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over all parameters (weight decay on all of them, as in the IDSNN recipe)."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def lr_factor(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of ``cfg.lr`` at each global step (see the module docstring)."""
    total = epochs * steps_per_epoch
    if cfg.schedule == "multistep":
        marks = [max(1, round(f * epochs)) * steps_per_epoch for f in cfg.milestones]
        return lambda step: cfg.gamma ** sum(step >= m for m in marks)
    if cfg.schedule == "cosine":
        return lambda step: _cos_between(1.0, 0.0, step / total)
    if cfg.schedule == "onecycle":
        warm = max(1, round(ONECYCLE_WARMUP * total))
        low, final = 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        return lambda step: (
            _cos_between(low, 1.0, step / warm)
            if step < warm
            else _cos_between(1.0, final, (step - warm) / max(1, total - warm))
        )
    raise ConfigError(f"unknown schedule {cfg.schedule!r}; expected multistep, cosine, onecycle.")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR``; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, epochs, steps_per_epoch))
