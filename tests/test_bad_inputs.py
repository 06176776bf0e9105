"""Bad input through `metabench run`: each a clear error naming the problem, and no run recorded as a result.

The catalogue of issue 7 (the ``test_catalogue_*`` tests): malformed TOML; unknown algorithm or
dataset; negative or zero ways/shots/queries; ways above the classes of a split; shots + queries
above the images per class; an empty or truncated zip; a zip member with ``..`` or an absolute
path; a PNG that does not decode; a split file naming a character not in the archive; a data dir
that is a file; a store in a folder that cannot be written; a results store that is not SQLite
(or of a newer schema); a baseline file of a different setting; a full disk while checkpointing;
and resuming a run that is missing, completed, of another config or trained by another process.
"""

import copy
import errno
import io
import os
import re
import shutil
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metabench.harness.run import checkpoint
from metabench.harness.run.checkpoint import CheckpointFolder
from metabench.harness.cli.main import main
from metabench.harness.results.store import ResultsStore


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


# ---------------------------------------------------------------- the catalogue
# One test per bad input of issue 7, each through the command line where a user meets it, each
# pinning the words that name the problem. (The dataset loaders' own tests, in test_omniglot.py,
# cover the same files below the command line.)


SMALL = ["--set", "train.meta_iterations=4", "--set", "evaluation.episodes=4", "--set", "evaluation.inner_steps=[0, 1]"]


