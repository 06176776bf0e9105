"""One run core: `metabench run` and a sweep store the same result for the same config."""

import json

import numpy as np
import pytest

from metabench.harness.cli.main import main
from metabench.harness.config import load_config
from metabench.harness.results.store import ResultsStore

# NaN retries and a top-k ensemble: the two things a second wiring of the run used to drop.
OVERRIDES = [
    "train.meta_iterations=12",
    "train.meta_batch_size=4",
    "train.checkpoint_every=4",
    "train.nan_retries=2",
    "evaluation.ensemble_top_k=2",
    "evaluation.episodes=20",
    "evaluation.validation_episodes=10",
    "model.filters=8",
    "engine.deterministic=true",
]


def _stored(path):
    with ResultsStore(path) as store:
        runs = store.runs(status="completed")
        metrics = store.episode_metrics()
    metrics = metrics.sort_values(["fingerprint", "notes", "inner_steps", "episode"]).reset_index(drop=True)
    return runs, metrics


@pytest.mark.slow  # 36 s (pytest -m slow)
def test_run_and_a_one_run_sweep_store_identical_results(tmp_path, shared_data_dir):
    run_store, sweep_store = tmp_path / "run.sqlite", tmp_path / "sweep.sqlite"
    common = ["--data-dir", str(shared_data_dir), "--quiet"]
    assert main(["run", "quickstart_omniglot", "--store", str(run_store), "--no-progress", *common,
                 *[arg for o in OVERRIDES for arg in ("--set", o)]]) == 0
    sweep = tmp_path / "one.toml"
    sweep.write_text('base = "quickstart_omniglot"\nseeds = [0]\n[set]\n'
                     + "".join(f'"{o.split("=")[0]}" = {o.split("=")[1]}\n' for o in OVERRIDES))
    assert main(["sweep", str(sweep), "--store", str(sweep_store), "--no-report", *common]) == 0

    (run_runs, run_metrics), (sweep_runs, sweep_metrics) = _stored(run_store), _stored(sweep_store)
    assert len(run_runs) == len(sweep_runs) == 1
    for column in ("config_hash", "recipe_hash"):
        assert run_runs[column].iloc[0] == sweep_runs[column].iloc[0]
    assert run_runs["config"].iloc[0] == sweep_runs["config"].iloc[0]
    notes = [json.loads(n) for n in run_metrics["notes"].unique()]
    assert any("ensemble" in n for n in notes), "the sweep path must evaluate the top-k ensemble too"
    for column in ("fingerprint", "notes", "inner_steps", "episode", "metric"):
        assert run_metrics[column].tolist() == sweep_metrics[column].tolist()
    np.testing.assert_array_equal(run_metrics["value"].to_numpy(), sweep_metrics["value"].to_numpy())


@pytest.mark.parametrize("key", ["seed", "evaluation.seed"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_seeds_out_of_range_are_config_errors_naming_the_key(key, value, capsys):
    from metabench.harness.config import ConfigError

    with pytest.raises(ConfigError, match=rf"Received {key}={value}; expected an integer with 0 <= seed < 2\*\*32"):
        load_config("quickstart", [f"{key}={value}"])
    assert main(["run", "quickstart", "--set", f"{key}={value}", "--print-config"]) != 0
    assert f"{key}={value}" in capsys.readouterr().err


def test_runs_record_the_version_of_each_plugin_distribution_they_use(monkeypatch):
    """A component registered by another distribution (an entry point) has its version recorded."""
    import importlib.metadata

    from metabench.harness.registry import ALGORITHMS, Entry
    from metabench.harness.run.provenance import library_versions

    maml = ALGORITHMS.get("maml")
    plugin = Entry("plugin_maml", maml.factory, maml.defaults, maml.choices, "a plugin", source="tabulate")
    monkeypatch.setitem(ALGORITHMS._load(), "plugin_maml", plugin)
    config = load_config("quickstart", ["algorithm.name=plugin_maml"])
    assert library_versions(config)["tabulate"] == importlib.metadata.version("tabulate")
    assert "tabulate" not in library_versions(load_config("quickstart"))
