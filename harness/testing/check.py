"""The regression gate: obtain a candidate, compare it with a baseline file, answer with an exit code.

``metabench check`` and the pytest fixture ``metabench_check`` both call :func:`check`. It reads a
baseline file (:mod:`metabench.harness.results.baseline_file`), obtains the candidate's per-episode
results (reading completed runs from a store, or meta-training and evaluating a config into a
temporary store), and hands both to :func:`metabench.harness.analysis.comparison.compare`, which
pairs them episode by episode and decides (its docstring states the rule and the exit statuses).

A config candidate is run at every seed of the baseline (each seed's config is the candidate config
with that seed); run candidates must be runs of exactly the baseline's seeds. A config candidate is
checked against the baseline's fingerprints before any training starts.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from metabench.harness.analysis.comparison import (
    DEFAULT_ALPHA,
    DEFAULT_TOLERANCE,
    CheckError,
    CheckResult,
    check_thresholds,
    compare,
    listed_seeds,
    require_same_episodes,
)
from metabench.harness.config import apply_overrides, read_raw_config, resolve_config
from metabench.harness.engines import select_backend
from metabench.harness.results import DEFAULT_STORE
from metabench.harness.results.baseline_file import Baseline, BaselineError
from metabench.harness.results.store import ResultsStore
from metabench.harness.run.lifecycle import run
from metabench.harness.run.prepare import prepare

logger = logging.getLogger(__name__)


def check(
    baseline: Baseline | str | os.PathLike,
    *,
    config: str | os.PathLike | dict | None = None,
    overrides: Sequence[str] = (),
    runs: Sequence[str] | None = None,
    store: str | os.PathLike | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
    equivalence: float | None = None,
    inner_steps: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
) -> CheckResult:
    """Compare a candidate with a baseline on the baseline's episodes.

    The candidate is either completed runs (``runs``, read from ``store``; exactly one per seed of
    the baseline), or a config that is meta-trained and evaluated now at every seed of the
    baseline (``config``: a TOML file, a shipped config name, or a config dict; with
    ``overrides`` like ``["algorithm.inner_lr=0.001"]``; its own ``seed`` is replaced by each
    baseline seed in turn), recorded in ``store`` or, when ``store`` is ``None``, in a temporary
    store deleted afterwards. With neither, the config recorded in the baseline is run again
    (with ``overrides``) at each of its seeds: "does the current code still reproduce this
    baseline?". The Keras backend of the config is selected before the config is resolved, so
    call this before anything imports Keras with another backend.

    Args:
        baseline: a :class:`Baseline` or the path of a baseline file.
        config: the candidate config (see above); exclusive with ``runs``.
        overrides: ``KEY=VALUE`` overrides applied to the candidate config (not ``seed``: the
            seeds are the baseline's).
        runs: ids of completed candidate runs in ``store``, one per baseline seed (a repeat of a
            seed that agrees bit for bit counts once).
        store: results store path; default for ``runs`` is ``reports/results.sqlite``.
        tolerance: largest change that is not a regression or an improvement, in percentage
            points of accuracy, percent of the baseline's mean MSE, or units of return (>= 0).
        alpha: significance level of the one-sided tests, strictly between 0 and 0.5.
        equivalence: margin of the equivalence test (TOST), in the tolerance's unit; ``None``: no
            equivalence test.
        inner_steps: inner-step count to compare; ``None``: each setting's headline count.
        data_dir, cache_dir: as for ``metabench run`` (datasets that read files).
        show_progress: show the candidate's meta-training progress bar.

    Returns:
        CheckResult (its ``exit_code`` is 0 or 1; failures to compare raise).

    Raises:
        CheckError: the episodes, settings, seeds or inner-step counts differ, the store or run
            is missing, or an argument is invalid (exit status 2).
        BaselineError: the baseline file cannot be read, the candidate runs are of several
            recipes, or repeats of one seed differ (a determinism failure).
        ConfigError, EngineError, DatasetError, TrainingDiverged: from the candidate's config or run.
    """
    check_thresholds(tolerance, alpha, equivalence, inner_steps)
    if not isinstance(baseline, Baseline):
        baseline = Baseline.load(baseline)
    if isinstance(runs, str):
        runs = [runs]
    if config is not None and runs:
        raise CheckError("Received both config and runs; the candidate is either a config to run now or completed runs, not both.")
    if runs:
        if overrides:
            raise CheckError(f"Received overrides {list(overrides)} with runs {list(runs)}; overrides apply to a config candidate only.")
        candidate, source = _candidate_from_runs(runs, store)
    else:
        candidate, source = _candidate_from_config(baseline, config, overrides, store, data_dir, cache_dir, show_progress)
    return compare(baseline, candidate, tolerance=tolerance, alpha=alpha, equivalence=equivalence, inner_steps=inner_steps,
                   candidate_source=source, rerun=not runs)  # fmt: skip


def _candidate_from_runs(run_ids: Sequence[str], store_path) -> tuple[Baseline, str]:
    path = Path(store_path or DEFAULT_STORE)
    if not path.is_file():
        raise CheckError(f"No results store at {path}; pass --store the store that holds run(s) {', '.join(run_ids)}.")
    with ResultsStore(path) as store:
        try:
            candidate = Baseline.from_store(store, run_ids)
        except BaselineError as error:
            raise CheckError(str(error)) from error
    return candidate, f"run(s) {', '.join(run_ids)} in {path}"


def _candidate_from_config(baseline, config, overrides, store_path, data_dir, cache_dir, show_progress) -> tuple[Baseline, str]:
    """Run the candidate config at every seed of the baseline (one run per seed) and read the runs back.

    Calls :func:`metabench.harness.run.prepare.prepare` once (evaluation episodes do not depend on
    the training seed) and :func:`metabench.harness.run.lifecycle.run` once per seed with that
    prepared data.
    """
    for override in overrides:
        if override.partition("=")[0].strip() == "seed":
            raise CheckError(
                f"Received override {override!r}, but a config candidate is run at the baseline's seeds "
                f"({listed_seeds(baseline.seeds)}), each compared with the baseline's run of the same seed. "
                "Leave seed out; to check other seeds, save a baseline of those seeds."
            )
    seeds = baseline.seeds
    configs = [resolve_candidate_config(baseline, config, overrides, seed=seed) for seed in seeds]
    origin = configs[0][1]
    # Fail before training: the candidate's evaluation episodes must be the baseline's.
    prepared = prepare(configs[0][0], data_dir, cache_dir)
    sets = [((s.dataset, s.split, s.spec.ways, s.spec.shots, s.spec.queries), s.fingerprint) for s in prepared.eval_sets]
    require_same_episodes(baseline, sets, configs[0][0])
    with tempfile.TemporaryDirectory(prefix="metabench-check-") as temporary:
        path = Path(store_path) if store_path else Path(temporary) / "results.sqlite"
        with ResultsStore(path) as store:
            run_ids = []
            for number, (seed, (resolved, _)) in enumerate(zip(seeds, configs), start=1):
                logger.info("Running the candidate (%s) at seed %d (%d of %d) into %s", origin, seed, number, len(seeds),
                            path if store_path else "a temporary store")  # fmt: skip
                summary = run(resolved, store=store, data_dir=data_dir, cache_dir=cache_dir,
                              show_progress=show_progress, prepared=prepared)  # fmt: skip
                run_ids.append(summary.run_id)
            candidate = Baseline.from_store(store, run_ids)
    where = f"store {path}" if store_path else "a temporary store"
    return candidate, f"{origin}, run now at seed(s) {listed_seeds(seeds)} into {where}"


def resolve_candidate_config(baseline: Baseline, config, overrides: Sequence[str] = (), *, seed: int | None = None) -> tuple[dict, str]:
    """The candidate's resolved config and a description of where it came from.

    ``config``: a TOML path or shipped config name, a (raw or resolved) config dict, or ``None``
    for the config recorded in ``baseline``. ``seed``: the training seed to set (after the
    overrides; it is validated with the rest of the config). The Keras backend (``backend`` key)
    is selected before the config is resolved, because resolving imports the registered components.
    """
    if config is None:
        raw, origin = copy.deepcopy(baseline.config), f"the config recorded in {baseline.source}"
    elif isinstance(config, dict):
        raw, origin = copy.deepcopy(config), "config " + repr(config.get("name") or "(dict)")
    else:
        raw, origin = read_raw_config(os.fspath(config))
        origin = f"config {os.fspath(config)}"
    apply_overrides(raw, overrides)
    if overrides:
        origin += " with " + " ".join(f"--set {o}" for o in overrides)
    if seed is not None:
        raw["seed"] = seed
    select_backend(raw.get("backend", "tensorflow"))
    return resolve_config(raw, origin), origin
