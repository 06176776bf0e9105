"""Properties of the SQLite results store: round trips, atomic completion, status filtering,
resuming, schema versioning and migration, clear open errors and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sqlite3
import time

import numpy as np
import pytest

from metabench.harness.results.records import CurvePoint, Evaluation, RunInfo
from metabench.harness.results.store import SCHEMA_VERSION, ResultsStore, StoreError


def _info(algorithm: str = "maml", seed: int = 0, dataset: str = "omniglot") -> RunInfo:
    return RunInfo(
        algorithm=algorithm,
        dataset=dataset,
        seed=seed,
        config={"algorithm": {"name": algorithm, "inner_lr": 0.4}, "seed": seed, "steps": [1, 5]},
        config_hash=f"{seed:064x}",
        backend="jax",
        device="CPU",
        versions={"keras": "3.5.0", "numpy": np.__version__},
        git_commit="0123abc",
    )


def _classification(rng: np.random.Generator, episodes: int = 600, steps=(0, 1, 5), **overrides) -> Evaluation:
    fields = dict(
        split="test",
        ways=5,
        shots=1,
        queries=15,
        fingerprint="a" * 64,
        metric="accuracy",
        headline_steps=steps[-1],
        values={s: rng.integers(0, 76, size=episodes) / 75.0 for s in steps},
        notes={"batch_norm": "transductive (batch statistics at test time)"},
    )
    fields.update(overrides)
    return Evaluation(**fields)


def _regression(rng: np.random.Generator, episodes: int = 600) -> Evaluation:
    return Evaluation(
        split="test",
        ways=None,
        shots=5,
        queries=10,
        fingerprint="b" * 64,
        metric="mse",
        headline_steps=10,
        values={1: rng.gamma(2.0, size=episodes), 10: rng.gamma(1.0, size=episodes)},
    )


_CURVE = [CurvePoint(100, 1.5, 0.4, 3.25), CurvePoint(200, 0.9, 0.7, 6.5)]


def _count(path, sql: str, params=()) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchone()[0]


def _status(path, run_id: str) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]


# ---------------------------------------------------------------- round trips


def test_creates_parent_folders_schema_version_and_wal(tmp_path):
    path = tmp_path / "a" / "b" / "results.sqlite"
    with ResultsStore(path):
        pass
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "evaluations", "episode_metrics", "training_curve"} <= tables


def test_start_run_records_running_run_with_metadata(store):
    run_id = store.start_run(_info(seed=3))
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", run_id)
    runs = store.runs()
    assert list(runs["run_id"]) == [run_id]
    row = runs.iloc[0]
    assert row["status"] == "running"
    assert row["config"] == _info(seed=3).config
    assert row["versions"]["keras"] == "3.5.0"
    assert (row["algorithm"], row["dataset"], row["seed"], row["backend"]) == ("maml", "omniglot", 3, "jax")
    assert row["git_commit"] == "0123abc"
    assert row["timings"] is None
    assert store.episode_metrics().empty


def test_per_episode_values_round_trip_exactly(store):
    rng = np.random.default_rng(0)
    classification, regression = _classification(rng), _regression(rng)
    run_id = store.start_run(_info())
    store.complete_run(run_id, [classification, regression], _CURVE, {"train_s": 12.5, "eval_s": 3.0})

    frame = store.episode_metrics()
    assert len(frame) == 600 * 3 + 600 * 2
    for evaluation in (classification, regression):
        rows = frame[frame["fingerprint"] == evaluation.fingerprint]
        assert set(rows["inner_steps"]) == set(evaluation.values)
        for steps, expected in evaluation.values.items():
            got = rows[rows["inner_steps"] == steps].sort_values("episode")
            assert list(got["episode"]) == list(range(600))
            np.testing.assert_array_equal(got["value"].to_numpy(), expected)  # exact float64
        assert (rows["headline_steps"] == evaluation.headline_steps).all()
        assert (rows["metric"] == evaluation.metric).all()

    classification_rows = frame[frame["metric"] == "accuracy"]
    assert (classification_rows["ways"] == 5).all()
    assert frame.loc[frame["metric"] == "mse", "ways"].isna().all()
    assert str(frame["ways"].dtype) == "Int64"
    assert json.loads(classification_rows["notes"].iloc[0]) == classification.notes

    run = store.runs().iloc[0]
    assert run["status"] == "completed"
    assert run["timings"] == {"train_s": 12.5, "eval_s": 3.0}
    assert isinstance(run["finished_at"], str) and run["finished_at"] >= run["created_at"]

    curve = store.training_curves()
    assert list(curve["iteration"]) == [100, 200]
    np.testing.assert_allclose(curve[["loss", "metric", "seconds"]].to_numpy(), [[1.5, 0.4, 3.25], [0.9, 0.7, 6.5]])
    assert (curve["run_id"] == run_id).all()


def test_nan_metric_is_read_back_as_nan(store):
    values = np.array([0.5, np.nan, 2.0])
    evaluation = Evaluation("test", None, 5, 10, "c" * 64, "mse", 1, {1: values})
    run_id = store.start_run(_info(dataset="sinusoid"))
    store.complete_run(run_id, [evaluation], [CurvePoint(1, float("nan"), 1.0, 0.1)], {})
    np.testing.assert_array_equal(store.episode_metrics()["value"].to_numpy(), values)
    assert np.isnan(store.training_curves()["loss"].iloc[0])


def test_many_episode_values_are_written_quickly(store):
    rng = np.random.default_rng(1)
    evaluations = [_classification(rng, steps=tuple(range(11)), fingerprint=f"{i:064x}") for i in range(6)]
    run_id = store.start_run(_info())
    start = time.perf_counter()
    store.complete_run(run_id, evaluations, _CURVE, {})
    elapsed = time.perf_counter() - start
    assert len(store.episode_metrics()) == 6 * 11 * 600
    assert elapsed < 10.0, f"writing 39,600 episode values took {elapsed:.1f} s"


# ---------------------------------------------------------------- atomicity


def test_complete_run_is_all_or_nothing_when_sqlite_refuses_a_row(store):
    rng = np.random.default_rng(2)
    run_id = store.start_run(_info())
    with sqlite3.connect(store.path) as conn:  # refuse the curve, which is written after the evaluations
        conn.execute(
            "CREATE TRIGGER refuse_curve BEFORE INSERT ON training_curve "
            "BEGIN SELECT RAISE(ABORT, 'curve refused by test'); END"
        )
    with pytest.raises(StoreError, match=rf"Could not complete run {run_id}; nothing was written: curve refused"):
        store.complete_run(run_id, [_classification(rng), _regression(rng)], _CURVE, {"train_s": 1.0})

    assert _count(store.path, "SELECT count(*) FROM evaluations") == 0
    assert _count(store.path, "SELECT count(*) FROM episode_metrics") == 0
    assert _status(store.path, run_id) == "running"
    assert store.runs().iloc[0]["timings"] is None

    with sqlite3.connect(store.path) as conn:  # the store is usable afterwards
        conn.execute("DROP TRIGGER refuse_curve")
    store.complete_run(run_id, [_classification(rng)], _CURVE, {})
    assert _status(store.path, run_id) == "completed"
    assert len(store.episode_metrics()) == 600 * 3


def test_complete_run_is_all_or_nothing_when_an_evaluation_is_malformed(store):
    rng = np.random.default_rng(3)
    good = _classification(rng)
    bad = _classification(rng, values={0: np.zeros((600, 2)), 5: np.zeros((600, 2))}, headline_steps=5)
    run_id = store.start_run(_info())
    with pytest.raises(ValueError, match=r"shape \(600, 2\).*expected a 1-D array \[num_episodes\]"):
        store.complete_run(run_id, [good, bad], _CURVE, {})
    assert _count(store.path, "SELECT count(*) FROM evaluations") == 0
    assert _count(store.path, "SELECT count(*) FROM episode_metrics") == 0
    assert _status(store.path, run_id) == "running"
    store.fail_run(run_id, "failed", "malformed evaluation")  # not stuck inside a transaction
    assert _status(store.path, run_id) == "failed"


def _die_during_complete_run(path, run_id):
    """Child process: insert one evaluation of complete_run's transaction, then die without cleanup."""
    from metabench.harness.results import store as store_module

    insert = store_module._insert_evaluation

    def insert_then_die(conn, run_id, evaluation):
        insert(conn, run_id, evaluation)
        os._exit(3)

    store_module._insert_evaluation = insert_then_die
    rng = np.random.default_rng(4)
    store_module.ResultsStore(path).complete_run(run_id, [_classification(rng), _regression(rng)], _CURVE, {})


