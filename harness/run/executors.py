"""Running planned runs (a sweep's, a paper table's): skip what is done, execute the rest, record each outcome.

A run whose config hash already has a ``completed`` result in the store is skipped, so re-running
a sweep after a crash finishes exactly what is missing, and a run the crash interrupted continues
from its checkpoint (``<store folder>/checkpoints/sweep-<hash>/``, every ``train.checkpoint_every``
iterations). Runs execute in this process, in a local process pool or on Ray; workers compute, and
only the driver writes the store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import traceback
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metabench.harness.engines import get_engine, select_backend
from metabench.harness.run.core import checkpoint_folder, train_and_evaluate
from metabench.harness.run.prepare import prepare
from metabench.harness.run.provenance import library_versions, run_details, run_info
from metabench.harness.run.session import open_session
from metabench.harness.run.sweep import PlannedRun, SweepError

logger = logging.getLogger(__name__)


EXECUTORS = ("local", "ray")


@dataclasses.dataclass
class RunOutcome:
    """What a worker hands back to the driver: the records to store, or the error it met."""

    planned: PlannedRun
    info: object = None
    evaluations: list = None
    curve: list = None
    timings: dict = None
    error: str | None = None
    events: list = dataclasses.field(default_factory=list)


def completed_hashes(store) -> set[str]:
    """Config hashes that already have a completed result in ``store``."""
    runs = store.runs(status="completed")
    return set(runs["config_hash"]) if len(runs) else set()


def execute(planned: PlannedRun, data_dir=None, cache_dir=None, show_progress: bool = False, checkpoint_root=None) -> RunOutcome:
    """Train and evaluate one planned run with the run core, without touching any store (a worker's job).

    The core (:func:`metabench.harness.run.core.train_and_evaluate`) is the one ``metabench run``
    uses, so the stored result is the same whichever path ran the config. With
    ``checkpoint_root``, checkpoints go to ``<checkpoint_root>/sweep-<hash>/`` and a run that a
    killed sweep left there continues from its newest checkpoint.
    """
    config = planned.config
    events: list[dict] = []
    try:
        select_backend(config["backend"])
        prepared = prepare(config, data_dir, cache_dir)
        engine = get_engine(config["backend"], **config["engine"])
        with contextlib.ExitStack() as held:
            folder, saved, label = None, None, f"sweep-{planned.config_hash[:16]}"
            if checkpoint_root is not None:
                folder = checkpoint_folder(Path(checkpoint_root) / label, config)
                folder.acquire(label)
                held.callback(folder.release)
                saved = folder.latest(config_hash=planned.config_hash)
                if saved:
                    logger.info("Resuming %s from meta-iteration %d (%s).", label, saved.state.iteration, folder.path)
            session, state, rebuild = open_session(config, prepared, engine, saved)
            result = train_and_evaluate(
                session, state, config, prepared, rebuild=rebuild, folder=folder, run_id=label,
                digest=planned.config_hash, show_progress=show_progress, events=events,
            )
        info = run_info(config, planned.config_hash, run_details(engine, config))
        if folder is not None and not config["train"]["keep_checkpoints"]:
            folder.remove()
        return RunOutcome(planned, info, result.evaluations, result.curve, result.timings, events=events)
    except Exception as error:  # reported to the driver, which records the run as failed
        return RunOutcome(planned, error=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=5)}", events=events)


def record(store, outcome: RunOutcome) -> str:
    """Write a worker's outcome to the store (driver side); returns the run id."""
    if outcome.error is None:
        run_id = store.start_run(outcome.info)
        store.complete_run(run_id, outcome.evaluations, outcome.curve, outcome.timings, events=outcome.events)
        return run_id
    config = outcome.planned.config
    details = {"device": "unknown (the worker failed)", "versions": library_versions(), "git_commit": None}
    info = run_info(config, outcome.planned.config_hash, details)
    run_id = store.start_run(info)
    store.fail_run(run_id, "failed", outcome.error, events=outcome.events)
    return run_id


def run_sweep(runs: list[PlannedRun], store, *, executor: str = "local", workers: int = 1, data_dir=None,
              cache_dir=None, ray_address: str | None = None, retries: int = 2, show_progress: bool = True,
              num_gpus: float = 0.0) -> dict:
    """Run every planned run that has no completed result yet; returns counts by outcome."""
    if executor not in EXECUTORS:
        raise SweepError(f"Received executor={executor!r}; expected one of {list(EXECUTORS)}.")
    if workers < 1:
        raise SweepError(f"Received workers={workers}; expected at least 1.")
    done = completed_hashes(store)
    pending = [run for run in runs if run.config_hash not in done]
    checkpoint_root = str(Path(store.path).parent / "checkpoints")
    counts = {"skipped": len(runs) - len(pending), "completed": 0, "failed": 0}
    if not pending:
        logger.info("All %d runs of the sweep already have completed results; nothing to run.", len(runs))
        return counts
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), disable=not show_progress) as progress:
        bar = progress.add_task("sweep", total=len(pending), last="")

        def on_outcome(outcome: RunOutcome) -> None:
            record(store, outcome)
            status = "completed" if outcome.error is None else "failed"
            counts[status] += 1
            if outcome.error:
                logger.warning("Run %s failed: %s", outcome.planned.label, outcome.error.splitlines()[0])
            progress.update(bar, advance=1, last=f"{outcome.planned.label}: {status}")

        if executor == "ray":
            _run_ray(pending, on_outcome, data_dir, cache_dir, ray_address, retries, workers, num_gpus, checkpoint_root)
        elif workers == 1:
            for planned in pending:
                on_outcome(execute(planned, data_dir, cache_dir, False, checkpoint_root))
        else:
            _run_pool(pending, on_outcome, workers, data_dir, cache_dir, checkpoint_root)
    return counts


