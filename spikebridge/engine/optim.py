"""Optimizers (SGD, AdamW) and learning-rate schedules, stepped once per iteration.

Every schedule is a pure function of the global step (``LambdaLR``), so resuming only needs
the step count stored in the scheduler's state dict: the learning rate after a resume is
exactly the one an uninterrupted run would use.

- ``multistep``: ``lr · γ^k`` with ``k`` the number of milestones reached; milestone ``f``
  (a fraction of the epochs) falls after epoch ``max(1, round(f · epochs))``, so the rate
  changes only at epoch boundaries and never before the first epoch (IDSNN: ×0.1 at 60/120/160 of 200 = fractions 0.3/0.6/0.8).
- ``cosine`` (the default): a linear warm-up from 0 to ``lr`` over the first ``warmup``
  fraction of the steps, then ``lr · ½(1 + cos(π · s))`` with ``s`` the fraction of the
  remaining steps done, down to 0. It has no epoch-count-dependent kink, so a 3-epoch run
  and a 200-epoch run follow the same shape (a multistep schedule scaled to 3 epochs cuts the
  rate right after the first epoch).
- ``multistep`` also honours ``warmup`` (0 in the ``idsnn-paper`` preset).
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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with weight decay on all parameters (the IDSNN recipe), or AdamW with decoupled
    decay on weight matrices and kernels only (norm scales, biases and thresholds are not
    pulled towards 0, the usual AdamW practice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = float(cfg.lr or 0.0), float(cfg.weight_decay or 0.0)
    if cfg.optimizer == "adamw":
        groups = [
            {"params": [p for p in params if p.dim() > 1], "weight_decay": wd},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd
    )


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def _warm(step: int, warm: int) -> float:
    """Linear warm-up factor: ``(step + 1) / warm`` during the first ``warm`` steps, then 1
    (the first step already moves, at ``lr / warm``)."""
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def lr_factor(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of ``cfg.lr`` at each global step (see the module docstring)."""
    total = epochs * steps_per_epoch
    warm = round(cfg.warmup * total)
    if cfg.schedule == "multistep":
        marks = [max(1, round(f * epochs)) * steps_per_epoch for f in cfg.milestones]
        return lambda step: _warm(step, warm) * cfg.gamma ** sum(step >= m for m in marks)
    if cfg.schedule == "cosine":
        return lambda step: (
            _warm(step, warm)
            if step < warm
            else _cos_between(1.0, 0.0, (step - warm) / max(1, total - warm))
        )
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
