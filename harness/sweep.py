"""Sweeps: a grid of algorithms x settings x seeds, expanded into resolved configs and run once each.

A sweep file names a base config and what to vary::

    base = "quickstart"                 # a config file (relative to the sweep file) or a shipped name
    seeds = [0, 1, 2]

    [set]                               # overrides for every run
    "train.meta_iterations" = 2000

    [axes]                              # each key takes every listed value (cartesian product)
    "evaluation.episodes" = [300, 600]

    [algorithms.maml]                   # one [algorithm] table per entry, replacing the base's
    name = "maml"
    inner_lr = 0.01

    [algorithms.multitask]
    name = "multitask"
    finetune_lr = 0.001
    set = { "evaluation.inner_steps" = [0, 10, 100], "evaluation.headline_steps" = 100 }

Each run is identified by the hash of its resolved config; a run whose hash already has a
``completed`` result in the store is skipped, so re-running a sweep after a crash finishes exactly
what is missing, and a run the crash interrupted continues from its checkpoint
(``<store folder>/checkpoints/sweep-<hash>/``, every ``train.checkpoint_every`` iterations).
Workers compute; only the driver writes the store.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import signal
import time
import tomllib
import traceback
from pathlib import Path

from metabench.harness.config import ConfigError, apply_override, config_hash, read_raw_config, resolve_config
from metabench.harness.errors import MetabenchError

logger = logging.getLogger(__name__)

SWEEP_KEYS = {"base", "seeds", "set", "axes", "algorithms", "name"}
EXECUTORS = ("local", "ray")


class SweepError(MetabenchError, ValueError):
    """A sweep file that cannot be expanded: unknown keys, a missing base, bad axes."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its label, resolved config and config hash."""

    label: str
    config: dict
    config_hash: str


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


SHIPPED_SWEEPS = "metabench.harness.sweeps"


def shipped_sweeps() -> list[str]:
    """Names of the sweeps that ship with metabench (``metabench sweep NAME``)."""
    from importlib import resources

    return sorted(item.name[:-5] for item in resources.files(SHIPPED_SWEEPS).iterdir() if item.name.endswith(".toml"))


def load_sweep(path: str | os.PathLike) -> list[PlannedRun]:
    """Expand a sweep file (or a shipped sweep's name) into its runs (validated configs), in a stable order."""
    if not Path(path).exists() and str(path) in shipped_sweeps():
        from importlib import resources

        path = resources.files(SHIPPED_SWEEPS).joinpath(f"{path}.toml")
    path = Path(path)
    try:
        sweep = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise SweepError(f"No sweep file {str(path)!r}; shipped sweeps: {shipped_sweeps()}.") from error
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"Malformed TOML in sweep file {str(path)!r}: {error}.") from error
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"Unknown key {unknown[0]!r} in sweep file {str(path)!r}; allowed keys: {sorted(SWEEP_KEYS)}.")
    if "base" not in sweep:
        raise SweepError(f"Sweep file {str(path)!r} has no `base`; name a config file or a shipped config.")
    base = str(sweep["base"])
    local = path.parent / base
    base_raw, origin = read_raw_config(str(local) if local.is_file() else base)
    seeds = sweep.get("seeds", [base_raw.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"Received seeds={seeds!r} in {str(path)!r}; expected a non-empty list of integers.")
    fixed = sweep.get("set", {})
    axes = sweep.get("axes", {})
    for name, table in (("set", fixed), ("axes", axes)):
        if not isinstance(table, dict):
            raise SweepError(f"[{name}] in {str(path)!r} must be a table of 'table.key' = value entries.")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"Axis {key!r} in {str(path)!r} must list at least one value; received {values!r}.")
    if "backend" in axes:
        raise SweepError(f"{str(path)!r} varies `backend` as an axis; run one sweep per backend (Keras picks one per process).")
    from metabench.harness.engines import select_backend

    select_backend(str(fixed.get("backend", base_raw.get("backend", "tensorflow"))))  # before configs import Keras
    algorithms = sweep.get("algorithms") or {"base": None}
    runs = []
    for algorithm_label, algorithm in algorithms.items():
        per_algorithm = {}
        if algorithm is not None:
            algorithm = dict(algorithm)
            per_algorithm = algorithm.pop("set", {})
        for combination in itertools.product(*axes.values()) if axes else [()]:
            for seed in seeds:
                raw = copy.deepcopy(base_raw)
                if algorithm is not None:
                    raw["algorithm"] = copy.deepcopy(algorithm)
                overrides = {**fixed, **per_algorithm, **dict(zip(axes, combination)), "seed": seed}
                for key, value in overrides.items():
                    _set(raw, key, value)
                where = f"{origin} in sweep {str(path)!r} ({algorithm_label}, seed {seed})"
                try:
                    config = resolve_config(raw, where)
                except ConfigError as error:
                    raise SweepError(f"Run {algorithm_label}, seed {seed} of {str(path)!r} is invalid: {error}") from error
                axis_text = "".join(f", {k}={v}" for k, v in zip(axes, combination))
                runs.append(PlannedRun(f"{algorithm_label}{axis_text}, seed {seed}", config, config_hash(config)))
    hashes = [run.config_hash for run in runs]
    if len(set(hashes)) != len(hashes):
        raise SweepError(f"Sweep {str(path)!r} expands to identical configs more than once; remove the duplicate entries.")
    return runs


