"""One run, end to end, in the store: resolved config -> prepared data and session -> the run core -> store.

:func:`run` validates everything it can before it records a run (episode specs against the data,
the model's head against the evaluation ways), then meta-trains with a progress bar, evaluates on
the fixed episode sets and hands the results to the store in one transaction. A run that fails or
is interrupted is recorded with that status and never counts as a result.

Long runs (see ``docs/long-runs.md``): checkpoints are kept in the run's checkpoint folder, and
SIGINT or SIGTERM records the run ``"interrupted"`` after a checkpoint.
``run(..., resume=RUN_ID)`` continues a run that did not complete from its newest intact
checkpoint and completes it in the same store row; with op determinism on, the result is bit for
bit the one of an uninterrupted run on the same machine.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from metabench.harness.analysis.stats import mean_ci95
from metabench.harness.config import ConfigError, config_hash
from metabench.harness.engines import get_engine, select_backend
from metabench.harness.results.store import StoreError, new_run_id
from metabench.harness.run.checkpoint import CheckpointError, CheckpointFolder
from metabench.harness.run.core import StopSignals, checkpoint_folder, train_and_evaluate
from metabench.harness.run.prepare import Prepared, prepare
from metabench.harness.run.provenance import run_details, run_info
from metabench.harness.run.session import open_session

logger = logging.getLogger(__name__)


RESUME_LATEST = "latest"
"""``run(..., resume=RESUME_LATEST)``: continue the newest unfinished run with the same config hash."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What ``metabench run --json`` prints: the headline of the first evaluation setting, and all of them."""

    run_id: str
    metric: str
    mean: float
    ci95: float
    episodes: int
    inner_steps: int
    settings: list

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run(
    config: dict,
    *,
    store,
    data_dir=None,
    cache_dir=None,
    show_progress: bool = True,
    resume: str | None = None,
    checkpoint_dir=None,
    prepared: Prepared | None = None,
) -> RunSummary:
    """Meta-train and evaluate ``config`` (resolved) with the run core, recording the run in ``store``.

    Args:
        config: a resolved config (:func:`metabench.harness.config.load_config`).
        store: the :class:`metabench.harness.results.store.ResultsStore` to record the run in.
        data_dir: folder holding the datasets.
        cache_dir: folder for decoded-dataset caches.
        show_progress: draw a progress bar.
        resume: ``None``: a new run. A run id: continue that run (``"interrupted"``, ``"failed"``,
            or left ``"running"`` by a killed process) from its newest intact checkpoint, or from
            the start when it has none; ``config`` must have the run's config hash.
            :data:`RESUME_LATEST`: continue the newest such run with ``config``'s hash that no
            other process is training, or start a new run when there is none.
        checkpoint_dir: folder of the runs' checkpoint folders (``<checkpoint_dir>/<run_id>/``);
            default: ``checkpoints/`` beside the store (or, on resume, where the run kept them).
        prepared: what :func:`prepare` returned for this ``config``, ``data_dir`` and
            ``cache_dir``, for a caller that already prepared them (default: prepared here).

    Raises:
        ConfigError: ``resume`` names a run of another config.
        StoreError: ``resume`` names no run, or a completed one; or the store refused a write.
        CheckpointError: the run's checkpoint folder is locked by a live process, or its
            checkpoints are all damaged.
        TrainingDiverged: the loss became NaN or infinite (after any retries).
        RunInterrupted: SIGINT or SIGTERM (the run is recorded ``"interrupted"``).
    """
    select_backend(config["backend"])
    digest = config_hash(config)
    root = (Path(checkpoint_dir) if checkpoint_dir is not None else Path(store.path).parent / "checkpoints").absolute()
    target = _resume_target(store, resume, digest, root, explicit_root=checkpoint_dir is not None)
    folder = target[1] if target else None
    try:
        if prepared is None:
            prepared = prepare(config, data_dir, cache_dir)
        engine = get_engine(config["backend"], **config["engine"])
        saved = folder.latest(run_id=target[0], config_hash=digest) if target else None
        session, state, rebuild = open_session(config, prepared, engine, saved)
        details = run_details(engine, config)
        if target:
            run_id = target[0]
            store.resume_run(run_id, from_iteration=state.iteration, checkpoint_dir=folder.path, details=details)  # logs it
        else:
            run_id = new_run_id()
            folder = checkpoint_folder(root / run_id, config)
            folder.acquire(run_id)  # before the run is recorded, so no resumer takes it for a dead one
            try:
                store.start_run(run_info(config, digest, details), run_id=run_id, checkpoint_dir=folder.path)
            except BaseException:
                folder.release()
                folder.remove()
                raise
    except BaseException:
        if folder is not None:
            folder.release()
        raise

    events: list[dict] = []
    stop = StopSignals()
    try:
        with stop:
            result = train_and_evaluate(
                session, state, config, prepared, rebuild=rebuild, folder=folder, run_id=run_id, digest=digest,
                show_progress=show_progress, stop=stop, events=events,
            )
        store.complete_run(run_id, result.evaluations, result.curve, result.timings, events=events)
    except KeyboardInterrupt as error:
        message = str(error) or "interrupted by the user (KeyboardInterrupt)"
        store.fail_run(run_id, "interrupted", f"{message} Resume with `metabench run --resume {run_id}`.", events=events)
        logger.warning("Run %s interrupted; resume it with `metabench run --resume %s`.", run_id, run_id)
        folder.release()
        raise
    except BaseException as error:
        store.fail_run(run_id, "failed", f"{type(error).__name__}: {error}", events=events)
        folder.release()
        if not folder.iterations():  # nothing to resume from: leave no empty folder behind
            folder.remove()
        raise
    folder.release()
    if not config["train"]["keep_checkpoints"]:
        folder.remove()
    return summarize(run_id, result.evaluations, len(prepared.eval_sets[0]))