def test_process_dying_inside_complete_run_leaves_no_partial_rows(store):
    run_id = store.start_run(_info())
    child = multiprocessing.get_context("spawn").Process(target=_die_during_complete_run, args=(store.path, run_id))
    child.start()
    child.join(120)
    assert child.exitcode == 3
    with ResultsStore(store.path) as reopened:
        assert reopened.episode_metrics(completed_only=False).empty
        assert reopened.runs().iloc[0]["status"] == "running"
    assert _count(store.path, "SELECT count(*) FROM evaluations") == 0


# ---------------------------------------------------------------- statuses


def test_only_completed_runs_are_read_by_default(store):
    rng = np.random.default_rng(5)
    completed = store.start_run(_info("maml", seed=0))
    store.complete_run(completed, [_classification(rng)], _CURVE, {})
    failed = store.start_run(_info("crashy", seed=1))
    store.fail_run(failed, "failed", "RuntimeError('NaN loss')")
    interrupted = store.start_run(_info("stopped", seed=2))
    store.fail_run(interrupted, "interrupted", "KeyboardInterrupt")
    running = store.start_run(_info("ongoing", seed=3))

    # Give the unfinished runs result rows, as a crashed writer of some future version might.
    with sqlite3.connect(store.path) as conn:
        for run_id in (failed, interrupted, running):
            eval_id = conn.execute(
                "INSERT INTO evaluations (run_id, split, ways, shots, queries, fingerprint, metric, "
                "headline_steps, notes_json) VALUES (?, 'test', 5, 1, 15, ?, 'accuracy', 5, '{}')",
                (run_id, "a" * 64),
            ).lastrowid
            conn.execute("INSERT INTO episode_metrics VALUES (?, 5, 0, 1.0)", (eval_id,))
            conn.execute("INSERT INTO training_curve VALUES (?, 1, 0.1, 0.9, 1.0)", (run_id,))

    assert set(store.episode_metrics()["run_id"]) == {completed}
    assert set(store.training_curves()["run_id"]) == {completed}
    assert set(store.episode_metrics(completed_only=False)["run_id"]) == {completed, failed, interrupted, running}
    assert set(store.training_curves(completed_only=False)["run_id"]) == {completed, failed, interrupted, running}

    runs = store.runs().set_index("run_id")
    assert runs.loc[failed, "status"] == "failed"
    assert runs.loc[failed, "message"] == "RuntimeError('NaN loss')"
    assert isinstance(runs.loc[interrupted, "finished_at"], str)
    assert list(store.runs("interrupted")["run_id"]) == [interrupted]
    assert list(store.runs("running")["run_id"]) == [running]
    assert list(store.runs("completed")["run_id"]) == [completed]


