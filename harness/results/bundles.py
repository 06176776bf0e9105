"""Result bundles: the portable, plain-text record of completed runs (gzipped JSON lines).

A results store is a local SQLite file; a bundle is what travels (and what is committed under
``reports/runs/``): every recorded fact of a run, enough to re-render the leaderboard and the
reproduction table from bundles alone. A bundle is a ``.jsonl.gz`` file: a header line
``{"created_at": ..., "format": "metabench-bundle/1", "runs": N}``, then one JSON object per
run. Each run carries its resolved config with its config and recipe hashes, where and with what
it ran (backend, device, library versions, git commit), its timings, history and training curve,
and every evaluation with its evaluation-set identity (fingerprint) and all per-episode values at
every evaluated inner-step count (``null`` for a value that was not a finite number). Each run
line ends its own integrity check: ``content_sha256``, the sha256 of the canonical JSON of the
run without that field (:func:`content_sha256`). docs/bundles.md describes every field.

Nothing is pickled, and reading never executes anything: a bundle is checked line by line
(format, schema, finite values, content hash, and that the recorded config and recipe hashes are
those of the recorded config) before any of it enters a store.

Example::

    with ResultsStore("reports/results.sqlite") as store:
        export_runs(store, ["20250101-120000-0123abcd"], "reports/runs/maml-seed0.jsonl.gz")
    with ResultsStore("other.sqlite") as store:
        import_bundles(store, ["reports/runs"])    # {"imported": 1, "skipped": 0}
    with open_bundles("reports/runs") as store:    # a temporary store holding every bundle
        write_report(store, "reports")
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metabench.harness.config import config_hash, recipe_hash
from metabench.harness.results.records import METRICS, PLAIN_METRICS, CurvePoint, Evaluation, RunInfo
from metabench.harness.results.store import ResultsStore, StoreError

logger = logging.getLogger(__name__)

FORMAT = "metabench-bundle/1"
"""The ``format`` of a bundle's header line; a reader refuses any other."""

SUFFIX = ".jsonl.gz"
"""How a bundle's file name ends (what :func:`import_bundles` looks for in a folder)."""


class BundleError(StoreError):
    """A bundle cannot be written, read or imported; the message names the file, line and run.

    A :class:`~metabench.harness.results.store.StoreError`, so callers (and the ``metabench`` command)
    that report store errors report it the same way.
    """


