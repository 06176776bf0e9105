"""pytest plugin: the ``metabench_check`` fixture, a regression gate inside a test suite.

Registered through the ``pytest11`` entry point, so installing metabench makes the fixture
available to every test; nothing heavy is imported until a test uses it. A test::

    def test_my_maml_no_regression(metabench_check):
        metabench_check(
            "baselines/maml_sinusoid.json",
            config="configs/my_maml.toml",
            overrides=["train.meta_iterations=300", "evaluation.episodes=100", "engine.deterministic=true"],
        )

trains and evaluates the candidate on the baseline's episodes (as ``metabench check --config``:
once per seed of the baseline, so a multi-seed baseline is checked against the same seeds) and
fails with the check's explanation when it regressed (or, with ``equivalence=MARGIN``, is not
equivalent), or when it could not be compared (different episodes, settings or seeds, or repeats
of one seed that differ). It returns the
:class:`metabench.harness.analysis.comparison.CheckResult` otherwise, and records the result as JSON in the
test's ``user_properties`` (``metabench_check``), which ``--junitxml`` reports carry.

A relative baseline path is looked up next to the test file first, then under pytest's rootdir,
then the current directory. Keyword arguments are those of :func:`metabench.harness.testing.check.check`:
``config`` (path, shipped name, dict, or ``None`` for the baseline's own config), ``overrides``,
``runs`` and ``store`` (check completed runs instead), ``tolerance``, ``alpha``, ``equivalence``,
``inner_steps``, ``data_dir``, ``cache_dir``.

Keras reads its backend once per process: a suite whose baselines use the TensorFlow backend
runs them all in one process; set ``KERAS_BACKEND`` before pytest starts for the other backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture
def metabench_check(request):
    """A function ``metabench_check(baseline, **options) -> CheckResult`` that fails the test on a regression.

    Args (of the returned function):
        baseline: path of the baseline file (relative: next to the test file, then rootdir, then cwd).
        **options: keyword arguments of :func:`metabench.harness.testing.check.check`.
    """

    def run_check(baseline, **options):
        # Deferred: the plugin loads in every pytest session; the gate (pandas, SciPy, the run core)
        # loads only when a test uses the fixture.
        from metabench.harness.analysis.comparison import EXIT_OK, cannot_compare_errors
        from metabench.harness.testing.check import check

        path = _find_baseline(baseline, request)
        try:
            result = check(path, **options)
        except cannot_compare_errors() as error:
            request.node.user_properties.append(("metabench_check", json.dumps({"exit_code": 2, "error": str(error)})))
            pytest.fail(f"metabench check could not compare against {path}: {error}", pytrace=False)
        request.node.user_properties.append(("metabench_check", json.dumps(result.as_dict(), allow_nan=False)))
        if result.exit_code != EXIT_OK:
            pytest.fail(result.explanation(), pytrace=False)
        return result

    return run_check


def _find_baseline(baseline, request) -> Path:
    path = Path(os.fspath(baseline))
    if path.is_absolute():
        return path
    candidates = [Path(request.path).parent / path, Path(request.config.rootpath) / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]  # missing: the check's error names the path it looked at
