"""One run, end to end: resolved config -> dataset, episodes, model, algorithm, engine -> store.

The runner validates everything it can before it records a run (episode specs against the data,
the model's head against the evaluation ways), then meta-trains with a progress bar, evaluates on
the fixed episode sets and hands the results to the store in one transaction. A run that fails or
is interrupted is recorded with that status and never counts as a result.

Long runs (see ``docs/long-runs.md``): :func:`run` saves a checkpoint
(:mod:`metabench.harness.checkpoint`) every ``train.checkpoint_every`` meta-iterations, at the end
of training, and when SIGINT or SIGTERM arrives (after the current meta-iteration; the run is then
recorded ``"interrupted"``). ``run(..., resume=RUN_ID)`` continues a run that did not complete from
its newest intact checkpoint and completes it in the same store row; with op determinism on, the
result is bit for bit the one of an uninterrupted run on the same machine. A NaN or infinite loss
fails the run, or, with ``train.nan_retries``, goes back to the last checkpoint and continues with
the meta learning rate multiplied by ``train.nan_lr_factor``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import platform
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from metabench.datasets.base import ClassificationDataset
from metabench.harness import checkpoint as ckpt
from metabench.harness import episodes as ep
from metabench.harness.checkpoint import CheckpointError, CheckpointFolder, TrainingState
from metabench.harness.config import ConfigError, config_hash
from metabench.harness import training_data
from metabench.harness.engines import get_engine, select_backend
from metabench.harness.ensemble import evaluate_top_k
from metabench.harness.errors import MetabenchError
from metabench.harness.prefetch import Prefetcher
from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS
from metabench.harness.results import CurvePoint, Evaluation, RunInfo
from metabench.harness.stats import mean_ci95
from metabench.harness.store import StoreError, new_run_id

logger = logging.getLogger(__name__)


class TrainingDiverged(MetabenchError, RuntimeError):
    """The outer loss became NaN or infinite."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after a meta-iteration; the message says where its checkpoint is."""


RESUME_LATEST = "latest"
"""``run(..., resume=RESUME_LATEST)``: continue the newest unfinished run with the same config hash."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What ``metabench run --json`` prints: the headline of the first evaluation setting, and all of them."""

    run_id: str
    metric: str
    mean: float
    ci95: float
    episodes: int
    inner_steps: int
    settings: list

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Prepared:
    """Data side of a run: the training pool (or task family) and the fixed evaluation sets.

    Attributes:
        train_source: ``ClassPool`` of the training split, or the ``RegressionTaskFamily``.
        train_spec: episode shape of meta-training.
        eval_sets: one ``EvaluationSet`` per evaluation setting.
        eval_pool: ``ClassPool`` the evaluation episodes index (``None`` for regression).
        input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(1,)``.
        kind: ``"classification"`` or ``"regression"``.
        output_dim: regression output size (unused for classification).
    """

    train_source: object
    train_spec: ep.EpisodeSpec
    eval_sets: list
    eval_pool: object
    input_shape: tuple
    kind: str
    output_dim: int = 1
    validation_set: object = None


def prepare(config: dict, data_dir=None, cache_dir=None) -> Prepared:
    """Build the dataset and every episode set, checking the specs against the data."""
    dataset_options = {k: v for k, v in config["dataset"].items() if k != "name"}
    dataset = DATASETS.get(config["dataset"]["name"]).factory(data_dir=data_dir, cache_dir=cache_dir, **dataset_options)
    train, evaluation = config["train"], config["evaluation"]
    name = config["dataset"]["name"]
    eval_shots = [s or train["shots"] for s in evaluation["shots"]]
    eval_queries = evaluation["queries"] or train["queries"]
    if isinstance(dataset, ClassificationDataset):
        if train["ways"] == 0:
            raise ConfigError(f"{name} is a classification dataset: set train.ways (e.g. 5).")
        ways = evaluation["ways"] or train["ways"]
        train_spec = ep.EpisodeSpec(train["ways"], train["shots"], train["queries"])
        eval_rotations = evaluation["rotations"] or train["rotations"]
        inputs = ep.input_description(config["dataset"], dataset.preprocess_version)
        train_pool = dataset.split(train["split"])
        ep.check_classification_spec(train_pool, train_spec, train["rotations"], name)
        eval_pool = train_pool if evaluation["split"] == train["split"] else dataset.split(evaluation["split"])
        eval_sets = [
            ep.classification_evaluation_set(
                name, eval_pool, ep.EpisodeSpec(ways, shots, eval_queries), evaluation["episodes"], evaluation["seed"], eval_rotations,
                inputs,
            )
            for shots in eval_shots
        ]
        validation_set = None
        if evaluation["ensemble_top_k"]:
            validation_pool = dataset.split(evaluation["validation_split"])
            validation_set = ep.classification_evaluation_set(
                name, validation_pool, ep.EpisodeSpec(ways, eval_shots[0], eval_queries), evaluation["validation_episodes"],
                evaluation["seed"], eval_rotations, inputs,
            )
            validation_set = (validation_set, validation_pool)
        return Prepared(train_pool, train_spec, eval_sets, eval_pool, train_pool.image_shape, "classification",
                        validation_set=validation_set)
    if train["ways"] or evaluation["ways"]:
        raise ConfigError(f"{name} is a regression task family: leave train.ways and evaluation.ways unset (0).")
    if evaluation["ensemble_top_k"]:
        raise ConfigError("evaluation.ensemble_top_k ensembles classifiers' logits; it is for classification datasets only.")
    train_spec = ep.EpisodeSpec(None, train["shots"], train["queries"])
    eval_sets = [
        ep.regression_evaluation_set(dataset, ep.EpisodeSpec(None, shots, eval_queries), evaluation["episodes"], evaluation["seed"], evaluation["split"])
        for shots in eval_shots
    ]
    return Prepared(dataset, train_spec, eval_sets, None, (dataset.input_dim,), "regression", dataset.output_dim)


