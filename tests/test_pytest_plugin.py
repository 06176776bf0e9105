"""The ``metabench_check`` pytest fixture, exercised in a pytest run of its own (``pytester``).

The inner run uses our committed MAML baseline (``tests/baselines/maml_sinusoid.json``, copied next
to the inner test file to exercise relative paths): an unchanged candidate (completed runs holding
the baseline's own values, so nothing trains) passes, a degraded one (inner learning rate divided by
100, trained for real) fails with the check's explanation, and one evaluated on other episodes fails
before training with both fingerprints named.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metabench.harness.results.baseline_file import Baseline
from metabench.harness.results.records import Evaluation
from metabench.harness.results.store import ResultsStore
from helpers import record_run

pytest_plugins = ["pytester"]

BASELINE = Path(__file__).parent / "baselines" / "maml_sinusoid.json"
# Load the plugin by module name whether or not the pytest11 entry point ("metabench") is installed.
PLUGIN_ARGS = ("-p", "no:metabench", "-p", "metabench.harness.testing.pytest_plugin", "-p", "no:cacheprovider")

INNER_TESTS = '''
BASELINE = "baselines/maml_sinusoid.json"


def test_unchanged_passes(metabench_check):
    result = metabench_check(BASELINE, runs=["{run_id}"], store=r"{store}")
    assert result.decision == "unchanged" and result.exit_code == 0


def test_degraded_fails(metabench_check):
    metabench_check(BASELINE, overrides=["algorithm.inner_lr=0.0001"])


def test_other_episodes_cannot_be_compared(metabench_check):
    metabench_check(BASELINE, config=None, overrides=["evaluation.seed=2"])
'''


def _record_baseline_values(store: ResultsStore, baseline: Baseline) -> str:
    """A completed run holding exactly the baseline's per-episode values (an 'unchanged' candidate)."""
    evaluations = [
        Evaluation(s.split, s.ways, s.shots, s.queries, s.fingerprint, s.metric, s.headline_steps, {k: v[0] for k, v in s.values.items()})
        for s in baseline.settings
    ]
    return record_run(store, evaluations, algorithm=baseline.algorithm, dataset=baseline.dataset, seed=baseline.runs[0].seed,
                      config=baseline.config, backend=baseline.backend, versions=baseline.versions)  # fmt: skip


def test_metabench_check_fixture_passes_unchanged_and_fails_regressed(pytester):
    (pytester.path / "baselines").mkdir()
    shutil.copy(BASELINE, pytester.path / "baselines" / BASELINE.name)
    store = pytester.path / "results.sqlite"
    with ResultsStore(store) as opened:
        run_id = _record_baseline_values(opened, Baseline.load(BASELINE))
    pytester.makepyfile(test_maml_regression=INNER_TESTS.format(run_id=run_id, store=store))
    result = pytester.runpytest_inprocess(*PLUGIN_ARGS)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_degraded_fails _*",
            "metabench check: REGRESSED (exit 1)",
            "  baseline:  */baselines/maml_sinusoid.json: maml on sinusoid, seed 0, recipe *, deterministic",
            "  candidate: the config recorded in */baselines/maml_sinusoid.json with --set algorithm.inner_lr=0.0001, run now at seed(s) 0 *",
            "             maml on sinusoid, run(s) *, recipe *: a DIFFERENT recipe from the baseline's *",
            "  compared seed 0 (re-ran it)",
            "  config changes: algorithm.inner_lr: 0.01 -> 0.0001",
            "  [[]regressed[]] sinusoid test 5-shot (100 queries), mse after 1 inner step(s), n = 100, *",
            "*_ test_other_episodes_cannot_be_compared _*",
            "metabench check could not compare against */baselines/maml_sinusoid.json: Episode fingerprints differ*",
        ]
    )
    fingerprint = Baseline.load(BASELINE).settings[0].fingerprint
    assert f"the baseline's is {fingerprint}, the candidate's is " in result.stdout.str()
    assert "Traceback" not in result.stdout.str()  # failures read as the check's explanation, not a stack


def test_the_plugin_module_imports_nothing_heavy():
    # Entry-point plugins load in every pytest session of an environment with metabench installed.
    code = "import sys, metabench.harness.testing.pytest_plugin; print(sorted({'keras', 'tensorflow', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_plugin_is_registered_as_the_pytest11_entry_point_metabench():
    found = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == "metabench.harness.testing.pytest_plugin"]
    if not found:
        pytest.skip('pyproject.toml lacks [project.entry-points.pytest11] metabench = "metabench.harness.testing.pytest_plugin" (reinstall after adding it)')
    assert [ep.name for ep in found] == ["metabench"]
