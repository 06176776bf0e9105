"""Result bundles: export -> import round trips every recorded fact (NaN too), a second import skips,
and a tampered, misformatted or truncated bundle is refused with a message naming the problem,
leaving the store unchanged."""

from __future__ import annotations

import gzip
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from metabench.harness.results.bundles import (
    FORMAT,
    BundleError,
    content_sha256,
    export_runs,
    import_bundles,
    open_bundles,
    read_bundle,
)
from metabench.harness.cli.main import main
from metabench.harness.config import config_hash, recipe_hash
from metabench.harness.results.records import CurvePoint, Evaluation, RunInfo
from metabench.harness.results.store import ResultsStore, StoreError
from helpers import record_run


def _config(algorithm: str = "maml", seed: int = 0, label: str = "", **options) -> dict:
    return {
        "name": "test",
        "label": label,
        "seed": seed,
        "backend": "jax",
        "dataset": {"name": "omniglot", "image_size": 28},
        "algorithm": {"name": algorithm, "inner_lr": 0.4, **options},
        "train": {"meta_iterations": 100, "log_every": 50},
    }


def _info(config: dict, git_commit: str | None = "0123abc") -> RunInfo:
    return RunInfo(
        algorithm=config["algorithm"]["name"],
        dataset=config["dataset"]["name"],
        seed=config["seed"],
        config=config,
        config_hash=config_hash(config),
        backend=config["backend"],
        device="CPU",
        versions={"keras": "3.5.0", "numpy": np.__version__},
        git_commit=git_commit,
    )


def _evaluations(rng: np.random.Generator, episodes: int = 40) -> list[Evaluation]:
    accuracy = {s: rng.integers(0, 76, size=episodes) / 75.0 for s in (0, 1, 5)}
    accuracy[5][3] = math.nan  # a diverged episode
    regression = {1: rng.gamma(2.0, size=episodes), 10: rng.gamma(1.0, size=episodes)}
    return [
        Evaluation("test", 5, 1, 15, "a" * 64, "accuracy", 5, accuracy,
                   {"batch_norm": "transductive (batch statistics at test time)", "order": "second"}),
        Evaluation("val", None, 5, 10, "b" * 64, "mse", 10, regression),
    ]  # fmt: skip


def _completed(store: ResultsStore, config: dict, rng: np.random.Generator, **info) -> str:
    curve = [CurvePoint(50, 1.5, 0.4, 3.25), CurvePoint(100, math.nan, 0.7, 6.5)]
    return record_run(store, _evaluations(rng), info=_info(config, **info), curve=curve, timings={"train_s": 12.5, "evaluate_s": 3.0},
                      events=[{"event": "nan_retry", "at": "2025-01-01T00:00:00.000+00:00", "meta_lr": 0.0005}])  # fmt: skip


@pytest.fixture
def source(tmp_path):
    """A store with three completed runs (MAML seeds 0 and 1, a labelled FOMAML), one running and one failed."""
    rng = np.random.default_rng(0)
    with ResultsStore(tmp_path / "source.sqlite") as store:
        ids = [
            _completed(store, _config(seed=0), rng),
            _completed(store, _config(seed=1), rng, git_commit=None),
            _completed(store, _config(seed=0, label="fomaml", first_order=True), rng),
        ]
        running = store.start_run(_info(_config(seed=2)))
        failed = store.start_run(_info(_config(seed=3)))
        store.fail_run(failed, "failed", "boom")
        yield store, ids, running, failed


