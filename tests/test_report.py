"""The leaderboard: sections per setting, ordering, the CI column and convention, seeds combined
per episode, classification and regression side by side, and only completed runs."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pandas as pd
import pytest

from metabench.harness.analysis.leaderboard import LEADERBOARD_COLUMNS
from metabench.harness.analysis.report import write_leaderboard
from metabench.harness.results.records import CurvePoint, Evaluation, RunInfo
from metabench.harness.results.store import ResultsStore
from helpers import record_run

F1, F2, FS = "f1" * 32, "f2" * 32, "5e" * 32


def _info(algorithm: str, dataset: str, seed: int = 0) -> RunInfo:
    return RunInfo(algorithm, dataset, seed, {"seed": seed}, f"{seed:064x}", "jax", "CPU", {"keras": "3.5.0"})


def _accuracy(values, headline=5, ways=5, shots=1, fingerprint=F1, notes=None) -> Evaluation:
    return Evaluation(
        "test", ways, shots, 15, fingerprint, "accuracy", headline,
        {0: np.full(len(values), 0.2), headline: np.asarray(values, dtype=float)}, notes or {},
    )  # fmt: skip


def _mse(values) -> Evaluation:
    return Evaluation("test", None, 5, 10, FS, "mse", 10, {1: np.full(len(values), 9.0), 10: np.asarray(values)})


def _add(store: ResultsStore, algorithm: str, dataset: str, evaluation: Evaluation, seed: int = 0) -> str:
    return record_run(store, [evaluation], algorithm=algorithm, dataset=dataset, seed=seed, config_hash=f"{seed:064x}",
                      backend="jax", versions={"keras": "3.5.0"}, curve=[CurvePoint(1, 1.0, 0.5, 0.1)], timings={"total_s": 1.0})  # fmt: skip


def _add_unfinished(store: ResultsStore, algorithm: str, status: str) -> None:
    """A run that did not complete but has (near-perfect) result rows, written behind the API's back."""
    run_id = store.start_run(_info(algorithm, "omniglot"))
    if status != "running":
        store.fail_run(run_id, status, "did not finish")
    with sqlite3.connect(store.path) as conn:
        eval_id = conn.execute(
            "INSERT INTO evaluations (run_id, split, ways, shots, queries, fingerprint, metric, "
            "headline_steps, notes_json) VALUES (?, 'test', 5, 1, 15, ?, 'accuracy', 5, '{}')",
            (run_id, F1),
        ).lastrowid
        conn.executemany("INSERT INTO episode_metrics VALUES (?, 5, ?, 1.0)", [(eval_id, e) for e in range(4)])


@pytest.fixture
def store(store):
    """The shared store (conftest.py) holding these runs:"""
    # omniglot 5-way 1-shot on episode set F1: maml with two seeds, maml++ and a baseline
    _add(store, "maml", "omniglot", _accuracy([1.0, 1.0, 0.5, 0.5]), seed=0)
    _add(store, "maml", "omniglot", _accuracy([0.0, 1.0, 0.5, 1.0]), seed=1)
    _add(store, "maml++", "omniglot", _accuracy([0.75] * 4, notes={"batch_norm": "transductive"}))
    _add(store, "baseline|ft", "omniglot", _accuracy([0.5] * 4, headline=100))
    # ... and maml on another episode set of the same setting: its own row
    _add(store, "maml", "omniglot", _accuracy([0.25] * 4, fingerprint=F2), seed=2)
    # other settings; 20-way must sort after 5-way
    _add(store, "maml", "omniglot", _accuracy([0.8] * 4, ways=20))
    _add(store, "maml", "omniglot", _accuracy([0.9] * 4, shots=5))
    # regression: lower MSE is better
    _add(store, "pretrain", "sinusoid", _mse([2.0] * 4))
    _add(store, "maml", "sinusoid", _mse([0.5, 0.6, 0.4, 0.5]))
    for algorithm, status in (("crashed", "failed"), ("stopped", "interrupted"), ("ongoing", "running")):
        _add_unfinished(store, algorithm, status)
    return store


def _sections(markdown: str, settings_only: bool = True) -> dict[str, list[dict[str, str]]]:
    """Heading -> the first table's rows as {column: cell}; cells split on unescaped pipes.

    Later tables under a heading (paired comparisons, ranks) are skipped; with ``settings_only``
    the summary sections after the settings (average ranks, curves) are left out.
    """
    sections, heading, header, done = {}, None, None, False
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading, header, done = line, None, False
            sections[heading] = []
        elif line.startswith("|") and heading and not done:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                assert len(cells) == len(header), line
                sections[heading].append(dict(zip(header, cells)))
        elif header is not None:
            done = True  # the first table under this heading has ended
    if settings_only:
        sections = {h: rows for h, rows in sections.items() if h not in _SUMMARY_HEADINGS}
    return sections


