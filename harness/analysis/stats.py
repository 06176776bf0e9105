"""Pure statistics over per-episode metrics and results tables: arrays in, small named results out.

Nothing here imports the store, the runner or a backend, so every function works on any array or
CSV column (``metabench stats`` feeds it published tables). SciPy does the distributions and tests.

Within one setting (one evaluation episode set, i.e. one fingerprint):

* :func:`mean_ci95`, :func:`mean_ci_t`: a mean with a 95% CI. The few-shot CI is
  ``1.96 * s / sqrt(n)`` with ``s`` the population standard deviation (``np.std``, ddof 0), as in
  the MAML, Closer-Look and ProtoNet code; the t-based alternative uses ``t_{(1+c)/2, n-1}`` and
  ddof 1, as in RFS. Both reflect episode-sampling noise of one set of trained models only, not
  training-seed variance.
* :func:`seed_summary`: mean and standard deviation over training seeds, plus the pooled CI.
* :func:`paired_comparison`, :func:`pairwise_comparisons`, :func:`holm`: paired tests on
  identical episodes (mean difference with its CI, Wilcoxon signed-rank, paired t, Cohen's d_z),
  Holm-corrected across pairs.
* :func:`paired_one_sided`, :func:`tost_paired`: a one-sided paired t-test against a margin, and
  the two one-sided tests (TOST) of equivalence within +/- a margin (what ``metabench check`` uses).

Across settings (Demšar 2006, "Statistical comparisons of classifiers over multiple data sets",
JMLR 7:1-30; Benavoli, Corani & Mangili 2016, JMLR 17(5)):

* :func:`rank_rows`, :func:`friedman_test`: average ranks (ties averaged), Friedman's chi-square
  and the Iman-Davenport F, or why they were not computed (too few rows: :func:`friedman_min_rows`;
  identical rankings on every row, which leave the F's denominator 0).
* :func:`nemenyi_q`, :func:`nemenyi_cd`, :func:`nemenyi_groups`: the Nemenyi critical difference
  and the groups a critical-difference diagram joins.
* :func:`compare_across_settings`: all of the above on a table, plus pairwise Wilcoxon tests with
  Holm's correction; :func:`read_results_table` reads such a table from CSV.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from metabench.harness.errors import MetabenchError

__all__ = [
    "NEMENYI_Q",
    "AcrossSettings",
    "EquivalenceTest",
    "FriedmanResult",
    "MeanCI",
    "OneSidedTest",
    "PairRow",
    "PairedComparison",
    "SeedSummary",
    "StatsInputError",
    "compare_across_settings",
    "friedman_min_rows",
    "friedman_test",
    "holm",
    "mean_ci95",
    "mean_ci_t",
    "nemenyi_cd",
    "nemenyi_groups",
    "nemenyi_q",
    "paired_comparison",
    "paired_one_sided",
    "pairwise_comparisons",
    "rank_rows",
    "read_results_table",
    "seed_summary",
    "tost_paired",
]  # fmt: skip

logger = logging.getLogger(__name__)

_Z95 = 1.96  # the constant the few-shot literature uses, not norm.ppf(0.975) = 1.95996...


class MeanCI(NamedTuple):
    """A mean with a symmetric confidence interval ``[low, high] = mean -/+ half_width``.

    Attributes:
        mean: arithmetic mean of the values, in the values' unit.
        half_width: half the interval's width, in the values' unit (the "±" number).
        low: ``mean - half_width``.
        high: ``mean + half_width``.
        n: number of values.
        std: standard deviation of the values with ``ddof``.
        ddof: delta degrees of freedom of ``std`` (divisor ``n - ddof``).
        method: ``"normal-1.96"`` (few-shot convention) or ``"student-t"``.
    """

    mean: float
    half_width: float
    low: float
    high: float
    n: int
    std: float
    ddof: int
    method: str


def mean_ci95(values, *, ddof: int = 0) -> MeanCI:
    """Mean and the few-shot 95% CI ``1.96 * std(values, ddof) / sqrt(n)``.

    This is the convention of the MAML, Closer-Look and ProtoNet code, which call ``np.std`` and
    so use ddof 0 (the default here); pass ``ddof=1`` for the sample standard deviation. For
    n = 600 episodes the choice changes the width by under 0.1%.

    Args:
        values: 1-D array-like ``[n]`` of finite per-episode metrics (e.g. accuracy fractions).
        ddof: delta degrees of freedom of the standard deviation; ``n`` must exceed it.

    Returns:
        MeanCI with ``method="normal-1.96"``.

    Raises:
        ValueError: ``values`` is empty, not 1-D, not numeric, contains NaN or infinity, or has
            no more than ``ddof`` entries.

    Example::

        >>> round(mean_ci95([0, 1, 1, 1]).half_width, 6)  # 1.96 * 0.4330127 / 2
        0.424352
    """
    array = _mean_ci_iv(values, ddof=ddof, name="mean_ci95")
    return _mean_ci(array, ddof, _Z95, "normal-1.96")


def mean_ci_t(values, confidence: float = 0.95) -> MeanCI:
    """Mean and the Student-t CI ``t_{(1+confidence)/2, n-1} * std(values, ddof=1) / sqrt(n)``.

    Args:
        values: 1-D array-like ``[n]`` of finite values, n >= 2.
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        MeanCI with ``ddof=1`` and ``method="student-t"``.

    Raises:
        ValueError: as :func:`mean_ci95` (with ddof 1, so n >= 2), or ``confidence`` outside (0, 1).
    """
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"Received confidence={confidence!r}; expected a number strictly between 0 and 1, e.g. 0.95.")
    array = _mean_ci_iv(values, ddof=1, name="mean_ci_t")
    critical = float(_scipy_stats.t.ppf((1.0 + confidence) / 2.0, df=array.size - 1))
    return _mean_ci(array, 1, critical, "student-t")


def _mean_ci(array: np.ndarray, ddof: int, critical: float, method: str) -> MeanCI:
    mean = float(np.mean(array))
    std = float(np.std(array, ddof=ddof))
    half_width = critical * std / math.sqrt(array.size)
    return MeanCI(mean, half_width, mean - half_width, mean + half_width, int(array.size), std, ddof, method)


def _mean_ci_iv(values, *, ddof: int, name: str) -> np.ndarray:
    """Validate the inputs of the mean-CI functions; returns ``values`` as a float64 array ``[n]``."""
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"{name}: received ddof={ddof!r}; expected a non-negative integer (0 or 1).")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: values must be numeric; could not convert them to floats ({err}).") from err
    if array.ndim != 1:
        raise ValueError(
            f"{name}: received values of shape {array.shape}; expected a 1-D array [n] of "
            "per-episode values (flatten it, or compute one CI per row)."
        )
    if array.size == 0:
        raise ValueError(f"{name}: received an empty array; need at least one value.")
    bad = ~np.isfinite(array)
    if bad.any():
        nan_count = int(np.isnan(array).sum())
        raise ValueError(
            f"{name}: received {nan_count} NaN and {int(bad.sum()) - nan_count} infinite value(s) "
            f"among {array.size} (first at index {int(np.argmax(bad))}); drop or investigate "
            "them (a diverged episode?) before computing a CI."
        )
    if array.size <= ddof:
        raise ValueError(
            f"{name}: received {array.size} value(s) with ddof={ddof}; the standard deviation "
            f"needs more than {ddof} value(s)."
        )
    return array


# ---------------------------------------------------------------------------------------------
# Training seeds
# ---------------------------------------------------------------------------------------------


class SeedSummary(NamedTuple):
    """Several training seeds of one algorithm evaluated on the same episodes.

    Attributes:
        seed_means: ``[seeds]`` mean of each seed's per-episode values.
        mean: mean of ``seed_means`` (equal to the mean of all values, since every seed covers
            the same episodes).
        std: standard deviation of ``seed_means`` with ddof 1 (training-seed variability); NaN
            for a single seed.
        seed_ci: Student-t 95% CI over ``seed_means`` (:func:`mean_ci_t`), which reflects seed
            variance; ``None`` for a single seed.
        pooled: the few-shot 95% CI (:func:`mean_ci95`, ddof 0) over episodes of the per-episode
            mean across seeds: episode-sampling noise of the seeds' averaged scores.
        n_seeds: number of seeds (rows).
        n_episodes: number of episodes (columns).
    """

    seed_means: np.ndarray
    mean: float
    std: float
    seed_ci: MeanCI | None
    pooled: MeanCI
    n_seeds: int
    n_episodes: int


def seed_summary(values) -> SeedSummary:
    """Mean and spread over training seeds, plus the pooled CI over episodes.

    Args:
        values: array-like ``[seeds, episodes]`` of finite per-episode metrics; row ``s`` is
            training seed ``s`` evaluated on the same episodes as every other row (same
            fingerprint). A 1-D array is read as one seed.

    Returns:
        SeedSummary. With one seed, ``std`` is NaN and ``seed_ci`` is ``None``: one seed says
        nothing about seed variance.

    Raises:
        ValueError: ``values`` is empty, more than 2-D, not numeric, or has NaN or infinity.

    Example::

        >>> s = seed_summary([[1.0, 0.5], [0.5, 0.0]])
        >>> s.seed_means.tolist(), s.mean, round(s.std, 6)
        ([0.75, 0.25], 0.5, 0.353553)
    """
    array = _seed_summary_iv(values)
    seed_means = array.mean(axis=1)
    pooled = mean_ci95(array.mean(axis=0), ddof=0)
    if array.shape[0] >= 2:
        seed_ci = mean_ci_t(seed_means)
        std = seed_ci.std
    else:
        seed_ci, std = None, math.nan
    return SeedSummary(seed_means, float(seed_means.mean()), std, seed_ci, pooled, array.shape[0], array.shape[1])


def _seed_summary_iv(values) -> np.ndarray:
    """Validate :func:`seed_summary`'s input; returns a float64 array ``[seeds, episodes]``."""
    array = _as_float_array(values, "seed_summary", "values")
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise ValueError(
            f"seed_summary: received values of shape {array.shape}; expected a 2-D array [seeds, "
            "episodes] (one row per training seed, the same episodes in every row)."
        )
    if array.size == 0:
        raise ValueError(f"seed_summary: received values of shape {array.shape}; need at least one seed and one episode.")
    _require_finite(array, "seed_summary", "values")
    return array


