"""Checkpoint and resume, end to end: kill -9 and resume is bit for bit, SIGTERM is a clean stop,
two `metabench run` processes share a store, and NaN retries go back to a checkpoint.

The kill test runs the sinusoid quickstart (small, with op determinism on) in subprocesses:
round 1 starts a run and kills it with SIGKILL at an arbitrary meta-iteration after its
checkpoint at 100; round 2 starts the same config afresh (the uninterrupted reference) and, at
the same time into the same store, re-runs the killed command with ``--resume``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from metabench.harness.cli.main import main
from metabench.harness.config import load_config
from metabench.harness.results.store import ResultsStore
from metabench.harness.run import core, lifecycle
from metabench.harness.run import session as run_session
from metabench.harness.run.checkpoint import CheckpointFolder

ITERATIONS = 600
SETS = [
    f"train.meta_iterations={ITERATIONS}",
    "train.checkpoint_every=25",
    "train.log_every=20",  # does not divide 25: a checkpoint holds a half-filled logging window
    "train.keep_checkpoints=true",  # the final checkpoint holds the final meta-parameters
    "evaluation.episodes=40",
    "engine.deterministic=true",
]


def _command(store: Path, *extra: str) -> list[str]:
    sets = [arg for value in SETS for arg in ("--set", value)]
    return [sys.executable, "-m", "metabench.harness.cli", "run", "quickstart", *sets, "--store", str(store),
            "--no-progress", "--quiet", *extra]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("checkpoints/*/ckpt-*.json"))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    store = folder / "results.sqlite"
    victim = _start(_command(store), folder / "victim.log")
    deadline = time.monotonic() + 240
    while not [i for i in _checkpoints(folder) if i >= 100]:
        assert victim.poll() is None, f"the run ended before it could be killed:\n{(folder / 'victim.log').read_text()}"
        assert time.monotonic() < deadline, "no checkpoint at meta-iteration 100 within 240 s"
        time.sleep(0.02)
    time.sleep(random.Random(7).uniform(0.0, 0.3))  # somewhere after it: an arbitrary iteration, maybe mid-write
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    with ResultsStore(store) as results:
        (killed_id,) = results.runs()["run_id"]
        killed_status = results.get_run(killed_id)["status"]
    killed_at = max(_checkpoints(folder))

    reference = _start(_command(store), folder / "reference.log")
    resumed = _start(_command(store, "--resume"), folder / "resumed.log")
    for process, log in ((reference, "reference.log"), (resumed, "resumed.log")):
        process.wait(400)
        assert process.returncode == 0, (folder / log).read_text()
    with ResultsStore(store) as results:
        runs = results.runs().set_index("run_id")
        reference_id = next(r for r in runs.index if r != killed_id)
        metrics = results.episode_metrics()
        curves = results.training_curves()
    return {"runs": runs, "metrics": metrics, "curves": curves, "killed": killed_id, "reference": reference_id,
            "killed_status": killed_status, "killed_at": killed_at}


@pytest.mark.slow  # like every test of killed_and_resumed, a module fixture that kills and resumes a run: 34 s (pytest -m slow)
def test_a_killed_run_is_left_running_and_resumes_in_its_own_row(killed_and_resumed):
    runs, killed = killed_and_resumed["runs"], killed_and_resumed["killed"]
    assert killed_and_resumed["killed_status"] == "running"  # kill -9 leaves no chance to record anything
    assert len(runs) == 2 and (runs["status"] == "completed").all()
    events = [e["event"] for e in runs.loc[killed, "history"]]
    assert events == ["started", "resumed", "completed"]
    resumed = runs.loc[killed, "history"][1]
    assert resumed["previous_status"] == "running"
    assert 100 <= resumed["from_iteration"] <= killed_and_resumed["killed_at"] and resumed["from_iteration"] % 25 == 0


@pytest.mark.slow  # reads killed_and_resumed (pytest -m slow)
def test_the_resumed_run_ends_bit_for_bit_as_the_uninterrupted_one(killed_and_resumed):
    metrics, curves, runs = killed_and_resumed["metrics"], killed_and_resumed["curves"], killed_and_resumed["runs"]
    killed, reference = killed_and_resumed["killed"], killed_and_resumed["reference"]
    columns = ["shots", "inner_steps", "episode", "value"]
    a = metrics[metrics["run_id"] == reference][columns].reset_index(drop=True)
    b = metrics[metrics["run_id"] == killed][columns].reset_index(drop=True)
    assert len(a) == 2 * 4 * 40  # shots 5 and 10, inner steps 0, 1, 5, 10, 40 episodes
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())  # every per-episode value, exactly
    columns = ["iteration", "loss", "metric"]
    np.testing.assert_array_equal(
        curves[curves["run_id"] == reference][columns].to_numpy(), curves[curves["run_id"] == killed][columns].to_numpy()
    )
    finals = [CheckpointFolder(runs.loc[r, "checkpoint_dir"]).latest() for r in (reference, killed)]
    assert [f.state.iteration for f in finals] == [ITERATIONS, ITERATIONS]
    for x, y in zip(finals[0].weights, finals[1].weights):
        np.testing.assert_array_equal(x, y)  # the final meta-parameters, exactly
    for x, y in zip(finals[0].optimizer_variables, finals[1].optimizer_variables):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # reads killed_and_resumed (pytest -m slow)
def test_two_run_processes_writing_one_store_both_land(killed_and_resumed):
    runs, killed, reference = killed_and_resumed["runs"], killed_and_resumed["killed"], killed_and_resumed["reference"]
    resumed_at = runs.loc[killed, "history"][1]["at"]
    assert runs.loc[reference, "created_at"] < runs.loc[killed, "finished_at"]  # their lifetimes overlapped
    assert resumed_at < runs.loc[reference, "finished_at"]
    counts = killed_and_resumed["metrics"].groupby("run_id").size()
    assert counts.to_dict() == {killed: 320, reference: 320}
    assert killed_and_resumed["curves"].groupby("run_id").size().to_dict() == {killed: ITERATIONS // 20, reference: ITERATIONS // 20}


# ---------------------------------------------------------------- in process

QUICK = ["train.meta_iterations=60", "train.checkpoint_every=20", "train.log_every=7", "evaluation.episodes=10",
         "evaluation.inner_steps=[0, 1]", "engine.deterministic=true"]


def _signal_at(monkeypatch, iteration: int, signum=signal.SIGTERM) -> None:
    """Make the run's trainer send ``signum`` to this process when it starts ``iteration``."""
    build = run_session.build

    def build_with_signal(*args, **kwargs):
        session = build(*args, **kwargs)
        trainer = session.trainer

        def trainer_with_signal(batch):
            if int(batch["iteration"][0]) == iteration:
                os.kill(os.getpid(), signum)
            return trainer(batch)

        session.trainer = trainer_with_signal
        return session

    monkeypatch.setattr(run_session, "build", build_with_signal)


