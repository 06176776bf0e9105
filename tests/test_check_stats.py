"""The one-sided paired t-test and TOST behind `metabench check`: scipy agreement, edge cases, messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metabench.harness.analysis.stats import (
    EquivalenceTest,
    OneSidedTest,
    paired_one_sided,
    tost_paired,
)
from scipy import stats as scipy_stats


@pytest.mark.parametrize("alternative", ["greater", "less"])
@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_paired_one_sided_agrees_with_scipy(alternative, margin):
    rng = np.random.default_rng(7)
    a = rng.normal(0.6, 1.0, 40)
    b = a - rng.normal(0.1, 0.5, 40)
    result = paired_one_sided(a, b, alternative=alternative, margin=margin)
    expected = scipy_stats.ttest_1samp(a - b, margin, alternative=alternative)
    assert isinstance(result, OneSidedTest)
    assert result.statistic == pytest.approx(float(expected.statistic), rel=1e-12)
    assert result.pvalue == pytest.approx(float(expected.pvalue), rel=1e-10)
    assert result.n == 40 and result.margin == margin and result.note == ""
    if margin == 0.0:
        assert result.pvalue == pytest.approx(float(scipy_stats.ttest_rel(a, b, alternative=alternative).pvalue), rel=1e-10)


def test_identical_values_give_no_evidence_either_way():
    values = [0.5, 0.7, 0.9]
    for alternative in ("greater", "less"):
        result = paired_one_sided(values, values, alternative=alternative)
        assert result.pvalue == 1.0 and result.statistic == 0.0 and "all differences are equal" in result.note


def test_a_constant_shift_is_certain_in_its_direction_only():
    a, b = np.array([1.5, 2.5, 3.5]), np.array([1.0, 2.0, 3.0])
    assert paired_one_sided(a, b, alternative="greater").pvalue == 0.0
    assert paired_one_sided(a, b, alternative="less").pvalue == 1.0
    assert paired_one_sided(a, b, alternative="greater", margin=0.5).pvalue == 1.0  # not beyond the margin
    assert paired_one_sided(a, b, alternative="greater").statistic == math.inf


def test_one_pair_has_no_test():
    result = paired_one_sided([1.0], [0.0], alternative="greater")
    assert math.isnan(result.pvalue) and result.note == "one pair only: no test is possible"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alternative": "two-sided"}, r"paired_one_sided: received alternative='two-sided'; expected one of \('greater', 'less'\)"),
        ({"alternative": "less", "margin": float("nan")}, r"paired_one_sided: received margin=nan; expected a finite number"),
    ],
)
def test_paired_one_sided_rejects_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_one_sided([1.0, 2.0], [1.0, 2.0], **kwargs)


def test_paired_one_sided_rejects_unpaired_arrays():
    with pytest.raises(ValueError, match=r"paired_one_sided: received a with 2 values and b with 3; paired values must cover the same items"):
        paired_one_sided([1.0, 2.0], [1.0, 2.0, 3.0], alternative="less")
    with pytest.raises(ValueError, match=r"paired_one_sided: b has 1 NaN"):
        paired_one_sided([1.0, 2.0], [1.0, float("nan")], alternative="less")


def test_tost_is_two_one_sided_tests_and_the_90_percent_ci():
    rng = np.random.default_rng(3)
    b = rng.normal(0.0, 1.0, 60)
    a = b + rng.normal(0.05, 0.3, 60)
    d = a - b
    result = tost_paired(a, b, 0.2, alpha=0.05)
    assert isinstance(result, EquivalenceTest)
    lower = scipy_stats.ttest_1samp(d, -0.2, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(d, 0.2, alternative="less").pvalue
    assert result.pvalue_lower == pytest.approx(float(lower), rel=1e-10)
    assert result.pvalue_upper == pytest.approx(float(upper), rel=1e-10)
    assert result.pvalue == max(result.pvalue_lower, result.pvalue_upper)
    half = scipy_stats.t.ppf(0.95, 59) * np.std(d, ddof=1) / math.sqrt(60)
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.confidence == pytest.approx(0.9)
    # equivalence at alpha holds exactly when the 1 - 2 alpha CI lies inside the margin
    for margin in (0.05, 0.1, 0.15, 0.2, 0.3):
        r = tost_paired(a, b, margin)
        assert r.equivalent == (-margin < r.ci_low and r.ci_high < margin)


def test_tost_identical_results_are_equivalent_and_a_shift_beyond_the_margin_is_not():
    values = [0.1, 0.4, 0.8, 0.3]
    assert tost_paired(values, values, 0.01).equivalent
    shifted = [v + 0.02 for v in values]
    assert not tost_paired(shifted, values, 0.01).equivalent
    assert tost_paired(shifted, values, 0.05).equivalent


@pytest.mark.parametrize(
    ("margin", "alpha", "message"),
    [
        (0.0, 0.05, r"tost_paired: received margin=0.0; expected a positive finite number"),
        (-1.0, 0.05, r"tost_paired: received margin=-1.0; expected a positive finite number"),
        (1.0, 0.5, r"tost_paired: received alpha=0.5; expected a significance level strictly between 0 and 0.5"),
    ],
)
def test_tost_rejects_bad_margin_and_alpha(margin, alpha, message):
    with pytest.raises(ValueError, match=message):
        tost_paired([1.0, 2.0], [1.0, 2.0], margin, alpha=alpha)