# ---------------------------------------------------------------------------------------------
# Paired comparisons on identical episodes
# ---------------------------------------------------------------------------------------------


class PairedComparison(NamedTuple):
    """Two methods scored on the same ``n`` items (episodes, or settings), ``d_i = a_i - b_i``.

    Attributes:
        n: number of pairs.
        mean_difference: mean of ``d`` (positive: ``a`` scored higher), in the values' unit.
        ci_low, ci_high: Student-t CI of the mean difference (``confidence``, ddof 1); it excludes
            0 exactly when the paired t-test rejects at ``1 - confidence``.
        std_difference: standard deviation of ``d`` with ddof 1.
        effect_size: Cohen's d_z for paired data, ``mean(d) / std(d, ddof=1)``; 0 when every
            ``d`` is 0, +/-inf when ``d`` is a nonzero constant.
        t_statistic, t_pvalue: paired t-test (``scipy.stats.ttest_rel``), two-sided.
        wilcoxon_statistic, wilcoxon_pvalue: Wilcoxon signed-rank test
            (``scipy.stats.wilcoxon`` with ``zero_method``), two-sided.
        zero_method: how zero differences enter the Wilcoxon test (see :func:`paired_comparison`).
        note: why a value is NaN or special-cased, else ``""``.
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    std_difference: float
    effect_size: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    zero_method: str
    note: str


ZERO_METHODS = ("zsplit", "wilcox", "pratt")
"""Accepted ``zero_method`` values, as in ``scipy.stats.wilcoxon``."""


def paired_comparison(a, b, *, confidence: float = 0.95, zero_method: str = "zsplit") -> PairedComparison:
    """Compare two methods on identical items: mean paired difference, its CI, t and Wilcoxon tests.

    Only pair values measured on the same items: two evaluations with the same episode
    fingerprint, position ``i`` being episode ``i`` in both. Paired tests are far tighter than
    comparing two unpaired CIs, because the episode-to-episode difficulty cancels.

    Ties and edge cases, decided here rather than left to scipy:

    * zero differences: by default split evenly between the positive and negative rank sums
      (``zero_method="zsplit"``, Demšar 2006 section 3.1.3); ``"wilcox"`` drops them and
      ``"pratt"`` ranks them and then drops them. Tied ``|d|`` get average ranks; scipy then uses
      the normal approximation with its tie correction.
    * every ``d`` is 0: both p-values are 1, the effect size and CI are 0 (no evidence of a
      difference), without calling scipy.
    * ``d`` is a nonzero constant: the t statistic is +/-inf and its p-value 0, as scipy computes.
    * ``n = 1``: no test is possible; the CI, standard deviation, effect size, statistics and
      p-values are NaN and ``note`` says so.

    Args:
        a, b: 1-D array-likes ``[n]`` of finite values, item ``i`` the same in both.
        confidence: coverage of the CI of the mean difference, strictly between 0 and 1.
        zero_method: one of :data:`ZERO_METHODS`.

    Returns:
        PairedComparison (differences are ``a - b``).

    Raises:
        ValueError: the arrays are empty, not 1-D, of different lengths, or hold NaN/infinity;
            ``confidence`` or ``zero_method`` is invalid.

    Example::

        >>> r = paired_comparison([0.8, 0.9, 0.7, 0.9], [0.6, 0.8, 0.7, 0.6])
        >>> round(r.mean_difference, 3), round(r.effect_size, 3)
        (0.15, 1.162)
    """
    a_arr, b_arr = _paired_comparison_iv(a, b, confidence, zero_method)
    d = a_arr - b_arr
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        nan = math.nan
        return PairedComparison(n, mean, nan, nan, nan, nan, nan, nan, nan, nan, zero_method,
                                "one pair only: no test, CI or effect size is possible")  # fmt: skip
    if not np.any(d):
        return PairedComparison(n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, math.nan, 1.0, zero_method,
                                "all differences are 0: p-values set to 1")  # fmt: skip
    std = float(np.std(d, ddof=1))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's "nearly identical data" precision warning
        t_result = _scipy_stats.ttest_rel(a_arr, b_arr)
        w_result = _scipy_stats.wilcoxon(d, zero_method=zero_method)
    note = ""
    if std == 0.0:
        effect = math.copysign(math.inf, mean)
        low = high = mean
        note = "all differences are equal: std 0, t statistic and effect size infinite"
    else:
        effect = mean / std
        half = float(_scipy_stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedComparison(
        n, mean, low, high, std, effect, float(t_result.statistic), float(t_result.pvalue),
        float(w_result.statistic), float(w_result.pvalue), zero_method, note,
    )  # fmt: skip


def _paired_comparison_iv(a, b, confidence, zero_method) -> tuple[np.ndarray, np.ndarray]:
    """Validate :func:`paired_comparison`'s inputs; returns two float64 arrays ``[n]``."""
    _check_confidence(confidence, "paired_comparison")
    if zero_method not in ZERO_METHODS:
        raise ValueError(f"paired_comparison: received zero_method={zero_method!r}; expected one of {ZERO_METHODS}.")
    arrays = []
    for name, values in (("a", a), ("b", b)):
        array = _as_float_array(values, "paired_comparison", name)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"paired_comparison: received {name} of shape {array.shape}; expected a non-empty "
                "1-D array [n] of per-item values."
            )
        _require_finite(array, "paired_comparison", name)
        arrays.append(array)
    if arrays[0].size != arrays[1].size:
        raise ValueError(
            f"paired_comparison: received a with {arrays[0].size} values and b with {arrays[1].size}; "
            "paired values must cover the same items (same episode fingerprint). Align them first."
        )
    return arrays[0], arrays[1]


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    With the ``m`` finite p-values sorted ascending ``p_(1) <= ... <= p_(m)``, the adjusted
    value is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; reject ``H_(i)`` when its adjusted
    p-value is at most alpha. NaN entries (tests that could not be run) are not part of the
    family: they stay NaN and do not count in ``m``.

    Args:
        pvalues: 1-D array-like ``[m]`` of p-values in [0, 1] or NaN.

    Returns:
        float64 array ``[m]`` of adjusted p-values, in the input order.

    Raises:
        ValueError: not 1-D, not numeric, or a value outside [0, 1].

    Example::

        >>> holm([0.01, 0.04, 0.03]).tolist()  # 3 * 0.01, max(2 * 0.03, 0.03), max(0.04, 0.06)
        [0.03, 0.06, 0.06]
    """
    array = _holm_iv(pvalues)
    adjusted = np.full(array.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(array))
    m = finite.size
    if m:
        order = finite[np.argsort(array[finite], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * array[order])
        adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _holm_iv(pvalues) -> np.ndarray:
    """Validate :func:`holm`'s input; returns a float64 array ``[m]``."""
    array = _as_float_array(pvalues, "holm", "pvalues")
    if array.ndim != 1:
        raise ValueError(f"holm: received pvalues of shape {array.shape}; expected a 1-D array [m].")
    bad = ~np.isnan(array) & ((array < 0.0) | (array > 1.0))
    if bad.any():
        raise ValueError(
            f"holm: received p-value {float(array[bad][0])!r} at index {int(np.argmax(bad))}; p-values must "
            "lie in [0, 1] (NaN marks a test that was not run)."
        )
    return array