_SUMMARY_HEADINGS = ("## Average ranks across settings", "## Meta-training curves")


def test_writes_markdown_and_csv(store, tmp_path):
    paths = write_leaderboard(store, tmp_path / "out" / "reports")
    assert paths == [tmp_path / "out" / "reports" / "leaderboard.md", tmp_path / "out" / "reports" / "leaderboard.csv"]
    assert all(p.is_file() for p in paths)


def test_one_section_per_setting_in_setting_order(store, tmp_path):
    markdown = write_leaderboard(store, tmp_path)[0].read_text()
    assert list(_sections(markdown)) == [
        "## omniglot 5-way 1-shot (test split, 15 queries)",
        "## omniglot 5-way 5-shot (test split, 15 queries)",
        "## omniglot 20-way 1-shot (test split, 15 queries)",
        "## sinusoid 5-shot (test split, 10 queries)",
    ]


def test_markdown_header_and_ci_convention(store, tmp_path):
    markdown = write_leaderboard(store, tmp_path)[0].read_text()
    assert markdown.startswith("# metabench leaderboard")
    assert re.search(r"Results as of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(the newest completed run\), from `.*results\.sqlite`", markdown)
    assert "9 completed run(s) (excluded: 1 failed, 1 interrupted, 1 running)" in markdown
    assert "each seed's per-episode values first (repeated runs of a seed count once" in markdown
    assert "then each episode's value is averaged across the seeds" in markdown
    convention = [line for line in markdown.splitlines() if line.startswith("ci95 = 1.96 · s / √n")]
    assert len(convention) == 4  # one line under each table
    assert "ddof=0" in convention[0]
    for rows in _sections(markdown).values():
        assert {"label", "recipe", "mean", "ci95", "inner steps", "episodes", "seeds", "fingerprint", "notes"} <= set(rows[0])
        assert "runs" not in rows[0]  # seeds are counted, not runs


def test_rows_best_first_with_seeds_averaged_per_episode(store, tmp_path):
    sections = _sections(write_leaderboard(store, tmp_path)[0].read_text())
    rows = sections["## omniglot 5-way 1-shot (test split, 15 queries)"]
    # one recipe on two episode sets: the label names the set to stay unique in the setting
    assert [(r["label"], r["mean"]) for r in rows] == [
        ("maml++", "75.00"),
        ("maml [f1f1f1f1]", "68.75"),
        ("baseline\\|ft", "50.00"),
        ("maml [f2f2f2f2]", "25.00"),
    ]
    maml = rows[1]
    # per-episode means over the two seeds: [0.5, 1.0, 0.5, 0.75]; mean 0.6875, std0 0.2072890,
    # ci95 = 1.96 * 0.2072890 / 2 = 0.2031433 -> 20.31 percentage points
    assert maml["ci95"] == "20.31"
    assert (maml["seeds"], maml["episodes"], maml["inner steps"]) == ("2", "4", "5")
    assert (maml["dataset"], maml["ways"], maml["shots"], maml["queries"]) == ("omniglot", "5", "1", "15")
    assert maml["metric"] == "accuracy (%)"
    assert maml["fingerprint"] == F1[:12]
    assert rows[3]["fingerprint"] == F2[:12] and rows[3]["seeds"] == "1"
    assert rows[0]["notes"] == "batch_norm: transductive"
    assert rows[2]["inner steps"] == "100"


def test_regression_rows_lowest_mse_first_with_four_significant_digits(store, tmp_path):
    sections = _sections(write_leaderboard(store, tmp_path)[0].read_text())
    rows = sections["## sinusoid 5-shot (test split, 10 queries)"]
    # maml: mean 0.5, std0 sqrt(0.005) = 0.0707107, ci95 = 1.96 * 0.0707107 / 2 = 0.0692965
    assert [(r["label"], r["metric"], r["mean"], r["ci95"]) for r in rows] == [
        ("maml", "mse", "0.5000", "0.06930"),
        ("pretrain", "mse", "2.000", "0.000"),
    ]
    assert {r["ways"] for r in rows} == {"-"}
    assert {r["inner steps"] for r in rows} == {"10"}