@dataclasses.dataclass
class Session:
    """Everything a run trains and evaluates with, built from a resolved config and prepared data."""

    algorithm: object
    source: object
    optimizer: object
    trainer: object
    evaluator: object


def build(config: dict, prepared: Prepared, engine, algorithm=None) -> Session:
    """Model, algorithm, batch source, optimizer and compiled steps for ``config``.

    ``algorithm`` overrides the config's (the conformance suite passes an unregistered one).
    """
    import keras

    if algorithm is None:
        algorithm = _component(config, "algorithm", ALGORITHMS)
    name = type(algorithm).__name__
    if prepared.kind not in algorithm.task_kinds:
        raise ConfigError(f"Algorithm {config['algorithm']['name']!r} handles {list(algorithm.task_kinds)} tasks, not {prepared.kind}.")
    train_ways = prepared.train_spec.ways
    if prepared.kind == "classification" and not algorithm.flexible_ways:
        eval_ways = {s.spec.ways for s in prepared.eval_sets}
        if eval_ways != {train_ways}:
            raise ConfigError(
                f"Received evaluation.ways={sorted(eval_ways)} but train.ways={train_ways}: {name} keeps the "
                f"{train_ways}-way head it meta-learned. Use the same ways for training and evaluation."
            )
    source = training_data.make_source(
        algorithm.training_data, prepared.train_source, prepared.train_spec, config["train"], config["seed"],
        getattr(algorithm, "num_tasks", 0),
    )
    keras.utils.set_random_seed(config["seed"])
    pooled = getattr(source, "num_classes", None)
    outputs = algorithm.output_units(train_ways if prepared.kind == "classification" else prepared.output_dim, pooled)
    model = _component(config, "model", MODELS, prepared.input_shape, outputs)
    algorithm.build(model, prepared.kind, engine)
    optimizer, trainer = compile_meta_step(algorithm, config["train"], engine)
    variables, state_variables = algorithm.meta_variables(), algorithm.state_variables()
    max_steps = max(config["evaluation"]["inner_steps"])
    from metabench.harness.scoring import scored_task_eval  # the harness scores what task_eval predicts

    evaluator = engine.make_evaluator(scored_task_eval(algorithm, max_steps), variables, state_variables)
    return Session(algorithm, source, optimizer, trainer, evaluator)


def compile_meta_step(algorithm, train: dict, engine):
    """The outer optimizer (Adam, with the ``[train]`` table's schedule and clipping) and the
    engine's compiled meta-training step of a built ``algorithm``: ``(optimizer, trainer)``.

    The one place a meta-step is made: runs and ``metabench bench`` time and train the same step.
    """
    import keras

    learning_rate = train["meta_lr"]
    if train["meta_lr_schedule"] == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            train["meta_lr"], decay_steps=train["meta_iterations"], alpha=train["meta_lr_min"] / train["meta_lr"]
        )
    optimizer = keras.optimizers.Adam(learning_rate, clipvalue=train["clip_meta_grad"] or None)
    trainer = engine.make_meta_trainer(algorithm.task_loss, algorithm.meta_variables(), optimizer, algorithm.state_variables())
    return optimizer, trainer


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