def test_a_run_finishes_once(store):
    rng = np.random.default_rng(6)
    run_id = store.start_run(_info())
    store.complete_run(run_id, [_classification(rng)], _CURVE, {})
    with pytest.raises(StoreError, match=rf"Cannot complete run '{run_id}': its status is already 'completed'"):
        store.complete_run(run_id, [_classification(rng)], _CURVE, {})
    with pytest.raises(StoreError, match=rf"Cannot mark failed run '{run_id}': its status is already 'completed'"):
        store.fail_run(run_id, "failed", "too late")
    assert len(store.episode_metrics()) == 600 * 3


def test_fail_run_and_complete_run_reject_bad_arguments(store):
    run_id = store.start_run(_info())
    with pytest.raises(ValueError, match=r"Received status='crashed'; expected 'failed' or 'interrupted'"):
        store.fail_run(run_id, "crashed", "boom")
    with pytest.raises(StoreError, match=r"Cannot mark interrupted run 'nope': no such run in .*results\.sqlite"):
        store.fail_run("nope", "interrupted", "boom")
    with pytest.raises(StoreError, match=r"Cannot complete run 'nope': no such run"):
        store.complete_run("nope", [], [], {})
    with pytest.raises(ValueError, match=r"Received status='done'; expected None or one of"):
        store.runs("done")
    assert _status(store.path, run_id) == "running"


