"""SQLite results store: runs, per-episode metrics and training curves as append-only rows.

The store records what the runner hands it — configs, metrics and metadata — as data; it knows
nothing of an algorithm's internals. A run is inserted with status ``"running"`` when it starts and
ends either with :meth:`ResultsStore.complete_run` (all results and the status ``"completed"`` in
one transaction) or with :meth:`ResultsStore.fail_run` (``"failed"`` or ``"interrupted"``). A run
that did not complete has no result rows, so :meth:`ResultsStore.resume_run` may set it
``"running"`` again (the runner continues it from a checkpoint); a completed run never changes.
Only completed runs count: the readers used by reports default to them. Runs that completed
elsewhere (read from result bundles, :mod:`metabench.harness.results.bundles`) enter as they were recorded,
already completed, through :meth:`ResultsStore.import_runs`.

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``)::

    runs             run_id TEXT PK, created_at, finished_at, status, message, algorithm, dataset,
                     seed, backend, device, config_json, config_hash, versions_json, git_commit,
                     timings_json, checkpoint_dir, history_json, recipe_hash, label
    evaluations      eval_id INTEGER PK, run_id -> runs, split, ways (NULL for regression), shots,
                     queries, fingerprint, metric, headline_steps, notes_json
    episode_metrics  eval_id -> evaluations, inner_steps, episode, value   (PK: all but value)
    training_curve   run_id -> runs, iteration, loss, metric, seconds

``history_json`` is the run's life as a list of events (``{"event": "started" | "resumed" |
"interrupted" | "failed" | "completed" | "nan_retry", "at": ..., ...}``); ``checkpoint_dir`` is
where the runner keeps the run's checkpoints (``NULL`` when it keeps none). ``recipe_hash`` is the
hash of the config without its seed (:func:`metabench.harness.config.recipe_hash`): runs pool as
seeds of one result only within one recipe. ``label`` is the config's display label (``""``: none).
An evaluation's ``fingerprint`` is its evaluation set's identity: the episode indices and, for
classification, the dataset options and loader version that turn them into inputs
(:func:`metabench.harness.data.episodes.compose_fingerprint`).

Timestamps are ISO-8601 UTC strings. SQLite has no NaN: a NaN metric is stored as NULL and read
back as NaN.

Versions: 1 had no ``checkpoint_dir`` and ``history_json``; 2 had no ``recipe_hash`` and ``label``,
and its classification fingerprints covered the episode indices only. An older store is migrated
in place (one transaction) when opened: version 3 computes each run's recipe hash from its stored
config and composes each classification fingerprint with the inputs its stored config names
(loader version 1, the only one before version 3). A store of a newer version is refused with a message naming both.
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

from metabench.harness.config import recipe_hash
from metabench.harness.data.episodes import compose_fingerprint, input_description
from metabench.harness.errors import MetabenchError
from metabench.harness.results.records import PLAIN_METRICS, CurvePoint, Evaluation, RunInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""Version of the table layout this module reads and writes (``PRAGMA user_version``)."""

