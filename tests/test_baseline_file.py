"""Baseline files: built from store runs, written as versioned JSON, read back exactly; every refusal pinned."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from metabench.harness.results.baseline_file import (
    FORMAT,
    Baseline,
    BaselineError,
    config_differences,
)
from metabench.harness.cli.main import main
from metabench.harness.config import recipe_hash
from metabench.harness.results.records import Evaluation
from helpers import record_run

FP_A = "a" * 64
FP_B = "b" * 64
CONFIG = {
    "name": "t",
    "seed": 0,
    "backend": "tensorflow",
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "engine": {"deterministic": True},
    "evaluation": {"seed": 1, "episodes": 4},
}


def record(store, values, *, seed=0, config=CONFIG, fingerprint=FP_A, metric="mse", fail=False) -> str:
    """A completed (or failed) run with one evaluation; ``values``: inner steps -> [episodes]."""
    config = dict(copy.deepcopy(config), seed=seed)
    versions = {"tensorflow": "2.99", "metabench": "0.1.0"}
    if fail:
        return record_run(store, seed=seed, config=config, versions=versions, fail="TrainingDiverged: loss nan")
    evaluation = Evaluation("test", None, 5, 100, fingerprint, metric, 1, {k: np.asarray(v, dtype=float) for k, v in values.items()})
    return record_run(store, [evaluation], seed=seed, config=config, versions=versions, timings={"train_s": 1.0})


def test_round_trip_is_exact_and_plain_json(store, tmp_path):
    values = {0: [3.3, 2.9, float("nan"), 1.0 / 3.0], 1: [2.1, 0.1 + 0.2, 5e-324, 7.0]}
    run_id = record(store, values)
    baseline = Baseline.from_store(store, [run_id])
    path = baseline.save(tmp_path / "sub" / "b.json")
    text = path.read_text()
    payload = json.loads(text)  # plain JSON (NaN written as null), no pickle anywhere
    assert payload["format"] == FORMAT == "metabench-baseline/1"
    assert payload["settings"][0]["values"]["0"] == [[3.3, 2.9, None, 1.0 / 3.0]]
    assert payload["settings"][0]["episodes"] == 4 and payload["deterministic"] is True
    assert payload["runs"][0]["run_id"] == run_id and payload["config"]["algorithm"]["inner_lr"] == 0.01
    assert '"0": [\n' in text and "[3.3, 2.9, null, 0.3333333333333333]" in text  # one line per run's values
    loaded = Baseline.load(path)
    setting = loaded.settings[0]
    np.testing.assert_array_equal(setting.values[1][0], np.asarray(values[1]))  # bit-for-bit
    assert math.isnan(setting.values[0][0, 2])
    assert (setting.fingerprint, setting.metric, setting.ways, setting.shots, setting.queries) == (FP_A, "mse", None, 5, 100)
    assert loaded.config == baseline.config and loaded.config_hash == baseline.config_hash
    assert loaded.run_ids == [run_id] and loaded.versions["tensorflow"] == "2.99"
    assert setting.describe() == "sinusoid test 5-shot (100 queries)"


def test_several_seeds_are_kept_per_run_and_averaged_per_episode(store):
    first = record(store, {1: [1.0, 2.0]}, seed=0)
    second = record(store, {1: [3.0, 4.0]}, seed=1)
    baseline = Baseline.from_store(store, [first, second])
    setting = baseline.settings[0]
    assert setting.values[1].shape == (2, 2) and setting.runs == 2
    np.testing.assert_array_equal(setting.episode_values(1), [2.0, 3.0])
    assert [r.seed for r in baseline.runs] == [0, 1]
    again = Baseline.from_dict(json.loads(json.dumps(baseline.to_dict())))
    np.testing.assert_array_equal(again.settings[0].values[1], [[1.0, 2.0], [3.0, 4.0]])


def test_runs_of_different_recipes_do_not_combine(store):
    first = record(store, {1: [1.0, 2.0]})
    other_config = dict(CONFIG, algorithm={"name": "maml", "inner_lr": 0.1})
    other = record(store, {1: [1.0, 2.0]}, config=other_config, seed=1)
    with pytest.raises(BaselineError, match=rf"Runs {first} and {other} are different recipes \(recipe {recipe_hash(CONFIG)[:12]} vs "
                                            rf"{recipe_hash(other_config)[:12]}: algorithm.inner_lr: 0.01 -> 0.1\); runs combine only as "
                                            r"seeds of one recipe"):
        Baseline.from_store(store, [first, other])
    # the seed, the name and the label are not part of the recipe
    renamed = record(store, {1: [3.0, 4.0]}, config=dict(CONFIG, name="other", label="mine"), seed=2)
    assert Baseline.from_store(store, [first, renamed]).recipe_hash == recipe_hash(CONFIG)


def test_the_recipe_hash_is_written_and_computed_for_files_without_it(store, tmp_path):
    baseline = Baseline.from_store(store, [record(store, {1: [1.0, 2.0]}, seed=3)])
    assert baseline.recipe_hash == recipe_hash(CONFIG) == recipe_hash(dict(CONFIG, seed=3)) and baseline.seeds == [3]
    payload = baseline.to_dict()
    assert payload["recipe_hash"] == baseline.recipe_hash and payload["format"] == "metabench-baseline/1"
    del payload["recipe_hash"]  # as written before recipes existed
    (tmp_path / "old.json").write_text(json.dumps(payload))
    assert Baseline.load(tmp_path / "old.json").recipe_hash == baseline.recipe_hash


def test_a_repeated_seed_counts_once_when_identical(store, tmp_path):
    first = record(store, {1: [1.0, float("nan")]}, seed=0)
    again = record(store, {1: [1.0, float("nan")]}, seed=0)
    other = record(store, {1: [3.0, 4.0]}, seed=1)
    baseline = Baseline.from_store(store, [first, again, other])
    assert baseline.run_ids == [first, other] and baseline.seeds == [0, 1]
    assert baseline.repeats == (f"run {again} repeats seed 0 of run {first} bit for bit",)
    np.testing.assert_array_equal(baseline.settings[0].values[1], [[1.0, np.nan], [3.0, 4.0]])
    # a file listing one seed twice (hand-made or old) is read the same way
    payload = Baseline.from_store(store, [first, other]).to_dict()
    payload["runs"].insert(1, dict(payload["runs"][0], run_id="copy"))
    payload["settings"][0]["values"] = {k: [v[0], v[0], v[1]] for k, v in payload["settings"][0]["values"].items()}
    loaded = Baseline.from_dict(payload)
    assert loaded.seeds == [0, 1] and loaded.repeats == (f"run copy repeats seed 0 of run {first} bit for bit",)


def test_differing_repeats_of_a_seed_are_a_determinism_failure(store):
    first = record(store, {0: [5.0, 5.0], 1: [1.0, 2.0]}, seed=0)
    drifted = record(store, {0: [5.0, 5.0], 1: [1.0, 2.0000001]}, seed=0)
    with pytest.raises(BaselineError, match=rf"Runs {first} and {drifted} \(.*\) both ran seed 0, but their results differ: sinusoid test "
                                            r"5-shot \(100 queries\), mse after 1 inner step\(s\) differs on 1 of 2 episodes \(largest "
                                            r"difference 1e-07\)\. That is a determinism failure: repeats of one seed count once and must "
                                            r"agree bit for bit; they are never averaged"):
        Baseline.from_store(store, [first, drifted])


def test_runs_on_different_episodes_do_not_combine(store):
    first = record(store, {1: [1.0, 2.0]})
    other = record(store, {1: [1.0, 2.0]}, seed=1, fingerprint=FP_B)
    with pytest.raises(BaselineError, match=r"were evaluated on different episodes \(fingerprints \['aaaaaaaaaaaa'\] vs \['bbbbbbbbbbbb'\]\)"):
        Baseline.from_store(store, [first, other])


def test_unknown_and_failed_runs_are_refused_by_name(store):
    good = record(store, {1: [1.0]})
    failed = record(store, {}, fail=True)
    with pytest.raises(BaselineError, match=rf"Received run id 'nope', but .* has no such run. Its latest completed runs: {good}"):
        Baseline.from_store(store, ["nope"])
    with pytest.raises(BaselineError, match=rf"Run {failed} in .* has status 'failed' \(TrainingDiverged: loss nan\); only completed runs"):
        Baseline.from_store(store, [failed])
    with pytest.raises(BaselineError, match="Received no run ids"):
        Baseline.from_store(store, [])


def test_episode_values_name_the_recorded_steps(store):
    baseline = Baseline.from_store(store, [record(store, {0: [1.0], 1: [2.0]})])
    with pytest.raises(BaselineError, match=r"Received inner_steps=5, but the sinusoid test 5-shot \(100 queries\) results were recorded at inner steps \[0, 1\]"):
        baseline.settings[0].episode_values(5)


@pytest.fixture
def payload(store):
    return Baseline.from_store(store, [record(store, {0: [1.0, 2.0], 1: [0.5, 1.5]})]).to_dict()


def _edit(payload, change):
    edited = copy.deepcopy(payload)
    change(edited)
    return edited


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(format="metabench-baseline/2"), r"has format 'metabench-baseline/2', but this metabench reads 'metabench-baseline/1'. Upgrade metabench"),
        (lambda p: p.update(format="something"), r"is not a metabench baseline \(format 'something', expected 'metabench-baseline/1'\)"),
        (lambda p: p.pop("config"), r"b.json has no 'config'; the file is incomplete"),
        (lambda p: p.update(runs=[]), r"'runs' is empty"),
        (lambda p: p["settings"][0].update(fingerprint="xyz"), r"settings\[0\].fingerprint is 'xyz'; expected 64 lowercase hex digits"),
        (lambda p: p["settings"][0].update(metric="f1"), r"settings\[0\].metric is 'f1'; expected one of \['accuracy', 'mse', 'return'\]"),
        (lambda p: p["settings"][0]["values"].update({"1": [[0.5]]}), r"covers different numbers of episodes per inner-step count: \[1, 2\]"),
        (lambda p: p["settings"][0]["values"].update({"1": [[0.5, 1.0], [0.5, 1.0]]}), r"values\['1'\] has shape \(2, 2\); expected \[1 runs, episodes\]"),
        (lambda p: p["settings"][0]["values"].update({"x": [[0.5, 1.0]]}), r"values has key 'x'; keys are inner-step counts"),
        (lambda p: p["settings"][0].update(headline_steps=3), r"headline_steps is 3, but values were recorded at inner steps \[0, 1\]"),
        (lambda p: p["settings"][0].update(shots="5"), r"settings\[0\].shots is '5' \(str\); expected type int"),
    ],
)
def test_malformed_files_are_refused_naming_the_key(payload, tmp_path, change, message):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_edit(payload, change)))
    with pytest.raises(BaselineError, match=message):
        Baseline.load(path)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(BaselineError, match=r"Cannot read baseline '.*missing.json': no such file. Pass the JSON file written by `metabench baseline save"):
        Baseline.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BaselineError, match=r"Cannot read baseline .*bad.json: Expecting property name"):
        Baseline.load(tmp_path / "bad.json")


def test_config_differences_lists_changed_added_and_removed_keys():
    a = {"seed": 0, "algorithm": {"inner_lr": 0.01, "first_order": False}, "train": {"meta_iterations": 300}}
    b = {"seed": 1, "algorithm": {"inner_lr": 0.01, "first_order": True}, "evaluation": {"seed": 2}}
    assert config_differences(a, b, ignore=["seed"]) == [
        "algorithm.first_order: false -> true",
        "evaluation.seed: (unset) -> 2",
        "train.meta_iterations: 300 -> (unset)",
    ]


def _metabench(*argv) -> int:
    return main(list(argv))


def test_baseline_save_and_show_commands(store, tmp_path, capsys):
    run_id = record(store, {0: [1.0, 2.0], 1: [0.5, 1.5]})
    out = tmp_path / "baselines" / "maml.json"
    assert _metabench("baseline", "save", run_id, "--store", str(store.path), "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert Baseline.load(out).run_ids == [run_id]
    assert _metabench("baseline", "show", str(out)) == 0
    shown = capsys.readouterr().out
    assert "maml on sinusoid (tensorflow, deterministic)" in shown and "fingerprint aaaaaaaaaaaa: mse 0 steps 1.5000, 1 steps 1.0000" in shown
    assert f"recipe {recipe_hash(CONFIG)[:12]}, config " in shown
    assert _metabench("baseline", "show", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"][0]["episodes"] == 2 and summary["recipe_hash"] == recipe_hash(CONFIG) and summary["seeds"] == [0]


def test_baseline_save_refusals_exit_2(store, tmp_path, capsys):
    assert _metabench("baseline", "save", "nope", "--store", str(store.path), "--out", str(tmp_path / "b.json")) == 2
    assert "metabench: error: Received run id 'nope'" in capsys.readouterr().err
    assert _metabench("baseline", "save", "x", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "b.json")) == 2
    assert f"no results store at {tmp_path / 'none.sqlite'}" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()
    first = record(store, {1: [1.0]})
    other = record(store, {1: [1.0]}, config=dict(CONFIG, evaluation={"seed": 1, "episodes": 5}), seed=1)
    assert _metabench("baseline", "save", first, other, "--store", str(store.path), "--out", str(tmp_path / "b.json")) == 2
    assert f"metabench: error: Runs {first} and {other} are different recipes" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