def test_sigterm_stops_after_the_iteration_with_a_checkpoint_and_resume_run_id_completes_it(tmp_path, monkeypatch, caplog):
    store = tmp_path / "results.sqlite"
    with ResultsStore(store) as results:
        reference = lifecycle.run(load_config("quickstart", QUICK), store=results, show_progress=False)
    _signal_at(monkeypatch, 33)
    sets = [arg for value in QUICK for arg in ("--set", value)]
    assert main(["run", "quickstart", *sets, "--store", str(store), "--no-progress", "--quiet"]) == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the runner's handler is gone again
    with ResultsStore(store) as results:
        run = results.runs().iloc[-1]
    assert run["status"] == "interrupted"
    assert "Interrupted by SIGTERM at meta-iteration 34 of 60" in run["message"]
    assert f"Resume with `metabench run --resume {run['run_id']}`" in run["message"]
    assert CheckpointFolder(run["checkpoint_dir"]).iterations() == [20, 34]
    assert f"resume it with `metabench run --resume {run['run_id']}`" in caplog.text

    monkeypatch.undo()
    assert main(["run", "--resume", run["run_id"], "--store", str(store), "--no-progress", "--quiet"]) == 0  # the stored config
    with ResultsStore(store) as results:
        row = results.get_run(run["run_id"])
        metrics = results.episode_metrics()
    assert row["status"] == "completed" and row["message"] is None
    assert [e["event"] for e in row["history"]] == ["started", "interrupted", "resumed", "completed"]
    assert row["history"][2]["from_iteration"] == 34 and row["history"][2]["previous_status"] == "interrupted"
    assert not Path(row["checkpoint_dir"]).exists()  # a completed run's checkpoints are deleted by default
    values = [metrics[metrics["run_id"] == r].sort_values(["eval_id", "inner_steps", "episode"])["value"].to_numpy()
              for r in (reference.run_id, run["run_id"])]
    np.testing.assert_array_equal(values[0], values[1])


