"""Factories shared by the test files: a run recorded into a results store, an algorithm broken on
purpose, and the contract's checks as test cases (slow ones marked). (The ``store`` fixture, an empty
results store, is in ``conftest.py``.)

Test files import them as ``from helpers import record_run`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pytest

from metabench.harness.config import config_hash as hash_of_config
from metabench.harness.results.records import CurvePoint, Evaluation, RunInfo


def record_run(
    store,
    evaluations: Sequence[Evaluation] = (),
    *,
    algorithm: str = "maml",
    dataset: str = "sinusoid",
    seed: int = 0,
    config: dict | None = None,
    config_hash: str | None = None,
    backend: str = "tensorflow",
    device: str = "CPU",
    versions: dict | None = None,
    git_commit: str | None = None,
    curve: Sequence[CurvePoint] = (),
    timings: dict | None = None,
    events: Sequence[dict] = (),
    fail: str | None = None,
    info: RunInfo | None = None,
) -> str:
    """Record one run in ``store`` as the harness does (``start_run``, then ``complete_run`` with
    ``evaluations``, ``curve``, ``timings`` and ``events``) and return its run id.

    ``config`` defaults to ``{"seed": seed}`` and ``config_hash`` to the config's real hash;
    ``info``, a whole ``RunInfo``, replaces the fields before ``curve``; ``fail="message"`` marks
    the run failed with that message instead of completing it.
    """
    if info is None:
        config = {"seed": seed} if config is None else config
        info = RunInfo(
            algorithm, dataset, seed, config, hash_of_config(config) if config_hash is None else config_hash,
            backend, device, {} if versions is None else versions, git_commit,
        )  # fmt: skip
    run_id = store.start_run(info)
    if fail is not None:
        store.fail_run(run_id, "failed", fail)
    else:
        store.complete_run(run_id, list(evaluations), list(curve), {} if timings is None else timings, events=events)
    return run_id


#: Contract checks that train or compile sessions of their own (10-30 s each on 2 cores, conv4 on the toy
#: images): left to ``pytest -m slow`` for an algorithm whose contract runs on classification alone.
SLOW_CONTRACT_CHECKS = ("deterministic", "ways_at_evaluation", "prequential_no_peeking")


def contract_params(checks, kinds_run, prefix: str = "") -> list:
    """``pytest.param``s of ``conformance.algorithm_checks(...)``'s ``(test id, check)`` pairs, with ids
    ``prefix + test id``, the slow ones marked ``slow``. ``kinds_run``: every task kind the test file runs
    this algorithm's contract on.

    The default run keeps every algorithm's contract on one task kind: the whole regression contract
    (a small MLP: seconds) where there is one, the classification one marked slow (each conv4 session
    compiles and trains for tens of seconds); an algorithm with classification alone keeps its contract
    but :data:`SLOW_CONTRACT_CHECKS`, so its session is trained once and shared by the checks that stay.
    """
    params = []
    for test_id, check in checks:
        kind, name = test_id.split("-", 1)
        slow = (kind == "classification" and "regression" in kinds_run) or (
            set(kinds_run) == {"classification"} and name in SLOW_CONTRACT_CHECKS
        )
        params.append(pytest.param(check, id=prefix + test_id, marks=[pytest.mark.slow] if slow else []))
    return params


@functools.cache
def _seedless_maml_class():
    from metabench.algorithms.maml import MAML  # Keras reads its backend once, at import: only when needed

    class SeedlessMAML(MAML):
        """Broken on purpose: perturbs its initial weights from an unseeded generator."""

        def build(self, model, task_kind, engine):
            super().build(model, task_kind, engine)
            rng = np.random.default_rng()  # no seed: different every time
            for variable in model.trainable_variables:
                variable.assign(variable.value + rng.normal(0, 0.05, size=tuple(variable.shape)).astype("float32"))
            return self

    return SeedlessMAML


def seedless_maml(**options):
    """A ``SeedlessMAML(**options)``: MAML broken on purpose, its initial weights perturbed from an
    unseeded generator, so two trainings with one seed differ (what the conformance suite must catch)."""
    return _seedless_maml_class()(**options)
