"""Top-k checkpoint ensembles (MAML++'s evaluation option), on real Omniglot episodes."""

import json

import numpy as np
import pytest

from metabench.harness.cli.main import main
from metabench.harness.analysis.leaderboard import build_report
from metabench.harness.results.store import ResultsStore


def _run(tmp_path, data, *overrides):
    store = tmp_path / "r.sqlite"
    args = ["run", "quickstart_omniglot", "--data-dir", str(data), "--store", str(store), "--no-progress", "--quiet",
            "--set", "train.meta_iterations=20", "--set", "evaluation.episodes=20", "--set", "evaluation.validation_episodes=20"]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    with ResultsStore(store) as results:
        return results.episode_metrics(), build_report(results)


@pytest.mark.slow  # 44 s (pytest -m slow)
def test_top_1_of_the_final_checkpoint_equals_the_last_checkpoint(tmp_path, shared_data_dir):
    metrics, _ = _run(tmp_path, shared_data_dir, "evaluation.ensemble_top_k=1", "train.checkpoint_every=20")
    headline = metrics[metrics.inner_steps == 3]
    ensemble = headline[headline.notes.str.contains("top-1 checkpoints")].sort_values("episode").value.to_numpy()
    single = headline[~headline.notes.str.contains("top-1 checkpoints")].sort_values("episode").value.to_numpy()
    assert len(ensemble) == len(single) == 20
    # The harness scores both the same way (harness.run.scoring): the same numbers, bit for bit.
    np.testing.assert_array_equal(ensemble, single)


@pytest.mark.slow  # 44 s (pytest -m slow)
def test_top_2_ensemble_is_recorded_and_reported_apart(tmp_path, shared_data_dir):
    metrics, report = _run(tmp_path, shared_data_dir, "evaluation.ensemble_top_k=2", "train.checkpoint_every=5")
    notes = [json.loads(n) for n in metrics.notes.unique()]
    ensembles = [n["ensemble"] for n in notes if "ensemble" in n]
    assert len(ensembles) == 1 and ensembles[0].startswith("top-2 checkpoints by validation accuracy (iterations [")
    assert {"maml", "maml (top-k ensemble)"} <= set(report.table.algorithm)