class PairRow(NamedTuple):
    """One pair of :func:`pairwise_comparisons`: the test results plus Holm-adjusted p-values.

    Attributes:
        a, b: the two names (``a`` listed first in the input).
        comparison: :class:`PairedComparison` of ``a - b``.
        wilcoxon_pvalue_holm, t_pvalue_holm: Holm-adjusted over all pairs of the call.
        significant: ``wilcoxon_pvalue_holm <= alpha`` (False when the test could not be run).
    """

    a: str
    b: str
    comparison: PairedComparison
    wilcoxon_pvalue_holm: float
    t_pvalue_holm: float
    significant: bool


def pairwise_comparisons(scores, *, alpha: float = 0.05, zero_method: str = "zsplit") -> list[PairRow]:
    """Every pair of methods compared on identical items, Holm-corrected across all pairs.

    The decision (``significant``) uses the Wilcoxon signed-rank test, which Demšar (2006)
    recommends over the paired t-test (no normality assumption, robust to outliers); the t-test
    p-values are reported and Holm-adjusted as well.

    Args:
        scores: mapping name -> 1-D array-like ``[n]``; every array covers the same ``n`` items
            in the same order (same episode fingerprint, or the same settings).
        alpha: family-wise significance level, strictly between 0 and 1.
        zero_method: see :func:`paired_comparison`.

    Returns:
        ``k (k - 1) / 2`` :class:`PairRow` in input order: (m0, m1), (m0, m2), ..., (m1, m2), ...

    Raises:
        ValueError: fewer than 2 methods, arrays of different lengths, or invalid values.
    """
    names, arrays = _pairwise_comparisons_iv(scores, alpha)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    results = [paired_comparison(arrays[i], arrays[j], zero_method=zero_method) for i, j in pairs]
    w_holm = holm([r.wilcoxon_pvalue for r in results])
    t_holm = holm([r.t_pvalue for r in results])
    return [
        PairRow(names[i], names[j], r, float(w), float(t), bool(w <= alpha))
        for (i, j), r, w, t in zip(pairs, results, w_holm, t_holm)
    ]


def _pairwise_comparisons_iv(scores, alpha) -> tuple[list[str], list[np.ndarray]]:
    """Validate :func:`pairwise_comparisons`'s inputs; returns names and float64 arrays ``[n]``."""
    _check_alpha(alpha, "pairwise_comparisons")
    if not hasattr(scores, "items"):
        raise ValueError(
            f"pairwise_comparisons: received scores of type {type(scores).__name__}; expected a "
            "mapping name -> 1-D array of per-item values."
        )
    names = [str(name) for name in scores]
    if len(names) < 2:
        raise ValueError(f"pairwise_comparisons: received {len(names)} method(s); need at least 2 to compare.")
    if len(set(names)) != len(names):
        raise ValueError(f"pairwise_comparisons: method names {names} are not unique as strings; rename them.")
    arrays = [_as_float_array(values, "pairwise_comparisons", f"scores[{name!r}]") for name, values in scores.items()]
    sizes = {name: a.size for name, a in zip(names, arrays)}
    if len(set(sizes.values())) != 1 or any(a.ndim != 1 for a in arrays):
        raise ValueError(
            f"pairwise_comparisons: every method needs a 1-D array over the same items; received sizes "
            f"{sizes}. Align them on the shared items first."
        )
    return names, arrays


# ---------------------------------------------------------------------------------------------
# One-sided and equivalence tests on paired values (regression gates)
# ---------------------------------------------------------------------------------------------


class OneSidedTest(NamedTuple):
    """A one-sided paired t-test of the mean difference ``mean(a - b)`` against ``margin``.

    Attributes:
        n: number of pairs.
        mean_difference: mean of ``d = a - b``, in the values' unit.
        std_difference: standard deviation of ``d`` with ddof 1 (NaN for one pair).
        margin: the null value of the mean difference, in the values' unit.
        alternative: ``"greater"`` (H1: ``mean(d) > margin``) or ``"less"`` (H1: ``mean(d) < margin``).
        statistic: ``(mean(d) - margin) / (std(d) / sqrt(n))``, +/-inf when ``std(d)`` is 0.
        pvalue: one-sided p-value (``n - 1`` degrees of freedom); NaN for one pair.
        note: why a value is NaN or special-cased, else ``""``.
    """

    n: int
    mean_difference: float
    std_difference: float
    margin: float
    alternative: str
    statistic: float
    pvalue: float
    note: str


ALTERNATIVES = ("greater", "less")
"""Accepted ``alternative`` values of :func:`paired_one_sided`."""


def paired_one_sided(a, b, *, alternative: str, margin: float = 0.0) -> OneSidedTest:
    """One-sided paired t-test: is ``mean(a - b)`` greater (or less) than ``margin``?

    The test of ``scipy.stats.ttest_1samp(a - b, margin, alternative=...)``, with the degenerate
    cases decided here: when every difference is equal (``std(d) = 0``, e.g. two bit-for-bit
    identical runs), the p-value is 0 if ``mean(d)`` lies strictly on the alternative's side of
    ``margin`` and 1 otherwise; with one pair no test is possible and the p-value is NaN.

    Args:
        a, b: 1-D array-likes ``[n]`` of finite values, item ``i`` the same in both (same episode).
        alternative: ``"greater"`` (H1: ``mean(a - b) > margin``) or ``"less"``.
        margin: finite null value of the mean difference, in the values' unit (0: no difference).

    Returns:
        OneSidedTest.

    Raises:
        ValueError: the arrays are empty, not 1-D, of different lengths, or hold NaN/infinity;
            ``alternative`` or ``margin`` is invalid.

    Example::

        >>> r = paired_one_sided([0.8, 0.9, 0.7, 0.9], [0.6, 0.8, 0.7, 0.6], alternative="greater")
        >>> round(r.statistic, 4), round(r.pvalue, 4)
        (2.3238, 0.0514)
    """
    a_arr, b_arr = _paired_one_sided_iv(a, b, alternative, margin, "paired_one_sided")
    return _one_sided(a_arr - b_arr, alternative, float(margin))


