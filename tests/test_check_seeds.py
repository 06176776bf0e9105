"""A two-seed baseline re-checked on unchanged code is "unchanged", exit 0: end to end through the real CLI.

Two real, short sinusoid MAML runs (seeds 0 and 1, 30 meta-iterations, 50 evaluation episodes,
``engine.deterministic = true``) are saved as one baseline by ``metabench baseline save``. Then
``metabench check --config`` runs the unchanged config again at both seeds and compares seed by
seed. Before checks compared like with like, the check re-ran seed 0 only and compared it with the
two-seed mean: a spurious "REGRESSED", exit 1.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from metabench.harness.results.baseline_file import Baseline
from metabench.harness.cli.main import main
from metabench.harness.config import load_config, recipe_hash
from metabench.harness.results.store import ResultsStore

TINY = ["train.meta_iterations=30", "evaluation.episodes=50", "evaluation.inner_steps=[0, 1]", "engine.deterministic=true"]
SETS = [arg for override in TINY for arg in ("--set", override)]


def _metabench(*argv) -> int:
    """The `metabench` command line."""
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A baseline file of seeds 0 and 1, and `metabench check --config` of the unchanged config into a kept store."""
    folder = tmp_path_factory.mktemp("check-seeds")
    store = folder / "results.sqlite"
    run_ids = []
    for seed in (0, 1):
        out = folder / f"run-{seed}.json"
        # `metabench run --json` prints the summary on stdout; a module fixture cannot use capsys, so it goes to a file.
        with open(out, "w") as handle, contextlib.redirect_stdout(handle):
            assert _metabench("run", "quickstart", *SETS, "--set", f"seed={seed}", "--store", store, "--json", "--no-progress", "--quiet") == 0
        run_ids.append(json.loads(out.read_text())["run_id"])
    baseline = folder / "maml_two_seeds.json"
    assert _metabench("baseline", "save", *run_ids, "--store", store, "--out", baseline, "--quiet") == 0
    candidate = folder / "candidate.sqlite"
    report = folder / "check.txt"
    with open(report, "w") as handle, contextlib.redirect_stdout(handle):
        code = _metabench("check", "--baseline", baseline, "--config", "quickstart", *SETS, "--store", candidate, "--no-progress", "--quiet")
    return {"baseline": baseline, "runs": run_ids, "candidate": candidate, "code": code, "report": report.read_text()}


@pytest.mark.slow  # like every test of two_seeds, a module fixture that trains two seeds: 12 s (pytest -m slow)
def test_a_two_seed_baseline_rechecked_on_unchanged_code_is_unchanged_exit_0(two_seeds):
    assert two_seeds["code"] == 0
    out = two_seeds["report"]
    assert out.startswith("metabench check: UNCHANGED (exit 0)"), out
    assert "  compared seeds 0, 1 (re-ran both)" in out
    assert "maml on sinusoid, seeds 0, 1, recipe" in out and ": the baseline's recipe" in out and "config changes: none" in out
    assert out.count("identical per-episode results (bit-for-bit)") == 2  # K = 5 and K = 10
    assert out.count("difference per seed: seed 0 +0.000%, seed 1 +0.000%") == 2


@pytest.mark.slow  # reads two_seeds (pytest -m slow)
def test_the_baseline_holds_one_recipe_and_one_row_per_seed(two_seeds):
    baseline = Baseline.load(two_seeds["baseline"])
    assert baseline.seeds == [0, 1] and baseline.run_ids == two_seeds["runs"]
    assert baseline.recipe_hash == recipe_hash(load_config("quickstart", TINY))
    assert json.loads(two_seeds["baseline"].read_text())["recipe_hash"] == baseline.recipe_hash
    for setting in baseline.settings:
        assert setting.values[1].shape == (2, 50)
        assert (setting.values[1][0] != setting.values[1][1]).any()  # the seeds really differ


@pytest.mark.slow  # reads two_seeds (pytest -m slow)
def test_the_rerun_stored_one_run_per_seed_and_those_runs_check_unchanged(two_seeds, capsys):
    with ResultsStore(two_seeds["candidate"]) as store:
        runs = store.runs()
    assert sorted(runs["seed"].tolist()) == [0, 1] and set(runs["recipe_hash"]) == {Baseline.load(two_seeds["baseline"]).recipe_hash}
    ids = runs.sort_values("seed")["run_id"].tolist()
    common = ("check", "--baseline", two_seeds["baseline"], "--store", two_seeds["candidate"])
    assert _metabench(*common, "--run", ids[1], "--run", ids[0], "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["decision"], payload["difference"], payload["seeds"], payload["same_recipe"]) == ("unchanged", 0.0, [0, 1], True)
    assert payload["seeds_compared"] == "compared seeds 0, 1 (the candidate's runs of the same seeds, seed by seed)"
    # seed 0 alone is not compared with the two-seed baseline (that was the spurious "+8.8%, REGRESSED")
    assert _metabench(*common, "--run", ids[0]) == 2
    err = capsys.readouterr().err
    assert f"could not compare: The baseline holds seed(s) 0, 1, but the candidate run(s) {ids[0]} hold seed(s) 0: missing seed(s) 1" in err


@pytest.mark.slow  # reads two_seeds (pytest -m slow)
def test_a_seed_override_is_refused_for_a_config_candidate(two_seeds, capsys):
    assert _metabench("check", "--baseline", two_seeds["baseline"], "--config", "quickstart", *SETS, "--set", "seed=3") == 2
    assert "could not compare: Received override 'seed=3', but a config candidate is run at the baseline's seeds (0, 1)" in capsys.readouterr().err