def open_session(config: dict, prepared: Prepared, engine, saved: ckpt.Checkpoint | None = None, algorithm_factory=None):
    """The session a run of ``config`` trains, restored from ``saved`` when given.

    Everything that can refuse the config (the algorithm against the task kind and ways, the
    model's options) is checked here, before a caller records a run. ``algorithm_factory``: a
    callable returning a fresh algorithm in place of the config's (the conformance suite).

    Returns:
        ``(session, state, rebuild)``: ``state`` is the ``TrainingState`` to continue from and
        ``rebuild(lr_scale) -> Session`` builds a fresh session (what a NaN retry restarts).
    """

    def rebuild(lr_scale: float) -> Session:
        algorithm = algorithm_factory() if algorithm_factory is not None else None
        return build(_scaled(config, lr_scale), prepared, engine, algorithm)

    state = saved.state if saved else TrainingState()
    session = rebuild(state.lr_scale)
    if saved:
        state = ckpt.restore(session.algorithm, session.optimizer, saved)
    return session, state, rebuild


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
    stop: "_StopSignals | None" = None,
    events: list | None = None,
) -> RunResult:
    """The run core: meta-train ``session`` from ``state`` to the end, then evaluate; no store.

    Every path that runs a config (``metabench run``, both sweep executors, ``check --config``, the
    conformance suite) comes through here with a session from :func:`open_session`, so a config
    gives the same result whichever path ran it: NaN retries (``train.nan_retries``), checkpoints
    in ``folder`` every ``train.checkpoint_every`` iterations, and the top-k checkpoint ensemble
    (``evaluation.ensemble_top_k``, which ranks the checkpoints in ``folder``; without a folder a
    temporary one is used).

    Args:
        rebuild: ``rebuild(lr_scale) -> Session`` (from :func:`open_session`), for NaN retries.
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


def run(
    config: dict,
    *,
    store,
    data_dir=None,
    cache_dir=None,
    show_progress: bool = True,
    resume: str | None = None,
    checkpoint_dir=None,
    prepared: Prepared | None = None,
) -> RunSummary:
    """Meta-train and evaluate ``config`` (resolved) with the run core, recording the run in ``store``.

    Args:
        config: a resolved config (:func:`metabench.harness.config.load_config`).
        store: the :class:`metabench.harness.store.ResultsStore` to record the run in.
        data_dir: folder holding the datasets.
        cache_dir: folder for decoded-dataset caches.
        show_progress: draw a progress bar.
        resume: ``None``: a new run. A run id: continue that run (``"interrupted"``, ``"failed"``,
            or left ``"running"`` by a killed process) from its newest intact checkpoint, or from
            the start when it has none; ``config`` must have the run's config hash.
            :data:`RESUME_LATEST`: continue the newest such run with ``config``'s hash that no
            other process is training, or start a new run when there is none.
        checkpoint_dir: folder of the runs' checkpoint folders (``<checkpoint_dir>/<run_id>/``);
            default: ``checkpoints/`` beside the store (or, on resume, where the run kept them).
        prepared: what :func:`prepare` returned for this ``config``, ``data_dir`` and
            ``cache_dir``, for a caller that already prepared them (default: prepared here).

    Raises:
        ConfigError: ``resume`` names a run of another config.
        StoreError: ``resume`` names no run, or a completed one; or the store refused a write.
        CheckpointError: the run's checkpoint folder is locked by a live process, or its
            checkpoints are all damaged.
        TrainingDiverged: the loss became NaN or infinite (after any retries).
        RunInterrupted: SIGINT or SIGTERM (the run is recorded ``"interrupted"``).
    """
    select_backend(config["backend"])
    digest = config_hash(config)
    root = (Path(checkpoint_dir) if checkpoint_dir is not None else Path(store.path).parent / "checkpoints").absolute()
    target = _resume_target(store, resume, digest, root, explicit_root=checkpoint_dir is not None)
    folder = target[1] if target else None
    try:
        if prepared is None:
            prepared = prepare(config, data_dir, cache_dir)
        engine = get_engine(config["backend"], **config["engine"])
        saved = folder.latest(run_id=target[0], config_hash=digest) if target else None
        session, state, rebuild = open_session(config, prepared, engine, saved)
        details = run_details(engine, config)
        if target:
            run_id = target[0]
            store.resume_run(run_id, from_iteration=state.iteration, checkpoint_dir=folder.path, details=details)  # logs it
        else:
            run_id = new_run_id()
            folder = checkpoint_folder(root / run_id, config)
            folder.acquire(run_id)  # before the run is recorded, so no resumer takes it for a dead one
            try:
                store.start_run(run_info(config, digest, details), run_id=run_id, checkpoint_dir=folder.path)
            except BaseException:
                folder.release()
                folder.remove()
                raise
    except BaseException:
        if folder is not None:
            folder.release()
        raise

    events: list[dict] = []
    stop = _StopSignals()
    try:
        with stop:
            result = train_and_evaluate(
                session, state, config, prepared, rebuild=rebuild, folder=folder, run_id=run_id, digest=digest,
                show_progress=show_progress, stop=stop, events=events,
            )
        store.complete_run(run_id, result.evaluations, result.curve, result.timings, events=events)
    except KeyboardInterrupt as error:
        message = str(error) or "interrupted by the user (KeyboardInterrupt)"
        store.fail_run(run_id, "interrupted", f"{message} Resume with `metabench run --resume {run_id}`.", events=events)
        logger.warning("Run %s interrupted; resume it with `metabench run --resume %s`.", run_id, run_id)
        folder.release()
        raise
    except BaseException as error:
        store.fail_run(run_id, "failed", f"{type(error).__name__}: {error}", events=events)
        folder.release()
        if not folder.iterations():  # nothing to resume from: leave no empty folder behind
            folder.remove()
        raise
    folder.release()
    if not config["train"]["keep_checkpoints"]:
        folder.remove()
    return summarize(run_id, result.evaluations, len(prepared.eval_sets[0]))


def summarize(run_id: str, evaluations: list, episodes: int) -> RunSummary:
    """The headline of each evaluation setting (what ``metabench run --json`` prints)."""
    settings = []
    for evaluation in evaluations:
        headline = evaluation.values[evaluation.headline_steps]
        mean, half_width = float("nan"), float("nan")
        if np.all(np.isfinite(headline)):
            ci = mean_ci95(headline)
            mean, half_width = ci.mean, ci.half_width
        else:
            logger.warning(
                "%d of %d episodes have a non-finite %s after %d inner steps (adaptation diverged); the summary shows NaN.",
                int(np.sum(~np.isfinite(headline))), len(headline), evaluation.metric, evaluation.headline_steps,
            )
        settings.append(
            {
                "split": evaluation.split,
                "ways": evaluation.ways,
                "shots": evaluation.shots,
                "queries": evaluation.queries,
                "fingerprint": evaluation.fingerprint,
                "inner_steps": evaluation.headline_steps,
                "mean": mean,
                "ci95": half_width,
                "by_inner_steps": {int(s): float(np.mean(v)) for s, v in evaluation.values.items()},
            }
        )
    first = settings[0]
    return RunSummary(run_id, evaluations[0].metric, first["mean"], first["ci95"], episodes, first["inner_steps"], settings)


def _train(
    session: Session,
    config: dict,
    state: TrainingState,
    *,
    show_progress: bool = False,
    folder: CheckpointFolder | None = None,
    run_id: str = "",
    digest: str = "",
    stop: "_StopSignals | None" = None,
    events: list | None = None,
    rebuild=None,
) -> tuple[Session, TrainingState]:
    """Meta-train from ``state`` to ``train.meta_iterations``; returns the (possibly rebuilt) session and the state.

    With a ``folder``: a checkpoint every ``train.checkpoint_every`` iterations, at the end, and
    when ``stop`` has caught a signal (then :class:`RunInterrupted`). With ``rebuild(lr_scale) ->
    Session``: up to ``train.nan_retries`` retries from the last checkpoint after a NaN loss.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
    # The next meta-batch is made on a thread while the current step computes (see harness.prefetch);
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