def _one_sided(d: np.ndarray, alternative: str, margin: float) -> OneSidedTest:
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return OneSidedTest(n, mean, math.nan, margin, alternative, math.nan, math.nan,
                            "one pair only: no test is possible")  # fmt: skip
    std = float(np.std(d, ddof=1))
    beyond = mean > margin if alternative == "greater" else mean < margin
    if std == 0.0 or not np.any(d - d[0]):
        if mean == margin:
            statistic = 0.0
        else:
            statistic = math.copysign(math.inf, mean - margin)
        return OneSidedTest(n, mean, 0.0, margin, alternative, statistic, 0.0 if beyond else 1.0,
                            "all differences are equal: std 0, p-value 0 or 1")  # fmt: skip
    statistic = (mean - margin) / (std / math.sqrt(n))
    if alternative == "greater":
        pvalue = float(_scipy_stats.t.sf(statistic, df=n - 1))
    else:
        pvalue = float(_scipy_stats.t.cdf(statistic, df=n - 1))
    return OneSidedTest(n, mean, std, margin, alternative, float(statistic), pvalue, "")


def _paired_one_sided_iv(a, b, alternative, margin, function: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs of the one-sided tests; returns two float64 arrays ``[n]``."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"{function}: received alternative={alternative!r}; expected one of {ALTERNATIVES}.")
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) or not math.isfinite(margin):
        raise ValueError(f"{function}: received margin={margin!r}; expected a finite number in the values' unit (0: no difference).")
    return _paired_arrays(a, b, function)


def _paired_arrays(a, b, function: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("a", a), ("b", b)):
        array = _as_float_array(values, function, name)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"{function}: received {name} of shape {array.shape}; expected a non-empty 1-D array "
                "[n] of per-item values."
            )
        _require_finite(array, function, name)
        arrays.append(array)
    if arrays[0].size != arrays[1].size:
        raise ValueError(
            f"{function}: received a with {arrays[0].size} values and b with {arrays[1].size}; paired "
            "values must cover the same items (same episode fingerprint). Align them first."
        )
    return arrays[0], arrays[1]


class EquivalenceTest(NamedTuple):
    """Two one-sided paired t-tests (TOST) of ``-margin < mean(a - b) < margin``.

    Attributes:
        n: number of pairs.
        mean_difference: mean of ``d = a - b``, in the values' unit.
        margin: the equivalence margin (positive), in the values' unit.
        ci_low, ci_high: the ``1 - 2 alpha`` Student-t CI of the mean difference (90% for alpha
            0.05); equivalence at ``alpha`` holds exactly when it lies inside ``(-margin, margin)``.
        confidence: ``1 - 2 alpha``.
        pvalue_lower: p-value of H0 ``mean(d) <= -margin`` against ``> -margin``.
        pvalue_upper: p-value of H0 ``mean(d) >= margin`` against ``< margin``.
        pvalue: ``max(pvalue_lower, pvalue_upper)``, the TOST p-value (NaN for one pair).
        alpha: the significance level of each one-sided test.
        equivalent: ``pvalue <= alpha`` (False when no test was possible).
        note: why a value is NaN or special-cased, else ``""``.
    """

    n: int
    mean_difference: float
    margin: float
    ci_low: float
    ci_high: float
    confidence: float
    pvalue_lower: float
    pvalue_upper: float
    pvalue: float
    alpha: float
    equivalent: bool
    note: str


def tost_paired(a, b, margin: float, *, alpha: float = 0.05) -> EquivalenceTest:
    """Equivalence of two methods on identical items by two one-sided paired t-tests (Schuirmann 1987).

    "No change" is shown, not assumed: the methods are called equivalent within ``margin`` only
    when both ``mean(a - b) > -margin`` and ``mean(a - b) < margin`` are significant at
    ``alpha``, i.e. when the ``1 - 2 alpha`` CI of the mean difference lies inside
    ``(-margin, margin)``. Several settings that must all be equivalent need no multiplicity
    correction (an intersection-union test). Degenerate cases as :func:`paired_one_sided`: two
    bit-for-bit identical methods (every difference 0) are equivalent for any positive margin.

    Args:
        a, b: 1-D array-likes ``[n]`` of finite values, item ``i`` the same in both.
        margin: positive equivalence margin, in the values' unit.
        alpha: level of each one-sided test, strictly between 0 and 0.5.

    Returns:
        EquivalenceTest.

    Raises:
        ValueError: invalid arrays (as :func:`paired_one_sided`), a margin that is not a positive
            finite number, or ``alpha`` outside (0, 0.5).

    Example::

        >>> r = tost_paired([0.80, 0.91, 0.70, 0.90], [0.80, 0.90, 0.71, 0.90], 0.05)
        >>> r.equivalent, round(r.pvalue, 4)
        (True, 0.0006)
    """
    a_arr, b_arr = _tost_paired_iv(a, b, margin, alpha)
    d = a_arr - b_arr
    margin = float(margin)
    lower = _one_sided(d, "greater", -margin)
    upper = _one_sided(d, "less", margin)
    n, mean = int(d.size), float(d.mean())
    confidence = 1.0 - 2.0 * alpha
    if n < 2:
        return EquivalenceTest(n, mean, margin, math.nan, math.nan, confidence, math.nan, math.nan, math.nan,
                               float(alpha), False, "one pair only: no test or CI is possible")  # fmt: skip
    half = float(_scipy_stats.t.ppf(1.0 - alpha, df=n - 1)) * lower.std_difference / math.sqrt(n)
    pvalue = max(lower.pvalue, upper.pvalue)
    note = lower.note or upper.note
    return EquivalenceTest(n, mean, margin, mean - half, mean + half, confidence, lower.pvalue, upper.pvalue,
                           pvalue, float(alpha), bool(pvalue <= alpha), note)  # fmt: skip


