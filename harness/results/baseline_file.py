"""Baseline files: a run's per-episode results as small, versioned, human-readable JSON.

A baseline is what ``metabench check`` compares a candidate against. It is written by
``metabench baseline save RUN_ID... --out FILE`` from completed runs in a results store, is meant to
be committed next to the code it guards, and holds no pickle: only JSON numbers, strings and lists.

Format ``metabench-baseline/1`` (one object; keys in this order)::

    format          "metabench-baseline/1"
    created_at      ISO-8601 UTC time the file was written
    created_by      "metabench <version>"
    algorithm       registered algorithm name, e.g. "maml"
    dataset         registered dataset name, e.g. "sinusoid"
    backend         "tensorflow" or "jax"
    deterministic   the config's engine.deterministic (bit-for-bit repeatable on CPU when true)
    config_hash     sha256 of the first run's resolved config (metabench.harness.config.config_hash)
    recipe_hash     sha256 of the config without the training seed and the display-only keys
                    (metabench.harness.config.recipe_hash): every run of a baseline has this recipe.
                    Recomputed from ``config`` on load (files written before it existed lack it).
    versions        library -> version of the first run, e.g. {"tensorflow": "2.19.0", ...}
    runs            one object per seed: run_id, seed, config_hash, git_commit, device, created_at,
                    versions. Seeds are distinct: repeated runs of one seed count once (see below).
    config          the first run's full resolved config (every run shares it but for the seed)
    settings        one object per evaluation setting:
                      dataset, split, ways (null for regression), shots, queries, fingerprint,
                      metric ("accuracy" as a fraction in [0, 1], "mse", or "return": the mean
                      return of reinforcement-learning rollouts), headline_steps,
                      episodes (n), mean {inner steps: mean over runs and episodes} (for reading
                      only; never trusted on load), values {inner steps: [[run 0's n values],
                      [run 1's n values], ...]}. A NaN value is written as null.

Inner-step counts are JSON object keys, hence strings ("0", "1", ...). Floats are written with
Python's shortest round-tripping repr, so a loaded baseline holds exactly the stored values.

One recipe, one row per seed. A baseline (or a candidate read from a store) holds the runs of one
recipe: runs whose configs differ in anything but the seed are refused, naming the keys. Repeated
runs of one seed count once: when their per-episode values agree bit for bit the first is kept and
the others are listed in :attr:`Baseline.repeats`; when they differ that is a determinism failure
(:class:`BaselineError`), never averaged. The same holds for a file that lists one seed twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metabench.harness.config import hashed_view, recipe_hash
from metabench.harness.errors import MetabenchError
from metabench.harness.results.records import PLAIN_METRICS

logger = logging.getLogger(__name__)

FORMAT = "metabench-baseline/1"
"""The ``format`` string of the files this module writes and reads."""

METRICS = PLAIN_METRICS
"""Per-episode metrics a setting can hold: the plain ones of :class:`metabench.harness.results.records.Evaluation`
(``"accuracy"``, ``"mse"``, ``"return"``)."""


class BaselineError(MetabenchError, ValueError):
    """A baseline that cannot be written or read: the message names the file, key or run and the fix."""


@dataclasses.dataclass(frozen=True)
class SettingResults:
    """Per-episode results of one evaluation setting (one episode fingerprint), over one or more runs.

    Attributes:
        dataset: registered dataset name.
        split: the split the episodes come from, e.g. ``"test"``.
        ways: classes per episode (``None`` for regression).
        shots: support examples per class (regression: support points per task).
        queries: query examples per class (regression: query points per task).
        fingerprint: sha256 hex of the evaluation episode set; results pair only when equal.
        metric: ``"accuracy"`` (fraction in [0, 1]; higher is better), ``"mse"`` (lower is better) or
            ``"return"`` (mean return of reinforcement-learning rollouts; higher is better).
        headline_steps: the inner-step count the run reports as its result.
        values: inner-step count -> float64 array ``[runs, episodes]``; row ``r`` is run ``r`` (one
            row per seed) and column ``i`` the same episode ``i`` in every row and every step
            count. NaN where a run recorded a non-finite metric.
    """

    dataset: str
    split: str
    ways: int | None
    shots: int
    queries: int
    fingerprint: str
    metric: str
    headline_steps: int
    values: dict[int, np.ndarray]

    @property
    def episodes(self) -> int:
        """Number of episodes ``n``."""
        return int(next(iter(self.values.values())).shape[1])

    @property
    def runs(self) -> int:
        """Number of runs (rows of each ``values`` array)."""
        return int(next(iter(self.values.values())).shape[0])

    @property
    def key(self) -> tuple:
        """``(dataset, split, ways, shots, queries, metric)``: what must match for two results to be paired."""
        return (self.dataset, self.split, self.ways, self.shots, self.queries, self.metric)

    def describe(self) -> str:
        """E.g. ``"sinusoid test 5-shot (100 queries)"`` or ``"omniglot test 5-way 1-shot (15 queries per class)"``."""
        if self.ways is None:
            return f"{self.dataset} {self.split} {self.shots}-shot ({self.queries} queries)"
        return f"{self.dataset} {self.split} {self.ways}-way {self.shots}-shot ({self.queries} queries per class)"

    def episode_values(self, steps: int, rows: Sequence[int] | None = None) -> np.ndarray:
        """Per-episode values after ``steps`` inner steps, averaged over the runs: float64 ``[episodes]``.

        Averaging is possible because every run covers the same episodes; an episode that is NaN
        in any run is NaN here. Each run is one seed, so this is the per-seed average.

        Args:
            steps: the inner-step count.
            rows: the runs (rows of ``values``) to average, e.g. those of the seeds both sides of a
                check share; default: all.

        Raises:
            BaselineError: ``steps`` was not recorded.
        """
        return self.seed_values(steps, rows).mean(axis=0)

    def seed_values(self, steps: int, rows: Sequence[int] | None = None) -> np.ndarray:
        """The ``[runs, episodes]`` values after ``steps`` inner steps (only ``rows``, in that order, when given).

        Raises:
            BaselineError: ``steps`` was not recorded.
        """
        if steps not in self.values:
            raise BaselineError(
                f"Received inner_steps={steps}, but the {self.describe()} results were recorded at inner "
                f"steps {sorted(self.values)}. Pick one of those."
            )
        values = self.values[steps]
        return values if rows is None else values[list(rows)]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """Where one run of a baseline (or of a candidate) came from.

    Attributes:
        run_id: the run's id in the results store it was read from.
        seed: its training seed.
        config_hash: sha256 of its resolved config.
        git_commit: the metabench commit it ran (``+dirty`` with local changes), or ``None``.
        device: e.g. ``"CPU"``.
        created_at: ISO-8601 UTC time the run started.
        versions: library -> version.
    """

    run_id: str
    seed: int
    config_hash: str
    git_commit: str | None
    device: str
    created_at: str
    versions: dict


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Per-episode results of one or more seeds of one recipe (configs equal but for the seed).

    The file format is in the module docstring. The same class holds a candidate read from a
    store, so a baseline and a candidate are compared field for field, seed by seed.

    Attributes:
        algorithm: registered algorithm name.
        dataset: registered dataset name.
        backend: ``"tensorflow"`` or ``"jax"``.
        config: the first run's resolved config.
        config_hash: sha256 of ``config``.
        versions: library -> version of the first run.
        runs: one :class:`RunRecord` per seed (seeds distinct), in the order of the ``values`` rows.
        settings: one :class:`SettingResults` per evaluation setting, in the config's order.
        created_at: when the baseline was made (ISO-8601 UTC).
        created_by: ``"metabench <version>"`` that made it.
        source: the file it was read from, or the store, for messages (not written).
        recipe_hash: :func:`metabench.harness.config.recipe_hash` of ``config``; computed from
            ``config`` when not given.
        repeats: one note per run left out because it repeated a seed of an earlier run bit for
            bit, e.g. ``"run B repeats seed 0 of run A bit for bit"`` (not written).

    Example::

        baseline = Baseline.from_store(store, ["20260101-120000-1a2b3c4d"])
        baseline.save("tests/baselines/maml_sinusoid.json")
        again = Baseline.load("tests/baselines/maml_sinusoid.json")
        again.settings[0].episode_values(1)  # float64 [episodes]
    """

    algorithm: str
    dataset: str
    backend: str
    config: dict
    config_hash: str
    versions: dict
    runs: tuple[RunRecord, ...]
    settings: tuple[SettingResults, ...]
    created_at: str = ""
    created_by: str = ""
    source: str = ""
    recipe_hash: str = ""
    repeats: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.recipe_hash:
            object.__setattr__(self, "recipe_hash", recipe_hash(self.config))

    @property
    def deterministic(self) -> bool:
        """Whether the runs had ``engine.deterministic = true`` (bit-for-bit repeatable on CPU)."""
        return bool(self.config.get("engine", {}).get("deterministic", False))

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    @property
    def seeds(self) -> list[int]:
        """The training seeds, one per run (row of ``values``), in that order."""
        return [run.seed for run in self.runs]

    # ------------------------------------------------------------------ from a results store

    @classmethod
    def from_store(cls, store, run_ids: Sequence[str]) -> Baseline:
        """The per-episode results of ``run_ids`` (completed runs of one recipe: configs equal but for the seed).

        Repeated runs of one seed count once when their results agree bit for bit (the others
        are noted in ``repeats``).

        Args:
            store: an open :class:`metabench.harness.results.store.ResultsStore`.
            run_ids: one or more run ids in ``store``.

        Raises:
            BaselineError: no run ids, an id not in the store, a run that is not completed, runs
                of different recipes (configs that differ in more than the seed; the message lists
                the keys), runs evaluated on different episodes, or repeats of one seed whose
                results differ (a determinism failure).
        """
        run_ids = list(dict.fromkeys(run_ids))
        if not run_ids:
            raise BaselineError("Received no run ids; pass one or more ids of completed runs (see `metabench report`).")
        runs = store.runs()
        known = {row.run_id: row for row in runs.itertuples(index=False)}
        rows = []
        for run_id in run_ids:
            row = known.get(run_id)
            if row is None:
                latest = [r.run_id for r in known.values() if r.status == "completed"][-3:]
                hint = f" Its latest completed runs: {', '.join(latest)}." if latest else " It has no completed runs."
                raise BaselineError(
                    f"Received run id {run_id!r}, but {store.path} has no such run.{hint} Pass the id of a completed "
                    "run in this store, or --store the store that holds it."
                )
            if row.status != "completed":
                reason = f" ({row.message})" if isinstance(row.message, str) and row.message else ""
                raise BaselineError(
                    f"Run {run_id} in {store.path} has status {row.status!r}{reason}; only completed runs have results "
                    "to compare. Use a completed run, or rerun the config."
                )
            rows.append(row)
        first = rows[0]
        recipe = recipe_hash(first.config)
        for row in rows[1:]:
            if recipe_hash(row.config) != recipe:
                differences = config_differences(first.config, row.config, ignore=("seed",)) or ["(no key differs as shown)"]
                raise BaselineError(
                    f"Runs {first.run_id} and {row.run_id} are different recipes (recipe {recipe[:12]} vs "
                    f"{recipe_hash(row.config)[:12]}: {'; '.join(differences)}); runs combine only as seeds of one recipe "
                    "(configs that differ only in the seed). Pass runs of one recipe, or save separate baselines."
                )
            if row.versions != first.versions:
                logger.warning("Runs %s and %s ran with different library versions: %s vs %s.", first.run_id, row.run_id, first.versions, row.versions)
        frame = store.episode_metrics(completed_only=True)
        frame = frame[frame["run_id"].isin(run_ids)]
        per_run = {run_id: _settings_of(frame[frame["run_id"] == run_id], run_id) for run_id in run_ids}
        reference = per_run[first.run_id]
        for run_id, settings in per_run.items():
            ours = {s.fingerprint: s for s in settings}
            theirs = {s.fingerprint: s for s in reference}
            if set(ours) != set(theirs):
                raise BaselineError(
                    f"Runs {first.run_id} and {run_id} were evaluated on different episodes (fingerprints "
                    f"{sorted(f[:12] for f in theirs)} vs {sorted(f[:12] for f in ours)}); only runs on identical episodes combine."
                )
        settings = []
        for setting in reference:
            rows_by_steps = {}
            for steps in setting.values:
                stacked = []
                for run_id in run_ids:
                    match = next(s for s in per_run[run_id] if s.fingerprint == setting.fingerprint)
                    if steps not in match.values:
                        raise BaselineError(f"Run {run_id} has no {setting.metric} at {steps} inner steps for {setting.describe()}.")
                    stacked.append(match.values[steps][0])
                rows_by_steps[steps] = np.stack(stacked)
            settings.append(dataclasses.replace(setting, values=rows_by_steps))
        records = tuple(
            RunRecord(row.run_id, int(row.seed), row.config_hash, row.git_commit if isinstance(row.git_commit, str) else None,
                      str(row.device), str(row.created_at), dict(row.versions or {}))
            for row in rows
        )  # fmt: skip
        records, settings, repeats = _one_row_per_seed(records, tuple(settings), f"{store.path}")
        return cls(
            algorithm=first.algorithm,
            dataset=first.dataset,
            backend=first.backend,
            config=first.config,
            config_hash=first.config_hash,
            versions=dict(first.versions or {}),
            runs=records,
            settings=settings,
            created_at=_now(),
            created_by=f"metabench {_metabench_version()}",
            source=f"{store.path} run(s) {', '.join(run_ids)}",
            recipe_hash=recipe,
            repeats=repeats,
        )

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        """The JSON object of the file (NaN values as ``None``)."""
        return {
            "format": FORMAT,
            "created_at": self.created_at or _now(),
            "created_by": self.created_by or f"metabench {_metabench_version()}",
            "algorithm": self.algorithm,
            "dataset": self.dataset,
            "backend": self.backend,
            "deterministic": self.deterministic,
            "config_hash": self.config_hash,
            "recipe_hash": self.recipe_hash,
            "versions": self.versions,
            "runs": [dataclasses.asdict(run) for run in self.runs],
            "config": self.config,
            "settings": [
                {
                    "dataset": s.dataset,
                    "split": s.split,
                    "ways": s.ways,
                    "shots": s.shots,
                    "queries": s.queries,
                    "fingerprint": s.fingerprint,
                    "metric": s.metric,
                    "headline_steps": s.headline_steps,
                    "episodes": s.episodes,
                    "mean": {str(k): _finite_or_none(float(np.mean(v))) for k, v in sorted(s.values.items())},
                    "values": {str(k): [[_finite_or_none(x) for x in row.tolist()] for row in v] for k, v in sorted(s.values.items())},
                }
                for s in self.settings
            ],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the baseline as JSON to ``path`` (folders are created); returns the path.

        Raises:
            BaselineError: the file cannot be written.
        """
        path = Path(path)
        text = _dumps(self.to_dict()) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            raise BaselineError(f"Cannot write baseline {path}: {error}. Pass --out a path in a writable folder.") from error
        logger.info("Wrote baseline %s (%d setting(s), %d run(s)).", path, len(self.settings), len(self.runs))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        """Read and validate a baseline file.

        ``recipe_hash`` is computed from the file's config (files written before it was recorded
        lack it); repeated seeds count once, as in :meth:`from_store`.

        Raises:
            BaselineError: the file is missing or not JSON, its ``format`` is not :data:`FORMAT`,
                a key is missing or malformed (the message names the key), or it lists one seed
                twice with different results.
        """
        path = Path(path)
        if not path.is_file():
            what = "a folder" if path.is_dir() else "no such file"
            raise BaselineError(
                f"Cannot read baseline {str(path)!r}: {what}. Pass the JSON file written by "
                "`metabench baseline save RUN_ID --out FILE`."
            )
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BaselineError(f"Cannot read baseline {path}: {error}. Is it a file written by `metabench baseline save`?") from error
        return cls.from_dict(payload, source=str(path))

    @classmethod
    def from_dict(cls, payload: dict, source: str = "baseline") -> Baseline:
        """A baseline from its JSON object (see :meth:`load`)."""
        if not isinstance(payload, dict):
            raise BaselineError(f"{source} holds a JSON {type(payload).__name__}, not a baseline object.")
        fmt = payload.get("format")
        if fmt != FORMAT:
            if isinstance(fmt, str) and fmt.startswith("metabench-baseline/"):
                raise BaselineError(
                    f"{source} has format {fmt!r}, but this metabench reads {FORMAT!r}. Upgrade metabench, or "
                    "save the baseline again with this version."
                )
            raise BaselineError(f"{source} is not a metabench baseline (format {fmt!r}, expected {FORMAT!r}).")
        get = _Getter(payload, source)
        config = get("config", dict)
        runs = tuple(
            RunRecord(
                run_id=_Getter(r, f"{source} runs[{i}]")("run_id", str),
                seed=_Getter(r, f"{source} runs[{i}]")("seed", int),
                config_hash=_Getter(r, f"{source} runs[{i}]")("config_hash", str),
                git_commit=r.get("git_commit"),
                device=str(r.get("device", "")),
                created_at=str(r.get("created_at", "")),
                versions=dict(r.get("versions") or {}),
            )
            for i, r in enumerate(get("runs", list))
        )
        if not runs:
            raise BaselineError(f"{source}: 'runs' is empty; a baseline holds at least one run.")
        settings = tuple(_setting_from_dict(s, f"{source} settings[{i}]", len(runs)) for i, s in enumerate(get("settings", list)))
        if not settings:
            raise BaselineError(f"{source}: 'settings' is empty; a baseline holds at least one evaluation setting.")
        recipe = recipe_hash(config)
        recorded = payload.get("recipe_hash")
        if recorded is not None and recorded != recipe:
            logger.warning("%s records recipe hash %s, but its config hashes to %s with this metabench; using %s.",
                           source, str(recorded)[:12], recipe[:12], recipe[:12])  # fmt: skip
        runs, settings, repeats = _one_row_per_seed(runs, settings, source)
        return cls(
            algorithm=get("algorithm", str),
            dataset=get("dataset", str),
            backend=get("backend", str),
            config=config,
            config_hash=get("config_hash", str),
            versions=get("versions", dict),
            runs=runs,
            settings=settings,
            created_at=str(payload.get("created_at", "")),
            created_by=str(payload.get("created_by", "")),
            source=source,
            recipe_hash=recipe,
            repeats=repeats,
        )


def config_differences(a: dict, b: dict, *, ignore: Sequence[str] = ()) -> list[str]:
    """The keys where two (resolved) configs differ, as ``"table.key: A -> B"`` strings, sorted.

    Args:
        a, b: configs (nested dicts of TOML values).
        ignore: dotted keys to leave out, e.g. ``("seed", "train.log_every")``.

    Example::

        >>> config_differences({"seed": 0, "algorithm": {"inner_lr": 0.01}}, {"seed": 1, "algorithm": {"inner_lr": 1e-4}}, ignore=["seed"])
        ['algorithm.inner_lr: 0.01 -> 0.0001']
    """
    # Compare what decides the results: display-only keys and options at their neutral value drop out.
    flat_a, flat_b = _flatten(hashed_view(a)), _flatten(hashed_view(b))
    out = []
    missing = object()
    for key in sorted(set(flat_a) | set(flat_b)):
        if key in ignore:
            continue
        left, right = flat_a.get(key, missing), flat_b.get(key, missing)
        if left != right:
            shown = ["(unset)" if v is missing else json.dumps(v) for v in (left, right)]
            out.append(f"{key}: {shown[0]} -> {shown[1]}")
    return out


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _one_row_per_seed(
    runs: tuple[RunRecord, ...], settings: tuple[SettingResults, ...], where: str
) -> tuple[tuple[RunRecord, ...], tuple[SettingResults, ...], tuple[str, ...]]:
    """Keep the first run of each seed; a later run of that seed must repeat it bit for bit.

    Returns the kept runs, the settings with only their rows, and one note per dropped repeat.

    Raises:
        BaselineError: two runs of one seed whose per-episode values differ (a determinism failure).
    """
    first_of: dict[int, int] = {}
    keep, repeats = [], []
    for index, run in enumerate(runs):
        if run.seed not in first_of:
            first_of[run.seed] = index
            keep.append(index)
            continue
        original = runs[first_of[run.seed]]
        for setting in settings:
            for steps, values in setting.values.items():
                a, b = values[first_of[run.seed]], values[index]
                if np.array_equal(a, b, equal_nan=True):
                    continue
                differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
                with np.errstate(invalid="ignore"):
                    gaps = np.abs(a - b)[differ]
                largest = float(np.nanmax(gaps)) if (~np.isnan(gaps)).any() else math.nan
                raise BaselineError(
                    f"Runs {original.run_id} and {run.run_id} ({where}) both ran seed {run.seed}, but their results differ: "
                    f"{setting.describe()}, {setting.metric} after {steps} inner step(s) differs on {int(differ.sum())} of "
                    f"{a.size} episodes (largest difference {largest:.3g}). That is a determinism failure: repeats of one "
                    "seed count once and must agree bit for bit; they are never averaged. Pass one run per seed, or find "
                    "what is not deterministic (set engine.deterministic = true; same machine type and library versions)."
                )
        repeats.append(f"run {run.run_id} repeats seed {run.seed} of run {original.run_id} bit for bit")
    if not repeats:
        return runs, settings, ()
    for note in repeats:
        logger.info("%s: %s; counted once.", where, note)
    kept = tuple(dataclasses.replace(s, values={k: v[keep] for k, v in s.values.items()}) for s in settings)
    return tuple(runs[i] for i in keep), kept, tuple(repeats)


def _settings_of(frame, run_id: str) -> list[SettingResults]:
    """One SettingResults (one row of values) per evaluation of one run's ``episode_metrics`` rows."""
    settings = []
    for _, group in frame.groupby("eval_id", sort=True):
        first = group.iloc[0]
        values = {}
        for steps, by_steps in group.groupby("inner_steps", sort=True):
            ordered = by_steps.sort_values("episode")
            if ordered["episode"].tolist() != list(range(len(ordered))):
                raise BaselineError(f"Run {run_id}: the episodes of fingerprint {first['fingerprint'][:12]} are not numbered 0..n-1.")
            values[int(steps)] = ordered["value"].to_numpy(dtype=np.float64)[np.newaxis, :]
        ways = first["ways"]
        settings.append(
            SettingResults(
                dataset=str(first["dataset"]),
                split=str(first["split"]),
                ways=None if pd.isna(ways) else int(ways),
                shots=int(first["shots"]),
                queries=int(first["queries"]),
                fingerprint=str(first["fingerprint"]),
                metric=str(first["metric"]),
                headline_steps=int(first["headline_steps"]),
                values=values,
            )
        )
    if not settings:
        raise BaselineError(f"Run {run_id} has no per-episode results; was it evaluated?")
    return settings


