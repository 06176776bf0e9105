"""The run core: meta-train a session to the end, then evaluate it on the fixed episode sets; no store.

Every path that runs a config (``metabench run``, both sweep executors, ``check --config``, the
conformance suite) comes through :func:`train_and_evaluate`, so a config gives the same result
whichever path ran it. The loop saves a checkpoint (:mod:`metabench.harness.run.checkpoint`) every
``train.checkpoint_every`` meta-iterations, at the end of training, and when SIGINT or SIGTERM
arrives (:class:`StopSignals`; after the current meta-iteration). A NaN or infinite loss fails the
run, or, with ``train.nan_retries``, goes back to the last checkpoint and continues with the meta
learning rate multiplied by ``train.nan_lr_factor``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import tempfile
import threading
import time

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from metabench.harness.config import config_hash
from metabench.harness.data.prefetch import Prefetcher
from metabench.harness.data.stream import stream_of
from metabench.harness.errors import MetabenchError
from metabench.harness.results.records import CurvePoint, Evaluation
from metabench.harness.run import checkpoint as ckpt
from metabench.harness.run.checkpoint import CheckpointError, CheckpointFolder, TrainingState
from metabench.harness.run.ensemble import evaluate_top_k
from metabench.harness.run.prepare import Prepared
from metabench.harness.run.prequential import evaluate_prequential
from metabench.harness.run.session import Session
from metabench.harness.run.stream import evaluate_stream

logger = logging.getLogger(__name__)


class TrainingDiverged(MetabenchError, RuntimeError):
    """The outer loss became NaN or infinite."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a meta-iteration; the message says where its checkpoint is."""


@dataclasses.dataclass
class RunResult:
    """What the run core produced for one resolved config: what the store records, and the session.

    Attributes:
        evaluations: one ``Evaluation`` per evaluation set, then one per set for a top-k ensemble.
        curve: the logged training curve (``CurvePoint`` list).
        timings: ``{"train_s", "data_wait_s", "eval_s"}`` in seconds.
        events: what happened on the way (NaN retries), as the store's history events.
        session: the trained session (the conformance suite inspects it).
    """

    evaluations: list
    curve: list
    timings: dict
    events: list
    session: Session


def train_and_evaluate(
    session: Session,
    state: TrainingState,
    config: dict,
    prepared: Prepared,
    *,
    rebuild,
    folder: CheckpointFolder | None = None,
    run_id: str = "",
    digest: str | None = None,
    show_progress: bool = False,
    stop: StopSignals | None = None,
    events: list | None = None,
) -> RunResult:
    """The run core: meta-train ``session`` from ``state`` to the end, then evaluate; no store.

    Every path that runs a config (``metabench run``, both sweep executors, ``check --config``, the
    conformance suite) comes through here with a session from :func:`metabench.harness.run.session.open_session`, so a config
    gives the same result whichever path ran it: NaN retries (``train.nan_retries``), checkpoints
    in ``folder`` every ``train.checkpoint_every`` iterations, and the top-k checkpoint ensemble
    (``evaluation.ensemble_top_k``, which ranks the checkpoints in ``folder``; without a folder a
    temporary one is used).

    Args:
        rebuild: ``rebuild(lr_scale) -> Session`` (from :func:`~metabench.harness.run.session.open_session`), for NaN retries.
        folder: where checkpoints go (``None``: none are written, except for an ensemble).
        run_id, digest: recorded in each checkpoint (``digest`` defaults to the config hash).
        stop: the caller's signal catcher (:class:`RunInterrupted` is raised after a checkpoint).
        events: a list the run's events are appended to as they happen, so a caller that
            catches an error still has them.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (after any retries).
        RunInterrupted: ``stop`` caught SIGINT or SIGTERM.
    """
    digest = digest or config_hash(config)
    events = events if events is not None else []
    with contextlib.ExitStack() as cleanup:
        if config["evaluation"]["ensemble_top_k"] and folder is None:
            folder = checkpoint_folder(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="metabench-")), config)
        session, state = _train(
            session, config, state, show_progress=show_progress, folder=folder, run_id=run_id, digest=digest,
            stop=stop, events=events, rebuild=rebuild,
        )
        if stop is not None:
            stop.defer = False  # the final checkpoint is saved: a signal now stops evaluation at once
            if stop.signal is not None:  # it arrived while that checkpoint was written
                raise RunInterrupted(f"Interrupted by {stop.signal} after training (checkpoint in {folder.path}).")
        logger.info(
            "Meta-training took %.1f s, %.2f s (%.2f%%) of it waiting for the next meta-batch.",
            state.seconds, state.data_wait_seconds, 100 * state.data_wait_seconds / max(state.seconds, 1e-9),
        )
        evaluation_started = time.perf_counter()
        evaluations = evaluate(session, prepared, config)
        if config["evaluation"]["ensemble_top_k"]:
            evaluations += evaluate_top_k(session, prepared, config, folder)
    timings = {"train_s": state.seconds, "data_wait_s": state.data_wait_seconds, "eval_s": time.perf_counter() - evaluation_started}
    return RunResult(evaluations, state.curve, timings, events, session)