def test_an_unfinished_run_resumes_in_its_own_row_and_completes_once(store):
    rng = np.random.default_rng(7)
    run_id = store.start_run(_info(), checkpoint_dir="/ckpt/a")
    store.fail_run(run_id, "interrupted", "SIGTERM")
    store.resume_run(run_id, from_iteration=40, details={"device": "CPU"})
    row = store.get_run(run_id)
    assert (row["status"], row["finished_at"], row["message"], row["checkpoint_dir"]) == ("running", None, None, "/ckpt/a")
    store.fail_run(run_id, "failed", "NaN")
    store.resume_run(run_id, from_iteration=60, checkpoint_dir="/ckpt/b")
    store.complete_run(run_id, [_classification(rng)], _CURVE, {}, events=[{"event": "nan_retry", "at_iteration": 55}])
    row = store.get_run(run_id)
    assert row["status"] == "completed" and row["checkpoint_dir"] == "/ckpt/b" and len(store.runs()) == 1
    assert [e["event"] for e in row["history"]] == [
        "started", "interrupted", "resumed", "failed", "resumed", "nan_retry", "completed"
    ]
    assert row["history"][2] == {**row["history"][2], "from_iteration": 40, "previous_status": "interrupted", "device": "CPU"}
    with pytest.raises(StoreError, match=rf"Cannot resume run '{run_id}': its status is 'completed'\. Only runs that did not complete"):
        store.resume_run(run_id, from_iteration=0)
    with pytest.raises(StoreError, match=r"Cannot resume run 'nope': no such run"):
        store.resume_run("nope", from_iteration=0)
    assert len(store.episode_metrics()) == 600 * 3


def test_get_run_names_the_missing_run_and_the_newest_ones(store):
    run_id = store.start_run(_info())
    assert store.get_run(run_id)["run_id"] == run_id
    with pytest.raises(StoreError, match=rf"No run 'nope' in results store .*results\.sqlite\. Its newest runs: {run_id}\."):
        store.get_run("nope")


# ---------------------------------------------------------------- opening


_SCHEMA_V1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')), message TEXT,
    algorithm TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL, backend TEXT NOT NULL, device TEXT NOT NULL,
    config_json TEXT NOT NULL, config_hash TEXT NOT NULL, versions_json TEXT NOT NULL, git_commit TEXT, timings_json TEXT);
CREATE TABLE evaluations (eval_id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs (run_id), split TEXT NOT NULL,
    ways INTEGER, shots INTEGER NOT NULL, queries INTEGER NOT NULL, fingerprint TEXT NOT NULL, metric TEXT NOT NULL,
    headline_steps INTEGER NOT NULL, notes_json TEXT NOT NULL);
CREATE INDEX evaluations_run ON evaluations (run_id);
CREATE TABLE episode_metrics (eval_id INTEGER NOT NULL REFERENCES evaluations (eval_id), inner_steps INTEGER NOT NULL,
    episode INTEGER NOT NULL, value REAL, PRIMARY KEY (eval_id, inner_steps, episode)) WITHOUT ROWID;
CREATE TABLE training_curve (run_id TEXT NOT NULL REFERENCES runs (run_id), iteration INTEGER NOT NULL, loss REAL,
    metric REAL, seconds REAL);