_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def _setting_from_dict(item, where: str, num_runs: int) -> SettingResults:
    if not isinstance(item, dict):
        raise BaselineError(f"{where} is a {type(item).__name__}; expected an object.")
    get = _Getter(item, where)
    fingerprint = get("fingerprint", str)
    if not _FINGERPRINT.match(fingerprint):
        raise BaselineError(f"{where}.fingerprint is {fingerprint!r}; expected 64 lowercase hex digits (sha256).")
    metric = get("metric", str)
    if metric not in METRICS:
        raise BaselineError(f"{where}.metric is {metric!r}; expected one of {list(METRICS)}.")
    ways = item.get("ways")
    if ways is not None and (isinstance(ways, bool) or not isinstance(ways, int)):
        raise BaselineError(f"{where}.ways is {ways!r}; expected an integer or null (regression).")
    raw_values = get("values", dict)
    if not raw_values:
        raise BaselineError(f"{where}.values is empty; expected inner steps -> [[per-episode values] per run].")
    values = {}
    for key, rows in raw_values.items():
        try:
            steps = int(key)
        except ValueError:
            raise BaselineError(f"{where}.values has key {key!r}; keys are inner-step counts like \"1\".") from None
        try:
            array = np.array([[math.nan if x is None else x for x in row] for row in rows], dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise BaselineError(f"{where}.values[{key!r}] is not a list of lists of numbers ({error}).") from error
        if array.ndim != 2 or array.shape[0] != num_runs or array.shape[1] == 0:
            raise BaselineError(
                f"{where}.values[{key!r}] has shape {array.shape}; expected [{num_runs} runs, episodes] (one list of "
                "per-episode values per run)."
            )
        values[steps] = array
    lengths = {v.shape[1] for v in values.values()}
    if len(lengths) != 1:
        raise BaselineError(f"{where}.values covers different numbers of episodes per inner-step count: {sorted(lengths)}.")
    episodes = item.get("episodes")
    if episodes is not None and episodes != lengths.pop():
        raise BaselineError(f"{where}.episodes is {episodes}, but its values hold {next(iter(values.values())).shape[1]} episodes.")
    headline = get("headline_steps", int)
    if headline not in values:
        raise BaselineError(f"{where}.headline_steps is {headline}, but values were recorded at inner steps {sorted(values)}.")
    return SettingResults(
        dataset=get("dataset", str),
        split=get("split", str),
        ways=ways,
        shots=get("shots", int),
        queries=get("queries", int),
        fingerprint=fingerprint,
        metric=metric,
        headline_steps=headline,
        values=dict(sorted(values.items())),
    )


class _Getter:
    """``get(key, type)``: ``obj[key]`` checked for presence and type, else BaselineError naming the key."""

    def __init__(self, obj: dict, where: str):
        self.obj, self.where = obj, where

    def __call__(self, key: str, kind: type):
        if not isinstance(self.obj, dict) or key not in self.obj:
            raise BaselineError(f"{self.where} has no {key!r}; the file is incomplete (save the baseline again).")
        value = self.obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BaselineError(f"{self.where}.{key} is {value!r} ({type(value).__name__}); expected type {kind.__name__}.")
        return value


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _dumps(value, indent: int = 0) -> str:
    """JSON with two-space indentation, but lists of scalars on one line (one line per run's values)."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value, allow_nan=False)
        items = [f"{inner}{_dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _metabench_version() -> str:
    try:
        return importlib.metadata.version("metabench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