def _run_pool(pending, on_outcome, workers, data_dir, cache_dir, checkpoint_root) -> None:
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(execute, planned, data_dir, cache_dir, False, checkpoint_root) for planned in pending]
        for future in concurrent.futures.as_completed(futures):
            on_outcome(future.result())


def _run_ray(pending, on_outcome, data_dir, cache_dir, address, retries, workers, num_gpus, checkpoint_root) -> None:
    try:
        import ray  # deferred: an optional dependency (pip install -e ".[ray]"), and a heavy one
    except ImportError as error:
        raise SweepError('The Ray executor needs Ray: pip install -e ".[ray]" (or pip install ray).') from error
    backends = {planned.config["backend"] for planned in pending}
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if len(backends) == 1:
        env["KERAS_BACKEND"] = backends.pop()
    started_here = not ray.is_initialized()
    # ray.init installs its own SIGINT/SIGTERM handlers in the driver; put ours back after shutdown.
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    if started_here:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(num_cpus=workers if workers > 1 else os.cpu_count(), runtime_env={"env_vars": env},
                     include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=retries, retry_exceptions=True)(_execute_or_raise)
        waiting = {remote.remote(planned, data_dir, cache_dir, checkpoint_root): planned for planned in pending}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for reference in ready:
                planned = waiting.pop(reference)
                try:
                    on_outcome(ray.get(reference))
                except Exception as error:  # retries exhausted: record the worker's error
                    on_outcome(RunOutcome(planned, error=f"{type(error).__name__}: {error}"))
    finally:
        if started_here:
            ray.shutdown()
            for number, handler in handlers.items():
                signal.signal(number, handler)


def _execute_or_raise(planned, data_dir, cache_dir, checkpoint_root) -> RunOutcome:
    # Ray retries a task only when it raises; a failed run is raised so it gets its retries.
    # (On a cluster the checkpoint root must be a shared folder for a retry to continue a run.)
    outcome = execute(planned, data_dir, cache_dir, False, checkpoint_root)
    if outcome.error is not None:
        raise RuntimeError(outcome.error)
    return outcome
