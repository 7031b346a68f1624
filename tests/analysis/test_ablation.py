"""Statistics of a seeded ablation (paired seed differences, t-intervals, pooled McNemar,
epochs to reach the baseline's final accuracy) on hand-made numbers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikebridge.analysis.ablation import (
    epochs_to_baseline_final,
    mean_sd,
    paired_seed_difference,
    pairwise,
    pooled_per_image,
    t_critical,
    t_two_sided_cdf,
)

# Student's t 97.5 % quantiles from printed tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE.items()))
def test_t_critical_matches_the_printed_table(df: int, expected: float) -> None:
    assert math.isclose(t_critical(df), expected, abs_tol=5e-4)


def test_t_cdf_has_closed_forms_for_one_and_two_degrees_of_freedom() -> None:
    # df = 1 (Cauchy): P(|T| <= 1) = 1/2; df = 2: P(|T| <= t) = t / sqrt(2 + t^2).
    assert math.isclose(t_two_sided_cdf(1.0, 1), 0.5)
    assert math.isclose(t_two_sided_cdf(3.0, 2), 3 / math.sqrt(11))
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_two_sided_cdf(1.0, 0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.floats(0.5, 0.99))
def test_t_critical_inverts_the_cdf(df: int, confidence: float) -> None:
    assert math.isclose(t_two_sided_cdf(t_critical(df, confidence), df), confidence, abs_tol=1e-9)


def test_paired_seed_difference_by_hand() -> None:
    # differences 0.02, 0.04, 0.00: mean 0.02, sd 0.02, half-width 4.303 * 0.02 / sqrt(3)
    out = paired_seed_difference([0.80, 0.81, 0.83], [0.82, 0.85, 0.83])
    assert out["per_seed"] == pytest.approx([0.02, 0.04, 0.0])
    assert out["mean"] == pytest.approx(0.02) and out["sd"] == pytest.approx(0.02)
    half = 4.302652729749464 * 0.02 / math.sqrt(3)
    assert out["t_interval_95"] == pytest.approx([0.02 - half, 0.02 + half])
    one = paired_seed_difference([0.5], [0.6])
    assert one["sd"] is None and one["t_interval_95"] is None
    with pytest.raises(ValueError, match="paired by seed"):
        paired_seed_difference([0.5, 0.6], [0.6])


def test_mean_sd_is_the_sample_sd() -> None:
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert mean_sd([4.0])["sd"] is None


def test_pooled_per_image_counts_disagreements_over_all_seeds() -> None:
    # seed 0: A right on 0-2, B on 1-3; seed 1: A right on 0, B on 0-3.
    a = [torch.tensor([1, 1, 1, 0], dtype=torch.bool), torch.tensor([1, 0, 0, 0], dtype=torch.bool)]
    b = [torch.tensor([0, 1, 1, 1], dtype=torch.bool), torch.tensor([1, 1, 1, 1], dtype=torch.bool)]
    out = pooled_per_image(a, b)
    assert (out["images"], out["a_only"], out["b_only"]) == (8, 1, 4)
    assert out["acc_a"] == pytest.approx(4 / 8) and out["acc_b"] == pytest.approx(7 / 8)
    assert out["diff"] == pytest.approx(3 / 8)
    assert out["p_value"] == pytest.approx(2 * (1 + 5) / 32)  # 2 P(X <= 1), X ~ Bin(5, 1/2)
    assert out["ci_low"] < out["diff"] < out["ci_high"]


def test_epochs_to_baseline_final_uses_the_same_seeds_baseline() -> None:
    curves = {
        "baseline": [[0.5, 0.7, 0.8], [0.6, 0.65, 0.7]],  # targets 0.8 and 0.7
        "init": [[0.79, 0.8, 0.9], [0.7, 0.6, 0.6]],
        "kd": [[0.1, 0.2, 0.3], [None, 0.69, 0.71]],
    }
    out = epochs_to_baseline_final(curves, "baseline")
    assert out == {"baseline": [3, 3], "init": [2, 1], "kd": [None, 3]}


def test_pairwise_keeps_the_listed_order() -> None:
    assert pairwise(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