class _StopSignals:
    """While active, the first SIGINT or SIGTERM asks training to stop after the current meta-iteration.

    The training loop reads ``signal`` (the signal's name once one arrived), saves a checkpoint and
    raises :class:`RunInterrupted`. A second signal, or one while ``defer`` is False (evaluation),
    raises :class:`RunInterrupted` at once. Handlers are only installed in the main thread.
    """

    def __init__(self):
        self.signal: str | None = None
        self.defer = True
        self._previous: dict = {}

    def __enter__(self) -> "_StopSignals":
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


def _scaled(config: dict, lr_scale: float) -> dict:
    """``config`` with ``train.meta_lr`` and ``train.meta_lr_min`` multiplied by ``lr_scale`` (itself at 1)."""
    if lr_scale == 1.0:
        return config
    scaled = copy.deepcopy(config)
    scaled["train"]["meta_lr"] *= lr_scale
    scaled["train"]["meta_lr_min"] *= lr_scale
    return scaled


def _resume_target(store, resume: str | None, digest: str, root: Path, *, explicit_root: bool):
    """``(run_id, locked CheckpointFolder)`` of the run to continue, or ``None`` for a new run."""
    if resume is None:
        return None
    if resume == RESUME_LATEST:
        runs = store.runs()
        if len(runs):
            runs = runs[(runs["config_hash"] == digest) & runs["status"].isin(["interrupted", "running"])]
        for row in reversed(runs.to_dict("records") if len(runs) else []):
            folder = _folder_of(row, root, explicit_root)
            try:
                folder.acquire(row["run_id"])
            except CheckpointError:
                continue  # a live process trains it
            return row["run_id"], folder
        logger.info("No unfinished run with this config (hash %s) in %s to resume; starting a new run.", digest[:12], store.path)
        return None
    row = store.get_run(resume)
    if row["status"] == "completed":
        raise StoreError(
            f"Run {resume} already completed; there is nothing to resume. Start a new run (without --resume) "
            "to record another result."
        )
    if row["config_hash"] != digest:
        raise ConfigError(
            f"Received a config with hash {digest[:12]}, but run {resume} was started with config hash "
            f"{row['config_hash'][:12]}. A run resumes only with its own config: give no config and no --set "
            "(`metabench run --resume RUN_ID` uses the stored one), or the same ones as when it started."
        )
    folder = _folder_of(row, root, explicit_root)
    folder.acquire(resume)
    return resume, folder