RESUMABLE_STATUSES = ("running", "interrupted", "failed")
"""Statuses :meth:`ResultsStore.resume_run` accepts: the run has no results yet."""

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
"""Every value ``runs.status`` can take; only ``"completed"`` runs count in reports."""

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before giving up."""


class StoreError(MetabenchError, RuntimeError):
    """The results store cannot be opened or cannot record what was asked; the message says why."""


def new_run_id() -> str:
    """A fresh run id, ``"YYYYmmdd-HHMMSS-<8 hex>"`` (UTC start time and 32 random bits)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


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

    def start_run(self, info: RunInfo, *, run_id: str | None = None, checkpoint_dir: str | os.PathLike | None = None) -> str:
        """Record that a run started; returns its run id (``"YYYYmmdd-HHMMSS-<8 hex>"``, UTC).

        The run has status ``"running"`` until :meth:`complete_run` or :meth:`fail_run`.

        Args:
            info: what the run is.
            run_id: the id to use (from :func:`new_run_id`); ``None`` makes a new one.
            checkpoint_dir: where the runner keeps this run's checkpoints, recorded so that a
                resume finds them.
        """
        conn = self._connection()
        run_id = run_id or new_run_id()
        row = (
            run_id,
            _now(),
            "running",
            *_info_values(info),
            None if checkpoint_dir is None else os.fspath(checkpoint_dir),
            _to_json([{"event": "started", "at": _now()}], "history"),
            info.recipe_hash,
            info.label,
        )
        with _transaction(conn, f"start run of {info.algorithm} on {info.dataset}"):
            conn.execute(
                "INSERT INTO runs (run_id, created_at, status, algorithm, dataset, seed, backend, "
                "device, config_json, config_hash, versions_json, git_commit, checkpoint_dir, history_json, "
                "recipe_hash, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        events: Sequence[dict] = (),
    ) -> None:
        """Record a run's results and mark it ``"completed"``, all in one transaction.

        Either every evaluation, every per-episode value, every curve point and the new status are
        written, or (on any error) none of them are and the run stays ``"running"``.

        Args:
            run_id: id returned by :meth:`start_run`; the run must be ``"running"``.
            evaluations: each evaluation's ``values[steps]`` is a 1-D array ``[num_episodes]``.
            curve: meta-training log points, in any order.
            timings: JSON-able phase name -> seconds (or any JSON-able facts about time).
            events: JSON-able dicts appended to the run's history before ``"completed"`` (e.g.
                the NaN retries of its training).

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
            _insert_curve(conn, run_id, curve)
            history = _history(conn, run_id) + [*events, {"event": "completed", "at": _now()}]
            conn.execute(
                "UPDATE runs SET status = 'completed', finished_at = ?, message = NULL, timings_json = ?, "
                "history_json = ? WHERE run_id = ?",
                (_now(), timings_json, _to_json(history, "history"), run_id),
            )
        logger.info("Completed run %s: %d evaluation(s), %d curve point(s).", run_id, len(evaluations), len(curve))

    def fail_run(self, run_id: str, status: str, message: str, events: Sequence[dict] = ()) -> None:
        """Mark a running run ``"failed"`` or ``"interrupted"`` with a human-readable message.

        ``events`` (JSON-able dicts) are appended to the run's history before the status change.

        Raises:
            ValueError: ``status`` is not ``"failed"`` or ``"interrupted"``.
            StoreError: the run does not exist or is no longer running.
        """
        if status not in ("failed", "interrupted"):
            raise ValueError(f"Received status={status!r}; expected 'failed' or 'interrupted'.")
        conn = self._connection()
        with _transaction(conn, f"mark run {run_id} {status}"):
            self._require_running(conn, run_id, f"mark {status}")
            history = _history(conn, run_id) + [*events, {"event": status, "at": _now(), "message": str(message)}]
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ?, history_json = ? WHERE run_id = ?",
                (status, _now(), str(message), _to_json(history, "history"), run_id),
            )
        logger.info("Run %s %s: %s", run_id, status, message)

    def resume_run(
        self,
        run_id: str,
        *,
        from_iteration: int,
        checkpoint_dir: str | os.PathLike | None = None,
        details: dict | None = None,
    ) -> None:
        """Set a run that did not complete back to ``"running"``; the runner continues it.

        The run keeps its id, config and creation time; ``finished_at`` and ``message`` are
        cleared and a ``"resumed"`` event (with ``from_iteration`` and the previous status) is
        appended to its history. A run left ``"running"`` by a process that was killed is
        accepted too: the caller must make sure no other process still trains it (the runner
        holds a lock in the run's checkpoint folder).

        Args:
            run_id: a run with status in :data:`RESUMABLE_STATUSES`.
            from_iteration: the meta-iteration training continues from (0: from the start).
            checkpoint_dir: where its checkpoints are kept now, if that changed.
            details: JSON-able facts added to the event (e.g. the device and library versions of
                the resuming process).

        Raises:
            StoreError: no such run, or it already completed.
        """
        conn = self._connection()
        with _transaction(conn, f"resume run {run_id}"):
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"Cannot resume run {run_id!r}: no such run in {self.path}.")
            if row[0] not in RESUMABLE_STATUSES:
                raise StoreError(
                    f"Cannot resume run {run_id!r}: its status is {row[0]!r}. Only runs that did not "
                    f"complete ({', '.join(RESUMABLE_STATUSES)}) can be resumed; start a new run instead."
                )
            event = {"event": "resumed", "at": _now(), "from_iteration": int(from_iteration), "previous_status": row[0], **(details or {})}
            history = _history(conn, run_id) + [event]
            conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, message = NULL, history_json = ?, "
                "checkpoint_dir = coalesce(?, checkpoint_dir) WHERE run_id = ?",
                (
                    _to_json(history, "history"),
                    None if checkpoint_dir is None else os.fspath(checkpoint_dir),
                    run_id,
                ),
            )
        where = "" if checkpoint_dir is None else f"; checkpoints in {os.fspath(checkpoint_dir)}"
        logger.info("Resumed run %s from meta-iteration %d (it was %s%s).", run_id, from_iteration, row[0], where)

    def import_runs(self, runs: Sequence[dict]) -> None:
        """Insert runs that finished elsewhere (e.g. read from a result bundle), all in one transaction.

        Each run is stored exactly as recorded: status ``"completed"``, its own run id, timestamps,
        timings and history (no event is added), no message and no checkpoint folder. Either every
        run, evaluation, per-episode value and curve point is written, or (on any error) none.

        Args:
            runs: dicts with the keys ``info`` (:class:`RunInfo`), ``run_id``, ``created_at`` and
                ``finished_at`` (ISO-8601 strings), ``timings`` (JSON-able), ``history`` (list of
                event dicts), ``evaluations`` (sequence of :class:`Evaluation`) and ``curve``
                (sequence of :class:`CurvePoint`; NaN is stored as NULL).

        Raises:
            StoreError: a run id is already in the store (or twice in ``runs``), or SQLite refused a row.
            ValueError: an evaluation's values are not 1-D numeric arrays, or a field is not JSON-able.
        """
        conn = self._connection()
        with _transaction(conn, f"import {len(runs)} run(s)"):
            for run in runs:
                run_id, info = run["run_id"], run["info"]
                if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    raise StoreError(
                        f"Cannot import run {run_id!r}: {self.path} already has a run with that id; nothing "
                        "was imported. Imported runs keep their ids, so a run can be imported once."
                    )
                conn.execute(
                    "INSERT INTO runs (run_id, created_at, finished_at, status, message, algorithm, dataset, "
                    "seed, backend, device, config_json, config_hash, versions_json, git_commit, timings_json, "
                    "checkpoint_dir, history_json, recipe_hash, label) "
                    "VALUES (?, ?, ?, 'completed', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                    (
                        run_id,
                        run["created_at"],
                        run["finished_at"],
                        *_info_values(info),
                        _to_json(run["timings"], "timings"),
                        _to_json(list(run["history"]), "history"),
                        info.recipe_hash,
                        info.label,
                    ),
                )
                for evaluation in run["evaluations"]:
                    _insert_evaluation(conn, run_id, evaluation)
                _insert_curve(conn, run_id, run["curve"])
        logger.info("Imported %d completed run(s) into %s.", len(runs), self.path)

    # ------------------------------------------------------------------ reading

    def get_run(self, run_id: str) -> dict:
        """One run as a dict with the columns of :meth:`runs`.

        Raises:
            StoreError: there is no run ``run_id``, naming the store and its newest runs.
        """
        frame = self._runs_frame(" WHERE run_id = ?", (run_id,))
        if frame.empty:
            latest = self._connection().execute(
                "SELECT run_id FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 3"
            ).fetchall()
            hint = f" Its newest runs: {', '.join(r[0] for r in latest)}." if latest else " It has no runs yet."
            raise StoreError(f"No run {run_id!r} in results store {self.path}.{hint}")
        return frame.iloc[0].to_dict()

    def runs(self, status: str | None = None) -> pd.DataFrame:
        """One row per run, oldest first, with ``config``, ``versions`` and ``timings`` as dicts.

        Columns: run_id, created_at, finished_at, status, message, algorithm, dataset, seed,
        backend, device, config, config_hash, versions, git_commit, timings, checkpoint_dir,
        history (a list of event dicts), recipe_hash, label.

        Args:
            status: keep only runs with this status (one of :data:`RUN_STATUSES`); ``None``: all.
        """
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"Received status={status!r}; expected None or one of {RUN_STATUSES}.")
        return self._runs_frame(" WHERE status = ?" if status else "", (status,) if status else ())

    def _runs_frame(self, where: str, params: Sequence) -> pd.DataFrame:
        sql = (
            "SELECT run_id, created_at, finished_at, status, message, algorithm, dataset, seed, "
            "backend, device, config_json, config_hash, versions_json, git_commit, timings_json, "
            "checkpoint_dir, history_json, recipe_hash, label FROM runs" + where + " ORDER BY created_at, run_id"
        )
        frame = self._frame(sql, params)
        for column in ("config", "versions", "timings", "history"):
            frame[column] = [json.loads(s) if isinstance(s, str) else None for s in frame.pop(f"{column}_json")]
        return frame[list(_RUN_COLUMNS)]

    def episode_metrics(self, completed_only: bool = True, *, metrics: Sequence[str] | None = PLAIN_METRICS) -> pd.DataFrame:
        """Per-episode values, one row per (evaluation, inner-step count, episode).

        Columns: run_id, algorithm, dataset, seed, backend, config_hash, recipe_hash, label, eval_id, split, ways
        (nullable ``Int64``; ``<NA>`` for regression), shots, queries, fingerprint, metric,
        headline_steps, inner_steps, episode, value (float; NaN where a NaN was recorded), notes
        (the evaluation's notes as a JSON string).

        Args:
            completed_only: keep only runs with status ``"completed"`` (what reports read).
            metrics: the evaluations' metrics to read: by default the plain ones (``accuracy``,
                ``mse``), which the leaderboard, baselines and the reproduction table compare;
                prequential results (:data:`~metabench.harness.results.records.PREQUENTIAL_METRICS`)
                only when named; ``None``: every metric (what a bundle exports).

        Rows are ordered by run (creation time, id), evaluation, inner steps and episode. A sweep's
        store (10,000 runs x 600 episodes) reads in seconds: the per-evaluation columns are read
        once per evaluation and the values in the table's own order, then put together in numpy.
        """
        conn = self._connection()
        conn.execute("BEGIN")  # one snapshot for the three reads, while other processes write
        try:
            frame = self._episode_frame(conn, completed_only, metrics)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        frame["ways"] = frame["ways"].astype("Int64")
        frame["value"] = frame["value"].astype("float64")
        for column in ("seed", "shots", "queries", "headline_steps", "inner_steps", "episode", "eval_id"):
            frame[column] = frame[column].astype("int64")
        return frame

    def _episode_frame(self, conn: sqlite3.Connection, completed_only: bool, metrics=None) -> pd.DataFrame:
        where = ["r.status = 'completed'"] if completed_only else []
        if metrics is not None:
            where.append(f"e.metric IN ({', '.join('?' * len(metrics))})")
        evaluations = conn.execute(
            "SELECT r.run_id, r.algorithm, r.dataset, r.seed, r.backend, r.config_hash, r.recipe_hash, r.label, e.eval_id, "
            "e.split, e.ways, e.shots, e.queries, e.fingerprint, e.metric, e.headline_steps, "
            "e.notes_json AS notes FROM evaluations e JOIN runs r ON r.run_id = e.run_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY r.created_at, r.run_id, e.eval_id",
            tuple(metrics or ()),
        )
        eval_columns = [d[0] for d in evaluations.description]
        eval_rows = evaluations.fetchall()
        # (eval_id, inner_steps) blocks in the table's primary-key order, which is the order a
        # plain scan returns the values in.
        blocks = np.array(
            conn.execute(
                "SELECT eval_id, inner_steps, count(*), min(episode), max(episode) FROM episode_metrics "
                "GROUP BY eval_id, inner_steps ORDER BY eval_id, inner_steps"
            ).fetchall(),
            dtype=np.int64,
        ).reshape(-1, 5)
        wanted = {row[eval_columns.index("eval_id")]: position for position, row in enumerate(eval_rows)}
        block_position = np.array([wanted.get(int(e), -1) for e in blocks[:, 0]], dtype=np.int64)
        keep = block_position >= 0
        columns = [*eval_columns[:-1], "inner_steps", "episode", "value", "notes"]
        if not keep.any():
            frame = pd.DataFrame.from_records([], columns=columns)
            return frame
        counts, starts = blocks[:, 2], np.concatenate([[0], np.cumsum(blocks[:, 2])[:-1]])
        total = int(counts.sum())
        values = np.empty(total, dtype=np.float64)
        cursor = conn.execute("SELECT value FROM episode_metrics ORDER BY eval_id, inner_steps, episode")
        filled = 0
        while filled < total:
            chunk = cursor.fetchmany(1 << 20)
            if not chunk:
                break
            try:
                values[filled : filled + len(chunk)] = np.fromiter((row[0] for row in chunk), np.float64, len(chunk))
            except TypeError:  # a NULL (a NaN that was recorded): np.array turns None into NaN
                values[filled : filled + len(chunk)] = np.array(chunk, dtype=np.float64).reshape(-1)
            filled += len(chunk)
        contiguous = bool(np.all(blocks[:, 3] == 0) and np.all(blocks[:, 4] == counts - 1))
        if filled != total or not contiguous:  # not as complete_run writes them: read the episode numbers too
            rows = conn.execute("SELECT episode, value FROM episode_metrics ORDER BY eval_id, inner_steps, episode").fetchall()
            pairs = np.array(rows, dtype=np.float64).reshape(-1, 2)
            episodes_all, values = pairs[:, 0].astype(np.int64), pairs[:, 1]
        else:
            episodes_all = None
        # Output order: evaluations as sorted above, each one's blocks by inner steps (as stored).
        chosen = np.flatnonzero(keep)
        chosen = chosen[np.argsort(block_position[chosen], kind="stable")]
        lengths = counts[chosen]
        row_starts = np.repeat(starts[chosen], lengths)
        within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        index = row_starts + within
        present = sorted(set(block_position[chosen].tolist()))
        meta = pd.DataFrame.from_records([eval_rows[i] for i in present], columns=eval_columns)
        meta_row = np.searchsorted(np.array(present, dtype=np.int64), np.repeat(block_position[chosen], lengths))
        frame = meta.take(meta_row).reset_index(drop=True)
        frame.insert(len(eval_columns) - 1, "inner_steps", np.repeat(blocks[chosen, 1], lengths))
        frame.insert(len(eval_columns), "episode", within if episodes_all is None else episodes_all[index])
        frame.insert(len(eval_columns) + 1, "value", values[index])
        return frame[columns]

    def training_curves(self, completed_only: bool = True) -> pd.DataFrame:
        """Meta-training log points, one row per (run, logged iteration).

        Columns: run_id, algorithm, dataset, seed, backend, config_hash, recipe_hash, label, iteration,
        loss, metric, seconds (loss/metric/seconds are floats; NaN where a NaN was recorded).
        """
        sql = (
            "SELECT r.run_id, r.algorithm, r.dataset, r.seed, r.backend, r.config_hash, r.recipe_hash, r.label, "
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
    "checkpoint_dir", "history", "recipe_hash", "label",
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
    timings_json  TEXT,
    checkpoint_dir TEXT,
    history_json  TEXT NOT NULL DEFAULT '[]',
    recipe_hash   TEXT NOT NULL DEFAULT '',
    label         TEXT NOT NULL DEFAULT ''
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
        elif version < SCHEMA_VERSION and all(v in _MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            try:
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except sqlite3.Error as err:
                raise StoreError(
                    f"Results store {path} has schema version {version} and must be migrated to "
                    f"version {SCHEMA_VERSION} before this metabench can use it, but the migration "
                    f"failed ({err}); nothing was changed. Open it once with write access, or with "
                    "the metabench version that wrote it."
                ) from err
            logger.warning("Migrated results store %s from schema version %d to %d.", path, version, SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            newer = " (written by a newer metabench)" if version > SCHEMA_VERSION else ""
            raise StoreError(
                f"Results store {path} has schema version {version}{newer}, but this metabench reads "
                f"schema version {SCHEMA_VERSION}. Open it with the metabench version that wrote "
                f"it, or move {path} aside and let a new store be created there."
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2 records where a run's checkpoints are and its history (starts, resumes, retries)."""
    conn.execute("ALTER TABLE runs ADD COLUMN checkpoint_dir TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN history_json TEXT NOT NULL DEFAULT '[]'")


LEGACY_PREPROCESS_VERSION = 1
"""The loader version of every classification dataset before schema version 3."""


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Version 3 records each run's recipe hash and label, and makes classification fingerprints
    cover the inputs (dataset options, loader version), computed from each run's stored config."""
    conn.execute("ALTER TABLE runs ADD COLUMN recipe_hash TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE runs ADD COLUMN label TEXT NOT NULL DEFAULT ''")
    for run_id, dataset, config_json in conn.execute("SELECT run_id, dataset, config_json FROM runs").fetchall():
        config = json.loads(config_json)
        conn.execute(
            "UPDATE runs SET recipe_hash = ?, label = ? WHERE run_id = ?",
            (recipe_hash(config), str(config.get("label", "") or ""), run_id),
        )
        inputs = input_description(config.get("dataset") or {"name": dataset}, LEGACY_PREPROCESS_VERSION)
        for eval_id, fingerprint in conn.execute(
            "SELECT eval_id, fingerprint FROM evaluations WHERE run_id = ? AND ways IS NOT NULL", (run_id,)
        ).fetchall():
            conn.execute(
                "UPDATE evaluations SET fingerprint = ? WHERE eval_id = ?", (compose_fingerprint(fingerprint, inputs), eval_id)
            )


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}
"""Schema version -> function that upgrades a store of that version by one, inside a transaction."""


def _history(conn: sqlite3.Connection, run_id: str) -> list:
    row = conn.execute("SELECT history_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return json.loads(row[0]) if row and row[0] else []


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


def _info_values(info: RunInfo) -> tuple:
    """The ``runs`` columns a ``RunInfo`` fills, in the order algorithm, dataset, seed, backend,
    device, config_json, config_hash, versions_json, git_commit."""
    return (
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


def _insert_curve(conn: sqlite3.Connection, run_id: str, curve) -> None:
    conn.executemany(
        "INSERT INTO training_curve (run_id, iteration, loss, metric, seconds) VALUES (?, ?, ?, ?, ?)",
        ((run_id, int(p.iteration), float(p.loss), float(p.metric), float(p.seconds)) for p in curve),
    )


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