def test_unfinished_runs_never_appear(store, tmp_path):
    md_path, csv_path = write_leaderboard(store, tmp_path)
    markdown, csv = md_path.read_text(), csv_path.read_text()
    for algorithm in ("crashed", "stopped", "ongoing"):
        assert algorithm not in markdown and algorithm not in csv
    top = _sections(markdown)["## omniglot 5-way 1-shot (test split, 15 queries)"][0]
    assert top["label"] == "maml++"  # the unfinished runs' perfect scores are not counted


def test_csv_keeps_raw_numbers_and_full_fingerprints(store, tmp_path):
    table = pd.read_csv(write_leaderboard(store, tmp_path)[1])
    assert tuple(table.columns) == LEADERBOARD_COLUMNS
    assert len(table) == 8
    maml = table[(table["algorithm"] == "maml") & (table["fingerprint"] == F1)].iloc[0]
    assert maml["mean"] == pytest.approx(0.6875)
    assert maml["ci95"] == pytest.approx(0.2031433, abs=1e-7)
    assert maml["mean_percent"] == pytest.approx(68.75)
    assert maml["ci95_percent"] == pytest.approx(20.31433, abs=1e-5)
    assert (maml["seeds"], maml["episodes"], maml["inner_steps"]) == (2, 4, 5)
    assert maml["label"] == "maml [f1f1f1f1]" and len(maml["recipe_hash"]) == 64
    assert "baseline|ft" in set(table["algorithm"])
    sinusoid = table[table["dataset"] == "sinusoid"]
    assert list(sinusoid["algorithm"]) == ["maml", "pretrain"]
    assert sinusoid["ways"].isna().all() and sinusoid["mean_percent"].isna().all()
    assert sinusoid["ci95"].iloc[0] == pytest.approx(0.0692965, abs=1e-7)


