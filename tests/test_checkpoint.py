"""Checkpoints: a restored run continues exactly, writes are atomic, the newest two are kept, damage
and full disks are survived, pickles are refused, and one process at a time trains a run."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import re

import numpy as np
import pytest

from metabench.harness.run import checkpoint
from metabench.harness.run.checkpoint import Checkpoint, CheckpointError, CheckpointFolder, TrainingState
from metabench.harness.run.prepare import prepare
from metabench.harness.run.session import build
from metabench.harness.config import load_config
from metabench.harness.engines import get_engine, select_backend
from metabench.harness.results.records import CurvePoint

SMALL = ["train.meta_iterations=40", "train.log_every=4", "evaluation.episodes=10", "engine.deterministic=true"]


def _fake(iteration: int, run_id: str = "run-a", config_hash: str = "h" * 64) -> Checkpoint:
    """A checkpoint without a model: enough for the folder's own behaviour."""
    rng = np.random.default_rng(iteration)
    return Checkpoint(
        run_id=run_id,
        config_hash=config_hash,
        state=TrainingState(
            iteration=iteration,
            curve=[CurvePoint(4, 1.5, 0.25, 0.5)],
            window_loss=[0.75, 0.5],
            window_metric=[0.25, 0.125],
            last_finite=0.5,
            seconds=1.25,
            data_wait_seconds=0.125,
        ),
        weights=[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)],
        model_variables=[],
        optimizer_variables=[np.array(iteration, dtype=np.int64), np.zeros((3, 2), np.float32)],
        optimizer_names=["iteration", "kernel_momentum"],
        rng={"python": [3, list(range(625)), None], "numpy": {"kind": "MT19937", "key": np.arange(624, dtype=np.uint32),
                                                                "pos": 624, "has_gauss": 0, "cached_gaussian": 0.0}},
    )


def _files(folder: CheckpointFolder) -> list[str]:
    return sorted(p.name for p in folder.path.iterdir())


# ---------------------------------------------------------------- a real run restored


@pytest.fixture(scope="module")
def sinusoid():
    config = load_config("quickstart", SMALL)
    select_backend(config["backend"])
    prepared = prepare(config)
    engine = get_engine(config["backend"], **config["engine"])
    return config, lambda: build(config, prepared, engine)


def _steps(session, start: int, count: int) -> list[float]:
    return [session.trainer(session.source.batch(i))["loss"] for i in range(start, start + count)]


def test_a_restored_session_continues_exactly(sinusoid, tmp_path):
    config, make = sinusoid
    original = make()
    _steps(original, 0, 5)
    folder = CheckpointFolder(tmp_path / "run")
    state = TrainingState(iteration=5, window_loss=[0.5], window_metric=[0.25], last_finite=0.5, seconds=2.0)
    folder.save(checkpoint.capture(original.algorithm, original.optimizer, state, run_id="r", config_hash="c"))
    expected = _steps(original, 5, 3)

    fresh = make()
    restored = checkpoint.restore(fresh.algorithm, fresh.optimizer, folder.latest(run_id="r", config_hash="c"))
    assert restored == state
    assert _steps(fresh, 5, 3) == expected  # bit for bit: same losses ...
    for a, b in zip(original.algorithm.get_weights(), fresh.algorithm.get_weights()):
        np.testing.assert_array_equal(a, b)  # ... and the same meta-parameters
    for a, b in zip(original.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))  # Adam moments, iteration count


def test_a_checkpoint_of_another_model_is_refused(sinusoid):
    config, make = sinusoid
    session = make()
    saved = checkpoint.capture(session.algorithm, session.optimizer, TrainingState(iteration=1), run_id="r", config_hash="c")
    saved.weights[0] = saved.weights[0][:, :3]
    with pytest.raises(CheckpointError, match=r"does not fit this algorithm: Received shape \(1, 3\).*another config"):
        checkpoint.restore(session.algorithm, session.optimizer, saved)


# ---------------------------------------------------------------- the folder


def test_saves_are_files_and_sidecars_and_the_newest_two_are_kept(tmp_path):
    folder = CheckpointFolder(tmp_path / "run")
    for iteration in (10, 20, 30):
        folder.save(_fake(iteration))
    assert folder.iterations() == [20, 30]
    assert _files(folder) == ["ckpt-00000020.json", "ckpt-00000020.npz", "ckpt-00000030.json", "ckpt-00000030.npz"]
    sidecar = json.loads((folder.path / "ckpt-00000030.json").read_text())
    assert sidecar["iteration"] == 30 and sidecar["run_id"] == "run-a"
    assert sidecar["sha256"] == hashlib.sha256((folder.path / "ckpt-00000030.npz").read_bytes()).hexdigest()
    loaded = folder.latest()
    assert loaded.state == _fake(30).state
    np.testing.assert_array_equal(loaded.weights[0], _fake(30).weights[0])
    assert loaded.weights[0].dtype == np.float32 and loaded.optimizer_variables[0].dtype == np.int64