def _png(seed: int) -> bytes:
    image = Image.new("1", (20, 20), 1)
    for y in range(2 + seed % 8, 8 + seed % 8):
        for x in range(5, 15):
            image.putpixel((x, y), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _omniglot(data_dir: Path, extra: dict | None = None, replace: dict | None = None) -> Path:
    """Tiny official-layout archives: background Alpha (3 characters), evaluation Gamma (2); 20 PNGs each."""
    root = data_dir / "omniglot"
    root.mkdir(parents=True, exist_ok=True)
    seed = 0
    for archive, alphabet, count in (("background", "Alpha", 3), ("evaluation", "Gamma", 2)):
        members = {}
        for c in range(1, count + 1):
            for j in range(1, 21):
                seed += 1
                members[f"images_{archive}/{alphabet}/character{c:02d}/{seed:04d}_{j:02d}.png"] = _png(seed)
        members.update((replace or {}).get(archive, {}))
        members.update((extra or {}).get(archive, {}))
        with zipfile.ZipFile(root / f"images_{archive}.zip", "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return data_dir


def _tiny_config(tmp_path: Path, scheme: str = "official", **train) -> Path:
    """A 2-way 1-shot MAML config on the tiny archives."""
    train = {"split": "background", "ways": 2, "shots": 1, "queries": 1, "meta_iterations": 2, "meta_batch_size": 2, **train}
    evaluation_split = "evaluation" if scheme == "official" else "test"
    if scheme == "vinyals":
        train["split"] = "train"
    lines = [
        'name = "tiny"', "", "[dataset]", 'name = "omniglot"', "image_size = 20", f'split_scheme = "{scheme}"', "",
        "[model]", 'name = "conv4"', "filters = 4", "", "[algorithm]", 'name = "maml"', "", "[train]",
        *(f"{k} = {v!r}".replace("'", '"') for k, v in train.items()), "",
        "[evaluation]", f'split = "{evaluation_split}"', "episodes = 2", "inner_steps = [0, 1]",
    ]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_tiny(tmp_path, data_dir, *args, scheme="official", **train):
    config = _tiny_config(tmp_path, scheme, **train)
    return _run(tmp_path, str(config), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), *args)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_catalogue_malformed_toml(tmp_path, capsys):
    config = tmp_path / "broken.toml"
    config.write_text('[train]\nmeta_iterations = 10\nways = "5\n')
    code, store = _run(tmp_path, str(config))
    assert code == 2
    err = capsys.readouterr().err
    assert f"Malformed TOML in {config}" in err and "line 3" in err and "Fix the file's syntax" in err
    assert not store.exists()


def test_catalogue_unknown_algorithm_with_did_you_mean(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart", "--set", "algorithm.name=mamll")
    assert code == 2
    assert "Unknown algorithm 'mamll'. Did you mean 'maml'? Registered: [" in capsys.readouterr().err
    assert not store.exists()


def test_catalogue_unknown_dataset_with_did_you_mean(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart", "--set", "dataset.name=omniglott")
    assert code == 2
    assert "Unknown dataset 'omniglott'. Did you mean 'omniglot'? Registered: [" in capsys.readouterr().err
    assert not store.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.ways=-5", "Received train.ways=-5; expected a positive integer (or 0 for the default)."),
        ("evaluation.ways=-1", "Received evaluation.ways=-1; expected a positive integer (or 0 for the default)."),
        ("train.shots=0", "Received train.shots=0; expected a positive integer."),
        ("train.shots=-1", "Received train.shots=-1; expected a positive integer."),
        ("evaluation.shots=[-1]", "Received evaluation.shots=[-1]; expected positive integers (0: the training shots)."),
        ("train.queries=0", "Received train.queries=0; expected a positive integer."),
        ("evaluation.queries=-3", "Received evaluation.queries=-3; expected a positive integer (or 0 for the default)."),
    ],
)
def test_catalogue_negative_or_zero_ways_shots_queries(tmp_path, capsys, override, message):
    code, store = _run(tmp_path, "quickstart", "--set", override)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not store.exists()


def test_catalogue_option_value_the_component_refuses(tmp_path, capsys):
    # the config layer checks keys and types; the algorithm checks its own ranges
    code, store = _run(tmp_path, "quickstart", "--set", "algorithm.inner_steps=0")
    assert code == 2
    err = capsys.readouterr().err
    assert "algorithm 'maml' refused its options: Received inner_steps=0; expected at least 1." in err
    assert "--set algorithm.OPTION=VALUE" in err and "Traceback" not in err
    assert _no_result(store)


def test_catalogue_model_option_outside_its_choices(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart_omniglot", "--set", "model.conv=im2col")
    assert code == 2
    assert "Received model.conv='im2col'; allowed values: ['native', 'matmul']." in capsys.readouterr().err
    assert not store.exists()


def test_catalogue_zero_ways_on_a_classification_dataset(tmp_path, capsys):
    code, store = _run_tiny(tmp_path, _omniglot(tmp_path / "data"), ways=0)
    assert code == 2
    assert "omniglot is a classification dataset: set train.ways (e.g. 5)." in capsys.readouterr().err
    assert _no_result(store)


def test_catalogue_ways_above_the_classes_in_the_split(tmp_path, capsys):
    code, store = _run_tiny(tmp_path, _omniglot(tmp_path / "data"), ways=4)
    assert code == 2
    assert "Received ways=4, but split 'background' of omniglot has 3 classes. Use ways <= 3" in capsys.readouterr().err
    assert _no_result(store)


def test_catalogue_shots_plus_queries_above_the_images_per_class(tmp_path, capsys):
    code, store = _run_tiny(tmp_path, _omniglot(tmp_path / "data"), shots=5, queries=16)
    assert code == 2
    err = capsys.readouterr().err
    assert "Received shots=5 and queries=16 (21 images per class), but split 'background' of omniglot has 20 images per class" in err
    assert _no_result(store)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_catalogue_empty_or_truncated_zip(tmp_path, capsys, damage):
    data = _omniglot(tmp_path / "data")
    archive = data / "omniglot" / "images_background.zip"
    archive.write_bytes(b"" if damage == "empty" else archive.read_bytes()[:1000])
    code, store = _run_tiny(tmp_path, data)
    assert code == 2
    err = capsys.readouterr().err
    assert f"Cannot read '{archive}'" in err and "re-download it" in err
    assert ("it is empty (0 bytes)" if damage == "empty" else "truncated or corrupt") in err
    assert _no_result(store)


@pytest.mark.parametrize(
    "member, why",
    [("images_background/../../escaped.png", "has a '.' or '..' component"), ("/tmp/metabench-escaped.png", "is an absolute path")],
)
def test_catalogue_zip_member_escaping_the_folder_is_refused_and_nothing_is_written(tmp_path, capsys, member, why):
    data = _omniglot(tmp_path / "data", extra={"background": {member: _png(1)}})
    config = _tiny_config(tmp_path)
    before = _files(tmp_path)
    code, store = _run(tmp_path, str(config), "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert f"refusing member {member!r}, which {why}" in capsys.readouterr().err
    assert {p for p in _files(tmp_path) if not p.name.startswith(store.name)} <= before  # only the store was written
    assert not (tmp_path / "escaped.png").exists() and not Path("/tmp/metabench-escaped.png").exists()
    assert _no_result(store)


def test_catalogue_png_that_does_not_decode(tmp_path, capsys):
    broken = "images_evaluation/Gamma/character02/0100_20.png"  # the last drawing of the last character
    data = _omniglot(tmp_path / "data", replace={"evaluation": {broken: b"\x89PNG\r\n\x1a\n broken"}})
    code, store = _run_tiny(tmp_path, data)
    assert code == 2
    assert f"member '{broken}' is not a readable PNG" in capsys.readouterr().err
    assert _no_result(store)


def test_catalogue_split_file_naming_a_character_not_in_the_archive(tmp_path, capsys):
    data = _omniglot(tmp_path / "data")
    splits = data / "omniglot" / "splits" / "vinyals"
    splits.mkdir(parents=True)
    for split, characters in {"train": ["Alpha/character01", "Alpha/character02"], "val": ["Alpha/character03"],
                              "test": ["Gamma/character01", "Omega/character07"], "trainval": ["Alpha/character01"]}.items():
        (splits / f"{split}.txt").write_text("".join(f"{c}/rot000\n" for c in characters))
    code, store = _run_tiny(tmp_path, data, scheme="vinyals")
    assert code == 2
    assert "test.txt names character 'Omega/character07', which is in neither archive" in capsys.readouterr().err
    assert _no_result(store)


def test_catalogue_data_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "data").write_text("not a folder")
    code, store = _run_tiny(tmp_path, tmp_path / "data")
    assert code == 2
    assert f"Data directory '{tmp_path / 'data'}' is a file, not a directory" in capsys.readouterr().err
    assert _no_result(store)


def test_catalogue_store_path_in_a_folder_that_cannot_be_written(tmp_path, capsys):
    # Root writes through chmod, so a parent that is a file stands in for a read-only folder;
    # test_store.py::test_a_read_only_parent_is_named covers chmod 500 where that bites.
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the store's folder should be")
    code = main(["run", "quickstart", *SMALL, "--store", str(blocker / "results.sqlite"), "--no-progress", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"Cannot create the folder {blocker} for results store {blocker / 'results.sqlite'}" in err and "writable folder" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_catalogue_store_path_in_a_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = main(["run", "quickstart", *SMALL, "--store", str(folder / "results.sqlite"), "--no-progress", "--quiet"])
    finally:
        folder.chmod(0o700)
    assert code == 2
    assert f"The folder {folder} is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "report"])
def test_catalogue_results_store_that_is_not_sqlite(tmp_path, capsys, command):
    store = tmp_path / "results.sqlite"
    store.write_text("run_id,mean\n1,0.5\n" * 200)
    args = ["run", "quickstart", *SMALL, "--no-progress", "--quiet"] if command == "run" else ["report", "--out", str(tmp_path / "out")]
    assert main([*args, "--store", str(store)]) == 2
    assert f"{store} is not a metabench results store (SQLite said: file is not a database)" in capsys.readouterr().err
    assert store.read_text().startswith("run_id,mean")  # left as it was


def test_catalogue_results_store_of_a_newer_schema_version(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    ResultsStore(store).close()
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA user_version = 99")
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "out")]) == 2
    assert "has schema version 99 (written by a newer metabench), but this metabench reads schema version 3" in capsys.readouterr().err


def _check_commands(*argv) -> int:
    """`metabench baseline` and `metabench check` as the command line runs them."""
    return main([str(a) for a in argv])


def test_catalogue_baseline_file_from_a_different_setting(tmp_path, capsys):
    from helpers import record_run
    from metabench.harness.results.records import Evaluation

    config = {"name": "t", "seed": 0, "backend": "tensorflow", "algorithm": {"name": "maml"},
              "engine": {"deterministic": True}, "evaluation": {"seed": 1, "episodes": 4}}
    store_path = tmp_path / "results.sqlite"
    runs = []
    with ResultsStore(store_path) as store:
        for shots, fingerprint in ((5, "a" * 64), (10, "b" * 64)):
            run_config = copy.deepcopy(config)
            run_config["evaluation"]["shots"] = [shots]
            values = {0: np.array([3.0, 2.5, 2.0, 1.5]), 1: np.array([1.0, 0.5, 0.25, 0.125])}
            evaluation = Evaluation("test", None, shots, 100, fingerprint, "mse", 1, values)
            runs.append(record_run(store, [evaluation], config=run_config, versions={"metabench": "0.1.0"}))
    baseline = tmp_path / "baseline.json"
    assert _check_commands("baseline", "save", runs[0], "--store", store_path, "--out", baseline, "--quiet") == 0
    capsys.readouterr()
    assert _check_commands("check", "--baseline", baseline, "--run", runs[1], "--store", store_path) == 2
    err = capsys.readouterr().err
    assert "could not compare: The candidate is not evaluated on the baseline's setting" in err and "5-shot" in err


def test_catalogue_disk_full_while_checkpointing(tmp_path, caplog, monkeypatch):
    """The 2nd checkpoint fails as on a full disk: the run goes on, the 1st checkpoint survives."""
    real_open = checkpoint._open_for_write

    def open_for_write(path):
        if path.name.startswith(".ckpt-00000020.npz"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path)

    monkeypatch.setattr(checkpoint, "_open_for_write", open_for_write)
    sets = ["train.meta_iterations=30", "train.checkpoint_every=10", "train.keep_checkpoints=true", "evaluation.episodes=4"]
    code, store = _run(tmp_path, "quickstart", *(a for s in sets for a in ("--set", s)))
    assert code == 0
    assert re.search(r"Could not write checkpoint ckpt-00000020 of run \S+ in .*: No space left on device\. The disk is full: "
                     r"free space or pass another --checkpoint-dir\. The previous checkpoint \(meta-iteration 10\) is intact\. "
                     r"Training goes on", caplog.text)
    with ResultsStore(store) as results:
        run = results.runs().iloc[0]
    assert run["status"] == "completed"
    folder = CheckpointFolder(run["checkpoint_dir"])
    assert folder.iterations() == [10, 30] and folder.latest().state.iteration == 30
    assert folder.load(10).state.iteration == 10  # the survivor reads back intact
    assert not list(folder.path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume", "20990101-000000-deadbeef"], "No run '20990101-000000-deadbeef' in results store"),
        (["--resume", "quickstart"], "Received --resume 'quickstart', which is not a run id (YYYYmmdd-HHMMSS-xxxxxxxx). "
                                     "To resume the newest unfinished run of a config, put the config first"),
    ],
)
def test_catalogue_resume_of_a_run_that_is_not_there(tmp_path, capsys, args, message):
    ResultsStore(tmp_path / "results.sqlite").close()
    code = main(["run", *args, "--store", str(tmp_path / "results.sqlite"), "--no-progress", "--quiet"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_catalogue_resume_of_a_completed_run_or_with_another_config(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart", *SMALL)
    assert code == 0
    with ResultsStore(store) as results:
        (run_id,) = results.runs()["run_id"]
    code, _ = _run(tmp_path, "--resume", run_id)
    assert code == 2
    assert f"Run {run_id} already completed; there is nothing to resume" in capsys.readouterr().err
    with ResultsStore(store) as results, sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", (run_id,))
    code, _ = _run(tmp_path, "quickstart", *SMALL, "--set", "algorithm.inner_lr=0.5", "--resume", run_id)
    assert code == 2
    err = capsys.readouterr().err
    assert f"but run {run_id} was started with config hash" in err and "A run resumes only with its own config" in err


def test_catalogue_resume_of_a_run_another_process_is_training(tmp_path, capsys):
    code, store = _run(tmp_path, "quickstart", *SMALL)
    with ResultsStore(store) as results:
        (run_id,) = results.runs()["run_id"]
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", (run_id,))
    with CheckpointFolder(tmp_path / "checkpoints" / run_id).locked(run_id):
        code, _ = _run(tmp_path, "--resume", run_id)
    assert code == 2
    assert f"Run {run_id} is being trained by another process right now (pid {os.getpid()}" in capsys.readouterr().err
