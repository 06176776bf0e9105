"""The command line as people expect it: one error type caught in one place, a quiet and quick start,
one JSON document on stdout, TOML ``--set`` values, ``algorithm.name`` overrides from the new
algorithm's defaults, ``metabench conformance``, ``stats`` on a report's leaderboard, single points
drawn as markers and diverged differences printed as such."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metabench.harness.cli.main import _ABSL_LINE, _absl_lines_filtered, _join_split_values, main
from metabench.harness.config import ConfigError, load_config, resolve_component
from metabench.harness.errors import MetabenchError, UsageError

HARNESS = Path(__file__).resolve().parents[1] / "harness"


# ----------------------------------------------------------------------------------- one error type


def _exception_classes() -> dict[str, type]:
    """Every exception class defined in metabench's packages, by qualified name."""
    found = {}
    for package in ("metabench.harness", "metabench.algorithms", "metabench.datasets"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            try:
                module = importlib.import_module(info.name)
            except ImportError as error:  # an optional dependency (e.g. JAX) is not installed
                if "metabench" in str(error):
                    raise
                continue
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    found[f"{info.name}.{name}"] = value
    return found


def test_every_exception_class_of_the_package_is_a_metabench_error_and_keeps_its_builtin_base():
    classes = _exception_classes()
    assert len(classes) >= 15, sorted(classes)  # the walk found them: the check bites
    interrupts = {name for name, cls in classes.items() if issubclass(cls, KeyboardInterrupt)}
    assert interrupts == {"metabench.harness.run.core.RunInterrupted"}  # a signal, not an error: stays a KeyboardInterrupt
    strays = sorted(name for name, cls in classes.items() if name not in interrupts and not issubclass(cls, MetabenchError))
    assert not strays, f"exception classes that do not derive from MetabenchError: {strays}"
    from metabench.harness.config import ConfigError
    from metabench.harness.registry import RegistryError
    from metabench.harness.results.store import StoreError

    assert issubclass(ConfigError, ValueError) and issubclass(RegistryError, KeyError) and issubclass(StoreError, RuntimeError)


def test_the_errors_module_imports_nothing_heavy():
    code = "import sys; import metabench.harness.errors; print(sorted(m for m in ('numpy', 'keras', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "quickstart", "--set", "engine.deterministic=False", "--print-config"],
         "metabench: error: Received engine.deterministic='False' (str); expected a bool, written in TOML as true or false"),
        (["report", "--store", "{tmp}/missing.sqlite", "--out", "{tmp}/out"],
         "metabench: error: no results store at '{tmp}/missing.sqlite'; run `metabench run` first or pass --store PATH."),
        (["export", "--out", "{tmp}/b.jsonl.gz", "--store", "{tmp}/s.sqlite"],
         "metabench: error: received no run id; name the runs to export (RUN_ID...) or pass --all."),
        (["baseline", "show", "{tmp}/nope.json"], "metabench: error: "),
        (["stats", "{tmp}/nope.csv", "--alpha", "2"],
         "metabench: error: Received --alpha 2.0; expected a significance level strictly between 0 and 1, e.g. 0.05."),
        (["sweep", "{tmp}/nope.toml", "--dry-run"], "metabench: error: "),
        (["conformance", "no_such_algorithm"], "metabench: error: Unknown algorithm 'no_such_algorithm'"),
    ],
)  # fmt: skip
def test_a_metabench_error_is_one_line_on_stderr_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(_error_lines(captured.err)) == 1 and lines[-1].startswith(message.replace("{tmp}", str(tmp_path))), captured.err


def test_only_the_cli_prints_metabench_error_by_hand():
    """The CLI catches MetabenchError once; the two commands that print one themselves have a reason:
    ``check`` also answers --json with the error, ``episodes verify`` exits 1 for a broken rule."""
    printing = sorted(
        str(path.relative_to(HARNESS)) for path in HARNESS.rglob("*.py") if "metabench: error:" in path.read_text(encoding="utf-8")
    )
    assert printing == ["cli/check.py", "cli/episodes.py", "cli/main.py"]


def test_usage_error_is_a_value_error_and_a_metabench_error():
    assert issubclass(UsageError, ValueError) and issubclass(UsageError, MetabenchError)


# ---------------------------------------------------------------------------------------- quiet start


