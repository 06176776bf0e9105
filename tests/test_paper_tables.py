"""`metabench reproduce`: locked paper tables, budgets that are named, and runs shared with sweeps."""

import pytest

from metabench.harness.cli.main import main
from metabench.harness.config import load_config
from metabench.harness.run.paper_tables import names, plan
from metabench.harness.run.sweep import SweepError


def test_the_shipped_tables_include_maml_sinusoid_and_omniglot():
    assert {"maml-sinusoid", "maml-omniglot-5way1shot"} <= set(names())


def test_maml_sinusoid_is_the_papers_protocol_with_three_seeds_of_maml_and_pretrain():
    table = plan("maml-sinusoid")
    by_algorithm = {}
    for run in table.runs:
        algorithm = run.config["algorithm"]
        key = algorithm["name"] + ("-first-order" if algorithm.get("first_order") else "")
        by_algorithm.setdefault(key, []).append(run.config["seed"])
        assert run.config["train"]["meta_iterations"] == 70000 and run.config["train"]["meta_batch_size"] == 25
    # MAML twice: at the paper text's inner lr 0.01 and at the MAML code's default 0.001
    assert by_algorithm == {"maml": [0, 1, 2, 0, 1, 2], "pretrain": [0, 1, 2], "maml-first-order": [0], "mamlpp": [0]}
    assert [run.config["algorithm"]["inner_lr"] for run in table.runs[:6]] == [0.01] * 3 + [0.001] * 3
    # the MAML row is exactly the shipped config, so `metabench run sinusoid_maml` results count
    assert table.runs[0].config_hash == plan("maml-sinusoid").runs[0].config_hash
    from metabench.harness.config import config_hash

    assert table.runs[0].config_hash == config_hash(load_config("sinusoid_maml"))


def test_a_budget_scales_every_run_and_is_named_in_its_label():
    full, tenth = plan("maml-omniglot-5way1shot"), plan("maml-omniglot-5way1shot", 0.1)
    assert [r.config["train"]["meta_iterations"] for r in tenth.runs] == [
        round(r.config["train"]["meta_iterations"] / 10) for r in full.runs
    ]
    assert all("of" in r.label and "iterations" in r.label for r in tenth.runs)
    assert {r.config_hash for r in full.runs}.isdisjoint({r.config_hash for r in tenth.runs})


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5])
def test_a_budget_outside_0_1_is_refused(budget):
    with pytest.raises(SweepError, match=r"expected a fraction in \(0, 1\]"):
        plan("maml-sinusoid", budget)


def test_an_unknown_table_names_the_shipped_ones(capsys):
    with pytest.raises(SweepError, match=r"No paper table 'maml-cifar'.*maml-sinusoid"):
        plan("maml-cifar")
    assert main(["reproduce", "maml-cifar", "--dry-run"]) == 2
    assert "No paper table" in capsys.readouterr().err


def test_dry_run_lists_the_runs_and_what_is_done(tmp_path, capsys):
    assert main(["reproduce", "maml-sinusoid", "--budget", "0.001", "--dry-run", "--store", str(tmp_path / "r.sqlite")]) == 0
    out = capsys.readouterr().out
    assert out.count("pending") == 11 and "11 runs, 0 already completed" in out and "70 of 70,000 iterations" in out
