"""`metabench stats TABLE.csv`: printed tables, --json keys and numbers, --out files, and exit code 2
with a clear message for a malformed table."""

from __future__ import annotations

import json

import pytest

from metabench.harness.cli.main import main
from metabench.harness.analysis.stats import compare_across_settings, read_results_table

CSV = (
    "setting,maml,mamlpp,baseline,protonet\n"
    "omniglot 5w1s,98.7,99.47,97.1,98.8\n"
    "omniglot 5w5s,99.9,99.85,99.1,99.7\n"
    "omniglot 20w1s,95.8,97.65,90.2,96.0\n"
    "omniglot 20w5s,98.9,99.33,96.5,98.9\n"
    "mini 5w1s,48.70,52.15,42.11,49.42\n"
    "mini 5w5s,63.11,68.32,62.53,68.20\n"
)


@pytest.fixture
def table_csv(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_prints_ranks_friedman_iman_davenport_cd_and_pairs(table_csv, capsys):
    assert main(["stats", str(table_csv)]) == 0
    out = capsys.readouterr().out
    for text in ("Average ranks over 6 rows", "average rank", "mamlpp", "Friedman chi-square", "Iman-Davenport F_F",
                 "Nemenyi critical difference CD", "Pairwise", "Wilcoxon p (Holm)"):  # fmt: skip
        assert text in out, text
    expected = compare_across_settings(read_results_table(table_csv))
    assert f"{expected.friedman.statistic:.4f}" in out
    assert f"{expected.cd:.4f}" in out


def test_json_gives_the_same_numbers_machine_readably(table_csv, capsys):
    assert main(["stats", str(table_csv), "--json", "--alpha", "0.10"]) == 0
    payload = json.loads(capsys.readouterr().out)
    for key in ("average_ranks", "friedman_chi2", "friedman_p", "iman_davenport_F", "iman_davenport_p", "nemenyi_cd", "pairwise"):
        assert key in payload, key
    expected = compare_across_settings(read_results_table(table_csv), alpha=0.10)
    assert payload["average_ranks"] == pytest.approx(expected.average_ranks.to_dict())
    assert list(payload["average_ranks"]) == list(expected.average_ranks.index)  # best first
    assert payload["friedman_chi2"] == pytest.approx(expected.friedman.statistic)
    assert payload["iman_davenport_F"] == pytest.approx(expected.friedman.iman_davenport_F)
    assert payload["nemenyi_cd"] == pytest.approx(expected.cd)
    assert payload["alpha"] == 0.10 and payload["lower_is_better"] is False
    assert len(payload["pairwise"]) == 6
    first = payload["pairwise"][0]
    assert {"a", "b", "rank_difference", "nemenyi_significant", "wilcoxon_p", "wilcoxon_p_holm", "wilcoxon_significant"} <= set(first)


def test_lower_is_better_flips_the_ranking(table_csv, capsys):
    main(["stats", str(table_csv), "--json"])
    higher = json.loads(capsys.readouterr().out)["average_ranks"]
    main(["stats", str(table_csv), "--json", "--lower-is-better"])
    lower = json.loads(capsys.readouterr().out)["average_ranks"]
    assert next(iter(higher)) == "mamlpp" and next(iter(lower)) == "baseline"
    assert lower["mamlpp"] == pytest.approx(5 - higher["mamlpp"])


def test_out_writes_the_analysis_and_the_cd_diagram(table_csv, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["stats", str(table_csv), "--out", str(out)]) == 0
    for name in ("stats.json", "stats.md", "cd_diagram.svg", "cd_diagram.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in capsys.readouterr().out or True
    assert (out / "cd_diagram.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (out / "cd_diagram.svg").read_text()
    assert json.loads((out / "stats.json").read_text())["nemenyi_cd"] > 0
    assert "average rank" in (out / "stats.md").read_text()


def test_missing_cells_drop_rows_and_say_so(tmp_path, capsys, caplog):
    path = tmp_path / "t.csv"
    path.write_text("setting,a,b,c\ns1,1,2,3\ns2,2,,3\ns3,3,1,2\ns4,1,3,2\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert main(["stats", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["dropped_rows"] == ["s2"] and payload["n_rows"] == 3
    assert "s2" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("setting,a,b\nr1,1,2\nr2,3,n/a?\n", "line 3, row 'r2', column 'b': cannot read 'n/a?' as a number"),
        ("setting,a\nr1,1\nr2,2\n", "need at least 2 method columns"),
        ("setting,a,b\nr1,1,2\n", "need at least 2 rows"),
        ("setting,a,a\nr1,1,2\nr2,3,4\n", "duplicate method name(s) ['a']"),
    ],
)
def test_malformed_csv_exits_2_with_a_clear_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    assert main(["stats", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("metabench: error: ")
    assert message in captured.err
    assert captured.out == ""


def test_missing_file_and_bad_alpha_exit_2(tmp_path, table_csv, capsys):
    assert main(["stats", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["stats", str(table_csv), "--alpha", "1.5"]) == 2
    assert "expected a significance level strictly between 0 and 1" in capsys.readouterr().err
