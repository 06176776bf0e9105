"""Bad input through `metabench run`: each a clear error naming the problem, and no run recorded as a result."""

import shutil


from metabench.harness.cli import main
from metabench.harness.store import ResultsStore


def _run(tmp_path, *args):
    store = tmp_path / "results.sqlite"
    code = main(["run", *args, "--store", str(store), "--no-progress", "--quiet"])
    return code, store


def _no_result(store):
    if not store.exists():
        return True
    with ResultsStore(store) as results:
        return results.episode_metrics().empty and "completed" not in set(results.runs().status)


def test_unknown_config_key(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart", "--set", "algorithm.inner_rate=0.1")
    assert code == 2
    assert "Unknown key algorithm.'inner_rate'" in capsys.readouterr().err
    assert _no_result(store)


def test_ways_above_the_classes_of_the_split(tmp_path, capsys, shared_data_dir):
    code, store = _run(tmp_path, "quickstart_omniglot", "--data-dir", str(shared_data_dir),
                       "--set", "train.ways=1101", "--set", "evaluation.ways=1101")
    assert code == 2
    assert "ways=1101, but split 'train' of omniglot has 1100 classes" in capsys.readouterr().err
    assert _no_result(store)


def test_shots_plus_queries_above_20_images_per_class(tmp_path, capsys, shared_data_dir):
    code, store = _run(tmp_path, "quickstart_omniglot", "--data-dir", str(shared_data_dir),
                       "--set", "train.shots=5", "--set", "train.queries=16")
    assert code == 2
    err = capsys.readouterr().err
    assert "shots=5 and queries=16 (21 images per class)" in err and "has 20 images per class" in err
    assert _no_result(store)


def test_evaluation_spec_is_checked_before_training(tmp_path, capsys, shared_data_dir):
    code, store = _run(tmp_path, "quickstart_omniglot", "--data-dir", str(shared_data_dir),
                       "--set", "evaluation.shots=[1, 10]", "--set", "evaluation.queries=15")
    assert code == 2
    assert "split 'test' of omniglot has 20 images per class" in capsys.readouterr().err
    assert _no_result(store)


def test_missing_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METABENCH_DATA", raising=False)
    code, store = _run(tmp_path, "omniglot_5way1shot_maml")
    assert code == 2
    err = capsys.readouterr().err
    assert "No data directory given for omniglot" in err and "--data-dir" in err and "METABENCH_DATA" in err
    assert _no_result(store)


def test_data_dir_that_does_not_exist(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart_omniglot", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert _no_result(store)


def test_truncated_archive(tmp_path, capsys, shared_data_dir):
    data = tmp_path / "data" / "omniglot"
    data.mkdir(parents=True)
    original = (shared_data_dir / "omniglot" / "images_background.zip").read_bytes()
    (data / "images_background.zip").write_bytes(original[: len(original) // 2])
    shutil.copy(shared_data_dir / "omniglot" / "images_evaluation.zip", data)
    code, store = _run(tmp_path, "quickstart_omniglot", "--data-dir", str(tmp_path / "data"),
                       "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err
    assert _no_result(store)
