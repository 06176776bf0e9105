"""Factories shared by the test files: a run recorded into a results store, and an algorithm broken
on purpose. (The ``store`` fixture, an empty results store, is in ``conftest.py``.)

Test files import them as ``from helpers import record_run`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

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