@pytest.mark.parametrize("argv", [["--help"], ["list"]])
def test_help_and_list_answer_quickly_without_tensorflow(argv):
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from metabench.harness.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "seconds = time.perf_counter() - started\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'pandas', 'matplotlib') if m in sys.modules)\n"
        "print('RESULT', seconds, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = done.stderr.strip().splitlines()[-1].split(" ", 2)
    assert result[0] == "RESULT" and result[2] == "[]", done.stderr
    assert float(result[1]) < 10.0  # under 2 s on an idle machine; loose here, the suite runs beside trainings
    assert "metabench" in done.stdout


def test_absl_lines_are_filtered_from_file_descriptor_2_and_everything_else_kept(capfd):
    with _absl_lines_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796140043.333407    2653 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796140052.601410    2653 cuda_platform.cc:52] failed call to cuInit\n")
        os.write(2, b"a warning of our own\n")
    err = capfd.readouterr().err
    assert err == "a warning of our own\n"
    assert _ABSL_LINE.match("W0000 00:00:1700000000.1 12 some/dir/file.cc:7] x")
    assert not _ABSL_LINE.match("Started run 20260101-000000-00000000 (maml on sinusoid, seed 0).")


def test_tensorflow_log_level_is_set_unless_verbose(monkeypatch, capsys):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert main(["--verbose", "list"]) == 0
    assert main(["list", "--verbose"]) == 0  # after the command too
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert main(["list"]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert sys.meta_path[0].__class__.__name__ != "_QuietImports"  # the import filter is removed after the command


@pytest.mark.slow  # 18 s (pytest -m slow)
def test_a_run_prints_no_library_log_lines_and_one_json_document(tmp_path):
    """A fresh process, as a user runs it: nothing of TensorFlow's on stderr, exactly one JSON document on
    stdout naming every setting's result (the progress bar on stderr), and one line per event of the run."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [sys.executable, "-m", "metabench.harness.cli", "run", "quickstart", "--set", "train.meta_iterations=3",
            "--set", "evaluation.episodes=5", "--set", "evaluation.shots=[5,", "10]", "--store", str(tmp_path / "s.sqlite"),
            "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    absl = [line for line in done.stderr.splitlines() if _ABSL_LINE.match(line)]
    assert not absl, absl
    summary = json.loads(done.stdout)
    assert [s["shots"] for s in summary["settings"]] == [5, 10]
    assert all(set(s["by_inner_steps"]) == {"0", "1", "5", "10"} for s in summary["settings"])
    assert summary["mean"] == summary["settings"][0]["mean"]
    assert "meta-training" in done.stderr  # the progress bar goes to stderr
    run_id = summary["run_id"]
    assert [line for line in done.stderr.splitlines() if run_id in line and "tart" in line] == [
        f"Started run {run_id} (maml on sinusoid, seed 0)."
    ]


# ------------------------------------------------------------------------------------- --set as TOML


def test_set_values_are_toml_and_a_type_error_says_how_to_write_one():
    config = load_config("quickstart", ["engine.deterministic=true", "evaluation.shots=[5, 10]", 'name="text"'])
    assert config["engine"]["deterministic"] is True and config["evaluation"]["shots"] == [5, 10] and config["name"] == "text"
    with pytest.raises(ConfigError, match=r"Received engine\.deterministic='False' \(str\); expected a bool, written in "
                                          r"TOML as true or false \(e\.g\. --set engine\.deterministic=true\)\."):
        load_config("quickstart", ["engine.deterministic=False"])
    with pytest.raises(ConfigError, match=r"Received train\.meta_iterations='many' \(str\); expected an integer, written "
                                          r"in TOML as 1000 \(e\.g\. --set train\.meta_iterations=1000\)\."):
        load_config("quickstart", ["train.meta_iterations=many"])
    with pytest.raises(ConfigError, match=r"Received evaluation\.inner_steps=\[True\]; expected a list of integers, written "
                                          r"in TOML as \[0, 1\] \(e\.g\. --set 'evaluation\.inner_steps=\[0, 1\]'\)\."):
        load_config("quickstart", ["evaluation.inner_steps=true"])


def test_a_toml_value_the_shell_split_at_its_spaces_is_joined_again(capsys):
    assert _join_split_values(["run", "--set", "evaluation.shots=[5,", "10]", "--json"]) == [
        "run", "--set", "evaluation.shots=[5, 10]", "--json"]
    assert _join_split_values(["run", "--set=label=\"a", "b\"", "cfg"]) == ["run", "--set=label=\"a b\"", "cfg"]
    assert _join_split_values(["run", "--set", "x=[1,", "--json"]) == ["run", "--set", "x=[1,", "--json"]  # never an option
    assert _join_split_values(["run", "--set", "label=Bob's", "cfg"]) == ["run", "--set", "label=Bob's", "cfg"]
    for argv in (["--set", "evaluation.shots=[5, 10]"], ["--set", "evaluation.shots=[5,", "10]"]):
        assert main(["run", "quickstart", *argv, "--print-config"]) == 0
        assert "shots = [5, 10]" in capsys.readouterr().out


# --------------------------------------------------------------------------- --set algorithm.name=...


def test_setting_algorithm_name_starts_from_that_algorithms_defaults(caplog):
    with caplog.at_level(logging.INFO):
        config = load_config("quickstart", ["algorithm.name=pretrain"])
    assert config["algorithm"] == resolve_component("algorithm", {"name": "pretrain"})
    assert "dropped the config's [algorithm] option(s) inner_lr, inner_steps; pretrain starts from its own defaults" in caplog.text
    config = load_config("quickstart", ["algorithm.name=mamlpp", "algorithm.inner_lr=0.3"])
    assert config["algorithm"] == resolve_component("algorithm", {"name": "mamlpp", "inner_lr": 0.3})
    assert load_config("quickstart", ["algorithm.name=maml"])["algorithm"] == load_config("quickstart")["algorithm"]


def test_an_option_the_new_algorithm_does_not_take_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"Unknown key algorithm\.'inner_steps' \(algorithm 'pretrain' takes no such option\)"):
        load_config("quickstart", ["algorithm.name=pretrain", "algorithm.inner_steps=3"])


# ------------------------------------------------------------------------------ metabench conformance


def _seedless_maml(**options):
    """A plugin's factory for an algorithm broken on purpose (helpers.seedless_maml: weights perturbed unseeded)."""
    from helpers import seedless_maml

    return seedless_maml(eval_inner_lr=options.pop("eval_inner_lr") or None, **options)


@pytest.mark.slow  # 13 s (pytest -m slow)
def test_conformance_runs_the_contract_on_a_plugin_and_exits_1_when_a_check_fails(monkeypatch, capsys):
    from metabench.harness.registry import ALGORITHMS, Entry

    maml = ALGORITHMS.get("maml")
    plugin = Entry("seedless_maml", _seedless_maml, maml.defaults, maml.choices, "broken on purpose", source="a-plugin")
    monkeypatch.setitem(ALGORITHMS._load(), "seedless_maml", plugin)
    argv = ["conformance", "seedless_maml", "--set", "inner_lr=0.1", "--kind", "regression", "--iterations", "3"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.startswith("conformance of seedless_maml (from a-plugin) with inner_lr=0.1, inner_steps=1")
    assert re.search(r"^  FAIL  regression-deterministic \(\d+\.\d s\): two trainings with seed 0 differ", out, re.M)
    assert re.search(r"^  PASS  regression-no_query_label_leak \(\d+\.\d s\)$", out, re.M)
    assert re.search(r"^\d of 6 checks passed$", out, re.M)


def test_conformance_refuses_an_option_the_algorithm_does_not_take(capsys):
    assert main(["conformance", "maml", "--set", "finetune_lr=0.1"]) == 2
    assert "metabench: error: Unknown key algorithm.'finetune_lr' (algorithm 'maml' takes no such option)" in capsys.readouterr().err


# ------------------------------------------------------------------------ stats on a report's leaderboard


def test_stats_reads_the_leaderboard_csv_that_report_writes(tmp_path, capsys):
    from helpers import record_run
    from metabench.harness.results.records import CurvePoint, Evaluation
    from metabench.harness.results.store import ResultsStore

    rng = np.random.default_rng(0)
    with ResultsStore(tmp_path / "s.sqlite") as store:
        for setting, (ways, fingerprint) in enumerate(((5, "a" * 64), (20, "b" * 64), (10, "c" * 64))):
            for skill, algorithm in ((0.9, "maml"), (0.7, "pretrain"), (0.5, "baseline")):
                values = np.clip(skill - 0.05 * setting + rng.normal(0, 0.05, 30), 0, 1)
                evaluation = Evaluation("test", ways, 1, 15, fingerprint, "accuracy", 1, {0: values * 0.5, 1: values}, {})
                record_run(store, [evaluation], algorithm=algorithm, dataset="omniglot", config_hash=f"{setting}{algorithm}",
                           curve=[CurvePoint(1, 1.0, 0.5, 0.1)], timings={"train_s": 1.0})  # fmt: skip
    assert main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "report")]) == 0
    leaderboard = tmp_path / "report" / "leaderboard.csv"
    assert pd.read_csv(leaderboard).columns[0] == "dataset"
    capsys.readouterr()
    assert main(["stats", str(leaderboard), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_rows"] == 3 and payload["n_methods"] == 3
    assert list(payload["average_ranks"]) == ["maml", "pretrain", "baseline"]
    assert payload["lower_is_better"] == dict.fromkeys(payload["rows"], False)
    across = json.loads((tmp_path / "report" / "across_settings.json").read_text())
    assert across["average_ranks"] == payload["average_ranks"]  # the report's own across-settings ranks
    assert main(["stats", str(leaderboard)]) == 0
    assert "Average ranks over 3 rows" in capsys.readouterr().out


# --------------------------------------------------------------------- figures and check's differences


def test_a_curve_or_steps_series_of_one_point_is_drawn_as_a_marker():
    from metabench.harness.analysis.figures import learning_curves_figure, steps_figure

    curves = pd.DataFrame({"run_id": ["r1"], "label": ["maml"], "iteration": [300], "loss": [0.5], "metric": [0.9]})
    figure = learning_curves_figure(curves)
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    assert lines and all(line.get_marker() == "o" for line in lines)
    longer = pd.concat([curves, curves.assign(iteration=600)])
    assert all(line.get_marker() in ("None", None, "") for ax in learning_curves_figure(longer).axes for line in ax.get_lines())
    steps = pd.DataFrame({"label": ["maml"], "inner_steps": [5], "mean": [0.9], "ci95": [0.02]})
    ax = steps_figure(steps, metric="accuracy").axes[0]
    assert ax.get_lines()[0].get_marker() == "o" and ax.containers  # the CI as an error bar, not a band of no width


def test_non_finite_or_absurd_differences_print_as_such():
    from metabench.harness.analysis.comparison import _signed

    assert _signed(0.5, " pp") == "+0.500 pp"
    assert _signed(1.1251414285614288e25, "% of baseline MSE") == "+1.13e+25% of baseline MSE (diverged)"
    assert _signed(float("inf"), "%") == "+inf% (diverged: non-finite)"
    assert _signed(float("-inf")) == "-inf (diverged: non-finite)"
    assert _signed(float("nan"), " pp") == "nan pp (non-finite)"
    assert _signed(float("nan"), say_why=False) == "nan"


# ------------------------------------------------------------------------------------------ registry


def test_the_registry_names_conv4s_choices_as_the_models_module_defines_them():
    from metabench.algorithms import models
    from metabench.harness import registry

    assert list(registry.CONV_FORMS) == list(models.CONV_FORMS)
    assert list(registry.ACTIVATIONS) == list(models.ACTIVATIONS)


def test_list_still_names_every_option(capsys):
    started = time.perf_counter()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - started < 30
    for text in ("maml", "mamlpp", "inner_lr=0.01", "conv4", "sinusoid", "quickstart"):
        assert text in out, text


def test_the_run_summary_names_a_checkpoint_ensemble_apart_from_the_last_checkpoint(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich's table width: one line per row
    from metabench.harness.cli.run import _print_summary
    from metabench.harness.run.lifecycle import RunSummary

    base = {"split": "test", "ways": 5, "shots": 1, "queries": 1, "fingerprint": "4cf71d25d5a2" * 2, "metric": "accuracy",
            "inner_steps": 5, "mean": 0.9607, "ci95": 0.0071, "by_inner_steps": {5: 0.9607}, "ensemble": ""}
    ensemble = dict(base, mean=0.9603, by_inner_steps={5: 0.9603},
                    ensemble="top-2 checkpoints by validation accuracy (iterations [1000, 500]), logits averaged")
    _print_summary(RunSummary("run-1", "accuracy", 0.9607, 0.0071, 600, 5, [base, ensemble]))
    rows = [line for line in capsys.readouterr().out.splitlines() if "4cf71d25d5a2" in line]
    assert len(rows) == 2 and "ensemble" not in rows[0] and "96.07%" in rows[0]
    assert "top-2 ensemble" in rows[1] and "96.03%" in rows[1]