def test_an_empty_or_missing_folder_has_no_checkpoint(tmp_path):
    assert CheckpointFolder(tmp_path / "nowhere").latest() is None
    (tmp_path / "empty").mkdir()
    assert CheckpointFolder(tmp_path / "empty").latest() is None


def test_a_process_killed_mid_write_leaves_only_a_temporary_file(tmp_path):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    (folder.path / ".ckpt-00000020.npz.999.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert folder.latest().state.iteration == 10  # the partial write is not a checkpoint
    folder.save(_fake(20))
    assert ".ckpt-00000020.npz.999.tmp" not in _files(folder)  # cleaned by the next save
    assert folder.iterations() == [10, 20]


class _FullDisk(io.BytesIO):
    """A file that takes ``room`` bytes and then fails like a full disk."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)

    def fileno(self):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["arrays", "sidecar"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    before = {name: (folder.path / name).read_bytes() for name in _files(folder)}
    real_open = checkpoint._open_for_write

    def open_for_write(path):
        if (failing == "arrays") == path.name.startswith(".ckpt-00000020.npz"):
            return _FullDisk(room=100)
        return real_open(path)

    monkeypatch.setattr(checkpoint, "_open_for_write", open_for_write)
    expected = r"Could not write checkpoint ckpt-00000020 of run run-a in .*: No space left on device\. The disk is full.*" \
               r"The previous checkpoint \(meta-iteration 10\) is intact\."
    with pytest.raises(CheckpointError, match=expected):
        folder.save(_fake(20))
    assert {name: (folder.path / name).read_bytes() for name in _files(folder)} == before  # nothing new, nothing lost
    assert folder.latest().state.iteration == 10


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    folder.save(_fake(20))
    newest = folder.path / "ckpt-00000020.npz"
    newest.write_bytes(newest.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        assert folder.latest().state.iteration == 10
    assert "ckpt-00000020.npz do not match the sha256" in caplog.text
    (folder.path / "ckpt-00000010.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"None of the 2 checkpoint\(s\) in .* reads back intact .* Delete .* from the start"):
        folder.latest()


def test_a_checkpoint_that_needs_pickles_is_refused(tmp_path):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    arrays = folder.path / "ckpt-00000010.npz"
    with np.load(arrays) as npz:
        content = {name: npz[name] for name in npz.files}
    content["weight_0000"] = np.array([{"evil": "pickle"}], dtype=object)
    np.savez(arrays, allow_pickle=True, **content)
    sidecar = folder.path / "ckpt-00000010.json"
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(arrays.read_bytes()).hexdigest()  # a consistent, but pickled, checkpoint
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"ckpt-00000010\.npz is malformed or would need pickles to read"):
        folder.load(10)


def test_a_checkpoint_of_another_run_or_config_is_refused(tmp_path):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    with pytest.raises(CheckpointError, match=r"belong to run run-a, not run-b"):
        folder.latest(run_id="run-b")
    with pytest.raises(CheckpointError, match=r"written for config hash hhhhhhhhhhhh, not cccccccccccc; a run resumes only with"):
        folder.latest(config_hash="c" * 64)


def test_another_format_version_is_refused_by_name(tmp_path):
    folder = CheckpointFolder(tmp_path / "run")
    folder.save(_fake(10))
    sidecar = folder.path / "ckpt-00000010.json"
    sidecar.write_text(sidecar.read_text().replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(CheckpointError, match=r"has checkpoint format version 9, but this metabench reads version 1"):
        folder.load(10)


def test_one_process_at_a_time_trains_a_run(tmp_path):
    first, second = CheckpointFolder(tmp_path / "run"), CheckpointFolder(tmp_path / "run")
    with first.locked("run-a"):
        assert second.is_locked()
        with pytest.raises(CheckpointError, match=r"Run run-a is being trained by another process right now \(pid \d+; it holds"):
            second.acquire("run-a")
    assert not second.is_locked()
    with second.locked("run-a"):
        assert re.fullmatch(r"\d+", (tmp_path / "run" / "lock").read_text())