def test_pipes_in_user_strings_are_escaped_in_markdown_only(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        _add(store, "a|b", "omni|glot", _accuracy([0.5, 1.0], notes={"mode": "x|y"}))
        md_path, csv_path = write_leaderboard(store, tmp_path)
    markdown = md_path.read_text()
    assert "## omni\\|glot 5-way 1-shot" in markdown
    row = _sections(markdown)["## omni\\|glot 5-way 1-shot (test split, 15 queries)"][0]
    assert (row["label"], row["dataset"], row["notes"]) == ("a\\|b", "omni\\|glot", "mode: x\\|y")
    assert pd.read_csv(csv_path)["algorithm"].iloc[0] == "a|b"


def test_non_finite_episode_values_give_nan_and_a_note_not_a_crash(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        _add(store, "diverged", "sinusoid", _mse([0.5, np.nan, np.inf]))
        md_path, csv_path = write_leaderboard(store, tmp_path)
    row = _sections(md_path.read_text())["## sinusoid 5-shot (test split, 10 queries)"][0]
    assert (row["mean"], row["ci95"]) == ("nan", "nan")
    assert "2 of 3 episode values are NaN or infinite" in row["notes"]
    assert np.isnan(pd.read_csv(csv_path)["mean"].iloc[0])


@pytest.mark.parametrize("unfinished", [False, True])
def test_a_store_without_completed_runs_says_so(tmp_path, unfinished):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        if unfinished:
            _add_unfinished(store, "crashed", "failed")
        md_path, csv_path = write_leaderboard(store, tmp_path / "out")
    markdown = md_path.read_text()
    assert "No completed runs" in markdown
    assert "## " not in markdown
    assert "crashed" not in markdown
    table = pd.read_csv(csv_path)
    assert tuple(table.columns) == LEADERBOARD_COLUMNS and table.empty


def test_runs_covering_different_episodes_use_the_shared_ones_and_say_so(tmp_path, caplog):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        _add(store, "maml", "omniglot", _accuracy([1.0, 0.5, 0.5, 0.0]), seed=0)
        _add(store, "maml", "omniglot", _accuracy([0.0, 0.5, 0.5]), seed=1)  # same fingerprint, one fewer
        with caplog.at_level("WARNING", logger="metabench.harness.analysis.pooling"):
            md_path, csv_path = write_leaderboard(store, tmp_path)
    row = pd.read_csv(csv_path).iloc[0]
    assert (row["episodes"], row["seeds"]) == (3, 2)
    assert row["mean"] == pytest.approx(0.5)  # per-episode means [0.5, 0.5, 0.5]
    assert "runs cover different episodes; 3 shared of 4" in row["notes"]
    assert "cover different episodes" in caplog.text


# ----------------------------------------------------------------------------- one row per recipe


def _config(seed=0, *, label="", image_size=28, evaluation_seed=1, **algorithm) -> dict:
    """A config as the runner stores it (the parts a recipe is made of), MAML by default."""
    return {
        "name": f"run-{seed}", "label": label, "seed": seed, "backend": "tensorflow",
        "dataset": {"name": "omniglot", "image_size": image_size},
        "model": {"name": "conv4", "filters": 64},
        "algorithm": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1, "first_order": False, **algorithm},
        "train": {"meta_iterations": 300, "log_every": 50},
        "evaluation": {"seed": evaluation_seed, "episodes": 4, "inner_steps": [0, 5]},
    }  # fmt: skip


def _add_config(store: ResultsStore, config: dict, evaluation: Evaluation) -> str:
    return record_run(store, [evaluation], algorithm=config["algorithm"]["name"], dataset=config["dataset"]["name"],
                      seed=config["seed"], config=config, config_hash=f"{config['seed']:064x}", versions={"keras": "3.5.0"},
                      curve=[CurvePoint(1, 1.0, 0.5, 0.1)], timings={"total_s": 1.0})  # fmt: skip


def _rows(tmp_path, runs) -> pd.DataFrame:
    """The leaderboard CSV of a store holding ``runs`` (``(config, evaluation)`` pairs)."""
    with ResultsStore(tmp_path / "recipes.sqlite") as store:
        for config, evaluation in runs:
            _add_config(store, config, evaluation)
        md_path, csv_path = write_leaderboard(store, tmp_path / "out")
    return pd.read_csv(csv_path, keep_default_na=False, na_values=[""])


def test_maml_and_fomaml_are_two_rows_labelled_by_what_sets_them_apart(tmp_path):
    table = _rows(tmp_path, [(_config(0), _accuracy([1.0, 0.8, 0.6, 0.4])),
                             (_config(0, first_order=True), _accuracy([0.6, 0.6, 0.4, 0.4]))])  # fmt: skip
    assert len(table) == 2  # never one `maml` row with two runs
    assert list(table["label"]) == ["maml (first_order=false)", "maml (first_order=true)"]
    assert list(table["algorithm"]) == ["maml", "maml"] and list(table["seeds"]) == [1, 1]
    assert table["recipe_hash"].nunique() == 2
    assert list(table["mean"]) == pytest.approx([0.7, 0.5])  # each its own mean, not 0.6 pooled
    assert list(table["vs_best"]) == ["best", "not significantly different"]  # paired: same episode set
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    rows = _sections(markdown)["## omniglot 5-way 1-shot (test split, 15 queries)"]
    assert [(r["label"], r["recipe"]) for r in rows] == [(label, h[:12]) for label, h in zip(table["label"], table["recipe_hash"])]


def test_three_seeds_of_one_config_are_one_row_with_seeds_3(tmp_path):
    seeds = {0: [1.0, 0.5, 0.5, 1.0], 1: [0.5, 0.5, 1.0, 1.0], 2: [0.0, 1.0, 0.5, 0.5]}
    table = _rows(tmp_path, [(_config(seed), _accuracy(values)) for seed, values in seeds.items()])
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["label"], row["seeds"], row["episodes"]) == ("maml", 3, 4)
    assert row["mean"] == pytest.approx(np.mean(list(seeds.values())))
    assert row["seed_std"] == pytest.approx(np.std([np.mean(v) for v in seeds.values()], ddof=1))
    assert "runs" not in table.columns


def test_two_inner_learning_rates_give_two_labelled_rows(tmp_path):
    table = _rows(tmp_path, [(_config(seed, inner_lr=lr), _accuracy([0.5 + lr] * 4)) for lr in (0.1, 0.4) for seed in (0, 1)])
    assert list(table["label"]) == ["maml (inner_lr=0.4)", "maml (inner_lr=0.1)"]
    assert list(table["seeds"]) == [2, 2]


def test_a_config_label_names_its_row(tmp_path):
    table = _rows(tmp_path, [(_config(0), _accuracy([0.5] * 4)),
                             (_config(0, label="mine", first_order=True), _accuracy([0.9] * 4))])  # fmt: skip
    assert list(table["label"]) == ["mine", "maml"]  # the only unlabelled maml recipe needs no keys
    assert list(table["algorithm"]) == ["maml", "maml"]


