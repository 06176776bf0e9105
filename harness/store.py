"""SQLite results store: runs, per-episode metrics and training curves as append-only rows.

The store records what the runner hands it — configs, metrics and metadata — as data; it knows
nothing of an algorithm's internals. A run is inserted with status ``"running"`` when it starts and
is finished exactly once, either by :meth:`ResultsStore.complete_run` (all results and the status
``"completed"`` in one transaction) or by :meth:`ResultsStore.fail_run` (``"failed"`` or
``"interrupted"``). Only completed runs count: the readers used by reports default to them.

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``)::

    runs             run_id TEXT PK, created_at, finished_at, status, message, algorithm, dataset,
                     seed, backend, device, config_json, config_hash, versions_json, git_commit,
                     timings_json
    evaluations      eval_id INTEGER PK, run_id -> runs, split, ways (NULL for regression), shots,
                     queries, fingerprint, metric, headline_steps, notes_json
    episode_metrics  eval_id -> evaluations, inner_steps, episode, value   (PK: all but value)
    training_curve   run_id -> runs, iteration, loss, metric, seconds

Timestamps are ISO-8601 UTC strings. SQLite has no NaN: a NaN metric is stored as NULL and read
back as NaN.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metabench.harness.results import CurvePoint, Evaluation, RunInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the table layout this module reads and writes (``PRAGMA user_version``)."""

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
"""Every value ``runs.status`` can take; only ``"completed"`` runs count in reports."""

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before giving up."""


class StoreError(RuntimeError):
    """The results store cannot be opened or cannot record what was asked; the message says why."""


class ResultsStore:
    """An SQLite file of benchmark runs and their per-episode results.

    Opening creates the file, its parent folders and the schema when the file does not exist yet.
    The database is put in WAL journal mode with a busy timeout of :data:`BUSY_TIMEOUT_S`, so
    several processes (e.g. two runners) can write the same store; each write is one short
    transaction.

    Args:
        path: file of the store, e.g. ``"reports/results.sqlite"``.
        timeout: seconds to wait for another writer's lock before raising.

    Raises:
        StoreError: the parent folder cannot be created or written, the file is not a metabench
            results store, or its schema version is not :data:`SCHEMA_VERSION`.

    Example::

        with ResultsStore("reports/results.sqlite") as store:
            run_id = store.start_run(info)
            try:
                evaluations, curve, timings = train_and_evaluate(...)
            except KeyboardInterrupt:
                store.fail_run(run_id, "interrupted", "stopped by the user")
                raise
            except Exception as err:
                store.fail_run(run_id, "failed", repr(err))
                raise
            store.complete_run(run_id, evaluations, curve, timings)
            frame = store.episode_metrics()  # one row per (evaluation, inner steps, episode)
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        _prepare_parent(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(
                f"Cannot open results store {self.path}: {err}. Check that {self.path.parent} is a "
                "writable folder, or pass another path."
            ) from err
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            _init_schema(conn, self.path)
        except sqlite3.OperationalError as err:  # locked, read-only, disk I/O: the file may be fine
            conn.close()
            raise StoreError(
                f"Cannot open results store {self.path}: {err}. If another process holds it, retry; "
                f"otherwise check that {self.path} and {self.path.parent} are writable."
            ) from err
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StoreError(
                f"{self.path} is not a metabench results store (SQLite said: {err}). Pass the path "
                "of an existing results store or of a file that does not exist yet."
            ) from err
        except BaseException:
            conn.close()
            raise
        if str(mode).lower() != "wal":
            logger.warning(
                "Results store %s is in journal mode %r, not WAL (the file system may not "
                "support it); concurrent writers will wait on each other more often.",
                self.path,
                mode,
            )
        self._conn = conn

    # ------------------------------------------------------------------ writing

    def start_run(self, info: RunInfo) -> str:
        """Record that a run started; returns its new run id (``"YYYYmmdd-HHMMSS-<8 hex>"``, UTC).

        The run has status ``"running"`` until :meth:`complete_run` or :meth:`fail_run`.
        """
        conn = self._connection()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)
        row = (
            run_id,
            _now(),
            "running",
            info.algorithm,
            info.dataset,
            int(info.seed),
            info.backend,
            info.device,
            _to_json(info.config, "config"),
            info.config_hash,
            _to_json(info.versions, "versions"),
            info.git_commit,
        )
        with _transaction(conn, f"start run of {info.algorithm} on {info.dataset}"):
            conn.execute(
                "INSERT INTO runs (run_id, created_at, status, algorithm, dataset, seed, backend, "
                "device, config_json, config_hash, versions_json, git_commit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        logger.info("Started run %s (%s on %s, seed %s).", run_id, info.algorithm, info.dataset, info.seed)
        return run_id

    def complete_run(
        self,
        run_id: str,
        evaluations: Sequence[Evaluation],
        curve: Sequence[CurvePoint],
        timings: dict,
    ) -> None:
        """Record a run's results and mark it ``"completed"``, all in one transaction.

        Either every evaluation, every per-episode value, every curve point and the new status are
        written, or (on any error) none of them are and the run stays ``"running"``.

        Args:
            run_id: id returned by :meth:`start_run`; the run must be ``"running"``.
            evaluations: each evaluation's ``values[steps]`` is a 1-D array ``[num_episodes]``.
            curve: meta-training log points, in any order.
            timings: JSON-able phase name -> seconds (or any JSON-able facts about time).

        Raises:
            StoreError: the run does not exist, is not running, or SQLite refused a row.
            ValueError: an evaluation's values are not 1-D numeric arrays.
        """
        conn = self._connection()
        timings_json = _to_json(timings, "timings")
        with _transaction(conn, f"complete run {run_id}"):
            self._require_running(conn, run_id, "complete")
            for evaluation in evaluations:
                _insert_evaluation(conn, run_id, evaluation)
            conn.executemany(
                "INSERT INTO training_curve (run_id, iteration, loss, metric, seconds) VALUES (?, ?, ?, ?, ?)",
                (
                    (run_id, int(p.iteration), float(p.loss), float(p.metric), float(p.seconds))
                    for p in curve
                ),
            )
            conn.execute(
                "UPDATE runs SET status = 'completed', finished_at = ?, timings_json = ? WHERE run_id = ?",
                (_now(), timings_json, run_id),
            )
        logger.info("Completed run %s: %d evaluation(s), %d curve point(s).", run_id, len(evaluations), len(curve))

    def fail_run(self, run_id: str, status: str, message: str) -> None:
        """Mark a running run ``"failed"`` or ``"interrupted"`` with a human-readable message.

        Raises:
            ValueError: ``status`` is not ``"failed"`` or ``"interrupted"``.
            StoreError: the run does not exist or is no longer running.
        """
        if status not in ("failed", "interrupted"):
            raise ValueError(f"Received status={status!r}; expected 'failed' or 'interrupted'.")
        conn = self._connection()
        with _transaction(conn, f"mark run {run_id} {status}"):
            self._require_running(conn, run_id, f"mark {status}")
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ? WHERE run_id = ?",
                (status, _now(), str(message), run_id),
            )
        logger.info("Run %s %s: %s", run_id, status, message)

    # ------------------------------------------------------------------ reading

    def runs(self, status: str | None = None) -> pd.DataFrame:
        """One row per run, oldest first, with ``config``, ``versions`` and ``timings`` as dicts.

        Columns: run_id, created_at, finished_at, status, message, algorithm, dataset, seed,
        backend, device, config, config_hash, versions, git_commit, timings.

        Args:
            status: keep only runs with this status (one of :data:`RUN_STATUSES`); ``None``: all.
        """
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"Received status={status!r}; expected None or one of {RUN_STATUSES}.")
        sql = (
            "SELECT run_id, created_at, finished_at, status, message, algorithm, dataset, seed, "
            "backend, device, config_json, config_hash, versions_json, git_commit, timings_json "
            "FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created_at, run_id"
        )
        frame = self._frame(sql, (status,) if status else ())
        for column in ("config", "versions", "timings"):
            frame[column] = [json.loads(s) if isinstance(s, str) else None for s in frame.pop(f"{column}_json")]
        return frame[list(_RUN_COLUMNS)]

    def episode_metrics(self, completed_only: bool = True) -> pd.DataFrame:
        """Per-episode values, one row per (evaluation, inner-step count, episode).

        Columns: run_id, algorithm, dataset, seed, backend, config_hash, eval_id, split, ways
        (nullable ``Int64``; ``<NA>`` for regression), shots, queries, fingerprint, metric,
        headline_steps, inner_steps, episode, value (float; NaN where a NaN was recorded), notes
        (the evaluation's notes as a JSON string).

        Args:
            completed_only: keep only runs with status ``"completed"`` (what reports read).
        """
        sql = (
            "SELECT r.run_id, r.algorithm, r.dataset, r.seed, r.backend, r.config_hash, e.eval_id, "
            "e.split, e.ways, e.shots, e.queries, e.fingerprint, e.metric, e.headline_steps, "
            "m.inner_steps, m.episode, m.value, e.notes_json AS notes "
            "FROM episode_metrics m JOIN evaluations e ON e.eval_id = m.eval_id "
            "JOIN runs r ON r.run_id = e.run_id"
            + (" WHERE r.status = 'completed'" if completed_only else "")
            + " ORDER BY r.created_at, r.run_id, e.eval_id, m.inner_steps, m.episode"
        )
        frame = self._frame(sql)
        frame["ways"] = frame["ways"].astype("Int64")
        frame["value"] = frame["value"].astype("float64")
        for column in ("seed", "shots", "queries", "headline_steps", "inner_steps", "episode", "eval_id"):
            frame[column] = frame[column].astype("int64")
        return frame

    def training_curves(self, completed_only: bool = True) -> pd.DataFrame:
        """Meta-training log points, one row per (run, logged iteration).

        Columns: run_id, algorithm, dataset, seed, backend, config_hash, iteration, loss, metric,
        seconds (loss/metric/seconds are floats; NaN where a NaN was recorded).
        """
        sql = (
            "SELECT r.run_id, r.algorithm, r.dataset, r.seed, r.backend, r.config_hash, "
            "c.iteration, c.loss, c.metric, c.seconds "
            "FROM training_curve c JOIN runs r ON r.run_id = c.run_id"
            + (" WHERE r.status = 'completed'" if completed_only else "")
            + " ORDER BY r.created_at, r.run_id, c.iteration"
        )
        frame = self._frame(sql)
        for column in ("seed", "iteration"):
            frame[column] = frame[column].astype("int64")
        for column in ("loss", "metric", "seconds"):
            frame[column] = frame[column].astype("float64")
        return frame

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the connection; further calls raise :class:`StoreError`. Closing twice is fine."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # ------------------------------------------------------------------ helpers

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"Results store {self.path} is closed; open a new ResultsStore({str(self.path)!r}).")
        return self._conn

    def _frame(self, sql: str, params: Sequence = ()) -> pd.DataFrame:
        cursor = self._connection().execute(sql, params)
        columns = [d[0] for d in cursor.description]
        return pd.DataFrame.from_records(cursor.fetchall(), columns=columns)

    def _require_running(self, conn: sqlite3.Connection, run_id: str, action: str) -> None:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(
                f"Cannot {action} run {run_id!r}: no such run in {self.path}. Use the id that "
                "start_run returned for this store."
            )
        if row[0] != "running":
            raise StoreError(
                f"Cannot {action} run {run_id!r}: its status is already {row[0]!r}. Runs are "
                "append-only and finish once; start a new run to record new results."
            )


