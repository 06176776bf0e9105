"""The full report: vs-best marks from paired tests, pairs never across episode sets, seed spread,
average ranks across settings with the CD diagram, LaTeX and self-contained, escaped HTML."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from metabench.harness.cli.main import main
from metabench.harness.analysis.leaderboard import LEADERBOARD_COLUMNS, PAIRWISE_COLUMNS, VS_BEST, build_report
from metabench.harness.analysis.report import write_leaderboard, write_report
from metabench.harness.results.records import CurvePoint, Evaluation
from metabench.harness.analysis.stats import compare_across_settings, holm
from metabench.harness.results.store import ResultsStore
from helpers import record_run

F1, F2, F3 = "a1" * 32, "b2" * 32, "c3" * 32
EVIL = "<script>alert('x')</script>"


def _evaluation(values, *, ways=5, shots=1, fingerprint=F1, notes=None, steps=(0, 1, 3), headline=3) -> Evaluation:
    values = np.asarray(values, dtype=float)
    per_step = {s: np.clip(values - 0.1 * (headline - s), 0, 1) for s in steps}
    return Evaluation("test", ways, shots, 15, fingerprint, "accuracy", headline, per_step, notes or {})


def _add(store, algorithm, dataset, evaluation, seed=0, config=None) -> str:
    config = config or {"seed": seed, "train": {"meta_iterations": 300}}
    curve = [CurvePoint(i, 2.0 / i, 1 - 1 / i, float(i)) for i in range(1, 6)]
    return record_run(store, [evaluation], algorithm=algorithm, dataset=dataset, seed=seed, config=config,
                      config_hash=f"{seed:064x}", versions={"keras": "3.5.0"}, curve=curve, timings={"train_s": 1.0})  # fmt: skip


RNG = np.random.default_rng(7)
BEST = np.clip(RNG.binomial(75, 0.95, 40) / 75, 0, 1)
CLOSE = BEST.copy()
CLOSE[:3] -= 1 / 75  # three episodes one query worse: not significantly different
WORSE = np.clip(BEST - 0.05 - RNG.random(40) * 0.02, 0, 1)  # clearly worse on every episode


@pytest.fixture
def store(store):
    """The shared store (conftest.py) holding these runs:"""
    _add(store, "maml", "omniglot", _evaluation(BEST), seed=0)
    _add(store, "maml", "omniglot", _evaluation(BEST), seed=1)
    _add(store, "mamlpp", "omniglot", _evaluation(CLOSE))
    _add(store, "baseline", "omniglot", _evaluation(WORSE))
    _add(store, "reptile", "omniglot", _evaluation(BEST[:20] - 0.2, fingerprint=F2))  # another episode set
    # a second and third setting with the same three algorithms, for ranks across settings
    for shots, fingerprint, shift in ((5, F3, 0.0), (1, "d4" * 32, 0.0)):
        ways = 20 if fingerprint != F3 else 5
        _add(store, "maml", "omniglot", _evaluation(BEST - 0.02 + shift, ways=ways, shots=shots, fingerprint=fingerprint))
        _add(store, "mamlpp", "omniglot", _evaluation(BEST - 0.01, ways=ways, shots=shots, fingerprint=fingerprint))
        _add(store, "baseline", "omniglot", _evaluation(WORSE, ways=ways, shots=shots, fingerprint=fingerprint))
    return store


def _setting(table: pd.DataFrame, ways=5, shots=1) -> pd.DataFrame:
    return table[(table["ways"] == ways) & (table["shots"] == shots)].set_index("algorithm")


def test_vs_best_marks_come_from_holm_corrected_paired_wilcoxon_tests(store):
    report = build_report(store)
    rows = _setting(report.table)
    assert rows.loc["maml", "vs_best"] == "best" and rows.loc["maml", "rank"] == 1
    assert rows.loc["mamlpp", "vs_best"] == "not significantly different"
    assert rows.loc["baseline", "vs_best"] == "significantly worse"
    assert rows.loc["reptile", "vs_best"] == "not paired: other episode set"
    assert set(report.table["vs_best"]) <= set(VS_BEST)
    # the p-values are Holm over the setting's three tested pairs of scipy's zero-split Wilcoxon p-values
    best = BEST
    raw = [scipy_stats.wilcoxon(best - CLOSE, zero_method="zsplit").pvalue,
           scipy_stats.wilcoxon(best - WORSE, zero_method="zsplit").pvalue,
           scipy_stats.wilcoxon(CLOSE - WORSE, zero_method="zsplit").pvalue]  # fmt: skip
    adjusted = holm(raw)
    assert rows.loc["mamlpp", "p_vs_best_holm"] == pytest.approx(adjusted[0])
    assert rows.loc["baseline", "p_vs_best_holm"] == pytest.approx(adjusted[1])
    assert math.isnan(rows.loc["maml", "p_vs_best_holm"]) and math.isnan(rows.loc["reptile", "p_vs_best_holm"])


def test_pairs_on_different_episode_sets_are_listed_but_never_tested(store):
    pairs = build_report(store).pairs
    assert tuple(pairs.columns) == PAIRWISE_COLUMNS
    setting = pairs[(pairs["ways"] == 5) & (pairs["shots"] == 1)]
    assert len(setting) == 6  # 4 rows -> 6 pairs, 3 of them with reptile on another episode set
    untested = setting[setting["b"].str.startswith("reptile")]
    assert len(untested) == 3
    assert untested["wilcoxon_p"].isna().all() and not untested["significant"].any()
    assert untested["note"].str.contains("not paired: different episode sets").all()
    assert untested["note"].str.contains("never paired").all()
    tested = setting[~setting["b"].str.startswith("reptile")]
    assert (tested["episodes"] == 40).all() and tested["wilcoxon_p"].notna().all()
    # labels carry the fingerprint when a setting has several episode sets
    assert set(setting["a"]) | set(setting["b"]) == {"maml [a1a1a1a1]", "mamlpp [a1a1a1a1]", "baseline [a1a1a1a1]", "reptile [b2b2b2b2]"}
    row = tested[tested["b"].str.startswith("baseline") & tested["a"].str.startswith("maml [")].iloc[0]
    assert row["mean_difference"] == pytest.approx(float(np.mean(BEST - WORSE)))
    assert row["diff_low"] < row["mean_difference"] < row["diff_high"]
    assert row["effect_size_dz"] == pytest.approx(np.mean(BEST - WORSE) / np.std(BEST - WORSE, ddof=1))


def test_seed_spread_and_t_interval_columns(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation([1.0, 1.0, 0.5, 0.5]), seed=0)
        _add(opened, "maml", "omniglot", _evaluation([0.0, 1.0, 0.5, 1.0]), seed=1)
        row = build_report(opened).table.iloc[0]
    # per-seed means 0.75 and 0.625 -> std (ddof 1) = 0.125 / sqrt(2)
    assert row["seed_std"] == pytest.approx(0.0883883, abs=1e-7)
    # per-episode means [0.5, 1, 0.5, 0.75]: std (ddof 1) 0.2393568, t_{0.975, 3} = 3.182446
    assert row["ci95_t"] == pytest.approx(3.182446 * 0.2393568 / 2, rel=1e-5)
    assert tuple(build_report.__globals__["LEADERBOARD_COLUMNS"]) == LEADERBOARD_COLUMNS


def test_one_episode_cannot_be_tested_and_says_so(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation([0.9]))
        _add(opened, "mamlpp", "omniglot", _evaluation([0.8]))
        report = build_report(opened)
    assert report.table.set_index("algorithm").loc["mamlpp", "vs_best"] == "too few episodes to test"
    assert "one pair only" in report.pairs.iloc[0]["note"]
    assert math.isnan(report.table.iloc[0]["ci95_t"])


def test_ranks_across_settings_use_the_complete_table_and_match_the_stats_module(store):
    report = build_report(store)
    assert report.across is not None
    assert list(report.across_values.columns) and set(report.across_values.columns) == {"maml", "mamlpp", "baseline"}
    assert len(report.across_values) == 3  # reptile has only one episode set and is left out
    assert "reptile" in report.across_note
    expected = compare_across_settings(report.across_values)
    assert report.across.average_ranks.to_dict() == pytest.approx(expected.average_ranks.to_dict())
    assert report.across.cd == pytest.approx(expected.cd)
    assert report.across.average_ranks.index[-1] == "baseline"


def test_write_report_writes_every_format_and_the_cd_diagram(store, tmp_path):
    out = tmp_path / "reports"
    paths = write_report(store, out)
    names = {p.relative_to(out).as_posix() for p in paths}
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html", "comparisons.csv",
                 "across_settings.json", "figures/cd_diagram.svg", "figures/cd_diagram.png"):  # fmt: skip
        assert name in names and (out / name).is_file(), name
    assert any(n.startswith("figures/steps_") and n.endswith(".png") for n in names)
    assert any(n.startswith("figures/curves_omniglot") for n in names)
    markdown = (out / "leaderboard.md").read_text()
    assert "## Average ranks across settings" in markdown
    assert "![critical-difference diagram](figures/cd_diagram.svg)" in markdown
    assert re.search(r"Friedman chi-square = [\d.]+ \(df = 2\), p [=<] ", markdown)
    assert "not paired: different episode sets" in markdown
    assert "vs best" in markdown and "≈ best (p = " in markdown and "worse (p " in markdown
    table = pd.read_csv(out / "leaderboard.csv")
    assert tuple(table.columns) == LEADERBOARD_COLUMNS
    payload = json.loads((out / "across_settings.json").read_text())
    assert {"average_ranks", "friedman_chi2", "nemenyi_cd", "pairwise", "settings"} <= set(payload)


def test_write_leaderboard_keeps_its_two_files_and_needs_no_figures(store, tmp_path):
    paths = write_leaderboard(store, tmp_path)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv"]
    assert not (tmp_path / "figures").exists()
    assert "![" not in paths[0].read_text()


def test_one_setting_gives_no_cd_diagram_says_why_and_removes_stale_ones(tmp_path):
    figures = tmp_path / "out" / "figures"
    figures.mkdir(parents=True)
    for name in ("cd_diagram.svg", "cd_diagram.png", "steps_old_123456.svg", "mine.png"):
        (figures / name).write_text("from an earlier report")
    (tmp_path / "out" / "across_settings.json").write_text("{}")
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation(BEST))
        _add(opened, "mamlpp", "omniglot", _evaluation(CLOSE))
        paths = write_report(opened, tmp_path / "out")
    assert not any(p.name.startswith("cd_diagram") for p in paths)
    assert "needs at least 2 settings" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert not (tmp_path / "out" / "across_settings.json").exists()
    assert sorted(p.name for p in figures.iterdir() if not p.name.startswith(("steps_omniglot", "curves_omniglot"))) == ["mine.png"]


def test_html_is_self_contained_and_escapes_every_user_string(tmp_path):
    config = {"seed": 0, "model": {"name": EVIL}, "train": {"meta_iterations": 300}}
    with ResultsStore(tmp_path / "evil<b>.sqlite") as opened:
        for shots, fingerprint in ((1, F1), (5, F2)):
            _add(opened, EVIL, "omni<i>glot", _evaluation(BEST, shots=shots, fingerprint=fingerprint, notes={"mode": EVIL}), config=config)
            _add(opened, "maml & co", "omni<i>glot", _evaluation(WORSE, shots=shots, fingerprint=fingerprint), config=config)
        write_report(opened, tmp_path / "out")
    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "omni&lt;i&gt;glot" in page and "<i>" not in page
    assert "maml &amp; co" in page and "evil&lt;b&gt;.sqlite" in page
    assert page.count("<svg") >= 2  # the CD diagram and the steps figures, inline
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)  # nothing loaded from elsewhere
    tex = (tmp_path / "out" / "leaderboard.tex").read_text()
    assert r"maml \& co" in tex and r"\textless{}script\textgreater{}" in tex


def test_report_command_writes_the_report_and_reproduction(store, tmp_path, capsys):
    assert main(["report", "--store", str(store.path), "--out", str(tmp_path / "out"), "--reproduction"]) == 0
    printed = capsys.readouterr().out
    assert "leaderboard.html" in printed and "reproduction.md" in printed
    assert (tmp_path / "out" / "reproduction.md").is_file()
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err


# ----------------------------------------------------------------------------- recipes, steps, too few settings


def _recipe(seed=0, **algorithm) -> dict:
    return {"seed": seed, "algorithm": {"name": "maml", "first_order": False, "inner_lr": 0.4, **algorithm},
            "train": {"meta_iterations": 300}}  # fmt: skip


def test_paired_tests_only_between_recipes_on_the_same_episode_set(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation(BEST), config=_recipe())
        _add(opened, "maml", "omniglot", _evaluation(CLOSE), config=_recipe(first_order=True))
        _add(opened, "maml", "omniglot", _evaluation(WORSE, fingerprint=F2), config=_recipe(inner_lr=0.1))
        report = build_report(opened)
    assert list(report.table["label"]) == [
        "maml (first_order=false, inner_lr=0.4)", "maml (first_order=true, inner_lr=0.4)",
        "maml (first_order=false, inner_lr=0.1)",
    ]  # fmt: skip
    pairs = report.pairs
    tested = pairs[pairs["wilcoxon_p"].notna()]
    assert len(pairs) == 3 and len(tested) == 1
    assert (tested["fingerprint_a"] == tested["fingerprint_b"]).all() and tested["recipe_a"].ne(tested["recipe_b"]).all()
    assert pairs.loc[pairs["wilcoxon_p"].isna(), "note"].str.startswith("not paired: different episode sets").all()
    # training curves: one colour per recipe
    assert set(report.curves["label"]) == set(report.table["label"])


def test_a_pair_at_different_inner_steps_says_so_in_its_row(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation(BEST, steps=(0, 1), headline=1))
        _add(opened, "baseline", "omniglot", _evaluation(WORSE, steps=(0, 1, 10), headline=10))
        write_report(opened, tmp_path / "out")
        report = build_report(opened)
    (pair,) = report.pairs.to_dict("records")
    assert (pair["a"], pair["b"], pair["inner_steps_a"], pair["inner_steps_b"]) == ("maml", "baseline", 1, 10)
    assert pair["note"].startswith("steps 1 vs 10: at different inner-step counts; --steps N compares at equal ones")
    assert math.isfinite(pair["wilcoxon_p"])  # still tested, but never silently
    baseline = report.table.set_index("label").loc["baseline"]
    assert "vs best at steps 10 vs 1 (this row vs the best)" in baseline["notes"]
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    pair_row = next(line for line in markdown.splitlines() if line.startswith("| maml ") and "| baseline " in line)
    assert "| 1 vs 10 " in pair_row and "steps 1 vs 10" in pair_row
    assert "1 vs 10" in (tmp_path / "out" / "leaderboard.html").read_text()
    assert list(pd.read_csv(tmp_path / "out" / "comparisons.csv")[["inner_steps_a", "inner_steps_b"]].iloc[0]) == [1, 10]


def test_steps_option_compares_every_recipe_at_the_same_inner_step(tmp_path, caplog, capsys):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        _add(opened, "maml", "omniglot", _evaluation(BEST, steps=(0, 1), headline=1))
        _add(opened, "baseline", "omniglot", _evaluation(WORSE, steps=(0, 1, 10), headline=10))
        _add(opened, "reptile", "omniglot", _evaluation(CLOSE, steps=(0, 3), headline=3))  # never recorded step 1
        with caplog.at_level("WARNING", logger="metabench.harness.analysis.leaderboard"):
            report = build_report(opened, steps=1)
        path = opened.path
    assert set(report.table["label"]) == {"maml", "baseline"} and set(report.table["inner_steps"]) == {1}
    baseline = report.table.set_index("label").loc["baseline"]
    assert baseline["mean"] == pytest.approx(float(np.mean(np.clip(WORSE - 0.9, 0, 1))))  # its step-1 values
    (pair,) = report.pairs.to_dict("records")
    assert (pair["inner_steps_a"], pair["inner_steps_b"]) == (1, 1) and "steps" not in pair["note"]
    assert report.compared_at == 1 and len(report.left_out) == 1
    assert report.left_out[0].startswith("reptile (recipe ") and "recorded inner steps [0, 3], not 1" in report.left_out[0]
    assert "Left out of the comparison at inner step 1: reptile" in caplog.text
    out = tmp_path / "out"
    assert main(["report", "--store", str(path), "--out", str(out), "--steps", "1"]) == 0
    markdown = (out / "leaderboard.md").read_text()
    assert "every row reports inner step 1 (metabench report --steps 1)" in markdown
    assert "Left out (inner step 1 not recorded): reptile" in markdown
    assert set(pd.read_csv(out / "leaderboard.csv")["inner_steps"]) == {1}
    capsys.readouterr()
    assert main(["report", "--store", str(path), "--out", str(out), "--steps", "-1"]) == 2
    assert "received --steps -1; expected an inner-step count >= 0" in capsys.readouterr().err
    with ResultsStore(path) as opened:
        assert build_report(opened, steps=7).table.empty
        assert "No completed run recorded inner step 7" in write_leaderboard(opened, out, steps=7)[0].read_text()


def test_two_settings_say_not_computed_never_inf(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        for shots, fingerprint in ((1, F1), (5, F2)):  # both settings rank the two recipes alike: F_F used to be inf
            _add(opened, "maml", "omniglot", _evaluation(BEST, shots=shots, fingerprint=fingerprint), config=_recipe())
            _add(opened, "maml", "omniglot", _evaluation(WORSE, shots=shots, fingerprint=fingerprint),
                 config=_recipe(first_order=True))  # fmt: skip
        write_report(opened, tmp_path / "out")
        report = build_report(opened)
    assert report.across is not None and report.across.friedman.n == 2
    assert list(report.across.average_ranks.index) == ["maml (first_order=false)", "maml (first_order=true)"]
    reason = "not computed: Friedman/Iman-Davenport need at least 6 rows (settings) for k = 2 methods at alpha = 0.05; have 2"
    out = tmp_path / "out"
    markdown = (out / "leaderboard.md").read_text()
    across = markdown[markdown.index("## Average ranks across settings"):]
    assert reason in across and "F_F =" not in across and "Friedman chi-square =" not in across
    assert not re.search(r"\binf\b", across)
    tex = (out / "leaderboard.tex").read_text()
    assert "not computed" in tex and "\\infty" not in tex and "F_F =" not in tex
    assert reason in (out / "leaderboard.html").read_text()
    payload = json.loads((out / "across_settings.json").read_text())
    assert payload["friedman_chi2"] is None and payload["iman_davenport_F"] is None
    assert payload["friedman_not_computed"].startswith(reason)


def test_a_recipe_is_one_method_across_settings_whatever_its_label_in_each(tmp_path):
    # In the 1-shot setting a second MAML recipe makes the first one's label name meta_iterations; in the
    # 5-shot setting it is plain "maml". Ranked across settings, the first recipe is still one method.
    rng = np.random.default_rng(3)
    one, five = (lambda: _evaluation(rng.uniform(0.6, 0.9, 40))), (lambda: _evaluation(rng.uniform(0.7, 0.95, 40), shots=5, fingerprint=F2))
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        for algorithm, iterations, evaluations in (("maml", 300, [one(), five()]), ("maml", 600, [one()]),
                                                   ("baseline", 300, [one(), five()]), ("mamlpp", 300, [one(), five()])):
            config = {"seed": 0, "algorithm": {"name": algorithm}, "train": {"meta_iterations": iterations}}
            record_run(opened, evaluations, algorithm=algorithm, dataset="omniglot", config=config)
        report = build_report(opened)
    labels = set(report.table[report.table["algorithm"] == "maml"]["label"])
    assert labels == {"maml (meta_iterations=300)", "maml (meta_iterations=600)", "maml"}
    assert set(report.across_values.columns) == {"maml", "baseline", "mamlpp"}
    assert len(report.across_values) == 2
    assert "maml (meta_iterations=600)" in report.across_note  # on one setting only: left out
