"""Across settings (Demšar 2006): ranks, Friedman, Iman-Davenport, Nemenyi, pairwise Wilcoxon + Holm,
missing cells, and reading a results table from CSV."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from metabench.harness.analysis.stats import (
    NEMENYI_Q,
    AcrossSettings,
    FriedmanResult,
    StatsInputError,
    compare_across_settings,
    friedman_min_rows,
    friedman_test,
    holm,
    nemenyi_cd,
    nemenyi_groups,
    nemenyi_q,
    rank_rows,
    read_results_table,
)

# ----------------------------------------------------------------------------- ranks


def test_rank_rows_averages_ties_and_follows_each_rows_direction():
    assert rank_rows([[0.9, 0.8, 0.9]]).tolist() == [[1.5, 3.0, 1.5]]
    assert rank_rows([[0.9, 0.8, 0.7]], lower_is_better=True).tolist() == [[3.0, 2.0, 1.0]]
    # an accuracy row and an MSE row ranked together
    assert rank_rows([[0.9, 0.8], [0.2, 0.5]], lower_is_better=[False, True]).tolist() == [[1.0, 2.0], [1.0, 2.0]]
    assert rank_rows([[1.0, 1.0, 1.0, 0.0]]).tolist() == [[2.0, 2.0, 2.0, 4.0]]


def test_rank_rows_rejects_a_wrong_direction_length():
    with pytest.raises(ValueError, match=r"rank_rows: received lower_is_better of shape \(3,\) for 2 rows"):
        rank_rows([[1, 2], [3, 4]], lower_is_better=[True, False, True])


# ----------------------------------------------------------------------------- Friedman and Iman-Davenport

TABLE = [[3, 2, 1], [3, 1, 2], [3, 2, 1], [3, 2, 1]]  # higher is better; N = 4 rows, k = 3 methods


def test_friedman_matches_hand_computed_values():
    result = friedman_test(TABLE)
    assert isinstance(result, FriedmanResult)
    # ranks per row [1, 2, 3], [1, 3, 2], [1, 2, 3], [1, 2, 3] -> average [1, 2.25, 2.75]
    assert result.average_ranks.tolist() == [1.0, 2.25, 2.75]
    # chi2_F = 12 * 4 / (3 * 4) * (1 + 5.0625 + 7.5625 - 3 * 16 / 4) = 4 * 1.625 = 6.5
    assert result.statistic == pytest.approx(6.5)
    assert result.pvalue == pytest.approx(math.exp(-6.5 / 2))  # chi-square with 2 df: sf = exp(-x / 2)
    # F_F = (N - 1) chi2 / (N (k - 1) - chi2) = 3 * 6.5 / (8 - 6.5) = 13 with (2, 6) df
    assert result.iman_davenport_F == pytest.approx(13.0)
    assert result.iman_davenport_pvalue == pytest.approx(scipy_stats.f.sf(13.0, 2, 6))
    assert (result.n, result.k, result.tie_correction) == (4, 3, False)


def test_friedman_agrees_with_scipy_without_ties():
    table = np.random.default_rng(0).random((12, 5))
    ours = friedman_test(table)
    theirs = scipy_stats.friedmanchisquare(*table.T)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(theirs.pvalue, rel=1e-12)


def test_friedman_with_ties_follows_demsar_or_scipy_by_choice():
    table = [[1.0, 1.0, 0.5], [0.9, 0.8, 0.8], [0.7, 0.9, 0.6], [0.5, 0.5, 0.5]]
    # ranks: [1.5, 1.5, 3], [1, 2.5, 2.5], [2, 1, 3], [2, 2, 2] -> average [1.625, 1.75, 2.625]
    demsar = friedman_test(table)
    assert demsar.average_ranks.tolist() == [1.625, 1.75, 2.625]
    expected = 12 * 4 / (3 * 4) * (1.625**2 + 1.75**2 + 2.625**2 - 3 * 16 / 4)
    assert demsar.statistic == pytest.approx(expected)  # 2.375, no tie correction
    corrected = friedman_test(table, tie_correction=True)
    scipy_result = scipy_stats.friedmanchisquare(*np.asarray(table).T)
    assert corrected.statistic == pytest.approx(scipy_result.statistic, rel=1e-12)
    assert corrected.pvalue == pytest.approx(scipy_result.pvalue, rel=1e-12)
    assert corrected.statistic > demsar.statistic


def test_friedman_edge_cases_all_tied_and_identical_rankings():
    tied = friedman_test([[0.5, 0.5], [0.7, 0.7]] * 3)  # 6 rows: as many as k = 2 methods need
    assert (tied.statistic, tied.pvalue, tied.iman_davenport_F, tied.iman_davenport_pvalue) == (0.0, 1.0, 0.0, 1.0)
    assert (tied.not_computed, tied.iman_davenport_not_computed) == ("", "")
    assert friedman_test([[0.5, 0.5], [0.7, 0.7]] * 3, tie_correction=True).statistic == 0.0
    same = friedman_test([[3, 2, 1], [30, 20, 10], [0.3, 0.2, 0.1]])  # chi2 = N (k - 1): F_F's denominator is 0
    assert same.statistic == pytest.approx(6.0) and same.pvalue == pytest.approx(math.exp(-3.0))
    assert math.isnan(same.iman_davenport_F) and math.isnan(same.iman_davenport_pvalue)  # never inf
    assert same.not_computed == ""
    assert same.iman_davenport_not_computed.startswith(
        "not computed: every row ranks the methods identically (chi2_F = N (k - 1) = 6)"
    )


@pytest.mark.parametrize(("k", "alpha", "rows"), [(2, 0.05, 6), (3, 0.05, 3), (4, 0.05, 2), (10, 0.05, 2), (2, 0.10, 5),
                                                  (3, 0.01, 4)])  # fmt: skip
def test_friedman_min_rows_is_where_the_most_extreme_outcome_becomes_significant(k, alpha, rows):
    assert friedman_min_rows(k, alpha) == rows
    extreme = math.factorial(k) ** (1 - rows)  # exact probability that every row ranks the methods alike
    assert extreme <= alpha
    if rows > 2:
        assert math.factorial(k) ** (2 - rows) > alpha  # one row fewer cannot reject
    with pytest.raises(ValueError, match=r"friedman_min_rows: received k=1; expected an integer >= 2"):
        friedman_min_rows(1)


@pytest.mark.parametrize("table", [[[3, 2], [30, 20]], [[1, 2, 3], [3, 2, 1]], [[1, 2]] * 5])
def test_friedman_with_too_few_rows_is_not_computed_and_says_why(table):
    result = friedman_test(table)
    n, k = len(table), len(table[0])
    numbers = (result.statistic, result.pvalue, result.iman_davenport_F, result.iman_davenport_pvalue)
    assert all(math.isnan(x) for x in numbers)
    assert result.not_computed == result.iman_davenport_not_computed
    assert result.not_computed.startswith(
        f"not computed: Friedman/Iman-Davenport need at least {friedman_min_rows(k)} rows (settings) for k = {k} "
        f"methods at alpha = 0.05; have {n}"
    )
    assert result.average_ranks.shape == (k,) and (result.n, result.k) == (n, k)  # the ranks stay


def test_two_settings_are_not_computed_in_every_output_never_inf():
    table = pd.DataFrame([[0.9, 0.8], [0.7, 0.6]], index=["s1", "s2"], columns=["maml", "fomaml"])  # alike: F_F was inf
    result = compare_across_settings(table)
    payload = result.as_dict()
    json.dumps(payload, allow_nan=False)
    assert payload["friedman_chi2"] is None and payload["iman_davenport_F"] is None
    assert payload["friedman_not_computed"].startswith("not computed: Friedman/Iman-Davenport need at least 6 rows")
    assert any("Friedman's test was not computed (fewer than 6 rows)" in note for note in result.notes)
    assert not any("inf" in note.split() for note in result.notes)
    assert list(result.average_ranks.index) == ["maml", "fomaml"]


def test_friedman_needs_two_rows_and_two_methods():
    with pytest.raises(ValueError, match=r"friedman_test: received a table of 1 row\(s\) and 3 method\(s\); the test needs at least 2 rows"):
        friedman_test([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"received a table of 3 row\(s\) and 1 method\(s\)"):
        friedman_test([[1], [2], [3]])
    with pytest.raises(ValueError, match=r"friedman_test: table has 1 NaN"):
        friedman_test([[1, float("nan")], [2, 3]])


# ----------------------------------------------------------------------------- Nemenyi


def test_nemenyi_table_is_the_studentized_range_over_sqrt_two():
    for alpha, values in NEMENYI_Q.items():
        assert len(values) == 19  # k = 2 .. 20
        for k, q in enumerate(values, start=2):
            expected = scipy_stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
            assert q == pytest.approx(expected, abs=2e-6), (alpha, k)


def test_nemenyi_q_matches_demsar_table_5():
    # Demšar (2006) Table 5(a), three decimals
    demsar_005 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    demsar_010 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k in range(2, 11):
        assert nemenyi_q(k, 0.05) == pytest.approx(demsar_005[k - 2], abs=1.5e-3)
        assert nemenyi_q(k, 0.10) == pytest.approx(demsar_010[k - 2], abs=1.5e-3)
    assert nemenyi_q(25, 0.05) == pytest.approx(scipy_stats.studentized_range.ppf(0.95, 25, np.inf) / math.sqrt(2))
    assert nemenyi_q(4, 0.01) == pytest.approx(scipy_stats.studentized_range.ppf(0.99, 4, np.inf) / math.sqrt(2))


def test_nemenyi_cd_reproduces_demsars_worked_example():
    # Demšar section 3.2.4: four methods over 14 data sets, CD = 2.569 * sqrt(4 * 5 / (6 * 14)) = 1.25
    assert nemenyi_cd(4, 14) == pytest.approx(1.2536, abs=1e-4)
    assert nemenyi_cd(4, 6) == pytest.approx(2.569032 * math.sqrt(20 / 36))


@pytest.mark.parametrize(("k", "n", "alpha", "message"), [(1, 5, 0.05, r"received k=1; expected an integer >= 2"),
                                                          (3, 0, 0.05, r"received n=0; expected an integer >= 1"),
                                                          (3, 5, 1.5, r"received alpha=1.5; expected a significance level")])  # fmt: skip
def test_nemenyi_cd_rejects_bad_input(k, n, alpha, message):
    with pytest.raises(ValueError, match=message):
        nemenyi_cd(k, n, alpha)


def test_nemenyi_groups_are_maximal_and_leave_singletons_out():
    assert nemenyi_groups({"a": 1.0, "b": 1.5, "c": 3.0}, cd=1.2) == [("a", "b")]
    ranks = {"m1": 1.4, "m2": 1.6, "m3": 3.2, "m4": 3.8, "m5": 4.5, "m6": 5.5}
    assert nemenyi_groups(ranks, cd=2.67) == [("m1", "m2", "m3", "m4"), ("m3", "m4", "m5", "m6")]
    assert nemenyi_groups({"a": 1.0, "b": 3.0}, cd=2.0) == []  # differ by exactly CD: significant
    assert nemenyi_groups(pd.Series({"b": 2.0, "a": 1.0}), cd=5.0) == [("a", "b")]


# ----------------------------------------------------------------------------- compare_across_settings


def _frame(rows: dict) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=["maml", "mamlpp", "baseline"])


def test_compare_across_settings_gives_every_number_and_agrees_with_its_parts():
    table = _frame({"o5w1s": [98.7, 99.5, 97.0], "o5w5s": [99.9, 99.8, 98.0], "o20w1s": [95.8, 97.6, 90.0],
                    "o20w5s": [98.9, 99.3, 96.0], "m5w1s": [48.7, 52.2, 42.1]})  # fmt: skip
    result = compare_across_settings(table, alpha=0.05)
    assert isinstance(result, AcrossSettings)
    assert list(result.average_ranks.index) == ["mamlpp", "maml", "baseline"]
    assert result.average_ranks.tolist() == pytest.approx([1.2, 1.8, 3.0])
    friedman = friedman_test(table.to_numpy())
    assert result.friedman.statistic == pytest.approx(friedman.statistic)
    assert result.cd == pytest.approx(nemenyi_cd(3, 5, 0.05)) and result.q_alpha == nemenyi_q(3, 0.05)
    assert result.dropped_rows == ()
    pairs = result.pairwise.set_index(["a", "b"])
    assert list(pairs.index) == [("mamlpp", "maml"), ("mamlpp", "baseline"), ("maml", "baseline")]
    d = table["mamlpp"] - table["maml"]
    raw = [scipy_stats.wilcoxon(table[a] - table[b], zero_method="zsplit").pvalue for a, b in pairs.index]
    assert pairs.loc[("mamlpp", "maml"), "wilcoxon_p"] == pytest.approx(raw[0])
    assert pairs["wilcoxon_p_holm"].tolist() == pytest.approx(holm(raw).tolist())
    assert pairs.loc[("mamlpp", "maml"), ["wins", "ties", "losses"]].tolist() == [int((d > 0).sum()), 0, int((d < 0).sum())]
    assert pairs.loc[("mamlpp", "baseline"), "rank_difference"] == pytest.approx(1.8)
    assert pairs.loc[("mamlpp", "baseline"), "nemenyi_significant"] == bool(1.8 >= result.cd)
    payload = result.as_dict()
    for key in ("average_ranks", "friedman_chi2", "friedman_p", "iman_davenport_F", "iman_davenport_p", "nemenyi_cd", "pairwise"):
        assert key in payload
    json.dumps(payload, allow_nan=False)  # plain JSON


def test_lower_is_better_reverses_the_ranks_and_the_wilcoxon_orientation():
    table = _frame({"s1": [0.3, 0.2, 0.9], "s2": [0.4, 0.1, 0.8], "s3": [0.35, 0.3, 0.7]})
    result = compare_across_settings(table, lower_is_better=True)
    assert list(result.average_ranks.index) == ["mamlpp", "maml", "baseline"]
    top = result.pairwise.iloc[0]
    assert (top["a"], top["b"], top["wins"], top["losses"]) == ("mamlpp", "maml", 3, 0)
    assert top["mean_difference"] > 0  # oriented: positive means a is better


def test_rows_with_missing_cells_are_dropped_with_a_warning(caplog):
    table = _frame({"s1": [1, 2, 3], "s2": [np.nan, 2, 3], "s3": [3, 1, 2], "s4": [1, 3, np.nan]})
    with caplog.at_level("WARNING", logger="metabench.harness.analysis.stats"):
        result = compare_across_settings(table)
    assert result.dropped_rows == ("s2", "s4")
    assert list(result.ranks.index) == ["s1", "s3"] and result.friedman.n == 2
    assert "Dropped 2 row(s) with missing cells" in caplog.text and "s2, s4" in caplog.text
    assert any("row(s) with missing cells dropped: s2, s4" in note for note in result.notes)


def test_ties_within_rows_are_averaged_and_counted_as_ties():
    table = _frame({"s1": [0.9, 0.9, 0.5], "s2": [0.8, 0.8, 0.7], "s3": [0.7, 0.6, 0.5]})
    result = compare_across_settings(table)
    assert result.ranks.loc["s1"].tolist() == [1.5, 1.5, 3.0]
    pair = result.pairwise.set_index(["a", "b"]).loc[("maml", "mamlpp")]
    assert (pair["wins"], pair["ties"], pair["losses"]) == (1, 2, 0)


def test_friedman_not_rejecting_is_said_in_the_notes():
    table = _frame({"s1": [1, 2, 3], "s2": [3, 2, 1], "s3": [2, 3, 1]})
    notes = " ".join(compare_across_settings(table).notes)
    assert "the post-hoc tests below are for information only" in notes


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"a": [1.0, 2.0]}, index=["r1", "r2"]), r"Received 1 method\(s\) \(\['a'\]\); need at least 2"),
        (pd.DataFrame([[1, 2], [3, 4]], index=["r", "r"], columns=["a", "b"]), r"Duplicate row name\(s\) \['r'\]"),
        (pd.DataFrame([[1, 2], [3, 4]], index=["r1", "r2"], columns=["a", "a"]), r"Duplicate method \(column\) name\(s\) \['a'\]"),
        (pd.DataFrame([[1, np.inf], [3, 4]], index=["r1", "r2"], columns=["a", "b"]), r"Cell \(row 'r1', column 'b'\) is infinite"),
        (pd.DataFrame([[1, np.nan], [3, 4]], index=["r1", "r2"], columns=["a", "b"]), r"Only 1 complete row\(s\) left .*dropped for missing cells: \['r1'\]"),
        (pd.DataFrame([[1, "x"], [3, 4]], index=["r1", "r2"], columns=["a", "b"]), r"Every cell must be a number or missing"),
        ([[1, 2], [3, 4]], r"received a list; expected a pandas DataFrame"),
    ],
)
def test_compare_across_settings_rejects_bad_tables(table, message):
    with pytest.raises(StatsInputError, match=message):
        compare_across_settings(table)


# ----------------------------------------------------------------------------- CSV


def _csv(tmp_path, text: str):
    path = tmp_path / "table.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_results_table_accepts_published_style_cells(tmp_path):
    path = _csv(tmp_path, "\ufeffsetting,MAML,MAML++,ProtoNet\n"
                          "omniglot 5w1s,98.7 ± 0.4,99.47,98.8%\n"
                          "omniglot 5w5s,99.9 +- 0.1,99.85,NA\n"
                          "\n"
                          "mini 5w1s,48.70 +/- 1.84 %,52.15,\n")  # fmt: skip
    table = read_results_table(path)
    assert list(table.columns) == ["MAML", "MAML++", "ProtoNet"]
    assert list(table.index) == ["omniglot 5w1s", "omniglot 5w5s", "mini 5w1s"]
    assert table.index.name == "setting"
    assert table.loc["omniglot 5w1s"].tolist() == [98.7, 99.47, 98.8]
    assert table.loc["mini 5w1s", "MAML"] == 48.70
    assert np.isnan(table.loc["omniglot 5w5s", "ProtoNet"]) and np.isnan(table.loc["mini 5w1s", "ProtoNet"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty; expected a header row"),
        ("setting,a\nr1,1\nr2,2\n", r"the header \(line 1\) names 1 method\(s\) \['a'\]; need at least 2 method columns"),
        ("setting;a;b\nr1;1;2\nr2;3;4\n", r"names 0 method\(s\).*is the file separated by ';' or tabs\? use commas"),
        ("setting,a,a\nr1,1,2\nr2,3,4\n", r"duplicate method name\(s\) \['a'\] in the header \(line 1\)"),
        ("setting,a,,c\nr1,1,2,3\nr2,3,4,5\n", r"column 3 of the header \(line 1\) has no method name"),
        ("setting,a,b\nr1,1,2\nr1,3,4\n", r"duplicate row name 'r1' \(line 3\)"),
        ("setting,a,b\nr1,1,2\n", r"found 1 data row\(s\); need at least 2 rows"),
        ("setting,a,b\nr1,1,2\nr2,3\n", r"line 3 has 2 cell\(s\) but the header has 3"),
        ("setting,a,b\nr1,1,2\nr2,3,high\n", r"line 3, row 'r2', column 'b': cannot read 'high' as a number"),
        ("setting,a,b\nr1,1,2\n,3,4\n", r"line 3 has no row name in its first cell"),
    ],
)
def test_read_results_table_rejects_malformed_csv_naming_the_problem(tmp_path, text, message):
    with pytest.raises(StatsInputError, match=message):
        read_results_table(_csv(tmp_path, text))


def test_read_results_table_rejects_a_missing_file(tmp_path):
    with pytest.raises(StatsInputError, match=r"Cannot read results table .*nope.csv.*: no such file"):
        read_results_table(tmp_path / "nope.csv")
    with pytest.raises(StatsInputError, match=r"a folder"):
        read_results_table(tmp_path)