_RUN_COLUMNS = (
    "run_id", "created_at", "finished_at", "status", "message", "algorithm", "dataset", "seed",
    "backend", "device", "config", "config_hash", "versions", "git_commit", "timings",
)

_SCHEMA = """
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,
    finished_at   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    message       TEXT,
    algorithm     TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    backend       TEXT NOT NULL,
    device        TEXT NOT NULL,
    config_json   TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    git_commit    TEXT,
    timings_json  TEXT
);
CREATE TABLE evaluations (
    eval_id        INTEGER PRIMARY KEY,
    run_id         TEXT NOT NULL REFERENCES runs (run_id),
    split          TEXT NOT NULL,
    ways           INTEGER,
    shots          INTEGER NOT NULL,
    queries        INTEGER NOT NULL,
    fingerprint    TEXT NOT NULL,
    metric         TEXT NOT NULL,
    headline_steps INTEGER NOT NULL,
    notes_json     TEXT NOT NULL
);
CREATE INDEX evaluations_run ON evaluations (run_id);
CREATE TABLE episode_metrics (
    eval_id     INTEGER NOT NULL REFERENCES evaluations (eval_id),
    inner_steps INTEGER NOT NULL,
    episode     INTEGER NOT NULL,
    value       REAL,
    PRIMARY KEY (eval_id, inner_steps, episode)
) WITHOUT ROWID;
CREATE TABLE training_curve (
    run_id    TEXT NOT NULL REFERENCES runs (run_id),
    iteration INTEGER NOT NULL,
    loss      REAL,
    metric    REAL,
    seconds   REAL
);
CREATE INDEX training_curve_run ON training_curve (run_id, iteration);
"""