def test_labels_name_keys_shared_by_two_tables_in_full(tmp_path):
    table = _rows(tmp_path, [(_config(0, inner_steps=5), _accuracy([0.7] * 4)),  # evaluation has inner_steps too
                             (_config(0, evaluation_seed=2), _accuracy([0.8] * 4, fingerprint=F2))])  # fmt: skip
    # "seed" alone would read as the training seed, which is no part of a recipe
    assert list(table["label"]) == [
        "maml (algorithm.inner_steps=1, evaluation.seed=2)",
        "maml (algorithm.inner_steps=5, evaluation.seed=1)",
    ]


def test_labels_show_at_most_three_keys_then_how_many_more(tmp_path):
    table = _rows(tmp_path, [(_config(0), _accuracy([0.5] * 4)),
                             (_config(0, inner_lr=0.2, first_order=True, inner_steps=2, eval_inner_lr=0.3), _accuracy([0.9] * 4))])  # fmt: skip
    assert list(table["label"]) == [
        "maml (eval_inner_lr=0.3, first_order=true, inner_lr=0.2, +1)",  # + algorithm.inner_steps=2
        "maml (first_order=false, inner_lr=0.4, algorithm.inner_steps=1)",  # the key it lacks is not shown
    ]


def test_labels_stay_unique_in_a_setting_by_the_recipe_hash(tmp_path):
    table = _rows(tmp_path, [(_config(0, label="mine"), _accuracy([0.5] * 4)),
                             (_config(0, label="mine", inner_lr=0.1), _accuracy([0.6] * 4)),
                             (_config(0, first_order=True), _accuracy([0.7] * 4))])  # fmt: skip
    assert list(table["label"]) == ["maml", *(f"mine #{h[:8]}" for h in table["recipe_hash"].iloc[1:])]
    assert table["label"].is_unique and table["recipe_hash"].is_unique  # labelled recipes are not compared


def test_a_seed_run_twice_with_identical_results_counts_once(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="metabench.harness.analysis.pooling"):
        table = _rows(tmp_path, [(_config(0), _accuracy([1.0, 1.0, 1.0, 1.0])),
                                 (_config(0), _accuracy([1.0, 1.0, 1.0, 1.0])),
                                 (_config(1), _accuracy([0.0, 0.5, 0.5, 0.0]))])  # fmt: skip
    row = table.iloc[0]
    assert row["seeds"] == 2
    assert row["mean"] == pytest.approx(0.625)  # (1.0 + 0.25) / 2 per seed, not (1 + 1 + 0.25) / 3 per run
    assert pd.isna(row["notes"]) and "eterminism" not in caplog.text


def test_a_seed_run_twice_with_different_results_is_a_determinism_failure(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="metabench.harness.analysis.pooling"):
        table = _rows(tmp_path, [(_config(0), _accuracy([1.0, 1.0, 0.5, 0.5])),
                                 (_config(0), _accuracy([1.0, 0.5, 0.5, 0.5]))])  # fmt: skip
    row = table.iloc[0]
    assert (row["seeds"], row["episodes"]) == (1, 4)
    assert "determinism failure: seed 0 ran 2x with different results" in row["notes"]
    assert row["mean"] == pytest.approx(0.6875)  # the repeats averaged, still one seed
    assert "Determinism failure: maml on omniglot" in caplog.text and "seed 0 ran 2 times" in caplog.text


def test_28_and_14_pixel_results_are_never_pooled_or_paired(tmp_path):
    f28, f14 = "28" * 32, "14" * 32  # the fingerprints cover the image size, so they differ
    runs = [(_config(seed, image_size=28), _accuracy([0.9, 0.8, 0.9, 0.8], fingerprint=f28)) for seed in (0, 1)]
    runs += [(_config(seed, image_size=14), _accuracy([0.6, 0.5, 0.6, 0.5], fingerprint=f14)) for seed in (0, 1)]
    with ResultsStore(tmp_path / "px.sqlite") as store:
        for config, evaluation in runs:
            _add_config(store, config, evaluation)
        from metabench.harness.analysis.leaderboard import build_report

        report = build_report(store)
    table = report.table
    assert list(table["label"]) == ["maml (image_size=28)", "maml (image_size=14)"]
    assert list(table["seeds"]) == [2, 2] and list(table["fingerprint"]) == [f28, f14]
    assert list(table["vs_best"]) == ["best", "not paired: other episode set"]
    (pair,) = report.pairs.to_dict("records")
    assert pair["note"].startswith("not paired: different episode sets") and math.isnan(pair["wilcoxon_p"])
    assert (pair["a"], pair["b"]) == ("maml (image_size=28) [28282828]", "maml (image_size=14) [14141414]")
