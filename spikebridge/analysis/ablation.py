"""Statistics of a seeded ablation: arms paired by seed (METHODS 1.5; ours).

Every arm of an ablation is run with the same seeds, and a seed fixes the data split, the
student's random weights and the data order, so arm B minus arm A on one seed is a paired
difference. With only a few seeds the 95 % t-interval of the mean paired difference is wide,
so :func:`pooled_per_image` also pools the per-image correctness of every seed's test images
and asks McNemar's question of the pooled pairs (:mod:`spikebridge.analysis.paired`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from spikebridge.analysis.paired import paired_rows

CONFIDENCE = 0.95


def epochs_to_reach(curve: list[float | None], target: float | None) -> int | None:
    """First epoch (1-based) whose test accuracy is >= ``target``; None if never."""
    if target is None:
        return None
    for epoch, acc in enumerate(curve, start=1):
        if acc is not None and acc >= target:
            return epoch
    return None


def t_two_sided_cdf(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with ``df`` (integer >= 1) degrees of freedom, in closed
    form (Abramowitz & Stegun 26.7.3-4): with ``c = cos(atan(t / sqrt(df)))``, a finite sum
    in even powers of ``c``."""
    if df < 1:
        raise ValueError(f"degrees of freedom are {df}; expected an integer >= 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 0:  # 1 + c^2/2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c * c
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = c, c  # c + (2/3) c^3 + (2*4)/(3*5) c^5 + ... up to c^(df-2)
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * c * c
        total += term
    return 2 / math.pi * (theta + s * total)


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The ``t`` with ``P(|T| <= t) = confidence`` (bisection on :func:`t_two_sided_cdf`):
    4.303 for 2 degrees of freedom at 95 %."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is {confidence}; expected a fraction in (0, 1)")
    low, high = 0.0, 1.0
    while t_two_sided_cdf(high, df) < confidence:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_cdf(mid, df) < confidence else (low, mid)
    return (low + high) / 2


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None with fewer than 2 values)."""
    values = list(values)
    sd = statistics.stdev(values) if len(values) >= 2 else None
    return {"mean": statistics.fmean(values) if values else None, "sd": sd, "n": len(values)}


def paired_seed_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``b - a`` per seed (same seed order), their mean, sd and the 95 % t-interval of the mean
    (``mean -+ t_{n-1} sd / sqrt(n)``; no interval with fewer than 2 seeds)."""
    if len(a) != len(b):
        raise ValueError(f"arms paired by seed need as many values: {len(a)} vs {len(b)}")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    stats = mean_sd(diffs)
    interval = None
    if stats["sd"] is not None:
        half = t_critical(len(diffs) - 1) * stats["sd"] / math.sqrt(len(diffs))
        interval = [stats["mean"] - half, stats["mean"] + half]
    return {"per_seed": diffs, **stats, "t_interval_95": interval}


def pooled_per_image(
    correct_a: Sequence[torch.Tensor], correct_b: Sequence[torch.Tensor]
) -> dict[str, Any]:
    """McNemar's exact test and the 95 % Wald interval of ``b - a`` over the per-image
    correctness (bool ``[N_seed]`` each, seed by seed in the same order) pooled over seeds."""
    a = torch.cat([c.reshape(1, -1) for c in correct_a], dim=1)
    b = torch.cat([c.reshape(1, -1) for c in correct_b], dim=1)
    row = paired_rows(a, b, [1])[0].to_dict()
    row.pop("t")
    return {**row, "images": int(a.shape[-1])}


def epochs_to_baseline_final(
    curves: Mapping[str, Sequence[Sequence[float | None]]], baseline: str
) -> dict[str, list[int | None]]:
    """Per arm and seed: the first epoch (1-based) whose accuracy reaches the SAME seed's
    baseline final-epoch accuracy (None: never). ``curves[arm][i]``: seed i's per-epoch
    accuracies."""
    targets = [curve[-1] if curve else None for curve in curves[baseline]]
    return {
        arm: [epochs_to_reach(list(c), t) for c, t in zip(per_seed, targets, strict=False)]
        for arm, per_seed in curves.items()
    }


def pairwise(arms: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair ``(a, b)`` with ``a`` listed before ``b`` (b - a is reported)."""
    return [(a, b) for i, a in enumerate(arms) for b in arms[i + 1 :]]