def _prepare_parent(path: Path) -> None:
    """Create ``path``'s parent folders; raise StoreError naming the folder if that or writing fails."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(
            f"Cannot create the folder {parent} for results store {path}: {err}. Pass a path whose "
            "parent is (or can be created as) a writable folder."
        ) from err
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"The folder {parent} is not writable, so results store {path} cannot be created. "
            "Fix its permissions or pass a path in a writable folder."
        )


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty database, or check an existing one's version."""
    conn.execute("BEGIN IMMEDIATE")  # another process may be creating the schema right now
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(
                    f"{path} is an SQLite database but not a metabench results store (it has tables "
                    "and no schema version). Pass the path of a results store or of a new file."
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.info("Created results store %s (schema version %d).", path, SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"Results store {path} has schema version {version}, but this metabench reads "
                f"schema version {SCHEMA_VERSION}. Open it with the metabench version that wrote "
                f"it, or move {path} aside and let a new store be created there."
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class _transaction:
    """``with _transaction(conn, what):`` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error.

    SQLite errors are re-raised as StoreError naming ``what``; other errors pass through unchanged.
    """

    def __init__(self, conn: sqlite3.Connection, what: str):
        self.conn = conn
        self.what = what

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise StoreError(
                f"Could not {self.what}: {err} (another process held the store's write lock for "
                "longer than the busy timeout). Retry, or give the store a longer timeout."
            ) from err

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.conn.execute("COMMIT")
            return False
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"Could not {self.what}; nothing was written: {exc}") from exc
        return False


def _insert_evaluation(conn: sqlite3.Connection, run_id: str, evaluation: Evaluation) -> None:
    cursor = conn.execute(
        "INSERT INTO evaluations (run_id, split, ways, shots, queries, fingerprint, metric, "
        "headline_steps, notes_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            evaluation.split,
            None if evaluation.ways is None else int(evaluation.ways),
            int(evaluation.shots),
            int(evaluation.queries),
            evaluation.fingerprint,
            evaluation.metric,
            int(evaluation.headline_steps),
            _to_json(evaluation.notes, "notes"),
        ),
    )
    eval_id = cursor.lastrowid
    for steps, values in sorted(evaluation.values.items()):
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise ValueError(
                f"Received values[{steps}] of shape {array.shape} for the {evaluation.split!r} "
                f"evaluation with fingerprint {evaluation.fingerprint!r}; expected a 1-D array "
                "[num_episodes] of per-episode metrics."
            )
        conn.executemany(
            "INSERT INTO episode_metrics (eval_id, inner_steps, episode, value) VALUES (?, ?, ?, ?)",
            zip(itertools.repeat(eval_id), itertools.repeat(int(steps)), itertools.count(), array.tolist()),
        )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _to_json(value: object, what: str) -> str:
    """Canonical JSON (sorted keys); numpy scalars/arrays and paths are converted."""
    try:
        return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Received a {what} that cannot be stored as JSON: {err}. Pass plain data.") from err


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
