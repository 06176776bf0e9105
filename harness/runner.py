"""One run, end to end: resolved config -> dataset, episodes, model, algorithm, engine -> store.

The runner validates everything it can before it records a run (episode specs against the data,
the model's head against the evaluation ways), then meta-trains with a progress bar, evaluates on
the fixed episode sets and hands the results to the store in one transaction. A run that fails or
is interrupted is recorded with that status and never counts as a result.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from metabench.datasets.base import ClassificationDataset
from metabench.harness import episodes as ep
from metabench.harness.config import ConfigError, config_hash
from metabench.harness import training_data
from metabench.harness.engines import get_engine, select_backend
from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS
from metabench.harness.results import CurvePoint, Evaluation, RunInfo
from metabench.harness.stats import mean_ci95

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The outer loss became NaN or infinite."""


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
        train_pool = dataset.split(train["split"])
        ep.check_classification_spec(train_pool, train_spec, train["rotations"], name)
        eval_pool = train_pool if evaluation["split"] == train["split"] else dataset.split(evaluation["split"])
        eval_sets = [
            ep.classification_evaluation_set(
                name, eval_pool, ep.EpisodeSpec(ways, shots, eval_queries), evaluation["episodes"], evaluation["seed"], eval_rotations
            )
            for shots in eval_shots
        ]
        return Prepared(train_pool, train_spec, eval_sets, eval_pool, train_pool.image_shape, "classification")
    if train["ways"] or evaluation["ways"]:
        raise ConfigError(f"{name} is a regression task family: leave train.ways and evaluation.ways unset (0).")
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
        algorithm_options = {k: v for k, v in config["algorithm"].items() if k != "name"}
        algorithm = ALGORITHMS.get(config["algorithm"]["name"]).factory(**algorithm_options)
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
    model_options = {k: v for k, v in config["model"].items() if k != "name"}
    model = MODELS.get(config["model"]["name"]).factory(prepared.input_shape, outputs, **model_options)
    algorithm.build(model, prepared.kind, engine)

    train = config["train"]
    learning_rate = train["meta_lr"]
    if train["meta_lr_schedule"] == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            train["meta_lr"], decay_steps=train["meta_iterations"], alpha=train["meta_lr_min"] / train["meta_lr"]
        )
    optimizer = keras.optimizers.Adam(learning_rate, clipvalue=train["clip_meta_grad"] or None)
    variables, state_variables = algorithm.meta_variables(), algorithm.state_variables()
    trainer = engine.make_meta_trainer(algorithm.task_loss, variables, optimizer, state_variables)
    max_steps = max(config["evaluation"]["inner_steps"])
    evaluator = engine.make_evaluator(
        lambda params, state, task: algorithm.task_eval(params, state, task, max_steps), variables, state_variables
    )
    return Session(algorithm, source, optimizer, trainer, evaluator)


def run(config: dict, *, store, data_dir=None, cache_dir=None, show_progress: bool = True) -> RunSummary:
    """Meta-train and evaluate ``config`` (resolved), recording the run in ``store``."""
    select_backend(config["backend"])
    prepared = prepare(config, data_dir, cache_dir)
    engine = get_engine(config["backend"], **config["engine"])
    session = build(config, prepared, engine)

    info = RunInfo(
        algorithm=config["algorithm"]["name"],
        dataset=config["dataset"]["name"],
        seed=config["seed"],
        config=config,
        config_hash=config_hash(config),
        backend=config["backend"],
        device=engine.describe_device(),
        versions=library_versions(),
        git_commit=git_commit(),
    )
    run_id = store.start_run(info)
    logger.info("Run %s started (%s on %s)", run_id, info.algorithm, info.dataset)
    try:
        started = time.perf_counter()
        curve = meta_train(session, config, show_progress)
        trained = time.perf_counter()
        evaluations = evaluate(session, prepared, config)
        timings = {"train_s": trained - started, "eval_s": time.perf_counter() - trained}
        store.complete_run(run_id, evaluations, curve, timings)
    except KeyboardInterrupt:
        store.fail_run(run_id, "interrupted", "interrupted by the user (KeyboardInterrupt)")
        raise
    except BaseException as error:
        store.fail_run(run_id, "failed", f"{type(error).__name__}: {error}")
        raise
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
    return RunSummary(run_id, evaluations[0].metric, first["mean"], first["ci95"], len(prepared.eval_sets[0]), first["inner_steps"], settings)


def meta_train(session: Session, config: dict, show_progress: bool = False) -> list[CurvePoint]:
    """Run ``train.meta_iterations`` steps; returns the logged training curve."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    train = config["train"]
    metric_name = session.algorithm.objective.metric_name
    total, every = train["meta_iterations"], train["log_every"]
    curve, window_loss, window_metric = [], [], []
    last_finite = None
    started = time.perf_counter()
    columns = (
        TextColumn("meta-training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[metric_name]} {task.fields[metric]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("train", total=total, loss="-", metric="-", metric_name=metric_name)
        for iteration in range(total):
            logs = session.trainer(session.source.batch(iteration))
            loss = logs["loss"]
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"The meta-training loss became {loss} at meta-iteration {iteration}; the last finite "
                    f"loss was {last_finite}. Lower train.meta_lr or algorithm.inner_lr, or set train.clip_meta_grad."
                )
            last_finite = loss
            window_loss.append(loss)
            window_metric.append(logs.get(metric_name, float("nan")))
            if (iteration + 1) % every == 0 or iteration + 1 == total:
                point = CurvePoint(iteration + 1, float(np.mean(window_loss)), float(np.mean(window_metric)), time.perf_counter() - started)
                curve.append(point)
                window_loss, window_metric = [], []
                progress.update(bar, loss=f"{point.loss:.4f}", metric=f"{point.metric:.4f}")
            progress.advance(bar)
    return curve


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
    notes["eval_inner_lr"] = getattr(algorithm, "eval_inner_lr", None) or getattr(algorithm, "inner_lr", None)
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


def library_versions() -> dict:
    """Versions of the libraries a result depends on."""
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for name in ("metabench", "keras", "tensorflow", "jax", "numpy"):
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
