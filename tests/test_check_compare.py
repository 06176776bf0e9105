"""The check's decision rule on synthetic per-episode results (no training): units, tolerance, tests, refusals."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from metabench.harness.results.baseline_file import Baseline, RunRecord, SettingResults
from metabench.harness.analysis.comparison import CheckError, CheckResult, compare
from metabench.harness.cli.main import main
from metabench.harness.config import config_hash, recipe_hash
from metabench.harness.results.records import Evaluation
from metabench.harness.analysis.stats import holm
from metabench.harness.results.store import ResultsStore
from helpers import record_run

FP_5 = "5" * 64
FP_10 = "a" * 64
CONFIG = {"name": "t", "seed": 0, "backend": "tensorflow", "algorithm": {"name": "maml", "inner_lr": 0.01},
          "engine": {"deterministic": True}, "evaluation": {"seed": 1}}  # fmt: skip
RNG = np.random.default_rng(0)
MSE = RNG.gamma(2.0, 1.5, size=200)  # per-episode MSE of a "baseline", mean about 3
ACC = np.clip(RNG.normal(0.9, 0.05, size=200), 0.0, 1.0)


def results(values, *, metric="mse", fingerprints=(FP_5,), shots=(5,), config=CONFIG, versions=None, steps=1) -> Baseline:
    """A Baseline of one run whose settings hold ``values`` (one array [episodes] per setting) at ``steps``."""
    if isinstance(values, np.ndarray) or not isinstance(values[0], (list, np.ndarray)):
        values = [values]
    settings = tuple(
        SettingResults("sinusoid", "test", None if metric == "mse" else 5, k, 100, fp, metric, steps,
                       {steps: np.asarray(v, dtype=float)[np.newaxis, :], 0: np.zeros((1, len(v)))})
        for v, fp, k in zip(values, fingerprints, shots)
    )  # fmt: skip
    versions = versions or {"tensorflow": "2.21.0"}
    run = RunRecord("r0", config["seed"], config_hash(config), None, "CPU", "", versions)
    return Baseline("maml", "sinusoid", "tensorflow", config, config_hash(config), versions, (run,), settings, source="test")


def test_identical_results_are_unchanged_and_equivalent():
    base = results(MSE)
    result = compare(base, results(MSE.copy()), equivalence=0.1)
    assert isinstance(result, CheckResult)
    assert (result.decision, result.equivalence, result.exit_code) == ("unchanged", "equivalent", 0)
    s = result.settings[0]
    assert (s.difference, s.ci_low, s.ci_high, s.p_worse, s.p_better, s.n) == (0.0, 0.0, 0.0, 1.0, 1.0, 200)
    assert "identical per-episode results (bit-for-bit)" in s.note
    assert "metabench check: UNCHANGED, EQUIVALENT (exit 0)" in result.explanation()


def test_mse_is_compared_in_percent_of_the_baseline_mean():
    result = compare(results(MSE), results(MSE * 1.10))  # 10% worse on every episode
    s = result.settings[0]
    assert s.unit == "% of baseline MSE" and not s.higher_is_better
    assert s.difference == pytest.approx(10.0) and s.gain == pytest.approx(-10.0)
    assert (result.decision, result.exit_code) == ("regressed", 1)
    assert compare(results(MSE), results(MSE * 0.9)).decision == "improved"


def test_accuracy_is_compared_in_percentage_points():
    noise = RNG.normal(0.0, 0.01, size=200)
    result = compare(results(ACC, metric="accuracy"), results(ACC - 0.02 + noise, metric="accuracy"))
    s = result.settings[0]
    assert s.unit == "pp" and s.higher_is_better
    assert s.difference == pytest.approx(100 * np.mean(noise - 0.02))
    assert s.ci_low < s.difference < s.ci_high < 0 and s.ci_level == pytest.approx(0.9)
    assert (result.decision, result.exit_code) == ("regressed", 1)
    assert "difference -" in result.explanation() and " pp (90% CI" in result.explanation()


def test_a_significant_change_within_the_tolerance_is_unchanged():
    base = results(ACC, metric="accuracy")
    worse = results(ACC - 0.003, metric="accuracy")  # 0.3 pp lower on every episode: p = 0
    assert compare(base, worse, tolerance=0.5).decision == "unchanged"
    assert compare(base, worse, tolerance=0.2).decision == "regressed"
    assert compare(base, results(ACC + 0.003, metric="accuracy"), tolerance=0.2).decision == "improved"


def test_a_change_beyond_the_tolerance_must_also_be_significant():
    noise = np.where(np.arange(200) % 2 == 0, 0.3, -0.3)  # mean shift 0.01 buried in noise of +/- 0.3
    candidate = results(np.clip(ACC, 0.3, 0.7) - 0.01 + noise, metric="accuracy")
    result = compare(results(np.clip(ACC, 0.3, 0.7), metric="accuracy"), candidate, tolerance=0.5)
    assert result.settings[0].gain < -0.5 and result.settings[0].p_worse > 0.05
    assert result.decision == "unchanged"


def test_p_values_are_holm_adjusted_over_settings():
    noise = RNG.normal(0.0, 0.3, size=200)
    base = results([MSE, MSE], fingerprints=(FP_5, FP_10), shots=(5, 10))
    candidate = results([MSE * 1.02 + noise, MSE * 1.01 + noise], fingerprints=(FP_5, FP_10), shots=(5, 10))
    result = compare(base, candidate)
    raw = [s.p_worse for s in result.settings]
    assert [s.p_worse_holm for s in result.settings] == pytest.approx(holm(raw).tolist())
    assert "Holm over 2 settings" in result.explanation()


def test_any_regressed_setting_regresses_the_check_and_decides_the_summary():
    base = results([MSE, MSE], fingerprints=(FP_5, FP_10), shots=(5, 10))
    result = compare(base, results([MSE * 0.8, MSE * 1.3], fingerprints=(FP_5, FP_10), shots=(5, 10)))
    assert [s.decision for s in result.settings] == ["improved", "regressed"]
    assert (result.decision, result.exit_code, result.deciding) == ("regressed", 1, 1)
    payload = result.as_dict()
    assert payload["fingerprint"] == FP_10 and payload["difference"] == pytest.approx(30.0)


def test_non_finite_candidate_episodes_regress_and_nan_baseline_episodes_are_left_out():
    diverged = MSE.copy()
    diverged[3] = np.nan
    result = compare(results(MSE), results(diverged))
    assert (result.decision, result.settings[0].non_finite, result.settings[0].n) == ("regressed", 1, 199)
    assert "1 episode(s) where the candidate's mse is not finite (adaptation diverged): regressed" in result.explanation()
    result = compare(results(diverged), results(MSE))
    assert (result.decision, result.settings[0].dropped, result.settings[0].n) == ("unchanged", 1, 199)


def test_equivalence_must_be_shown_not_assumed():
    noise = RNG.normal(0.0, 0.003, size=200)
    base = results(ACC, metric="accuracy")
    close = compare(base, results(ACC + noise, metric="accuracy"), equivalence=0.5)
    assert (close.decision, close.equivalence, close.exit_code) == ("unchanged", "equivalent", 0)
    # 0.4 pp lower: within the tolerance (unchanged) but not provably within +/- 0.3 pp
    shifted = compare(base, results(ACC - 0.004 + noise, metric="accuracy"), equivalence=0.3)
    assert (shifted.decision, shifted.equivalence, shifted.exit_code) == ("unchanged", "not equivalent", 1)
    e = shifted.settings[0].equivalence
    assert e.ci_low < -0.3 and not e.equivalent
    assert shifted.as_dict()["equivalence_p_value"] == pytest.approx(e.pvalue)


def test_fingerprint_mismatch_names_both_fingerprints():
    other = "c" * 64
    with pytest.raises(CheckError, match=rf"Episode fingerprints differ for sinusoid test 5-shot \(100 queries\): the baseline's is {FP_5}, the candidate's is {other}"):
        compare(results(MSE), results(MSE, fingerprints=(other,)))


def test_a_missing_setting_metric_or_step_count_cannot_be_compared():
    base = results([MSE, MSE], fingerprints=(FP_5, FP_10), shots=(5, 10))
    with pytest.raises(CheckError, match=rf"The candidate is not evaluated on the baseline's setting sinusoid test 10-shot \(100 queries\) \(fingerprint {FP_10}\); its settings are: sinusoid test 5-shot \({FP_5}\)"):
        compare(base, results(MSE))
    accuracy = results(ACC, metric="accuracy")
    mse_same_fp = results(MSE)
    mse_same_fp = Baseline(**{**mse_same_fp.__dict__, "settings": (SettingResults(**{**accuracy.settings[0].__dict__, "metric": "mse"}),)})
    with pytest.raises(CheckError, match=r"the baseline recorded accuracy but the candidate mse; they measure different things"):
        compare(accuracy, mse_same_fp)
    with pytest.raises(CheckError, match=r"The baseline has no mse after 7 inner steps .* recorded inner steps \[0, 1\]. Pass --inner-steps one of \[0, 1\]"):
        compare(results(MSE), results(MSE), inner_steps=7)


def test_a_candidate_setting_the_baseline_lacks_is_ignored():
    candidate = results([MSE, MSE], fingerprints=(FP_5, FP_10), shots=(5, 10))
    assert len(compare(results(MSE), candidate).settings) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tolerance": -1}, r"Received tolerance=-1; expected a finite number >= 0"),
        ({"alpha": 0.5}, r"Received alpha=0.5; expected a significance level strictly between 0 and 0.5"),
        ({"equivalence": 0}, r"Received equivalence margin 0; expected a positive number"),
        ({"inner_steps": -1}, r"Received inner_steps=-1; expected an inner-step count >= 0"),
    ],
)
def test_bad_thresholds_are_refused_by_name(kwargs, message):
    with pytest.raises(CheckError, match=message):
        compare(results(MSE), results(MSE), **kwargs)


def test_config_and_library_changes_are_reported_and_another_recipe_is_named():
    changed = dict(copy.deepcopy(CONFIG), algorithm={"name": "maml", "inner_lr": 0.0001}, name="renamed", label="slow")
    result = compare(results(MSE), results(MSE * 1.5, config=changed, versions={"tensorflow": "2.22.0"}))
    assert result.config_differences == ("algorithm.inner_lr: 0.01 -> 0.0001",)  # name and label are display-only
    assert result.version_differences == ("tensorflow 2.21.0 -> 2.22.0",)
    assert not result.same_recipe and result.candidate.recipe_hash == recipe_hash(changed) != result.baseline.recipe_hash
    text = result.explanation()
    assert "config changes: algorithm.inner_lr: 0.01 -> 0.0001" in text and "library changes: tensorflow 2.21.0 -> 2.22.0" in text
    assert f"recipe {recipe_hash(changed)[:12]}: a DIFFERENT recipe from the baseline's {recipe_hash(CONFIG)[:12]}" in text
    payload = result.as_dict()
    assert payload["same_recipe"] is False and payload["candidate"]["recipe_hash"] == recipe_hash(changed)
    same = compare(results(MSE), results(MSE, config=dict(copy.deepcopy(CONFIG), name="renamed")))
    assert same.same_recipe and same.config_differences == () and ": the baseline's recipe" in same.explanation()


# ----------------------------------------------------------------------------- several seeds


def seeds(values_by_seed: dict, *, config=CONFIG, ids=None, steps=1) -> Baseline:
    """A Baseline of one run per seed (rows in the dict's order), one mse setting at ``steps``."""
    order = list(values_by_seed)
    rows = np.stack([np.asarray(values_by_seed[s], dtype=float) for s in order])
    setting = SettingResults("sinusoid", "test", None, 5, 100, FP_5, "mse", steps, {steps: rows, 0: np.zeros_like(rows)})
    ids = ids or [f"r{s}" for s in order]
    runs = tuple(RunRecord(i, s, config_hash(dict(config, seed=s)), None, "CPU", "", {"tensorflow": "2.21.0"}) for i, s in zip(ids, order))
    return Baseline("maml", "sinusoid", "tensorflow", config, config_hash(config), {"tensorflow": "2.21.0"}, runs, (setting,), source="test")


SEED_1 = MSE[::-1].copy()  # another seed's per-episode MSE: differs episode by episode


def test_the_same_seeds_give_identical_results_whatever_their_order():
    base = seeds({0: MSE, 1: SEED_1})
    result = compare(base, seeds({1: SEED_1, 0: MSE}), rerun=False)
    assert (result.decision, result.exit_code, result.seeds) == ("unchanged", 0, (0, 1))
    s = result.settings[0]
    assert (s.difference, s.ci_low, s.ci_high) == (0.0, 0.0, 0.0) and "bit-for-bit" in s.note
    assert s.per_seed == ((0, 0.0), (1, 0.0))
    assert result.seeds_compared == "compared seeds 0, 1 (the candidate's runs of the same seeds, seed by seed)"
    text = result.explanation()
    assert "  compared seeds 0, 1 (the candidate's runs of the same seeds, seed by seed)" in text
    assert "maml on sinusoid, seeds 0, 1, recipe" in text and "difference per seed: seed 0 +0.000%, seed 1 +0.000%" in text
    assert compare(base, seeds({0: MSE, 1: SEED_1}), rerun=True).seeds_compared == "compared seeds 0, 1 (re-ran both)"
    assert compare(seeds({0: MSE}), seeds({0: MSE}), rerun=True).seeds_compared == "compared seed 0 (re-ran it)"
    payload = compare(base, seeds({0: MSE, 1: SEED_1}), rerun=True).as_dict()
    assert payload["seeds"] == [0, 1] and payload["seeds_compared"] == "compared seeds 0, 1 (re-ran both)"
    assert payload["settings"][0]["per_seed"] == [{"seed": 0, "difference": 0.0}, {"seed": 1, "difference": 0.0}]
    assert payload["baseline"]["seeds"] == [0, 1] and payload["same_recipe"] is True


def test_a_two_seed_baseline_is_not_compared_with_one_seed():
    # The bug this guards against: seed 0 alone against the mean of seeds 0 and 1 looked like a large regression.
    base = seeds({0: MSE, 1: SEED_1})
    with pytest.raises(CheckError, match=r"The baseline holds seed\(s\) 0, 1, but the candidate run\(s\) r0 hold seed\(s\) 0: "
                                         r"missing seed\(s\) 1; extra seed\(s\) none\. A check compares the same seeds on both sides"):
        compare(base, seeds({0: MSE}))
    with pytest.raises(CheckError, match=r"missing seed\(s\) none; extra seed\(s\) 2\."):
        compare(base, seeds({0: MSE, 1: SEED_1, 2: MSE}))
    with pytest.raises(CheckError, match=r"missing seed\(s\) 1; extra seed\(s\) 2\. .*Pass one completed run per baseline seed"):
        compare(base, seeds({0: MSE, 2: SEED_1}))


def test_per_seed_differences_show_which_seed_changed():
    result = compare(seeds({0: MSE, 1: SEED_1}), seeds({0: MSE, 1: SEED_1 * 1.2}))
    s = result.settings[0]
    reference = np.mean((MSE + SEED_1) / 2)
    assert s.per_seed[0] == (0, 0.0) and s.per_seed[1][1] == pytest.approx(100 * 0.2 * SEED_1.mean() / reference)
    assert s.difference == pytest.approx(100 * 0.1 * SEED_1.mean() / reference)  # the decision uses the per-seed averages
    assert result.decision == "regressed"


def test_json_has_the_decision_difference_ci_p_value_and_n():
    payload = compare(results(MSE), results(MSE * 1.1)).as_dict()
    text = json.dumps(payload, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text)["decision"] == "regressed"
    for key in ("decision", "exit_code", "difference", "ci_low", "ci_high", "ci_level", "p_value", "n", "unit", "settings"):
        assert key in payload
    assert payload["n"] == 200 and payload["p_value"] < 0.05 and payload["ci_low"] < 10.0 + 1e-9 < payload["ci_high"] + 2e-9


# ----------------------------------------------------------------------------- the command, on stored runs


def _record(store, values, seed=0, config=CONFIG) -> str:
    config = dict(copy.deepcopy(config), seed=seed)
    evaluation = Evaluation("test", None, 5, 100, FP_5, "mse", 1, {0: np.zeros(len(values)), 1: np.asarray(values)})
    return record_run(store, [evaluation], seed=seed, config=config, versions={"tensorflow": "2.21.0"})


def _metabench(*argv) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check-cli")
    with ResultsStore(folder / "results.sqlite") as store:
        base, same, worse = _record(store, MSE), _record(store, MSE, seed=0), _record(store, MSE * 1.2)
        Baseline.from_store(store, [base]).save(folder / "baseline.json")
    return folder, same, worse


def test_check_command_exit_codes_on_stored_runs(stored, capsys):
    folder, same, worse = stored
    common = ("check", "--baseline", str(folder / "baseline.json"), "--store", str(folder / "results.sqlite"))
    assert _metabench(*common, "--run", same) == 0
    assert "metabench check: UNCHANGED (exit 0)" in capsys.readouterr().out
    assert _metabench(*common, "--run", worse, "--json") == 1
    payload = json.loads(capsys.readouterr().out)
    assert (payload["decision"], payload["exit_code"], payload["n"]) == ("regressed", 1, 200)
    assert payload["difference"] == pytest.approx(20.0) and payload["candidate"]["run_ids"] == [worse]


def test_check_command_cannot_compare_exits_2(stored, tmp_path, capsys):
    folder, same, _ = stored
    baseline = str(folder / "baseline.json")
    assert _metabench("check", "--baseline", baseline, "--store", str(folder / "results.sqlite"), "--run", same, "--set", "seed=1") == 2
    assert "could not compare: Received overrides ['seed=1'] with runs" in capsys.readouterr().err
    assert _metabench("check", "--baseline", baseline, "--store", str(tmp_path / "none.sqlite"), "--run", same, "--json") == 2
    captured = capsys.readouterr()
    assert f"No results store at {tmp_path / 'none.sqlite'}" in captured.err
    payload = json.loads(captured.out)
    assert (payload["decision"], payload["exit_code"]) == (None, 2) and "No results store" in payload["error"]
    assert _metabench("check", "--baseline", str(tmp_path / "missing.json"), "--run", same) == 2
    assert "could not compare: Cannot read baseline" in capsys.readouterr().err
    assert _metabench("check", "--baseline", baseline, "--store", str(folder / "results.sqlite"), "--run", same, "--alpha", "0.7") == 2
    assert "Received alpha=0.7" in capsys.readouterr().err


def test_check_command_compares_a_two_seed_baseline_seed_by_seed(tmp_path, capsys):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        b0, b1 = _record(store, MSE, seed=0), _record(store, SEED_1, seed=1)
        c1, c0 = _record(store, SEED_1, seed=1), _record(store, MSE, seed=0)
        again = _record(store, MSE, seed=0)
        drifted = _record(store, MSE * (1 + 1e-12), seed=0)  # seed 0 once more, off in the 12th digit
    baseline = tmp_path / "baseline.json"
    assert _metabench("baseline", "save", b0, b1, "--store", str(path), "--out", str(baseline)) == 0
    capsys.readouterr()
    common = ("check", "--baseline", str(baseline), "--store", str(path))
    assert _metabench(*common, "--run", c1, "--run", c0, "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["decision"], payload["exit_code"], payload["difference"], payload["seeds"]) == ("unchanged", 0, 0.0, [0, 1])
    assert payload["seeds_compared"] == "compared seeds 0, 1 (the candidate's runs of the same seeds, seed by seed)"
    assert payload["candidate"]["seeds"] == [1, 0] and payload["candidate"]["run_ids"] == [c1, c0]
    # one seed against a two-seed baseline: refused, naming the missing seed
    assert _metabench(*common, "--run", c0) == 2
    assert "could not compare: The baseline holds seed(s) 0, 1, but the candidate run(s) " in capsys.readouterr().err
    # a repeat of seed 0 that agrees bit for bit counts once, and says so
    assert _metabench(*common, "--run", c0, "--run", again, "--run", c1) == 0
    out = capsys.readouterr().out
    assert out.startswith("metabench check: UNCHANGED (exit 0)")
    assert f"note: candidate run {again} repeats seed 0 of run {c0} bit for bit; counted once" in out
    # a repeat that differs is a determinism failure, for a candidate and for a baseline
    assert _metabench(*common, "--run", c0, "--run", drifted, "--run", c1) == 2
    assert re.search(rf"could not compare: Runs {c0} and {drifted} \(.*\) both ran seed 0, but their results differ: .* That is a "
                     r"determinism failure", capsys.readouterr().err)  # fmt: skip
    assert _metabench("baseline", "save", b0, drifted, "--store", str(path), "--out", str(tmp_path / "never.json")) == 2
    assert "determinism failure" in capsys.readouterr().err and not (tmp_path / "never.json").exists()