def _set(raw: dict, key: str, value) -> None:
    # The value is already TOML-typed, so set it directly rather than re-parsing text.
    parts = key.split(".")
    if len(parts) == 1:
        raw[key] = value
    elif len(parts) == 2:
        raw.setdefault(parts[0], {})[parts[1]] = value
    else:
        apply_override(raw, f"{key}={value}")  # raises the usual "table.key" error


def completed_hashes(store) -> set[str]:
    """Config hashes that already have a completed result in ``store``."""
    runs = store.runs(status="completed")
    return set(runs["config_hash"]) if len(runs) else set()


def execute(planned: PlannedRun, data_dir=None, cache_dir=None, show_progress: bool = False, checkpoint_root=None) -> RunOutcome:
    """Train and evaluate one planned run with the run core, without touching any store (a worker's job).

    The core (:func:`metabench.harness.runner.train_and_evaluate`) is the one ``metabench run``
    uses, so the stored result is the same whichever path ran the config. With
    ``checkpoint_root``, checkpoints go to ``<checkpoint_root>/sweep-<hash>/`` and a run that a
    killed sweep left there continues from its newest checkpoint.
    """
    from metabench.harness import runner
    from metabench.harness.engines import get_engine, select_backend

    config = planned.config
    events: list[dict] = []
    try:
        select_backend(config["backend"])
        prepared = runner.prepare(config, data_dir, cache_dir)
        engine = get_engine(config["backend"], **config["engine"])
        with contextlib.ExitStack() as held:
            folder, saved, label = None, None, f"sweep-{planned.config_hash[:16]}"
            if checkpoint_root is not None:
                folder = runner.checkpoint_folder(Path(checkpoint_root) / label, config)
                folder.acquire(label)
                held.callback(folder.release)
                saved = folder.latest(config_hash=planned.config_hash)
                if saved:
                    logger.info("Resuming %s from meta-iteration %d (%s).", label, saved.state.iteration, folder.path)
            session, state, rebuild = runner.open_session(config, prepared, engine, saved)
            result = runner.train_and_evaluate(
                session, state, config, prepared, rebuild=rebuild, folder=folder, run_id=label,
                digest=planned.config_hash, show_progress=show_progress, events=events,
            )
        info = runner.run_info(config, planned.config_hash, runner.run_details(engine, config))
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
    from metabench.harness.runner import library_versions, run_info

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(execute, planned, data_dir, cache_dir, False, checkpoint_root) for planned in pending]
        for future in concurrent.futures.as_completed(futures):
            on_outcome(future.result())


def _run_ray(pending, on_outcome, data_dir, cache_dir, address, retries, workers, num_gpus, checkpoint_root) -> None:
    try:
        import ray
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