def _tost_paired_iv(a, b, margin, alpha) -> tuple[np.ndarray, np.ndarray]:
    """Validate :func:`tost_paired`'s inputs; returns two float64 arrays ``[n]``."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) or not (math.isfinite(margin) and margin > 0):
        raise ValueError(
            f"tost_paired: received margin={margin!r}; expected a positive finite number in the values' "
            "unit (the largest difference that still counts as no change)."
        )
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < alpha < 0.5):
        raise ValueError(f"tost_paired: received alpha={alpha!r}; expected a significance level strictly between 0 and 0.5, e.g. 0.05.")
    return _paired_arrays(a, b, "tost_paired")


# ---------------------------------------------------------------------------------------------
# Across settings: Friedman, Iman-Davenport, Nemenyi (Demšar 2006)
# ---------------------------------------------------------------------------------------------


class FriedmanResult(NamedTuple):
    """Friedman's test on the ranks of ``k`` methods over ``N`` rows (settings or data sets).

    Attributes:
        statistic: Friedman's chi-square ``chi2_F = 12 N / (k (k+1)) * (sum_j R_j^2 - k (k+1)^2 / 4)``
            (Demšar 2006, eq. on p. 11), divided by the tie correction when it was asked for.
        pvalue: upper tail of chi-square with ``k - 1`` degrees of freedom.
        iman_davenport_F: ``F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F)``; NaN when not computed.
        iman_davenport_pvalue: upper tail of F with ``(k - 1, (k - 1)(N - 1))`` degrees of freedom;
            NaN when not computed.
        average_ranks: ``[k]`` mean rank of each method over the rows (1 = best, ties averaged).
        ranks: ``[N, k]`` the ranks themselves.
        n: number of rows ``N``.
        k: number of methods.
        tie_correction: whether ``statistic`` was divided by ``1 - sum(t^3 - t) / (N k (k^2 - 1))``.
        not_computed: ``""``, or why neither test was computed (``"not computed: ..."``): fewer
            rows than :func:`friedman_min_rows`; ``statistic`` and every p-value are then NaN.
        iman_davenport_not_computed: ``""``, or why ``F_F`` was not computed: every row ranks
            the methods identically (``chi2_F = N (k - 1)``), which makes its denominator 0; or the
            reason in ``not_computed``.
    """

    statistic: float
    pvalue: float
    iman_davenport_F: float
    iman_davenport_pvalue: float
    average_ranks: np.ndarray
    ranks: np.ndarray
    n: int
    k: int
    tie_correction: bool
    not_computed: str = ""
    iman_davenport_not_computed: str = ""


def rank_rows(table, *, lower_is_better=False) -> np.ndarray:
    """Rank the methods within each row: 1 = best, tied values share the average of their ranks.

    Args:
        table: array-like ``[N, k]`` of finite scores (rows settings, columns methods).
        lower_is_better: a bool for every row, or a bool array-like ``[N]`` (e.g. ``True`` for an
            MSE row and ``False`` for an accuracy row).

    Returns:
        float64 array ``[N, k]`` of ranks in ``[1, k]``.

    Raises:
        ValueError: ``table`` is not 2-D, holds NaN/infinity, or ``lower_is_better`` has the
            wrong length.

    Example::

        >>> rank_rows([[0.9, 0.8, 0.9]]).tolist()
        [[1.5, 3.0, 1.5]]
    """
    array, lower = _rank_rows_iv(table, lower_is_better, "rank_rows")
    oriented = np.where(lower[:, np.newaxis], array, -array)
    return _scipy_stats.rankdata(oriented, method="average", axis=1)


def _rank_rows_iv(table, lower_is_better, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a table ``[N, k]`` and a per-row direction; returns them as arrays."""
    array = _as_float_array(table, name, "table")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(
            f"{name}: received a table of shape {array.shape}; expected a 2-D array [N rows "
            "(settings), k columns (methods)]."
        )
    _require_finite(array, name, "table")
    lower = np.asarray(lower_is_better, dtype=bool)
    if lower.ndim == 0:
        lower = np.full(array.shape[0], bool(lower))
    if lower.shape != (array.shape[0],):
        raise ValueError(
            f"{name}: received lower_is_better of shape {lower.shape} for {array.shape[0]} rows; pass one "
            "bool, or one bool per row."
        )
    return array, lower


def friedman_min_rows(k: int, alpha: float = 0.05) -> int:
    """The fewest rows (settings) on which Friedman's test of ``k`` methods can reject at ``alpha``.

    The most extreme outcome, every row ranking the methods the same way, has the exact
    probability ``(k!)^(1 - N)`` under the null hypothesis; with fewer rows than returned here
    that probability exceeds ``alpha``, so no result could be significant (for ``k = 2``
    Friedman's test is the sign test, and this is its minimum of 6 rows at alpha 0.05).

    Example::

        >>> friedman_min_rows(2), friedman_min_rows(3), friedman_min_rows(4)
        (6, 3, 2)
    """
    _friedman_min_rows_iv(k, alpha)
    needed = math.log(1.0 / alpha) / math.lgamma(k + 1)
    return max(2, 1 + math.ceil(needed - 1e-9))