def _folder_of(row: dict, root: Path, explicit_root: bool) -> CheckpointFolder:
    recorded = row.get("checkpoint_dir")
    if recorded and not explicit_root:
        return CheckpointFolder(recorded)
    return CheckpointFolder(root / row["run_id"])


def evaluate(session: Session, prepared: Prepared, config: dict) -> list[Evaluation]:
    """Per-episode metrics of every evaluation set at every recorded inner-step count."""
    return [_evaluate(session.evaluator, eval_set, prepared, config, session.algorithm) for eval_set in prepared.eval_sets]


def _evaluate(evaluator, eval_set, prepared, config, algorithm) -> Evaluation:
    evaluation = config["evaluation"]
    chunks = [evaluator(batch)["metric"] for batch in eval_set.batches(evaluation["batch_size"], prepared.eval_pool)]
    per_step = np.concatenate(chunks, axis=0)  # [episodes, max_steps + 1]
    steps = sorted(set(evaluation["inner_steps"]))
    headline = evaluation["headline_steps"] if evaluation["headline_steps"] != -1 else max(steps)
    notes = dict(algorithm.notes())
    if not _has_batch_norm(algorithm.model):
        notes.pop("batch_norm", None)
    inner_lr = getattr(algorithm, "eval_inner_lr", None) or getattr(algorithm, "inner_lr", None)
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
    import keras

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def _component(config: dict, table: str, registry, *args):
    """Build the ``[table]`` component of ``config`` from ``registry``; a value it refuses is a ConfigError."""
    name = config[table]["name"]
    options = {k: v for k, v in config[table].items() if k != "name"}
    try:
        return registry.get(name).factory(*args, **options)
    except ValueError as error:
        raise ConfigError(f"{table} {name!r} refused its options: {error} Change it in the config's [{table}] "
                          f"table or with --set {table}.OPTION=VALUE.") from error


def run_details(engine, config: dict | None = None) -> dict:
    """Where a run computes: ``{"device", "versions", "git_commit"}`` (recorded at start and on resume)."""
    return {"device": engine.describe_device(), "versions": library_versions(config), "git_commit": git_commit()}


def run_info(config: dict, digest: str, details: dict) -> RunInfo:
    """The store's record of a run of ``config`` (hash ``digest``) computed where ``details`` says."""
    return RunInfo(
        algorithm=config["algorithm"]["name"],
        dataset=config["dataset"]["name"],
        seed=config["seed"],
        config=config,
        config_hash=digest,
        backend=config["backend"],
        device=details["device"],
        versions=details["versions"],
        git_commit=details["git_commit"],
    )


def library_versions(config: dict | None = None) -> dict:
    """Versions of the libraries a result depends on, and of every plugin distribution that
    provides one of ``config``'s components (its dataset, model or algorithm)."""
    import importlib.metadata

    versions = {"python": platform.python_version()}
    names = ["metabench", "keras", "tensorflow", "jax", "numpy"]
    if config is not None:
        for table, registry in (("algorithm", ALGORITHMS), ("dataset", DATASETS), ("model", MODELS)):
            source = registry.get(config[table]["name"]).source
            if source != "metabench" and source not in names:
                names.append(source)
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the metabench source tree, with ``+dirty`` when it has local changes; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
