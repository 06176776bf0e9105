"""Seeds, paired comparisons and Holm's correction: hand-computed values, scipy agreement, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from metabench.harness.analysis.stats import (
    PairedComparison,
    PairRow,
    SeedSummary,
    holm,
    paired_comparison,
    pairwise_comparisons,
    seed_summary,
)

# ----------------------------------------------------------------------------- seeds


def test_seed_summary_matches_hand_computed_values():
    # two seeds on the same two episodes: seed means [0.75, 0.25]; std (ddof 1) = 0.5 / sqrt(2)
    result = seed_summary([[1.0, 0.5], [0.5, 0.0]])
    assert isinstance(result, SeedSummary)
    assert result.seed_means.tolist() == [0.75, 0.25]
    assert result.mean == pytest.approx(0.5)
    assert result.std == pytest.approx(0.3535534, abs=1e-7)
    # seed CI: t_{0.975, 1} = 12.706205 * 0.3535534 / sqrt(2)
    assert result.seed_ci.half_width == pytest.approx(12.706205 * 0.3535534 / math.sqrt(2), rel=1e-6)
    # pooled: per-episode means [0.75, 0.25], std0 0.25, 1.96 * 0.25 / sqrt(2)
    assert result.pooled.mean == pytest.approx(0.5)
    assert result.pooled.half_width == pytest.approx(1.96 * 0.25 / math.sqrt(2))
    assert (result.n_seeds, result.n_episodes) == (2, 2)


def test_seed_summary_of_one_seed_has_no_seed_spread():
    result = seed_summary([0.5, 1.0, 0.75])  # 1-D: one seed
    assert result.n_seeds == 1 and math.isnan(result.std) and result.seed_ci is None
    assert result.pooled.half_width == pytest.approx(1.96 * np.std([0.5, 1.0, 0.75]) / math.sqrt(3))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((2, 2, 2)), r"seed_summary: received values of shape \(2, 2, 2\); expected a 2-D array \[seeds, episodes\]"),
        ([[0.5, float("nan")]], r"seed_summary: values has 1 NaN and 0 infinite value\(s\) among 2 \(first at index \(0, 1\)\)"),
        (np.zeros((2, 0)), r"seed_summary: received values of shape \(2, 0\); need at least one seed and one episode"),
        ([["a"]], r"seed_summary: values must be numeric"),
    ],
)
def test_seed_summary_rejects_bad_input_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        seed_summary(values)


# ----------------------------------------------------------------------------- paired comparison

A = [0.8, 0.9, 0.7, 0.9]
B = [0.6, 0.8, 0.7, 0.6]  # differences [0.2, 0.1, 0.0, 0.3]


def test_paired_comparison_matches_hand_computed_values():
    result = paired_comparison(A, B)
    assert isinstance(result, PairedComparison)
    # mean 0.15; std (ddof 1) = sqrt((0.0025 + 0.0025 + 0.0225 + 0.0225) / 3) = 0.1290994
    assert result.mean_difference == pytest.approx(0.15)
    assert result.std_difference == pytest.approx(0.1290994, abs=1e-7)
    assert result.effect_size == pytest.approx(0.15 / 0.1290994, rel=1e-6)  # Cohen's d_z = 1.161895
    # t = 0.15 / (0.1290994 / 2) = 2.323790; CI half width t_{0.975, 3} = 3.182446 * 0.1290994 / 2
    assert result.t_statistic == pytest.approx(2.323790, rel=1e-6)
    half = 3.182446 * 0.1290994 / 2
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.15 - half, abs=1e-6), pytest.approx(0.15 + half, abs=1e-6))
    # Wilcoxon, zero split (Demšar): ranks of |d| = 3, 2, 1, 4; the zero's rank 1 is split 0.5 / 0.5,
    # so R+ = 3 + 2 + 4 + 0.5 = 9.5 and R- = 0.5; the statistic is min(R+, R-)
    assert result.wilcoxon_statistic == pytest.approx(0.5)
    assert (result.n, result.zero_method, result.note) == (4, "zsplit", "")


def test_paired_comparison_agrees_with_scipy():
    d = np.subtract(A, B)
    result = paired_comparison(A, B)
    assert result.t_pvalue == pytest.approx(scipy_stats.ttest_rel(A, B).pvalue, rel=1e-12)
    assert result.wilcoxon_pvalue == pytest.approx(scipy_stats.wilcoxon(d, zero_method="zsplit").pvalue, rel=1e-12)


@pytest.mark.parametrize("zero_method", ["zsplit", "wilcox", "pratt"])
def test_paired_comparison_agrees_with_scipy_on_tied_episode_accuracies(zero_method):
    # 600 episodes of 5-way 15-query accuracies: multiples of 1/75, so many ties and zero differences
    rng = np.random.default_rng(3)
    a = rng.binomial(75, 0.9, 600) / 75
    b = np.where(rng.random(600) < 0.5, a, rng.binomial(75, 0.88, 600) / 75)
    result = paired_comparison(a, b, zero_method=zero_method)
    expected_w = scipy_stats.wilcoxon(a - b, zero_method=zero_method)
    expected_t = scipy_stats.ttest_rel(a, b)
    assert result.wilcoxon_statistic == pytest.approx(expected_w.statistic)
    assert result.wilcoxon_pvalue == pytest.approx(expected_w.pvalue, rel=1e-10)
    assert result.t_statistic == pytest.approx(expected_t.statistic, rel=1e-10)
    assert result.t_pvalue == pytest.approx(expected_t.pvalue, rel=1e-10)
    low, high = expected_t.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))


def test_identical_results_give_p_one_and_zero_effect():
    result = paired_comparison([0.5, 1.0, 0.75], [0.5, 1.0, 0.75])
    assert (result.mean_difference, result.ci_low, result.ci_high, result.effect_size) == (0.0, 0.0, 0.0, 0.0)
    assert (result.t_pvalue, result.wilcoxon_pvalue) == (1.0, 1.0)
    assert "all differences are 0" in result.note


def test_constant_nonzero_difference_has_infinite_t_and_effect():
    result = paired_comparison([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    assert result.t_statistic == math.inf and result.t_pvalue == 0.0
    assert result.effect_size == math.inf
    assert result.ci_low == result.ci_high == pytest.approx(0.5)
    assert result.wilcoxon_pvalue == pytest.approx(0.25)  # exact: 2 * (1/2)^3
    assert "std 0" in result.note


def test_one_pair_gives_nan_tests_and_says_why():
    result = paired_comparison([0.9], [0.4])
    assert result.n == 1 and result.mean_difference == pytest.approx(0.5)
    for value in (result.ci_low, result.std_difference, result.effect_size, result.t_pvalue, result.wilcoxon_pvalue):
        assert math.isnan(value)
    assert "one pair only" in result.note


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([0.1, 0.2], [0.1], {}, r"received a with 2 values and b with 1; paired values must cover the same items"),
        ([0.1, float("nan")], [0.1, 0.2], {}, r"paired_comparison: a has 1 NaN and 0 infinite value\(s\)"),
        ([[0.1]], [[0.2]], {}, r"received a of shape \(1, 1\); expected a non-empty 1-D array"),
        ([], [], {}, r"received a of shape \(0,\); expected a non-empty 1-D array"),
        ([0.1], [0.2], {"zero_method": "drop"}, r"received zero_method='drop'; expected one of \('zsplit', 'wilcox', 'pratt'\)"),
        ([0.1], [0.2], {"confidence": 95}, r"received confidence=95; expected a number strictly between 0 and 1"),
    ],
)
def test_paired_comparison_rejects_bad_input_by_name(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(a, b, **kwargs)


# ----------------------------------------------------------------------------- Holm


def test_holm_matches_hand_computed_values():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(1 * 0.04, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1, then monotone
    assert holm([0.02]).tolist() == [0.02]
    assert holm([]).tolist() == []


def test_holm_leaves_untested_pairs_out_of_the_family():
    adjusted = holm([0.01, float("nan"), 0.02])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)  # m = 2, not 3
    assert math.isnan(adjusted[1])


def test_holm_is_monotone_in_the_sorted_order_and_never_below_the_raw_p():
    p = np.random.default_rng(0).random(20) ** 3
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)


@pytest.mark.parametrize(("pvalues", "message"), [([0.5, 1.5], r"holm: received p-value 1.5 at index 1; p-values must lie in \[0, 1\]"),
                                                  ([[0.1]], r"holm: received pvalues of shape \(1, 1\); expected a 1-D array")])  # fmt: skip
def test_holm_rejects_bad_input(pvalues, message):
    with pytest.raises(ValueError, match=message):
        holm(pvalues)


def test_pairwise_comparisons_cover_every_pair_and_holm_correct_them():
    rng = np.random.default_rng(1)
    base = rng.random(40)
    scores = {"a": base + 0.2, "b": base + 0.19 + 0.01 * rng.standard_normal(40), "c": base}
    rows = pairwise_comparisons(scores, alpha=0.05)
    assert [(r.a, r.b) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert all(isinstance(r, PairRow) for r in rows)
    raw = [scipy_stats.wilcoxon(scores[r.a] - scores[r.b], zero_method="zsplit").pvalue for r in rows]
    assert [r.wilcoxon_pvalue_holm for r in rows] == pytest.approx(holm(raw).tolist())
    assert [r.significant for r in rows] == [bool(p <= 0.05) for p in holm(raw)]
    assert rows[1].significant and rows[1].comparison.mean_difference == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ({"a": [1.0, 2.0]}, r"received 1 method\(s\); need at least 2"),
        ({"a": [1.0, 2.0], "b": [1.0]}, r"every method needs a 1-D array over the same items; received sizes \{'a': 2, 'b': 1\}"),
        ([[1.0], [2.0]], r"received scores of type list; expected a mapping"),
    ],
)
def test_pairwise_comparisons_reject_bad_input(scores, message):
    with pytest.raises(ValueError, match=message):
        pairwise_comparisons(scores)
