"""Paper reproduction: the shipped published numbers, verdicts, matching our results, protocol
differences, and "no published number" rather than an invented one."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from metabench.harness.analysis.reproduction import (
    PublishedResultsError,
    load_published,
    reproduction_table,
    verdict,
    write_reproduction,
)
from metabench.harness.results.records import CurvePoint, Evaluation
from metabench.harness.results.store import ResultsStore
from helpers import record_run

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "published_results.toml"
OUR_NAMES = {"maml", "mamlpp", "baseline", "baseline++", "pretrain", "multitask", "reptile", "protonet", "anil"}


# ----------------------------------------------------------------------------- the shipped numbers


def test_shipped_numbers_have_sources_kinds_and_our_names():
    published = load_published()
    assert "shipped" in published.origin
    assert all(r.source and r.evidence and r.paper for r in published.results)
    assert {r.ours for r in published.results} <= OUR_NAMES
    by_key = {(r.dataset, r.ways, r.shots, r.algorithm, r.test_grad_steps): r for r in published.results}
    maml = by_key[("Omniglot", 5, 1, "MAML", 3)]
    assert (maml.value, maml.pm, maml.pm_kind, maml.protocol["test_queries"]) == (98.7, 0.4, "ci95", 1)
    assert {(r.ways, r.shots, r.value) for r in published.results if r.dataset == "Omniglot" and r.algorithm == "MAML"} == {
        (5, 1, 98.7), (5, 5, 99.9), (20, 1, 95.8), (20, 5, 98.9)}  # fmt: skip
    mamlpp = by_key[("miniImageNet", 5, 1, "MAML++", 5)]
    assert (mamlpp.pm_kind, mamlpp.pm_seeds) == ("std-seeds", 3)
    assert mamlpp.half_width_95() == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.26 / math.sqrt(3))
    sinusoid = sorted((r.test_grad_steps, r.value) for r in published.results if r.dataset == "sinusoid" and r.ours == "maml")
    assert sinusoid == [(1, 0.67), (5, 0.38), (10, 0.35)]
    assert all(r.pm_kind == "none" and r.ways is None for r in published.results if r.dataset == "sinusoid")
    assert {(r.algorithm, r.shots) for r in published.results if r.ours in ("baseline", "baseline++") and r.dataset == "miniImageNet"} == {
        ("Baseline", 1), ("Baseline", 5), ("Baseline++", 1), ("Baseline++", 5)}  # fmt: skip
    assert {(u.dataset, u.shots, u.ours) for u in published.unpublished} == {
        ("sinusoid", 10, "maml"), ("sinusoid", 10, "pretrain"), ("sinusoid", 5, "maml"), ("Omniglot", 1, "maml"),
        ("Omniglot", 5, "maml"), ("Omniglot", 1, "anil")}  # fmt: skip
    # the MAML paper's rows name their order: second order for "MAML", first order for its approximation
    orders = {(r.dataset, r.shots, r.algorithm): r.ours_options.get("first_order") for r in published.results if r.ours == "maml"}
    assert orders[("Omniglot", 1, "MAML")] is False and orders[("sinusoid", 5, "MAML")] is False
    assert orders[("miniImageNet", 1, "MAML, first-order approximation")] is True
    assert all(u.ours_options == {"first_order": True} for u in published.unpublished if u.dataset == "Omniglot" and u.ours == "maml")
    # Reptile's rows name their evaluation; ProtoNets' carry no published uncertainty
    modes = {(r.ways, r.algorithm): r.ours_options for r in published.results if r.ours == "reptile"}
    assert modes[(5, "Reptile")] == {"evaluation": "non_transductive"} and modes[(5, "Reptile + transduction")] == {"evaluation": "transductive"}
    assert {(r.ways, r.value, r.pm_kind) for r in published.results if r.ours == "protonet"} == {(5, 98.8, "none"), (20, 96.0, "none")}


def test_shipped_numbers_agree_with_the_shared_reference_file():
    if not REFERENCE.is_file():
        pytest.skip(f"reference file not found at {REFERENCE}")
    reference = load_published(REFERENCE)
    assert len(reference.results) > 50  # variable-way Meta-Dataset rows are skipped, not errors
    def key(r, algorithm=None):
        steps = r.test_grad_steps if r.metric == "mse" else None  # our copy adds test steps to classification rows
        return (r.paper, r.dataset, r.ways, r.shots, algorithm or r.algorithm, steps)

    index = {key(r): r for r in reference.results}
    for ours in load_published().results:
        theirs = index.get(key(ours)) or index[key(ours, "MAML")]  # our copy names Closer Look's MAML explicitly
        assert (ours.value, ours.pm) == (theirs.value, theirs.pm), ours


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[result]]\npaper = 'p'\ndataset = 'd'\nshots = 1\nalgorithm = 'a'\n", r"entry 1 lacks the key 'source'"),
        ("[[result]]\npaper = 'p'\ndataset = 'd'\nways = 5\nshots = 1\nalgorithm = 'a'\nsource = 's'\n",
         r"entry 1 needs exactly one of 'accuracy_percent' and 'mse'"),
        ("[[result]]\npaper = 'p'\ndataset = 'd'\nways = 5\nshots = 1\nalgorithm = 'a'\nsource = 's'\naccuracy_percent = 'high'\n",
         r"'value' must be a finite number; received 'high'"),
        ("[[result]\n", r"Malformed TOML"),
        ("[[unpublished]]\ndataset = 'd'\n", r"\[\[unpublished\]\] entry 1 lacks the key 'shots'"),
    ],
)  # fmt: skip
def test_malformed_published_files_name_the_entry_and_key(tmp_path, text, message):
    path = tmp_path / "published.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PublishedResultsError, match=message):
        load_published(path)
    with pytest.raises(PublishedResultsError, match=r"No published-results file at"):
        load_published(tmp_path / "none.toml")


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((98.5, 0.2, 98.7, 0.4), {"paper_pm": 0.4}, "inside the paper's interval"),
        ((98.2, 0.3, 98.7, 0.4), {"paper_pm": 0.4}, "statistically indistinguishable (two-interval rule)"),  # 0.5 <= 0.5
        ((97.0, 0.3, 98.7, 0.4), {"paper_pm": 0.4}, "below the paper (worse)"),
        ((99.5, 0.1, 98.7, 0.4), {"paper_pm": 0.4}, "above the paper (better)"),
        ((52.0, 0.8, 52.15, 0.65), {"paper_pm": 0.26, "pm_kind": "std-seeds"}, "inside the paper's ± (one seed std)"),
        ((0.40, 0.05, 0.38, 0.0), {"pm_kind": "none", "higher_is_better": False},
         "statistically indistinguishable (two-interval rule)"),  # paper inside our CI
        ((0.30, 0.02, 0.38, 0.0), {"pm_kind": "none", "higher_is_better": False}, "below the paper (better)"),
        ((0.50, 0.02, 0.38, 0.0), {"pm_kind": "none", "higher_is_better": False}, "above the paper (worse)"),
        ((math.nan, math.nan, 98.7, 0.4), {"paper_pm": 0.4}, "not comparable: our result is not finite"),
        # 258 +- 502 against 0.38: the interval would call any number indistinguishable
        ((258.0, 502.0, 0.38, 0.0), {"pm_kind": "none", "higher_is_better": False},
         "not comparable: our 95% CI is as wide as the paper's value (a few episodes dominate our mean)"),
        ((0.40, 0.379, 0.38, 0.0), {"pm_kind": "none", "higher_is_better": False},
         "statistically indistinguishable (two-interval rule)"),  # just narrower than the paper's value
    ],
)  # fmt: skip
def test_verdicts(args, kwargs, expected):
    assert verdict(*args, **kwargs) == expected


# ----------------------------------------------------------------------------- tables from a store


def _config(algorithm, dataset, seed=0, iterations=300):
    return {"seed": seed, "dataset": {"name": dataset, "split_scheme": "maml"}, "model": {"name": "conv4", "filters": 64},
            "algorithm": {"name": algorithm, "first_order": False},
            "train": {"meta_iterations": iterations, "meta_batch_size": 32}}  # fmt: skip


def _add(store, algorithm, dataset, evaluations, seed=0):
    record_run(store, evaluations, algorithm=algorithm, dataset=dataset, seed=seed, config=_config(algorithm, dataset, seed),
               config_hash=f"{seed:064x}", curve=[CurvePoint(1, 1.0, 0.5, 0.1)])  # fmt: skip


def _omniglot(mean, *, ways=5, shots=1, split="test", fingerprint="f" * 64, n=600):
    values = np.full(n, mean)
    values[: n // 2] += 0.01
    values[n // 2 :] -= 0.01
    return Evaluation(split, ways, shots, 15, fingerprint, "accuracy", 3, {0: values - 0.5, 3: values})


def _sinusoid(shots, mse_by_steps, n=600):
    rng = np.random.default_rng(shots)
    values = {s: np.full(n, m) + rng.normal(0, 0.01, n) for s, m in mse_by_steps.items()}
    return Evaluation("test", None, shots, 100, f"s{shots}" * 32, "mse", 1, values)


@pytest.fixture
def store(store):
    """The shared store (conftest.py) holding these runs:"""
    _add(store, "maml", "omniglot", [_omniglot(0.985)])
    _add(store, "maml", "omniglot", [_omniglot(0.90, ways=20, shots=5, fingerprint="g" * 64)])
    _add(store, "mamlpp", "omniglot", [_omniglot(0.995)], seed=0)
    _add(store, "mamlpp", "omniglot", [_omniglot(0.993)], seed=1)
    _add(store, "reptile", "omniglot", [_omniglot(0.95)])
    _add(store, "maml", "omniglot", [_omniglot(0.95, split="val", fingerprint="h" * 64)])
    _add(store, "maml", "sinusoid", [_sinusoid(5, {0: 3.0, 1: 0.70, 5: 0.38, 10: 0.30}), _sinusoid(10, {0: 3.0, 1: 0.5, 5: 0.3, 10: 0.2})])
    return store


def test_every_result_is_compared_or_listed_with_a_reason(store):
    compared, unmatched = reproduction_table(store.episode_metrics(), store.runs(), load_published())
    keys = {(r["dataset"], r["ways"] if r["ways"] is not None and not isinstance(r["ways"], float) else None, r["shots"], r["algorithm"], r["inner_steps"])
            for r in compared.to_dict("records")}  # fmt: skip
    assert ("omniglot", 5, 1, "maml", 3) in keys and ("omniglot", 20, 5, "maml", 3) in keys
    assert {("sinusoid", None, 5, "maml", s) for s in (1, 5, 10)} <= keys
    notes = {(r["dataset"], r["algorithm"], r["shots"], r["split"]): r["note"] for r in unmatched.to_dict("records")}
    assert notes[("omniglot", "reptile", 1, "test")] == "no published number"
    assert notes[("sinusoid", "maml", 10, "test")].startswith("no published number: The MAML paper shows K = 10")
    assert "'val' split" in notes[("omniglot", "maml", 1, "val")]


def test_numbers_units_and_verdicts(store):
    compared, _ = reproduction_table(store.episode_metrics(), store.runs(), load_published())
    rows = {(r["dataset"], r["shots"], r["algorithm"], r["inner_steps"], r["paper_algorithm"]): r for r in compared.to_dict("records")}
    maml = rows[("omniglot", 1, "maml", 3, "MAML")]
    assert maml["ours_mean"] == pytest.approx(98.5) and maml["paper_value"] == 98.7
    assert maml["ours_half95"] == pytest.approx(1.96 * 1.0 / math.sqrt(600))  # std0 of +-1 point is 1 point
    assert maml["difference"] == pytest.approx(-0.2)
    assert maml["verdict"] == "inside the paper's interval"
    assert rows[("omniglot", 5, "maml", 3, "MAML")]["verdict"] == "below the paper (worse)"  # 90.0 vs 98.9 (20-way 5-shot)
    sinusoid = {steps: rows[("sinusoid", 5, "maml", steps, "MAML")] for steps in (1, 5, 10)}
    assert [sinusoid[s]["paper_value"] for s in (1, 5, 10)] == [0.67, 0.38, 0.35]
    assert sinusoid[1]["verdict"] == "above the paper (worse)"  # MSE 0.70 vs 0.67, our CI about +-0.001
    assert sinusoid[10]["verdict"] == "below the paper (better)"
    assert sinusoid[5]["paper_pm_kind"] == "none"
    # MAML++ Omniglot has no published +-: two seeds, compared by the two-interval rule with h_paper = 0
    mamlpp = rows[("omniglot", 1, "mamlpp", 3, "MAML++")]
    assert mamlpp["seeds"] == 2 and mamlpp["ours_mean"] == pytest.approx(99.4)


def test_protocol_differences_are_listed(store):
    compared, _ = reproduction_table(store.episode_metrics(), store.runs(), load_published())
    maml = compared[(compared["algorithm"] == "maml") & (compared["ways"] == 5)].iloc[0]
    text = "\n".join(maml["protocol_differences"])
    assert "query set: the paper tests with 1 per class, we use 15" in text
    assert "meta-training iterations run: ours 300, the paper's 60,000" in text
    assert "checkpoint: the paper evaluated the best validation accuracy" in text and "we evaluate the final weights" in text
    assert "split: the paper's is 1200 train characters" in text and "split_scheme maml" in text
    mamlpp = compared[compared["algorithm"] == "mamlpp"].iloc[0]
    text = "\n".join(mamlpp["protocol_differences"])
    assert "inner steps at test: the paper reports 5; we evaluated [0, 3], so ours is at 3" in text
    assert "ensemble of the top-3 validation checkpoints" in text
    assert "training seeds: the paper's number comes from 3, ours from 2" in text


def test_write_reproduction_markdown(store, tmp_path):
    path = write_reproduction(store, tmp_path / "reports")
    assert path == tmp_path / "reports" / "reproduction.md"
    text = path.read_text()
    assert text.startswith("# Paper reproduction")
    assert "## Compared with published numbers" in text and "### Protocol differences that remain" in text
    assert re.search(r"\| omniglot 5-way 1-shot \(test split, 15 queries\) +\| maml +\|", text)
    assert "98.70" in text and "± 0.40 (95% CI over episodes)" in text and "98.50 ± 0.08" in text
    assert "inside the paper's interval" in text
    assert "## Results with no published number" in text
    assert "sinusoid 10-shot (test split, 100 queries)" in text and "no published number" in text
    assert "Source: MAML paper Table 1." in text
    assert "none published" in text  # sinusoid and MAML++ Omniglot have no published +-


def test_std_over_seeds_uses_our_seed_interval(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        for seed, mean in ((0, 0.52), (1, 0.525), (2, 0.515)):
            _add(opened, "mamlpp", "miniimagenet", [_omniglot(mean)], seed=seed)
        compared, _ = reproduction_table(opened.episode_metrics(), opened.runs(), load_published())
    row = compared[compared["shots"] == 1].iloc[0]
    assert row["paper_pm_kind"] == "std-seeds" and row["ours_interval"] == "95% t-CI over 3 seed means"
    assert row["ours_half95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.5 / math.sqrt(3))  # seed means 52, 52.5, 51.5
    assert row["verdict"] == "inside the paper's ± (one seed std)"


def test_reptile_is_compared_only_with_the_row_of_its_evaluation_mode(tmp_path):
    def add(mode, mean):
        config = {"seed": 0, "dataset": {"name": "omniglot"}, "algorithm": {"name": "reptile", "evaluation": mode},
                  "train": {"meta_iterations": 300}}  # fmt: skip
        accuracy = _omniglot(mean).values[3]  # Reptile's rows are for 50 test-time steps
        evaluation = Evaluation("test", 5, 1, 15, "f" * 64, "accuracy", 50, {0: accuracy - 0.5, 50: accuracy})
        record_run(opened, [evaluation], algorithm="reptile", dataset="omniglot", seed=0, config=config, config_hash=f"{len(mode):064x}",
                   curve=[CurvePoint(1, 1.0, 0.5, 0.1)])  # fmt: skip

    with ResultsStore(tmp_path / "r.sqlite") as opened:
        add("non_transductive", 0.95)
        add("transductive", 0.97)
        compared, _ = reproduction_table(opened.episode_metrics(), opened.runs(), load_published())
    rows = compared[(compared["ways"] == 5) & (compared["shots"] == 1)].set_index("paper_algorithm")
    assert rows.loc["Reptile", "label"] == 'reptile (evaluation="non_transductive")'
    assert rows.loc["Reptile", "ours_mean"] == pytest.approx(95.0)
    assert rows.loc["Reptile + transduction", "label"] == 'reptile (evaluation="transductive")'
    assert rows.loc["Reptile + transduction", "ours_mean"] == pytest.approx(97.0)


def test_an_empty_store_says_so(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as opened:
        text = write_reproduction(opened, tmp_path).read_text()
    assert "No completed runs in this store yet" in text


def test_recipes_are_compared_apart_and_seeds_pooled_per_recipe(tmp_path):
    def add(seed, first_order, mean):
        config = {"seed": seed, "dataset": {"name": "omniglot"}, "algorithm": {"name": "maml", "first_order": first_order},
                  "train": {"meta_iterations": 300}}  # fmt: skip
        record_run(opened, [_omniglot(mean)], dataset="omniglot", seed=seed, config=config, config_hash=f"{seed:064x}",
                   curve=[CurvePoint(1, 1.0, 0.5, 0.1)])  # fmt: skip

    with ResultsStore(tmp_path / "r.sqlite") as opened:
        add(0, False, 0.985)
        add(1, False, 0.975)
        add(1, False, 0.975)  # seed 1 again, identical: counted once
        add(0, True, 0.90)
        add(0, True, 0.91)  # seed 0 of FOMAML again, different: a determinism failure
        compared, unmatched = reproduction_table(opened.episode_metrics(), opened.runs(), load_published())
        text = write_reproduction(opened, tmp_path).read_text()
    rows = compared[(compared["ways"] == 5) & (compared["shots"] == 1) & (compared["paper_algorithm"] == "MAML")]
    # the MAML paper's Omniglot number is second order: only the second-order recipe is compared with it
    assert list(rows["label"]) == ["maml (first_order=false)"]
    assert rows["seeds"].iloc[0] == 2
    assert rows["ours_mean"].iloc[0] == pytest.approx(98.0)  # (98.5 + 97.5) / 2 per seed
    assert not (compared["label"] == "maml (first_order=true)").any()
    first_order = unmatched.set_index("label").loc["maml (first_order=true)"]
    assert first_order["seeds"] == 1 and first_order["mean"] == pytest.approx(90.5)
    assert "first-order approximation on miniImageNet only" in first_order["note"]
    assert "determinism failure: seed 0 ran 2x with different results" in first_order["note"]
    assert "| maml (first_order=true) " in text and first_order["recipe_hash"][:12] in text
