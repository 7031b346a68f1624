"""Paired comparison statistics (exact McNemar, Wald interval of the paired difference)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.analysis.paired import format_paired, mcnemar_exact, paired_rows


def test_mcnemar_exact_matches_hand_computed_binomial_tails() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # a symmetric tail doubled is capped at 1
    assert math.isclose(mcnemar_exact(0, 5), 2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert math.isclose(mcnemar_exact(10, 2), 2 * (1 + 12 + 66) / 4096)  # Bin(12, 1/2)
    assert math.isclose(mcnemar_exact(2, 10), mcnemar_exact(10, 2))
    # Large counts stay finite (log-space binomial terms): 60 vs 100 disagreements.
    assert 0.0 < mcnemar_exact(60, 100) < 0.01
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_rows_count_disagreements_per_t_and_broadcast_an_ann() -> None:
    # A (an ANN): right on images 0-5 of 8. B (an SNN, 2 steps): t=1 right on 0-2 and 6;
    # t=2 right on 0-6.
    a = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    r1, r2 = paired_rows(a, b, [1, 2])
    assert (r1.a_only, r1.b_only, r1.acc_a, r1.acc_b) == (3, 1, 0.75, 0.5)
    assert math.isclose(r1.diff, -2 / 8) and math.isclose(r1.p_value, 2 * (1 + 4) / 16)
    half = 1.959963984540054 * math.sqrt((4 / 8 - (2 / 8) ** 2) / 8)
    assert math.isclose(r1.ci_low, -0.25 - half) and math.isclose(r1.ci_high, -0.25 + half)
    assert (r2.a_only, r2.b_only, r2.acc_b) == (0, 1, 0.875) and r2.p_value == 1.0
    assert "McNemar p" in format_paired([r1, r2], "ann", "snn")
    with pytest.raises(ValueError, match="beyond"):
        paired_rows(b, a, [3])
    with pytest.raises(ValueError, match="image counts"):
        paired_rows(a, b[:, :4], [1])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_swapping_the_models_negates_the_difference_and_keeps_p(n, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, 1, n, generator=gen) < 0.7
    (ab,), (ba,) = paired_rows(a, b, [1]), paired_rows(b, a, [1])
    assert math.isclose(ab.diff, -ba.diff, abs_tol=1e-12) and ab.p_value == ba.p_value
    assert 0.0 <= ab.p_value <= 1.0 and ab.ci_low <= ab.diff <= ab.ci_high
    assert math.isclose(ab.diff, ab.acc_b - ab.acc_a, abs_tol=1e-12)
