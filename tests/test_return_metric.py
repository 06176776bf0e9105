"""Metric "return" (meta-RL, higher is better) through every path the supervised metrics take: the
metric's direction, baseline files, the check's decision and command, the stored-run pooling of the
leaderboard and its rendered report (markdown, CSV, LaTeX, HTML, figures), and sweeps.

Synthetic per-episode returns (no training) except the sweep, which runs a shrunken point-navigation config.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from helpers import record_run
from metabench.harness.analysis.comparison import compare
from metabench.harness.analysis.leaderboard import build_report
from metabench.harness.analysis.report import write_report
from metabench.harness.cli.main import main
from metabench.harness.results.baseline_file import Baseline, BaselineError
from metabench.harness.results.records import METRICS, PLAIN_METRICS, Evaluation, base_metric, higher_is_better
from metabench.harness.results.store import ResultsStore

FP = "b" * 64
CONFIG = {"name": "point-navigation-maml", "seed": 0, "backend": "tensorflow", "algorithm": {"name": "maml_rl", "inner_lr": 0.1},
          "dataset": {"name": "point_navigation"}, "engine": {"deterministic": True}, "evaluation": {"seed": 1}}  # fmt: skip
RNG = np.random.default_rng(17)
RETURNS = RNG.normal(-20.0, 6.0, size=100)  # per-goal mean return of a "baseline": negative, as point navigation's are


def _evaluation(values, fingerprint=FP) -> Evaluation:
    values = np.asarray(values, dtype=float)
    return Evaluation("test", None, 20, 20, fingerprint, "return", 1, {0: values - 30.0, 1: values, 2: values + 1.0})


def _record(store, values, *, algorithm="maml_rl", seed=0, config=CONFIG, fingerprint=FP) -> str:
    config = dict(copy.deepcopy(config), seed=seed)
    config["algorithm"] = dict(config["algorithm"], name=algorithm)
    return record_run(store, [_evaluation(values, fingerprint)], algorithm=algorithm, dataset="point_navigation", seed=seed,
                      config=config, versions={"tensorflow": "2.21.0"})  # fmt: skip


# ----------------------------------------------------------------------------- direction


def test_every_metric_has_a_direction_and_return_is_higher_is_better():
    assert {base_metric(m) for m in METRICS} == set(PLAIN_METRICS)
    assert [higher_is_better(m) for m in PLAIN_METRICS] == [True, False, True]
    with pytest.raises(ValueError, match=r"Received metric='f1'; expected one of"):
        base_metric("f1")


# ----------------------------------------------------------------------------- baseline files


def test_a_baseline_of_returns_round_trips_exactly(store, tmp_path, capsys):
    first, second = _record(store, RETURNS), _record(store, RETURNS + RNG.normal(0, 1, 100), seed=1)
    path = tmp_path / "baseline.json"
    Baseline.from_store(store, [first, second]).save(path)
    loaded = Baseline.load(path)
    (setting,) = loaded.settings
    assert setting.metric == "return" and loaded.seeds == [0, 1]
    assert sorted(setting.values) == [0, 1, 2] and setting.values[1].shape == (2, 100)
    np.testing.assert_array_equal(setting.values[1][0], RETURNS)  # bit for bit: floats written as shortest repr
    assert json.loads(path.read_text())["settings"][0]["metric"] == "return"
    # and from the command line, which shows returns as they are (not as a percentage)
    assert main(["baseline", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"return 0 steps {np.mean(loaded.settings[0].values[0]):.4f}" in out and "%" not in out.split("return", 1)[1]


def test_a_baseline_file_with_an_unknown_metric_is_refused_by_name(store, tmp_path):
    path = tmp_path / "baseline.json"
    Baseline.from_store(store, [_record(store, RETURNS)]).save(path)
    payload = json.loads(path.read_text())
    payload["settings"][0]["metric"] = "reward"
    path.write_text(json.dumps(payload))
    with pytest.raises(BaselineError, match=r"metric is 'reward'; expected one of \['accuracy', 'mse', 'return'\]"):
        Baseline.load(path)


# ----------------------------------------------------------------------------- the check


def test_a_lower_return_regresses_and_a_higher_one_improves(store):
    base = Baseline.from_store(store, [_record(store, RETURNS)])
    noise = RNG.normal(0.0, 0.5, size=100)
    worse = compare(base, Baseline.from_store(store, [_record(store, RETURNS - 3.0 + noise)]))
    s = worse.settings[0]
    assert s.higher_is_better and s.unit == "return"
    assert s.difference == pytest.approx(np.mean(noise - 3.0)) and s.gain == pytest.approx(s.difference)
    assert s.ci_low < s.difference < s.ci_high < 0
    assert (worse.decision, worse.exit_code) == ("regressed", 1)
    text = worse.explanation()
    assert "candidate worse (lower return)" in text and " return (90% CI" in text and "%" not in text.split("difference")[1][:12]
    better = compare(base, Baseline.from_store(store, [_record(store, RETURNS + 3.0 + noise)]))
    assert (better.decision, better.exit_code, better.settings[0].gain > 0) == ("improved", 0, True)
    # the tolerance is in units of return: 3 units worse is within a tolerance of 5
    assert compare(base, Baseline.from_store(store, [_record(store, RETURNS - 3.0)]), tolerance=5.0).decision == "unchanged"


@pytest.fixture
def stored(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        base, same = _record(store, RETURNS), _record(store, RETURNS)
        worse, better = _record(store, RETURNS - 2.0 + RNG.normal(0, 0.5, 100)), _record(store, RETURNS + 2.0)
        Baseline.from_store(store, [base]).save(tmp_path / "baseline.json")
    return tmp_path, same, worse, better


def test_check_command_on_returns_exits_1_for_a_worse_candidate_and_0_for_a_better_one(stored, capsys):
    folder, same, worse, better = stored
    common = ("check", "--baseline", str(folder / "baseline.json"), "--store", str(folder / "results.sqlite"))
    assert main([*common, "--run", same]) == 0
    assert "metabench check: UNCHANGED (exit 0)" in capsys.readouterr().out
    assert main([*common, "--run", worse, "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert (payload["decision"], payload["metric"], payload["unit"], payload["n"]) == ("regressed", "return", "return", 100)
    assert payload["difference"] == pytest.approx(-2.0, abs=0.2) and payload["settings"][0]["higher_is_better"] is True
    assert main([*common, "--run", better]) == 0
    assert capsys.readouterr().out.startswith("metabench check: IMPROVED (exit 0)")


# ----------------------------------------------------------------------------- leaderboard and report


#: per-goal returns of the three point-navigation rows and the ordering the leaderboard must show
NAVIGATION = {"random_rl": -100.0, "maml_rl": -18.0, "pretrain_rl": -38.0}


@pytest.fixture
def navigation(store):
    """Point-navigation runs (worst recorded first, so insertion order cannot pass for ranking), two seeds
    of MAML-RL, plus a sinusoid MSE section in the same store, where lower is better."""
    goals = RNG.normal(0.0, 5.0, size=60)  # goal difficulty, shared by every method: paired
    for algorithm, level in NAVIGATION.items():
        for seed in (0, 1) if algorithm == "maml_rl" else (0,):
            _record(store, level + goals + RNG.normal(0.0, 2.0, size=60), algorithm=algorithm, seed=seed)
    for algorithm, mse in (("maml", 0.5), ("pretrain", 2.0)):
        values = mse + RNG.gamma(2.0, 0.05, size=40)
        evaluation = Evaluation("test", None, 5, 100, "5" * 64, "mse", 1, {0: values + 1.0, 1: values})
        record_run(store, [evaluation], algorithm=algorithm, config={"seed": 0, "algorithm": {"name": algorithm}})
    return store


def test_the_leaderboard_ranks_returns_highest_first_with_paired_tests(navigation):
    report = build_report(navigation)
    table = report.table[report.table["dataset"] == "point_navigation"]
    assert list(table["algorithm"]) == ["maml_rl", "pretrain_rl", "random_rl"]
    assert list(table["rank"]) == [1.0, 2.0, 3.0] and set(table["metric"]) == {"return"}
    assert list(table["seeds"]) == [2, 1, 1] and list(table["episodes"]) == [60, 60, 60]
    assert list(table["vs_best"]) == ["best", "significantly worse", "significantly worse"]
    assert table["mean_percent"].isna().all()  # a return is no fraction
    np.testing.assert_allclose(table["mean"], sorted(NAVIGATION.values(), reverse=True), atol=2.0)
    pairs = report.pairs[report.pairs["metric"] == "return"]
    assert len(pairs) == 3 and pairs["significant"].all()
    assert (pairs["mean_difference"] > 0).all()  # A (better-ranked) minus B: positive for a higher return
    first = pairs[(pairs["a"] == "maml_rl") & (pairs["b"] == "pretrain_rl")].iloc[0]
    assert first["mean_difference"] == pytest.approx(20.0, abs=2.0) and first["episodes"] == 60
    sinusoid = report.table[report.table["dataset"] == "sinusoid"]
    assert list(sinusoid["algorithm"]) == ["maml", "pretrain"]  # lower MSE first, beside it
    steps = report.steps[report.steps["algorithm"] == "maml_rl"]
    assert sorted(steps["inner_steps"]) == [0, 1, 2]


def test_the_rendered_report_has_the_point_navigation_section(navigation, tmp_path):
    write_report(navigation, tmp_path)
    markdown = (tmp_path / "leaderboard.md").read_text()
    section = markdown.split("## point_navigation 20-shot (test split, 20 queries)")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "point_navigation" in line]
    assert [next(a for a in NAVIGATION if f"| {a} " in row) for row in rows] == ["maml_rl", "pretrain_rl", "random_rl"]
    assert all("| return " in row for row in rows) and "| best " in rows[0] and "| worse (p < 0.001) " in rows[2]
    mean = float(rows[0].split("| return ")[1].split("|")[1])
    assert mean == pytest.approx(NAVIGATION["maml_rl"], abs=2.0)  # shown as is, not as a percentage
    assert "Paired comparisons (3 tested pair(s)" in section
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(csv.loc[csv["metric"] == "return", "algorithm"]) == ["maml_rl", "pretrain_rl", "random_rl"]
    html = (tmp_path / "leaderboard.html").read_text()
    assert "mean return" in html and html.index("maml_rl") < html.index("pretrain_rl") < html.index("random_rl")
    assert "return" in (tmp_path / "leaderboard.tex").read_text()
    assert any("point_navigation" in p.name for p in (tmp_path / "figures").glob("steps_*.svg"))