def summarize(run_id: str, evaluations: list, episodes: int) -> RunSummary:
    """The headline of each evaluation setting (what ``metabench run --json`` prints)."""
    settings = []
    for evaluation in evaluations:
        headline = evaluation.values[evaluation.headline_steps]
        mean, half_width = float("nan"), float("nan")
        if np.all(np.isfinite(headline)):
            ci = mean_ci95(headline)
            mean, half_width = ci.mean, ci.half_width
        else:
            logger.warning(
                "%d of %d episodes have a non-finite %s after %d inner steps (adaptation diverged); the summary shows NaN.",
                int(np.sum(~np.isfinite(headline))), len(headline), evaluation.metric, evaluation.headline_steps,
            )
        settings.append(
            {
                "split": evaluation.split,
                "ways": evaluation.ways,
                "shots": evaluation.shots,
                "queries": evaluation.queries,
                "fingerprint": evaluation.fingerprint,
                "metric": evaluation.metric,
                "inner_steps": evaluation.headline_steps,
                "mean": mean,
                "ci95": half_width,
                "by_inner_steps": {int(s): float(np.mean(v)) for s, v in evaluation.values.items()},
                "ensemble": evaluation.notes.get("ensemble", ""),
            }
        )
    first = settings[0]
    return RunSummary(run_id, evaluations[0].metric, first["mean"], first["ci95"], episodes, first["inner_steps"], settings)


def _resume_target(store, resume: str | None, digest: str, root: Path, *, explicit_root: bool):
    """``(run_id, locked CheckpointFolder)`` of the run to continue, or ``None`` for a new run."""
    if resume is None:
        return None
    if resume == RESUME_LATEST:
        runs = store.runs()
        if len(runs):
            runs = runs[(runs["config_hash"] == digest) & runs["status"].isin(["interrupted", "running"])]
        for row in reversed(runs.to_dict("records") if len(runs) else []):
            folder = _folder_of(row, root, explicit_root)
            try:
                folder.acquire(row["run_id"])
            except CheckpointError:
                continue  # a live process trains it
            return row["run_id"], folder
        logger.info("No unfinished run with this config (hash %s) in %s to resume; starting a new run.", digest[:12], store.path)
        return None
    row = store.get_run(resume)
    if row["status"] == "completed":
        raise StoreError(
            f"Run {resume} already completed; there is nothing to resume. Start a new run (without --resume) "
            "to record another result."
        )
    if row["config_hash"] != digest:
        raise ConfigError(
            f"Received a config with hash {digest[:12]}, but run {resume} was started with config hash "
            f"{row['config_hash'][:12]}. A run resumes only with its own config: give no config and no --set "
            "(`metabench run --resume RUN_ID` uses the stored one), or the same ones as when it started."
        )
    folder = _folder_of(row, root, explicit_root)
    folder.acquire(resume)
    return resume, folder


def _folder_of(row: dict, root: Path, explicit_root: bool) -> CheckpointFolder:
    recorded = row.get("checkpoint_dir")
    if recorded and not explicit_root:
        return CheckpointFolder(recorded)
    return CheckpointFolder(root / row["run_id"])