def export_runs(store: ResultsStore, run_ids: Sequence[str] | None, path: str | os.PathLike) -> list[str]:
    """Write completed runs of ``store`` to the bundle ``path``; returns the run ids written.

    The file is written whole or not at all (a temporary file beside it is renamed into place);
    an existing bundle at ``path`` is replaced.

    Args:
        store: the results store holding the runs.
        run_ids: the runs to export, in this order (repeats are written once); ``None``: every
            completed run of the store, oldest first.
        path: the bundle to write; its name must end in ``.jsonl.gz``.

    Raises:
        BundleError: ``path`` does not end in ``.jsonl.gz``; a run is not completed; ``run_ids``
            is empty or the store has no completed run; a run's recorded config or recipe hash is
            not the hash of its stored config; a field holds a value JSON cannot write.
        StoreError: a run id is not in the store.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX) or path.name == SUFFIX:
        raise BundleError(
            f"Received --out {str(path)!r}; a bundle's file name must end in {SUFFIX!r} (what "
            f"`metabench import` and `metabench report --from` look for), e.g. reports/runs/maml{SUFFIX}."
        )
    runs = store.runs()
    if run_ids is None:
        chosen = runs[runs["status"] == "completed"]
        if chosen.empty:
            raise BundleError(f"Results store {store.path} has no completed runs to export; run `metabench run` first.")
    else:
        run_ids = list(dict.fromkeys(run_ids))
        if not run_ids:
            raise BundleError("Received no run ids to export; name at least one run id, or export every completed run (--all).")
        known = set(runs["run_id"])
        for run_id in run_ids:
            if run_id not in known:
                store.get_run(run_id)  # raises StoreError naming the store and its newest runs
        chosen = runs.set_index("run_id", drop=False).loc[run_ids]
        for row in chosen.itertuples(index=False):
            if row.status != "completed":
                raise BundleError(
                    f"Cannot export run {row.run_id!r}: its status is {row.status!r}. Only completed runs can be "
                    "exported (a bundle holds results); let it finish, or resume it with `metabench run --resume "
                    f"{row.run_id}`."
                )
    records = _run_objects(store, chosen)
    for run in records:
        problem = _identity_problem(run)
        if problem:
            raise BundleError(f"Cannot export run {run['run_id']!r} of {store.path}: {problem}")
    _write_bundle(path, records)
    logger.info("Wrote %d run(s) to %s.", len(records), path)
    return [run["run_id"] for run in records]


def import_bundles(store: ResultsStore, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, int]:
    """Load bundles into ``store``; returns ``{"imported": n, "skipped": m}`` (runs).

    Every file is read and verified (:func:`read_bundle`) before anything is written; then each
    file is imported in one transaction. A run the store already holds with the same content is
    skipped; a run id the store holds with different content is an error.

    Args:
        store: the store to import into.
        paths: bundle files, or folders whose ``*.jsonl.gz`` files (recursively) are imported.

    Raises:
        BundleError: a path is missing, a folder holds no bundle, a file fails verification (the
            message names the file, line and run), or a run id is already in the store with
            different content (nothing of that file is imported).
    """
    files = bundle_paths(paths)
    bundles = [(file, read_bundle(file)) for file in files]
    counts = {"imported": 0, "skipped": 0}
    for file, runs in bundles:
        imported, skipped = _import_file(store, file, runs)
        counts["imported"] += imported
        counts["skipped"] += skipped
    return counts


@contextlib.contextmanager
def open_bundles(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[ResultsStore]:
    """``with open_bundles("reports/runs") as store:`` a temporary store holding every bundle of ``paths``.

    The store lives in a temporary folder that is deleted on exit; what reads it (e.g.
    :func:`metabench.harness.analysis.report.write_report`) sees exactly the runs of the bundles.

    Args:
        paths: a folder (its ``*.jsonl.gz`` files, recursively), a bundle file, or several of them.

    Raises:
        BundleError: as :func:`import_bundles`, including a folder without bundles.
    """
    with tempfile.TemporaryDirectory(prefix="metabench-bundles-") as folder:
        with ResultsStore(Path(folder) / "results.sqlite") as store:
            import_bundles(store, paths)
            yield store


def bundle_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The bundle files ``paths`` name: files as given, folders' ``*.jsonl.gz`` files (recursively, sorted).

    Raises:
        BundleError: a path does not exist, or a folder holds no bundle.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*" + SUFFIX) if p.is_file())
            if not found:
                raise BundleError(f"No bundles (*{SUFFIX} files) under {path}; export runs there with `metabench export`.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BundleError(f"No bundle file or folder at {path}.")
    return list({file.resolve(): file for file in files}.values())


def read_bundle(path: str | os.PathLike) -> list[dict]:
    """The runs of one bundle, verified; each as the plain dict written (see docs/bundles.md).

    Checks the header (format and run count), each run's schema (required keys and their types,
    no unknown keys, per-episode value lists of equal length at every inner-step count, every
    number finite or ``null``), its ``content_sha256``, and that its ``config_hash`` and
    ``recipe_hash`` (and algorithm, dataset, seed, backend and label) are those of its config.

    Raises:
        BundleError: the first problem found, naming the file, the line and the run id.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError as err:
        raise BundleError(f"No bundle file at {path}.") from err
    except (OSError, EOFError, zlib.error) as err:
        raise BundleError(
            f"{path} is not a complete gzip file ({err}): it is truncated, damaged or not a metabench bundle. "
            "Copy or export it again."
        ) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{path} is not UTF-8 text ({err}); it is not a metabench bundle.") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BundleError(f"{path} is empty: a bundle starts with a header line {{\"format\": \"{FORMAT}\", ...}}.")
    header = _parse_line(path, 1, lines[0])
    _check_header(path, header)
    runs = []
    for number, line in enumerate(lines[1:], start=2):
        run = _parse_line(path, number, line)
        _check_run(path, number, run)
        runs.append(run)
    if len(runs) != header["runs"]:
        raise BundleError(
            f"{path}: its header says {header['runs']} run(s) but the file holds {len(runs)}; it is incomplete "
            "or was edited. Export it again."
        )
    return runs


def content_sha256(run: dict) -> str:
    """sha256 hex of the canonical JSON of ``run`` without its ``content_sha256`` key.

    Canonical JSON: ``json.dumps(run, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    allow_nan=False)``, encoded as UTF-8.
    """
    return hashlib.sha256(_canonical({k: v for k, v in run.items() if k != "content_sha256"}).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- writing


def _run_objects(store: ResultsStore, rows: pd.DataFrame) -> list[dict]:
    """The bundle objects (with their content hash) of the completed runs in ``rows`` (from ``store.runs()``)."""
    wanted = set(rows["run_id"])
    episodes = store.episode_metrics(metrics=None)  # every metric, the prequential ones too
    episodes = episodes[episodes["run_id"].isin(wanted)]
    curves = store.training_curves()
    curves = curves[curves["run_id"].isin(wanted)]
    evaluations: dict[str, list[dict]] = {run_id: [] for run_id in wanted}
    for (run_id, _), group in episodes.groupby(["run_id", "eval_id"], sort=False):
        evaluations[run_id].append(_evaluation_object(run_id, group))
    curve_points: dict[str, list[list]] = {run_id: [] for run_id in wanted}
    for row in curves.itertuples(index=False):
        curve_points[row.run_id].append([int(row.iteration), _number(row.loss), _number(row.metric), _number(row.seconds)])
    records = []
    for row in rows.itertuples(index=False):
        run = {
            "run_id": str(row.run_id),
            "created_at": str(row.created_at),
            "finished_at": str(row.finished_at),
            "algorithm": str(row.algorithm),
            "dataset": str(row.dataset),
            "seed": int(row.seed),
            "backend": str(row.backend),
            "device": str(row.device),
            "config": row.config,
            "config_hash": str(row.config_hash),
            "recipe_hash": str(row.recipe_hash),
            "label": str(row.label),
            "versions": row.versions,
            "git_commit": _text_or_none(row.git_commit),
            "timings": row.timings if row.timings is not None else {},
            "history": row.history if row.history is not None else [],
            "curve": curve_points[row.run_id],
            "evaluations": evaluations[row.run_id],
        }
        try:
            run["content_sha256"] = content_sha256(run)
        except (TypeError, ValueError) as err:
            raise BundleError(
                f"Cannot export run {row.run_id!r}: a recorded field holds a value JSON cannot write ({err}); "
                "bundles hold finite numbers only, outside the per-episode values and the curve."
            ) from err
        records.append(run)
    return records


def _evaluation_object(run_id: str, group: pd.DataFrame) -> dict:
    """One evaluation of a bundle run from its rows of ``store.episode_metrics()``."""
    first = group.iloc[0]
    values = {}
    for steps, block in group.groupby("inner_steps", sort=True):
        episodes = block["episode"].to_numpy()
        if not np.array_equal(episodes, np.arange(len(episodes))):
            raise BundleError(
                f"Cannot export run {run_id!r}: its {first['split']!r} evaluation (fingerprint {first['fingerprint'][:12]}) "
                f"at {steps} inner step(s) records episodes {episodes[:5].tolist()}..., not 0..{len(episodes) - 1}."
            )
        values[str(int(steps))] = [_number(v) for v in block["value"].tolist()]
    lengths = {len(v) for v in values.values()}
    if len(lengths) != 1:
        raise BundleError(
            f"Cannot export run {run_id!r}: its {first['split']!r} evaluation records different episode counts "
            f"at different inner steps ({sorted(lengths)}); every inner-step count must cover the same episodes."
        )
    return {
        "split": str(first["split"]),
        "ways": None if pd.isna(first["ways"]) else int(first["ways"]),
        "shots": int(first["shots"]),
        "queries": int(first["queries"]),
        "fingerprint": str(first["fingerprint"]),
        "metric": str(first["metric"]),
        "headline_steps": int(first["headline_steps"]),
        "notes": json.loads(first["notes"]) if isinstance(first["notes"], str) else {},
        "values": values,
    }


def _write_bundle(path: Path, records: list[dict]) -> None:
    header = {"format": FORMAT, "created_at": _now(), "runs": len(records)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BundleError(f"Cannot create the folder {path.parent} for bundle {path}: {err}.") from err
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
            for line in (header, *records):
                stream.write((_canonical(line) + "\n").encode("utf-8"))
        os.replace(temporary, path)
    except OSError as err:
        raise BundleError(f"Cannot write bundle {path}: {err}. Pass a path in a writable folder.") from err
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------- reading and checking

_HEADER_KEYS = {"format": str, "created_at": str, "runs": int}

_RUN_KEYS = {
    "run_id": str,
    "created_at": str,
    "finished_at": str,
    "algorithm": str,
    "dataset": str,
    "seed": int,
    "backend": str,
    "device": str,
    "config": dict,
    "config_hash": str,
    "recipe_hash": str,
    "label": str,
    "versions": dict,
    "git_commit": (str, type(None)),
    "timings": dict,
    "history": list,
    "curve": list,
    "evaluations": list,
    "content_sha256": str,
}
"""Every key of a bundle run and its JSON type (``int`` never accepts ``true``/``false``)."""

_EVALUATION_KEYS = {
    "split": str,
    "ways": (int, type(None)),
    "shots": int,
    "queries": int,
    "fingerprint": str,
    "metric": str,
    "headline_steps": int,
    "notes": dict,
    "values": dict,
}
"""Every key of an evaluation of a bundle run and its JSON type."""

_STEPS = re.compile(r"0|[1-9][0-9]*")


def _parse_line(path: Path, number: int, line: str) -> dict:
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except ValueError as err:
        raise BundleError(f"{path}, line {number}: not valid JSON ({err}).") from err
    if not isinstance(value, dict):
        raise BundleError(f"{path}, line {number}: expected a JSON object, got {type(value).__name__}.")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; a bundle writes a non-finite value as null")


def _check_header(path: Path, header: dict) -> None:
    given = header.get("format")
    if given != FORMAT:
        if isinstance(given, str) and given.startswith("metabench-bundle/"):
            raise BundleError(
                f"{path}, line 1: bundle format {given!r}, but this metabench reads {FORMAT!r}. Import it with "
                "the metabench version that wrote it."
            )
        raise BundleError(
            f"{path}, line 1: not a metabench bundle: the header's format is {given!r}, expected {FORMAT!r}."
        )
    problem = _keys_problem(header, _HEADER_KEYS, "header")
    if problem is None and header["runs"] < 0:
        problem = f"header runs = {header['runs']}, expected a count >= 0"
    if problem:
        raise BundleError(f"{path}, line 1: {problem}.")


def _check_run(path: Path, number: int, run: dict) -> None:
    run_id = run.get("run_id")
    where = f"{path}, line {number}" + (f" (run {run_id!r})" if isinstance(run_id, str) else "")
    problem = _keys_problem(run, _RUN_KEYS, "run") or _content_problem(run)
    if problem:
        raise BundleError(f"{where}: {problem}.")
    recorded, computed = run["content_sha256"], content_sha256(run)
    if recorded != computed:
        raise BundleError(
            f"{where}: content_sha256 mismatch: the line records {recorded[:16]}... but its content hashes to "
            f"{computed[:16]}...; the run was changed after it was exported (or the file is damaged). Export it "
            "again from the store that holds it."
        )
    problem = _identity_problem(run)
    if problem:
        raise BundleError(f"{where}: {problem}")


def _keys_problem(value: dict, keys: dict, what: str) -> str | None:
    missing = [k for k in keys if k not in value]
    if missing:
        return f"{what} lacks the key(s) {', '.join(missing)}"
    unknown = sorted(set(value) - set(keys))
    if unknown:
        return f"{what} has unknown key(s) {', '.join(unknown)} (format {FORMAT} has exactly {', '.join(keys)})"
    for key, kind in keys.items():
        if not _is(value[key], kind):
            return f"{what} key {key!r} is {json.dumps(value[key])[:60]}, expected {_kind_name(kind)}"
    return None


def _content_problem(run: dict) -> str | None:
    """What is wrong inside a run whose keys and top-level types are right (``None``: nothing)."""
    if not run["run_id"]:
        return "run_id is empty"
    if run["seed"] < 0:
        return f"seed = {run['seed']}, expected a seed >= 0"
    if not all(isinstance(event, dict) for event in run["history"]):
        return "history must be a list of event objects"
    for position, point in enumerate(run["curve"]):
        if not (
            isinstance(point, list)
            and len(point) == 4
            and _is(point[0], int)
            and all(_is_value(v) for v in point[1:])
        ):
            return (
                f"curve[{position}] is {json.dumps(point)[:80]}, expected [iteration, loss, metric, seconds] "
                "(an integer and three finite numbers or null)"
            )
    for position, evaluation in enumerate(run["evaluations"]):
        problem = _evaluation_problem(evaluation, f"evaluations[{position}]")
        if problem:
            return problem
    return None


def _evaluation_problem(evaluation, where: str) -> str | None:
    if not isinstance(evaluation, dict):
        return f"{where} is {json.dumps(evaluation)[:60]}, expected an object"
    problem = _keys_problem(evaluation, _EVALUATION_KEYS, where)
    if problem:
        return problem
    if evaluation["metric"] not in METRICS:
        plain = ", ".join(repr(m) for m in PLAIN_METRICS)
        others = ", ".join(m for m in METRICS if m not in PLAIN_METRICS)
        return f"{where} metric is {evaluation['metric']!r}, expected {plain} (or one of: {others})"
    for key in ("ways", "shots", "queries", "headline_steps"):
        if evaluation[key] is not None and evaluation[key] < 0:
            return f"{where} {key} = {evaluation[key]}, expected a count >= 0"
    values = evaluation["values"]
    if not values:
        return f"{where} values is empty, expected inner-step count -> per-episode values"
    lengths = set()
    for steps, episode_values in values.items():
        if not _STEPS.fullmatch(steps):
            return f"{where} values key {steps!r} is not an inner-step count (a decimal integer >= 0)"
        if not isinstance(episode_values, list):
            return f"{where} values[{steps!r}] is {type(episode_values).__name__}, expected a list of per-episode values"
        for episode, value in enumerate(episode_values):
            if not _is_value(value):
                return f"{where} values[{steps!r}][{episode}] is {json.dumps(value)[:40]}, expected a finite number or null"
        lengths.add(len(episode_values))
    if len(lengths) != 1:
        return (
            f"{where} values have different lengths at different inner-step counts ({sorted(lengths)}); every "
            "inner-step count must cover the same episodes"
        )
    if str(evaluation["headline_steps"]) not in values:
        return f"{where} headline_steps = {evaluation['headline_steps']}, but values cover inner steps {sorted(values, key=int)}"
    return None


def _identity_problem(run: dict) -> str | None:
    """Whether the recorded hashes and names are those of the recorded config (``None``: they are)."""
    config = run["config"]
    try:
        hashes = {"config_hash": config_hash(config), "recipe_hash": recipe_hash(config)}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        return f"its config cannot be hashed ({err!r}); it is not a resolved metabench config."
    for key, computed in hashes.items():
        if run[key] != computed:
            return (
                f"{key} mismatch: recorded {run[key][:16]}..., but its config hashes to {computed[:16]}...; the "
                "config (or the hash) was edited after the run. A bundle must record the config the run used."
            )
    derived = {
        "algorithm": (config.get("algorithm") or {}).get("name") if isinstance(config.get("algorithm"), dict) else None,
        "dataset": (config.get("dataset") or {}).get("name") if isinstance(config.get("dataset"), dict) else None,
        "seed": config.get("seed"),
        "backend": config.get("backend"),
    }
    for key, expected in derived.items():
        if expected is not None and run[key] != expected:
            return f"{key} is {run[key]!r} but its config says {expected!r}."
    label = str(config.get("label", "") or "")
    if run["label"] != label:
        return f"label is {run['label']!r} but its config's label is {label!r}."
    return None


def _is(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _is_value(value) -> bool:
    """A per-episode or curve value: a finite number or ``None`` (JSON null)."""
    return value is None or (_is(value, (int, float)) and math.isfinite(value))


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names[k] for k in kinds)


# ---------------------------------------------------------------------- importing


def _import_file(store: ResultsStore, path: Path, runs: list[dict]) -> tuple[int, int]:
    """Import one verified bundle's runs in one transaction; returns (imported, skipped)."""
    held = store.runs()
    held = held.set_index("run_id", drop=False)
    already = [run["run_id"] for run in runs if run["run_id"] in held.index]
    for run_id in already:
        status = held.loc[run_id, "status"]
        if status != "completed":
            raise BundleError(
                f"{path}: run {run_id!r} is already in {store.path} with status {status!r}; a completed run cannot "
                "be imported over it. Import into another store."
            )
    stored = {run["run_id"]: run["content_sha256"] for run in _run_objects(store, held.loc[already])} if already else {}
    new: dict[str, dict] = {}
    digests: dict[str, str] = {}
    skipped = 0
    for run in runs:
        run_id, digest = run["run_id"], content_sha256(_normalized(run))
        known = stored.get(run_id, digests.get(run_id))
        if known is None:
            new[run_id], digests[run_id] = run, digest
        elif known == digest:
            skipped += 1
        else:
            where = f"{store.path}" if run_id in stored else "an earlier line of this bundle"
            raise BundleError(
                f"{path}: run {run_id!r} is already in {where} with different content (content sha256 "
                f"{known[:16]}... there, {digest[:16]}... here); nothing of {path.name} was imported. A run id names "
                "one run: remove the other copy, or import into another store."
            )
    try:
        if new:
            store.import_runs([_store_record(run) for run in new.values()])
    except StoreError as err:
        raise BundleError(f"{path}: {err}") from err
    logger.info("%s: imported %d run(s), skipped %d already held.", path, len(new), skipped)
    return len(new), skipped


def _normalized(run: dict) -> dict:
    """``run`` as the store gives it back: per-episode values and curve numbers as floats."""
    evaluations = [
        {**e, "values": {k: [None if v is None else float(v) for v in vs] for k, vs in e["values"].items()}}
        for e in run["evaluations"]
    ]
    curve = [[int(p[0]), *(None if v is None else float(v) for v in p[1:])] for p in run["curve"]]
    return {**run, "evaluations": evaluations, "curve": curve}


def _store_record(run: dict) -> dict:
    """What :meth:`ResultsStore.import_runs` takes for one verified bundle run."""
    info = RunInfo(
        algorithm=run["algorithm"],
        dataset=run["dataset"],
        seed=run["seed"],
        config=run["config"],
        config_hash=run["config_hash"],
        backend=run["backend"],
        device=run["device"],
        versions=run["versions"],
        git_commit=run["git_commit"],
        recipe_hash=run["recipe_hash"],
        label=run["label"],
    )
    evaluations = [
        Evaluation(
            split=e["split"],
            ways=e["ways"],
            shots=e["shots"],
            queries=e["queries"],
            fingerprint=e["fingerprint"],
            metric=e["metric"],
            headline_steps=e["headline_steps"],
            values={
                int(k): np.array([math.nan if v is None else v for v in vs], dtype=np.float64) for k, vs in e["values"].items()
            },
            notes=e["notes"],
        )
        for e in run["evaluations"]
    ]
    curve = [CurvePoint(p[0], *(math.nan if v is None else float(v) for v in p[1:])) for p in run["curve"]]
    return {
        "info": info,
        "run_id": run["run_id"],
        "created_at": run["created_at"],
        "finished_at": run["finished_at"],
        "timings": run["timings"],
        "history": run["history"],
        "evaluations": evaluations,
        "curve": curve,
    }


# ---------------------------------------------------------------------- helpers


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _number(value) -> float | None:
    """A float for a bundle: ``None`` (JSON null) when it is not finite (NaN was recorded, or ±inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _text_or_none(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