def test_resume_without_an_unfinished_run_starts_a_new_one(tmp_path, caplog):
    store = tmp_path / "results.sqlite"
    sets = [arg for value in QUICK for arg in ("--set", value)]
    with caplog.at_level("INFO"):
        assert main(["run", "quickstart", *sets, "--store", str(store), "--no-progress", "--resume"]) == 0
    assert "No unfinished run with this config" in caplog.text
    with ResultsStore(store) as results:
        assert list(results.runs()["status"]) == ["completed"]


def test_a_nan_loss_retries_from_the_last_checkpoint_with_a_lower_learning_rate(tmp_path, monkeypatch, caplog):
    build, faults = run_session.build, []

    def build_with_one_fault(*args, **kwargs):  # the first session's trainer reports a NaN loss at iteration 13
        session = build(*args, **kwargs)
        trainer, first = session.trainer, not faults
        faults.append(args[0]["train"]["meta_lr"])

        def trainer_with_fault(batch):
            logs = trainer(batch)
            return {**logs, "loss": float("nan")} if first and int(batch["iteration"][0]) == 13 else logs

        session.trainer = trainer_with_fault
        return session

    monkeypatch.setattr(run_session, "build", build_with_one_fault)
    overrides = ["train.meta_iterations=20", "train.checkpoint_every=5", "train.nan_retries=2", "train.nan_lr_factor=0.25",
                 "evaluation.episodes=10", "evaluation.inner_steps=[0, 1]"]
    with ResultsStore(tmp_path / "results.sqlite") as results:
        summary = lifecycle.run(load_config("quickstart", overrides), store=results, show_progress=False)
        row = results.get_run(summary.run_id)
        curve = results.training_curves()
    assert row["status"] == "completed"
    assert [e["event"] for e in row["history"]] == ["started", "nan_retry", "completed"]
    retry = row["history"][1]
    assert (retry["at_iteration"], retry["from_iteration"], retry["lr_scale"], retry["loss"]) == (13, 10, 0.25, "nan")
    assert faults == [0.001, 0.001 * 0.25]  # rebuilt with the lower meta learning rate
    assert "retrying from meta-iteration 10 with train.meta_lr x 0.25 (retry 1 of 2)" in caplog.text
    assert np.isfinite(curve["loss"]).all() and curve["iteration"].max() == 20


def test_a_diverging_run_recovers_with_a_lower_learning_rate(tmp_path):
    overrides = ["train.meta_iterations=20", "train.meta_lr=3.0", "train.nan_retries=1", "train.nan_lr_factor=0.001",
                 "evaluation.episodes=10", "evaluation.inner_steps=[0, 1]"]
    with ResultsStore(tmp_path / "results.sqlite") as results:
        summary = lifecycle.run(load_config("quickstart", overrides), store=results, show_progress=False)
        row = results.get_run(summary.run_id)
    assert row["status"] == "completed" and row["history"][1]["from_iteration"] == 0
    assert np.isfinite(summary.mean)


def test_a_nan_loss_without_retries_left_fails_with_the_iteration_and_last_finite_loss(tmp_path):
    overrides = ["train.meta_iterations=20", "train.meta_lr=3.0", "train.checkpoint_every=2", "train.nan_retries=1",
                 "train.nan_lr_factor=0.9", "evaluation.episodes=10"]
    with ResultsStore(tmp_path / "results.sqlite") as results:
        with pytest.raises(core.TrainingDiverged, match=r"loss became (nan|inf) at meta-iteration \d+ after 1 retries with lower "
                                                          r"learning rates; the last finite loss was \d"):
            lifecycle.run(load_config("quickstart", overrides), store=results, show_progress=False)
        row = results.runs().iloc[0]
    assert row["status"] == "failed" and "TrainingDiverged" in row["message"]
    assert [e["event"] for e in row["history"]] == ["started", "nan_retry", "failed"]
    assert CheckpointFolder(row["checkpoint_dir"]).iterations()  # kept: a failed run can be resumed by id