def checkpoint_folder(path, config: dict) -> CheckpointFolder:
    """The checkpoint folder of a run of ``config`` at ``path``: an ensemble ranks every checkpoint,
    so then none is deleted before evaluation."""
    return CheckpointFolder(path, keep=10**9 if config["evaluation"]["ensemble_top_k"] else ckpt.KEEP)


def _train(
    session: Session,
    config: dict,
    state: TrainingState,
    *,
    show_progress: bool = False,
    folder: CheckpointFolder | None = None,
    run_id: str = "",
    digest: str = "",
    stop: StopSignals | None = None,
    events: list | None = None,
    rebuild=None,
) -> tuple[Session, TrainingState]:
    """Meta-train from ``state`` to ``train.meta_iterations``; returns the (possibly rebuilt) session and the state.

    With a ``folder``: a checkpoint every ``train.checkpoint_every`` iterations, at the end, and
    when ``stop`` has caught a signal (then :class:`RunInterrupted`). With ``rebuild(lr_scale) ->
    Session``: up to ``train.nan_retries`` retries from the last checkpoint after a NaN loss.
    """
    train = config["train"]
    metric_name = session.algorithm.objective.metric_name
    total, every, checkpoint_every = train["meta_iterations"], train["log_every"], train["checkpoint_every"]
    retries = train["nan_retries"] if rebuild is not None else 0
    events = events if events is not None else []

    def capture() -> ckpt.Checkpoint:
        return ckpt.capture(session.algorithm, session.optimizer, state, run_id=run_id, config_hash=digest)

    def save(snapshot: ckpt.Checkpoint) -> None:
        try:
            folder.save(snapshot)
        except CheckpointError as err:  # the previous checkpoint is intact; losing training would be worse
            logger.warning("%s Training goes on; the next checkpoint tries again.", err)

    last_good = capture() if retries else None
    clock = time.perf_counter() - state.seconds
    columns = (
        TextColumn("meta-training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[metric_name]} {task.fields[metric]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    # The next meta-batch is made on a thread while the current step computes (see harness.data.prefetch);
    # through a lambda, because a NaN retry rebinds `session`.
    batches = Prefetcher(lambda i: session.source.batch(i), total)
    with batches, Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("train", total=total, completed=state.iteration, loss="-", metric="-", metric_name=metric_name)
        while state.iteration < total:
            iteration = state.iteration
            batch = batches.get(iteration)
            state.data_wait_seconds += batches.last_wait_seconds
            logs = session.trainer(batch)
            loss = logs["loss"]
            if not math.isfinite(loss):
                if state.nan_retries < retries:
                    used, scale = state.nan_retries, state.lr_scale * train["nan_lr_factor"]
                    logger.warning(
                        "The meta-training loss became %s at meta-iteration %d; retrying from meta-iteration %d "
                        "with train.meta_lr x %g (retry %d of %d).",
                        loss, iteration, last_good.state.iteration, scale, used + 1, retries,
                    )
                    events.append(
                        {"event": "nan_retry", "loss": str(loss), "at_iteration": iteration,
                         "from_iteration": last_good.state.iteration, "lr_scale": scale}
                    )
                    session = rebuild(scale)
                    state = ckpt.restore(session.algorithm, session.optimizer, last_good)
                    state.lr_scale, state.nan_retries = scale, used + 1
                    last_good = capture()
                    progress.update(bar, completed=state.iteration)
                    continue
                tried = f" after {state.nan_retries} retries with lower learning rates" if state.nan_retries else ""
                raise TrainingDiverged(
                    f"The meta-training loss became {loss} at meta-iteration {iteration}{tried}; the last finite "
                    f"loss was {state.last_finite}. Lower train.meta_lr or algorithm.inner_lr, set "
                    "train.clip_meta_grad, or let train.nan_retries retry with a lower learning rate."
                )
            state.last_finite = loss
            state.window_loss.append(loss)
            state.window_metric.append(logs.get(metric_name, float("nan")))
            state.iteration += 1
            state.seconds = time.perf_counter() - clock
            if state.iteration % every == 0 or state.iteration == total:
                point = CurvePoint(state.iteration, float(np.mean(state.window_loss)), float(np.mean(state.window_metric)), state.seconds)
                state.curve.append(point)
                state.window_loss, state.window_metric = [], []
                progress.update(bar, loss=f"{point.loss:.4f}", metric=f"{point.metric:.4f}")
            progress.advance(bar)
            stopping = stop is not None and stop.signal is not None
            due = checkpoint_every and state.iteration % checkpoint_every == 0 and state.iteration < total
            if (due and (folder is not None or retries)) or (stopping and folder is not None):
                snapshot = capture()
                if folder is not None:
                    save(snapshot)
                last_good = snapshot if retries else None
            if stopping:
                where = f" (checkpoint in {folder.path})" if folder is not None else ""
                raise RunInterrupted(f"Interrupted by {stop.signal} at meta-iteration {state.iteration} of {total}{where}.")
    if folder is not None:
        save(capture())  # training is done: a resume goes straight to evaluation
    return session, state


class StopSignals:
    """While active, the first SIGINT or SIGTERM asks training to stop after the current meta-iteration.

    The training loop reads ``signal`` (the signal's name once one arrived), saves a checkpoint and
    raises :class:`RunInterrupted`. A second signal, or one while ``defer`` is False (evaluation),
    raises :class:`RunInterrupted` at once. Handlers are only installed in the main thread.
    """

    def __init__(self):
        self.signal: str | None = None
        self.defer = True
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM"):
                number = getattr(signal, name, None)
                if number is not None:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.defer and self.signal is None:
            self.signal = name
            logger.warning("Received %s: stopping after this meta-iteration and saving a checkpoint (send it again to stop at once).", name)
            return
        raise RunInterrupted(f"Interrupted by {name}.")


def evaluate(session: Session, prepared: Prepared, config: dict) -> list[Evaluation]:
    """Per-episode metrics of every evaluation set at every recorded inner-step count; with
    ``evaluation.prequential``, then the two prequential evaluations of each set
    (:mod:`metabench.harness.run.prequential`); with ``evaluation.stream``, then the four per-task
    results of the drifting task stream (:mod:`metabench.harness.run.stream`)."""
    evaluations = [_evaluate(session.evaluator, eval_set, prepared, config, session.algorithm) for eval_set in prepared.eval_sets]
    prequential, sets = [], prepared.prequential_sets
    if config["evaluation"]["prequential"] and not sets:  # a Prepared built by hand (the conformance suite's)
        sets = [eval_set.with_arrivals() for eval_set in prepared.eval_sets]
    for plain, eval_set in zip(evaluations, sets):
        prequential += evaluate_prequential(session, eval_set, prepared, config, plain.notes)
    stream = []
    if config["evaluation"]["stream"]:
        sequence = prepared.stream if prepared.stream is not None else stream_of(config, prepared.train_source)
        stream = evaluate_stream(session, sequence, config, evaluations[0].notes if evaluations else {})
    return evaluations + prequential + stream


def _evaluate(evaluator, eval_set, prepared, config, algorithm) -> Evaluation:
    evaluation = config["evaluation"]
    chunks = [evaluator(batch)["metric"] for batch in eval_set.batches(evaluation["batch_size"], prepared.eval_pool)]
    per_step = np.concatenate(chunks, axis=0)  # [episodes, max_steps + 1]
    steps = sorted(set(evaluation["inner_steps"]))
    headline = evaluation["headline_steps"] if evaluation["headline_steps"] != -1 else max(steps)
    notes = dict(algorithm.notes())
    if not _has_batch_norm(algorithm.model):
        notes.pop("batch_norm", None)
    inner_lr = algorithm.eval_inner_lr or algorithm.inner_lr
    if inner_lr is not None:
        notes["eval_inner_lr"] = inner_lr
    return Evaluation(
        split=eval_set.split,
        ways=eval_set.spec.ways,
        shots=eval_set.spec.shots,
        queries=eval_set.spec.queries,
        fingerprint=eval_set.fingerprint,
        metric=algorithm.objective.metric_name,
        headline_steps=headline,
        values={s: per_step[:, s].astype(np.float64) for s in steps},
        notes=notes,
    )


def _has_batch_norm(model) -> bool:
    import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
