"""Sweeps: idempotent, resumable after a kill, and the same results from the local and Ray executors."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metabench.harness.cli.main import main
from metabench.harness.results.store import ResultsStore
from metabench.harness.run.sweep import SweepError, load_sweep

TINY = """
base = "quickstart"
seeds = [0, 1]

[set]
"train.meta_iterations" = 30
"train.checkpoint_every" = 10
"evaluation.episodes" = 20
"engine.deterministic" = true

[algorithms.maml]
name = "maml"
inner_lr = 0.01

[algorithms.pretrain]
name = "pretrain"
finetune_lr = 0.01
"""


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _sweep(path, store, *extra):
    return main(["sweep", str(path), "--store", str(store), "--no-report", "--quiet", *extra])


def _completed(store):
    with ResultsStore(store) as results:
        runs = results.runs(status="completed")
        metrics = results.episode_metrics()
    return runs, metrics


def test_expansion_is_algorithms_by_seeds_with_distinct_hashes(sweep_file):
    runs = load_sweep(sweep_file)
    assert [r.label for r in runs] == ["maml, seed 0", "maml, seed 1", "pretrain, seed 0", "pretrain, seed 1"]
    assert len({r.config_hash for r in runs}) == 4
    assert runs[2].config["algorithm"] == {"name": "pretrain", "finetune_lr": 0.01, "finetune": "all",
                                            "momentum": 0.0, "weight_decay": 0.0, "scale": 0.0, "head_seed": 0,
                                            "dampening": 0.0, "batch_size": 0, "weight_norm": False,
                                            "pretrain_on": "support_and_query"}
    assert all(r.config["train"]["meta_iterations"] == 30 for r in runs)


def test_a_bad_sweep_file_names_the_problem(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('base = "quickstart"\nseedz = [1]\n')
    with pytest.raises(SweepError, match="Unknown key 'seedz'"):
        load_sweep(path)
    path.write_text('base = "quickstart"\n[algorithms.x]\nname = "maml"\ninner_rate = 1\n')
    with pytest.raises(SweepError, match="inner_rate"):
        load_sweep(path)


def test_running_a_sweep_twice_runs_nothing_the_second_time(sweep_file, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert _sweep(sweep_file, store, "--json") == 0
    assert capsys.readouterr().out.strip().endswith('{"skipped": 0, "completed": 4, "failed": 0}')
    assert _sweep(sweep_file, store, "--json") == 0
    assert capsys.readouterr().out.strip().endswith('{"skipped": 4, "completed": 0, "failed": 0}')
    runs, _ = _completed(store)
    assert len(runs) == 4 and runs.config_hash.nunique() == 4
    for timings in runs.timings:  # the runner's phases, waiting on data a part of training
        assert set(timings) == {"train_s", "data_wait_s", "eval_s"} and 0 <= timings["data_wait_s"] < timings["train_s"]


@pytest.mark.slow  # 45 s (pytest -m slow)
def test_a_killed_sweep_finishes_exactly_the_missing_runs(sweep_file, tmp_path):
    store = tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "metabench.harness.cli", "sweep", str(sweep_file), "--store", str(store), "--no-report", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if store.exists() and len(_completed(store)[0]) >= 1:
                break
            if process.poll() is not None:
                pytest.fail("the sweep ended before it could be killed")
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = len(_completed(store)[0])
    assert 0 < before < 4  # killed after at least one run landed, before the last
    assert _sweep(sweep_file, store) == 0
    runs, metrics = _completed(store)
    assert len(runs) == 4 and runs.config_hash.nunique() == 4  # each config exactly once
    # Runs the kill cut short continued from their checkpoints and end exactly as uninterrupted ones.
    reference = tmp_path / "reference.sqlite"
    assert _sweep(sweep_file, reference) == 0
    key = ["config_hash", "shots", "inner_steps", "episode"]
    resumed = metrics.sort_values(key)[key + ["value"]].reset_index(drop=True)
    straight = _completed(reference)[1].sort_values(key)[key + ["value"]].reset_index(drop=True)
    assert resumed.equals(straight)
    assert not any((tmp_path / "checkpoints").glob("sweep-*/ckpt-*"))  # cleaned up after completion


@pytest.mark.slow  # 22 s (pytest -m slow)
def test_ray_executor_gives_the_local_results(sweep_file, tmp_path):
    pytest.importorskip("ray")
    local, remote = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    assert _sweep(sweep_file, local) == 0
    assert _sweep(sweep_file, remote, "--executor", "ray", "--workers", "2") == 0
    (local_runs, local_metrics), (ray_runs, ray_metrics) = _completed(local), _completed(remote)
    assert set(local_runs.config_hash) == set(ray_runs.config_hash)
    key = ["config_hash", "shots", "inner_steps", "episode"]
    left = local_metrics.sort_values(key)[key + ["value"]].reset_index(drop=True)
    right = ray_metrics.sort_values(key)[key + ["value"]].reset_index(drop=True)
    assert len(left) == len(right) > 0
    np.testing.assert_array_equal(left[key].to_numpy(), right[key].to_numpy())
    np.testing.assert_allclose(left.value.to_numpy(), right.value.to_numpy(), rtol=0, atol=0)


@pytest.mark.slow  # 21 s (pytest -m slow)
def test_a_sweep_over_two_values_of_one_option_gives_two_labelled_rows(tmp_path):
    """Two inner learning rates are two recipes: two rows, each named by its value, seeds pooled within each."""
    from metabench.harness.analysis.leaderboard import build_report

    sweep = tmp_path / "lr.toml"
    sweep.write_text(
        'base = "quickstart"\nseeds = [0, 1]\n[set]\n"train.meta_iterations" = 20\n"evaluation.episodes" = 20\n'
        '[axes]\n"algorithm.inner_lr" = [0.01, 0.001]\n'
    )
    store = tmp_path / "r.sqlite"
    assert _sweep(sweep, store) == 0
    with ResultsStore(store) as results:
        table = build_report(results).table
    five_shot = table[table["shots"] == 5]
    assert sorted(five_shot["label"]) == ["maml (inner_lr=0.001)", "maml (inner_lr=0.01)"]
    assert five_shot["seeds"].tolist() == [2, 2] and five_shot["recipe_hash"].nunique() == 2