CREATE INDEX training_curve_run ON training_curve (run_id, iteration);
INSERT INTO runs VALUES ('20250101-000000-00000001', '2025-01-01T00:00:00.000+00:00', '2025-01-01T00:01:00.000+00:00',
    'completed', NULL, 'maml', 'sinusoid', 0, 'tensorflow', 'CPU', '{}', 'abc', '{}', NULL, '{}');
INSERT INTO runs VALUES ('20250101-000000-00000002', '2025-01-01T00:00:01.000+00:00', NULL,
    'running', NULL, 'maml', 'sinusoid', 1, 'tensorflow', 'CPU', '{}', 'abd', '{}', NULL, NULL);
INSERT INTO evaluations VALUES (1, '20250101-000000-00000001', 'test', NULL, 5, 10, 'f', 'mse', 1, '{}');
INSERT INTO episode_metrics VALUES (1, 1, 0, 0.5), (1, 1, 1, NULL);
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_migrated_in_place_and_keeps_its_results(tmp_path, caplog):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_V1)
    with caplog.at_level("WARNING"), ResultsStore(path) as store:
        runs = store.runs()
        assert list(runs["status"]) == ["completed", "running"]
        assert runs["history"].tolist() == [[], []] and runs["checkpoint_dir"].isna().all()
        np.testing.assert_array_equal(store.episode_metrics()["value"].to_numpy(), [0.5, np.nan])
        store.resume_run("20250101-000000-00000002", from_iteration=0)  # the new columns work
    assert f"Migrated results store {path} from schema version 1 to 3" in caplog.text
    assert _count(path, "PRAGMA user_version") == 3


def test_a_version_1_store_that_cannot_be_migrated_is_refused_and_left_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_V1)
    from metabench.harness.results import store as store_module

    def fail(conn):
        conn.execute("ALTER TABLE runs ADD COLUMN checkpoint_dir TEXT")
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setitem(store_module._MIGRATIONS, 1, fail)
    with pytest.raises(StoreError, match=r"has schema version 1 and must be migrated to version 3 .* failed \(attempt to write "
                                         r"a readonly database\); nothing was changed"):
        ResultsStore(path)
    assert _count(path, "PRAGMA user_version") == 1
    with sqlite3.connect(path) as conn:
        assert "checkpoint_dir" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}


def test_episode_metrics_reads_rows_written_out_of_order(store):
    """Episodes not numbered 0..n-1 (not as complete_run writes them) are still read exactly."""
    run_id = store.start_run(_info())
    store.complete_run(run_id, [_regression(np.random.default_rng(8), episodes=3)], _CURVE, {})
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM episode_metrics WHERE episode = 0 AND inner_steps = 10")
        conn.execute("INSERT INTO episode_metrics VALUES (1, 10, 7, 0.25)")
    frame = store.episode_metrics()
    rows = frame[frame["inner_steps"] == 10]
    assert rows["episode"].tolist() == [1, 2, 7] and rows["value"].iloc[-1] == 0.25
    assert frame["inner_steps"].tolist() == [1, 1, 1, 10, 10, 10]




