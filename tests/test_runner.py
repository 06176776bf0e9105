"""End-to-end runs through the `metabench` command: sinusoid MAML learns, failures never count."""

import json

import pytest

from metabench.harness.cli.main import main
from metabench.harness.results.store import ResultsStore


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory):
    """The shipped sinusoid MAML config cut to 2,000 meta-iterations (about 10 s on 2 CPU cores)."""
    folder = tmp_path_factory.mktemp("sinusoid")
    store = folder / "results.sqlite"
    code = main(["run", "sinusoid_maml", "--store", str(store), "--no-progress", "--quiet",
                 "--set", "train.meta_iterations=2000", "--set", "evaluation.episodes=300"])
    assert code == 0
    return store


@pytest.mark.slow  # like every test of sinusoid_run, a module fixture that trains the quickstart: 40 s (pytest -m slow)
def test_one_inner_step_lowers_the_5_shot_mse(sinusoid_run):
    with ResultsStore(sinusoid_run) as store:
        metrics = store.episode_metrics()
    five_shot = metrics[(metrics.shots == 5)]
    before = five_shot[five_shot.inner_steps == 0].sort_values("episode").value.to_numpy()
    after = five_shot[five_shot.inner_steps == 1].sort_values("episode").value.to_numpy()
    assert len(before) == len(after) == 300
    # Pre-adaptation MSE is the variance of the sinusoids (about 3); one step of a meta-learned
    # initialisation should cut it by more than half, on the same episodes.
    assert before.mean() > 2.0
    assert after.mean() < 0.5 * before.mean()
    assert (after < before).mean() > 0.8
    ten_steps = five_shot[five_shot.inner_steps == 10].sort_values("episode").value.to_numpy()
    assert ten_steps.mean() < after.mean()


@pytest.mark.slow  # reads sinusoid_run (pytest -m slow)
def test_run_records_its_metadata(sinusoid_run):
    with ResultsStore(sinusoid_run) as store:
        runs = store.runs()
        metrics = store.episode_metrics()
    assert list(runs.status) == ["completed"]
    run = runs.iloc[0]
    assert run.algorithm == "maml" and run.dataset == "sinusoid" and run.backend == "tensorflow"
    assert run.config["train"]["meta_iterations"] == 2000 and len(run.config_hash) == 64
    assert {"keras", "numpy", "python"} <= set(run.versions)
    assert sorted(metrics.shots.unique()) == [5, 10]
    assert metrics.groupby("shots").fingerprint.nunique().eq(1).all()
    assert sorted(metrics.inner_steps.unique()) == [0, 1, 5, 10]
    # time blocked on the next meta-batch is recorded, as a part of the training time
    assert set(run.timings) == {"train_s", "data_wait_s", "eval_s"}
    assert 0 < run.timings["data_wait_s"] < run.timings["train_s"]


def test_json_summary_and_report(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    code = main(["run", "quickstart", "--store", str(store), "--json", "--no-progress", "--quiet",
                 "--set", "train.meta_iterations=50", "--set", "evaluation.episodes=20"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metric"] == "mse" and summary["episodes"] == 20 and summary["ci95"] > 0
    assert summary["run_id"]
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "reports")]) == 0
    leaderboard = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "ci95" in leaderboard.lower() and "sinusoid" in leaderboard and "1.96" in leaderboard
    assert (tmp_path / "reports" / "leaderboard.csv").is_file()


def test_a_diverging_run_is_recorded_as_failed_and_never_reported(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    code = main(["run", "quickstart", "--store", str(store), "--no-progress", "--quiet",
                 "--set", "algorithm.inner_lr=1e6", "--set", "train.meta_lr=1e6",
                 "--set", "train.meta_iterations=200", "--set", "evaluation.episodes=10"])
    assert code == 2
    assert "loss became" in capsys.readouterr().err
    with ResultsStore(store) as results:
        runs = results.runs()
        assert list(runs.status) == ["failed"]
        assert "meta-iteration" in runs.iloc[0].message
        assert results.episode_metrics().empty


def test_unknown_config_key_fails_before_any_run(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    assert main(["run", "quickstart", "--store", str(store), "--set", "train.meta_iteration=5"]) == 2
    assert "Unknown key train.'meta_iteration'" in capsys.readouterr().err
    assert not store.exists()


def test_list_shows_registries_and_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("maml", "sinusoid", "omniglot", "miniimagenet", "conv4", "quickstart"):
        assert name in out


@pytest.mark.slow  # reads sinusoid_run (pytest -m slow)
def test_maml_beats_pretraining_on_all_tasks_after_one_step(sinusoid_run, tmp_path):
    """The MAML paper's Table 2 ordering, on the same episodes, at a CI budget."""
    store = tmp_path / "pretrain.sqlite"
    assert main(["run", "sinusoid_pretrain", "--store", str(store), "--no-progress", "--quiet",
                 "--set", "train.meta_iterations=2000", "--set", "evaluation.episodes=300"]) == 0
    with ResultsStore(sinusoid_run) as maml_store, ResultsStore(store) as pretrain_store:
        maml, pretrain = maml_store.episode_metrics(), pretrain_store.episode_metrics()
    pick = lambda m: m[(m.shots == 5) & (m.inner_steps == 1)].sort_values("episode")  # noqa: E731
    maml_5, pretrain_5 = pick(maml), pick(pretrain)
    assert set(maml_5.fingerprint) == set(pretrain_5.fingerprint) and len(maml_5) == len(pretrain_5) == 300
    assert maml_5.value.mean() < 0.6 * pretrain_5.value.mean()