def _snapshot(store: ResultsStore) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Everything a store says about its runs, without the store-local eval ids and checkpoint folders."""
    runs = store.runs().drop(columns=["checkpoint_dir"]).astype(object)  # dtypes follow the other rows
    runs = runs.where(runs.notna(), None)
    episodes = store.episode_metrics(completed_only=False).drop(columns=["eval_id"])
    curves = store.training_curves(completed_only=False)
    return runs, episodes, curves


def _assert_same(a: ResultsStore, b: ResultsStore, run_ids=None) -> None:
    for left, right in zip(_snapshot(a), _snapshot(b)):
        if run_ids is not None:
            left = left[left["run_id"].isin(run_ids)]
            right = right[right["run_id"].isin(run_ids)]
        pd.testing.assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True))


def _lines(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def _write_lines(path, objects: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        for obj in objects:
            stream.write(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------------- round trip


def test_export_import_round_trips_every_recorded_fact(source, tmp_path):
    store, ids, running, failed = source
    bundle = tmp_path / "runs" / "all.jsonl.gz"
    assert export_runs(store, None, bundle) == ids  # completed runs only, oldest first
    with ResultsStore(tmp_path / "copy.sqlite") as copy:
        assert import_bundles(copy, [bundle]) == {"imported": 3, "skipped": 0}
        _assert_same(store, copy, ids)
        assert set(copy.runs()["status"]) == {"completed"}
        values = copy.episode_metrics()
        nan = values[(values["inner_steps"] == 5) & (values["episode"] == 3) & (values["metric"] == "accuracy")]
        assert len(nan) == 3 and nan["value"].isna().all()
        assert copy.training_curves()["loss"].isna().sum() == 3
        fomaml = copy.get_run(ids[2])
        assert fomaml["label"] == "fomaml" and fomaml["recipe_hash"] == recipe_hash(_config(label="fomaml", first_order=True))
        assert fomaml["history"] == store.get_run(ids[2])["history"]
        assert copy.get_run(ids[1])["git_commit"] is None


def test_a_second_import_skips_the_runs_already_held(source, tmp_path):
    store, ids, _, _ = source
    bundle = tmp_path / "all.jsonl.gz"
    export_runs(store, [ids[0], ids[1]], bundle)
    with ResultsStore(tmp_path / "copy.sqlite") as copy:
        assert import_bundles(copy, bundle) == {"imported": 2, "skipped": 0}
        before = _snapshot(copy)
        assert import_bundles(copy, [bundle, tmp_path]) == {"imported": 0, "skipped": 2}  # the folder names it again
        for left, right in zip(before, _snapshot(copy)):
            pd.testing.assert_frame_equal(left, right)
    # importing a bundle into the store it came from skips every run
    assert import_bundles(store, bundle) == {"imported": 0, "skipped": 2}


def test_bundle_layout_is_the_documented_one(source, tmp_path):
    store, ids, _, _ = source
    bundle = tmp_path / "one.jsonl.gz"
    export_runs(store, [ids[0]], bundle)
    header, run = _lines(bundle)
    assert set(header) == {"format", "created_at", "runs"} and header["format"] == FORMAT and header["runs"] == 1
    assert set(run) == {
        "run_id", "created_at", "finished_at", "algorithm", "dataset", "seed", "backend", "device", "config",
        "config_hash", "recipe_hash", "label", "versions", "git_commit", "timings", "history", "curve",
        "evaluations", "content_sha256",
    }  # fmt: skip
    canonical = json.dumps({k: v for k, v in run.items() if k != "content_sha256"}, sort_keys=True, separators=(",", ":"))
    assert run["content_sha256"] == hashlib.sha256(canonical.encode()).hexdigest() == content_sha256(run)
    assert run["curve"] == [[50, 1.5, 0.4, 3.25], [100, None, 0.7, 6.5]]
    assert run["timings"] == {"train_s": 12.5, "evaluate_s": 3.0}
    accuracy, regression = run["evaluations"]
    assert accuracy["values"]["5"][3] is None and sorted(accuracy["values"]) == ["0", "1", "5"]
    assert accuracy["notes"]["order"] == "second" and accuracy["fingerprint"] == "a" * 64 and accuracy["ways"] == 5
    assert regression["ways"] is None and regression["metric"] == "mse" and len(regression["values"]["10"]) == 40
    assert read_bundle(bundle) == [run]
    assert bundle.read_bytes()[:2] == b"\x1f\x8b"  # gzip


def test_open_bundles_gives_a_store_that_renders_the_same_leaderboard(source, tmp_path):
    from metabench.harness.analysis.report import write_leaderboard

    store, ids, _, _ = source
    export_runs(store, ids[:2], tmp_path / "runs" / "maml.jsonl.gz")
    export_runs(store, ids[2:], tmp_path / "runs" / "nested" / "fomaml.jsonl.gz")
    with open_bundles(tmp_path / "runs") as bundled:
        assert sorted(bundled.runs()["run_id"]) == sorted(ids)
        _assert_same(store, bundled, ids)
        _, original_csv = write_leaderboard(store, tmp_path / "from-store")
        _, bundled_csv = write_leaderboard(bundled, tmp_path / "from-bundles")
        folder = bundled.path.parent
    assert not folder.exists()  # the temporary store is gone
    assert bundled_csv.read_text() == original_csv.read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"No bundles \(\*\.jsonl\.gz files\) under .*empty"):
        with open_bundles(tmp_path / "empty"):
            pass


# ---------------------------------------------------------------------- refusals


def test_exporting_a_run_that_did_not_complete_is_refused(source, tmp_path):
    store, ids, running, failed = source
    with pytest.raises(BundleError, match=rf"Cannot export run '{running}': its status is 'running'"):
        export_runs(store, [ids[0], running], tmp_path / "x.jsonl.gz")
    with pytest.raises(BundleError, match=rf"Cannot export run '{failed}': its status is 'failed'"):
        export_runs(store, [failed], tmp_path / "x.jsonl.gz")
    with pytest.raises(StoreError, match="No run 'nope'"):
        export_runs(store, ["nope"], tmp_path / "x.jsonl.gz")
    with pytest.raises(BundleError, match=r"must end in '\.jsonl\.gz'"):
        export_runs(store, ids, tmp_path / "x.json")
    assert not (tmp_path / "x.jsonl.gz").exists()


@pytest.fixture
def bundle_and_target(source, tmp_path):
    """A two-run bundle and a store already holding one other run (whose state must not change)."""
    store, ids, _, _ = source
    bundle = tmp_path / "two.jsonl.gz"
    export_runs(store, ids[:2], bundle)
    with ResultsStore(tmp_path / "target.sqlite") as target:
        import_bundles(target, _single(store, ids[2], tmp_path))
        yield bundle, target, ids


def _single(store, run_id, tmp_path):
    path = tmp_path / f"{run_id}.jsonl.gz"
    export_runs(store, [run_id], path)
    return path


def _rejected(target: ResultsStore, paths, match: str) -> None:
    before = _snapshot(target)
    with pytest.raises(BundleError, match=match):
        import_bundles(target, paths)
    for left, right in zip(before, _snapshot(target)):
        pd.testing.assert_frame_equal(left, right)


def test_a_tampered_value_fails_the_content_hash(bundle_and_target):
    bundle, target, ids = bundle_and_target
    header, first, second = _lines(bundle)
    second["evaluations"][0]["values"]["1"][7] = 1.0
    _write_lines(bundle, [header, first, second])
    # the first run is fine, but nothing of the file is imported
    _rejected(target, bundle, rf"two\.jsonl\.gz, line 3 \(run '{ids[1]}'\): content_sha256 mismatch")


def test_a_tampered_config_fails_the_config_hash(bundle_and_target):
    bundle, target, ids = bundle_and_target
    header, first, second = _lines(bundle)
    first["config"]["algorithm"]["inner_lr"] = 0.1
    _write_lines(bundle, [header, dict(first, content_sha256=content_sha256(first)), second])  # hash fixed up too
    _rejected(target, bundle, rf"line 2 \(run '{ids[0]}'\): config_hash mismatch: .*config .*was edited")
    first["config_hash"] = config_hash(first["config"])  # and the config hash: the recipe hash still tells
    _write_lines(bundle, [header, dict(first, content_sha256=content_sha256(first)), second])
    _rejected(target, bundle, rf"line 2 \(run '{ids[0]}'\): recipe_hash mismatch")


def test_a_wrong_format_line_is_refused(bundle_and_target, tmp_path):
    bundle, target, _ = bundle_and_target
    header, *runs = _lines(bundle)
    _write_lines(bundle, [dict(header, format="metabench-bundle/2"), *runs])
    _rejected(target, bundle, r"line 1: bundle format 'metabench-bundle/2', but this metabench reads 'metabench-bundle/1'")
    _write_lines(bundle, [{"format": "something-else"}, *runs])
    _rejected(target, bundle, r"line 1: not a metabench bundle: the header's format is 'something-else'")
    _write_lines(bundle, runs)
    _rejected(target, bundle, r"line 1: not a metabench bundle: the header's format is None")
    _write_lines(bundle, [dict(header, runs=3), *runs])
    _rejected(target, bundle, r"its header says 3 run\(s\) but the file holds 2")


def test_a_truncated_gzip_is_refused(bundle_and_target):
    bundle, target, _ = bundle_and_target
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    _rejected(target, bundle, r"two\.jsonl\.gz is not a complete gzip file .*truncated")
    bundle.write_bytes(b"run_id,value\n")
    _rejected(target, bundle, r"is not a complete gzip file")


def test_a_bad_file_among_several_imports_nothing(bundle_and_target, source, tmp_path):
    bundle, target, ids = bundle_and_target
    store = source[0]
    good = tmp_path / "good.jsonl.gz"
    export_runs(store, [ids[0]], good)
    data = bundle.read_bytes()
    bundle.write_bytes(data[:-20])
    _rejected(target, [good, bundle], r"two\.jsonl\.gz is not a complete gzip file")
    assert ids[0] not in set(target.runs()["run_id"])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda run: run["evaluations"][0]["values"]["1"].pop(), r"values have different lengths at different inner-step counts"),
        (lambda run: run["evaluations"][0]["values"]["0"].__setitem__(2, "0.5"),
         r"values\['0'\]\[2\] is \"0.5\", expected a finite number or null"),
        (lambda run: run.pop("recipe_hash"), r"run lacks the key\(s\) recipe_hash"),
        (lambda run: run.__setitem__("extra", 1), r"run has unknown key\(s\) extra"),
        (lambda run: run.__setitem__("seed", True), r"run key 'seed' is true, expected an integer"),
        (lambda run: run["curve"].append([150, 0.5, 0.5]), r"curve\[2\] is .*expected \[iteration, loss, metric, seconds\]"),
        (lambda run: run["evaluations"][0].__setitem__("headline_steps", 10),
         r"headline_steps = 10, but values cover inner steps \['0', '1', '5'\]"),
        (lambda run: run["evaluations"][0].__setitem__("metric", "f1"), r"metric is 'f1', expected 'accuracy', 'mse', 'return'"),
        (lambda run: run.__setitem__("algorithm", "protonet"), r"algorithm is 'protonet' but its config says 'maml'"),
        (lambda run: run.__setitem__("label", "best"), r"label is 'best' but its config's label is ''"),
    ],
    ids=["ragged", "string", "missing", "unknown", "bool", "curve", "headline", "metric", "algorithm", "label"],
)
def test_a_run_that_breaks_the_schema_is_refused(bundle_and_target, edit, match):
    bundle, target, ids = bundle_and_target
    header, first, second = _lines(bundle)
    edit(first)
    first["content_sha256"] = content_sha256(first)  # the hash matches: the schema check must catch it
    _write_lines(bundle, [header, first, second])
    _rejected(target, bundle, rf"line 2 \(run '{ids[0]}'\): (evaluations\[0\] )?{match}")


def test_a_held_run_id_with_different_content_is_refused(bundle_and_target, tmp_path):
    bundle, target, ids = bundle_and_target
    import_bundles(target, bundle)
    header, first, second = _lines(bundle)
    first["timings"]["train_s"] = 99.0
    first["content_sha256"] = content_sha256(first)
    changed = tmp_path / "changed.jsonl.gz"
    _write_lines(changed, [header, first, second])
    _rejected(target, changed, rf"run '{ids[0]}' is already in .*target\.sqlite with different content")
    _, original, _ = _lines(bundle)
    _write_lines(changed, [dict(header, runs=2), original, first])  # one id, two contents, one file
    with ResultsStore(tmp_path / "fresh.sqlite") as fresh:
        _rejected(fresh, changed, rf"run '{ids[0]}' is already in an earlier line of this bundle with different content")


def test_a_value_that_is_not_finite_is_refused(bundle_and_target):
    bundle, target, ids = bundle_and_target
    header, first, second = _lines(bundle)
    first["evaluations"][1]["values"]["1"][0] = 12345.5
    first["content_sha256"] = content_sha256(first)
    _write_lines(bundle, [header, first, second])
    text = gzip.decompress(bundle.read_bytes()).decode().replace("12345.5", "1e999")  # JSON for +inf in Python
    bundle.write_bytes(gzip.compress(text.encode()))
    infinite = r"evaluations\[1\] values\['1'\]\[0\] is Infinity, expected a finite number or null"
    _rejected(target, bundle, rf"line 2 \(run '{ids[0]}'\): {infinite}")
    bundle.write_bytes(gzip.compress(text.replace("1e999", "NaN").encode()))
    _rejected(target, bundle, r"line 2: not valid JSON \(NaN is not JSON; a bundle writes a non-finite value as null")


# ---------------------------------------------------------------------- the commands, with a real run


def test_cli_export_and_import_a_real_run(tmp_path, capsys):
    store_path, copy_path = tmp_path / "results.sqlite", tmp_path / "copy.sqlite"
    assert main(["run", "quickstart", "--set", "train.meta_iterations=20", "--set", "evaluation.episodes=20",
                 "--set", "train.log_every=5", "--store", str(store_path), "--no-progress", "--quiet"]) == 0  # fmt: skip
    with ResultsStore(store_path) as store:
        (run_id,) = store.runs()["run_id"]
    capsys.readouterr()
    bundle = tmp_path / "runs" / "quickstart.jsonl.gz"
    assert main(["export", run_id, "--out", str(bundle), "--store", str(store_path)]) == 0
    assert f"1 run(s) ({run_id})" in capsys.readouterr().out
    assert main(["import", str(bundle), "--store", str(copy_path)]) == 0
    assert "imported 1 run(s), skipped 0" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "runs"), "--store", str(copy_path)]) == 0
    assert "imported 0 run(s), skipped 1" in capsys.readouterr().out
    with ResultsStore(store_path) as store, ResultsStore(copy_path) as copy:
        _assert_same(store, copy)
        run = copy.get_run(run_id)
        assert run["recipe_hash"] == recipe_hash(run["config"]) and run["timings"] and run["versions"]
        assert len(copy.training_curves()) == 4 and copy.episode_metrics()["episode"].max() == 19
    (header, line) = _lines(bundle)
    assert line["config"]["train"]["meta_iterations"] == 20 and {e["shots"] for e in line["evaluations"]} == {5, 10}

    assert main(["export", "--out", str(bundle), "--store", str(store_path)]) == 2
    assert "received no run id; name the runs to export (RUN_ID...) or pass --all" in capsys.readouterr().err
    assert main(["export", run_id, "--all", "--out", str(bundle), "--store", str(store_path)]) == 2
    assert "received both run ids and --all" in capsys.readouterr().err
    assert main(["export", "--all", "--out", str(bundle), "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "no results store at" in capsys.readouterr().err
    bundle.write_bytes(bundle.read_bytes()[:100])
    assert main(["import", str(bundle), "--store", str(copy_path)]) == 2
    assert "quickstart.jsonl.gz is not a complete gzip file" in capsys.readouterr().err