def test_schema_version_mismatch_names_file_versions_and_fix(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    expected = (
        re.escape(str(path)) + r" has schema version 7 \(written by a newer metabench\), but this metabench reads schema version 3\. "
        r"Open it with the metabench version that wrote it, or move .* aside"
    )
    with pytest.raises(StoreError, match=expected):
        ResultsStore(path)


def test_a_file_that_is_not_sqlite_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not the results you are looking for\n" * 100)
    with pytest.raises(StoreError, match=re.escape(str(path)) + r" is not a metabench results store \(SQLite said"):
        ResultsStore(path)
    assert path.read_text().startswith("these are not")


def test_a_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    expected = re.escape(str(path)) + r" is an SQLite database but not a metabench results store"
    with pytest.raises(StoreError, match=expected):
        ResultsStore(path)


def test_a_parent_that_cannot_be_a_folder_is_named(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StoreError, match=r"Cannot create the folder .*blocker.* writable folder"):
        ResultsStore(blocker / "sub" / "results.sqlite")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_a_read_only_parent_is_named(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match=rf"The folder {re.escape(str(folder))} is not writable"):
            ResultsStore(folder / "results.sqlite")
    finally:
        folder.chmod(0o700)


def test_closed_store_refuses_work_and_reopens(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        run_id = store.start_run(_info())
    with pytest.raises(StoreError, match=r"is closed; open a new ResultsStore"):
        store.runs()
    store.close()  # closing twice is fine
    with ResultsStore(path) as reopened:
        assert list(reopened.runs()["run_id"]) == [run_id]


# ---------------------------------------------------------------- concurrency


def _write_runs(path, worker: int, count: int, go) -> None:
    """Child process: wait for the start signal, then start and complete ``count`` runs."""
    go.wait(60)
    rng = np.random.default_rng(worker)
    with ResultsStore(path) as store:
        for i in range(count):
            run_id = store.start_run(_info(f"worker{worker}", seed=i))
            store.complete_run(run_id, [_classification(rng)], _CURVE, {"worker": worker})


def test_two_processes_write_runs_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    ResultsStore(path).close()
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    workers = [context.Process(target=_write_runs, args=(path, w, 8, go)) for w in (1, 2)]
    for worker in workers:
        worker.start()
    go.set()
    for worker in workers:
        worker.join(180)
    assert [w.exitcode for w in workers] == [0, 0]

    with ResultsStore(path) as store:
        runs = store.runs()
        assert len(runs) == 16 and (runs["status"] == "completed").all()
        assert runs["run_id"].is_unique
        assert runs.groupby("algorithm")["seed"].apply(sorted).to_dict() == {
            "worker1": list(range(8)),
            "worker2": list(range(8)),
        }
        assert len(store.episode_metrics()) == 16 * 3 * 600
        assert len(store.training_curves()) == 16 * len(_CURVE)


def test_a_version_2_store_gets_recipe_hashes_and_input_covering_fingerprints(tmp_path):
    """Version 2 fingerprints named the episode indices only; the migration composes them with the
    inputs each run's stored config names, so 28 px and 14 px results stop sharing an identity."""
    from metabench.harness.config import recipe_hash
    from metabench.harness.data.episodes import compose_fingerprint, input_description

    path = tmp_path / "v2.sqlite"
    configs = [
        {"seed": seed, "dataset": {"name": "omniglot", "image_size": size, "split_scheme": "maml"},
         "algorithm": {"name": "maml", "inner_lr": 0.4}}
        for size, seed in ((28, 0), (14, 0), (28, 1))
    ]
    run_ids = []  # the three runs start within one second, so the store's order among them is the run ids' random one
    with ResultsStore(path) as store:
        for config in configs:
            info = RunInfo("maml", "omniglot", config["seed"], config, f"hash{len(str(config))}", "tensorflow", "CPU", {})
            run_ids.append(store.start_run(info))
            evaluation = Evaluation("test", 5, 1, 15, "indices", "accuracy", 1, {1: np.array([0.5, 1.0])})
            store.complete_run(run_ids[-1], [evaluation], _CURVE, {})
    with sqlite3.connect(path) as conn:  # what version 2 held
        conn.execute("ALTER TABLE runs DROP COLUMN recipe_hash")
        conn.execute("ALTER TABLE runs DROP COLUMN label")
        conn.execute("PRAGMA user_version = 2")
    with ResultsStore(path) as store:
        runs = store.runs().set_index("run_id").loc[run_ids]
        frame = store.episode_metrics().drop_duplicates("run_id").set_index("run_id").loc[run_ids]
    assert runs["recipe_hash"].tolist() == [recipe_hash(c) for c in configs]
    assert runs["recipe_hash"].iloc[0] == runs["recipe_hash"].iloc[2] != runs["recipe_hash"].iloc[1]
    fingerprints = frame["fingerprint"].tolist()
    assert fingerprints == [compose_fingerprint("indices", input_description(c["dataset"], 1)) for c in configs]
    assert fingerprints[0] == fingerprints[2] != fingerprints[1] != "indices"
