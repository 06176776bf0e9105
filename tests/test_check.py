"""`metabench check` end to end on a real (cheap, deterministic) MAML: unchanged, regressed, could not compare.

Module-scoped fixtures train three runs of the sinusoid quickstart at 300 meta-iterations and 100
evaluation episodes with ``engine.deterministic = true`` (a few seconds each on a laptop CPU): the
baseline, a degraded variant (inner learning rate divided by 100), and the baseline's config again
through ``metabench check --config``. The check's acceptance rests on determinism: the repeated run
is bit-for-bit the baseline.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from metabench.harness.cli.main import main
from metabench.harness.config import load_config
from metabench.harness.results.baseline_file import Baseline
from metabench.harness.results.store import ResultsStore
from metabench.harness.run.lifecycle import run
from metabench.harness.run.prepare import prepare

CHEAP = ["train.meta_iterations=300", "evaluation.episodes=100", "evaluation.inner_steps=[0, 1]", "engine.deterministic=true"]
DEGRADED = "algorithm.inner_lr=0.0001"  # the quickstart's 0.01 divided by 100


def _metabench(*argv) -> int:
    """The `metabench` command line."""
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The baseline run (saved as a baseline file by the command) and the degraded run, in one store."""
    folder = tmp_path_factory.mktemp("check")
    store_path = folder / "results.sqlite"
    with ResultsStore(store_path) as store:
        base = run(load_config("quickstart", CHEAP), store=store, show_progress=False).run_id
        degraded = run(load_config("quickstart", [*CHEAP, DEGRADED]), store=store, show_progress=False).run_id
    baseline = folder / "maml_sinusoid.json"
    assert _metabench("baseline", "save", base, "--store", store_path, "--out", baseline) == 0
    return {"folder": folder, "store": store_path, "baseline": baseline, "base": base, "degraded": degraded}


@pytest.fixture(scope="module")
def repeated(trained):
    """`metabench check --config` of the baseline's own config: trains it again into a kept store."""
    store = trained["folder"] / "candidate.sqlite"
    sets = [arg for override in CHEAP for arg in ("--set", override)]
    code = _metabench("check", "--baseline", trained["baseline"], "--config", "quickstart", *sets, "--store", store, "--no-progress", "--json")
    return code, store


def test_the_unchanged_algorithm_checks_unchanged_exit_0(trained, repeated, capsys):
    code, store = repeated
    assert code == 0
    with ResultsStore(store) as opened:  # --store kept the candidate's run
        (run_id,) = opened.runs()["run_id"].tolist()
    assert _metabench("check", "--baseline", trained["baseline"], "--run", run_id, "--store", store) == 0
    out = capsys.readouterr().out
    assert out.startswith("metabench check: UNCHANGED (exit 0)")
    assert "config changes: none" in out and out.count("identical per-episode results (bit-for-bit)") == 2


def test_a_deterministic_run_repeats_bit_for_bit(trained, repeated):
    frames = []
    for path in (trained["store"], repeated[1]):
        with ResultsStore(path) as store:
            frame = store.episode_metrics()
        frames.append(frame[frame["config_hash"] == frame["config_hash"].iloc[0]]["value"].to_numpy())
    assert frames[0].size == 2 * 2 * 100  # 2 settings (K = 5, 10) x inner steps 0, 1 x 100 episodes
    np.testing.assert_array_equal(frames[0], frames[1])


def test_the_degraded_algorithm_checks_regressed_exit_1(trained, repeated, capsys):
    code = _metabench("check", "--baseline", trained["baseline"], "--run", trained["degraded"], "--store", trained["store"], "--json")
    payload = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (payload["decision"], payload["exit_code"], payload["n"], payload["metric"]) == ("regressed", 1, 100, "mse")
    assert payload["difference"] > 0.5 and payload["ci_low"] > 0 and payload["p_value"] < 0.05
    assert [s["decision"] for s in payload["settings"]] == ["regressed", "regressed"]
    assert payload["config_differences"] == ["algorithm.inner_lr: 0.01 -> 0.0001"]
    # equivalence within 1% of the baseline's MSE is refuted for it, and shown for the repeated run
    assert _metabench("check", "--baseline", trained["baseline"], "--run", trained["degraded"], "--store", trained["store"],
                      "--equivalence", 1) == 1  # fmt: skip
    assert "REGRESSED, NOT EQUIVALENT (exit 1)" in capsys.readouterr().out
    with ResultsStore(repeated[1]) as opened:
        (run_id,) = opened.runs()["run_id"].tolist()
    assert _metabench("check", "--baseline", trained["baseline"], "--run", run_id, "--store", repeated[1], "--equivalence", 1) == 0
    assert "UNCHANGED, EQUIVALENT (exit 0)" in capsys.readouterr().out


def test_mismatched_fingerprints_exit_2_naming_both_before_training(trained, capsys):
    store = trained["folder"] / "never.sqlite"
    sets = [arg for override in [*CHEAP, "evaluation.seed=2"] for arg in ("--set", override)]
    code = _metabench("check", "--baseline", trained["baseline"], "--config", "quickstart", *sets, "--store", store)
    err = capsys.readouterr().err
    assert code == 2
    ours = Baseline.load(trained["baseline"]).settings[0].fingerprint
    theirs = prepare(load_config("quickstart", [*CHEAP, "evaluation.seed=2"])).eval_sets[0].fingerprint
    assert ours != theirs
    assert re.search(rf"could not compare: Episode fingerprints differ for sinusoid test 5-shot \(100 queries\): the baseline's is {ours}, "
                     rf"the candidate's is {theirs}\..*Config keys that differ from the baseline's: evaluation.seed: 1 -> 2", err)  # fmt: skip
    assert not store.exists()  # refused before anything was trained or recorded


def test_a_missing_setting_exits_2_before_training(trained, capsys):
    sets = [arg for override in [*CHEAP, "evaluation.shots=[5]"] for arg in ("--set", override)]
    assert _metabench("check", "--baseline", trained["baseline"], "--config", "quickstart", *sets) == 2
    err = capsys.readouterr().err
    assert "The candidate is not evaluated on the baseline's setting sinusoid test 10-shot (100 queries)" in err
    assert "evaluation.shots: [5, 10] -> [5]" in err
