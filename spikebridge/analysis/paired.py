"""Paired comparison of two classifiers on the same test images (METHODS 3, ours).

Two conversions of one ANN often differ by a few tenths of a point, which on a few thousand
test images is a handful of images. Because both models see the SAME images, the right
question is about the images where they disagree: ``a_only`` (A right, B wrong) and
``b_only`` (B right, A wrong). McNemar's exact test asks whether ``b_only`` vs ``a_only`` is
a fair coin; the interval is the Wald interval of the paired difference
``(b_only − a_only) / n`` (Agresti, *Categorical Data Analysis*, 10.1). Images both models get
right (or wrong) carry no information about which is better and do not enter either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: ``P(X <= min)`` doubled (capped at 1) for
    ``X ~ Binomial(a_only + b_only, 1/2)``; 1.0 when the models never disagree."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must be >= 0, got {a_only}, {b_only}")
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    log_half_n = n * math.log(0.5)
    tail = sum(math.exp(_log_comb(n, i) + log_half_n) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


@dataclass(frozen=True)
class PairedRow:
    """Model B against model A at one time-step (accuracies and difference as fractions)."""

    t: int
    acc_a: float
    acc_b: float
    diff: float  # acc_b − acc_a
    a_only: int  # images A classifies right and B wrong
    b_only: int  # images B classifies right and A wrong
    p_value: float  # exact McNemar, two-sided
    ci_low: float  # 95 % Wald interval of diff
    ci_high: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_rows(
    correct_a: torch.Tensor, correct_b: torch.Tensor, timesteps: list[int]
) -> list[PairedRow]:
    """One :class:`PairedRow` per t in ``timesteps`` from per-image correctness ``[T, N]``
    (bool) of both models on the same N images; a model with one row (an ANN) is the same
    at every t."""
    if correct_a.shape[-1] != correct_b.shape[-1]:
        raise ValueError(
            f"the models were scored on different image counts: {correct_a.shape[-1]} vs "
            f"{correct_b.shape[-1]}"
        )
    n = correct_a.shape[-1]
    rows = []
    for t in timesteps:
        a, b = _at(correct_a, t), _at(correct_b, t)
        a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
        diff = (b_only - a_only) / n
        var = max((a_only + b_only) / n - diff**2, 0.0) / n
        half = Z_95 * math.sqrt(var)
        rows.append(
            PairedRow(
                t,
                a.double().mean().item(),
                b.double().mean().item(),
                diff,
                a_only,
                b_only,
                mcnemar_exact(a_only, b_only),
                diff - half,
                diff + half,
            )  # fmt: skip
        )
    return rows


def _at(correct: torch.Tensor, t: int) -> torch.Tensor:
    """Row ``t`` (1-based) of ``[T, N]``; an ANN's single row stands for every t."""
    if correct.shape[0] == 1:
        return correct[0]
    if t > correct.shape[0]:
        raise ValueError(f"t = {t} is beyond the {correct.shape[0]} simulated steps")
    return correct[t - 1]


def format_paired(rows: list[PairedRow], name_a: str, name_b: str) -> str:
    """A plain-text table: accuracies, difference with its 95 % interval, disagreements, p."""
    head = (
        f"A = {name_a}\nB = {name_b}\n"
        f"{'t':>4} {'A':>8} {'B':>8} {'B − A':>8} {'95 % CI':>17} {'A only':>7} {'B only':>7}"
        f" {'McNemar p':>10}"
    )
    lines = [head]
    for r in rows:
        ci = f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]"
        lines.append(
            f"{r.t:>4} {100 * r.acc_a:>7.2f}% {100 * r.acc_b:>7.2f}% {100 * r.diff:>+8.2f}"
            f" {ci:>17} {r.a_only:>7} {r.b_only:>7} {r.p_value:>10.3g}"
        )
    return "\n".join(lines)
