"""Our shipped algorithms against their committed baselines (``tests/baselines/*.json``), via the pytest plugin.

Each baseline was written by ``metabench baseline save`` from a cheap, deterministic sinusoid run
(``docs/regression-testing.md`` shows how to regenerate them). Each test re-runs the config recorded
in its baseline with the current code and fails with the check's explanation when the algorithm
regressed. On the machine that wrote them the results repeat bit for bit; elsewhere (another CPU,
other library versions) the paired test and the 0.5% tolerance absorb round-off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metabench.harness.results.baseline_file import Baseline
from metabench.harness.testing.pytest_plugin import metabench_check  # noqa: F401  (the fixture; also registered via pytest11)

BASELINES = sorted((Path(__file__).parent / "baselines").glob("*.json"))


def test_there_is_a_cheap_baseline_for_every_shipped_sinusoid_algorithm():
    names = {path.stem for path in BASELINES}
    assert {"maml_sinusoid", "fomaml_sinusoid", "mamlpp_sinusoid", "pretrain_sinusoid", "multitask_sinusoid"} <= names
    for path in BASELINES:
        baseline = Baseline.load(path)
        config = baseline.config
        assert baseline.deterministic, f"{path.name}: save baselines from runs with engine.deterministic = true"
        assert config["train"]["meta_iterations"] <= 300 and config["evaluation"]["episodes"] <= 100, f"{path.name} is not cheap"


@pytest.mark.parametrize("path", BASELINES, ids=[p.stem for p in BASELINES])
def test_shipped_algorithm_does_not_regress(metabench_check, path):  # noqa: F811
    result = metabench_check(path)  # the config recorded in the baseline, run with the current code
    assert result.decision in ("unchanged", "improved")
