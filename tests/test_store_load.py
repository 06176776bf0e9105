"""Load: a sweep-sized results store still renders `metabench report` quickly.

The full-size check (10,000 completed runs x 600 episodes, as a large sweep leaves behind) takes a
few minutes to generate, so it runs only with ``METABENCH_LOAD_TEST=1``; a small store checks the
same code path in every test run. Generate a store by hand with::

    python tests/test_store_load.py /tmp/sweep.sqlite 10000
    time metabench report --store /tmp/sweep.sqlite --out /tmp/sweep-report
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ALGORITHMS = ("maml", "fomaml", "mamlpp", "reptile", "protonet", "matchingnet", "baseline", "baselinepp", "pretrain", "multitask")
SETTINGS = (  # dataset, ways, shots, queries, metric, inner steps (headline last)
    ("omniglot", 5, 1, 15, "accuracy", (0, 5)),
    ("omniglot", 5, 5, 15, "accuracy", (0, 5)),
    ("omniglot", 20, 1, 15, "accuracy", (0, 5)),
    ("omniglot", 20, 5, 15, "accuracy", (0, 5)),
    ("miniimagenet", 5, 1, 15, "accuracy", (0, 5)),
    ("miniimagenet", 5, 5, 15, "accuracy", (0, 5)),
    ("sinusoid", None, 5, 100, "mse", (0, 1)),
    ("sinusoid", None, 10, 100, "mse", (0, 1)),
    ("sinusoid", None, 20, 100, "mse", (0, 1)),
    ("omniglot", 5, 1, 5, "accuracy", (0, 5)),
)
CURVE_POINTS = 20


def make_sweep_store(path, runs: int, episodes: int = 600, seed: int = 0) -> Path:
    """A store of ``runs`` completed runs spread over 10 algorithms x 10 settings x seeds.

    Each run has one evaluation of ``episodes`` episodes at two inner-step counts (0 and the
    headline), a 20-point training curve, and its own config; every run of a setting shares the
    setting's episode set (fingerprint), as a sweep's runs do.
    """
    from metabench.harness.results.store import ResultsStore

    path = Path(path)
    ResultsStore(path).close()  # the current schema
    rng = np.random.default_rng(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    versions = json.dumps({"keras": "3.15.1", "numpy": np.__version__, "python": "3.12"})
    eval_id = 0
    for r in range(runs):
        algorithm = ALGORITHMS[r % len(ALGORITHMS)]
        s = (r // len(ALGORITHMS)) % len(SETTINGS)
        run_seed = r // (len(ALGORITHMS) * len(SETTINGS))
        dataset, ways, shots, queries, metric, steps = SETTINGS[s]
        run_id = f"20260101-{r // 60 % 100:02d}{r % 60:02d}00-{r:08x}"
        config = {"seed": run_seed, "algorithm": {"name": algorithm}, "dataset": {"name": dataset},
                  "train": {"ways": ways or 0, "shots": shots, "queries": queries}}
        created = f"2026-01-01T00:00:{r // 1000:02d}.{r % 1000:03d}+00:00"
        conn.execute(
            "INSERT INTO runs (run_id, created_at, finished_at, status, algorithm, dataset, seed, backend, device, "
            "config_json, config_hash, versions_json, git_commit, timings_json) "
            "VALUES (?, ?, ?, 'completed', ?, ?, ?, 'tensorflow', 'CPU', ?, ?, ?, NULL, ?)",
            (run_id, created, created, algorithm, dataset, run_seed, json.dumps(config, sort_keys=True), f"{r:064x}",
             versions, json.dumps({"train_s": 1.0, "eval_s": 0.5})),
        )
        eval_id += 1
        notes = json.dumps({"eval_inner_lr": 0.4})
        conn.execute(
            "INSERT INTO evaluations (eval_id, run_id, split, ways, shots, queries, fingerprint, metric, "
            "headline_steps, notes_json) VALUES (?, ?, 'test', ?, ?, ?, ?, ?, ?, ?)",
            (eval_id, run_id, ways, shots, queries, f"{s:064x}", metric, steps[-1], notes),
        )
        skill = 0.4 + 0.05 * (r % len(ALGORITHMS))
        for n, step in enumerate(steps):
            if metric == "accuracy":
                values = rng.binomial(ways * queries, min(skill + 0.1 * n, 0.99), size=episodes) / (ways * queries)
            else:
                values = rng.gamma(2.0, (3.0 if n == 0 else 1.0 - 0.05 * (r % len(ALGORITHMS))) / 2.0, size=episodes)
            conn.executemany(
                "INSERT INTO episode_metrics (eval_id, inner_steps, episode, value) VALUES (?, ?, ?, ?)",
                zip([eval_id] * episodes, [step] * episodes, range(episodes), values.tolist()),
            )
        iterations = np.arange(1, CURVE_POINTS + 1) * 100
        loss = 2.0 / np.sqrt(iterations / 100.0) + rng.normal(0, 0.01, CURVE_POINTS)
        conn.executemany(
            "INSERT INTO training_curve (run_id, iteration, loss, metric, seconds) VALUES (?, ?, ?, ?, ?)",
            zip([run_id] * CURVE_POINTS, iterations.tolist(), loss.tolist(), (1.0 - loss / 3).tolist(), (iterations * 0.01).tolist()),
        )
    conn.execute("COMMIT")
    conn.close()
    return path


def _report_seconds(store_path, out_dir) -> float:
    from metabench.harness.cli.main import main

    started = time.perf_counter()
    assert main(["report", "--store", str(store_path), "--out", str(out_dir)]) == 0
    return time.perf_counter() - started


def test_report_on_a_small_sweep_store(tmp_path, capsys):
    store = make_sweep_store(tmp_path / "sweep.sqlite", runs=300, episodes=60)
    seconds = _report_seconds(store, tmp_path / "report")
    leaderboard = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "300 completed run(s)" in leaderboard
    assert "omniglot 20-way 5-shot" in leaderboard and "sinusoid 10-shot" in leaderboard
    assert seconds < 60


def test_the_fast_readers_give_what_the_plain_ones_gave(tmp_path):
    """The store's episode read and the report's grouping are optimised, not changed: same frames."""
    import pandas as pd

    from metabench.harness.analysis import leaderboard
    from metabench.harness.results.store import ResultsStore

    path = make_sweep_store(tmp_path / "sweep.sqlite", runs=120, episodes=30)
    with sqlite3.connect(path) as conn:  # one failed run with rows, which the default read leaves out
        conn.execute("UPDATE runs SET status = 'failed' WHERE rowid = 3")
    with ResultsStore(path) as store:
        fast = store.episode_metrics()
        plain = store._frame(
            "SELECT r.run_id, r.algorithm, r.dataset, r.seed, r.backend, r.config_hash, r.recipe_hash, r.label, e.eval_id, e.split, e.ways, "
            "e.shots, e.queries, e.fingerprint, e.metric, e.headline_steps, m.inner_steps, m.episode, m.value, "
            "e.notes_json AS notes FROM episode_metrics m JOIN evaluations e ON e.eval_id = m.eval_id "
            "JOIN runs r ON r.run_id = e.run_id WHERE r.status = 'completed' "
            "ORDER BY r.created_at, r.run_id, e.eval_id, m.inner_steps, m.episode"
        )
        assert len(store.episode_metrics(completed_only=False)) == len(fast) + 60
    plain["ways"] = plain["ways"].astype("Int64")
    plain["value"] = plain["value"].astype("float64")
    for column in ("seed", "shots", "queries", "headline_steps", "inner_steps", "episode", "eval_id"):
        plain[column] = plain[column].astype("int64")
    pd.testing.assert_frame_equal(fast, plain)

    heads = (fast["inner_steps"] == fast["headline_steps"]).to_numpy()
    for rows in (None, heads):
        grouped = list(leaderboard._groups(fast, leaderboard._GROUP, ["eval_id", "episode", "value"], rows=rows))
        subset = fast if rows is None else fast[rows]
        expected = [(k, g[["eval_id", "episode", "value"]]) for k, g in subset.groupby(leaderboard._GROUP, dropna=False, sort=False)]
        assert [k for k, _ in grouped] == [k for k, _ in expected]
        for (_, a), (_, b) in zip(grouped, expected):
            pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("METABENCH_LOAD_TEST") != "1", reason="sweep-sized load test: set METABENCH_LOAD_TEST=1 (minutes)")
def test_report_on_a_sweep_sized_store_takes_under_a_minute(tmp_path, capsys):
    store = make_sweep_store(tmp_path / "sweep.sqlite", runs=10_000, episodes=600)
    seconds = _report_seconds(store, tmp_path / "report")
    print(f"metabench report on 10,000 runs x 600 episodes: {seconds:.1f} s", file=sys.stderr)
    assert "10000 completed run(s)" in (tmp_path / "report" / "leaderboard.md").read_text()
    assert seconds < 60, f"metabench report took {seconds:.1f} s on a sweep-sized store"


if __name__ == "__main__":
    started = time.perf_counter()
    make_sweep_store(sys.argv[1], runs=int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
    print(f"wrote {sys.argv[1]} in {time.perf_counter() - started:.1f} s")