def _friedman_min_rows_iv(k, alpha) -> None:
    """Validate :func:`friedman_min_rows`'s inputs."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"friedman_min_rows: received k={k!r}; expected an integer >= 2 (methods).")
    _check_alpha(alpha, "friedman_min_rows")


def friedman_test(table, *, lower_is_better=False, tie_correction: bool = False, alpha: float = 0.05) -> FriedmanResult:
    """Friedman's chi-square and the Iman-Davenport F over ranks, as in Demšar (2006) section 3.2.

    Demšar's formula has no correction for ties within a row (that is what his paper, Orange and
    scmamp compute); ``tie_correction=True`` divides by ``1 - sum(t^3 - t) / (N k (k^2 - 1))``,
    which equals ``scipy.stats.friedmanchisquare``. Without ties the two agree. When every value
    of every row is tied, the statistic is 0 and both p-values are 1.

    Demšar notes that the chi-square approximation wants roughly ``N > 10`` and ``k > 5``; below
    that the p-values are approximate (the Iman-Davenport F is the less conservative of the two).

    Not computed (NaN, with the reason in the result): both tests when there are fewer rows than
    :func:`friedman_min_rows` (no outcome could be significant at ``alpha``); the Iman-Davenport F
    when every row ranks the methods identically (``chi2_F = N (k - 1)`` makes its denominator
    0). An infinite statistic is never returned.

    Args:
        table: array-like ``[N, k]`` of finite scores, ``N >= 2`` rows and ``k >= 2`` methods.
            Drop or impute missing cells first (see :func:`compare_across_settings`).
        lower_is_better: a bool, or one bool per row.
        tie_correction: divide by the tie correction (scipy's statistic).
        alpha: the significance level that decides how many rows the tests need.

    Returns:
        FriedmanResult.

    Raises:
        ValueError: fewer than 2 rows or 2 methods, or invalid values.

    Example::

        >>> r = friedman_test([[3, 2, 1], [3, 1, 2], [3, 2, 1], [3, 2, 1]])  # the first is best
        >>> r.average_ranks.tolist(), r.statistic
        ([1.0, 2.25, 2.75], 6.5)
    """
    array, lower = _friedman_test_iv(table, lower_is_better, alpha)
    n, k = array.shape
    ranks = rank_rows(array, lower_is_better=lower)
    average = ranks.mean(axis=0)
    needed = friedman_min_rows(k, alpha)
    if n < needed:
        reason = (
            f"not computed: Friedman/Iman-Davenport need at least {needed} rows (settings) for k = {k} "
            f"methods at alpha = {alpha:g}; have {n} (even the same ranking on every row has exact "
            f"probability (k!)^(1-N) = {math.exp(-(n - 1) * math.lgamma(k + 1)):.2g} > alpha)"
        )
        nan = math.nan
        return FriedmanResult(nan, nan, nan, nan, average, ranks, n, k, tie_correction, reason, reason)
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(average**2)) - k * (k + 1) ** 2 / 4.0)
    chi2 = max(chi2, 0.0)  # rounding can give -1e-15 for all-tied tables
    if tie_correction:
        ties = sum(float(np.sum(c**3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
        correction = 1.0 - ties / (n * k * (k * k - 1))
        chi2 = chi2 / correction if correction > 0 else 0.0
    p_chi2 = float(_scipy_stats.chi2.sf(chi2, k - 1))
    denominator = n * (k - 1) - chi2
    f_reason = ""
    if denominator <= 1e-12 * n * (k - 1):
        f_stat, p_f = math.nan, math.nan
        f_reason = (
            f"not computed: every row ranks the methods identically (chi2_F = N (k - 1) = {n * (k - 1)}), "
            "which makes the Iman-Davenport F's denominator 0"
        )
    else:
        f_stat = (n - 1) * chi2 / denominator
        p_f = float(_scipy_stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    return FriedmanResult(float(chi2), p_chi2, float(f_stat), p_f, average, ranks, n, k, tie_correction, "", f_reason)


def _friedman_test_iv(table, lower_is_better, alpha) -> tuple[np.ndarray, np.ndarray]:
    """Validate :func:`friedman_test`'s inputs."""
    _check_alpha(alpha, "friedman_test")
    array, lower = _rank_rows_iv(table, lower_is_better, "friedman_test")
    n, k = array.shape
    if n < 2 or k < 2:
        raise ValueError(
            f"friedman_test: received a table of {n} row(s) and {k} method(s); the test needs at "
            "least 2 rows (settings) and 2 methods."
        )
    return array, lower


NEMENYI_Q = {
    0.05: (1.959964, 2.343701, 2.569032, 2.727774, 2.849705, 2.948320, 3.030878, 3.101730, 3.163684,
           3.218654, 3.268004, 3.312739, 3.353618, 3.391230, 3.426041, 3.458425, 3.488685, 3.517073, 3.543799),
    0.10: (1.644854, 2.052293, 2.291341, 2.459516, 2.588521, 2.692732, 2.779884, 2.854606, 2.919889,
           2.977768, 3.029694, 3.076733, 3.119693, 3.159199, 3.195743, 3.229723, 3.261461, 3.291224, 3.319233),
}  # fmt: skip
"""Critical values ``q_alpha`` of the Nemenyi test for k = 2, 3, ..., 20 methods (index ``k - 2``).

``q_alpha`` is the Studentized range statistic for ``k`` groups and infinite degrees of freedom
divided by sqrt(2), computed as ``scipy.stats.studentized_range.ppf(1 - alpha, k, inf) / sqrt(2)``.
Demšar (2006, JMLR 7:1-30) prints them to three decimals for k <= 10 in Table 5(a) (e.g. 2.343
and 2.949 for k = 3 and 7 at alpha = 0.05, which differ from these in the last digit by rounding);
Orange's ``compute_CD`` and Kourentzes' published table carry the same values to more digits.
Other alphas and k > 20 are computed with scipy on demand.
"""


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi critical value ``q_alpha`` for ``k`` methods (see :data:`NEMENYI_Q`).

    Raises:
        ValueError: ``k`` is not an integer >= 2, or ``alpha`` is not strictly between 0 and 1.
    """
    _nemenyi_iv(k, 2, alpha, "nemenyi_q")
    for tabled, values in NEMENYI_Q.items():
        if math.isclose(alpha, tabled) and k - 2 < len(values):
            return values[k - 2]
    return float(_scipy_stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` in average-rank units.

    Two methods' performances differ significantly when their average ranks over the ``N`` rows
    differ by at least CD (Demšar 2006, section 3.2.2).

    Args:
        k: number of methods, >= 2.
        n: number of rows (settings) the ranks were averaged over, >= 1.
        alpha: significance level, strictly between 0 and 1 (0.05 and 0.10 are tabled).

    Example::

        >>> round(nemenyi_cd(4, 6), 4)  # 2.569032 * sqrt(20 / 36)
        1.9148
    """
    _nemenyi_iv(k, n, alpha, "nemenyi_cd")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def _nemenyi_iv(k, n, alpha, name: str) -> None:
    """Validate the Nemenyi helpers' inputs."""
    for label, value, least in (("k", k, 2), ("n", n, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name}: received {label}={value!r}; expected an integer >= {least}.")
    _check_alpha(alpha, name)


def nemenyi_groups(average_ranks, cd: float) -> list[tuple[str, ...]]:
    """Maximal groups of methods whose average ranks all lie within less than ``cd`` of each other.

    These are the bars of a critical-difference diagram: methods joined by one bar are not
    significantly different by the Nemenyi test. Groups of one method and groups contained in
    another are left out.

    Args:
        average_ranks: mapping (or ``pandas.Series``) method name -> average rank.
        cd: the critical difference, > 0 (e.g. from :func:`nemenyi_cd`).

    Returns:
        Groups as tuples of names, ordered best (lowest rank) first, each ordered by rank.

    Example::

        >>> nemenyi_groups({"a": 1.0, "b": 1.5, "c": 3.0}, cd=1.2)
        [('a', 'b')]
    """
    names, ranks = _nemenyi_groups_iv(average_ranks, cd)
    order = np.argsort(ranks, kind="stable")
    names = [names[i] for i in order]
    ranks = ranks[order]
    groups, max_end = [], -1
    for start in range(len(names)):
        end = start
        while end + 1 < len(names) and ranks[end + 1] - ranks[start] < cd:
            end += 1
        if end > start and end > max_end:  # not inside a group that starts earlier
            groups.append(tuple(names[start : end + 1]))
        max_end = max(max_end, end)
    return groups


def _nemenyi_groups_iv(average_ranks, cd) -> tuple[list[str], np.ndarray]:
    """Validate :func:`nemenyi_groups`'s inputs."""
    if not hasattr(average_ranks, "items"):
        raise ValueError(
            f"nemenyi_groups: received average_ranks of type {type(average_ranks).__name__}; expected "
            "a mapping (or pandas Series) method name -> average rank."
        )
    if not (isinstance(cd, (int, float, np.floating)) and math.isfinite(cd) and cd > 0):
        raise ValueError(f"nemenyi_groups: received cd={cd!r}; expected a positive finite number (see nemenyi_cd).")
    items = list(average_ranks.items())  # a dict or a pandas Series
    names = [str(name) for name, _ in items]
    ranks = _as_float_array([value for _, value in items], "nemenyi_groups", "average_ranks")
    _require_finite(ranks, "nemenyi_groups", "average_ranks")
    return names, ranks


class AcrossSettings(NamedTuple):
    """The across-settings analysis of :func:`compare_across_settings`.

    Attributes:
        average_ranks: ``pandas.Series`` method -> average rank, best (lowest) first.
        ranks: ``pandas.DataFrame`` ``[N rows, k methods]`` of within-row ranks (1 = best).
        friedman: :class:`FriedmanResult` (chi-square and Iman-Davenport F with p-values).
        alpha: the significance level used.
        q_alpha: the Nemenyi critical value for ``k`` methods at ``alpha``.
        cd: the Nemenyi critical difference in average-rank units.
        groups: :func:`nemenyi_groups` of the average ranks with ``cd``.
        pairwise: ``pandas.DataFrame``, one row per pair: ``a, b, rank_difference,
            nemenyi_significant, wins, ties, losses, mean_difference, wilcoxon_statistic,
            wilcoxon_p, wilcoxon_p_holm, wilcoxon_significant`` (``a`` better-ranked;
            wins/ties/losses count rows where ``a`` beats, ties or loses to ``b``; differences
            are oriented so that positive means ``a`` is better).
        dropped_rows: names of the rows left out because they had missing cells.
        lower_is_better: ``pandas.Series`` row -> bool, the direction used for each kept row.
        notes: plain-language caveats (Friedman not rejecting, small N, ...).
    """

    average_ranks: pd.Series
    ranks: pd.DataFrame
    friedman: FriedmanResult
    alpha: float
    q_alpha: float
    cd: float
    groups: list
    pairwise: pd.DataFrame
    dropped_rows: tuple
    lower_is_better: pd.Series
    notes: tuple

    def as_dict(self) -> dict:
        """Plain JSON-able numbers; NaN and infinity become ``None`` (see ``notes``)."""
        return {
            "average_ranks": {str(k): _json_float(v) for k, v in self.average_ranks.items()},
            "friedman_chi2": _json_float(self.friedman.statistic),
            "friedman_p": _json_float(self.friedman.pvalue),
            "iman_davenport_F": _json_float(self.friedman.iman_davenport_F),
            "iman_davenport_p": _json_float(self.friedman.iman_davenport_pvalue),
            "friedman_not_computed": self.friedman.not_computed or None,
            "iman_davenport_not_computed": self.friedman.iman_davenport_not_computed or None,
            "nemenyi_cd": _json_float(self.cd),
            "nemenyi_q_alpha": _json_float(self.q_alpha),
            "nemenyi_groups": [list(group) for group in self.groups],
            "pairwise": [
                {key: (_json_float(value) if isinstance(value, float) else value) for key, value in row.items()}
                for row in self.pairwise.to_dict("records")
            ],
            "alpha": self.alpha,
            "n_rows": self.friedman.n,
            "n_methods": self.friedman.k,
            "rows": [str(r) for r in self.ranks.index],
            "lower_is_better": {str(k): bool(v) for k, v in self.lower_is_better.items()},
            "dropped_rows": list(self.dropped_rows),
            "ranks": {str(row): {str(c): float(v) for c, v in values.items()} for row, values in self.ranks.iterrows()},
            "notes": list(self.notes),
        }


def compare_across_settings(
    table: pd.DataFrame, *, lower_is_better=False, alpha: float = 0.05, zero_method: str = "zsplit"
) -> AcrossSettings:
    """Demšar's analysis of ``k`` methods over ``N`` settings, plus Holm-corrected pairwise Wilcoxon.

    Steps: rank the methods within each row (1 = best, ties averaged); average the ranks;
    Friedman's chi-square and the Iman-Davenport F (:func:`friedman_test`, no tie correction);
    the Nemenyi critical difference and its groups; and, as the alternative that does not depend
    on which other methods are in the pool (Benavoli, Corani & Mangili 2016), a Wilcoxon
    signed-rank test for every pair over the rows, Holm-corrected across the pairs. Before the
    Wilcoxon test each row is oriented so that higher is better (lower-is-better rows are
    negated), so rows of different metrics can be mixed; the test still treats the raw
    differences as commensurable across rows, as Demšar notes.

    Missing cells: rows with a NaN cell are dropped (the tests need every method on every row),
    a warning names them and ``dropped_rows`` lists them. Demšar's post-hoc tests are meant for
    when Friedman rejects; they are still computed otherwise, with a note.

    Args:
        table: ``pandas.DataFrame`` ``[N rows (settings), k columns (methods)]`` of scores; row
            and column labels name them and must be unique. NaN marks a missing cell.
        lower_is_better: a bool, or one per row (array-like ``[N]`` or a Series indexed like
            ``table``), e.g. ``True`` for MSE rows.
        alpha: significance level of the Nemenyi CD and of the Holm-corrected Wilcoxon tests.
        zero_method: how zero differences enter the Wilcoxon tests (see :func:`paired_comparison`).

    Returns:
        AcrossSettings.

    Raises:
        StatsInputError: fewer than 2 methods, duplicate labels, non-numeric or infinite cells,
            or fewer than 2 complete rows left after dropping those with missing cells.
    """
    frame, lower, dropped = _compare_across_settings_iv(table, lower_is_better, alpha)
    names = [str(c) for c in frame.columns]
    result = friedman_test(frame.to_numpy(), lower_is_better=lower.to_numpy(), alpha=alpha)
    k, n = result.k, result.n
    average = pd.Series(result.average_ranks, index=names).sort_values(kind="stable")
    ranks = pd.DataFrame(result.ranks, index=frame.index, columns=names)
    q_alpha = nemenyi_q(k, alpha)
    cd = nemenyi_cd(k, n, alpha)
    groups = nemenyi_groups(average, cd)
    oriented = frame.to_numpy() * np.where(lower.to_numpy(), -1.0, 1.0)[:, np.newaxis]
    ordered = list(average.index)
    columns = {name: oriented[:, names.index(name)] for name in ordered}
    rows = []
    for pair in pairwise_comparisons(columns, alpha=alpha, zero_method=zero_method):
        d = columns[pair.a] - columns[pair.b]
        rank_difference = float(average[pair.b] - average[pair.a])
        rows.append(
            {
                "a": pair.a,
                "b": pair.b,
                "rank_difference": rank_difference,
                "nemenyi_significant": bool(rank_difference >= cd),
                "wins": int(np.sum(d > 0)),
                "ties": int(np.sum(d == 0)),
                "losses": int(np.sum(d < 0)),
                "mean_difference": pair.comparison.mean_difference,
                "wilcoxon_statistic": pair.comparison.wilcoxon_statistic,
                "wilcoxon_p": pair.comparison.wilcoxon_pvalue,
                "wilcoxon_p_holm": pair.wilcoxon_pvalue_holm,
                "wilcoxon_significant": pair.significant,
            }
        )
    pairwise = pd.DataFrame(rows, columns=list(_PAIRWISE_COLUMNS))
    notes = []
    if dropped:
        notes.append(f"{len(dropped)} row(s) with missing cells dropped: {', '.join(dropped)}.")
    if result.not_computed:
        notes.append(
            f"Friedman's test was not computed (fewer than {friedman_min_rows(k, alpha)} rows); the average "
            "ranks are descriptive and the post-hoc tests below are for information only."
        )
    else:
        computed = [p for p in (result.pvalue, result.iman_davenport_pvalue) if math.isfinite(p)]
        if all(p > alpha for p in computed):
            friedman = f"Friedman's chi-square (p = {result.pvalue:.3g})"
            if math.isfinite(result.iman_davenport_pvalue):
                verdict = f"Neither {friedman} nor the Iman-Davenport F (p = {result.iman_davenport_pvalue:.3g}) rejects"
            else:
                verdict = f"{friedman} does not reject"
            notes.append(
                f"{verdict} equal performance at alpha = {alpha}; the post-hoc tests below are for information only."
            )
        if n <= 10 or k <= 5:
            notes.append(
                f"With N = {n} rows and k = {k} methods the chi-square and F approximations are rough "
                "(Demšar suggests N > 10 and k > 5)."
            )
    return AcrossSettings(average, ranks, result, float(alpha), q_alpha, cd, groups, pairwise, tuple(dropped),
                          lower, tuple(notes))  # fmt: skip


_PAIRWISE_COLUMNS = (
    "a", "b", "rank_difference", "nemenyi_significant", "wins", "ties", "losses", "mean_difference",
    "wilcoxon_statistic", "wilcoxon_p", "wilcoxon_p_holm", "wilcoxon_significant",
)  # fmt: skip


def _compare_across_settings_iv(table, lower_is_better, alpha) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """Validate :func:`compare_across_settings`'s inputs; drop rows with missing cells."""
    _check_alpha(alpha, "compare_across_settings")
    if not isinstance(table, pd.DataFrame):
        raise StatsInputError(
            f"compare_across_settings: received a {type(table).__name__}; expected a pandas DataFrame "
            "with rows = settings and columns = methods (see read_results_table)."
        )
    for axis, labels in (("method (column)", table.columns), ("row", table.index)):
        strings = [str(label) for label in labels]
        duplicates = sorted({s for s in strings if strings.count(s) > 1})
        if duplicates:
            raise StatsInputError(f"Duplicate {axis} name(s) {duplicates}; every {axis} needs a unique name.")
    if table.shape[1] < 2:
        raise StatsInputError(
            f"Received {table.shape[1]} method(s) ({[str(c) for c in table.columns]}); need at least 2 "
            "columns of methods to compare."
        )
    try:
        frame = table.apply(pd.to_numeric, errors="raise").astype(np.float64)
    except (TypeError, ValueError) as err:
        raise StatsInputError(f"Every cell must be a number or missing (NaN); {err}.") from err
    values = frame.to_numpy()
    infinite = np.isinf(values)
    if infinite.any():
        row, col = map(int, np.argwhere(infinite)[0])
        raise StatsInputError(
            f"Cell (row {frame.index[row]!r}, column {frame.columns[col]!r}) is infinite; use a finite "
            "score or leave the cell empty (missing)."
        )
    if isinstance(lower_is_better, pd.Series):
        lower = lower_is_better.reindex(frame.index)
        if lower.isna().any():
            missing = [str(r) for r in lower.index[lower.isna()]]
            raise StatsInputError(f"lower_is_better has no entry for row(s) {missing}.")
        lower = lower.astype(bool)
    else:
        flags = np.asarray(lower_is_better, dtype=bool)
        if flags.ndim == 0:
            flags = np.full(len(frame), bool(flags))
        if flags.shape != (len(frame),):
            raise StatsInputError(
                f"Received lower_is_better of shape {flags.shape} for {len(frame)} rows; pass one bool or one per row."
            )
        lower = pd.Series(flags, index=frame.index)
    incomplete = frame.isna().any(axis=1)
    dropped = [str(r) for r in frame.index[incomplete]]
    if dropped:
        logger.warning(
            "Dropped %d row(s) with missing cells (every method must have a score on a row): %s.",
            len(dropped),
            ", ".join(dropped),
        )
    frame, lower = frame[~incomplete], lower[~incomplete]
    if len(frame) < 2:
        raise StatsInputError(
            f"Only {len(frame)} complete row(s) left (rows need a score for every method; dropped for "
            f"missing cells: {dropped or 'none'}); need at least 2 rows (settings) to rank methods across."
        )
    return frame, lower, dropped


# ---------------------------------------------------------------------------------------------
# Results tables from CSV
# ---------------------------------------------------------------------------------------------


class StatsInputError(MetabenchError, ValueError):
    """A results table that cannot be analysed; the message names the cell, row or column and the fix."""


MISSING_TOKENS = ("", "na", "n/a", "nan", "none", "null", "-", "\u2013", "\u2014", "?")
"""Cell texts (compared case-insensitively, after stripping spaces) that mean "missing"."""

_NUMBER = re.compile(
    r"^\s*(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*%?\s*"
    r"(?:(?:\u00b1|\+/-|\+-)\s*(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*%?\s*)?$"
)


def read_results_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV results table: rows are settings (or data sets), columns methods.

    The first row is the header: its first cell names the row-label column (any text, may be
    empty) and the others are the method names. Each following row starts with the row's name.
    A cell is a number, optionally followed by ``%`` and/or an uncertainty written ``± 0.4``,
    ``+- 0.4`` or ``+/- 0.4`` (the uncertainty is ignored: ranks use the mean). Cells in
    :data:`MISSING_TOKENS` (empty, ``NA``, ``nan``, ``-``, ...) are missing and become NaN;
    :func:`compare_across_settings` drops rows that have any. Blank lines are skipped; the file
    is read as UTF-8 (a byte-order mark is fine).

    Args:
        path: the CSV file.

    Returns:
        ``pandas.DataFrame`` of floats ``[rows, methods]``, indexed by row name.

    Raises:
        StatsInputError: the file is missing or unreadable; it is empty; a method or row name is
            empty or repeated; fewer than 2 methods or 2 rows; a row has the wrong number of
            cells; or a cell is neither a number nor a missing marker (the message gives its
            line, row and column).
    """
    path = Path(path)
    text = _read_results_table_iv(path)
    reader = csv.reader(io.StringIO(text))
    lines = [(number, row) for number, row in enumerate(reader, start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise StatsInputError(f"{path} is empty; expected a header row (row label, method names...) and one row per setting.")
    header_line, header = lines[0]
    methods = [cell.strip() for cell in header[1:]]
    while methods and methods[-1] == "" and all(len(row) <= len(methods) for _, row in lines[1:]):
        methods.pop()  # trailing commas in the header
    if len(methods) < 2:
        hint = " (is the file separated by ';' or tabs? use commas)" if any(s in text for s in (";", "\t")) else ""
        raise StatsInputError(
            f"{path}: the header (line {header_line}) names {len(methods)} method(s) {methods}; need at "
            f"least 2 method columns after the row-name column{hint}."
        )
    for i, name in enumerate(methods):
        if not name:
            raise StatsInputError(f"{path}: column {i + 2} of the header (line {header_line}) has no method name; name it.")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise StatsInputError(f"{path}: duplicate method name(s) {duplicates} in the header (line {header_line}); make them unique.")
    names, values = [], []
    for number, row in lines[1:]:
        cells = [cell.strip() for cell in row]
        while len(cells) > len(methods) + 1 and cells[-1] == "":
            cells.pop()
        if len(cells) != len(methods) + 1:
            raise StatsInputError(
                f"{path}: line {number} has {len(cells)} cell(s) but the header has {len(methods) + 1} "
                f"(row name + {len(methods)} methods); fix the row {cells[:1]}."
            )
        name = cells[0]
        if not name:
            raise StatsInputError(f"{path}: line {number} has no row name in its first cell; name the setting.")
        if name in names:
            raise StatsInputError(f"{path}: duplicate row name {name!r} (line {number}); make row names unique.")
        names.append(name)
        values.append([_parse_cell(cell, path, number, name, method) for cell, method in zip(cells[1:], methods)])
    if len(names) < 2:
        raise StatsInputError(f"{path}: found {len(names)} data row(s); need at least 2 rows (settings) to rank methods across.")
    frame = pd.DataFrame(values, index=pd.Index(names, name=header[0].strip() or None), columns=methods, dtype=np.float64)
    return frame


def _read_results_table_iv(path: Path) -> str:
    """Validate :func:`read_results_table`'s path and return the file's text."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise StatsInputError(f"Cannot read results table {str(path)!r}: {what}. Pass the path of a CSV file.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise StatsInputError(f"{path} is not UTF-8 text ({err}); save the table as a UTF-8 CSV.") from err
    except OSError as err:
        raise StatsInputError(f"Cannot read results table {path}: {err}.") from err


def _parse_cell(cell: str, path: Path, line: int, row: str, method: str) -> float:
    if cell.lower() in MISSING_TOKENS:
        return math.nan
    match = _NUMBER.match(cell)
    if match is None:
        raise StatsInputError(
            f"{path}: line {line}, row {row!r}, column {method!r}: cannot read {cell!r} as a number. "
            "Write a number (e.g. 98.7, 98.7%, 98.7 ± 0.4) or leave the cell empty / NA for a missing value."
        )
    value = float(match.group("value"))
    if not math.isfinite(value):
        raise StatsInputError(f"{path}: line {line}, row {row!r}, column {method!r}: {cell!r} is not finite.")
    return value


# ---------------------------------------------------------------------------------------------
# Shared validation helpers
# ---------------------------------------------------------------------------------------------


def _as_float_array(values, function: str, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{function}: {name} must be numeric; could not convert it to floats ({err}).") from err


def _require_finite(array: np.ndarray, function: str, name: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        nan_count = int(np.isnan(array).sum())
        where = np.unravel_index(int(np.argmax(bad)), array.shape)
        raise ValueError(
            f"{function}: {name} has {nan_count} NaN and {int(bad.sum()) - nan_count} infinite value(s) "
            f"among {array.size} (first at index {tuple(int(i) for i in where) if array.ndim > 1 else int(where[0])}); "
            "drop or investigate them first."
        )


def _check_confidence(confidence, function: str) -> None:
    if isinstance(confidence, bool) or not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"{function}: received confidence={confidence!r}; expected a number strictly between 0 and 1, e.g. 0.95.")


def _check_alpha(alpha, function: str) -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"{function}: received alpha={alpha!r}; expected a significance level strictly between 0 and 1, e.g. 0.05.")


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
